//! `backstop repo` with real qemu images: qcow2 read through qemu-nbd, changed extents from a
//! persistent dirty bitmap (--bitmap) and from nbdinfo's JSON (--changed-extents).

use crate::support::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "cli test";
const IN_SNAPSHOT: &str = "/var/lib/one/datastores/0/9/backup/disk.0.0";

fn repo(repo: &Path, args: &[&str]) -> Outcome {
    let out = Command::new(BACKSTOP)
        .arg("repo")
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("backstop");
    let o = Outcome::from(out);
    assert_eq!(o.code, Some(0), "backstop repo {args:?}: {o:?}");
    o
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dump(r: &Path, snapshot: &str) -> Vec<u8> {
    let out = Command::new(BACKSTOP)
        .arg("repo")
        .arg("-r")
        .arg(r)
        .args(["dump", snapshot, IN_SNAPSHOT])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("dump");
    assert!(out.status.success());
    out.stdout
}

fn to_raw(qcow2: &Path, raw: &Path) -> Vec<u8> {
    sh(
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
    fs::read(raw).expect("raw")
}

/// A 32 MiB qcow2 with data, then the bitmap `b0`, then scattered writes it records.
fn disk_with_changes(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let disk = dir.join("disk.qcow2");
    let d = disk.to_str().expect("utf-8").to_string();
    sh("qemu-img", &["create", "-q", "-f", "qcow2", &d, "32M"]);
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x41 0 4M",
            "-c",
            "write -P 0x42 12M 3M",
            &d,
        ],
    );
    let before = to_raw(&disk, &dir.join("before.raw"));
    sh("qemu-img", &["bitmap", "--add", &d, "b0"]);
    (disk, before)
}

fn scribble(disk: &Path) {
    let d = disk.to_str().expect("utf-8");
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x61 1000448 4096",
            "-c",
            "write -P 0x62 13M 64K",
            "-c",
            "write -P 0x63 30M 512",
            d,
        ],
    );
}

#[test]
fn qcow2_full_and_bitmap_incremental_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("repo");
    repo(&r, &["init"]);
    let (disk, before) = disk_with_changes(dir.path());
    let d = disk.to_str().expect("utf-8");
    // The format is named, never guessed: a file that starts with a qcow2 header is refused
    // without --format (a raw disk's guest may have written that header).
    let guessed = Command::new(BACKSTOP)
        .args(["repo", "-r", r.to_str().expect("utf-8")])
        .args(["backup", "--image", d, "--path", IN_SNAPSHOT])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("backstop");
    let err = String::from_utf8_lossy(&guessed.stderr);
    assert_eq!(guessed.status.code(), Some(1), "{err}");
    assert!(
        err.contains("starts with a qcow2 header: give --format qcow2")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let full = repo(
        &r,
        &[
            "backup",
            "--image",
            d,
            "--format",
            "qcow2",
            "--path",
            IN_SNAPSHOT,
            "--json",
        ],
    );
    let stats: serde_json::Value = serde_json::from_str(&full.stdout).expect("json");
    assert_eq!(stats["zero_chunks"], 25, "unallocated clusters: {stats}");
    assert!(dump(&r, "latest") == before);

    scribble(&disk);
    let after = to_raw(&disk, &dir.path().join("after.raw"));
    let inc = repo(
        &r,
        &[
            "backup",
            "--image",
            d,
            "--format",
            "qcow2",
            "--path",
            IN_SNAPSHOT,
            "--parent",
            "latest",
            "--bitmap",
            "b0",
            "--json",
        ],
    );
    let stats: serde_json::Value = serde_json::from_str(&inc.stdout).expect("json");
    assert_eq!(
        stats["reused_chunks"], 29,
        "three changed chunks, the rest reused: {stats}"
    );
    assert!(
        dump(&r, "latest") == after,
        "the incremental does not dump the changed disk"
    );
    assert!(after != before);
}

/// Regression: nbdinfo marks dirty extents with type 1. Reading them the allocation-map way
/// round (type 0 = changed) reused stale blobs for exactly the chunks that changed.
#[test]
fn changed_extents_from_real_nbdinfo_output_give_a_correct_incremental() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("repo");
    repo(&r, &["init"]);
    let (disk, before) = disk_with_changes(dir.path());
    let raw = dir.path().join("disk.raw");
    fs::write(&raw, &before).expect("raw");
    repo(
        &r,
        &[
            "backup",
            "--image",
            raw.to_str().expect("utf-8"),
            "--path",
            IN_SNAPSHOT,
        ],
    );

    scribble(&disk);
    let after = to_raw(&disk, &raw);
    // The bitmap's extents, as nbdinfo prints them, from a qemu-nbd this test runs (and stops).
    let socket = dir.path().join("nbd.sock");
    let mut qemu_nbd = Command::new("qemu-nbd")
        .args([
            "--read-only",
            "--format=qcow2",
            "--bitmap=b0",
            "--persistent",
        ])
        .arg(format!("--socket={}", socket.display()))
        .arg(&disk)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let map = Command::new("nbdinfo")
        .args(["--json", "--map=qemu:dirty-bitmap:b0"])
        .arg(format!("nbd+unix:///?socket={}", socket.display()))
        .output();
    let _ = qemu_nbd.kill();
    let _ = qemu_nbd.wait();
    let map = map.expect("nbdinfo");
    assert!(
        map.status.success(),
        "{}",
        String::from_utf8_lossy(&map.stderr)
    );
    let extents = dir.path().join("changed.json");
    fs::write(&extents, &map.stdout).expect("write");

    let inc = repo(
        &r,
        &[
            "backup",
            "--image",
            raw.to_str().expect("utf-8"),
            "--path",
            IN_SNAPSHOT,
            "--parent",
            "latest",
            "--changed-extents",
            extents.to_str().expect("utf-8"),
            "--json",
        ],
    );
    let stats: serde_json::Value = serde_json::from_str(&inc.stdout).expect("json");
    assert_eq!(stats["reused_chunks"], 29, "{stats}");
    assert!(
        dump(&r, "latest") == after,
        "the incremental reused stale blobs for changed chunks"
    );
}

/// `backstop repo` on an S3 repository (SeaweedFS on loopback): keys from the environment
/// as restic reads them, never in argv; what it writes, restic dumps and checks; a wrong key
/// is one line and exit 1.
#[test]
fn the_cli_backs_up_to_s3_and_restic_reads_it() {
    use crate::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let url = server.repo("cli", "9");
    let cache = dir.path().join("cache");
    let run = |args: &[&str], secret: &str| {
        let out = Command::new(BACKSTOP)
            .args(["repo", "-r", &url, "--cache-dir"])
            .arg(&cache)
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .expect("backstop");
        Outcome::from(out)
    };
    let must = |args: &[&str]| {
        let o = run(args, SECRET_KEY);
        assert_eq!(o.code, Some(0), "backstop repo {args:?}: {o:?}");
        o
    };
    must(&["init"]);
    let raw = dir.path().join("disk.raw");
    let mut data = vec![0u8; 12 << 20];
    for (i, b) in data.iter_mut().enumerate().skip(1 << 20).take(5 << 20) {
        *b = (i * 7 % 251) as u8;
    }
    fs::write(&raw, &data).expect("raw");
    let out = must(&[
        "backup",
        "--image",
        raw.to_str().expect("utf-8"),
        "--path",
        IN_SNAPSHOT,
        "--json",
    ]);
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let id = stats["snapshot_id"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    let restored = dir.path().join("restored.raw");
    must(&[
        "restore",
        &id,
        IN_SNAPSHOT,
        "--target",
        restored.to_str().expect("utf-8"),
    ]);
    assert!(
        fs::read(&restored).expect("restored") == data,
        "our restore from S3 differs"
    );
    let theirs = server.restic(&url, PASSWORD, &["dump", &id, IN_SNAPSHOT]);
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert!(
        theirs.stdout == data,
        "restic's dump of our S3 snapshot differs"
    );
    let check = server.restic(&url, PASSWORD, &["check", "--read-data"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    must(&["check", "--read-data"]);
    // The metadata cache was filled on the way.
    assert!(cache.is_dir(), "no metadata cache for an S3 repository");

    let bad = run(&["snapshots"], "wrong-secret-value");
    assert_eq!(bad.code, Some(1), "{bad:?}");
    let line = bad.stderr.trim();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("SignatureDoesNotMatch"), "{line}");
    assert!(
        !line.contains("wrong-secret-value") && !line.contains(SECRET_KEY),
        "{line}"
    );
}

/// `backstop repo copy`, both ways between a local repository and one over SFTP (a real sshd on
/// loopback, host key checked): a FULL and 5 increments pushed, then pulled into a third
/// repository; every copy dumps byte-exact with plain restic where it lands and `restic check
/// --read-data` is clean there; a second push copies nothing.
#[test]
fn repo_copy_pushes_to_sftp_and_pulls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = crate::cloud::start_sshd(dir.path(), "127.0.0.5", "remote1");
    let local = dir.path().join("local");
    let remote_path = dir.path().join("remote-repo");
    let remote = format!("sftp:remote1:{}", remote_path.display());
    let back = dir.path().join("back");
    let run = |r: &str, args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(BACKSTOP)
            .args(["repo", "-r", r, "--no-cache", "--ssh-config"])
            .arg(&sshd.ssh_config)
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .envs(env.iter().copied())
            .output()
            .expect("backstop");
        let o = Outcome::from(out);
        assert_eq!(o.code, Some(0), "backstop repo -r {r} {args:?}: {o:?}");
        o
    };
    let local_s = local.to_str().expect("utf-8");
    run(local_s, &["init"], &[]);
    let raw = dir.path().join("disk.raw");
    let mut data: Vec<u8> = noise(24 << 20, 11);
    let mut points = Vec::new();
    for k in 0..6usize {
        if k > 0 {
            let at = (k * 3) << 20;
            data[at..at + (1 << 20)].copy_from_slice(&noise(1 << 20, k as u64));
        }
        fs::write(&raw, &data).expect("raw");
        let out = run(
            local_s,
            &[
                "backup",
                "--image",
                raw.to_str().expect("utf-8"),
                "--path",
                IN_SNAPSHOT,
                "--json",
            ],
            &[],
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        points.push((
            v["snapshot_id"].as_str().expect("id").to_string(),
            data.clone(),
        ));
    }
    // Push: the remote has its own password.
    let other = [("RESTIC_PASSWORD", "the remote's password")];
    run(&remote, &["init"], &other);
    let from_local = [
        ("RESTIC_PASSWORD", "the remote's password"),
        ("RESTIC_FROM_PASSWORD", PASSWORD),
    ];
    let out = run(&remote, &["copy", "--from-repo", local_s], &from_local);
    assert!(
        out.stdout.contains("6 snapshots copied, 0 there already"),
        "{out:?}"
    );
    let restic_remote = |args: &[&str]| {
        let out = Command::new("restic")
            .args([
                "--no-cache",
                "-o",
                &sshd.restic_sftp_command(),
                "-r",
                &remote,
            ])
            .args(args)
            .env("RESTIC_PASSWORD", "the remote's password")
            .output()
            .expect("restic");
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    restic_remote(&["check", "--read-data"]);
    let listed: serde_json::Value =
        serde_json::from_slice(&restic_remote(&["snapshots", "--json"])).expect("json");
    for (id, want) in &points {
        let copy = listed
            .as_array()
            .expect("array")
            .iter()
            .find(|s| s["original"].as_str() == Some(id.as_str()))
            .and_then(|s| s["id"].as_str())
            .unwrap_or_else(|| panic!("no copy of {id}: {listed}"))
            .to_string();
        assert!(
            restic_remote(&["dump", &copy, IN_SNAPSHOT]) == *want,
            "copy of {id}"
        );
    }
    let out = run(&remote, &["copy", "--from-repo", local_s], &from_local);
    assert!(
        out.stdout.contains("0 snapshots copied, 6 there already; 0 data and 0 tree blobs; 0 bytes read, 0 bytes written"),
        "{out:?}"
    );

    // Pull: from the remote into a new local repository.
    let back_s = back.to_str().expect("utf-8");
    run(back_s, &["init"], &[]);
    let from_remote = [("RESTIC_FROM_PASSWORD", "the remote's password")];
    let out = run(back_s, &["copy", "--from-repo", &remote], &from_remote);
    assert!(out.stdout.contains("6 snapshots copied"), "{out:?}");
    let check = crate::support::run_env(
        "restic",
        &["--no-cache", "-r", back_s, "check", "--read-data"],
        b"",
        &[("RESTIC_PASSWORD", PASSWORD)],
    );
    assert_eq!(check.code, Some(0), "{check:?}");
    let (last_id, last) = points.last().expect("points");
    let listed = run(back_s, &["snapshots", "--json"], &[]);
    let snaps: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(6), "{snaps}");
    let newest = snaps.as_array().expect("array").last().expect("one")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        dump(&back, &newest) == *last,
        "the pulled copy of {last_id}"
    );
}

/// A stock increment handed to `backstop repo backup --stock-increment` (a file a repository
/// or a host gave) whose qcow2 header names an external data file: read as it is, qemu would
/// take the delta's clusters from that file, and the snapshot would hold it. It is checked as
/// any foreign qcow2 file and refused, naming the file; no snapshot is written.
#[test]
fn a_stock_increment_naming_an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("repo");
    repo(&r, &["init"]);
    let parent = dir.path().join("parent.raw");
    fs::write(&parent, vec![0u8; 1 << 20]).expect("parent");
    repo(
        &r,
        &[
            "backup",
            "--image",
            parent.to_str().expect("utf-8"),
            "--format",
            "raw",
            "--path",
            IN_SNAPSHOT,
        ],
    );
    let secret = dir.path().join("secret");
    fs::write(&secret, b"HOST-SECRET".repeat(95_000)).expect("secret");
    let evil = dir.path().join("evil.qcow2");
    let decoy = dir.path().join("decoy");
    fs::write(&decoy, vec![0u8; 1 << 20]).expect("decoy");
    let e = evil.to_str().expect("utf-8");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!(
                "data_file={},data_file_raw=on,preallocation=metadata",
                decoy.display()
            ),
            e,
            "1M",
        ],
    );
    sh(
        "qemu-img",
        &[
            "amend",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", secret.display()),
            e,
        ],
    );
    fs::remove_file(&decoy).expect("decoy");
    let out = Command::new(BACKSTOP)
        .args(["repo", "-r", r.to_str().expect("utf-8")])
        .args([
            "backup",
            "--stock-increment",
            "--image",
            e,
            "--path",
            IN_SNAPSHOT,
            "--parent",
            "latest",
        ])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("backstop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "uses the external data file {:?}, which backstop does not open",
            secret.display().to_string()
        )) && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let snapshots = repo(&r, &["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&snapshots.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

/// `backstop repo key` against restic 0.14 in both directions: a key backstop adds opens the
/// repository with restic and one restic adds opens it with backstop; `key list` shows every
/// key file (restic's too) and marks the one the password opens; `key remove` takes a key out
/// (restic no longer opens with its password) and refuses the key in use; `key passwd`
/// leaves only the new password working, and restic's own `key passwd` then works on it; a new
/// password comes from a file, and an empty, missing or ambiguous one (white space at an end
/// that restic would trim, a second line) is one line.
#[test]
fn key_commands_work_both_ways_with_restic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("repo");
    let pw = |n: u32| {
        let p = dir.path().join(format!("pw{n}"));
        fs::write(&p, format!("key-test-password-{n}\n")).expect("password file");
        p
    };
    let (p1, p2, p3, p4, p5) = (pw(1), pw(2), pw(3), pw(4), pw(5));
    // `<program> [repo] -r <repository> --password-file <password> <args>`.
    let run = |program: &str, prefix: &[&str], password: &Path, args: &[&str]| -> Outcome {
        let out = Command::new(program)
            .args(prefix)
            .arg("-r")
            .arg(&r)
            .arg("--password-file")
            .arg(password)
            .args(args)
            .env_remove("RESTIC_PASSWORD")
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        Outcome::from(out)
    };
    let backstop = |password: &Path, args: &[&str]| run(BACKSTOP, &["repo"], password, args);
    let restic = |password: &Path, args: &[&str]| run("restic", &[], password, args);
    let ok = |o: Outcome| {
        assert_eq!(o.code, Some(0), "{o:?}");
        o
    };
    let keys = |password: &Path| -> Vec<serde_json::Value> {
        let o = ok(backstop(password, &["key", "list", "--json"]));
        serde_json::from_str::<Vec<serde_json::Value>>(&o.stdout).expect("key list json")
    };
    let current = |password: &Path| -> String {
        let k = keys(password);
        let mine: Vec<&serde_json::Value> = k.iter().filter(|k| k["current"] == true).collect();
        assert_eq!(mine.len(), 1, "{k:?}");
        mine[0]["id"].as_str().expect("id").to_string()
    };
    let p = |p: &Path| p.to_str().expect("utf-8").to_string();

    ok(backstop(&p1, &["init"]));
    // backstop adds, restic opens.
    let out = backstop(&p2, &["snapshots"]);
    assert_eq!(out.code, Some(1), "p2 opens nothing yet: {out:?}");
    ok(backstop(
        &p1,
        &["key", "add", "--new-password-file", &p(&p2)],
    ));
    ok(restic(&p2, &["snapshots"]));
    // restic adds, backstop opens and lists it, marked as the key in use.
    ok(restic(&p2, &["key", "add", "--new-password-file", &p(&p3)]));
    ok(backstop(&p3, &["snapshots"]));
    let all = keys(&p3);
    assert_eq!(all.len(), 3, "{all:?}");
    let restics = current(&p3);
    let theirs = all
        .iter()
        .find(|k| k["id"] == restics.as_str())
        .expect("restic's key");
    assert!(
        theirs["created"].is_string() && theirs["host"].is_string(),
        "restic's key file says when and where it was made: {theirs}"
    );
    let text = ok(backstop(&p3, &["key", "list"])).stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with('*') && l.contains(&restics[..8])),
        "{text}"
    );
    // Removing p2's key: restic no longer opens with p2; the key in use is refused.
    let k2 = current(&p2);
    ok(backstop(&p1, &["key", "remove", &k2[..8]]));
    assert_ne!(
        restic(&p2, &["snapshots"]).code,
        Some(0),
        "p2's key is gone"
    );
    let k1 = current(&p1);
    let refused = backstop(&p1, &["key", "remove", &k1[..12]]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("refusing to remove it"),
        "{}",
        refused.stderr
    );
    // key passwd: the old password opens nothing, the new one everything.
    ok(backstop(
        &p1,
        &["key", "passwd", "--new-password-file", &p(&p4)],
    ));
    assert_ne!(restic(&p1, &["snapshots"]).code, Some(0));
    ok(restic(&p4, &["check"]));
    assert_eq!(keys(&p4).len(), 2, "p3's key and p4's");
    // restic's own passwd on backstop's key; backstop opens with the new password.
    ok(restic(
        &p4,
        &["key", "passwd", "--new-password-file", &p(&p5)],
    ));
    ok(backstop(&p5, &["snapshots"]));
    // A new password from an empty, missing or ambiguous file: one line, nothing added.
    let empty = dir.path().join("empty");
    fs::write(&empty, "\n").expect("empty");
    let spaced = dir.path().join("spaced");
    fs::write(&spaced, "trailing space \n").expect("spaced");
    let two = dir.path().join("two");
    fs::write(&two, "one\ntwo\n").expect("two");
    for (file, says) in [
        (p(&empty), "holds no password on its first line"),
        (
            p(&dir.path().join("missing")),
            "cannot read the new password file",
        ),
        (p(&spaced), "which restic would not read"),
        (p(&two), "holds more than one line"),
    ] {
        let out = backstop(&p5, &["key", "add", "--new-password-file", &file]);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr.lines().count() == 1 && out.stderr.contains(says),
            "{}",
            out.stderr
        );
    }
    assert_eq!(keys(&p5).len(), 2);

    // Locks, as restic 0.14 takes them: while restic's backup holds its shared lock, `key
    // remove` and `key passwd` (exclusive) are refused naming the holder, `key add` (shared)
    // goes ahead.
    let k3 = current(&p3);
    let mut holder = Command::new("restic")
        .arg("-r")
        .arg(&r)
        .arg("--password-file")
        .arg(&p5)
        .args(["backup", "--stdin", "--stdin-filename", "held.raw"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restic backup --stdin");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdin = holder.stdin.take().expect("stdin");
    let holder = Stop(holder);
    let started = std::time::Instant::now();
    while fs::read_dir(r.join("locks")).map_or(0, |d| d.count()) == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "restic took no lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = backstop(&p5, &["key", "remove", &k3[..8]]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("repository locked by") && out.stderr.lines().count() == 1,
        "{out:?}"
    );
    let out = backstop(&p5, &["key", "passwd", "--new-password-file", &p(&p1)]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("repository locked by"), "{out:?}");
    ok(backstop(
        &p5,
        &["key", "add", "--new-password-file", &p(&p2)],
    ));
    assert_eq!(keys(&p5).len(), 3, "p3's, p5's and p2's again");
    // The backup ends (its stdin written and closed) and removes its lock.
    let mut stdin = stdin;
    std::io::Write::write_all(&mut stdin, b"held\n").expect("write to restic");
    drop(stdin);
    let mut holder = holder;
    let status = holder.0.wait().expect("restic backup");
    assert!(status.success(), "{status:?}");
    ok(backstop(&p5, &["key", "remove", &k3[..8]]));
    assert_eq!(keys(&p5).len(), 2);
}
