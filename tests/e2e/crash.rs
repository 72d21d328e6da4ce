//! Killing backups: SIGKILL at 20 points during `backstop repo backup` on a local path, and at
//! 10 points of one to S3; after each, restic's own check reads every pack clean and every
//! snapshot made before still dumps byte-exact.

use crate::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};
use crate::support::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "crash test";

/// The repository under test: a local path, or an S3 URL on a test server.
enum Target<'a> {
    Local(PathBuf),
    S3(&'a S3Server, String),
}

impl Target<'_> {
    fn backstop(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BACKSTOP);
        c.arg("repo").arg("-r");
        match self {
            Target::Local(p) => c.arg(p),
            Target::S3(_, url) => c
                .arg(url)
                .arg("--no-cache")
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        };
        c.args(args).env("RESTIC_PASSWORD", PASSWORD);
        c
    }

    /// `backstop repo backup` of the test image into the test path.
    fn backup(&self, image: &Path, json: bool) -> Command {
        let mut args = vec![
            "backup",
            "--image",
            image.to_str().expect("utf-8"),
            "--format",
            "raw",
            "--path",
            "/d/disk.0.0",
        ];
        if json {
            args.push("--json");
        }
        self.backstop(&args)
    }

    fn restic(&self, args: &[&str]) -> std::process::Output {
        match self {
            Target::Local(repo) => backstop_testkit::restic::local(repo, PASSWORD, args),
            Target::S3(server, url) => server.restic(url, PASSWORD, args),
        }
    }

    fn locks(&self) -> usize {
        match self {
            Target::Local(repo) => fs::read_dir(repo.join("locks"))
                .map(|d| d.count())
                .unwrap_or(0),
            Target::S3(..) => {
                let out = self.restic(&["list", "locks", "--no-lock"]);
                assert!(out.status.success(), "restic list locks: {out:?}");
                String::from_utf8_lossy(&out.stdout).lines().count()
            }
        }
    }
}

/// xorshift64*, for deterministic "random" kill points and data.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn fill_random(path: &Path, mib: u64, g: &mut Gen) {
    let f = fs::File::create(path).expect("create");
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&g.next().to_le_bytes());
        }
        f.write_all_at(&buf, i << 20).expect("write");
    }
}

#[test]
fn sigkill_at_20_points_leaves_a_clean_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    sigkill_rounds(
        &Target::Local(repo.clone()),
        &dir.path().join("disk.raw"),
        20,
    );
    // The leftovers of the killed runs were unreferenced packs and temporary files: our prune
    // removed both (and restic checked the repository clean after).
    let temp_left: Vec<String> = walk_names(&repo)
        .into_iter()
        .filter(|n| n.contains(".tmp-") || n.contains("-restic-temp-"))
        .collect();
    assert!(temp_left.is_empty(), "temporary files left: {temp_left:?}");
}

#[test]
fn sigkill_at_10_points_of_an_s3_backup_leaves_a_clean_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let target = Target::S3(&server, server.repo("crash", "22"));
    sigkill_rounds(&target, &dir.path().join("disk.raw"), 10);
}

/// A full backup, then `rounds` backups of new content, each killed at a random point; after
/// each, restic unlocks and checks every pack, and every finished snapshot dumps as it was.
/// Then a killed run's lock is removed by the next backstop run, and our prune leaves the
/// repository checking clean.
fn sigkill_rounds(target: &Target, image: &Path, rounds: u64) {
    let init = target.backstop(&["init"]).output().expect("init");
    assert!(init.status.success(), "{init:?}");
    let mut g = Gen(42);
    // (snapshot id, the bytes it must dump)
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let snapshot_id = |stdout: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(stdout).expect("json")["snapshot_id"]
            .as_str()
            .expect("id")
            .to_string()
    };

    // How long one backup takes here, to spread the kill points over it.
    fill_random(image, 48, &mut g);
    let started = Instant::now();
    let out = target.backup(image, true).output().expect("backup");
    assert!(out.status.success(), "{out:?}");
    let full = started.elapsed();
    kept.push((snapshot_id(&out.stdout), fs::read(image).expect("read")));

    for round in 0..rounds {
        // new content each round, so the killed backup has real work to do
        fill_random(image, 48, &mut g);
        let delay = Duration::from_micros(g.next() % (full.as_micros() as u64 + 1));
        let mut child = target
            .backup(image, true)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL, by PID
        let out = child.wait_with_output().expect("wait");
        if out.status.success() {
            // It finished before the kill: that snapshot must hold too.
            kept.push((snapshot_id(&out.stdout), fs::read(image).expect("read")));
        }
        // A SIGKILLed process cannot remove its lock; restic's unlock removes it only if restic
        // itself finds it stale (its process is gone).
        let unlock = target.restic(&["unlock"]);
        assert!(
            unlock.status.success(),
            "round {round}: restic unlock failed"
        );
        let check = target.restic(&["check", "--read-data"]);
        assert!(
            check.status.success(),
            "round {round} (kill after {delay:?}): restic check failed:\n{}\n{}",
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&check.stdout)
        );
    }
    for (id, bytes) in &kept {
        let dumped = target.restic(&["dump", id, "/d/disk.0.0"]);
        assert!(dumped.status.success(), "dump {id}");
        assert!(
            dumped.stdout == *bytes,
            "snapshot {id} no longer dumps what was backed up"
        );
    }
    // Without restic unlock: the next backstop run removes the dead process's lock itself.
    // The run to kill has new content to store under a bandwidth limit (on S3 here), so it
    // holds its lock for seconds: on S3 each look at the locks is a restic run
    // of its own, slower than a backup with nothing new to store.
    fill_random(image, 48, &mut g);
    let mut child = target
        .backup(image, false)
        .env("RESTIC_BWLIMIT", "4096")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while target.locks() == 0 {
        assert!(Instant::now() < deadline, "the backup took no lock");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(target.locks(), 1, "the killed run's lock");
    let next = target.backup(image, false).output().expect("backup");
    assert!(next.status.success(), "{next:?}");
    assert!(
        target.restic(&["check"]).status.success(),
        "restic is still blocked by the dead lock"
    );
    let prune = target.backstop(&["prune"]).output().expect("prune");
    assert!(prune.status.success(), "{prune:?}");
    assert!(target.restic(&["check", "--read-data"]).status.success());
}

fn walk_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}
