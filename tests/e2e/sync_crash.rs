//! Killing a copy: `backstop repo copy` of a chain (a FULL and 5 increments, 48 MiB that does
//! not compress) SIGKILLed at 10 points; after each, restic checks the destination clean
//! (packs no index names are the only leftovers, which restic calls non-critical) and every
//! snapshot that was copied dumps byte-exact; then a run completes, copying only what is
//! missing, and `restic check --read-data` is clean.

use crate::support::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SRC_PW: &str = "copy source";
const DST_PW: &str = "copy destination";
const IN_SNAPSHOT: &str = "/d/disk.0.0";

fn copy_cmd(src: &Path, dst: &Path) -> Command {
    let mut c = Command::new(BACKSTOP);
    c.args(["repo", "-r"])
        .arg(dst)
        .args(["copy", "--from-repo"])
        .arg(src)
        .env("RESTIC_PASSWORD", DST_PW)
        .env("RESTIC_FROM_PASSWORD", SRC_PW)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn restic(repo: &Path, pw: &str, args: &[&str]) -> std::process::Output {
    Command::new("restic")
        .arg("--no-cache")
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", pw)
        .output()
        .expect("restic")
}

#[test]
fn sigkill_at_10_points_of_a_copy_leaves_a_clean_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let raw = dir.path().join("disk.raw");
    let bs = |repo: &Path, pw: &str, args: &[&str]| {
        let out = run_env(
            BACKSTOP,
            &[&["repo", "-r", repo.to_str().expect("utf-8")][..], args].concat(),
            b"",
            &[("RESTIC_PASSWORD", pw)],
        );
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        out
    };
    bs(&src, SRC_PW, &["init"]);
    bs(&dst, DST_PW, &["init"]);
    let mut data = noise(48 << 20, 7);
    let mut points = std::collections::BTreeMap::new();
    for k in 0..6usize {
        if k > 0 {
            let at = (k * 5) << 20;
            data[at..at + (4 << 20)].copy_from_slice(&noise(4 << 20, 50 + k as u64));
        }
        fs::write(&raw, &data).expect("raw");
        let out = bs(
            &src,
            SRC_PW,
            &[
                "backup",
                "--image",
                raw.to_str().expect("utf-8"),
                "--path",
                IN_SNAPSHOT,
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        points.insert(
            v["snapshot_id"].as_str().expect("id").to_string(),
            data.clone(),
        );
    }
    // How long a whole copy takes here, to spread the kill points over it.
    let probe = dir.path().join("probe");
    bs(&probe, DST_PW, &["init"]);
    let started = Instant::now();
    assert!(copy_cmd(&src, &probe).status().expect("copy").success());
    let whole = started.elapsed();
    let mut g = 0x2545_f491_u64;
    for round in 0..10 {
        g ^= g << 13;
        g ^= g >> 7;
        g ^= g << 17;
        let at = whole.mul_f64(0.05 + (g % 900) as f64 / 1000.0);
        let mut child = copy_cmd(&src, &dst).spawn().expect("copy");
        std::thread::sleep(at.min(Duration::from_secs(20)));
        let _ = child.kill();
        let _ = child.wait();
        // A SIGKILLed process cannot remove its lock; restic's unlock removes it (its process
        // is gone, so restic finds it stale).
        let unlock = restic(&dst, DST_PW, &["unlock"]);
        assert!(unlock.status.success(), "round {round}: {unlock:?}");
        let check = restic(&dst, DST_PW, &["check"]);
        assert!(
            check.status.success(),
            "round {round}: restic check after a kill at {at:?}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        // Whatever was copied is whole.
        let listed: serde_json::Value =
            serde_json::from_slice(&restic(&dst, DST_PW, &["snapshots", "--json"]).stdout)
                .expect("json");
        for s in listed.as_array().expect("array") {
            let original = s["original"].as_str().expect("original");
            let want = points.get(original).expect("a copy of a source snapshot");
            let dumped = restic(
                &dst,
                DST_PW,
                &["dump", s["id"].as_str().expect("id"), IN_SNAPSHOT],
            );
            assert!(dumped.stdout == *want, "round {round}: copy of {original}");
        }
    }
    let out = Command::new(BACKSTOP)
        .args(["repo", "-r"])
        .arg(&dst)
        .args(["copy", "--from-repo"])
        .arg(&src)
        .env("RESTIC_PASSWORD", DST_PW)
        .env("RESTIC_FROM_PASSWORD", SRC_PW)
        .output()
        .expect("copy");
    assert!(out.status.success(), "{out:?}");
    let check = restic(&dst, DST_PW, &["check", "--read-data"]);
    assert!(check.status.success(), "{check:?}");
    let listed: serde_json::Value =
        serde_json::from_slice(&restic(&dst, DST_PW, &["snapshots", "--json"]).stdout)
            .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(6), "{listed}");
}
