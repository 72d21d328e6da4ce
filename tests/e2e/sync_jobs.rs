//! Sync jobs end to end: a backup datastore on a local path, a remote over SFTP (a real sshd on
//! loopback, its host key checked through the ssh configuration backstop.conf names), and the
//! real restic as the oracle at every destination. A VM's FULL and 5 increments are pushed;
//! every copy dumps byte-exact and `restic check --read-data` is clean; a second run copies
//! nothing (bytes counted); one more increment moves no more than 110 % of what it stored; a
//! PULL into a third datastore with TRANSFER_LAST=2 brings the newest two; a repository that
//! does not exist fails the run naming it while the others are done; every run is recorded.

use crate::support::{BACKSTOP, Outcome, noise, run, run_env};
use std::fs;
use std::path::Path;

pub(crate) const IN_SNAPSHOT: &str = "/var/lib/one/datastores/0/22/backup/disk.0.0";

pub(crate) fn restic_ok(repo: &Path, password: &str, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("restic")
        .arg("--no-cache")
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", password)
        .output()
        .expect("restic");
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn sync_jobs_push_pull_and_record_their_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sshd = crate::cloud::start_sshd(d, "127.0.0.6", "site2");
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
        let mut all = vec!["backupjob", "--state", st, "--remotes", rm];
        all.extend_from_slice(args);
        run(BACKSTOP, &all, b"")
    };
    let ok = |args: &[&str]| -> Outcome {
        let out = bj(args);
        assert_eq!(out.code, Some(0), "backupjob {args:?}: {out:?}");
        out
    };
    let template = |name: &str, text: String| {
        let p = d.join(name);
        fs::write(&p, text).expect("template");
        p.display().to_string()
    };
    let local = d.join("local");
    ok(&[
        "datastore",
        "create",
        &template(
            "local.tmpl",
            format!(
                "NAME=\"local\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw-local\"\n",
                local.display()
            ),
        ),
    ]);
    let store = d.join("site2-store");
    ok(&[
        "remote",
        "create",
        &template(
            "site2.tmpl",
            format!(
                "NAME=\"site2\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_SFTP_SERVER=\"site2\"\n\
             RESTIC_SFTP_USER=\"root\"\nRESTIC_PASSWORD=\"pw-site2\"\n",
                store.display()
            ),
        ),
    ]);

    // A FULL and 5 increments of VM 22 in the local datastore.
    let repo22 = local.join("22");
    let repo = |args: &[&str]| -> Outcome {
        let mut all = vec!["repo", "-r", repo22.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let out = run_env(BACKSTOP, &all, b"", &[("RESTIC_PASSWORD", "pw-local")]);
        assert_eq!(out.code, Some(0), "repo {args:?}: {out:?}");
        out
    };
    repo(&["init"]);
    let raw = d.join("disk.raw");
    let mut data = noise(16 << 20, 3);
    let mut points: Vec<Vec<u8>> = Vec::new();
    let backup = |k: usize, data: &mut Vec<u8>| -> u64 {
        if k > 0 {
            let at = (k % 14) << 20;
            data[at..at + (1 << 20)].copy_from_slice(&noise(1 << 20, 100 + k as u64));
        }
        fs::write(&raw, &*data).expect("raw");
        let out = repo(&[
            "backup",
            "--image",
            raw.to_str().expect("utf-8"),
            "--path",
            IN_SNAPSHOT,
            "--tag",
            "one-22",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        v["added_bytes"].as_u64().expect("added")
    };
    for k in 0..6 {
        backup(k, &mut data);
        points.push(data.clone());
    }

    // Push.
    let push = template(
        "push.tmpl",
        "NAME=\"offsite\"\nDIRECTION=\"PUSH\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22\"\n".into(),
    );
    assert_eq!(ok(&["sync-job", "create", &push]).stdout, "ID: 1\n");
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout
            .contains("repository 22: 6 snapshots copied, 0 there already"),
        "{out:?}"
    );
    let at_site2 = store.join("22");
    restic_ok(&at_site2, "pw-site2", &["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic_ok(&at_site2, "pw-site2", &["snapshots", "--json"]))
            .expect("json");
    let ids: Vec<String> = snaps
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 6);
    for (id, want) in ids.iter().zip(&points) {
        assert!(
            restic_ok(&at_site2, "pw-site2", &["dump", id, IN_SNAPSHOT]) == *want,
            "{id}"
        );
    }
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 6 there already; 0 bytes read, 0 bytes written"
        ),
        "{out:?}"
    );
    let stored = backup(6, &mut data);
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains("repository 22: 1 snapshots copied"),
        "{out:?}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["sync-job", "show", "1", "--json"]).stdout).expect("json");
    let runs = shown["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "{shown}");
    let written = runs[0]["bytes_written"].as_u64().expect("bytes");
    assert!(
        written * 10 <= stored * 11,
        "the increment stored {stored}, its sync wrote {written}"
    );
    assert_eq!(runs[1]["bytes_written"], 0, "{shown}");
    assert!(
        runs.iter()
            .all(|r| r["error"].is_null() && crate::support::json_secs(&r["ended_at"]) > 0),
        "{shown}"
    );

    // Pull the newest two into another datastore.
    let pulled = d.join("pulled");
    ok(&[
        "datastore",
        "create",
        &template(
            "pulled.tmpl",
            format!(
                "NAME=\"pulled\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw-pulled\"\n",
                pulled.display()
            ),
        ),
    ]);
    let pull = template(
        "pull.tmpl",
        "NAME=\"back\"\nDIRECTION=\"PULL\"\nDATASTORE_ID=3\nREMOTE_ID=2\nVMS=\"22\"\nTRANSFER_LAST=2\n".into(),
    );
    ok(&["sync-job", "create", &pull]);
    let out = ok(&["sync-job", "run", "2"]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots copied"),
        "{out:?}"
    );
    restic_ok(&pulled.join("22"), "pw-pulled", &["check", "--read-data"]);
    assert!(
        restic_ok(
            &pulled.join("22"),
            "pw-pulled",
            &["dump", "latest", IN_SNAPSHOT]
        ) == data,
        "the pulled newest point"
    );

    // Pull the whole chain into a mirror: every point dumps byte-exact there, the mirror
    // checks clean, and a second run copies nothing.
    let mirror = d.join("mirror");
    ok(&[
        "datastore",
        "create",
        &template(
            "mirror.tmpl",
            format!(
                "NAME=\"mirror\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw-mirror\"\n",
                mirror.display()
            ),
        ),
    ]);
    let whole = template(
        "mirror-pull.tmpl",
        "NAME=\"mirror\"\nDIRECTION=\"PULL\"\nDATASTORE_ID=4\nREMOTE_ID=2\nVMS=\"22\"\n".into(),
    );
    let whole_id = created(&ok(&["sync-job", "create", &whole]));
    let out = ok(&["sync-job", "run", &whole_id]);
    assert!(
        out.stdout.contains("repository 22: 7 snapshots copied"),
        "{out:?}"
    );
    let m22 = mirror.join("22");
    restic_ok(&m22, "pw-mirror", &["check", "--read-data"]);
    let listed: serde_json::Value =
        serde_json::from_slice(&restic_ok(&m22, "pw-mirror", &["snapshots", "--json"]))
            .expect("json");
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 7);
    for (snap, want) in listed.iter().zip(points.iter().chain([&data])) {
        let id = snap["id"].as_str().expect("id");
        assert!(
            restic_ok(&m22, "pw-mirror", &["dump", id, IN_SNAPSHOT]) == *want,
            "{id}"
        );
    }
    let out = ok(&["sync-job", "run", &whole_id]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 7 there already; 0 bytes read, 0 bytes written"
        ),
        "{out:?}"
    );

    // The pulled copy is damaged; a verify job over that datastore finds and heals it, and a
    // PULL with RESYNC_CORRUPT brings back what the copy lacks.
    crate::support::damage_blob(&pulled.join("22"), "pw-pulled", "latest", IN_SNAPSHOT, 15);
    let v = template(
        "verify-pulled.tmpl",
        "NAME=\"pulled\"\nDATASTORE_ID=3\nVMS=\"22\"\n".into(),
    );
    let vid = ok(&["verify-job", "create", &v])
        .stdout
        .trim()
        .trim_start_matches("ID: ")
        .to_string();
    let out = bj(&["verify-job", "run", &vid]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let resync = template(
        "resync.tmpl",
        "NAME=\"resync\"\nDIRECTION=PULL\nDATASTORE_ID=3\nREMOTE_ID=2\nVMS=\"22\"\nTRANSFER_LAST=2\nRESYNC_CORRUPT=YES\n".into(),
    );
    let rid = ok(&["sync-job", "create", &resync])
        .stdout
        .trim()
        .trim_start_matches("ID: ")
        .to_string();
    let out = ok(&["sync-job", "run", &rid]);
    assert!(
        out.stdout
            .contains("2 there already (2 copied again where damaged)"),
        "{out:?}"
    );
    let out = ok(&["verify-job", "run", &vid]);
    assert!(out.stdout.contains(", 0 damaged"), "{out:?}");
    restic_ok(&pulled.join("22"), "pw-pulled", &["check", "--read-data"]);

    // A repository that is not there fails the run, named; the other is still done.
    let both = template(
        "both.tmpl",
        "NAME=\"both\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"99,22\"\n".into(),
    );
    let both_id = created(&ok(&["sync-job", "create", &both]));
    let out = bj(&["sync-job", "run", &both_id]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("repository 99: ") && out.stderr.contains("no repository"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("repository 22: 0 snapshots copied, 7 there already"),
        "{out:?}"
    );
    let list = ok(&["sync-job", "list"]).stdout;
    assert!(
        list.contains("failed (run") && list.contains("offsite"),
        "{list}"
    );
    verify_heal_and_verified_only(&ok, &bj, &template, &repo22, &data);

    // The scheduler daemon runs a job with EVERY at its first pass, then not before EVERY.
    let hourly = template(
        "hourly.tmpl",
        "NAME=\"hourly\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22\"\nEVERY=\"1h\"\n".into(),
    );
    let hourly_id = created(&ok(&["sync-job", "create", &hourly]));
    let pass = ok(&["scheduler"]);
    assert!(
        pass.stdout
            .contains(&format!("scheduler: sync job {hourly_id}: run ")),
        "{pass:?}"
    );
    assert!(
        !pass.stdout.contains("sync job 1:"),
        "a job without EVERY ran: {pass:?}"
    );
    let pass = ok(&["scheduler"]);
    assert!(
        !pass.stdout.contains(&format!("sync job {hourly_id}")),
        "{pass:?}"
    );

    calendar_schedule(&ok, &bj, &template, &state, &hourly_id);
    jobs_by_flags(&ok, &bj);

    remove_vanished(&ok, &bj, &template, &repo22, &store.join("22"));

    // Creating a job that names no remote, or a remote as its datastore, is refused.
    let wrong = template(
        "wrong.tmpl",
        "NAME=\"wrong\"\nDATASTORE_ID=2\nREMOTE_ID=1\nVMS=\"22\"\n".into(),
    );
    let out = bj(&["sync-job", "create", &wrong]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("DATASTORE_ID 2 is not a backup datastore"),
        "{out:?}"
    );
}

/// A verify job over the local datastore: a blob of a chunk no increment changed is damaged
/// on disk; the run finds it (exit 1, the damaged snapshots named), records the verdicts and
/// heals; a VERIFIED_ONLY push copies only the clean snapshots; the next backup writes the
/// chunk again and the next verify run is clean, every snapshot whole (restic check
/// --read-data).
fn verify_heal_and_verified_only(
    ok: &dyn Fn(&[&str]) -> Outcome,
    bj: &dyn Fn(&[&str]) -> Outcome,
    template: &dyn Fn(&str, String) -> String,
    repo22: &Path,
    data: &[u8],
) {
    let verify = template(
        "verify.tmpl",
        "NAME=\"weekly\"\nDATASTORE_ID=1\nVMS=\"22\"\n".into(),
    );
    let vid = created(&ok(&["verify-job", "create", &verify]));
    let out = ok(&["verify-job", "run", &vid]);
    assert!(
        out.stdout.contains("repository 22: 7 snapshots verified")
            && out.stdout.contains(", 0 damaged"),
        "{out:?}"
    );

    let blob = crate::support::damage_blob(repo22, "pw-local", "latest", IN_SNAPSHOT, 15);

    let out = bj(&["verify-job", "run", &vid]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains("7 damaged; healed: 1 packs rewritten, 1 blobs out"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("repository 22: damaged snapshots"),
        "{out:?}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["verify-job", "show", &vid, "--json"]).stdout).expect("json");
    let snaps = shown["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 7, "{shown}");
    assert!(
        snaps.iter().all(|s| s["ok"] == false
            && s["bad_blobs"] == 1
            && s["damaged_blobs"][0] == blob.to_hex()),
        "{shown}"
    );

    // VERIFIED_ONLY: nothing is clean now, so nothing goes.
    let vo = template(
        "vo.tmpl",
        "NAME=\"clean-only\"\nDATASTORE_ID=1\nREMOTE_ID=2\nBACKUP_JOBS=\"\"\nVMS=\"22\"\nVERIFIED_ONLY=YES\n".into(),
    );
    let vo_id = created(&ok(&["sync-job", "create", &vo]));
    let out = ok(&["sync-job", "run", &vo_id]);
    assert!(
        out.stdout
            .contains("repository 22: 0 snapshots copied, 0 there already"),
        "{out:?}"
    );

    // The next backup reads chunk 15 again (it is in no index); then all is clean.
    let raw = repo22
        .parent()
        .expect("local")
        .parent()
        .expect("dir")
        .join("disk.raw");
    fs::write(&raw, data).expect("raw");
    let out = run_env(
        BACKSTOP,
        &[
            "repo",
            "-r",
            repo22.to_str().expect("utf-8"),
            "backup",
            "--image",
            raw.to_str().expect("utf-8"),
            "--path",
            IN_SNAPSHOT,
            "--tag",
            "one-22",
            "--parent",
            "latest",
        ],
        b"",
        &[("RESTIC_PASSWORD", "pw-local")],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = ok(&["verify-job", "run", &vid]);
    assert!(
        out.stdout.contains("8 snapshots verified") && out.stdout.contains(", 0 damaged"),
        "{out:?}"
    );
    restic_ok(repo22, "pw-local", &["check", "--read-data"]);
    let out = ok(&["sync-job", "run", &vo_id]);
    assert!(
        out.stdout
            .contains("repository 22: 1 snapshots copied, 7 there already"),
        "{out:?}"
    );
}

/// REMOVE_VANISHED with its MAX_DELETE guard: three snapshots forgotten at the source; a new
/// job over the same source and remote forgets none of the copies job 1 made (they name job 1)
/// and counts them; job 1 allowed to delete two deletes nothing and fails, naming the count;
/// allowed five, it forgets the three copies at the remote, which restic then checks clean.
fn remove_vanished(
    ok: &dyn Fn(&[&str]) -> Outcome,
    bj: &dyn Fn(&[&str]) -> Outcome,
    template: &dyn Fn(&str, String) -> String,
    repo22: &Path,
    at_remote: &Path,
) {
    let count = |repo: &Path, pw: &str| {
        let v: serde_json::Value =
            serde_json::from_slice(&restic_ok(repo, pw, &["snapshots", "--json"])).expect("json");
        v.as_array().map_or(0, Vec::len)
    };
    let before = count(at_remote, "pw-site2");
    let listed: serde_json::Value =
        serde_json::from_slice(&restic_ok(repo22, "pw-local", &["snapshots", "--json"]))
            .expect("json");
    let oldest: Vec<String> = listed
        .as_array()
        .expect("array")
        .iter()
        .take(3)
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    let mut args = vec!["repo", "-r", repo22.to_str().expect("utf-8"), "forget"];
    args.extend(oldest.iter().map(String::as_str));
    let out = run_env(BACKSTOP, &args, b"", &[("RESTIC_PASSWORD", "pw-local")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let another = template(
        "another.tmpl",
        "NAME=\"another\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22\"\nREMOVE_VANISHED=YES\nMAX_DELETE=2\n".into(),
    );
    let id = created(&ok(&["sync-job", "create", &another]));
    let out = ok(&["sync-job", "run", &id]);
    assert!(
        out.stdout.contains("; 3 copies by another job left alone")
            && !out.stdout.contains("forgotten"),
        "{out:?}"
    );
    assert_eq!(
        count(at_remote, "pw-site2"),
        before,
        "another job's copies went"
    );
    ok(&["sync-job", "remove", &id]);

    ok(&[
        "sync-job",
        "update",
        "1",
        "--remove-vanished",
        "--max-delete",
        "2",
    ]);
    let out = bj(&["sync-job", "run", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "3 copies have vanished at the source, more than MAX_DELETE 2; nothing was deleted"
        ),
        "{out:?}"
    );
    assert_eq!(
        count(at_remote, "pw-site2"),
        before,
        "the guard let something go"
    );
    ok(&["sync-job", "update", "1", "--max-delete", "5"]);
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains("; 3 vanished copies forgotten"),
        "{out:?}"
    );
    assert_eq!(count(at_remote, "pw-site2"), before - 3);
    restic_ok(at_remote, "pw-site2", &["check", "--read-data"]);
}

/// The id a `create` printed.
fn created(out: &Outcome) -> String {
    out.stdout.trim().trim_start_matches("ID: ").to_string()
}

/// `sync-job update` to a `SCHEDULE`: a bad one is refused and changes nothing; the job is
/// not run for a time that came before it was written or before its last run; it is run once
/// for a time that came after both, however many such times passed. The state's clock is
/// moved back two days to get there (the only thing here not from a real run).
fn calendar_schedule(
    ok: &dyn Fn(&[&str]) -> Outcome,
    bj: &dyn Fn(&[&str]) -> Outcome,
    template: &dyn Fn(&str, String) -> String,
    state: &Path,
    id: &str,
) {
    let bad = template(
        "bad-schedule.tmpl",
        "NAME=\"hourly\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22\"\nSCHEDULE=\"25:00\"\n".into(),
    );
    let out = bj(&["sync-job", "update", id, &bad]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("hour 25 is more than 23") && out.stderr.lines().count() == 1,
        "{out:?}"
    );
    assert!(
        ok(&["sync-job", "show", id])
            .stdout
            .contains("EVERY = \"1h\"")
    );
    let daily = template(
        "daily.tmpl",
        "NAME=\"nightly\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22\"\nSCHEDULE=\"daily\"\n".into(),
    );
    ok(&["sync-job", "update", id, &daily]);
    let show = ok(&["sync-job", "show", id]).stdout;
    assert!(
        show.contains("NAME     : nightly") && show.contains("SCHEDULE = \"daily\""),
        "{show}"
    );
    let next = show
        .lines()
        .find_map(|l| l.strip_prefix("NEXT RUN : "))
        .unwrap_or_else(|| panic!("{show}"));
    assert!(next.ends_with(" 00:00"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["sync-job", "show", id, "--json"]).stdout).expect("json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let next_run = crate::support::json_secs(&json["next_run"]);
    assert!(
        next_run > now && next_run <= now + 86_400,
        "{json} at {now}"
    );
    let ran = |out: &Outcome| out.stdout.contains(&format!("sync job {id}: run "));
    let pass = ok(&["scheduler"]);
    assert!(
        !ran(&pass),
        "ran for a time before it was written: {pass:?}"
    );
    // A new job with a SCHEDULE waits for its first time (EVERY would run at once).
    let fresh = template(
        "fresh.tmpl",
        "NAME=\"fresh\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22\"\nSCHEDULE=\"*:0/30\"\n".into(),
    );
    let fresh_id = created(&ok(&["sync-job", "create", &fresh]));
    let pass = ok(&["scheduler"]);
    assert!(
        !pass.stdout.contains(&format!("sync job {fresh_id}")),
        "a new job ran before its first time: {pass:?}"
    );
    ok(&["sync-job", "remove", &fresh_id]);

    let db = rusqlite::Connection::open(state).expect("state");
    db.execute(
        "UPDATE sync_jobs SET written_at = written_at - 172800 WHERE id = ?1",
        [id],
    )
    .expect("written_at");
    let pass = ok(&["scheduler"]);
    assert!(!ran(&pass), "ran for a time before its last run: {pass:?}");
    db.execute(
        "UPDATE job_runs SET started_at = started_at - 172800, ended_at = ended_at - 172800 \
         WHERE kind = 'sync' AND job_id = ?1",
        [id],
    )
    .expect("runs");
    let pass = ok(&["scheduler"]);
    assert!(ran(&pass), "two midnights passed, no run: {pass:?}");
    let pass = ok(&["scheduler"]);
    assert!(!ran(&pass), "ran twice for the same time: {pass:?}");

    // A verify job is updated the same way, and checked the same way.
    let verify = template(
        "verify-wrong.tmpl",
        "NAME=\"v\"\nDATASTORE_ID=2\nVMS=\"22\"\nSCHEDULE=\"daily\"\n".into(),
    );
    let out = bj(&["verify-job", "update", "1", &verify]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("DATASTORE_ID 2 is not a backup datastore"),
        "{out:?}"
    );
    let out = bj(&["sync-job", "update", "999", &daily]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("there is no sync job 999"), "{out:?}");
}

/// Sync and verify jobs made and changed by flags alone, as the issue spells them; the stored
/// template is what the flags said, and a flag changes only its attribute.
fn jobs_by_flags(ok: &dyn Fn(&[&str]) -> Outcome, bj: &dyn Fn(&[&str]) -> Outcome) {
    let id = created(&ok(&[
        "sync-job",
        "create",
        "--name",
        "flagged",
        "--direction",
        "push",
        "--datastore",
        "1",
        "--remote",
        "2",
        "--vms",
        "22",
        "--transfer-last",
        "1",
        "--schedule",
        "sun 03:00",
    ]));
    let show = |id: &str| -> serde_json::Value {
        let out = ok(&["sync-job", "show", id, "--json"]).stdout;
        serde_json::from_str(&out).expect("json")
    };
    let attr = |json: &serde_json::Value, name: &str| {
        let text = json["template"].as_str().expect("template").to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")).map(str::to_string))
    };
    let json = show(&id);
    assert_eq!(
        attr(&json, "TRANSFER_LAST").as_deref(),
        Some("\"1\""),
        "{json}"
    );
    assert_eq!(
        attr(&json, "SCHEDULE").as_deref(),
        Some("\"sun 03:00\""),
        "{json}"
    );
    ok(&[
        "sync-job",
        "update",
        &id,
        "--every",
        "6h",
        "--remove-vanished",
    ]);
    let json = show(&id);
    assert_eq!(attr(&json, "EVERY").as_deref(), Some("\"6h\""), "{json}");
    assert_eq!(attr(&json, "SCHEDULE"), None, "{json}");
    assert_eq!(
        attr(&json, "REMOVE_VANISHED").as_deref(),
        Some("\"YES\""),
        "{json}"
    );
    assert_eq!(attr(&json, "VMS").as_deref(), Some("\"22\""), "{json}");
    // A flag that makes the template wrong is refused, naming it; nothing changes.
    let out = bj(&["sync-job", "update", &id, "--direction", "sideways"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("DIRECTION"), "{out:?}");
    assert_eq!(show(&id)["template"], json["template"]);
    ok(&["sync-job", "remove", &id]);

    let vid = created(&ok(&[
        "verify-job",
        "create",
        "--name",
        "quarterly",
        "--datastore",
        "1",
        "--vms",
        "22",
        "--read-data-subset",
        "1/4",
        "--ignore-verified",
        "--parallel",
        "3",
    ]));
    let out = ok(&["verify-job", "show", &vid, "--json"]).stdout;
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(attr(&json, "SHARES").as_deref(), Some("\"4\""), "{json}");
    assert_eq!(attr(&json, "PARALLEL").as_deref(), Some("\"3\""), "{json}");
    assert_eq!(
        attr(&json, "IGNORE_VERIFIED").as_deref(),
        Some("\"YES\""),
        "{json}"
    );
    let out = bj(&["verify-job", "update", &vid, "--read-data-subset", "2/4"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("give 1/M"), "{out:?}");
    ok(&["verify-job", "remove", &vid]);
}

/// Issue 23: REMOVE_VANISHED forgot copies that came from elsewhere. One remote repository
/// (over SFTP) holds copies from two sources: datastore A through a job with REMOVE_VANISHED,
/// datastore B through another job, and one more copy `restic copy` brought from a third
/// repository. Each copy names its source and its job in tags restic shows. A forgets a snapshot: the job
/// forgets that copy only. A is replaced by an empty repository: nothing is forgotten (the
/// copies came from the repository that was there). The old A is back and empties: its copies
/// go, B's and restic's stay, dump byte-exact, and the remote checks clean.
#[test]
fn remove_vanished_forgets_only_copies_from_its_own_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sshd = crate::cloud::start_sshd(d, "127.0.0.6", "site4");
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
    let ok = |args: &[&str]| -> Outcome {
        let mut all = vec!["backupjob", "--state", st, "--remotes", rm];
        all.extend_from_slice(args);
        let out = run(BACKSTOP, &all, b"");
        assert_eq!(out.code, Some(0), "backupjob {args:?}: {out:?}");
        out
    };
    let template = |name: &str, text: String| {
        let p = d.join(name);
        fs::write(&p, text).expect("template");
        p.display().to_string()
    };
    for (name, pw) in [("a", "pw-a"), ("b", "pw-b")] {
        ok(&[
            "datastore",
            "create",
            &template(
                &format!("{name}.tmpl"),
                format!(
                    "NAME=\"{name}\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"{pw}\"\n",
                    d.join(name).display()
                ),
            ),
        ]);
    }
    let store = d.join("site-store");
    ok(&[
        "remote",
        "create",
        &template(
            "site.tmpl",
            format!(
                "NAME=\"site\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_SFTP_SERVER=\"site4\"\n\
                 RESTIC_SFTP_USER=\"root\"\nRESTIC_PASSWORD=\"pw-site\"\n",
                store.display()
            ),
        ),
    ]);
    let repo = |ds: &str, pw: &str, args: &[&str]| site_repo(d, ds, pw, args);
    let backup = |ds: &str, pw: &str, seed: u64| site_backup(d, ds, pw, 2 << 20, seed);
    repo("a", "pw-a", &["init"]);
    repo("b", "pw-b", &["init"]);
    let from_a: Vec<(String, Vec<u8>)> = (0..3).map(|k| backup("a", "pw-a", 10 + k)).collect();
    let from_b: Vec<(String, Vec<u8>)> = (0..2).map(|k| backup("b", "pw-b", 20 + k)).collect();
    let config_id = |path: &Path, pw: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&restic_ok(path, pw, &["cat", "config"])).expect("json");
        v["id"].as_str().expect("id").to_string()
    };
    let (a_id, b_id) = (
        config_id(&d.join("a/22"), "pw-a"),
        config_id(&d.join("b/22"), "pw-b"),
    );

    let job_a = template(
        "job-a.tmpl",
        "NAME=\"from-a\"\nDATASTORE_ID=1\nREMOTE_ID=3\nVMS=\"22\"\nREMOVE_VANISHED=YES\nMAX_DELETE=10\n"
            .into(),
    );
    let job_b = template(
        "job-b.tmpl",
        "NAME=\"from-b\"\nDATASTORE_ID=2\nREMOTE_ID=3\nVMS=\"22\"\n".into(),
    );
    assert_eq!(ok(&["sync-job", "create", &job_a]).stdout, "ID: 1\n");
    assert_eq!(ok(&["sync-job", "create", &job_b]).stdout, "ID: 2\n");
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains("repository 22: 3 snapshots copied"),
        "{out:?}"
    );
    let out = ok(&["sync-job", "run", "2"]);
    assert!(
        out.stdout.contains("repository 22: 2 snapshots copied"),
        "{out:?}"
    );

    // A third repository's snapshot, brought by restic's own copy (no source recorded).
    let c = d.join("c");
    restic_ok(&c, "pw-c", &["init"]);
    let note = d.join("note.txt");
    fs::write(&note, b"a copy from a third site").expect("note");
    restic_ok(
        &c,
        "pw-c",
        &["backup", "--tag", "one-22", note.to_str().expect("utf-8")],
    );
    let site = store.join("22");
    let copied = std::process::Command::new("restic")
        .arg("--no-cache")
        .arg("-r")
        .arg(&site)
        .args(["copy", "--from-repo"])
        .arg(&c)
        .env("RESTIC_PASSWORD", "pw-site")
        .env("RESTIC_FROM_PASSWORD", "pw-c")
        .output()
        .expect("restic copy");
    assert!(copied.status.success(), "restic copy: {copied:?}");

    // What the remote holds: (original, tags) of each snapshot, as restic shows them.
    let at_site = || -> Vec<(String, String, Vec<String>)> {
        let v: serde_json::Value =
            serde_json::from_slice(&restic_ok(&site, "pw-site", &["snapshots", "--json"]))
                .expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().expect("id").to_string(),
                    s["original"].as_str().unwrap_or_default().to_string(),
                    s["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| t.as_str().expect("tag").to_string())
                        .collect(),
                )
            })
            .collect()
    };
    let holds = |original: &str| at_site().iter().any(|(_, o, _)| o == original);
    let listed = at_site();
    assert_eq!(listed.len(), 6, "{listed:?}");
    let copier = |job: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&["sync-job", "show", job, "--json"]).stdout).expect("json");
        v["copied_by"].as_str().expect("copied_by").to_string()
    };
    for (source, id, job) in [(&from_a, &a_id, "1"), (&from_b, &b_id, "2")] {
        for (original, _) in source.iter() {
            let (_, _, tags) = listed
                .iter()
                .find(|(_, o, _)| o == original)
                .expect("copied");
            assert_eq!(
                tags,
                &[
                    "one-22".to_string(),
                    format!("copied-from:{id}"),
                    format!("copied-by:{}", copier(job))
                ]
            );
        }
    }

    // A forgets its oldest snapshot: that copy goes, nothing else.
    repo("a", "pw-a", &["forget", &from_a[0].0]);
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 2 there already; 0 bytes read, 0 bytes written; \
             1 vanished copies forgotten; 1 copies with no recorded job left alone"
        ),
        "{out:?}"
    );
    assert_eq!(at_site().len(), 5);
    assert!(!holds(&from_a[0].0));

    // A replaced by an empty repository: its copies came from another repository; none goes.
    let a22 = d.join("a/22");
    fs::rename(&a22, d.join("a/22.old")).expect("aside");
    repo("a", "pw-a", &["init"]);
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 0 there already; 0 bytes read, 0 bytes written; \
             1 copies with no recorded job left alone"
        ),
        "{out:?}"
    );
    assert_eq!(at_site().len(), 5);

    // The old A back, emptied: its two copies go; B's and restic's copy stay.
    fs::remove_dir_all(&a22).expect("new a");
    fs::rename(d.join("a/22.old"), &a22).expect("back");
    repo("a", "pw-a", &["forget", &from_a[1].0, &from_a[2].0]);
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout
            .contains("; 2 vanished copies forgotten; 1 copies"),
        "{out:?}"
    );
    let left = at_site();
    assert_eq!(left.len(), 3, "{left:?}");
    for (original, data) in &from_b {
        let (id, _, _) = left
            .iter()
            .find(|(_, o, _)| o == original)
            .expect("B's copy kept");
        assert!(
            restic_ok(&site, "pw-site", &["dump", id, IN_SNAPSHOT]) == *data,
            "B's copy {id}"
        );
    }
    let (kept, _, tags) = left
        .iter()
        .find(|(_, _, t)| !t.iter().any(|t| t.starts_with("copied-from:")))
        .expect("restic's copy kept");
    assert_eq!(tags, &["one-22".to_string()]);
    let path = format!("{}", note.display());
    assert_eq!(
        restic_ok(&site, "pw-site", &["dump", kept, &path]),
        b"a copy from a third site"
    );
    restic_ok(&site, "pw-site", &["check", "--read-data"]);
}

/// Rewrites the config of the local repository `repo` to claim repository id `id` (a hostile
/// site can: its config is its own), sealed with the repository's own key as restic does.
fn claim_repository_id(repo: &Path, pw: &str, id: &str) {
    use backstop_datastore::repo::Repo;
    use backstop_storage::local::LocalBackend;
    let r = Repo::open(std::sync::Arc::new(LocalBackend::new(repo)), pw).expect("open");
    let file = repo.join("config");
    let plain = r
        .open_sealed(&fs::read(&file).expect("config"))
        .expect("config opens");
    let mut config: serde_json::Value = serde_json::from_slice(&plain).expect("config json");
    config["id"] = serde_json::Value::String(id.to_string());
    let sealed = r
        .seal(&serde_json::to_vec(&config).expect("json"))
        .expect("seal");
    fs::remove_file(&file).expect("old config");
    fs::write(&file, sealed).expect("new config");
}

/// Issue 23, the mesh: site C pulls from A and from B, B pulls from A too, so B knows A's
/// repository id, and B turns hostile: its config claims A's id. C's job from B must not take
/// C's copies of A (made by C's job from A) for copies of its own whose original vanished: each
/// copy names the job that made it (`copied-by:<the job's id>`, an id the runner keeps and no
/// repository chooses), and a job forgets only its own. From its first run (B lacks A's
/// snapshots) C's job from B counts A's three copies as another job's and forgets none; as B
/// forgets its snapshots, the job forgets exactly its two copies, one run at a time;
/// C's job from A takes nothing of B's although B's copies claim A's id; A forgets a snapshot
/// and C's job from A forgets that copy. A's copies dump byte-exact and C checks clean.
#[test]
fn remove_vanished_forgets_only_the_jobs_own_copies_when_a_source_poses_as_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let remotes = d.join("remotes");
    fs::create_dir_all(remotes.join("etc/datastore")).expect("remotes");
    let state = d.join("state.db");
    let (st, rm) = (
        state.to_str().expect("utf-8"),
        remotes.to_str().expect("utf-8"),
    );
    let ok = |args: &[&str]| -> Outcome {
        let mut all = vec!["backupjob", "--state", st, "--remotes", rm];
        all.extend_from_slice(args);
        let out = run(BACKSTOP, &all, b"");
        assert_eq!(out.code, Some(0), "backupjob {args:?}: {out:?}");
        out
    };
    let template = |name: &str, text: String| {
        let p = d.join(name);
        fs::write(&p, text).expect("template");
        p.display().to_string()
    };
    // C's own datastore (1), and sites A (2) and B (3) as remotes, each on a path of its own.
    for (kind, name, pw) in [
        ("datastore", "c", "pw-c"),
        ("remote", "a", "pw-a"),
        ("remote", "b", "pw-b"),
    ] {
        ok(&[
            kind,
            "create",
            &template(
                &format!("{name}.tmpl"),
                format!(
                    "NAME=\"{name}\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"{pw}\"\n",
                    d.join(name).display()
                ),
            ),
        ]);
    }
    let repo = |site: &str, pw: &str, args: &[&str]| site_repo(d, site, pw, args);
    let backup = |site: &str, pw: &str, seed: u64| site_backup(d, site, pw, 1 << 20, seed);
    repo("a", "pw-a", &["init"]);
    repo("b", "pw-b", &["init"]);
    let from_a: Vec<(String, Vec<u8>)> = (0..3).map(|k| backup("a", "pw-a", 30 + k)).collect();
    let from_b: Vec<(String, Vec<u8>)> = (0..2).map(|k| backup("b", "pw-b", 40 + k)).collect();
    let config_id = |site: &str, pw: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&restic_ok(&d.join(site).join("22"), pw, &["cat", "config"]))
                .expect("json");
        v["id"].as_str().expect("id").to_string()
    };
    let a_id = config_id("a", "pw-a");
    claim_repository_id(&d.join("b/22"), "pw-b", &a_id);
    assert_eq!(config_id("b", "pw-b"), a_id, "B poses as A");

    let job = |name: &str, remote: u64| {
        template(
            &format!("{name}.tmpl"),
            format!(
                "NAME=\"{name}\"\nDIRECTION=PULL\nDATASTORE_ID=1\nREMOTE_ID={remote}\nVMS=\"22\"\n\
                 REMOVE_VANISHED=YES\nMAX_DELETE=10\n"
            ),
        )
    };
    assert_eq!(
        ok(&["sync-job", "create", &job("from-a", 2)]).stdout,
        "ID: 1\n"
    );
    assert_eq!(
        ok(&["sync-job", "create", &job("from-b", 3)]).stdout,
        "ID: 2\n"
    );
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains("repository 22: 3 snapshots copied"),
        "{out:?}"
    );
    // B lacks A's snapshots and claims A's id: still, C's copies of A are not its job's.
    let out = ok(&["sync-job", "run", "2"]);
    assert!(
        out.stdout
            .contains("repository 22: 2 snapshots copied, 0 there already;")
            && out.stdout.contains("; 3 copies by another job left alone")
            && !out.stdout.contains("forgotten"),
        "{out:?}"
    );

    let at_c = d.join("c/22");
    // (id, original, tags) of each snapshot C holds, as restic shows them.
    let held = || -> Vec<(String, String, Vec<String>)> {
        let v: serde_json::Value =
            serde_json::from_slice(&restic_ok(&at_c, "pw-c", &["snapshots", "--json"]))
                .expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().expect("id").to_string(),
                    s["original"].as_str().unwrap_or_default().to_string(),
                    s["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| t.as_str().expect("tag").to_string())
                        .collect(),
                )
            })
            .collect()
    };
    let originals = || -> Vec<String> {
        let mut o: Vec<String> = held().into_iter().map(|(_, o, _)| o).collect();
        o.sort();
        o
    };
    let sorted = |list: &[&(String, Vec<u8>)]| -> Vec<String> {
        let mut o: Vec<String> = list.iter().map(|(id, _)| id.clone()).collect();
        o.sort();
        o
    };
    assert_eq!(held().len(), 5, "C's copies of A were forgotten");

    // B forgets one of its snapshots: C's job from B forgets that copy alone; A's copies,
    // which name the id B claims, are another job's.
    repo("b", "pw-b", &["forget", &from_b[0].0]);
    let out = ok(&["sync-job", "run", "2"]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 1 there already; 0 bytes read, 0 bytes written; \
             1 vanished copies forgotten; 3 copies by another job left alone"
        ),
        "{out:?}"
    );
    assert_eq!(
        originals(),
        sorted(&[&from_a[0], &from_a[1], &from_a[2], &from_b[1]])
    );

    // C's job from A takes nothing of B's, though B's copy claims A's id and A lacks it.
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 3 there already; 0 bytes read, 0 bytes written; \
             1 copies by another job left alone"
        ),
        "{out:?}"
    );
    assert_eq!(held().len(), 4);

    // B empties: its last copy goes, A's stay, run after run.
    repo("b", "pw-b", &["forget", &from_b[1].0]);
    for forgotten in ["1 vanished copies forgotten; ", ""] {
        let out = ok(&["sync-job", "run", "2"]);
        assert!(
            out.stdout.contains(&format!(
                "repository 22: 0 snapshots copied, 0 there already; 0 bytes read, 0 bytes written; \
                 {forgotten}3 copies by another job left alone"
            )),
            "{out:?}"
        );
        assert_eq!(originals(), sorted(&[&from_a[0], &from_a[1], &from_a[2]]));
    }

    // Each copy names its job by the id `show` prints; the two jobs' ids differ.
    let copier = |job: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&["sync-job", "show", job, "--json"]).stdout).expect("json");
        v["copied_by"].as_str().expect("copied_by").to_string()
    };
    let (job_a, job_b) = (copier("1"), copier("2"));
    assert!(
        job_a.len() == 32 && job_a.bytes().all(|b| b.is_ascii_hexdigit()) && job_a != job_b,
        "{job_a} {job_b}"
    );
    assert!(
        ok(&["sync-job", "show", "1"])
            .stdout
            .contains(&format!("\nCOPY TAG : copied-by:{job_a}\n"))
    );
    for (id, original, tags) in held() {
        assert_eq!(
            tags,
            [
                "one-22".to_string(),
                format!("copied-from:{a_id}"),
                format!("copied-by:{job_a}")
            ],
            "{id}"
        );
        let data = &from_a.iter().find(|(o, _)| *o == original).expect("A's").1;
        assert!(
            restic_ok(&at_c, "pw-c", &["dump", &id, IN_SNAPSHOT]) == *data,
            "A's copy {id}"
        );
    }

    // A forgets a snapshot: C's job from A forgets its copy.
    repo("a", "pw-a", &["forget", &from_a[0].0]);
    let out = ok(&["sync-job", "run", "1"]);
    assert!(
        out.stdout.contains(
            "repository 22: 0 snapshots copied, 2 there already; 0 bytes read, 0 bytes written; \
             1 vanished copies forgotten"
        ),
        "{out:?}"
    );
    assert_eq!(originals(), sorted(&[&from_a[1], &from_a[2]]));
    restic_ok(&at_c, "pw-c", &["check", "--read-data"]);
}

/// `backstop repo` on repository 22 of `<d>/<site>` with password `pw`; it must succeed.
fn site_repo(d: &Path, site: &str, pw: &str, args: &[&str]) -> Outcome {
    let path = d.join(site).join("22");
    let mut all = vec!["repo", "-r", path.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let out = run_env(BACKSTOP, &all, b"", &[("RESTIC_PASSWORD", pw)]);
    assert_eq!(out.code, Some(0), "repo {args:?}: {out:?}");
    out
}

/// A backup of `len` bytes of noise (from `seed`) into repository 22 of `<d>/<site>`, tagged
/// `one-22`: its snapshot id and the data.
fn site_backup(d: &Path, site: &str, pw: &str, len: usize, seed: u64) -> (String, Vec<u8>) {
    let data = noise(len, seed);
    let raw = d.join(format!("disk-{site}.raw"));
    fs::write(&raw, &data).expect("raw");
    let out = site_repo(
        d,
        site,
        pw,
        &[
            "backup",
            "--image",
            raw.to_str().expect("utf-8"),
            "--path",
            IN_SNAPSHOT,
            "--tag",
            "one-22",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    (v["snapshot_id"].as_str().expect("id").to_string(), data)
}
