//! Retention plans carried out on a real chain (docs/retention.md): a job's VM backed up five
//! times through the installed actions (real sshd, real restic), the points' times then moved
//! to earlier days in the state (the one thing not made by a real run), and KEEP_DAILY=3
//! applied: the oldest point goes by KEEP_LAST's flatten, a point between two kept ones by
//! KEEP_INCREMENTS; every kept point restores byte-exact, restic checks the repository clean,
//! and the chain goes on, the runner applying the plan after the next run itself. The
//! max-delete guard and a missing --yes refuse and change nothing.

use crate::cloud::DISKS;
use crate::jobs::{cli_prefix, cloud_with_tm, restic_in};
use std::fs;

#[test]
fn a_retention_plan_is_carried_out_and_every_kept_point_restores() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = crate::jobs::work_dir(&cloud);
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"daily\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = INCREMENT\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    // Days are the runner's: UTC here, so that the points below fall on the days meant.
    let bj = |args: &[&str]| {
        let mut all: Vec<&str> = common.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        crate::support::run_env(crate::support::BACKSTOP, &all, b"", &[("TZ", "UTC")])
    };
    let file = |n: &str| work.join(n).display().to_string();
    for (args, want) in [
        (vec!["datastore", "create", &file("ds.tmpl")], "ID: 1\n"),
        (vec!["vm", "register", &file("vm22.xml")], "ID: 22\n"),
        (vec!["create", &file("job.tmpl")], "ID: 1\n"),
    ] {
        let out = bj(&args);
        assert_eq!(out.stdout, want, "{args:?}: {out:?}");
    }
    let mut points: Vec<Vec<Vec<u8>>> = Vec::new();
    for round in 0..5u64 {
        if round > 0 {
            cloud.change_disks(round, 6);
        }
        let out = bj(&["backup", "1"]);
        assert_eq!(out.code, Some(0), "round {round}: {out:?}");
        points.push(DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect());
    }
    // Increments 0 and 1 two days ago, 2 and 3 yesterday (mid-day), 4 today just after
    // midnight (UTC).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    let day = 86_400;
    let today = now - now % day;
    let db = rusqlite::Connection::open(&state).expect("state");
    for (inc, at) in [
        (0, today - 2 * day + 10 * 3_600),
        (1, today - 2 * day + 11 * 3_600),
        (2, today - day + 10 * 3_600),
        (3, today - day + 11 * 3_600),
        (4, today + 1),
    ] {
        db.execute(
            "UPDATE increments SET created_at = ?1 WHERE image_id = 1 AND id = ?2",
            rusqlite::params![at, inc],
        )
        .expect("time");
    }
    drop(db);
    fs::write(work.join("keep.tmpl"), "KEEP_DAILY = 3\n").expect("keep");
    assert_eq!(
        bj(&["update", "1", &file("keep.tmpl"), "--append"]).code,
        Some(0)
    );
    let plan: serde_json::Value =
        serde_json::from_str(&bj(&["retention", "1", "--json"]).stdout).expect("plan");
    let kept: Vec<bool> = plan["vms"][0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["keep"].as_bool().expect("keep"))
        .collect();
    assert_eq!(kept, [false, true, false, true, true], "{plan}");

    // Refusals change nothing.
    let repo = cloud.base_path.join("job_1");
    let snapshots = || -> usize {
        let v: serde_json::Value =
            serde_json::from_slice(&restic_in(&repo, &["snapshots", "--json"])).expect("json");
        v.as_array().expect("array").len()
    };
    let increments = || -> Vec<u64> {
        let img: serde_json::Value =
            serde_json::from_str(&bj(&["image", "show", "1", "--json"]).stdout).expect("image");
        img["increments"]
            .as_array()
            .expect("increments")
            .iter()
            .map(|i| i["id"].as_u64().expect("id"))
            .collect()
    };
    let out = bj(&["retention", "1", "--apply"]);
    assert!(
        out.code == Some(1) && out.stderr.contains("add --yes"),
        "{out:?}"
    );
    let out = bj(&["retention", "1", "--apply", "--yes", "--max-delete", "1"]);
    assert!(
        out.code == Some(1)
            && out.stderr.contains(
                "the plan removes 2 points, more than --max-delete 1; nothing was removed"
            ),
        "{out:?}"
    );
    assert_eq!((snapshots(), increments()), (5, vec![0, 1, 2, 3, 4]));

    let out = bj(&["retention", "1", "--apply", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("VM 22: image 1: increments 0, 2 removed")
            && out.stdout.contains("retention of job 1: 2 points removed"),
        "{out:?}"
    );
    assert_eq!((snapshots(), increments()), (3, vec![1, 3, 4]));
    restic_in(&repo, &["check", "--read-data"]);
    for inc in [1usize, 3, 4] {
        let dir = work.join(format!("restored-{inc}"));
        let out = bj(&[
            "image",
            "restore",
            "1",
            "--increment",
            &inc.to_string(),
            "--to",
            dir.to_str().expect("utf-8"),
        ]);
        assert_eq!(out.code, Some(0), "{out:?}");
        for (k, (d, _)) in DISKS.iter().enumerate() {
            let raw = dir.join(format!("disk.{d}.raw"));
            crate::cloud::sh_ok(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "qcow2",
                    "-O",
                    "raw",
                    dir.join(format!("disk.{d}.qcow2")).to_str().expect("utf-8"),
                    raw.to_str().expect("utf-8"),
                ],
            );
            assert!(
                fs::read(&raw).expect("raw") == points[inc][k],
                "disk {d} of kept increment {inc} is not the disk at that point"
            );
        }
    }
    // Nothing more to remove; the chain goes on from its last increment, and after the run the
    // runner applies the plan itself: today's older point goes (KEEP_DAILY keeps one a day).
    let out = bj(&["retention", "1", "--apply", "--yes"]);
    assert!(
        out.stdout.contains("retention of job 1: 0 points removed"),
        "{out:?}"
    );
    cloud.change_disks(9, 6);
    let out = bj(&["backup", "1"]);
    assert!(
        out.code == Some(0)
            && out.stdout.contains("increment 5 of image 1")
            && out
                .stdout
                .contains("backup job 1: retention: VM 22: image 1: increments 4 removed"),
        "{out:?}"
    );
    assert_eq!(increments(), [1, 3, 5]);
    restic_in(&repo, &["check"]);
}
