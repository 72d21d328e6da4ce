//! The job runner's execution of VM backups (issue 6): the chain oned runs (TM prebackup,
//! datastore backup, TM postbackup) through the installed actions, recorded in SQLite, with
//! KEEP_LAST applied by the datastore's increment_flatten. Real sshd hosts, real restic.

use crate::cloud::{Cloud, DISKS, VM};
use crate::support::BACKSTOP;
use backstop_backupjob::runner::{self, BackupDatastore, ChainPointers, Env, JobConfig, Mode};
use backstop_backupjob::state::State;
use std::fs;

#[test]
fn a_job_in_increment_mode_keeps_the_last_two_increments_each_restorable() {
    let cloud = Cloud::start();
    for action in ["prebackup", "postbackup"] {
        let link = cloud.remotes.join(format!("tm/ssh/{action}"));
        fs::create_dir_all(link.parent().expect("parent")).expect("tm");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    }
    // A host that is down.
    let ssh_config = cloud.dir.path().join("ssh_config");
    let mut text = fs::read_to_string(&ssh_config).expect("ssh_config");
    text.push_str("Host down\n  HostName 127.0.0.9\n  ConnectTimeout 5\n");
    fs::write(&ssh_config, text).expect("ssh_config");
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
    };
    let ds = BackupDatastore {
        id: 100,
        ds_mad: "backstop".into(),
        document: cloud.datastore_xml(),
    };
    let doc = cloud.vm_xml(-1, -1);
    // One repository per job: <BASE_PATH>/job_<id>.
    let repo = cloud.base_path.join(format!("job_{job}"));
    let restic = |args: &[&str]| {
        let out = std::process::Command::new("restic")
            .arg("--repo")
            .arg(&repo)
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
    };
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    for round in 0..4u64 {
        if round > 0 {
            cloud.change_disks(round, 10);
        }
        let (image, last) = state.chain_of(VM, Some(job), 100).expect("chain");
        let chain = ChainPointers {
            image_id: image,
            last_increment: last,
        };
        let result = runner::run_chain(&env, &doc, &cfg, &ds, chain)
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
    let e = runner::run_chain(&env, &down, &cfg, &ds, ChainPointers::default())
        .expect_err("the host is down");
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
