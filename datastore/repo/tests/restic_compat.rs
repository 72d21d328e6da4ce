//! The writer against the real restic binary (the compatibility oracle): every snapshot we write
//! dumps byte-exact with `restic dump`, and `restic check --read-data` stays clean.

use backstop_image::image::{CHUNK_SIZE, Extent, RawImage};
use backstop_repo::format::RepoId;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_repo::{Compression, Repo};
use backstop_storage::local::LocalBackend;
use std::fs;
use std::path::Path;

use std::sync::Arc;

mod common;
use common::*;
use sshd::run;

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

/// Regression (driver contract §2, rustic_core's archive() trap): changed input must give changed output.
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

/// Bytes the backup of `image` reads in any case (what a prefetch may read before the key).
fn certain_bytes(image: &Path, changed: Option<&[Extent]>) -> u64 {
    use backstop_image::image::{self, ChunkPlan, ImageSource};
    let source = RawImage::open(image).expect("open image");
    let size = source.size();
    let data = source.data_extents().expect("extents");
    image::plan(size, data.as_deref(), changed, |_| true)
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == ChunkPlan::Read)
        .map(|(i, _)| image::chunk_range(i, size).length)
        .sum()
}

/// A backup into a repository still being opened: the chunks it reads in any case are read,
/// hashed and compressed before the key exists, and sealed once it does. The opener here waits
/// until the prefetch has read them all, so the test knows every read chunk was prepared;
/// restic then reads the snapshots byte-exact, and the read bytes are counted once.
#[test]
fn a_backup_reads_while_the_repository_opens() {
    use backstop_repo::Opening;
    use backstop_repo::writer::Progress;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    ok(restic(&repo_path, &["init"]), "restic init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 16, 3);
    let opening_after = |progress: &Arc<Progress>, bytes: u64, password: &'static str| {
        let (progress, path) = (progress.clone(), repo_path.clone());
        Opening::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while progress.read.load(std::sync::atomic::Ordering::SeqCst) < bytes
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Repo::open(Arc::new(LocalBackend::new(&path)), password)
        })
    };
    let run = |changed: Option<&[Extent]>, parent: Option<&str>, password: &'static str| {
        let progress = Arc::new(Progress::default());
        let opening = opening_after(&progress, certain_bytes(&image, changed), password);
        let source = RawImage::open(&image).expect("open image");
        let files = [FileSpec {
            path: DISK.into(),
            content: Content::Image {
                source: &source,
                changed,
                parent_path: Some(DISK.into()),
            },
        }];
        let options = BackupOptions {
            compression: Compression::Auto,
            progress: progress.clone(),
            ..BackupOptions::default()
        };
        let parent = parent.map(str::to_string);
        let r = writer::backup_opening(opening, &files, options, |repo, o| {
            o.parent = parent
                .as_deref()
                .map(|p| repo.find_snapshot(p).map(|(id, _)| id))
                .transpose()?;
            Ok(())
        });
        (r.map(|(_, result)| result), progress)
    };

    let (full, progress) = run(None, None, PASSWORD);
    let full = full.expect("full backup");
    assert_eq!(full.total.hashed_chunks, 12, "{:?}", full.total);
    assert_eq!(full.total.prepared_chunks, 12, "{:?}", full.total);
    assert_eq!(full.total.bytes_read, 12 * CHUNK_SIZE);
    assert_eq!(
        progress.read.load(std::sync::atomic::Ordering::SeqCst),
        12 * CHUNK_SIZE
    );
    assert_dump_equals(&repo_path, &full.snapshot_id, &image);

    let changed = scribble(&image, 5, 11);
    let (inc, _) = run(Some(&changed), Some("latest"), PASSWORD);
    let inc = inc.expect("incremental");
    assert!(inc.total.reused_chunks > 0, "{:?}", inc.total);
    assert_eq!(
        inc.total.prepared_chunks, inc.total.hashed_chunks,
        "{:?}",
        inc.total
    );
    assert_dump_equals(&repo_path, &inc.snapshot_id, &image);

    // A password that opens nothing: one error, nothing written, what was prepared dropped.
    let before = walk(&repo_path);
    let (failed, _) = run(None, None, "not the password");
    let e = failed.expect_err("wrong password");
    assert!(
        e.to_string()
            .starts_with("wrong password for the repository at"),
        "{e}"
    );
    assert_eq!(walk(&repo_path), before, "a failed backup wrote something");
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );
}

/// Keys are derived with OpenSSL's scrypt, not rustic_core's: every key file restic writes
/// (restic calibrates its own parameters) opens with its own password, and only with it.
#[test]
fn every_restic_key_opens_with_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    ok(restic(&repo_path, &["init"]), "restic init");
    let second = dir.path().join("second-password");
    fs::write(&second, "a second password\n").expect("password file");
    ok(
        restic(
            &repo_path,
            &[
                "key",
                "add",
                "--new-password-file",
                second.to_str().expect("utf-8"),
            ],
        ),
        "restic key add",
    );
    let open = |pw: &str| Repo::open(Arc::new(LocalBackend::new(&repo_path)), pw);
    let a = open(PASSWORD).expect("the first password");
    let b = open("a second password").expect("the second password");
    // One master key, whichever key file opened it: the same config id decrypts both ways.
    let sealed = a.seal(b"the same master key").expect("seal");
    assert_eq!(
        b.open_sealed(&sealed).expect("open"),
        b"the same master key".to_vec()
    );
    assert!(open("neither").is_err());
}

/// A key file with scrypt parameters that would take 128 GiB (or malformed) is skipped
/// without deriving anything; the error names it; a good key file still opens.
#[test]
fn hostile_key_files_are_skipped_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let keys = repo_path.join("keys");
    let good = fs::read_dir(&keys)
        .expect("keys")
        .next()
        .expect("one key")
        .expect("entry")
        .path();
    let mut key: serde_json::Value =
        serde_json::from_slice(&fs::read(&good).expect("key")).expect("json");
    key["N"] = serde_json::json!(1u64 << 30);
    let huge = serde_json::to_vec(&key).expect("json");
    // Names that sort before the good key's, so they are met first.
    fs::write(keys.join("0".repeat(64)), huge).expect("huge key");
    fs::write(keys.join(format!("{}1", "0".repeat(63))), b"{not json").expect("bad key");
    let err = Repo::open(Arc::new(LocalBackend::new(&repo_path)), "wrong").expect_err("wrong");
    let text = err.to_string();
    assert!(
        text.starts_with("wrong password for the repository at")
            && text.contains("key 00000000 scrypt parameters out of range (N=1073741824, r=8, p=1")
            && text.contains("key 00000000 is not a key file"),
        "{text}"
    );
    Repo::open(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("the good key opens");
}

/// A repository as OpenNebula's stock restic driver writes it: `restic backup` of the staged
/// `disk.0.0` (qcow2) and `vm.xml` files. We restore both byte-exact, and can back up into it.
#[test]
fn restores_what_the_stock_restic_driver_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    ok(restic(&repo_path, &["init"]), "restic init");
    let staging = dir.path().join("var/lib/one/datastores/0/22/backup");
    fs::create_dir_all(&staging).expect("staging");
    let disk = staging.join("disk.0.0");
    let d = disk.to_str().expect("utf-8");
    run("qemu-img", &["create", "-q", "-f", "qcow2", d, "64M"]);
    for (i, pattern) in [(0u64, "0xab"), (7, "0x11"), (40, "0x5c")] {
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} {}M 3M", i),
                d,
            ],
        );
    }
    let vm_xml = staging.join("vm.xml");
    fs::write(&vm_xml, "PFZNPjxJRD4yMjwvSUQ+PC9WTT4=\n").expect("vm.xml");
    ok(
        restic(
            &repo_path,
            &[
                "backup",
                "--tag",
                "one-22",
                d,
                vm_xml.to_str().expect("utf-8"),
            ],
        ),
        "restic backup",
    );

    let repo = Repo::open(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("open");
    let in_snapshot = d.to_string();
    let target = dir.path().join("restored.qcow2");
    let stats = repo
        .restore_file(
            "latest",
            &in_snapshot,
            &target,
            2,
            backstop_repo::lock::RetryLock(std::time::Duration::ZERO),
        )
        .expect("restore");
    assert_eq!(stats.size, fs::metadata(&disk).expect("meta").len());
    assert!(
        fs::read(&target).expect("read") == fs::read(&disk).expect("read"),
        "restored qcow2 differs"
    );
    let mut dumped = Vec::new();
    repo.dump(
        "latest",
        vm_xml.to_str().expect("utf-8"),
        &mut dumped,
        backstop_repo::lock::RetryLock(std::time::Duration::ZERO),
    )
    .expect("dump vm.xml");
    assert_eq!(dumped, fs::read(&vm_xml).expect("read"));
    run(
        "qemu-img",
        &["compare", "-q", d, target.to_str().expect("utf-8")],
    );

    // Our backup into the same repository reads restic's index and leaves it checking clean.
    let image = dir.path().join("disk.raw");
    make_image(&image, 4, 11);
    backup(&repo, &image, None, None, b"x");
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );
}

#[test]
fn our_restore_is_byte_exact_and_sparse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 16, 12);
    let b = backup(&repo, &image, None, None, b"x");
    let target = dir.path().join("restored.raw");
    let stats = repo
        .restore_file(
            &b.snapshot_id.to_hex()[..8],
            DISK,
            &target,
            2,
            backstop_repo::lock::RetryLock(std::time::Duration::ZERO),
        )
        .expect("restore");
    assert!(fs::read(&target).expect("read") == fs::read(&image).expect("read"));
    assert_eq!(stats.zero_blobs, 4, "the 4 zero chunks are holes");
    use std::os::unix::fs::MetadataExt;
    let allocated = fs::metadata(&target).expect("meta").blocks() * 512;
    assert!(
        allocated <= 13 * CHUNK_SIZE,
        "restored file is not sparse: {allocated} bytes allocated"
    );
    assert!(!dir.path().join("restored.raw.backstop-tmp").exists());
}

/// A dump (what the downloader streams to oned) is the image byte for byte, its zero chunks
/// included (written as zeros, not read).
#[test]
fn our_dump_is_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 24, 13);
    let b = backup(&repo, &image, None, None, b"x");
    let wait = backstop_repo::lock::RetryLock(std::time::Duration::ZERO);
    let mut dumped = Vec::new();
    repo.dump(&b.snapshot_id.to_hex(), DISK, &mut dumped, wait)
        .expect("dump");
    assert!(
        dumped == fs::read(&image).expect("read"),
        "the dump differs"
    );
}

/// A 1 GiB image, 90 % unallocated: only its data is stored, and the unallocated chunks are
/// neither read nor hashed.
#[test]
fn a_mostly_unallocated_gib_stores_only_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("sparse.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&image).expect("create");
        f.set_len(1024 * CHUNK_SIZE).expect("size");
        let mut g = Gen(99);
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        // Random (incompressible) data in every tenth MiB: 103 MiB of 1024.
        for i in (0..1024u64).step_by(10) {
            g.fill(&mut buf);
            f.write_all_at(&buf, i * CHUNK_SIZE).expect("write");
        }
    }
    let source = RawImage::open(&image).expect("open");
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source: &source,
            changed: None,
            parent_path: None,
        },
    }];
    let options = BackupOptions::default();
    let result = writer::backup(&repo, &files, &options).expect("backup");
    let s = &result.files[0].1;
    assert_eq!(
        options.progress.get(),
        (1024 * CHUNK_SIZE, 1024 * CHUNK_SIZE, 103 * CHUNK_SIZE),
        "progress: every position settled, only the data read"
    );
    assert_eq!(s.chunks, 1024);
    assert_eq!(s.hashed_chunks, 103, "only the chunks with data are hashed");
    assert_eq!(
        s.zero_chunks, 921,
        "the unallocated chunks are known zero without hashing"
    );
    assert_eq!(
        s.bytes_read,
        103 * CHUNK_SIZE,
        "the unallocated chunks are not even read"
    );
    let stored: u64 = walk(&repo_path.join("data"))
        .iter()
        .map(|p| fs::metadata(p).expect("meta").len())
        .sum();
    assert!(stored < 110 * CHUNK_SIZE, "stored {stored} bytes");
    ok(restic(&repo_path, &["check"]), "restic check");
}

#[test]
fn forget_and_prune_reclaim_space_at_once_and_check_finds_damage() {
    use backstop_repo::lock::RetryLock;
    use backstop_repo::maintenance::{PruneLimits, ReadData};
    let retry = RetryLock(std::time::Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 32, 31);
    let old = backup(&repo, &image, None, None, b"x");
    make_image(&image, 32, 32); // other content
    let new = backup(&repo, &image, None, None, b"x");
    let kept = fs::read(&image).expect("read");

    let before = repo.data_size().expect("size");
    assert_eq!(
        repo.forget(&[old.snapshot_id.to_hex()[..8].to_string()], retry)
            .expect("forget"),
        1
    );
    let reclaimed = repo.prune(&PruneLimits::default(), retry).expect("prune");
    let after = repo.data_size().expect("size");
    assert_eq!(before - after, reclaimed);
    assert!(
        reclaimed > 5 * CHUNK_SIZE,
        "only {reclaimed} bytes reclaimed"
    );
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check after our prune",
    );
    assert_dump_equals(&repo_path, &new.snapshot_id, &image);
    assert!(fs::read(&image).expect("read") == kept);
    repo.check(&ReadData::All, retry)
        .expect("our check --read-data");

    // Damage one byte of one pack: our check must say so.
    // The largest pack holds data blobs (the tree pack is small, and a metadata check reads
    // trees, so damage there would be found without --read-data).
    let pack = walk(&repo_path.join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = fs::read(&pack).expect("read pack");
    bytes[100] ^= 0xff;
    fs::write(&pack, &bytes).expect("write pack");
    repo.check(&ReadData::None, retry)
        .expect("metadata alone does not read the blob");
    let err = repo.check(&ReadData::All, retry).expect_err("damage found");
    assert!(
        err.to_string().starts_with("the repository has errors"),
        "{err}"
    );
}

/// Killed writes leave temporary files that restic never removes; our prune, under its
/// exclusive lock, does, and touches nothing else.
#[test]
fn prune_removes_interrupted_writes_and_nothing_else() {
    use backstop_repo::lock::RetryLock;
    use backstop_repo::maintenance::PruneLimits;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 41);
    let b = backup(&repo, &image, None, None, b"x");
    let real = walk(&repo_path);
    let planted = [
        repo_path.join("data/00/.0011.tmp-aabbccddeeff"),
        repo_path.join("index/.2233.tmp-aabbccddeeff"),
        repo_path.join("data/ff/4455-restic-temp-aabbccddeeff"),
    ];
    for p in &planted {
        fs::write(p, b"half a file").expect("plant");
    }
    repo.prune(
        &PruneLimits::default(),
        RetryLock(std::time::Duration::ZERO),
    )
    .expect("prune");
    assert_eq!(
        walk(&repo_path),
        real,
        "prune removed a real file or left a temporary one"
    );
    assert_dump_equals(&repo_path, &b.snapshot_id, &image);
}

/// The downloader's stream: a snapshot's disk as a standalone qcow2 that qemu reads as the
/// disk, for our fixed chunks (zero chunks never read) and for restic's content-defined chunks
/// of a raw file (blobs not aligned to clusters).
#[test]
fn a_disk_streams_as_a_qcow2_that_qemu_reads_as_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 16, 13);
    let b = backup(&repo, &image, None, None, b"x");
    let lock = || backstop_repo::lock::RetryLock(std::time::Duration::ZERO);
    let compare = |qcow2: &Path, raw: &Path| {
        let q = qcow2.to_str().expect("utf-8");
        run("qemu-img", &["check", "-q", "-f", "qcow2", q]);
        run(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                q,
                raw.to_str().expect("utf-8"),
            ],
        );
    };

    let out_path = dir.path().join("ours.qcow2");
    let mut out = fs::File::create(&out_path).expect("create");
    let stats = repo
        .stream_qcow2(&b.snapshot_id.to_hex()[..8], DISK, &mut out, 2, lock())
        .expect("stream");
    drop(out);
    compare(&out_path, &image);
    assert_eq!(stats.size, 16 * CHUNK_SIZE);
    assert_eq!(stats.blobs, 16);
    assert_eq!(stats.blobs_read, 12, "the 4 zero chunks are not read");
    assert_eq!(
        fs::metadata(&out_path).expect("meta").len(),
        stats.qcow2_bytes
    );
    // Holes cost nothing in the stream: 12 MiB of data and a few clusters of metadata.
    assert!(
        stats.qcow2_bytes < 12 * CHUNK_SIZE + 8 * 65536,
        "{}",
        stats.qcow2_bytes
    );

    // A raw file backed up by restic itself.
    let raw = dir.path().join("plain.raw");
    make_image(&raw, 9, 14);
    ok(
        restic(
            &repo_path,
            &["backup", "--tag", "one-23", raw.to_str().expect("utf-8")],
        ),
        "restic backup",
    );
    let out_path = dir.path().join("restic.qcow2");
    let mut out = fs::File::create(&out_path).expect("create");
    repo.stream_qcow2("latest", raw.to_str().expect("utf-8"), &mut out, 3, lock())
        .expect("stream restic's snapshot");
    drop(out);
    compare(&out_path, &raw);

    // A file that is not in the snapshot is an error, not an empty image.
    let e = repo
        .stream_qcow2("latest", "/no/such/disk.0.0", &mut Vec::new(), 2, lock())
        .expect_err("missing file");
    assert!(e.to_string().contains("no file /no/such/disk.0.0"), "{e}");
}

/// Bytes of pack files under a repository.
fn stored(repo_path: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&repo_path.join("data"))
}

#[test]
fn every_compression_level_is_read_by_restic() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A disk of text: compressible, and not the same at every chunk.
    let image = dir.path().join("disk.raw");
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i} of a disk that compresses, {}\n", i % 97).into_bytes())
        .collect();
    fs::write(&image, &text).expect("image");
    let mut sizes = Vec::new();
    for (name, level) in [
        ("off", Compression::Off),
        ("fastest", Compression::Fastest),
        ("auto", Compression::Auto),
        ("better", Compression::Better),
        ("max", Compression::Max),
    ] {
        assert_eq!(Compression::parse(Some(name)).expect("parse"), level);
        let repo_path = dir.path().join(name);
        ok(restic(&repo_path, &["init"]), "restic init");
        let repo = Repo::open(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("open");
        let source = RawImage::open(&image).expect("image");
        let files = [FileSpec {
            path: "/var/lib/one/datastores/0/22/backup/disk.0.0".into(),
            content: Content::Image {
                source: &source,
                changed: None,
                parent_path: None,
            },
        }];
        let done = writer::backup(
            &repo,
            &files,
            &BackupOptions {
                compression: level,
                ..BackupOptions::default()
            },
        )
        .expect("backup");
        drop(repo);
        ok(
            restic(&repo_path, &["check", "--read-data"]),
            &format!("restic check of {name}"),
        );
        assert_dump_equals(&repo_path, &done.snapshot_id, &image);
        sizes.push((name, stored(&repo_path)));
    }
    eprintln!("stored: {sizes:?} of {} bytes", text.len());
    let size = |n: &str| {
        sizes
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, s)| *s)
            .expect("size")
    };
    assert!(size("off") > text.len() as u64, "{sizes:?}");
    assert!(size("fastest") < size("off") / 2, "{sizes:?}");
    assert!(size("max") <= size("fastest"), "{sizes:?}");
}
