//! The ssh sessions of one process are shared by every backend that reaches the same server
//! (a sync job opens one repository after another on it), against a real sshd whose log says
//! how many connections it accepted and closed. A test binary of its own: keeping sessions is
//! process-wide, and the other SFTP tests connect again on purpose to see a changed key.

mod common;
use common::sshd::Sshd;
use common::*;

use backstop_repo::Repo;
use backstop_storage::sftp::{KeepSessions, SftpBackend, SftpLocation, SftpOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn options(config: &Path) -> SftpOptions {
    SftpOptions {
        connections: 4,
        ssh_config: Some(config.to_path_buf()),
        ..SftpOptions::default()
    }
}

fn connect(repo_dir: &Path, opts: &SftpOptions) -> SftpBackend {
    let loc =
        SftpLocation::parse(&format!("sftp:backup1:{}", repo_dir.display())).expect("location");
    SftpBackend::connect(&loc, opts).expect("connect")
}

fn lines(sshd: &Sshd, start: &str) -> usize {
    sshd.log().lines().filter(|l| l.starts_with(start)).count()
}

/// Connections the server accepted (logged in).
fn accepted(sshd: &Sshd) -> usize {
    lines(sshd, "Accepted publickey")
}

/// Connections that ended (after logging in, or before).
fn ended(sshd: &Sshd) -> usize {
    lines(sshd, "Disconnected from user") + lines(sshd, "Connection closed by")
}

/// Waits (up to 20 s) until every connection the server saw has ended; the logins so far.
fn all_ended(sshd: &Sshd) -> usize {
    let until = Instant::now() + Duration::from_secs(20);
    while ended(sshd) < lines(sshd, "Connection from") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ended(sshd),
        lines(sshd, "Connection from"),
        "connections left open:\n{}",
        sshd.log()
    );
    accepted(sshd)
}

#[test]
fn backends_to_one_server_share_sessions_which_end_with_the_last_or_with_the_guard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let opts = options(&sshd.ssh_config);
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 24);

    // A second backend to the same server, for another repository, opens no connection.
    let a = connect(&dir.path().join("remote/a"), &opts);
    assert_eq!(accepted(&sshd), 1, "{}", sshd.log());
    let b = connect(&dir.path().join("remote/b"), &opts);
    assert_eq!(accepted(&sshd), 1, "the second backend connected again");
    // Both work at once over the shared sessions (never more than the two backends' 8).
    let (ra, rb) = (
        Repo::init(Arc::new(a), PASSWORD).expect("init a"),
        Repo::init(Arc::new(b), PASSWORD).expect("init b"),
    );
    std::thread::scope(|s| {
        s.spawn(|| backup_disk(&ra, &image, None, None));
        s.spawn(|| backup_disk(&rb, &image, None, None));
    });
    drop((ra, rb));
    for repo in ["a", "b"] {
        ok(
            restic(
                &dir.path().join("remote").join(repo),
                &["check", "--read-data"],
            ),
            "restic check",
        );
    }
    // The last backend gone, its sessions end; the next backend connects anew.
    let during = all_ended(&sshd);
    assert!((1..=8).contains(&during), "{during} connections for 2 x 4");
    let c = connect(&dir.path().join("remote/a"), &opts);
    assert_eq!(accepted(&sshd), during + 1);
    drop(c);
    let base = all_ended(&sshd);

    // Under a guard (a sync or verify run), sessions outlive their backend for the next one,
    // and end with the guard.
    let keep = KeepSessions::new();
    let d = connect(&dir.path().join("remote/a"), &opts);
    assert_eq!(accepted(&sshd), base + 1);
    let repo = Repo::open(Arc::new(d), PASSWORD).expect("open a");
    drop(repo);
    let kept = accepted(&sshd);
    let e = connect(&dir.path().join("remote/b"), &opts);
    assert_eq!(accepted(&sshd), kept, "the kept sessions were not used");
    let repo = Repo::open(Arc::new(e), PASSWORD).expect("open b");
    assert_eq!(repo.all_snapshots().expect("snapshots").len(), 1);
    drop(repo);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lines(&sshd, "Disconnected from user") < accepted(&sshd),
        "the kept sessions ended while the guard lived:\n{}",
        sshd.log()
    );
    drop(keep);
    all_ended(&sshd);
}
