//! Locks against the real restic: its exclusive lock stops our backup (which waits, then names
//! the holder), and our backup's lock stops `restic prune`.

mod common;
use common::*;

use backstop_datastore::ErrorKind;
use backstop_datastore::repo::Repo;
use backstop_datastore::repo::backend::LocalBackend;
use backstop_datastore::repo::image::{ImageSource, RawImage};
use backstop_datastore::repo::writer::{self, BackupOptions, Content, FileSpec};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn lock_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("locks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until a lock file exists and has content (restic writes it in place).
fn wait_for_lock(repo: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = || {
        std::fs::read_dir(repo.join("locks"))
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false)
    };
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
) -> Result<writer::BackupResult, backstop_datastore::Error> {
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
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 64, 3);
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
        if child.0.try_wait().expect("try_wait").is_none() && lock_files(&repo_path) == 1 {
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

/// A source that blocks its first read until released, so a backup holds its lock meanwhile.
struct Gated {
    inner: RawImage,
    open: Mutex<bool>,
    cv: Condvar,
}

impl ImageSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.cv.wait(open).expect("wait");
        }
        drop(open);
        self.inner.read_at(buf, offset)
    }
}

#[test]
fn our_backup_lock_makes_restic_prune_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 4);
    let gated = Gated {
        inner: RawImage::open(&image).expect("open"),
        open: Mutex::new(false),
        cv: Condvar::new(),
    };
    std::thread::scope(|s| {
        let backup = s.spawn(|| image_backup(&repo, &gated, Duration::ZERO));
        wait_for_lock(&repo_path);
        let prune = restic(&repo_path, &["prune"]);
        *gated.open.lock().expect("lock") = true;
        gated.cv.notify_all();
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
