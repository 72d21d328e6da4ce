//! Killing backups: SIGKILL at 20 points during `backstop repo backup`; after each, restic's
//! own check reads every pack clean and every snapshot made before still dumps byte-exact.

use crate::support::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "crash test";

fn repo_cmd(repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BACKSTOP);
    c.arg("repo")
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD);
    c
}

/// `backstop repo backup` of the test image into the test path.
fn backup_cmd(repo: &Path, image: &Path, json: bool) -> Command {
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
    repo_cmd(repo, &args)
}

fn restic(repo: &Path, args: &[&str]) -> std::process::Output {
    Command::new("restic")
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("the restic binary must be installed (apt install restic)")
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
    assert!(
        repo_cmd(&repo, &["init"])
            .output()
            .expect("init")
            .status
            .success()
    );
    let image = dir.path().join("disk.raw");
    let mut g = Gen(42);
    // (snapshot id, the bytes it must dump)
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();

    // How long one backup takes here, to spread the kill points over it.
    fill_random(&image, 48, &mut g);
    let started = Instant::now();
    let out = backup_cmd(&repo, &image, true).output().expect("backup");
    assert!(out.status.success(), "{out:?}");
    let full = started.elapsed();
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["snapshot_id"]
        .as_str()
        .expect("id")
        .to_string();
    kept.push((id, fs::read(&image).expect("read")));

    for round in 0..20u64 {
        // new content each round, so the killed backup has real work to do
        fill_random(&image, 48, &mut g);
        let delay = Duration::from_micros(g.next() % (full.as_micros() as u64 + 1));
        let mut child = backup_cmd(&repo, &image, true)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL, by PID
        let out = child.wait_with_output().expect("wait");
        if out.status.success() {
            // It finished before the kill: that snapshot must hold too.
            let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["snapshot_id"]
                .as_str()
                .expect("id")
                .to_string();
            kept.push((id, fs::read(&image).expect("read")));
        }
        // A SIGKILLed process cannot remove its lock; restic's unlock removes it only if restic
        // itself finds it stale (its process is gone).
        let unlock = restic(&repo, &["unlock"]);
        assert!(
            unlock.status.success(),
            "round {round}: restic unlock failed"
        );
        let check = restic(&repo, &["check", "--read-data"]);
        assert!(
            check.status.success(),
            "round {round} (kill after {delay:?}): restic check failed:\n{}\n{}",
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&check.stdout)
        );
    }
    for (id, bytes) in &kept {
        let dumped = restic(&repo, &["dump", id, "/d/disk.0.0"]);
        assert!(dumped.status.success(), "dump {id}");
        assert!(
            dumped.stdout == *bytes,
            "snapshot {id} no longer dumps what was backed up"
        );
    }
    // Without restic unlock: the next backstop run removes the dead process's lock itself.
    let mut child = backup_cmd(&repo, &image, false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(repo.join("locks"))
        .map(|d| d.count())
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the backup took no lock");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        fs::read_dir(repo.join("locks"))
            .map(|d| d.count())
            .unwrap_or(0),
        1,
        "the killed run's lock"
    );
    let next = backup_cmd(&repo, &image, false).output().expect("backup");
    assert!(next.status.success(), "{next:?}");
    assert!(
        restic(&repo, &["check"]).status.success(),
        "restic is still blocked by the dead lock"
    );

    // The leftovers of the killed runs are unreferenced packs and temporary files: our prune
    // removes both, and restic checks the repository clean after.
    let prune = repo_cmd(&repo, &["prune"]).output().expect("prune");
    assert!(prune.status.success(), "{prune:?}");
    let temp_left: Vec<String> = walk_names(&repo)
        .into_iter()
        .filter(|n| n.contains(".tmp-") || n.contains("-restic-temp-"))
        .collect();
    assert!(temp_left.is_empty(), "temporary files left: {temp_left:?}");
    assert!(restic(&repo, &["check", "--read-data"]).status.success());
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
