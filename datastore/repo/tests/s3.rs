//! The S3 backend against a real S3 server (SeaweedFS on loopback): what we write, restic
//! reads, dumps byte-exact and checks; what restic wrote, we restore and extend; locks work
//! both ways; wrong keys, a read-only key, a closed port and TLS trouble are one-line errors
//! that leave nothing behind.

mod common;
use common::s3::{ACCESS_KEY, RO_ACCESS_KEY, RO_SECRET_KEY, S3Server, SECRET_KEY};
use common::*;

use backstop_image::image::{Extent, ImageSource, RawImage};
use backstop_repo::Repo;
use backstop_repo::format::RepoId;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_storage::Storage;
use backstop_storage::s3::{S3Backend, S3Location, S3Options, Secret};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn options(server: &S3Server) -> S3Options {
    S3Options {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: Secret::new(SECRET_KEY),
        ca_cert: server.ca.clone(),
        connections: 3,
        ..S3Options::default()
    }
}

fn connect(repo: &str, opts: &S3Options) -> Result<S3Backend, String> {
    let loc = S3Location::parse(repo).map_err(|e| e.to_string())?;
    S3Backend::connect(&loc, opts).map_err(|e| e.to_string())
}

fn backup_with(
    repo: &Repo,
    source: &dyn ImageSource,
    changed: Option<&[Extent]>,
    parent: Option<RepoId>,
    retry: Duration,
) -> Result<RepoId, backstop_repo::Error> {
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source,
            changed,
            parent_path: parent.map(|_| DISK.into()),
        },
    }];
    writer::backup(
        repo,
        &files,
        &BackupOptions {
            parent,
            retry_lock: retry,
            ..BackupOptions::default()
        },
    )
    .map(|r| r.snapshot_id)
}

fn backup(repo: &Repo, image: &Path, changed: Option<&[Extent]>, parent: Option<RepoId>) -> RepoId {
    let source = RawImage::open(image).expect("image");
    backup_with(repo, &source, changed, parent, Duration::ZERO).expect("backup")
}

fn restic_ok(server: &S3Server, repo: &str, args: &[&str]) -> Vec<u8> {
    ok(
        server.restic(repo, PASSWORD, args),
        &format!("restic {args:?}"),
    )
}

#[test]
fn we_restore_and_extend_what_restic_wrote_on_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    server.make_bucket("stock");
    let url = server.repo("stock", "job_7");
    restic_ok(&server, &url, &["init"]);
    let staging = dir.path().join("var/lib/one/datastores/0/22/backup");
    fs::create_dir_all(&staging).expect("staging");
    let disk = staging.join("disk.0.0");
    make_image(&disk, 12, 5);
    let d = disk.to_str().expect("utf-8");
    restic_ok(&server, &url, &["backup", "--tag", "one-22", d]);

    let be = connect(&url, &options(&server)).expect("connect");
    let repo = Repo::open(Arc::new(be), PASSWORD).expect("open restic's repository");
    let target = dir.path().join("restored");
    repo.restore_file(
        "latest",
        d,
        &target,
        2,
        backstop_repo::lock::RetryLock(Duration::ZERO),
    )
    .expect("restore");
    assert!(
        fs::read(&target).expect("read") == fs::read(&disk).expect("read"),
        "restored file differs"
    );
    // Our backup into restic's repository leaves it checking clean.
    let image = dir.path().join("disk.raw");
    make_image(&image, 4, 11);
    let id = backup(&repo, &image, None, None);
    let dumped = restic_ok(&server, &url, &["dump", &id.to_hex(), DISK]);
    assert!(dumped == fs::read(&image).expect("read"), "dump differs");
    restic_ok(&server, &url, &["check", "--read-data"]);
}

fn wait_for_lock(storage: &dyn Storage) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while storage.list_locks().expect("list locks").is_empty() {
        assert!(Instant::now() < deadline, "no lock object appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn locks_on_s3_hold_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let url = server.repo("locks", "5");
    let storage = Arc::new(connect(&url, &options(&server)).expect("connect"));
    let repo = Repo::init(storage.clone(), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 4);
    let first = backup(&repo, &image, None, None);

    // Ours stops restic's prune.
    let gated = Gated::new(&image);
    std::thread::scope(|s| {
        let running = s.spawn(|| backup_with(&repo, &gated, None, None, Duration::ZERO));
        wait_for_lock(storage.as_ref());
        let prune = server.restic(&url, PASSWORD, &["prune"]);
        gated.release();
        running.join().expect("backup thread").expect("backup");
        assert!(!prune.status.success(), "restic prune ran under our lock");
        let stderr = String::from_utf8_lossy(&prune.stderr);
        assert!(stderr.contains("locked"), "{stderr}");
    });
    assert!(
        storage.list_locks().expect("locks").is_empty(),
        "our lock stayed"
    );

    // restic's exclusive lock (a check, frozen while it holds it) stops our backup. restic may
    // finish before the freeze lands: then try again.
    let mut attempts = 0;
    let (mut restic, pid) = loop {
        attempts += 1;
        assert!(
            attempts <= 10,
            "could not freeze restic while it held its lock"
        );
        // Killed by its PID when the test ends, whatever happens.
        let mut child = Child(
            Command::new("restic")
                .args(["--no-cache", "-r", &url, "check", "--read-data"])
                .env("RESTIC_PASSWORD", PASSWORD)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("restic"),
        );
        wait_for_lock(storage.as_ref());
        let pid = rustix::process::Pid::from_child(&child.0);
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("stop");
        if wait_stopped(&child.0) && !storage.list_locks().expect("locks").is_empty() {
            break (child, pid);
        }
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        let _ = child.0.wait();
    };
    let source = RawImage::open(&image).expect("open");
    let result = backup_with(&repo, &source, None, Some(first), Duration::ZERO);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("cont");
    let status = restic.0.wait().expect("wait");
    assert!(status.success(), "restic check failed after resuming");
    let err = result.expect_err("restic's exclusive lock must stop our backup");
    assert_eq!(err.kind, backstop_repo::ErrorKind::Locked, "{err}");
    assert!(err.to_string().ends_with(" (exclusive)"), "{err}");
    restic_ok(&server, &url, &["check", "--read-data"]);
}

#[test]
fn wrong_keys_a_read_only_key_and_a_closed_port_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    server.make_bucket("keys");
    let url = server.repo("keys", "9");
    let one_line = |e: &str| {
        assert!(!e.contains('\n'), "more than one line: {e}");
        assert!(
            !e.contains(SECRET_KEY) && !e.contains("X-Amz-Signature"),
            "{e}"
        );
    };

    let wrong_secret = S3Options {
        secret_access_key: Secret::new("not-the-secret"),
        ..options(&server)
    };
    let e = connect(&url, &wrong_secret).expect_err("wrong secret");
    one_line(&e);
    assert!(e.contains("HTTP 403"), "{e}");
    assert!(!e.contains("not-the-secret"), "{e}");

    let unknown = S3Options {
        access_key_id: "nosuchkey".into(),
        ..options(&server)
    };
    let e = connect(&url, &unknown).expect_err("unknown key");
    one_line(&e);
    assert!(e.contains("HTTP 403"), "{e}");

    // A read-only key connects (it may list) but cannot make a repository; nothing is left.
    let reader = S3Options {
        access_key_id: RO_ACCESS_KEY.into(),
        secret_access_key: Secret::new(RO_SECRET_KEY),
        ..options(&server)
    };
    let be = connect(&url, &reader).expect("a reader may connect");
    let e = Repo::init(Arc::new(be), PASSWORD).expect_err("a reader cannot init");
    let e = e.to_string();
    one_line(&e);
    assert!(e.contains("403"), "{e}");
    let admin = connect(&url, &options(&server)).expect("connect");
    assert!(
        admin.objects().expect("list").is_empty(),
        "a refused init left objects behind"
    );

    // Nobody listens: the retries are spent, then one line names the endpoint.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let quick = S3Options {
        retries: 2,
        first_backoff: Duration::from_millis(50),
        ..options(&server)
    };
    let e = connect(&format!("s3:http://127.0.0.1:{port}/keys/9"), &quick).expect_err("closed");
    one_line(&e);
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.contains("gave up after 3 attempts"), "{e}");
}

#[test]
fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start_with(dir.path(), true);
    let url = server.repo("tls", "3");
    let be = connect(&url, &options(&server)).expect("connect with the CA");
    let repo = Repo::init(Arc::new(be), PASSWORD).expect("init over https");
    let image = dir.path().join("disk.raw");
    make_image(&image, 4, 9);
    let id = backup(&repo, &image, None, None);
    let dumped = restic_ok(&server, &url, &["dump", &id.to_hex(), DISK]);
    assert!(dumped == fs::read(&image).expect("read"), "dump differs");

    let no_ca = S3Options {
        ca_cert: None,
        ..options(&server)
    };
    let e = connect(&url, &no_ca).expect_err("an unknown CA is refused");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("TLS"), "{e}");

    let insecure = S3Options {
        ca_cert: None,
        insecure_tls: true,
        ..options(&server)
    };
    connect(&url, &insecure).expect("RESTIC_S3_INSECURE_TLS skips the check");

    let missing = S3Options {
        ca_cert: Some(dir.path().join("no-such-ca.pem")),
        ..options(&server)
    };
    let e = connect(&url, &missing).expect_err("a missing CA file");
    assert!(e.contains("cannot read the CA file"), "{e}");
}

#[test]
fn the_store_stopping_mid_backup_fails_it_in_one_line_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = S3Server::start(dir.path());
    let url = server.repo("outage", "4");
    let quick = S3Options {
        retries: 2,
        first_backoff: Duration::from_millis(100),
        ..options(&server)
    };
    let repo =
        Repo::init(Arc::new(connect(&url, &quick).expect("connect")), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 31);
    let first = backup(&repo, &image, None, None);
    let first_bytes = fs::read(&image).expect("read");

    // The second backup has taken its lock and waits on its first read; the store stops.
    scribble(&image, 4, 77);
    let gated = Gated::new(&image);
    let err = std::thread::scope(|s| {
        let running = s.spawn(|| backup_with(&repo, &gated, None, Some(first), Duration::ZERO));
        wait_for_lock(repo.backend().as_ref());
        server.stop();
        gated.release();
        running.join().expect("backup thread")
    })
    .expect_err("a backup whose store went away fails");
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.contains(&server.endpoint.replace("http://", "")),
        "{message}"
    );
    assert!(message.contains("gave up after 3 attempts"), "{message}");

    // Back up: the killed run left at most unreferenced packs and its lock; nothing that
    // looks complete, and the first snapshot is whole.
    server.restart();
    restic_ok(&server, &url, &["unlock", "--remove-all"]);
    restic_ok(&server, &url, &["check", "--read-data"]);
    let snapshots: serde_json::Value =
        serde_json::from_slice(&restic_ok(&server, &url, &["snapshots", "--json"])).expect("json");
    assert_eq!(snapshots.as_array().map(Vec::len), Some(1), "{snapshots}");
    assert!(
        restic_ok(&server, &url, &["dump", &first.to_hex(), DISK]) == first_bytes,
        "the first snapshot changed"
    );
}

/// A bucket over its quota (SeaweedFS makes it read-only, and answers writes with 500): the
/// backup fails in one line once its retries are spent, writes nothing, and what was there
/// stays whole.
#[test]
fn a_bucket_over_its_quota_fails_the_backup_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let url = server.repo("quota", "8");
    let quick = S3Options {
        retries: 1,
        first_backoff: Duration::from_millis(50),
        ..options(&server)
    };
    let repo =
        Repo::init(Arc::new(connect(&url, &quick).expect("connect")), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 5);
    let first = backup(&repo, &image, None, None);
    let first_bytes = fs::read(&image).expect("read");
    server.shell("s3.bucket.quota -name=quota -op=set -sizeMB=1\n");
    // The store learns the bucket's size from its volume servers' heartbeats: enforce until
    // it has.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let said = server.shell("s3.bucket.quota.enforce -apply\n");
        if said.contains("read only") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quota was never enforced: {said}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    scribble(&image, 4, 9);
    let source = RawImage::open(&image).expect("open");
    let err = backup_with(&repo, &source, None, Some(first), Duration::ZERO)
        .expect_err("a read-only bucket takes no backup");
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("cannot write s3:"), "{message}");
    assert!(message.contains("gave up after 2 attempts"), "{message}");
    let snapshots: serde_json::Value = serde_json::from_slice(&restic_ok(
        &server,
        &url,
        &["snapshots", "--json", "--no-lock"],
    ))
    .expect("json");
    assert_eq!(snapshots.as_array().map(Vec::len), Some(1), "{snapshots}");
    assert!(
        restic_ok(&server, &url, &["dump", "--no-lock", &first.to_hex(), DISK]) == first_bytes,
        "the first snapshot changed"
    );
}

/// A 503 storm (injected by a fault proxy in front of the real server, since SeaweedFS cannot
/// be told to refuse): a short one is ridden out by the retries; a long one fails the backup
/// in one line naming S3's SlowDown, and the repository stays as it was.
#[test]
fn a_503_storm_from_a_fault_injecting_proxy_is_retried_then_said() {
    use common::s3::FaultProxy;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let proxy = FaultProxy::start(server.port);
    let url = format!("s3:{}/storm/6", proxy.endpoint);
    let quick = S3Options {
        retries: 5,
        first_backoff: Duration::from_millis(20),
        ..options(&server)
    };
    let repo =
        Repo::init(Arc::new(connect(&url, &quick).expect("connect")), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 3);

    // Three refusals in a row: retried, and the backup goes through.
    proxy.fail_next.store(3, Ordering::SeqCst);
    let first = backup(&repo, &image, None, None);
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 3);
    let first_bytes = fs::read(&image).expect("read");
    let direct = server.repo("storm", "6");
    assert!(restic_ok(&server, &direct, &["dump", &first.to_hex(), DISK]) == first_bytes);

    // A storm longer than the retries: one line, S3's own code, nothing written.
    proxy.fail_next.store(1_000_000, Ordering::SeqCst);
    scribble(&image, 4, 12);
    let source = RawImage::open(&image).expect("open");
    let err = backup_with(&repo, &source, None, Some(first), Duration::ZERO)
        .expect_err("a storm longer than the retries");
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("HTTP 503 SlowDown"), "{message}");
    assert!(message.contains("gave up after 6 attempts"), "{message}");
    proxy.fail_next.store(0, Ordering::SeqCst);
    restic_ok(&server, &direct, &["check", "--read-data"]);
    let snapshots: serde_json::Value =
        serde_json::from_slice(&restic_ok(&server, &direct, &["snapshots", "--json"]))
            .expect("json");
    assert_eq!(snapshots.as_array().map(Vec::len), Some(1), "{snapshots}");
}
