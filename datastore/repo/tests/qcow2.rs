//! qcow2 disks read through qemu-nbd, with a persistent dirty bitmap giving the changed
//! extents: a full backup and an incremental after 50 scattered writes both dump byte-exact
//! (compared with `qemu-img convert -O raw`), unallocated clusters are never read.

mod common;
use common::*;

use backstop_image::disk_image::{self, Backing, DiskImage, Format};
use backstop_image::image::{CHUNK_SIZE, Extent, ImageSource};
use backstop_image::nbd::NbdImage;
use backstop_repo::Repo;
use backstop_repo::format::RepoId;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_storage::local::LocalBackend;
use std::fs;
use std::path::Path;

/// A standalone qcow2 test image, checked as the drivers check a disk.
fn qcow2(path: &Path) -> DiskImage {
    disk_image::inspect(path, Format::Qcow2, Backing::Refused).expect("inspect")
}
use std::sync::Arc;

use common::sshd::run;

fn raw_of(qcow2: &Path, raw: &Path) -> Vec<u8> {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            qcow2.to_str().expect("utf-8"),
            raw.to_str().expect("utf-8"),
        ],
    );
    fs::read(raw).expect("read raw")
}

fn backup(
    repo: &Repo,
    source: &dyn ImageSource,
    changed: Option<&[Extent]>,
    parent: Option<RepoId>,
) -> writer::BackupResult {
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source,
            changed,
            parent_path: Some(DISK.into()),
        },
    }];
    writer::backup(
        repo,
        &files,
        &BackupOptions {
            parent,
            ..BackupOptions::default()
        },
    )
    .expect("backup")
}

fn dump(repo_path: &Path, id: &RepoId) -> Vec<u8> {
    ok(
        restic(
            repo_path,
            &[
                "dump",
                &id.to_hex(),
                "/var/lib/one/datastores/0/22/backup/disk.0.0",
            ],
        ),
        "restic dump",
    )
}

#[test]
fn qcow2_dirty_bitmap_incremental_restores_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let disk = dir.path().join("disk.qcow2");
    let d = disk.to_str().expect("utf-8");
    run("qemu-img", &["create", "-q", "-f", "qcow2", d, "96M"]);
    let mut base = vec!["-f".to_string(), "qcow2".to_string()];
    for (i, mib) in [0u64, 5, 6, 20, 47, 80].iter().enumerate() {
        base.push("-c".into());
        base.push(format!("write -P {} {}M 1M", 0x10 + i, mib));
    }
    base.push(d.into());
    run(
        "qemu-io",
        &base.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    run("qemu-img", &["bitmap", "--add", d, "one-22-0"]);

    // Full backup through qemu-nbd: only allocated clusters are read.
    let image = NbdImage::open(&qcow2(&disk), None, true).expect("export");
    let socket = image.socket().to_path_buf();
    let full = backup(&repo, &image, None, None);
    drop(image);
    assert!(
        !socket.exists() && !socket.parent().expect("dir").exists(),
        "qemu-nbd's socket was left behind"
    );
    let stats = &full.files[0].1;
    assert_eq!(stats.chunks, 96);
    assert_eq!(
        stats.zero_chunks, 90,
        "unallocated clusters are zero chunks, neither read nor hashed"
    );
    assert_eq!(stats.bytes_read, 6 * CHUNK_SIZE);
    let raw0 = raw_of(&disk, &dir.path().join("raw0"));
    assert!(
        dump(&repo_path, &full.snapshot_id) == raw0,
        "full backup differs from the qcow2's content"
    );

    // 50 scattered writes, recorded by the bitmap.
    let mut g = Gen(2026);
    let mut writes = vec!["-f".to_string(), "qcow2".to_string()];
    for k in 0..50u64 {
        let len = 512 * (1 + g.next() % 200);
        let off = 512 * (g.next() % ((96 << 20) / 512 - len / 512));
        writes.push("-c".into());
        writes.push(format!("write -P {} {off} {len}", (k % 250) + 1));
    }
    writes.push(d.into());
    run(
        "qemu-io",
        &writes.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let image = NbdImage::open(&qcow2(&disk), Some("one-22-0"), true).expect("export with bitmap");
    let changed = image.dirty("one-22-0").expect("dirty extents");
    assert!(!changed.is_empty());
    let dirty_bytes: u64 = changed.iter().map(|e| e.length).sum();
    let inc = backup(&repo, &image, Some(&changed), Some(full.snapshot_id));
    drop(image);
    let stats = &inc.files[0].1;
    assert_eq!(stats.full_reason, None);
    assert!(stats.reused_chunks > 0);
    assert!(
        stats.bytes_read <= dirty_bytes + 2 * 50 * CHUNK_SIZE,
        "read {} bytes for {dirty_bytes} dirty bytes",
        stats.bytes_read
    );
    let raw1 = raw_of(&disk, &dir.path().join("raw1"));
    assert!(raw1 != raw0, "the writes changed nothing?");
    assert!(
        dump(&repo_path, &inc.snapshot_id) == raw1,
        "incremental differs from the qcow2's content"
    );
    assert!(
        dump(&repo_path, &full.snapshot_id) == raw0,
        "the full snapshot changed"
    );
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );
}

/// A stock OpenNebula increment: a qcow2 delta whose backing file is gone. Its clusters are
/// the changed extents; every chunk it touches only in part is completed from the parent
/// snapshot's blob.
#[test]
fn a_stock_increment_is_completed_from_the_parent_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let base = dir.path().join("disk.0.0");
    let b = base.to_str().expect("utf-8");
    run("qemu-img", &["create", "-q", "-f", "qcow2", b, "32M"]);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x31 0 12M",
            "-c",
            "write -P 0x32 20M 8M",
            b,
        ],
    );
    let image = NbdImage::open(&qcow2(&base), None, true).expect("export");
    let full = backup(&repo, &image, None, None);
    drop(image);

    // The next increment, as OpenNebula stages it: an overlay on the previous file.
    let delta = dir.path().join("disk.0.1");
    let d = delta.to_str().expect("utf-8");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", d],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x41 4096 8192",
            "-c",
            "write -P 0x42 5M 1M",
            "-c",
            "write -z 21M 64K",
            "-c",
            "write -P 0x43 30M 3000",
            d,
        ],
    );
    let expected = {
        let raw = dir.path().join("expected.raw");
        run(
            "qemu-img",
            &["convert", "-O", "raw", d, raw.to_str().expect("utf-8")],
        );
        fs::read(&raw).expect("raw")
    };
    fs::rename(&base, dir.path().join("gone")).expect("the backing file goes away");

    let (image, present) = NbdImage::open_delta(&delta).expect("open the delta alone");
    assert!(!present.is_empty());
    let inc = backup(&repo, &image, Some(&present), Some(full.snapshot_id));
    drop(image);
    let stats = &inc.files[0].1;
    assert_eq!(stats.full_reason, None);
    assert_eq!(
        stats.reused_chunks, 28,
        "4 chunks touched, 28 reused: {stats:?}"
    );
    assert!(
        dump(&repo_path, &inc.snapshot_id) == expected,
        "the increment is not the full disk"
    );
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );
}
