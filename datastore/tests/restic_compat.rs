//! The writer against the real restic binary (the compatibility oracle): every snapshot we write
//! dumps byte-exact with `restic dump`, and `restic check --read-data` stays clean.

use backstop_datastore::repo::backend::LocalBackend;
use backstop_datastore::repo::format::RepoId;
use backstop_datastore::repo::image::{CHUNK_SIZE, Extent, RawImage};
use backstop_datastore::repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_datastore::repo::{Compression, Repo};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

const PASSWORD: &str = "compat test password";
const DISK: &str = "/var/lib/one//datastores/0/22/backup/disk.0.0";

fn restic(repo: &Path, args: &[&str]) -> Output {
    Command::new("restic")
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("the restic binary must be installed (apt install restic)")
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// Deterministic bytes: xorshift64*.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// An image of `mib` MiB: zeros, random, text-like and repeated regions.
fn make_image(path: &Path, mib: u64, seed: u64) {
    let mut g = Gen(seed);
    let f = fs::File::create(path).expect("create");
    f.set_len(mib * CHUNK_SIZE).expect("size");
    let words = ["backup ", "restic ", "opennebula ", "disk ", "chunk ", "\n"];
    for i in 0..mib {
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        match i % 4 {
            0 => continue, // hole
            1 => g.fill(&mut buf),
            2 => {
                let mut pos = 0;
                while pos < buf.len() {
                    let w = words[(g.next() % words.len() as u64) as usize].as_bytes();
                    let n = w.len().min(buf.len() - pos);
                    buf[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
            _ => buf
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j % 251) as u8),
        }
        f.write_all_at(&buf, i * CHUNK_SIZE).expect("write");
    }
}

/// Rewrites `count` scattered regions; returns them as changed extents.
fn scribble(path: &Path, count: usize, seed: u64) -> Vec<Extent> {
    let mut g = Gen(seed);
    let f = fs::OpenOptions::new().write(true).open(path).expect("open");
    let size = f.metadata().expect("meta").len();
    (0..count)
        .map(|_| {
            let len = 1 + g.next() % 100_000;
            let off = g.next() % (size - len);
            let mut buf = vec![0u8; len as usize];
            g.fill(&mut buf);
            f.write_all_at(&buf, off).expect("write");
            Extent {
                offset: off,
                length: len,
            }
        })
        .collect()
}

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

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}
