//! The job runner's execution of VM backups (issue 6): the chain oned runs (TM prebackup,
//! datastore backup, TM postbackup) through the installed actions, recorded in SQLite, with
//! KEEP_LAST applied by the datastore's increment_flatten. Real sshd hosts, real restic.

use crate::cloud::{Cloud, DISKS, VM};
use crate::support::BACKSTOP;
use backstop_backupjob::runner::{self, BackupDatastore, ChainPointers, Env, JobConfig, Mode};
use backstop_backupjob::state::State;
use std::fs;
use std::path::Path;

/// The test cloud with backstop's prebackup/postbackup as the ssh TM's, and a host alias
/// "down" that nothing answers (127.0.0.9).
pub(crate) fn cloud_with_tm() -> Cloud {
    let cloud = Cloud::start();
    for action in ["prebackup", "postbackup"] {
        let link = cloud.remotes.join(format!("tm/ssh/{action}"));
        fs::create_dir_all(link.parent().expect("parent")).expect("tm");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    }
    let ssh_config = cloud.dir.path().join("ssh_config");
    let mut text = fs::read_to_string(&ssh_config).expect("ssh_config");
    text.push_str("Host down\n  HostName 127.0.0.9\n  ConnectTimeout 5\n");
    fs::write(&ssh_config, text).expect("ssh_config");
    cloud
}

/// A backup datastore on the test backup server, with more attributes.
pub(crate) fn datastore_template(cloud: &Cloud, extra: &str) -> String {
    format!(
        "NAME = \"backups\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{}\"\n\
         RESTIC_PASSWORD = \"{}\"\nRESTIC_SFTP_SERVER = \"bks\"\nRESTIC_SFTP_USER = \"root\"\n{extra}",
        cloud.base_path.display(),
        crate::cloud::PASSWORD
    )
}

/// `<cloud>/jobs` holding VM 22's document (`vm22.xml`) and the datastore's template
/// (`ds.tmpl`), for the job runner's command line.
pub(crate) fn work_dir(cloud: &Cloud) -> std::path::PathBuf {
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    fs::write(work.join("vm22.xml"), cloud.vm_xml(-1, -1)).expect("vm doc");
    fs::write(work.join("ds.tmpl"), datastore_template(cloud, "")).expect("ds");
    work
}

/// `backstop backupjob` with the test cloud's state, remotes and datastore location.
pub(crate) fn cli_prefix(cloud: &Cloud, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "backupjob".to_string(),
        "--state".into(),
        state.display().to_string(),
        "--remotes".into(),
        cloud.remotes.display().to_string(),
        "--datastore-location".into(),
        cloud.dir.path().join("hv/datastores").display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

pub(crate) fn run_cli(prefix: &[String], args: &[&str]) -> crate::support::Outcome {
    let mut all: Vec<&str> = prefix.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    crate::support::run(BACKSTOP, &all, b"")
}

/// `backupjob image restore 1 --increment <inc>` into `<work>/restored-<inc>`; that directory.
fn restore_image(
    bj: &dyn Fn(&[&str]) -> crate::support::Outcome,
    work: &Path,
    inc: &str,
) -> std::path::PathBuf {
    let dir = work.join(format!("restored-{inc}"));
    let out = bj(&[
        "image",
        "restore",
        "1",
        "--increment",
        inc,
        "--to",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    dir
}

/// Plain restic on a job's repository; its stdout.
pub(crate) fn restic_in(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("restic")
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", crate::cloud::PASSWORD)
        .output()
        .expect("restic");
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A job with INCREMENT_MODE=SNAPSHOT (issue 26): the runner hands the mode to backstop's
/// TM, which rotates the overlay (disk.<id> -> disk.<id>.snap/<n+1> after backup n); every
/// point restores byte-exact and the increments stay small.
#[test]
fn a_job_in_snapshot_mode_rotates_the_overlay_and_each_point_restores() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let env = Env {
        remotes: cloud.remotes.clone(),
        datastore_location: cloud.dir.path().join("hv/datastores").display().to_string(),
    };
    let mut state = State::open(&cloud.dir.path().join("state/backstop.db")).expect("state");
    let template =
        "NAME=snap\nDATASTORE_ID=100\nMODE=INCREMENT\nINCREMENT_MODE=snapshot\nKEEP_LAST=10";
    let parsed = backstop_backupjob::model::JobTemplate::parse(template).expect("template");
    let job = state
        .create_job("snap", 50, "MODE=INCREMENT\nINCREMENT_MODE=SNAPSHOT", &[VM])
        .expect("job");
    let cfg = parsed.config(job);
    assert_eq!(
        cfg.increment_mode,
        backstop_protocol::message::IncrementMode::Snapshot
    );
    let ds = BackupDatastore {
        id: 100,
        ds_mad: "backstop".into(),
        document: cloud.datastore_xml(),
    };
    let doc = cloud.vm_xml(-1, -1);
    let repo = cloud.base_path.join(format!("job_{job}"));
    let staging = cloud.staging();
    for round in 0..3u64 {
        if round > 0 {
            cloud.change_disks(round, 10);
        }
        let backstop_backupjob::state::Chain {
            image,
            last_increment: last,
        } = state.chain_of(VM, Some(job), 100).expect("chain");
        let chain = ChainPointers {
            image_id: image,
            last_increment: last,
        };
        let result = runner::run_chain(&env, &doc, &cfg, &ds, chain, &|| false, None)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        if round > 0 {
            assert!(
                result.size_mb <= 12,
                "round {round} read {} MB",
                result.size_mb
            );
        }
        let out = runner::record(&env, &mut state, &cfg, &ds, result, 2000 + round as i64)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(out.increment_id, round);
        for (k, (d, _)) in DISKS.iter().enumerate() {
            assert_eq!(
                fs::read_link(cloud.disk(*d)).expect("link"),
                Path::new(&format!("disk.{d}.snap/{}", round + 1))
            );
            let images = state.images_of(VM, Some(job), 100).expect("images");
            let image = state.image(images[0]).expect("image");
            let inc = image.increments.last().expect("increment");
            let path = format!("{}/disk.{d}.{}", staging.display(), inc.id);
            let data = restic_in(&repo, &["dump", &inc.source, &path]);
            assert!(
                data == cloud.raw(*d),
                "round {round}: disk {d} ({k}) is not the disk at that point"
            );
        }
    }
    restic_in(&repo, &["check", "--read-data"]);
}

#[test]
fn a_job_in_increment_mode_keeps_the_last_two_increments_each_restorable() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let env = Env {
        remotes: cloud.remotes.clone(),
        datastore_location: cloud.dir.path().join("hv/datastores").display().to_string(),
    };
    let mut state = State::open(&cloud.dir.path().join("state/backstop.db")).expect("state");
    let job = state
        .create_job("nightly", 50, "MODE=INCREMENT\nKEEP_LAST=2", &[VM, 23])
        .expect("job");
    let cfg = JobConfig {
        job_id: Some(job),
        mode: Mode::Increment,
        keep_last: 2,
        fs_freeze: "NONE".into(),
        backup_volatile: false,
        disk_ids: None,
        reset: false,
        chain: Default::default(),
        increment_mode: backstop_protocol::message::IncrementMode::Cbt,
    };
    let ds = BackupDatastore {
        id: 100,
        ds_mad: "backstop".into(),
        document: cloud.datastore_xml(),
    };
    let doc = cloud.vm_xml(-1, -1);
    // One repository per job: <BASE_PATH>/job_<id>.
    let repo = cloud.base_path.join(format!("job_{job}"));
    let restic = |args: &[&str]| restic_in(&repo, args);
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    for round in 0..4u64 {
        if round > 0 {
            cloud.change_disks(round, 10);
        }
        let backstop_backupjob::state::Chain {
            image,
            last_increment: last,
        } = state.chain_of(VM, Some(job), 100).expect("chain");
        let chain = ChainPointers {
            image_id: image,
            last_increment: last,
        };
        let result = runner::run_chain(&env, &doc, &cfg, &ds, chain, &|| false, None)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let out = runner::record(&env, &mut state, &cfg, &ds, result, 1000 + round as i64)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(out.increment_id, round);
        expected.push(DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect());
        restic(&["check", "--read-data"]);
    }
    // One image; KEEP_LAST=2 left increments 2 and 3, and each restores byte-exact.
    let images = state.images_of(VM, Some(job), 100).expect("images");
    assert_eq!(images.len(), 1);
    let image = state.image(images[0]).expect("image");
    let ids: Vec<u64> = image.increments.iter().map(|i| i.id).collect();
    assert_eq!(ids, [2, 3]);
    let staging = cloud.staging();
    for inc in &image.increments {
        for (k, (d, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{d}.{}", staging.display(), inc.id);
            let data = restic(&["dump", &inc.source, &path]);
            assert!(
                data == expected[inc.id as usize][k],
                "disk {d} of increment {} is not the disk at that point",
                inc.id
            );
        }
    }
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{snaps}");

    // A VM whose host is down: a clear reason, nothing recorded.
    let down = doc
        .replace("<ID>22</ID>", "<ID>23</ID>")
        .replace("<HOSTNAME>hv1</HOSTNAME>", "<HOSTNAME>down</HOSTNAME>");
    let e = runner::run_chain(
        &env,
        &down,
        &cfg,
        &ds,
        ChainPointers::default(),
        &|| false,
        None,
    )
    .expect_err("the host is down");
    assert!(
        matches!(e, backstop_backupjob::Error::Step(_)),
        "a failed step: {e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("prebackup of VM 23 on down") && e.contains("127.0.0.9"),
        "{e}"
    );
    assert!(
        state
            .images_of(23, Some(job), 100)
            .expect("images")
            .is_empty()
    );
}

/// `backstop backupjob` end to end: a datastore and three VMs registered, a PARALLEL job with
/// MAX_BACKUPS_HOST=1 run now: the two VMs on hv1 run one after the other, the VM on a host
/// that is down ends in ERROR with its reason, `show` says so, `retry` puts it back, and each
/// backed-up VM restores byte-exact with plain restic.
/// A chain policy starts a new chain by itself: after MAX_INCREMENTS increments, and once the
/// chain's FULL is CHAIN_MAX_DAYS old by the runner's clock (the FULL's recorded time is moved
/// back eight days rather than waiting for them).
#[test]
fn chain_policies_start_new_chains_after_n_increments_and_after_days() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    fs::write(work.join("vm22.xml"), cloud.vm_xml(-1, -1)).expect("vm doc");
    fs::write(work.join("ds.tmpl"), datastore_template(&cloud, "")).expect("ds");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"chains\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = INCREMENT\n\
         MAX_INCREMENTS = 1\nCHAIN_MAX_DAYS = 7\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    assert_eq!(bj(&["datastore", "create", &file("ds.tmpl")]).code, Some(0));
    assert_eq!(bj(&["vm", "register", &file("vm22.xml")]).code, Some(0));
    assert_eq!(bj(&["create", &file("job.tmpl")]).stdout, "ID: 1\n");
    // (image, increment) of every backup recorded, in order.
    let chains = || -> Vec<(i64, i64)> {
        let db = rusqlite::Connection::open(&state).expect("state");
        let mut q = db
            .prepare("SELECT image_id, id FROM increments ORDER BY image_id, id")
            .expect("query");
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let mut lines = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            cloud.change_disks(round, 10);
        }
        let out = bj(&["backup", "1"]);
        assert_eq!(out.code, Some(0), "round {round}: {out:?}");
        lines.push(out.stdout);
    }
    let recorded = chains();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    let (a, b) = (recorded[0].0, recorded[2].0);
    assert_eq!(recorded, [(a, 0), (a, 1), (b, 0)], "MAX_INCREMENTS=1");
    assert!(
        lines[2]
            .contains("VM 22: a new chain starts: the chain has 1 increments (MAX_INCREMENTS=1)"),
        "{}",
        lines[2]
    );
    assert!(!lines[1].contains("a new chain starts"), "{}", lines[1]);

    // The second chain's FULL is eight days old: the next backup starts a third chain.
    rusqlite::Connection::open(&state)
        .expect("state")
        .execute(
            "UPDATE increments SET created_at = created_at - 8 * 86400 WHERE image_id = ?1",
            [b],
        )
        .expect("age");
    cloud.change_disks(3, 10);
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("a new chain starts: the chain's FULL is 8 days old (CHAIN_MAX_DAYS=7)"),
        "{}",
        out.stdout
    );
    let recorded = chains();
    let c = recorded.last().expect("last").0;
    assert!(
        c != a && c != b && recorded.last() == Some(&(c, 0)),
        "{recorded:?}"
    );
}

#[test]
fn the_backupjob_command_line_runs_a_job() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    // VM 23: a copy of VM 22's disks in its own directory on hv1.
    let vm23 = cloud.vm_dir.with_file_name("23");
    fs::create_dir_all(&vm23).expect("vm 23");
    for (d, _) in DISKS {
        fs::copy(cloud.disk(d), vm23.join(format!("disk.{d}"))).expect("copy");
    }
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    let doc22 = cloud.vm_xml(-1, -1);
    let doc23 = doc22
        .replace("<ID>22</ID>", "<ID>23</ID>")
        .replace("one-22", "one-23");
    let doc24 = doc22
        .replace("<ID>22</ID>", "<ID>24</ID>")
        .replace("one-22", "one-24")
        .replace("<HOSTNAME>hv1</HOSTNAME>", "<HOSTNAME>down</HOSTNAME>");
    for (id, doc) in [(22, &doc22), (23, &doc23), (24, &doc24)] {
        fs::write(work.join(format!("vm{id}.xml")), doc).expect("vm doc");
    }
    fs::write(work.join("ds.tmpl"), datastore_template(&cloud, "")).expect("ds");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"nightly\"\nBACKUP_VMS = \"22,23,24\"\nDATASTORE_ID = 1\nMODE = FULL\n\
         EXECUTION = PARALLEL\nKEEP_LAST = 1\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let location = cloud.dir.path().join("hv/datastores");
    let common = cli_prefix(&cloud, &state, &["--max-backups-host", "1"]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    assert_eq!(
        bj(&["datastore", "create", &file("ds.tmpl")]).stdout,
        "ID: 1\n"
    );
    for id in [22, 23, 24] {
        let out = bj(&["vm", "register", &file(&format!("vm{id}.xml"))]);
        assert_eq!(out.stdout, format!("ID: {id}\n"), "{out:?}");
    }
    assert_eq!(bj(&["create", &file("job.tmpl")]).stdout, "ID: 1\n");
    // A template error names the attribute.
    fs::write(
        work.join("bad.tmpl"),
        "NAME=x\nDATASTORE_ID=1\nMODE=DAILY\n",
    )
    .expect("bad");
    let out = bj(&["create", &file("bad.tmpl")]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("MODE is \"DAILY\""), "{}", out.stderr);

    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(1), "VM 24 fails: {out:?}");
    assert!(out.stdout.contains("VM 24: ERROR: "), "{}", out.stdout);
    assert!(
        out.stdout
            .ends_with("backup job 1: 2 VMs backed up, 1 in ERROR\n"),
        "{}",
        out.stdout
    );
    let show: serde_json::Value =
        serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show json");
    let vms = show["vms"].as_array().expect("vms");
    let get = |id: u64| vms.iter().find(|v| v["id"] == id).expect("vm").clone();
    assert_eq!(get(22)["state"], "UPDATED");
    assert_eq!(get(23)["state"], "UPDATED");
    assert_eq!(get(24)["state"], "ERROR");
    // The run is recorded as sync and verify runs are: one row in the state's job runs.
    let runs: Vec<(String, i64, i64, bool, Option<String>)> = {
        let db = rusqlite::Connection::open(&state).expect("state");
        let mut q = db
            .prepare("SELECT kind, job_id, snapshots, ended_at >= started_at, error FROM job_runs")
            .expect("query");
        q.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    assert_eq!(
        runs,
        [(
            "backup".to_string(),
            1,
            2,
            true,
            Some("1 VMs failed".to_string())
        )]
    );
    assert!(
        get(24)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("127.0.0.9")),
        "{show}"
    );
    // MAX_BACKUPS_HOST=1: the two VMs on hv1 did not overlap.
    let span = |id: u64| {
        let v = get(id);
        (
            crate::support::json_ms(&v["started_at"]),
            crate::support::json_ms(&v["ended_at"]),
        )
    };
    let (a, b) = (span(22), span(23));
    assert!(a.1 <= b.0 || b.1 <= a.0, "22 {a:?} and 23 {b:?} overlapped");
    let text = bj(&["show", "1"]).stdout;
    assert!(
        text.contains("UPDATED  : 22,23") && text.contains("ERROR    : 24"),
        "{text}"
    );
    let out = bj(&["retry", "1"]);
    assert_eq!(out.stdout, "backup job 1: 1 VMs back to OUTDATED\n");

    // A scheduled action due now: one scheduler pass runs the job (VM 24 fails again) and
    // moves the action on; it is then not due any more.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let out = bj(&[
        "sched-add",
        "1",
        "--time",
        &(now - 60).to_string(),
        "--repeat",
        "hourly",
        "--days",
        "24",
    ]);
    assert_eq!(out.stdout, "ID: 1\n", "{out:?}");
    let out = bj(&["scheduler"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("job 1: VM 24: ERROR: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("scheduler: ran backup jobs 1\n"),
        "{}",
        out.stdout
    );
    assert!(bj(&["show", "1"]).stdout.contains("Each 24 hours"));
    let out = bj(&["scheduler"]);
    assert_eq!(out.stdout, "", "nothing is due: {out:?}");

    // The runner killed in the middle of a job: the next scheduler pass finds VM 22 ONGOING
    // with its runner gone, puts it back to OUTDATED and runs it; no record is lost.
    let mut child = std::process::Command::new(BACKSTOP)
        .args([
            "backupjob",
            "--state",
            state.to_str().expect("utf-8"),
            "--remotes",
            cloud.remotes.to_str().expect("utf-8"),
            "--datastore-location",
            location.to_str().expect("utf-8"),
            "--max-backups",
            "1",
            "backup",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("backupjob");
    {
        use std::io::BufRead;
        let out = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(out).lines();
        loop {
            let line = lines.next().expect("a line").expect("read");
            if line == "VM 22: backing up" {
                break;
            }
        }
        child.kill().expect("kill");
        let _ = child.wait();
    }
    let show: serde_json::Value =
        serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show json");
    let stuck = show["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .find(|v| v["id"] == 22)
        .expect("vm 22")
        .clone();
    assert_eq!(stuck["state"], "ONGOING", "{show}");
    // Let the killed runner's last action (an orphan now) finish before running again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = bj(&["scheduler"]);
    assert!(out.stdout.contains("job 1: VM 22: backup "), "{out:?}");
    let show: serde_json::Value =
        serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show json");
    for v in show["vms"].as_array().expect("vms") {
        assert_ne!(v["state"], "ONGOING", "{show}");
    }

    // Images, priority, rename, lock, scheduled actions, delete.
    let images: serde_json::Value =
        serde_json::from_str(&bj(&["image", "list", "--json"]).stdout).expect("images");
    let vms: Vec<u64> = images
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["vm"].as_u64().expect("vm"))
        .collect();
    assert_eq!(
        vms,
        [22, 23],
        "KEEP_LAST=1 in FULL mode keeps one image per VM: {images}"
    );
    assert_eq!(bj(&["priority", "1", "70"]).code, Some(0));
    let out = bj(&["priority", "1", "100"]);
    assert!(out.stderr.contains("PRIORITY 100 is not 0–99"), "{out:?}");
    assert_eq!(bj(&["rename", "1", "weekly"]).code, Some(0));
    let list: serde_json::Value =
        serde_json::from_str(&bj(&["list", "--json"]).stdout).expect("list");
    assert_eq!(list[0]["name"], "weekly");
    assert_eq!(list[0]["priority"], 70);
    assert_eq!(bj(&["lock", "1"]).code, Some(0));
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("backup job 1 is locked"), "{out:?}");
    assert_eq!(bj(&["unlock", "1"]).code, Some(0));
    assert_eq!(bj(&["sched-delete", "1", "1"]).code, Some(0));
    assert!(!bj(&["show", "1"]).stdout.contains("Each 24 hours"));
    let out = bj(&["sched-delete", "1", "1"]);
    assert!(out.stderr.contains("has no scheduled action 1"), "{out:?}");
    // update --append merges; NAME stays the job's own; VMs that left lose their place.
    fs::write(
        work.join("upd.tmpl"),
        "NAME = \"ignored\"\nKEEP_LAST = 3\nBACKUP_VMS = \"22\"\n",
    )
    .expect("tmpl");
    let out = bj(&["update", "1", &file("upd.tmpl"), "--append"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let text = bj(&["show", "1"]).stdout;
    assert!(
        text.contains("NAME = \"weekly\"")
            && text.contains("KEEP_LAST = \"3\"")
            && text.contains("MODE = \"FULL\""),
        "{text}"
    );
    let show: serde_json::Value =
        serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show");
    assert_eq!(show["vms"].as_array().map(Vec::len), Some(1), "{show}");
    // Without --append the template is replaced.
    fs::write(
        work.join("full.tmpl"),
        "BACKUP_VMS = \"22,23\"\nDATASTORE_ID = 1\n",
    )
    .expect("tmpl");
    assert_eq!(bj(&["update", "1", &file("full.tmpl")]).code, Some(0));
    let text = bj(&["show", "1"]).stdout;
    assert!(
        !text.contains("KEEP_LAST") && text.contains("NAME = \"weekly\""),
        "{text}"
    );
    let out = bj(&["update", "1", &file("bad.tmpl")]);
    assert!(out.stderr.contains("MODE is \"DAILY\""), "{out:?}");
    assert_eq!(bj(&["delete", "1"]).code, Some(0));
    assert_eq!(bj(&["list", "--json"]).stdout, "[]\n");
    // Its VMs are free to join another job; their images stay.
    fs::write(
        work.join("again.tmpl"),
        "NAME=again\nBACKUP_VMS=22\nDATASTORE_ID=1\n",
    )
    .expect("tmpl");
    assert_eq!(bj(&["create", &file("again.tmpl")]).stdout, "ID: 2\n");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&bj(&["image", "list", "--json"]).stdout)
            .expect("images")
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // The daemon stops cleanly on SIGTERM.
    let daemon = std::process::Command::new(BACKSTOP)
        .args([
            "backupjob",
            "--state",
            state.to_str().expect("utf-8"),
            "--remotes",
            cloud.remotes.to_str().expect("utf-8"),
            "scheduler",
            "--loop",
            "--interval",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("daemon");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    crate::cloud::sh_ok("kill", &["-TERM", &daemon.id().to_string()]);
    let out = daemon.wait_with_output().expect("daemon");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("scheduler: stopped\n"));

    // Each VM restores byte-exact from the job's repository.
    let repo = cloud.base_path.join("job_1");
    let restic = |args: &[&str]| restic_in(&repo, args);
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic(&["snapshots", "--json"])).expect("json");
    for (vm, dir) in [(22u64, cloud.vm_dir.clone()), (23, vm23.clone())] {
        let snap = snaps
            .as_array()
            .expect("array")
            .iter()
            .find(|s| {
                s["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&serde_json::json!(format!("one-{vm}"))))
            })
            .unwrap_or_else(|| panic!("no snapshot of VM {vm}: {snaps}"));
        let id = snap["short_id"].as_str().expect("id");
        for (d, _) in DISKS {
            let path = format!("{}/backup/disk.{d}.0", dir.display());
            let data = restic(&["dump", id, &path]);
            let raw = cloud.dir.path().join("check.raw");
            let src = dir.join(format!("disk.{d}"));
            crate::cloud::sh_ok(
                "qemu-img",
                &[
                    "convert",
                    "-O",
                    "raw",
                    src.to_str().expect("utf-8"),
                    raw.to_str().expect("utf-8"),
                ],
            );
            assert!(data == fs::read(&raw).expect("raw"), "VM {vm} disk {d}");
        }
    }
}

/// The reading and housekeeping commands: a job created with a SCHED_ACTION in its template,
/// `image show` and `image restore` (each disk a standalone qcow2 equal to the source), the
/// datastore shown with its password hidden, deletes that would orphan something refused,
/// `sched-update`, and template errors that name the line.
#[test]
fn backupjob_shows_restores_and_refuses_what_would_orphan() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = crate::jobs::work_dir(&cloud);
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 86_400;
    fs::write(
        work.join("job.tmpl"),
        format!(
            "NAME = \"nightly\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = INCREMENT\n\
             SCHED_ACTION = [ TIME = \"{later}\", REPEAT = \"0\", DAYS = \"1,3\",\n  END_TYPE = \"1\", END_VALUE = \"5\" ]\n"
        ),
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    assert_eq!(
        bj(&["datastore", "create", &file("ds.tmpl")]).stdout,
        "ID: 1\n"
    );
    assert_eq!(
        bj(&["vm", "register", &file("vm22.xml")]).stdout,
        "ID: 22\n"
    );
    let out = bj(&["create", &file("job.tmpl")]);
    assert_eq!(out.stdout, "ID: 1\n", "{out:?}");
    let text = bj(&["show", "1"]).stdout;
    assert!(
        text.contains("Weekly [1, 3]") && text.contains("After 5 times"),
        "{text}"
    );
    assert!(!text.contains("TEMPLATE CONTENTS\nSCHED_ACTION"), "{text}");

    // A job from flags alone; then deleted again. Its VMs are registered first: a job naming
    // a VM that is not is refused.
    for vm in [31, 32] {
        fs::write(
            work.join(format!("vm{vm}.xml")),
            format!("<VM><ID>{vm}</ID><NAME>vm{vm}</NAME><TEMPLATE/></VM>"),
        )
        .expect("vm doc");
        let out = bj(&["vm", "register", &file(&format!("vm{vm}.xml"))]);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    let out = bj(&[
        "create",
        "--name",
        "flags",
        "--vms",
        "31,32",
        "--datastore",
        "1",
        "--mode",
        "increment",
        "--keep",
        "2",
        "--priority",
        "70",
    ]);
    assert_eq!(out.stdout, "ID: 2\n", "{out:?}");
    let list: serde_json::Value =
        serde_json::from_str(&bj(&["list", "--json"]).stdout).expect("list");
    assert_eq!(
        list[1]["vms"],
        serde_json::json!([{"id": 31, "state": null}, {"id": 32, "state": null}]),
        "{list}"
    );
    assert_eq!(list[1]["priority"], 70, "{list}");
    assert!(bj(&["show", "2"]).stdout.contains("KEEP_LAST = \"2\""));
    assert_eq!(bj(&["delete", "2"]).code, Some(0));
    for vm in ["31", "32"] {
        assert_eq!(bj(&["vm", "unregister", vm]).code, Some(0));
    }
    let out = bj(&["create", "--vms", "33"]);
    assert!(out.stderr.contains("NAME is missing"), "{out:?}");

    // Template errors name the line.
    for (body, want) in [
        (
            "NAME=x\nDATASTORE_ID=1\n# a comment\nKEEP_LAST=two\n",
            "bad.tmpl: line 4: KEEP_LAST is \"two\"",
        ),
        (
            "NAME=x\nDATASTORE_ID=1\nSCHED_ACTION=[TIME=1,\nREPEAT=1]\n",
            "bad.tmpl: line 3: SCHED_ACTION: DAYS is empty",
        ),
        (
            "NAME=x\nDATASTORE_ID=1\nMODE=[A=1\n",
            "bad.tmpl: template: line 3",
        ),
    ] {
        fs::write(work.join("bad.tmpl"), body).expect("bad");
        let out = bj(&["create", &file("bad.tmpl")]);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }

    // sched-update changes what it is given and keeps the rest.
    let out = bj(&["sched-update", "1", "1", "--days", "5", "--end-type", "0"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let text = bj(&["show", "1"]).stdout;
    assert!(
        text.contains("Weekly [5]") && text.contains("None"),
        "{text}"
    );
    let sched = |field: &str| -> serde_json::Value {
        let show: serde_json::Value =
            serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show json");
        show["sched_actions"][0][field].clone()
    };
    assert_eq!(
        crate::support::json_secs(&sched("time")),
        later as i64,
        "the time stays"
    );
    // From a file, as onebackupjob sched-update takes it.
    fs::write(
        work.join("sa.tmpl"),
        "SCHED_ACTION = [ REPEAT = \"1\", DAYS = \"1,15\" ]\n",
    )
    .expect("sa");
    let out = bj(&["sched-update", "1", "1", &file("sa.tmpl")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(sched("days"), serde_json::json!([1, 15]));
    assert_eq!(sched("repeat"), "Monthly");
    assert_eq!(
        crate::support::json_secs(&sched("time")),
        later as i64,
        "the time stays"
    );
    let out = bj(&["sched-update", "1", "1", "--days", "40"]);
    assert!(out.stderr.contains("DAYS holds 40"), "{out:?}");
    let out = bj(&["sched-update", "1", "7", "--days", "1"]);
    assert!(out.stderr.contains("has no scheduled action 7"), "{out:?}");

    // Two runs: a FULL and an increment, with the disk changed in between.
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let saved = work.join("disk0-at-0.qcow2");
    fs::copy(cloud.disk(0), &saved).expect("keep point 0");
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 3M",
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let img: serde_json::Value =
        serde_json::from_str(&bj(&["image", "show", "1", "--json"]).stdout).expect("image");
    let incs = img["increments"].as_array().expect("increments");
    assert_eq!(incs.len(), 2, "{img}");
    assert_eq!(
        (incs[0]["type"].as_str(), incs[1]["type"].as_str()),
        (Some("FULL"), Some("INCREMENT"))
    );
    let text = bj(&["image", "show", "1"]).stdout;
    assert!(
        text.contains("BACKUP IMAGE 1 INFORMATION") && text.contains("INCREMENT"),
        "{text}"
    );
    assert!(incs.iter().all(|i| i["verify"].is_null()), "{img}");
    // A verify job over the whole datastore (its repositories listed over SFTP): each
    // increment's verdict is shown with the image.
    fs::write(
        work.join("verify.tmpl"),
        "NAME = \"weekly\"\nDATASTORE_ID = 1\n",
    )
    .expect("verify job");
    let out = bj(&["verify-job", "create", &file("verify.tmpl")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = bj(&["verify-job", "run", "1"]);
    assert!(
        out.code == Some(0)
            && out
                .stdout
                .contains("repository job_1: 2 snapshots verified"),
        "{out:?}"
    );
    let img: serde_json::Value =
        serde_json::from_str(&bj(&["image", "show", "1", "--json"]).stdout).expect("image");
    let incs = img["increments"].as_array().expect("increments");
    assert!(
        incs.iter().all(|i| i["verify"]["ok"] == true
            && crate::support::json_secs(&i["verify"]["verified_at"]) > 0),
        "{img}"
    );
    let text = bj(&["image", "show", "1"]).stdout;
    assert_eq!(text.matches(" ok 20").count(), 2, "{text}");

    // The retention plan of the job's points, read-only: no rule keeps everything; KEEP_LAST 1
    // with KEEP_DAILY 1 keeps the newest (both taken today); a protected image keeps both.
    let plan = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["retention", "1", "--json"];
        all.extend_from_slice(args);
        let out = bj(&all);
        assert_eq!(out.code, Some(0), "{out:?}");
        serde_json::from_str(&out.stdout).expect("plan")
    };
    let kept = |p: &serde_json::Value| -> Vec<bool> {
        p["vms"][0]["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|x| x["keep"].as_bool().expect("keep"))
            .collect()
    };
    assert_eq!(kept(&plan(&[])), [true, true]);
    fs::write(work.join("keep.tmpl"), "KEEP_LAST = 1\nKEEP_DAILY = 1\n").expect("keep");
    assert_eq!(
        bj(&["update", "1", &file("keep.tmpl"), "--append"]).code,
        Some(0)
    );
    let p = plan(&["--vm", "22"]);
    assert_eq!(kept(&p), [false, true], "{p}");
    let reasons = &p["vms"][0]["points"][1]["reasons"];
    assert!(
        reasons[0] == "last 1"
            && reasons[1]
                .as_str()
                .is_some_and(|r| r.starts_with("daily 20")),
        "{p}"
    );
    let text = bj(&["retention", "1"]).stdout;
    assert!(
        text.contains("KEEP_LAST=1 KEEP_DAILY=1")
            && text.contains("VM 22: 2 points, 1 stay, 1 go")
            && text.contains("REMOVE"),
        "{text}"
    );
    assert_eq!(bj(&["image", "protect", "1"]).code, Some(0));
    assert_eq!(kept(&plan(&[])), [true, true]);
    assert!(
        bj(&["image", "show", "1"])
            .stdout
            .contains("PROTECTED : yes")
    );
    assert_eq!(bj(&["image", "unprotect", "1"]).code, Some(0));
    let out = bj(&["retention", "1", "--vm", "23"]);
    assert!(
        out.code == Some(1) && out.stderr.contains("VM 23 is not in backup job 1"),
        "{out:?}"
    );
    fs::write(work.join("nokeep.tmpl"), "KEEP_DAILY = 0\nKEEP_LAST = 0\n").expect("keep");
    assert_eq!(
        bj(&["update", "1", &file("nokeep.tmpl"), "--append"]).code,
        Some(0)
    );

    // Each point restores into files equal to the disks at that point.
    let compare = |a: &Path, b: &Path| {
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(a)
            .arg(b)
            .status()
            .expect("qemu-img compare");
        out.success()
    };
    for (inc, disk0) in [("0", saved.clone()), ("1", cloud.disk(0))] {
        let dir = restore_image(&bj, &work, inc);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["disk.0.qcow2", "disk.1.qcow2", "vm.xml"],
            "no partial files"
        );
        assert!(
            compare(&dir.join("disk.0.qcow2"), &disk0),
            "increment {inc} disk 0"
        );
        assert!(
            compare(&dir.join("disk.1.qcow2"), &cloud.disk(1)),
            "increment {inc} disk 1"
        );
        let vm = fs::read_to_string(dir.join("vm.xml")).expect("vm.xml");
        assert!(vm.starts_with("<VM>") && vm.contains("<ID>22</ID>"), "{vm}");
    }
    // The two points differ, so the comparison above can fail.
    assert!(!compare(&saved, &cloud.disk(0)));
    let out = bj(&["image", "restore", "1", "--disk-id", "7", "--to", "/tmp/x"]);
    assert!(out.stderr.contains("holds no disk 7"), "{out:?}");

    // The datastore, with its password hidden; VM 22 with its job and image.
    let text = bj(&["datastore", "show", "1"]).stdout;
    assert!(
        text.contains("JOBS      : 1")
            && text.contains("IMAGES    : 1")
            && text.contains("********"),
        "{text}"
    );
    assert!(!text.contains(crate::cloud::PASSWORD), "{text}");
    let ds: serde_json::Value =
        serde_json::from_str(&bj(&["datastore", "show", "1", "--json"]).stdout).expect("ds");
    assert_eq!(ds["template"]["RESTIC_PASSWORD"], "********");
    let vm: serde_json::Value =
        serde_json::from_str(&bj(&["vm", "show", "22", "--json"]).stdout).expect("vm");
    assert_eq!(vm["job"]["id"], 1, "{vm}");
    assert_eq!(vm["job"]["state"], "UPDATED", "{vm}");
    assert_eq!(vm["images"], serde_json::json!([1]), "{vm}");
    assert_eq!(
        vm["disks"].as_array().map(Vec::len),
        Some(DISKS.len()),
        "{vm}"
    );

    // Deletes that would orphan a job or images are refused; once free, they go.
    let out = bj(&["datastore", "delete", "1"]);
    assert!(
        out.stderr.contains("DATASTORE_ID of backup job 1"),
        "{out:?}"
    );
    let out = bj(&["vm", "unregister", "22"]);
    assert!(out.stderr.contains("VM 22 is in backup job 1"), "{out:?}");
    assert_eq!(bj(&["delete", "1"]).code, Some(0));
    let out = bj(&["datastore", "delete", "1"]);
    assert!(out.stderr.contains("holds 1 backup images"), "{out:?}");
    assert_eq!(bj(&["vm", "unregister", "22"]).code, Some(0));
    assert_eq!(bj(&["vm", "list", "--json"]).stdout, "[]\n");
    let out = bj(&["vm", "show", "22"]);
    assert!(
        out.stderr.contains("there is no registered VM 22"),
        "{out:?}"
    );
}

/// The runner killed while its backup action uploads: the action finishes as an orphan. A
/// scheduler pass while it still runs leaves the VM ONGOING; the next one finds its snapshot
/// in the repository and records it (no record lost), and the next run continues that chain
/// with an increment. Both points restore byte-exact.
#[test]
fn a_killed_runner_is_reconciled_with_the_repository() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    fs::write(work.join("vm22.xml"), cloud.vm_xml(-1, -1)).expect("vm");
    fs::write(
        work.join("ds.tmpl"),
        datastore_template(&cloud, "RESTIC_BWLIMIT = 2048\n"),
    )
    .expect("ds");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"orphan\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = INCREMENT\nKEEP_LAST = 3\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    bj(&["datastore", "create", &file("ds.tmpl")]);
    bj(&["vm", "register", &file("vm22.xml")]);
    assert_eq!(bj(&["create", &file("job.tmpl")]).stdout, "ID: 1\n");
    let vm_state = || -> serde_json::Value {
        let show: serde_json::Value =
            serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show json");
        show["vms"][0]["state"].clone()
    };
    let saved = work.join("disk0-at-0.qcow2");
    fs::copy(cloud.disk(0), &saved).expect("keep point 0");

    let mut runner = std::process::Command::new(BACKSTOP)
        .args(&common)
        .args(["backup", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runner");
    let pid_file = cloud.dir.path().join(format!("fe/run/backup-{VM}.pid"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    runner.kill().expect("kill");
    let _ = runner.wait();
    assert_eq!(vm_state(), "ONGOING");

    // The orphaned backup action still uploads: nothing is settled yet.
    let out = bj(&["scheduler"]);
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(pid_file.exists(), "the throttled backup is still running");
    assert_eq!(vm_state(), "ONGOING");
    // The killed run's record is closed by that pass, not left going on until the job runs
    // again.
    let run: (Option<i64>, Option<String>) = rusqlite::Connection::open(&state)
        .expect("state")
        .query_row(
            "SELECT ended_at, error FROM job_runs WHERE kind = 'backup' AND job_id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the killed run's record");
    assert!(run.0.is_some(), "{run:?}");
    assert_eq!(run.1.as_deref(), Some("its runner was killed"));

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphaned backup did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let repo = cloud.base_path.join("job_1");
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic_in(&repo, &["snapshots", "--json"])).expect("json");
    let snaps = snaps.as_array().expect("array").clone();
    assert_eq!(
        snaps.len(),
        1,
        "the orphan finished its snapshot: {snaps:?}"
    );
    let short = snaps[0]["short_id"].as_str().expect("id").to_string();
    let out = bj(&["scheduler"]);
    assert_eq!(
        out.stdout,
        format!(
            "job 1: VM 22: the interrupted run's backup {short} was found in the repository and recorded as increment 0 of image 1\n"
        ),
        "{out:?}"
    );
    assert_eq!(vm_state(), "UPDATED");

    // The chain goes on from the recorded backup.
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x3c 2M 2M",
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("increment 1 of image 1"),
        "{}",
        out.stdout
    );
    let img: serde_json::Value =
        serde_json::from_str(&bj(&["image", "show", "1", "--json"]).stdout).expect("image");
    assert_eq!(img["increments"][0]["source"], short.as_str(), "{img}");
    assert!(
        img["increments"][0]["size_mb"]
            .as_u64()
            .is_some_and(|s| s > 0),
        "{img}"
    );
    for (inc, disk0) in [("0", saved.clone()), ("1", cloud.disk(0))] {
        let dir = restore_image(&bj, &work, inc);
        crate::cloud::sh_ok(
            "qemu-img",
            &[
                "compare",
                "-q",
                dir.join("disk.0.qcow2").to_str().expect("utf-8"),
                disk0.to_str().expect("utf-8"),
            ],
        );
    }
    restic_in(&repo, &["check", "--read-data"]);
}

/// `backupjob cancel` during a run: the running backup (throttled, so it is mid-way) is
/// stopped through the datastore's backup_cancel and ends in ERROR, the VM still waiting is
/// dropped from the run, the runner exits 1, and the repository holds no snapshot and checks
/// clean.
#[test]
fn cancel_stops_a_running_job() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 20M", {
                let noise = cloud.dir.path().join("noise.raw");
                fs::write(&noise, crate::support::noise(20 << 20, 77)).expect("noise");
                noise.display().to_string()
            }),
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    let doc22 = cloud.vm_xml(-1, -1);
    let doc23 = doc22
        .replace("<ID>22</ID>", "<ID>23</ID>")
        .replace("one-22", "one-23");
    fs::write(work.join("vm22.xml"), &doc22).expect("vm");
    fs::write(work.join("vm23.xml"), &doc23).expect("vm");
    fs::write(
        work.join("ds.tmpl"),
        datastore_template(&cloud, "RESTIC_BWLIMIT = 1024\n"),
    )
    .expect("ds");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"slow\"\nBACKUP_VMS = \"22,23\"\nDATASTORE_ID = 1\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &["--progress-every", "1"]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    bj(&["datastore", "create", &file("ds.tmpl")]);
    bj(&["vm", "register", &file("vm22.xml")]);
    bj(&["vm", "register", &file("vm23.xml")]);
    assert_eq!(bj(&["create", &file("job.tmpl")]).stdout, "ID: 1\n");
    let mut runner = std::process::Command::new(BACKSTOP)
        .args(&common)
        .args(["backup", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runner");
    let out = runner.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "VM 22: backing up");
    // Progress log lines (stdout is not a terminal), from the host step through the backup
    // action: positions settled of the disks' 72 MiB, the rate and an ETA.
    let progress = lines.next().expect("a progress line").expect("read");
    let rest = progress
        .strip_prefix("VM 22: ")
        .and_then(|r| r.split_once(" MiB of 72 MiB ("))
        .filter(|(done, _)| done.parse::<u64>().is_ok())
        .and_then(|(_, r)| r.split_once(" %), "))
        .and_then(|(_, r)| r.split_once(" MB/s, ETA "));
    assert!(
        rest.is_some_and(|(rate, eta)| rate.parse::<f64>().is_ok()
            && (eta == "-" || eta.split(':').count() == 3)),
        "{progress:?}"
    );
    // Into the throttled upload.
    let pid_file = cloud.dir.path().join(format!("fe/run/backup-{VM}.pid"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = bj(&["cancel", "1"]);
    if !out.stdout.starts_with("backup job 1: 1 VMs dropped") {
        let _ = runner.kill();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        panic!("{out:?} {progress:?} {rest:?}");
    }
    assert_eq!(
        out.stdout, "backup job 1: 1 VMs dropped from the run, 1 running backups stopped\n",
        "{out:?}"
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = runner.wait().expect("runner");
    assert_eq!(status.code(), Some(1), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("VM 22: ERROR: ")),
        "{rest:?}"
    );
    assert!(!rest.iter().any(|l| l.starts_with("VM 23")), "{rest:?}");
    let show: serde_json::Value =
        serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("show json");
    let vms = show["vms"].as_array().expect("vms");
    assert_eq!(vms[0]["state"], "ERROR", "{show}");
    assert_eq!(vms[0]["reason"], "the backup was cancelled", "{show}");
    assert_eq!(vms[0]["failures"], 0, "a cancel is not a failure: {show}");
    assert_eq!(vms[1]["state"], serde_json::Value::Null, "{show}");
    let repo = cloud.base_path.join("job_1");
    restic_in(&repo, &["check"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic_in(&repo, &["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{snaps}");
}

/// Two jobs on two hypervisors ("hv1" on 127.0.0.2, "hv2" on 127.0.0.4), both due, run in
/// one scheduler pass: the job of higher priority goes first and, being SEQUENTIAL, one VM at
/// a time; the lower one (PARALLEL) starts only once the higher one has no OUTDATED VM, and
/// MAX_BACKUPS_HOST=1 holds across both jobs. The recorded start and end times show it.
#[test]
fn priorities_and_limits_across_two_hosts() {
    let cloud = cloud_with_tm();
    let hv2 = crate::cloud::start_sshd(cloud.dir.path(), "127.0.0.4", "hv2");
    let ssh_config = cloud.dir.path().join("ssh_config");
    let mut text = fs::read_to_string(&ssh_config).expect("ssh_config");
    text.push_str(&hv2.host_block());
    fs::write(&ssh_config, text).expect("ssh_config");
    cloud.create_disks();
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    // VMs 22..26: 22, 24, 26 on hv1; 23, 25 on hv2; each with a copy of VM 22's disks.
    let doc22 = cloud.vm_xml(-1, -1);
    for vm in 22..=26u64 {
        let dir = cloud.vm_dir.with_file_name(vm.to_string());
        if vm != 22 {
            fs::create_dir_all(&dir).expect("vm dir");
            for (d, _) in DISKS {
                fs::copy(cloud.disk(d), dir.join(format!("disk.{d}"))).expect("copy");
            }
        }
        let host = if vm % 2 == 0 { "hv1" } else { "hv2" };
        let doc = doc22
            .replace("<ID>22</ID>", &format!("<ID>{vm}</ID>"))
            .replace("one-22", &format!("one-{vm}"))
            .replace(
                "<HOSTNAME>hv1</HOSTNAME>",
                &format!("<HOSTNAME>{host}</HOSTNAME>"),
            );
        fs::write(work.join(format!("vm{vm}.xml")), doc).expect("vm doc");
    }
    fs::write(work.join("ds.tmpl"), datastore_template(&cloud, "")).expect("ds");
    fs::write(
        work.join("low.tmpl"),
        "NAME = \"low\"\nBACKUP_VMS = \"24,25,26\"\nDATASTORE_ID = 1\nPRIORITY = 20\nEXECUTION = PARALLEL\n",
    )
    .expect("job");
    fs::write(
        work.join("high.tmpl"),
        "NAME = \"high\"\nBACKUP_VMS = \"22,23\"\nDATASTORE_ID = 1\nPRIORITY = 80\nEXECUTION = SEQUENTIAL\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &["--max-backups-host", "1"]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    bj(&["datastore", "create", &file("ds.tmpl")]);
    for vm in 22..=26 {
        bj(&["vm", "register", &file(&format!("vm{vm}.xml"))]);
    }
    // The low job is created first: priority, not creation order, decides.
    assert_eq!(bj(&["create", &file("low.tmpl")]).stdout, "ID: 1\n");
    assert_eq!(bj(&["create", &file("high.tmpl")]).stdout, "ID: 2\n");
    let past = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        - 10)
        .to_string();
    for job in ["1", "2"] {
        let out = bj(&["sched-add", job, "--time", &past]);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    let out = bj(&["scheduler"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.ends_with("scheduler: ran backup jobs 2, 1\n"),
        "{}",
        out.stdout
    );
    let spans = |job: &str| -> std::collections::HashMap<u64, (i64, i64)> {
        let show: serde_json::Value =
            serde_json::from_str(&bj(&["show", job, "--json"]).stdout).expect("show json");
        show["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .map(|v| {
                assert_eq!(v["state"], "UPDATED", "{show}");
                (
                    v["id"].as_u64().expect("id"),
                    (
                        crate::support::json_ms(&v["started_at"]),
                        crate::support::json_ms(&v["ended_at"]),
                    ),
                )
            })
            .collect()
    };
    let (high, low) = (spans("2"), spans("1"));
    let apart = |a: (i64, i64), b: (i64, i64)| a.1 <= b.0 || b.1 <= a.0;
    // Strict priority: no VM of the low job started while the high job still had OUTDATED
    // VMs, i.e. before its last VM started. (The two jobs run in one scheduler pass, under
    // one set of limits: the low job may start while the high job's last VM runs.)
    let high_last_start = high.values().map(|s| s.0).max().expect("high");
    let low_start = low.values().map(|s| s.0).min().expect("low");
    assert!(high_last_start <= low_start, "high {high:?} low {low:?}");
    // SEQUENTIAL: 22 then 23, in BACKUP_VMS order.
    assert!(high[&22].1 <= high[&23].0, "{high:?}");
    // MAX_BACKUPS_HOST=1 across both jobs: on hv1, 22, 24 and 26 never overlap; on hv2, 23
    // and 25 never overlap.
    for (a, b) in [
        (high[&22], low[&24]),
        (high[&22], low[&26]),
        (low[&24], low[&26]),
    ] {
        assert!(apart(a, b), "hv1: high {high:?} low {low:?}");
    }
    assert!(apart(high[&23], low[&25]), "hv2: high {high:?} low {low:?}");
}

/// The job runner on an S3 datastore: `datastore create` with the stock 7.4 S3 attributes, a
/// job in INCREMENT mode with KEEP_LAST=2 run three times from the command line, each kept
/// point restored byte-exact; the state file holds neither the repository password nor the
/// S3 secret in clear, and `datastore show` masks them.
#[test]
fn a_job_backs_up_to_an_s3_datastore() {
    use crate::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};
    let cloud = cloud_with_tm();
    let server = S3Server::start(cloud.dir.path());
    cloud.create_disks();
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    fs::write(work.join("vm22.xml"), cloud.vm_xml(-1, -1)).expect("vm doc");
    fs::write(
        work.join("ds.tmpl"),
        format!(
            "NAME = \"s3-backups\"\nDS_MAD = \"backstop\"\nRESTIC_PASSWORD = \"{}\"\n\
             RESTIC_BACKEND = \"S3\"\nRESTIC_S3_ENDPOINT = \"{}\"\nRESTIC_S3_BUCKET = \"jobs-bucket\"\n\
             RESTIC_S3_ACCESS_KEY_ID = \"{ACCESS_KEY}\"\nRESTIC_S3_SECRET_ACCESS_KEY = \"{SECRET_KEY}\"\n",
            crate::cloud::PASSWORD,
            server.endpoint
        ),
    )
    .expect("ds");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"nightly\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = INCREMENT\nKEEP_LAST = 2\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    assert_eq!(
        bj(&["datastore", "create", &file("ds.tmpl")]).stdout,
        "ID: 1\n"
    );
    assert_eq!(
        bj(&["vm", "register", &file("vm22.xml")]).stdout,
        "ID: 22\n"
    );
    assert_eq!(bj(&["create", &file("job.tmpl")]).stdout, "ID: 1\n");
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            cloud.change_disks(round, 10);
        }
        let out = bj(&["backup", "1"]);
        assert_eq!(out.code, Some(0), "round {round}: {out:?}");
        expected.push(DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect());
    }
    // restic reads the job's repository on S3 clean; KEEP_LAST=2 left increments 1 and 2.
    let url = server.repo("jobs-bucket", "job_1");
    let check = server.restic(&url, crate::cloud::PASSWORD, &["check", "--read-data"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for inc in ["1", "2"] {
        let dir = restore_image(&bj, &work, inc);
        for (k, (d, _)) in DISKS.iter().enumerate() {
            let qcow2 = dir.join(format!("disk.{d}.qcow2"));
            let raw = work.join(format!("expected-{inc}-{d}.raw"));
            fs::write(&raw, &expected[inc.parse::<usize>().expect("inc")][k]).expect("raw");
            crate::cloud::sh_ok(
                "qemu-img",
                &[
                    "compare",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    qcow2.to_str().expect("utf-8"),
                    raw.to_str().expect("utf-8"),
                ],
            );
        }
    }
    // Secrets: sealed in the state, masked by show.
    for f in [state.clone(), work.join("state.db-wal")] {
        let bytes = fs::read(&f).unwrap_or_default();
        for secret in [SECRET_KEY, crate::cloud::PASSWORD] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is in {} in clear",
                f.display()
            );
        }
    }
    let show = bj(&["datastore", "show", "1"]).stdout;
    assert!(
        !show.contains(SECRET_KEY) && show.contains("RESTIC_S3_BUCKET"),
        "{show}"
    );
}

/// Checked at create, not at 3 a.m. (issue 27): a datastore's and a job's templates are
/// refused when an attribute name is a typo of a known one (the line names it), an unknown
/// `RESTIC_` name is used, a setting is out of its range, or a job names a datastore or VM
/// that does not exist; nothing refused is stored.
#[test]
fn templates_are_checked_when_they_are_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let st = state.display().to_string();
    let bj = |args: &[&str]| {
        let mut all = vec!["backupjob", "--state", st.as_str()];
        all.extend_from_slice(args);
        crate::support::run(BACKSTOP, &all, b"")
    };
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        fs::write(&p, text).expect("template");
        p.display().to_string()
    };
    let base = dir.path().join("repos").display().to_string();
    let ds = |extra: &str| {
        format!(
            "NAME = \"local\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{base}\"\nRESTIC_PASSWORD = \"pw\"\n{extra}"
        )
    };
    for (extra, says) in [
        (
            "RESTIC_CONECTIONS = 4\n",
            "RESTIC_CONECTIONS is not an attribute of a datastore; did you mean RESTIC_CONNECTIONS?",
        ),
        (
            "RESTIC_TURBO = yes\n",
            "RESTIC_TURBO is not an attribute of a datastore that backstop knows",
        ),
        ("RESTIC_CONNECTIONS = 99\n", "RESTIC_CONNECTIONS"),
        ("BACKSTOP_LOCK_WAIT = -1\n", "BACKSTOP_LOCK_WAIT"),
    ] {
        let out = bj(&["datastore", "create", &file("ds.tmpl", &ds(extra))]);
        assert_eq!(out.code, Some(1), "{extra}: {out:?}");
        assert!(out.stderr.contains(says), "{extra}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    let out = bj(&["datastore", "list", "--json"]);
    assert_eq!(out.stdout.trim(), "[]", "nothing refused was stored");
    // The operator's own attribute is kept.
    let out = bj(&[
        "datastore",
        "create",
        &file("ds.tmpl", &ds("OWNER_TEAM = \"ops\"\n")),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    fs::write(
        dir.path().join("vm22.xml"),
        "<VM><ID>22</ID><NAME>a</NAME><TEMPLATE/></VM>",
    )
    .expect("vm");
    let out = bj(&[
        "vm",
        "register",
        &dir.path().join("vm22.xml").display().to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");

    for (text, says) in [
        (
            "NAME = \"j\"\nDATASTORE_ID = 1\nBACKUP_VMS = 22\nKEEP_MONTLY = 3\n",
            "KEEP_MONTLY is not an attribute of a backup job; did you mean KEEP_MONTHLY?",
        ),
        (
            "NAME = \"j\"\nDATASTORE_ID = 7\nBACKUP_VMS = 22\n",
            "DATASTORE_ID 7: there is no datastore 7",
        ),
        (
            "NAME = \"j\"\nDATASTORE_ID = 1\nBACKUP_VMS = \"22,23\"\n",
            "BACKUP_VMS: VM 23 is not registered",
        ),
        (
            "NAME = \"j\"\nDATASTORE_ID = 1\nLABELS = \"prod\"\n",
            "LABELS needs OpenNebula mode",
        ),
    ] {
        let out = bj(&["create", &file("job.tmpl", text)]);
        assert_eq!(out.code, Some(1), "{text}: {out:?}");
        assert!(out.stderr.contains(says), "{text}: {}", out.stderr);
    }
    let out = bj(&["list", "--json"]);
    assert_eq!(out.stdout.trim(), "[]", "nothing refused was stored");
    let job = file(
        "job.tmpl",
        "NAME = \"j\"\nDATASTORE_ID = 1\nBACKUP_VMS = 22\n",
    );
    assert_eq!(bj(&["create", &job]).code, Some(0));
    // An update is checked the same way, and a refused one changes nothing.
    let bad = file(
        "bad.tmpl",
        "DATASTORE_ID = 1\nBACKUP_VMS = 22\nMDOE = \"FULL\"\n",
    );
    let out = bj(&["update", "1", &bad]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("did you mean MODE?"), "{}", out.stderr);
}

/// One time syntax for every schedule: `sched-add --time` takes the calendar forms sync and
/// verify jobs' SCHEDULE takes (as OpenNebula's weekly or hourly scheduled actions), RFC 3339
/// and local date-times, and `--repeat hourly` alone runs every hour.
#[test]
fn scheduled_actions_take_calendar_forms_and_iso_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = dir.path().join("state.db").display().to_string();
    let bj = |args: &[&str]| {
        let mut all = vec!["backupjob", "--state", st.as_str()];
        all.extend_from_slice(args);
        crate::support::run(BACKSTOP, &all, b"")
    };
    let ds = dir.path().join("ds.tmpl");
    fs::write(
        &ds,
        format!(
            "NAME = \"local\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{}\"\nRESTIC_PASSWORD = \"pw\"\n",
            dir.path().join("repos").display()
        ),
    )
    .expect("ds");
    assert_eq!(
        bj(&["datastore", "create", ds.to_str().expect("utf-8")]).code,
        Some(0)
    );
    let vm = dir.path().join("vm22.xml");
    fs::write(&vm, "<VM><ID>22</ID><NAME>a</NAME><TEMPLATE/></VM>").expect("vm");
    assert_eq!(
        bj(&["vm", "register", vm.to_str().expect("utf-8")]).code,
        Some(0)
    );
    let out = bj(&["create", "--name", "j", "--datastore", "1", "--vms", "22"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let actions = || -> Vec<serde_json::Value> {
        let show: serde_json::Value =
            serde_json::from_str(&bj(&["show", "1", "--json"]).stdout).expect("json");
        show["sched_actions"]
            .as_array()
            .expect("sched_actions")
            .clone()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    for (time, repeat, days) in [
        ("mon..fri 02:30", "Weekly", vec![1, 2, 3, 4, 5]),
        ("daily", "Weekly", vec![0, 1, 2, 3, 4, 5, 6]),
        ("*/6:15", "Hourly", vec![6]),
    ] {
        let out = bj(&["sched-add", "1", "--time", time]);
        assert_eq!(out.code, Some(0), "{time}: {out:?}");
        let a = actions().last().cloned().expect("added");
        assert_eq!(a["repeat"], repeat, "{time}: {a}");
        assert_eq!(a["days"], serde_json::json!(days), "{time}: {a}");
        let at = crate::support::json_secs(&a["time"]);
        assert!(
            at > now && at <= now + 8 * 86400,
            "{time}: the next time, {at}"
        );
    }
    // An ISO time, repeated hourly without --days: every hour.
    let out = bj(&[
        "sched-add",
        "1",
        "--time",
        "2030-01-02T03:04:00Z",
        "--repeat",
        "hourly",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let a = actions().last().cloned().expect("added");
    assert_eq!(
        (a["time"].as_str(), a["repeat"].as_str()),
        (Some("2030-01-02T03:04:00Z"), Some("Hourly"))
    );
    assert_eq!(a["days"], serde_json::json!([1]));
    let count = actions().len();
    for (args, says) in [
        (
            vec!["--time", "2,13:00"],
            "a scheduled action runs at one time of day on chosen weekdays, or every N hours",
        ),
        (
            vec!["--time", "mon 02:30", "--repeat", "weekly"],
            "is a calendar form, which says when it repeats",
        ),
        (
            vec!["--time", "tomorrow"],
            "is not an epoch, a date and time",
        ),
    ] {
        let mut all = vec!["sched-add", "1"];
        all.extend(&args);
        let out = bj(&all);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    assert_eq!(actions().len(), count, "a refused schedule was stored");
    // sched-update takes the same forms.
    let first = actions()[0]["id"].as_i64().expect("id").to_string();
    let out = bj(&["sched-update", "1", &first, "--time", "hourly"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let a = actions()[0].clone();
    assert_eq!(
        (a["repeat"].as_str(), a["days"].clone()),
        (Some("Hourly"), serde_json::json!([1]))
    );
    // A new time alone keeps how the action repeats (and its DAYS).
    let out = bj(&[
        "sched-update",
        "1",
        &first,
        "--time",
        "2031-01-01T00:00:00Z",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let a = actions()[0].clone();
    assert_eq!(
        (a["time"].as_str(), a["repeat"].as_str(), a["days"].clone()),
        (
            Some("2031-01-01T00:00:00Z"),
            Some("Hourly"),
            serde_json::json!([1])
        )
    );
}
