//! Issue 23: healing holds in every hand-over. A verify job takes a damaged blob out of the
//! repository (its pack rewritten without it); the next backup must store that chunk again.
//! Direct mode reads the disk itself, so it completes at once. Staged changes (the stock
//! layout, which every stock transfer manager hands over) cannot be completed from a parent
//! that lacks the chunk: that attempt fails in one line naming what happens next, backstop's
//! prebackup reads the disk whole at the next attempt, and every point restores byte-exact
//! again. With a transfer manager that ignores the note (a stock one), a chain reset succeeds.

use crate::cloud::{DISKS, PASSWORD, VM, parse_backup_line};
use crate::support::{BACKSTOP, damage_blob, run_env};
use crate::tm::Tm;

/// Backs up increment `inc` (prebackup, backup, postbackup); the backup's outcome.
fn attempt(t: &Tm, inc: u64) -> (crate::support::Outcome, crate::support::Outcome) {
    let cloud = &t.cloud;
    let vm_xml = cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
    let out = cloud.backup(&vm_xml);
    let post = t.step("postbackup", &vm_xml, out.code != Some(0));
    assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
    (pre, out)
}

/// Damages chunk 10 of disk 0 in the latest snapshot (a chunk the test's changes leave alone:
/// the disk holds 0x21 from 9 MiB to 12 MiB) and heals it with `backstop repo verify --heal`.
fn damage_and_heal(t: &Tm, last_inc: u64) {
    let cloud = &t.cloud;
    let path = format!("{}/disk.0.{last_inc}", cloud.staging().display());
    heal_chunk_10(&cloud.repo(), &path);
    assert!(
        !cloud.restic(&["check", "--read-data"]).status.success(),
        "the healed repository should miss the blob until a backup stores it again"
    );
}

/// Damages chunk 10 of `path` in the latest snapshot of the local repository `repo` and heals
/// it with `backstop repo verify --heal`: one pack rewritten, one blob out.
fn heal_chunk_10(repo: &std::path::Path, path: &str) {
    damage_blob(repo, PASSWORD, "latest", path, 10);
    let out = run_env(
        BACKSTOP,
        &[
            "repo",
            "-r",
            repo.to_str().expect("utf-8"),
            "verify",
            "--heal",
        ],
        b"",
        &[("RESTIC_PASSWORD", PASSWORD)],
    );
    assert!(
        out.stdout
            .contains("healed: 1 packs rewritten, 1 damaged blobs out"),
        "{out:?}"
    );
}

/// Every point restores byte-exact with plain restic, and the repository checks clean.
fn all_points_restore(t: &Tm, points: &[(String, Vec<Vec<u8>>)]) {
    let cloud = &t.cloud;
    cloud.restic_ok(&["check", "--read-data"]);
    for (inc, (id, expected)) in points.iter().enumerate() {
        for (k, (d, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{d}.{inc}", cloud.staging().display());
            assert!(
                cloud.restic_ok(&["dump", id, &path]) == expected[k],
                "disk {d} at increment {inc} does not restore byte-exact"
            );
        }
    }
}

fn contents(t: &Tm) -> Vec<Vec<u8>> {
    contents_of(&t.cloud)
}

fn two_points(t: &Tm) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut points = Vec::new();
    for inc in 0..2u64 {
        if inc > 0 {
            t.cloud.change_disks(inc, 6);
        }
        let (_, out) = attempt(t, inc);
        assert_eq!(out.code, Some(0), "backup {inc}: {out:?}");
        points.push((parse_backup_line(&out).0, contents(t)));
    }
    points
}

#[test]
fn after_a_heal_a_staged_increment_reads_the_disk_whole_at_the_next_attempt() {
    let t = Tm::start("staging");
    let mut points = two_points(&t);
    damage_and_heal(&t, 1);
    t.cloud.change_disks(2, 6);
    // The staged deltas cannot be completed: one line that says what happens next.
    let (_, out) = attempt(&t, 2);
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "{}", out.stderr);
    assert!(
        line.contains(&format!(
            "VM {VM}: disk 0: the parent backup lacks data a verify job healed away, so increment 2 cannot be completed from the staged changes; backstop's prebackup reads the whole disk at the next attempt; with another transfer manager, reset the chain (onevm backup --reset)"
        )),
        "{line}"
    );
    let marker = t.cloud.vm_dir.join(".backstop-reread.0");
    assert!(
        marker.exists(),
        "no note for prebackup at {}",
        marker.display()
    );
    // The next attempt: disk 0 read whole (said), disk 1 as changes; it completes.
    let (pre, out) = attempt(&t, 2);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        pre.stderr.contains(&format!(
            "VM {VM}: the parent backup of disk 0 lacks data a verify job healed away; increment 2 reads the whole disk"
        )),
        "{}",
        pre.stderr
    );
    assert!(
        !marker.exists(),
        "postbackup left the note after a good backup"
    );
    points.push((parse_backup_line(&out).0, contents(&t)));
    // The chunk is stored again: the older points restore too.
    all_points_restore(&t, &points);
    // And the increment after that is an ordinary one.
    t.cloud.change_disks(3, 6);
    let (pre, out) = attempt(&t, 3);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        !pre.stderr.contains("reads the whole disk"),
        "{}",
        pre.stderr
    );
    points.push((parse_backup_line(&out).0, contents(&t)));
    all_points_restore(&t, &points);
}

#[test]
fn after_a_heal_a_direct_increment_stores_the_chunk_again_at_once() {
    let t = Tm::start("direct");
    let mut points = two_points(&t);
    damage_and_heal(&t, 1);
    t.cloud.change_disks(2, 6);
    let (_, out) = attempt(&t, 2);
    assert_eq!(out.code, Some(0), "{out:?}");
    points.push((parse_backup_line(&out).0, contents(&t)));
    all_points_restore(&t, &points);
}

/// A transfer manager that does not read backstop's note (the stock ones): the increment keeps
/// failing with the same line, and the fix it names, a chain reset, succeeds.
#[test]
fn after_a_heal_a_stock_hand_over_names_the_chain_reset_which_succeeds() {
    let t = Tm::start("staging");
    let mut points = two_points(&t);
    damage_and_heal(&t, 1);
    t.cloud.change_disks(2, 6);
    let marker = t.cloud.vm_dir.join(".backstop-reread.0");
    for _ in 0..2 {
        let (_, out) = attempt(&t, 2);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr
                .contains("with another transfer manager, reset the chain (onevm backup --reset)"),
            "{}",
            out.stderr
        );
        // What a stock prebackup does with the note: nothing.
        std::fs::remove_file(&marker).expect("the note");
    }
    // The reset: a new chain, increment 0.
    let (_, out) = attempt(&t, 0);
    assert_eq!(out.code, Some(0), "{out:?}");
    let now = contents(&t);
    let new_chain = parse_backup_line(&out).0;
    t.cloud.restic_ok(&["check", "--read-data"]);
    for (k, (d, _)) in DISKS.iter().enumerate() {
        let path = format!("{}/disk.{d}.0", t.cloud.staging().display());
        assert!(
            t.cloud.restic_ok(&["dump", &new_chain, &path]) == now[k],
            "disk {d} of the new chain"
        );
    }
    // The older points are whole again too (the reset stored the chunk).
    points.truncate(2);
    all_points_restore(&t, &points);
}

/// The job runner with backstop's TM in staging mode: the increment after a heal completes in
/// one run (the first attempt leaves the note, the runner tries once more at once, and that
/// attempt reads the disk whole); every point restores byte-exact again.
#[test]
fn after_a_heal_the_runner_completes_a_staged_increment_in_one_run() {
    use backstop_backupjob::runner::{self, BackupDatastore, ChainPointers, Env, JobConfig, Mode};
    use backstop_backupjob::state::State;
    let cloud = crate::jobs::cloud_with_tm();
    let conf = cloud.remotes.join("etc/datastore/backstop.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
    text.push_str("TM_DELIVERY=staging\n");
    std::fs::write(&conf, text).expect("backstop.conf");
    cloud.create_disks();
    let env = Env {
        remotes: cloud.remotes.clone(),
        datastore_location: cloud.dir.path().join("hv/datastores").display().to_string(),
    };
    let mut state = State::open(&cloud.dir.path().join("state/backstop.db")).expect("state");
    let job = state
        .create_job("nightly", 50, "MODE=INCREMENT\nKEEP_LAST=10", &[VM])
        .expect("job");
    let cfg = JobConfig {
        job_id: Some(job),
        mode: Mode::Increment,
        keep_last: 10,
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
    let repo = cloud.base_path.join(format!("job_{job}"));
    let mut points: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            cloud.change_disks(round, 6);
        }
        if round == 2 {
            let path = format!("{}/disk.0.1", cloud.staging().display());
            heal_chunk_10(&repo, &path);
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
        points.push((out.backup_id.clone(), contents_of(&cloud)));
    }
    assert!(
        !cloud.vm_dir.join(".backstop-reread.0").exists(),
        "the note outlived the good backup"
    );
    crate::jobs::restic_in(&repo, &["check", "--read-data"]);
    for (inc, (id, expected)) in points.iter().enumerate() {
        for (k, (d, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{d}.{inc}", cloud.staging().display());
            assert!(
                crate::jobs::restic_in(&repo, &["dump", id, &path]) == expected[k],
                "disk {d} at increment {inc} does not restore byte-exact"
            );
        }
    }
}

fn contents_of(cloud: &crate::cloud::Cloud) -> Vec<Vec<u8>> {
    DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect()
}
