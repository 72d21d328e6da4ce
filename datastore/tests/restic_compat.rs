//! The writer against the real restic binary (the compatibility oracle): every snapshot we write
//! dumps byte-exact with `restic dump`, and `restic check --read-data` stays clean.

use backstop_datastore::repo::backend::LocalBackend;
use backstop_datastore::repo::format::RepoId;
use backstop_datastore::repo::image::{CHUNK_SIZE, Extent, RawImage};
use backstop_datastore::repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_datastore::repo::{Compression, Repo};
use std::fs;
use std::path::Path;

use std::sync::Arc;

mod common;
use common::*;

fn backup(
    repo: &Repo,
    image: &Path,
    changed: Option<&[Extent]>,
    parent: Option<RepoId>,
    vm_xml: &[u8],
) -> writer::BackupResult {
    let source = RawImage::open(image).expect("open image");
    let files = [
        FileSpec {
            path: DISK.into(),
            content: Content::Image {
                source: &source,
                changed,
                parent_path: Some(DISK.into()),
            },
        },
        FileSpec {
            path: "/var/lib/one//datastores/0/22/backup/vm.xml".into(),
            content: Content::Bytes(vm_xml),
        },
    ];
    let options = BackupOptions {
        tags: vec!["one-22".into()],
        compression: Compression::Auto,
        parent,
        ..BackupOptions::default()
    };
    writer::backup(repo, &files, &options).expect("backup")
}

fn assert_dump_equals(repo_path: &Path, snapshot: &RepoId, image: &Path) {
    let dumped = ok(
        restic(
            repo_path,
            &[
                "dump",
                &snapshot.to_hex(),
                "/var/lib/one/datastores/0/22/backup/disk.0.0",
            ],
        ),
        "restic dump",
    );
    let expected = fs::read(image).expect("read image");
    assert_eq!(dumped.len(), expected.len(), "dumped size");
    assert!(
        dumped == expected,
        "restic dump of {snapshot} differs from the image"
    );
}

#[test]
fn restic_reads_a_full_backup_and_three_incrementals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    ok(restic(&repo_path, &["init"]), "restic init");
    let repo = Repo::open(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("open");
    let image = dir.path().join("disk.raw");
    make_image(&image, 24, 1);

    let full = backup(&repo, &image, None, None, b"PFZNPjwvVk0+\n");
    assert_eq!(full.total.size, 24 * CHUNK_SIZE + 13);
    let disk = &full.files[0].1;
    assert_eq!(disk.chunks, 24);
    assert_eq!(disk.zero_chunks, 6, "holes are zero chunks");
    assert_eq!(disk.hashed_chunks, 18, "zero chunks are not hashed");
    assert_dump_equals(&repo_path, &full.snapshot_id, &image);
    let vm = ok(
        restic(
            &repo_path,
            &[
                "dump",
                &full.snapshot_id.to_hex(),
                "/var/lib/one/datastores/0/22/backup/vm.xml",
            ],
        ),
        "dump vm.xml",
    );
    assert_eq!(vm, b"PFZNPjwvVk0+\n");

    let mut parent = full.snapshot_id;
    for generation in 1..=3u64 {
        let changed = scribble(&image, 5, 100 + generation);
        let inc = backup(
            &repo,
            &image,
            Some(&changed),
            Some(parent),
            b"PFZNPjwvVk0+\n",
        );
        let disk = &inc.files[0].1;
        assert_eq!(disk.full_reason, None);
        assert!(
            disk.reused_chunks >= 24 - 10,
            "generation {generation}: reused {}",
            disk.reused_chunks
        );
        assert!(
            disk.bytes_read <= 10 * CHUNK_SIZE,
            "generation {generation}: read {}",
            disk.bytes_read
        );
        assert_dump_equals(&repo_path, &inc.snapshot_id, &image);
        parent = inc.snapshot_id;
    }
    let check = ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );
    assert!(String::from_utf8_lossy(&check).contains("no errors were found"));
}

/// Regression (spec §2, rustic_core's archive() trap): changed input must give changed output.
#[test]
fn changed_input_gives_changed_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 4, 7);
    let first = backup(&repo, &image, None, None, b"x");
    let before = fs::read(&image).expect("read");
    let changed = scribble(&image, 1, 9);
    assert_ne!(fs::read(&image).expect("read"), before);
    let second = backup(&repo, &image, Some(&changed), Some(first.snapshot_id), b"x");
    assert!(second.files[0].1.new_blobs >= 1);
    assert_dump_equals(&repo_path, &second.snapshot_id, &image);
    // and the first snapshot still holds the old content
    let old = ok(
        restic(
            &repo_path,
            &[
                "dump",
                &first.snapshot_id.to_hex(),
                "/var/lib/one/datastores/0/22/backup/disk.0.0",
            ],
        ),
        "dump",
    );
    assert!(old == before);
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );
}

#[test]
fn a_wrong_password_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let before: Vec<_> = walk(&repo_path);
    let e = Repo::open(Arc::new(LocalBackend::new(&repo_path)), "not the password")
        .expect_err("wrong password");
    assert_eq!(
        e.to_string(),
        format!(
            "wrong password for the repository at local:{} (no key file opens with it)",
            repo_path.display()
        )
    );
    assert_eq!(walk(&repo_path), before, "a failed open wrote something");
}
