//! The state database's tests.

use super::*;

fn state() -> (tempfile::TempDir, State) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = State::open(&dir.path().join("sub/state.db")).expect("open");
    (dir, s)
}

#[test]
fn opens_migrates_and_refuses_a_newer_schema() {
    let (dir, s) = state();
    assert_eq!(
        s.schema_version().expect("version"),
        MIGRATIONS.len() as i64
    );
    drop(s);
    // Opening again applies nothing twice.
    let s = State::open(&dir.path().join("sub/state.db")).expect("reopen");
    assert_eq!(
        s.schema_version().expect("version"),
        MIGRATIONS.len() as i64
    );
    s.conn
        .pragma_update(None, "user_version", 99)
        .expect("bump");
    drop(s);
    let e = State::open(&dir.path().join("sub/state.db")).expect_err("newer");
    assert!(e.to_string().contains("schema version 99 is newer"), "{e}");
}

/// The datastores' secrets are sealed in the database (new ones, and ones an older state
/// stored in clear, on open), and come back whole.
#[test]
fn datastore_secrets_are_never_stored_in_clear() {
    let (dir, mut s) = state();
    let file = dir.path().join("sub/state.db");
    let clear = |path: &std::path::Path, what: &str| {
        for f in [
            path.to_path_buf(),
            PathBuf::from(format!("{}-wal", path.display())),
        ] {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(what.len()).any(|w| w == what.as_bytes()),
                "{what} is in {} in clear",
                f.display()
            );
        }
    };
    let text = "NAME = s3\nRESTIC_PASSWORD = \"repo-pass-4711\"\nRESTIC_BACKEND = S3\nRESTIC_S3_SECRET_ACCESS_KEY = \"s3-secret-0815\"\n";
    let id = s.add_datastore("s3", text).expect("add");
    clear(&file, "repo-pass-4711");
    clear(&file, "s3-secret-0815");
    let crate::state::Named { template: back, .. } = s
        .datastores()
        .expect("list")
        .into_iter()
        .find(|d| d.id == id)
        .expect("datastore");
    let t = backstop_protocol::template::Template::parse(&back).expect("parse");
    assert_eq!(t.get("RESTIC_S3_SECRET_ACCESS_KEY"), Some("s3-secret-0815"));
    assert_eq!(t.get("RESTIC_PASSWORD"), Some("repo-pass-4711"));

    // A state from before sealing: a row in clear is sealed when the state is opened.
    s.conn
        .execute(
            "INSERT INTO datastores (name, template) VALUES ('old', 'NAME = old\nRESTIC_PASSWORD = \"old-pass-1234\"')",
            [],
        )
        .expect("old row");
    drop(s);
    let s = State::open(&file).expect("reopen");
    drop(s);
    let s = State::open(&file).expect("reopen");
    clear(&file, "old-pass-1234");
    assert!(
        s.datastores()
            .expect("list")
            .iter()
            .any(|d| d.template.contains("old-pass-1234"))
    );
    // Without its key, the state says so instead of handing out garbage.
    drop(s);
    std::fs::write(secrets::key_path(&file), [7u8; 32]).expect("other key");
    let s = State::open(&file).expect("open");
    let e = s.datastores().expect_err("wrong key");
    assert!(
        e.to_string()
            .contains("does not open with this state's key"),
        "{e}"
    );
}

#[test]
fn a_vm_belongs_to_one_job_and_names_are_unique() {
    let (_dir, mut s) = state();
    let j = s
        .create_job("nightly", 50, "MODE=FULL", &[3, 1, 2])
        .expect("job");
    let order: Vec<u64> = s.job_vms(j).expect("vms").iter().map(|v| v.vm_id).collect();
    assert_eq!(order, [3, 1, 2]);
    let e = s
        .create_job("other", 50, "", &[5, 1])
        .expect_err("VM 1 is taken");
    assert!(
        e.to_string()
            .ends_with("VM 1 is already in backup job 1 (nightly)"),
        "{e}"
    );
    assert!(
        s.job_vms(2).expect("none").is_empty(),
        "nothing half-written"
    );
    let e = s.create_job("nightly", 50, "", &[9]).expect_err("name");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(s.create_job("x", 100, "", &[]).is_err());
}

#[test]
fn moves_are_compare_and_set_and_count_failures() {
    let (_dir, mut s) = state();
    let j = s.create_job("j", 50, "", &[1]).expect("job");
    assert!(
        s.move_vm(j, 1, None, VmState::Outdated, None, 10)
            .expect("o")
    );
    assert!(
        s.move_vm(j, 1, Some(VmState::Outdated), VmState::Ongoing, None, 11)
            .expect("go")
    );
    // A second runner cannot take it too.
    assert!(
        !s.move_vm(j, 1, Some(VmState::Outdated), VmState::Ongoing, None, 11)
            .expect("no")
    );
    assert!(
        s.move_vm(
            j,
            1,
            Some(VmState::Ongoing),
            VmState::Error,
            Some("host down"),
            20
        )
        .expect("err")
    );
    let v = &s.job_vms(j).expect("vms")[0];
    assert_eq!(
        (
            v.state,
            v.reason.as_deref(),
            v.failures,
            v.started_at,
            v.ended_at
        ),
        (
            Some(VmState::Error),
            Some("host down"),
            1,
            Some(11),
            Some(20)
        )
    );
    assert_eq!(v.runner_pid, Some(std::process::id()));
    s.move_vm(j, 1, Some(VmState::Error), VmState::Outdated, None, 30)
        .expect("retry");
    s.move_vm(j, 1, Some(VmState::Outdated), VmState::Ongoing, None, 31)
        .expect("go");
    s.move_vm(j, 1, Some(VmState::Ongoing), VmState::Updated, None, 40)
        .expect("ok");
    assert_eq!(s.job_vms(j).expect("vms")[0].failures, 0);
}

#[test]
fn orphans_are_the_ongoing_vms_whose_runner_is_gone() {
    let (_dir, mut s) = state();
    let j = s.create_job("j", 50, "", &[1, 2, 3, 4]).expect("job");
    for vm in 1..=4 {
        s.move_vm(j, vm, None, VmState::Outdated, None, 1)
            .expect("o");
        s.move_vm(j, vm, Some(VmState::Outdated), VmState::Ongoing, None, 2)
            .expect("go");
    }
    // VM 4's runner is still alive; 1 finished, 2 failed, 3 is unknown. The runner is
    // named by PID, start time and boot: the same PID with another start time is
    // another process.
    let alive = ProcessId {
        pid: 4242,
        start: 77,
        boot: 5,
    };
    s.conn
        .execute(
            "UPDATE job_vms SET runner = ?1 WHERE vm_id = 4",
            [alive.to_string()],
        )
        .expect("runner");
    s.conn
        .execute(
            "UPDATE job_vms SET runner = ?1 WHERE vm_id = 3",
            [ProcessId { start: 78, ..alive }.to_string()],
        )
        .expect("runner");
    let orphans = s.orphans(|r| *r == alive).expect("orphans");
    let orphans: Vec<(u64, u64, i64)> = orphans
        .iter()
        .map(|o| (o.job, o.vm, o.ongoing_since_ms))
        .collect();
    assert_eq!(orphans, [(j, 1, 2), (j, 2, 2), (j, 3, 2)]);
    // What the engine does with each (engine::reconcile): 1 finished, 2 failed, 3 is
    // unknown and runs again; a move from ONGOING is compare-and-set.
    for (vm, to) in [
        (1, VmState::Updated),
        (2, VmState::Error),
        (3, VmState::Outdated),
    ] {
        assert!(
            s.move_vm(j, vm, Some(VmState::Ongoing), to, None, 9)
                .expect("settle")
        );
    }
    assert!(s.orphans(|r| *r == alive).expect("orphans").is_empty());
    let states: Vec<Option<VmState>> = s.job_vms(j).expect("vms").iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            Some(VmState::Updated),
            Some(VmState::Error),
            Some(VmState::Outdated),
            Some(VmState::Ongoing)
        ]
    );
}

/// Two connections (the command line and the daemon) write at once without "database is
/// locked" failures.
#[test]
fn two_processes_can_write_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut a = State::open(&path).expect("a");
    let j = a
        .create_job("j", 50, "", &(0..200).collect::<Vec<_>>())
        .expect("job");
    let p2 = path.clone();
    let writer = std::thread::spawn(move || {
        let mut b = State::open(&p2).expect("b");
        for vm in 0..100u64 {
            b.move_vm(j, vm, None, VmState::Outdated, None, 1)
                .expect("b move");
        }
    });
    for vm in 100..200u64 {
        a.move_vm(j, vm, None, VmState::Outdated, None, 1)
            .expect("a move");
    }
    writer.join().expect("join");
    assert!(
        a.job_vms(j)
            .expect("vms")
            .iter()
            .all(|v| v.state == Some(VmState::Outdated))
    );
}

#[test]
fn a_sync_or_verify_job_never_overlaps_itself() {
    let (_dir, mut s) = state();
    let job = s.add_sync_job("j", "NAME=j").expect("add");
    let me = ProcessId::current();
    let first = s
        .claim_sync_run(job, 100, &me)
        .expect("claim")
        .expect("free");
    assert_eq!(
        s.claim_sync_run(job, 101, &me).expect("claim"),
        None,
        "overlap"
    );
    // A run whose process is gone (killed) is closed, saying so, and a new one starts.
    let dead = ProcessId::parse("4000000.1.0").expect("a pid no process has");
    s.conn
        .execute(
            "UPDATE job_runs SET runner = ?1 WHERE id = ?2",
            params![dead.to_string(), first as i64],
        )
        .expect("update");
    let second = s
        .claim_sync_run(job, 102, &me)
        .expect("claim")
        .expect("free again");
    let runs = s.sync_runs(job).expect("runs");
    assert_eq!(runs[0].id, second);
    assert_eq!(runs[1].error.as_deref(), Some("its runner was killed"));

    let v = s.add_verify_job("v", "NAME=v").expect("add");
    let claim = s.claim_verify_run(v, 5, &me).expect("claim").expect("free");
    assert_eq!(claim.before, 0);
    assert_eq!(
        s.claim_verify_run(v, 6, &me).expect("claim"),
        None,
        "overlap"
    );
    s.end_run(&crate::state::sync::JobRun {
        id: claim.run,
        kind: crate::state::sync::RunKind::Verify,
        job_id: v,
        started_at: 5,
        ended_at: Some(6),
        snapshots: 3,
        bytes_read: 4096,
        bytes_written: 0,
        error: None,
    })
    .expect("end");
    let second = s.claim_verify_run(v, 7, &me).expect("claim").expect("free");
    assert_eq!(second.before, 1);
    // Verify runs are recorded as sync runs are, in the one table of job runs.
    let runs = s
        .runs(crate::state::sync::RunKind::Verify, v)
        .expect("runs");
    assert_eq!(
        (
            runs.len(),
            runs[1].snapshots,
            runs[1].ended_at,
            runs[0].ended_at
        ),
        (2, 3, Some(6), None)
    );
    // A sync job's runs are not a verify job's, though both jobs have id 1.
    assert_eq!((job, v), (1, 1));
    assert_eq!(s.sync_runs(job).expect("runs").len(), 2);
    assert_eq!(
        s.verify_last_runs().expect("last"),
        [crate::state::LastRun {
            job: v,
            started_at: Some(7)
        }]
    );
}

/// Each sync job has its own id for its copies: jobs from before schema 9 get one when the
/// state is migrated, new jobs at creation, all different and kept across runs and updates;
/// one lost from the state (edited by hand) is replaced at the next run.
#[test]
fn every_sync_job_has_its_own_copier_id() {
    use backstop_datastore::repo::copy::CopierId;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.db");
    {
        // A state at schema 8 with two sync jobs.
        let old = Connection::open(&file).expect("open");
        for m in &MIGRATIONS[..8] {
            old.execute_batch(m).expect("migration");
        }
        old.pragma_update(None, "user_version", 8).expect("version");
        old.execute_batch(
            "INSERT INTO sync_jobs (name, template) VALUES ('a', 'NAME=a');
             INSERT INTO sync_jobs (name, template) VALUES ('b', 'NAME=b');",
        )
        .expect("jobs");
    }
    let mut s = State::open(&file).expect("migrate");
    let stored = |s: &State, id: u64| {
        s.stored_copier(id)
            .expect("read")
            .flatten()
            .and_then(|c| CopierId::parse(&c))
            .expect("a copier id")
    };
    let (a, b) = (stored(&s, 1), stored(&s, 2));
    let c = s.add_sync_job("c", "NAME=c").expect("add");
    let c_id = stored(&s, c);
    assert_eq!(c_id.as_str().len(), 32);
    assert!(a != b && b != c_id && a != c_id, "{a} {b} {c_id}");
    assert_eq!(s.sync_job_copier(1).expect("copier"), a, "kept");
    s.update_sync_job(1, "a2", "NAME=a2").expect("update");
    assert_eq!(s.sync_job_copier(1).expect("copier"), a, "kept by update");
    s.conn
        .execute("UPDATE sync_jobs SET copier = NULL WHERE id = 2", [])
        .expect("lose it");
    let new_b = s.sync_job_copier(2).expect("copier");
    assert!(new_b != b && new_b != a, "{new_b}");
    assert_eq!(stored(&s, 2), new_b);
    assert_eq!(s.stored_copier(99).expect("read"), None);
    assert!(s.sync_job_copier(99).is_err());
}

/// Schema 10 puts every job's runs in one table: a sync job's recorded runs move over as they
/// are, and a verify job's counted runs become records, so the count (which picks the share a
/// run reads) and the last start stay what they were.
#[test]
fn schema_10_keeps_the_sync_runs_and_the_verify_counts() {
    use crate::state::sync::RunKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.db");
    {
        let old = Connection::open(&file).expect("open");
        for m in &MIGRATIONS[..9] {
            old.execute_batch(m).expect("migration");
        }
        old.pragma_update(None, "user_version", 9).expect("version");
        old.execute_batch(
            "INSERT INTO sync_jobs (name, template, copier) VALUES ('s', 'NAME=s', 'aa');
             INSERT INTO sync_runs (job_id, started_at, ended_at, snapshots, bytes_read,
                                    bytes_written, error)
                VALUES (1, 100, 110, 3, 4096, 2048, NULL);
             INSERT INTO sync_runs (job_id, started_at, ended_at, error)
                VALUES (1, 200, 205, 'repository 22: gone');
             INSERT INTO verify_jobs (name, template, runs, last_run) VALUES ('v', 'NAME=v', 3, 900);
             INSERT INTO verify_jobs (name, template, runs, last_run) VALUES ('w', 'NAME=w', 0, NULL);",
        )
        .expect("rows");
        // A verify run going on (under this process) while the state is migrated.
        old.execute(
            "INSERT INTO verify_jobs (name, template, runs, last_run, runner) \
             VALUES ('x', 'NAME=x', 2, 950, ?1)",
            [ProcessId::current().to_string()],
        )
        .expect("running");
    }
    let mut s = State::open(&file).expect("migrate");
    let sync = s.sync_runs(1).expect("runs");
    assert_eq!(
        sync.iter()
            .map(|r| (
                r.started_at,
                r.ended_at,
                r.snapshots,
                r.bytes_read,
                r.bytes_written,
                r.error.clone()
            ))
            .collect::<Vec<_>>(),
        [
            (
                200,
                Some(205),
                0,
                0,
                0,
                Some("repository 22: gone".to_string())
            ),
            (100, Some(110), 3, 4096, 2048, None),
        ]
    );
    let jobs = s.verify_jobs().expect("jobs");
    assert_eq!(
        jobs.iter()
            .map(|j| (j.name.as_str(), j.runs))
            .collect::<Vec<_>>(),
        [("v", 3), ("w", 0), ("x", 2)]
    );
    assert_eq!(
        s.verify_last_runs().expect("last"),
        [
            crate::state::LastRun {
                job: 1,
                started_at: Some(900)
            },
            crate::state::LastRun {
                job: 2,
                started_at: None
            },
            crate::state::LastRun {
                job: 3,
                started_at: Some(950)
            }
        ]
    );
    // The run going on stays open under its runner: x does not run alongside it.
    let me = ProcessId::current();
    assert_eq!(s.claim_verify_run(3, 990, &me).expect("claim"), None);
    // The next run of v is its fourth: it reads the share after the third's.
    let claim = s
        .claim_verify_run(1, 1000, &me)
        .expect("claim")
        .expect("free");
    assert_eq!(claim.before, 3);
    assert_eq!(s.runs(RunKind::Verify, 2).expect("runs"), []);
    // Deleting a job deletes its records, and only its own.
    s.delete_verify_job(1).expect("delete");
    assert_eq!(s.runs(RunKind::Verify, 1).expect("runs"), []);
    assert_eq!(s.sync_runs(1).expect("runs").len(), 2);
}

/// A backup job's runs are recorded in the one table of job runs; deleting the job deletes
/// them with it (and no other job's), and a missing job is named.
#[test]
fn a_backup_jobs_run_records_go_with_the_job() {
    use crate::state::sync::RunKind;
    let (_dir, mut s) = state();
    let a = s.create_job("a", 50, "MODE=FULL", &[1]).expect("a");
    let b = s.create_job("b", 50, "MODE=FULL", &[2]).expect("b");
    let me = ProcessId::current();
    // Runs of one backup job may overlap: each VM is claimed on its own.
    let first = s.record_backup_run(a, 10, &me).expect("record");
    let second = s.record_backup_run(a, 11, &me).expect("record");
    assert_ne!(first, second);
    s.record_backup_run(b, 12, &me).expect("record");
    assert_eq!(s.runs(RunKind::Backup, a).expect("runs").len(), 2);
    s.delete_job(a).expect("delete");
    assert_eq!(s.runs(RunKind::Backup, a).expect("runs"), []);
    assert_eq!(s.runs(RunKind::Backup, b).expect("runs").len(), 1);
    let e = s.delete_job(a).expect_err("gone");
    assert!(e.to_string().contains("there is no backup job"), "{e}");
}

/// A backup job's last run is read from its run records; a job whose last run predates them
/// shows the job's own (legacy) columns; a run still going on is not its last run.
#[test]
fn a_backup_jobs_last_run_comes_from_its_run_records() {
    use crate::state::sync::{JobRun, RunKind};
    let (_dir, mut s) = state();
    let a = s.create_job("a", 50, "MODE=FULL", &[1]).expect("a");
    let status = s.job_status(a).expect("status");
    assert_eq!((status.last_started, status.last_duration), (None, None));
    // Schema 9 and older kept it in the job's row.
    s.conn
        .execute(
            "UPDATE jobs SET last_backup_time = 50, last_backup_duration = 7 WHERE id = ?1",
            params![a as i64],
        )
        .expect("legacy");
    let status = s.job_status(a).expect("status");
    assert_eq!(
        (status.last_started, status.last_duration),
        (Some(50), Some(7))
    );
    let me = ProcessId::current();
    let run = s.record_backup_run(a, 100, &me).expect("record");
    let status = s.job_status(a).expect("status");
    assert_eq!(
        status.last_started,
        Some(50),
        "a run going on is not the last one"
    );
    s.end_run(&JobRun {
        id: run,
        kind: RunKind::Backup,
        job_id: a,
        started_at: 100,
        ended_at: Some(130),
        snapshots: 1,
        bytes_read: 0,
        bytes_written: 0,
        error: None,
    })
    .expect("end");
    let status = s.job_status(a).expect("status");
    assert_eq!(
        (status.last_started, status.last_duration),
        (Some(100), Some(30))
    );
    // A run killed at 200 and noticed at 9000 is not the last run: its end is not known.
    let dead = ProcessId::parse("4000000.1.0").expect("a pid no process has");
    s.record_backup_run(a, 200, &dead).expect("record");
    assert_eq!(s.close_dead_runs(9000).expect("close"), 1);
    let status = s.job_status(a).expect("status");
    assert_eq!(
        (status.last_started, status.last_duration),
        (Some(100), Some(30))
    );
}

/// Run records left open by a killed runner are closed by the next pass, of any kind and any
/// job, and ones in a live process are left alone.
#[test]
fn run_records_of_killed_runners_are_closed() {
    use crate::state::sync::RunKind;
    let (_dir, mut s) = state();
    let a = s.create_job("a", 50, "MODE=FULL", &[1]).expect("a");
    let sync = s.add_sync_job("j", "NAME=j").expect("add");
    let me = ProcessId::current();
    let dead = ProcessId::parse("4000000.1.0").expect("a pid no process has");
    let b = s.create_job("b", 50, "MODE=FULL", &[2]).expect("b");
    let killed = s.record_backup_run(a, 10, &dead).expect("record");
    let live = s.record_backup_run(b, 11, &me).expect("record");
    s.claim_run(RunKind::Sync, sync, 12, &dead)
        .expect("claim")
        .expect("free");
    assert_eq!(s.close_dead_runs(20).expect("close"), 2);
    let runs = s.runs(RunKind::Backup, a).expect("runs");
    assert_eq!((runs[0].id, runs[0].ended_at), (killed, Some(20)));
    assert_eq!(runs[0].error.as_deref(), Some("its runner was killed"));
    let runs = s.runs(RunKind::Backup, b).expect("runs");
    assert_eq!((runs[0].id, runs[0].ended_at), (live, None));
    let syncs = s.runs(RunKind::Sync, sync).expect("runs");
    assert_eq!(syncs[0].error.as_deref(), Some("its runner was killed"));
    assert_eq!(s.close_dead_runs(21).expect("again"), 0);
}

#[test]
fn the_stored_size_by_day_follows_every_point_recorded_changed_and_removed() {
    let (_d, mut s) = state();
    const DAY: i64 = 86_400;
    let t0 = 1_800_000_000 / DAY * DAY;
    let a = s.add_image(7, Some(1), 1, t0).expect("image");
    s.add_increment(a, 0, "aaaaaaaa", 100, "FULL", t0 + 10)
        .expect("inc");
    s.add_increment(a, 1, "bbbbbbbb", 10, "INCREMENT", t0 + DAY + 10)
        .expect("inc");
    s.add_increment(a, 2, "cccccccc", 5, "INCREMENT", t0 + DAY + 20)
        .expect("inc");
    let b = s.add_image(8, Some(1), 2, t0).expect("image");
    s.add_increment(b, 0, "dddddddd", 50, "FULL", t0 + 30)
        .expect("inc");
    assert_eq!(
        s.stored_by_day(1, 0).expect("days"),
        vec![(t0, 100), (t0 + DAY, 15)]
    );
    assert_eq!(s.stored_by_day(2, 0).expect("days"), vec![(t0, 50)]);
    assert_eq!(
        s.stored_by_day(1, t0 + DAY).expect("days"),
        vec![(t0 + DAY, 15)]
    );
    // A flatten: increment 2 becomes the base (its size changes), 0 and 1 go.
    s.flatten_increments(a, &[(2, "cccccccc".into())], 115)
        .expect("flatten");
    assert_eq!(s.stored_by_day(1, 0).expect("days"), vec![(t0 + DAY, 115)]);
    // An image removed whole: its points go from the sums, the other datastore's stay.
    s.remove_image(a).expect("remove");
    assert_eq!(s.stored_by_day(1, 0).expect("days"), vec![]);
    assert_eq!(s.stored_by_day(2, 0).expect("days"), vec![(t0, 50)]);
}

#[test]
fn schema_14_sums_the_points_a_state_already_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.db");
    {
        let old = Connection::open(&file).expect("open");
        for m in &MIGRATIONS[..13] {
            old.execute_batch(m).expect("migration");
        }
        old.pragma_update(None, "user_version", 13)
            .expect("version");
        old.execute_batch(
            "INSERT INTO images (id, vm_id, job_id, datastore_id, created_at) VALUES (1, 7, 1, 3, 0);
             INSERT INTO increments (image_id, id, source, size_mb, kind, created_at)
                VALUES (1, 0, 'a', 40, 'FULL', 86400), (1, 1, 'b', 2, 'INCREMENT', 86500),
                       (1, 2, 'c', 3, 'INCREMENT', 172800);",
        )
        .expect("rows");
    }
    let s = State::open(&file).expect("migrate");
    assert_eq!(
        s.stored_by_day(3, 0).expect("days"),
        vec![(86_400, 42), (172_800, 3)]
    );
}
