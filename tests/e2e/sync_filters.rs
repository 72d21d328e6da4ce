//! Sync and verify jobs over a whole datastore: no repository named, so each run lists the
//! source's repositories (on a local path, over SFTP through a real sshd, in S3 on SeaweedFS);
//! `exclude:` forms and TAGS patterns leave repositories and snapshots out; a PUSH to S3 under
//! RATE_IN with one worker prints progress lines; a verify job reads two repositories at once
//! (one waits for a real restic's lock meanwhile); restic is the oracle at every destination.

use crate::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};
use crate::support::{BACKSTOP, Outcome, noise, run, run_env};
use crate::sync_jobs::{IN_SNAPSHOT, restic_ok};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tags of each snapshot restic lists, oldest first.
fn tags(listing: &[u8]) -> Vec<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(listing).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| {
            s["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .map(|x| x.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn sync_and_verify_a_whole_datastore_with_filters_over_sftp_and_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sshd = crate::cloud::start_sshd(d, "127.0.0.7", "site3");
    let s3 = S3Server::start(d);
    let remotes = d.join("remotes");
    fs::create_dir_all(remotes.join("etc/datastore")).expect("remotes");
    fs::write(
        remotes.join("etc/datastore/backstop.conf"),
        format!("SSH_CONFIG={}\n", sshd.ssh_config.display()),
    )
    .expect("backstop.conf");
    let state = d.join("state.db");
    let (st, rm) = (
        state.to_str().expect("utf-8"),
        remotes.to_str().expect("utf-8"),
    );
    let bj = |args: &[&str]| -> Outcome {
        let mut all = vec![
            "backupjob",
            "--state",
            st,
            "--remotes",
            rm,
            "--progress-every",
            "1",
        ];
        all.extend_from_slice(args);
        run(BACKSTOP, &all, b"")
    };
    let ok = |args: &[&str]| -> Outcome {
        let out = bj(args);
        assert_eq!(out.code, Some(0), "backupjob {args:?}: {out:?}");
        out
    };
    let create = |what: &str, name: &str, text: String| -> String {
        let p = d.join(format!("{name}.tmpl"));
        fs::write(&p, text).expect("template");
        ok(&[what, "create", p.to_str().expect("utf-8")])
            .stdout
            .trim()
            .trim_start_matches("ID: ")
            .to_string()
    };
    let local = d.join("local");
    let local_id = create(
        "datastore",
        "local",
        format!(
            "NAME=\"local\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw-local\"\n",
            local.display()
        ),
    );
    let store = d.join("site3-store");
    let sftp_id = create(
        "remote",
        "site3",
        format!(
            "NAME=\"site3\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_SFTP_SERVER=\"site3\"\n\
             RESTIC_SFTP_USER=\"root\"\nRESTIC_PASSWORD=\"pw-site3\"\n",
            store.display()
        ),
    );
    let s3_id = create(
        "remote",
        "bucket",
        format!(
            "NAME=\"bucket\"\nDS_MAD=\"backstop\"\nRESTIC_BACKEND=\"S3\"\nRESTIC_S3_ENDPOINT=\"{}\"\n\
             RESTIC_S3_BUCKET=\"offsite\"\nRESTIC_S3_ACCESS_KEY_ID=\"{ACCESS_KEY}\"\n\
             RESTIC_S3_SECRET_ACCESS_KEY=\"{SECRET_KEY}\"\nRESTIC_PASSWORD=\"pw-s3\"\n",
            s3.endpoint
        ),
    );

    // Repositories 22 (two points), 23, and job_5 (VMs 24 and 25); beside them a directory
    // that is not a repository name, and one with a repository name but no repository.
    let raw = d.join("disk.raw");
    let mut points: Vec<(String, String, Vec<u8>)> = Vec::new();
    for (k, (repo, tag)) in [
        ("22", "one-22"),
        ("22", "one-22"),
        ("23", "one-23"),
        ("job_5", "one-24"),
        ("job_5", "one-25"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = local.join(repo);
        let env = [("RESTIC_PASSWORD", "pw-local")];
        if !path.join("config").exists() {
            let out = run_env(
                BACKSTOP,
                &["repo", "-r", path.to_str().expect("utf-8"), "init"],
                b"",
                &env,
            );
            assert_eq!(out.code, Some(0), "{out:?}");
        }
        let data = noise(4 << 20, 100 + 2 * k as u64);
        fs::write(&raw, &data).expect("raw");
        let out = run_env(
            BACKSTOP,
            &[
                "repo",
                "-r",
                path.to_str().expect("utf-8"),
                "backup",
                "--image",
                raw.to_str().expect("utf-8"),
                "--path",
                IN_SNAPSHOT,
                "--tag",
                tag,
            ],
            b"",
            &env,
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        points.push((repo.to_string(), tag.to_string(), data));
    }
    fs::create_dir_all(local.join("lost+found")).expect("dir");
    fs::create_dir_all(local.join("31")).expect("dir");

    // PUSH the whole datastore to SFTP, but not VM 23 nor VM 25's snapshot in job 5.
    let push = create(
        "sync-job",
        "push",
        format!(
            "NAME=\"all-but\"\nDATASTORE_ID={local_id}\nREMOTE_ID={sftp_id}\n\
             VMS=\"exclude:23\"\nTAGS=\"exclude:one-25\"\n"
        ),
    );
    let out = ok(&["sync-job", "run", &push]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots copied")
            && out.stdout.contains("repository job_5: 1 snapshots copied")
            && !out.stdout.contains("repository 23")
            && !out.stdout.contains("repository 31"),
        "{out:?}"
    );
    assert!(!store.join("23").exists() && !store.join("31").exists());
    restic_ok(&store.join("job_5"), "pw-site3", &["check", "--read-data"]);
    let at_site3 = restic_ok(&store.join("job_5"), "pw-site3", &["snapshots", "--json"]);
    // The copy keeps its VM's tag and names the repository it came from.
    let config: serde_json::Value = serde_json::from_slice(&restic_ok(
        &local.join("job_5"),
        "pw-local",
        &["cat", "config"],
    ))
    .expect("config");
    let from = format!("copied-from:{}", config["id"].as_str().expect("id"));
    // And the job that made it, by the id `show` prints.
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["sync-job", "show", &push, "--json"]).stdout).expect("json");
    let by = format!(
        "copied-by:{}",
        shown["copied_by"].as_str().expect("copied_by")
    );
    assert_eq!(tags(&at_site3), [vec!["one-24".to_string(), from, by]]);
    assert!(
        restic_ok(
            &store.join("job_5"),
            "pw-site3",
            &["dump", "latest", IN_SNAPSHOT]
        ) == points[3].2
    );

    // PULL the whole SFTP remote (listed over SFTP) into another datastore, 22 only by TAGS.
    let pulled = d.join("pulled");
    let pulled_id = create(
        "datastore",
        "pulled",
        format!(
            "NAME=\"pulled\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw-pulled\"\n",
            pulled.display()
        ),
    );
    let pull = create(
        "sync-job",
        "pull",
        format!(
            "NAME=\"back\"\nDIRECTION=PULL\nDATASTORE_ID={pulled_id}\nREMOTE_ID={sftp_id}\n\
             TAGS=\"one-2?, exclude:one-24\"\n"
        ),
    );
    let out = ok(&["sync-job", "run", &pull]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots copied")
            && out.stdout.contains("repository job_5: 0 snapshots copied"),
        "{out:?}"
    );
    restic_ok(&pulled.join("22"), "pw-pulled", &["check", "--read-data"]);

    // PUSH VM 22 and job 5 to S3, both at once (PARALLEL, by default 2), with one worker
    // each under one read limit: progress lines while they run, naming both; then PULL the
    // whole bucket (listed in S3) back into a third datastore.
    let slow = create(
        "sync-job",
        "slow",
        format!(
            "NAME=\"slow\"\nDATASTORE_ID={local_id}\nREMOTE_ID={s3_id}\nVMS=\"22\"\n\
             BACKUP_JOBS=\"5\"\nRATE_IN=2048\nWORKERS=1\n"
        ),
    );
    let out = ok(&["sync-job", "run", &slow]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots copied")
            && out.stdout.contains("repository job_5: 2 snapshots copied"),
        "{out:?}"
    );
    let ticks: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("repository ") && l.contains(" snapshots done, "))
        .collect();
    // 16 MiB read at 2 MiB/s in all from an empty bucket takes at least 7.5 s, the two
    // repositories sharing the limit from the start.
    assert!(ticks.len() >= 4, "progress lines: {out:?}");
    assert!(
        ticks.iter().any(
            |l| l.contains("repository 22: ") && l.contains("; repository job_5: ")
                || l.contains("repository job_5: ") && l.contains("; repository 22: ")
        ),
        "no progress line with both repositories at once: {out:?}"
    );
    let in_s3 = s3.repo("offsite", "22");
    let check = s3.restic(&in_s3, "pw-s3", &["check", "--read-data"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let dump = s3.restic(&in_s3, "pw-s3", &["dump", "latest", IN_SNAPSHOT]);
    assert!(dump.status.success() && dump.stdout == points[1].2);
    let from_s3 = d.join("from-s3");
    let from_s3_id = create(
        "datastore",
        "from-s3",
        format!(
            "NAME=\"from-s3\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw-3\"\n",
            from_s3.display()
        ),
    );
    let back = create(
        "sync-job",
        "back-s3",
        format!("NAME=\"back-s3\"\nDIRECTION=PULL\nDATASTORE_ID={from_s3_id}\nREMOTE_ID={s3_id}\n"),
    );
    let out = ok(&["sync-job", "run", &back]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots copied")
            && out.stdout.contains("repository job_5: 2 snapshots copied"),
        "{out:?}"
    );
    assert!(
        restic_ok(
            &from_s3.join("22"),
            "pw-3",
            &["dump", "latest", IN_SNAPSHOT]
        ) == points[1].2
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["sync-job", "list", "--json"]).stdout).expect("json");
    let whole: Vec<bool> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|j| j["whole_datastore"].as_bool().expect("bool"))
        .collect();
    assert_eq!(whole, [true, true, false, true], "{listed}");

    // A verify job over the whole local datastore but VM 23: 22 and job_5, every snapshot.
    let verify = create(
        "verify-job",
        "verify",
        format!("NAME=\"v\"\nDATASTORE_ID={local_id}\nVMS=\"exclude:23\"\nIGNORE_VERIFIED=YES\n"),
    );
    let out = ok(&["verify-job", "run", &verify]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots verified")
            && out
                .stdout
                .contains("repository job_5: 2 snapshots verified")
            && !out.stdout.contains("repository 23"),
        "{out:?}"
    );
    // IGNORE_VERIFIED: what was found clean is not read again.
    let out = ok(&["verify-job", "run", &verify]);
    assert!(
        out.stdout.contains("repository 22: 0 snapshots verified"),
        "{out:?}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["verify-job", "show", &verify, "--json"]).stdout).expect("json");
    assert_eq!(
        shown["snapshots"].as_array().expect("snapshots").len(),
        4,
        "{shown}"
    );

    // PARALLEL (by default 2): a verify job reads two repositories at once. A `restic check`
    // frozen while it holds its exclusive lock on 22 makes 22 wait (for up to a minute) while
    // job_5 is read and reported; 22 follows once restic resumes. One at a time, job_5 would
    // wait behind 22 and its line would not come while restic holds the lock.
    let both = create(
        "verify-job",
        "both",
        format!("NAME=\"both\"\nDATASTORE_ID={local_id}\nVMS=\"22\"\nBACKUP_JOBS=\"5\"\n"),
    );
    let frozen = FrozenRestic::holding_lock(&local.join("22"), "pw-local");
    let mut child = Stopped(
        Command::new(BACKSTOP)
            .args([
                "backupjob",
                "--state",
                st,
                "--remotes",
                rm,
                "verify-job",
                "run",
                &both,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("backstop"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut before = Vec::new();
    while !before
        .iter()
        .any(|l: &String| l.starts_with("repository job_5: 2 snapshots verified"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => before.push(line),
            Err(_) => {
                panic!("job_5 was not verified while 22 waited for restic's lock: {before:?}");
            }
        }
    }
    assert!(
        !before.iter().any(|l| l.starts_with("repository 22: ")),
        "22 was verified while restic held its lock: {before:?}"
    );
    if let Err(printed) = frozen.resume() {
        panic!("restic check failed after resuming: {printed}");
    }
    let status = child.0.wait().expect("wait");
    reader.join().expect("reader");
    let after: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success()
            && after
                .iter()
                .any(|l| l.starts_with("repository 22: 2 snapshots verified")),
        "{status:?}: {before:?} then {after:?}"
    );
}

/// A child process killed and waited for when dropped (a failed assertion included).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `restic check` frozen (SIGSTOP) while it holds its exclusive lock on a repository;
/// resumed and waited for by `resume`, or when dropped.
/// A `restic check` stopped while it holds its lock; its stderr goes to a file so that a
/// failure after resuming says what restic saw.
struct FrozenRestic(Option<Child>, tempfile::NamedTempFile);

fn signal(child: &Child, name: &str) {
    let status = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            name,
            &child.id().to_string(),
        ])
        .status()
        .expect("sh");
    assert!(status.success(), "kill -s {name} {}", child.id());
}

/// Whether the kernel reports the process stopped (a signal lands asynchronously).
fn stopped(child: &Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        match stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
        {
            Some('T') => return true,
            Some('Z') | None => return false,
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    false
}

impl FrozenRestic {
    fn holding_lock(repo: &Path, password: &str) -> FrozenRestic {
        let locks = || -> Vec<String> {
            fs::read_dir(repo.join("locks"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        // The lock restic reads back: whole (restic writes it in place, and the stop may land
        // in the middle), exclusive, and this process's.
        let holds = |name: &str, pid: u32| -> bool {
            let out = Command::new("restic")
                .arg("--repo")
                .arg(repo)
                .args(["--no-cache", "--no-lock", "cat", "lock", name])
                .env("RESTIC_PASSWORD", password)
                .output()
                .expect("restic");
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|lock| {
                lock["exclusive"] == serde_json::json!(true)
                    && lock["pid"] == serde_json::json!(pid)
            })
        };
        // restic may finish and drop its lock before the stop lands: then try again.
        for _ in 0..10 {
            let log = tempfile::NamedTempFile::new().expect("restic's log");
            let child = Command::new("restic")
                .arg("--repo")
                .arg(repo)
                .args(["--no-cache", "check", "--read-data"])
                .env("RESTIC_PASSWORD", password)
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("restic's log"))
                .stderr(log.reopen().expect("restic's log"))
                .spawn()
                .expect("restic");
            let frozen = FrozenRestic(Some(child), log);
            let deadline = Instant::now() + Duration::from_secs(30);
            while locks().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let child = frozen.0.as_ref().expect("child");
            signal(child, "STOP");
            if stopped(child)
                && let [only] = locks().as_slice()
                && holds(only, child.id())
            {
                return frozen;
            }
        }
        panic!("could not freeze restic while it held its lock");
    }

    /// Lets restic go on and waits for it: Err(what restic printed) when it failed.
    fn resume(mut self) -> Result<(), String> {
        let mut child = self.0.take().expect("child");
        signal(&child, "CONT");
        let status = child.wait();
        if status.as_ref().is_ok_and(|s| s.success()) {
            return Ok(());
        }
        let printed = fs::read_to_string(self.1.path()).unwrap_or_default();
        Err(format!("{status:?}: {printed}"))
    }
}

impl Drop for FrozenRestic {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("sh")
                .args(["-c", "kill -s CONT \"$1\"", "sh", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
