//! Locks against the real restic: its exclusive lock stops our backup (which waits, then names
//! the holder), and our backup's lock stops `restic prune`.

mod common;
use common::*;

use backstop_image::image::{ImageSource, RawImage};
use backstop_repo::ErrorKind;
use backstop_repo::Repo;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_storage::local::LocalBackend;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lock files, not counting one being written: restic 0.14 writes `<id>-tmp-<n>` and
/// renames it to `<id>`, and until then it is no lock to anyone.
fn lock_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("locks"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains("-tmp-"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until a lock file exists under its own name.
fn wait_for_lock(repo: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = || lock_files(repo) > 0;
    while !written() {
        assert!(Instant::now() < deadline, "no lock file appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(5));
}

fn signal(child: &std::process::Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, sig).expect("signal");
}

fn image_backup(
    repo: &Repo,
    source: &dyn ImageSource,
    retry: Duration,
) -> Result<writer::BackupResult, backstop_repo::Error> {
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source,
            changed: None,
            parent_path: None,
        },
    }];
    let options = BackupOptions {
        retry_lock: retry,
        ..BackupOptions::default()
    };
    writer::backup(repo, &files, &options)
}

#[test]
fn an_exclusive_restic_lock_makes_our_backup_wait_then_name_the_holder() {
    let (_dir, repo_path, repo, image) = fresh(64, 3);
    let source = RawImage::open(&image).expect("open");
    image_backup(&repo, &source, Duration::ZERO).expect("first backup");

    // restic check takes an exclusive lock; freeze it while it holds the lock. On a loaded
    // machine restic may finish and drop its lock before the freeze lands: then try again.
    let mut attempts = 0;
    let mut restic = loop {
        attempts += 1;
        assert!(
            attempts <= 10,
            "could not freeze restic while it held its lock"
        );
        let mut child = Child(
            Command::new("restic")
                .arg("--repo")
                .arg(&repo_path)
                .args(["--no-cache", "check", "--read-data"])
                .env("RESTIC_PASSWORD", PASSWORD)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("restic"),
        );
        wait_for_lock(&repo_path);
        signal(&child.0, rustix::process::Signal::STOP);
        if wait_stopped(&child.0) && lock_files(&repo_path) == 1 {
            break child;
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&child.0),
            rustix::process::Signal::CONT,
        );
        let _ = child.0.wait();
    };

    let started = Instant::now();
    let err =
        image_backup(&repo, &source, Duration::from_secs(2)).expect_err("the repository is locked");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "did not wait for --retry-lock"
    );
    assert_eq!(err.kind, ErrorKind::Locked);
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "repository locked by {host} pid {} since ",
            restic.0.id()
        )),
        "{message}"
    );
    assert!(message.ends_with(" (exclusive)"), "{message}");
    assert_eq!(
        lock_files(&repo_path),
        1,
        "our refused backup left a lock file behind"
    );

    signal(&restic.0, rustix::process::Signal::CONT);
    let status = restic.0.wait().expect("wait");
    assert!(status.success(), "restic check failed after resuming");
    // With the lock gone, the same backup goes through.
    image_backup(&repo, &source, Duration::ZERO).expect("backup after the lock is gone");
}

#[test]
fn our_backup_lock_makes_restic_prune_refuse() {
    let (_dir, repo_path, repo, image) = fresh(8, 4);
    let gated = Gated::new(&image);
    std::thread::scope(|s| {
        let backup = s.spawn(|| image_backup(&repo, &gated, Duration::ZERO));
        wait_for_lock(&repo_path);
        let prune = restic(&repo_path, &["prune"]);
        gated.release();
        let result = backup.join().expect("backup thread");
        assert!(
            !prune.status.success(),
            "restic prune ran while our backup held its lock"
        );
        let stderr = String::from_utf8_lossy(&prune.stderr);
        assert!(stderr.contains("locked"), "{stderr}");
        result.expect("backup");
    });
    assert_eq!(lock_files(&repo_path), 0, "the lock was not removed");
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check",
    );
    ok(
        restic(&repo_path, &["prune"]),
        "restic prune after the backup",
    );
}

/// Regression: restic writes lock files in place, so a lock can be seen before its content is
/// there. An unreadable lock must stop a backup (it may be exclusive), and `unlock` clears it.
#[test]
fn an_unreadable_lock_blocks_until_unlocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let name = "ab".repeat(32);
    std::fs::write(repo_path.join("locks").join(&name), b"").expect("empty lock");
    let image = dir.path().join("disk.raw");
    make_image(&image, 2, 5);
    let source = RawImage::open(&image).expect("open");
    let err = image_backup(&repo, &source, Duration::ZERO).expect_err("locked");
    assert_eq!(err.kind, ErrorKind::Locked);
    assert_eq!(
        err.to_string(),
        "repository locked by an unreadable lock file abababab (remove it with `backstop repo unlock` if nothing uses the repository)"
    );
    assert_eq!(repo.unlock(false).expect("unlock"), 1);
    image_backup(&repo, &source, Duration::ZERO).expect("backup after unlock");
}

/// A source that, on its first read, removes every lock file of the repository (as `restic
/// unlock --remove-all` from another machine would) and then reads slowly.
struct Unlocking<'a> {
    inner: RawImage,
    locks: &'a Path,
    removed: std::sync::atomic::AtomicBool,
    pause: Duration,
    reads: std::sync::atomic::AtomicUsize,
}

impl<'a> Unlocking<'a> {
    fn new(image: &Path, locks: &'a Path, pause: Duration) -> Self {
        Unlocking {
            inner: RawImage::open(image).expect("open"),
            locks,
            removed: Default::default(),
            pause,
            reads: Default::default(),
        }
    }
}

impl ImageSource for Unlocking<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if !self.removed.swap(true, Ordering::SeqCst) {
            for e in std::fs::read_dir(self.locks).expect("locks").flatten() {
                std::fs::remove_file(e.path()).expect("remove lock");
            }
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.pause);
        self.inner.read_at(buf, offset)
    }
}

/// A new repository and an image of `mib` MiB (the directory holds both).
fn fresh(
    mib: u64,
    seed: u64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Repo,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, mib, seed);
    (dir, repo_path, repo, image)
}

fn snapshot_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Right before the index and the snapshot, the backup looks at its lock on the storage:
/// removed under it, the backup writes no snapshot (the refresher has not even run yet).
#[test]
fn a_backup_whose_lock_file_is_removed_writes_no_snapshot() {
    let (_dir, repo_path, repo, image) = fresh(8, 6);
    let locks = repo_path.join("locks");
    let source = Unlocking::new(&image, &locks, Duration::ZERO);
    let err = image_backup(&repo, &source, Duration::ZERO).expect_err("lock lost");
    assert_eq!(err.kind, ErrorKind::Locked, "{err}");
    assert!(
        err.to_string()
            .contains("was lost (its lock file was removed by someone else)"),
        "{err}"
    );
    assert_eq!(snapshot_files(&repo_path), 0, "a snapshot was written");
    assert_eq!(
        std::fs::read_dir(repo_path.join("index"))
            .expect("index")
            .count(),
        0,
        "an index was written"
    );
    ok(restic(&repo_path, &["check"]), "restic check");
}

/// The refresher finds the lock gone at its next round, and the backup stops reading at once.
#[test]
fn a_lost_lock_stops_the_backup_at_the_next_refresh() {
    let (_dir, repo_path, repo, image) = fresh(64, 7);
    let locks = repo_path.join("locks");
    let source = Unlocking::new(&image, &locks, Duration::from_millis(40));
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source: &source,
            changed: None,
            parent_path: None,
        },
    }];
    let options = BackupOptions {
        lock_refresh: Duration::from_millis(100),
        threads: 1,
        ..BackupOptions::default()
    };
    let err = writer::backup(&repo, &files, &options).expect_err("lock lost");
    assert_eq!(err.kind, ErrorKind::Locked, "{err}");
    let reads = source.reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        reads < 64,
        "it read all {reads} chunks after losing its lock"
    );
    assert_eq!(snapshot_files(&repo_path), 0);
}

/// restic's own stale rule (same hostname, PID gone) is not used: another machine may have the
/// same name. restic is killed while it holds an exclusive lock, leaving a lock file with this
/// machine's hostname and a dead PID: it still blocks, until it has gone 30 minutes without
/// being renewed on the storage's clock (its file's time), or `unlock` removes it.
#[test]
fn a_hostname_is_not_an_identity_and_age_is_measured_on_the_storage() {
    let (_dir, repo_path, repo, image) = fresh(4, 8);
    let source = RawImage::open(&image).expect("open");
    image_backup(&repo, &source, Duration::ZERO).expect("first backup");
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            attempts <= 10,
            "could not kill restic while it held its lock"
        );
        let mut child = Command::new("restic")
            .arg("--repo")
            .arg(&repo_path)
            .args(["--no-cache", "check", "--read-data"])
            .env("RESTIC_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restic");
        wait_for_lock(&repo_path);
        signal(&child, rustix::process::Signal::KILL);
        let _ = child.wait();
        if lock_files(&repo_path) == 1 {
            break;
        }
        // Killed before or while it locked: nothing of it may stay for the next attempt.
        for e in std::fs::read_dir(repo_path.join("locks"))
            .expect("locks")
            .flatten()
        {
            std::fs::remove_file(e.path()).expect("remove");
        }
    }
    let err = image_backup(&repo, &source, Duration::ZERO).expect_err("still locked");
    assert_eq!(err.kind, ErrorKind::Locked, "{err}");
    assert!(err.to_string().ends_with(" (exclusive)"), "{err}");

    // Its file 31 minutes old on the storage's clock: stale, removed, and the backup runs.
    let lock = std::fs::read_dir(repo_path.join("locks"))
        .expect("locks")
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().contains("-tmp-"))
        .expect("lock")
        .path();
    let old = std::time::SystemTime::now() - Duration::from_secs(31 * 60);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .and_then(|f| f.set_modified(old))
        .expect("age the lock file");
    image_backup(&repo, &source, Duration::ZERO).expect("a stale lock is removed");
    assert_eq!(lock_files(&repo_path), 0);

    // A lock whose own time is a day old (its machine's clock is off) but whose file was just
    // written is alive.
    let skewed = backstop_repo::lock::LockFile {
        time: (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24)).to_string(),
        exclusive: true,
        hostname: "elsewhere".into(),
        username: "oneadmin".into(),
        pid: 1,
        uid: 0,
        gid: 0,
        backstop_process: None,
        backstop_pidns: None,
    };
    let sealed = repo
        .seal(&serde_json::to_vec(&skewed).expect("json"))
        .expect("seal");
    let id = backstop_repo::format::RepoId::of(&sealed);
    std::fs::write(repo_path.join("locks").join(id.to_hex()), &sealed).expect("plant");
    let err = image_backup(&repo, &source, Duration::ZERO).expect_err("a live lock");
    assert!(
        err.to_string()
            .starts_with("repository locked by elsewhere pid 1"),
        "{err}"
    );
    assert_eq!(
        repo.unlock(false).expect("unlock"),
        0,
        "a live lock is not stale"
    );
    assert_eq!(repo.unlock(true).expect("unlock --remove-all"), 1);
}

/// Bounded reads: a planted 1 GiB file in `locks/` (or 100 MiB in `snapshots/`) is refused
/// by its size, without being read into memory.
#[test]
fn planted_huge_files_are_refused_unread() {
    let (_dir, repo_path, repo, image) = fresh(2, 9);
    let source = RawImage::open(&image).expect("open");
    let hwm = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .expect("VmHWM")
    };
    let huge = repo_path.join("locks").join("cd".repeat(32));
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse 1 GiB");
    let before = hwm();
    let err = image_backup(&repo, &source, Duration::ZERO).expect_err("refused");
    assert_eq!(err.kind, ErrorKind::Locked, "{err}");
    assert!(
        err.to_string()
            .contains("a lock file cdcdcdcd of 1073741824 bytes, too large to be a lock"),
        "{err}"
    );
    assert!(
        hwm() < before + 256 * 1024,
        "the lock file was read into memory: peak {} kB -> {} kB",
        before,
        hwm()
    );
    assert_eq!(repo.unlock(false).expect("unlock"), 1);
    image_backup(&repo, &source, Duration::ZERO).expect("backup");

    let planted = repo_path.join("snapshots").join("ef".repeat(32));
    std::fs::File::create(&planted)
        .and_then(|f| f.set_len(100 << 20))
        .expect("sparse 100 MiB");
    let err = repo.all_snapshots().expect_err("refused");
    assert!(
        err.to_string()
            .contains("more than the 67108864 bytes such a file may have"),
        "{err}"
    );
}
