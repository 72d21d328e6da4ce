//! Discovery (docs/discovery.md): a state rebuilt from the repositories alone. VM 22 is backed
//! up by job 1 (an INCREMENT chain of three, then two FULL images) and, after job 1 is deleted,
//! by job 2 (a chain of two), through the installed actions (real sshd, real restic). The
//! state file is then deleted; `discover` on a new state gives the same `image list --json`,
//! registers the VM, recreates both jobs with the VM in the one that backed it up last, is
//! idempotent, and the next backup extends the discovered chain.

use crate::jobs::{cli_prefix, cloud_with_tm, run_cli};
use std::fs;

#[test]
fn a_lost_state_is_rebuilt_from_the_repositories() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = crate::jobs::work_dir(&cloud);
    let job = |name: &str, mode: &str| {
        let path = work.join(format!("{name}.tmpl"));
        fs::write(
            &path,
            format!(
                "NAME = \"{name}\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = {mode}\nKEEP_LAST = 5\n"
            ),
        )
        .expect("job");
        path.display().to_string()
    };
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let bj = |args: &[&str]| run_cli(&common, args);
    let ok = |args: &[&str]| {
        let out = bj(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        out
    };
    let ds_tmpl = work.join("ds.tmpl").display().to_string();
    ok(&["datastore", "create", &ds_tmpl]);
    ok(&[
        "vm",
        "register",
        &work.join("vm22.xml").display().to_string(),
    ]);
    ok(&["create", &job("nightly", "INCREMENT")]);
    let mut round = 0;
    let mut backup = |id: &str| {
        round += 1;
        cloud.change_disks(round, 4);
        ok(&["backup", id]);
    };
    for _ in 0..3 {
        backup("1");
    }
    let full = work.join("full.tmpl");
    fs::write(&full, "MODE = FULL\n").expect("full");
    ok(&["update", "1", &full.display().to_string(), "--append"]);
    backup("1");
    backup("1");
    ok(&["delete", "1"]);
    ok(&["create", &job("weekly", "INCREMENT")]);
    backup("2");
    backup("2");
    let before = ok(&["image", "list", "--json"]).stdout;
    let listed: serde_json::Value = serde_json::from_str(&before).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");

    fs::remove_file(&state).expect("the state is lost");
    ok(&["datastore", "create", &ds_tmpl]);
    let out = ok(&["discover", "1"]);
    assert!(
        out.stdout.contains("VM 22 (") && out.stdout.contains("registered"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("backup job 1 (discovered-1) created: VMs , MODE FULL")
            && out
                .stdout
                .contains("backup job 2 (discovered-2) created: VMs 22, MODE INCREMENT"),
        "{out:?}"
    );
    let after = ok(&["image", "list", "--json"]).stdout;
    let rebuilt: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(rebuilt, listed, "the rebuilt images differ");
    let out = ok(&["discover", "1"]);
    assert_eq!(
        out.stdout,
        "datastore 1: nothing the state does not hold already\n"
    );
    assert_eq!(ok(&["image", "list", "--json"]).stdout, after);

    // The discovered chain goes on.
    round += 1;
    cloud.change_disks(round, 4);
    let out = ok(&["backup", "2"]);
    assert!(out.stdout.contains("increment 2 of image 4"), "{out:?}");
}
