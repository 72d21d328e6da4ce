//! The runner in OpenNebula mode against a REAL oned 7.4.0 (see oned_real.rs for how it is
//! started): `backupjob datastore import` takes oned's backup datastore, a job's VMs come
//! from oned at each run (BACKUP_VMS and LABELS), every backup goes through `one.vm.backup`,
//! and the runner's images are oned's. Not run (and passing) without
//! `BACKSTOP_ONED_REFERENCE`.

use crate::oned_real::{RealOned, first, increments, make_image, raw_copy, values, write_pattern};
use crate::support::{self, BACKSTOP, Outcome};
use std::path::Path;

/// `backstop backupjob --state <state> ...` with this oned's environment (and `extra` on top).
pub(crate) fn runner(o: &RealOned, state: &Path, args: &[&str], extra: &[(&str, &str)]) -> Outcome {
    let state = state.display().to_string();
    let mut all = vec!["backupjob", "--state", state.as_str()];
    all.extend_from_slice(args);
    let mut env: Vec<(&str, &str)> = o
        .env()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend_from_slice(extra);
    support::run_env(BACKSTOP, &all, b"", &env)
}

pub(crate) fn runner_ok(o: &RealOned, state: &Path, args: &[&str]) -> String {
    let out = runner(o, state, args, &[]);
    assert_eq!(
        out.code,
        Some(0),
        "backupjob {args:?}:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The runner's images as `image list --json` shows them: (image, VM, increments).
fn runner_images(o: &RealOned, state: &Path) -> Vec<(u64, u64, usize)> {
    let out = runner_ok(o, state, &["image", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("image list json");
    let mut images: Vec<(u64, u64, usize)> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().expect("id"),
                i["vm"].as_u64().expect("vm"),
                i["increments"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    images.sort();
    images
}

/// The ids of the VM's backup images in oned.
fn backup_ids(o: &RealOned, vm: u64) -> Vec<u64> {
    values(&o.xml("onevm", &vm.to_string()), "BACKUP_IDS")
        .first()
        .map(|ids| {
            values(&format!("<X>{ids}</X>"), "ID")
                .iter()
                .filter_map(|i| i.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// OpenNebula mode end to end: two VMs (one named by BACKUP_VMS, one chosen by its label)
/// backed up through oned into oned's records; the named VM migrated to another host between
/// runs and backed up there; its backup restored through oned's downloader path
/// (`oneimage restore`); the labelled VM deleted in oned (reported, leaves the job); oned
/// unreachable or refusing the credentials (one line naming oned, the state untouched); the
/// named VM deleted (ERROR with the reason, exit 1).
#[test]
fn real_oned_runner_backs_up_through_oned_in_opennebula_mode() {
    let Some(o) = RealOned::start(true) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let (image_a, image_b) = (
        o.images.path().join("a.qcow2"),
        o.images.path().join("b.qcow2"),
    );
    make_image(&image_a);
    make_image(&image_b);
    let a = o.stopped_vm("mode-a", &image_a);
    let b = o.stopped_vm("mode-b", &image_b);
    let image_c = o.images.path().join("c.qcow2");
    make_image(&image_c);
    let c = o.stopped_vm("mode-c", &image_c);
    // The second host after the VMs, so that both start on localhost.
    o.add_fake_host_named("127.0.0.2");
    let labels = o.template("labels.tmpl", "LABELS = \"nightly/db\"\n");
    o.cli_ok("onevm", &["update", &b.to_string(), &labels, "--append"]);
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("state.db");

    // oned's backup datastore, under its id; a job naming VM a and the label `nightly`.
    runner_ok(&o, &state, &["datastore", "import", &ds]);
    // oned holds that template: the runner does not change it.
    let out = runner(&o, &state, &["datastore", "update", &ds, "/dev/null"], &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("onedatastore update"), "{}", out.stderr);
    let job = work.path().join("job.tmpl");
    std::fs::write(
        &job,
        format!(
            "NAME = \"nightly\"\nDATASTORE_ID = {ds}\nBACKUP_VMS = \"{a}\"\nLABELS = \"nightly\"\n\
             MODE = \"INCREMENT\"\nEXECUTION = \"PARALLEL\"\n"
        ),
    )
    .expect("job template");
    // A VM oned does not have is refused when the job is created, not at its first run.
    let bad = work.path().join("bad.tmpl");
    std::fs::write(
        &bad,
        format!("NAME = \"bad\"\nDATASTORE_ID = {ds}\nBACKUP_VMS = \"{a},999\"\n"),
    )
    .expect("bad template");
    let out = runner(&o, &state, &["create", bad.to_str().expect("utf-8")], &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("BACKUP_VMS: oned has no VM 999"),
        "{}",
        out.stderr
    );
    runner_ok(&o, &state, &["create", job.to_str().expect("utf-8")]);

    // Run 1: both VMs, each a FULL through oned: oned's records have the images, the runner's
    // are the same ids, and plain restic holds each disk byte for byte.
    let expected = |name: &str| o.images.path().join(format!("expected-{name}.raw"));
    raw_copy(&o.vm_disk(a), &expected("a0"));
    raw_copy(&o.vm_disk(b), &expected("b0"));
    let out = runner_ok(&o, &state, &["backup", "1"]);
    for vm in [a, b] {
        assert!(out.contains(&format!("VM {vm}: backup ")), "{out}");
        assert_eq!(backup_ids(&o, vm).len(), 1, "{}", o.vm_log(vm));
    }
    let (img_a, img_b) = (backup_ids(&o, a)[0], backup_ids(&o, b)[0]);
    assert_eq!(
        runner_images(&o, &state),
        {
            let mut v = vec![(img_a, a, 1), (img_b, b, 1)];
            v.sort();
            v
        },
        "the runner's images are oned's"
    );
    for (vm, img, name) in [(a, img_a, "a0"), (b, img_b, "b0")] {
        let incs = increments(&o.xml("oneimage", &img.to_string()));
        assert_eq!(incs.len(), 1, "{incs:?}");
        let repo = o.base_path(&ds).join(vm.to_string());
        crate::oned_real::assert_restic_dump(&repo, &incs[0].2, &expected(name));
    }
    // The VM's BACKUP_CONFIG is the job's, as oned's own backup jobs set it.
    assert_eq!(first(&o.xml("onevm", &a.to_string()), "MODE"), "INCREMENT");

    // VM a moves to host 127.0.0.2 and changes; run 2 backs it up there: an increment of the
    // same image, prebackup asked of the new host.
    o.cli_ok("onevm", &["migrate", &a.to_string(), "127.0.0.2"]);
    o.wait_poweroff(a);
    let hosts = values(&o.xml("onevm", &a.to_string()), "HOSTNAME");
    assert_eq!(
        hosts.last().map(String::as_str),
        Some("127.0.0.2"),
        "{hosts:?}"
    );
    write_pattern(&o.vm_disk(a), 0x6c, 20 << 20, 2 << 20);
    raw_copy(&o.vm_disk(a), &expected("a1"));
    let ssh_before = o.ssh_log().lines().count();
    let out = runner_ok(&o, &state, &["backup", "1"]);
    assert!(out.contains(&format!("VM {a}: backup ")), "{out}");
    let new_ssh: Vec<String> = o
        .ssh_log()
        .lines()
        .skip(ssh_before)
        .map(str::to_string)
        .collect();
    assert!(
        new_ssh.iter().any(|l| l.contains("ssh 127.0.0.2 ")),
        "the backup ran on the new host: {new_ssh:#?}"
    );
    let vms = runner_ok(&o, &state, &["vm", "list", "--json"]);
    let vms: serde_json::Value = serde_json::from_str(&vms).expect("vm list json");
    let host_a = vms
        .as_array()
        .and_then(|l| l.iter().find(|v| v["id"].as_u64() == Some(a)))
        .map(|v| v["host"].clone());
    assert_eq!(host_a, Some(serde_json::json!("127.0.0.2")), "{vms}");
    let incs = increments(&o.xml("oneimage", &img_a.to_string()));
    assert_eq!(incs.len(), 2, "{incs:?}");
    assert!(
        runner_images(&o, &state).contains(&(img_a, a, 2)),
        "the runner's image has oned's two increments"
    );
    let repo_a = o.base_path(&ds).join(a.to_string());
    crate::oned_real::assert_restic_dump(&repo_a, &incs[1].2, &expected("a1"));

    // The runner's own restore of that image reads the repository oned's backups went to
    // (the VM's own: oned's backups name no backup job).
    let to = work.path().join("restored-a1");
    runner_ok(
        &o,
        &state,
        &[
            "image",
            "restore",
            &img_a.to_string(),
            "--increment",
            "1",
            "--to",
            to.to_str().expect("utf-8"),
        ],
    );
    crate::stock::compare(&to.join("disk.0.qcow2"), &expected("a1"));

    // Restore through oned: `oneimage restore` of the runner's image runs the downloader.
    let before: Vec<String> = values(&o.cli_ok("oneimage", &["list", "-x"]), "IMAGE")
        .iter()
        .map(|i| first(i, "ID"))
        .collect();
    o.cli_ok("oneimage", &["restore", &img_a.to_string(), "-d", "1"]);
    let restored = || {
        values(&o.cli_ok("oneimage", &["list", "-x"]), "IMAGE")
            .into_iter()
            .find(|i| !before.contains(&first(i, "ID")) && first(i, "TYPE") == "0")
    };
    o.wait("the restored image", 120, None, || {
        restored().is_some_and(|i| first(&i, "STATE") == "1")
    });
    let source = first(&restored().expect("restored"), "SOURCE");
    crate::stock::compare(Path::new(&source), &expected("a1"));

    // One of oned's backup jobs (holding VM c) made a runner job: refused while oned's job
    // holds the VM, unless taken over; then oned's job is empty and the runner's job backs c
    // up through oned.
    let bj = o.template(
        "bj.tmpl",
        &format!(
            "NAME = \"onejob\"\nBACKUP_VMS = \"{c}\"\nDATASTORE_ID = {ds}\nMODE = \"FULL\"\nPRIORITY = 60\n"
        ),
    );
    let bj = crate::oned_real::id_line(&o.cli_ok("onebackupjob", &["create", &bj]));
    let out = runner(&o, &state, &["import", &bj], &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("--take-over"), "{}", out.stderr);
    let out = runner_ok(&o, &state, &["import", &bj, "--take-over"]);
    assert_eq!(out.trim(), "ID: 2");
    assert_eq!(first(&o.xml("onebackupjob", &bj), "BACKUP_VMS"), "");
    let out = runner_ok(&o, &state, &["backup", "2"]);
    assert!(out.contains(&format!("VM {c}: backup ")), "{out}");
    assert_eq!(backup_ids(&o, c).len(), 1, "{}", o.vm_log(c));
    let show = runner_ok(&o, &state, &["show", "2", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).expect("show json");
    assert_eq!(show["priority"], 60, "{show}");

    // oned refusing the credentials, or not there: one line naming oned, nothing recorded.
    let images_before = runner_images(&o, &state);
    let bad_auth = work.path().join("bad_auth");
    std::fs::write(&bad_auth, "oneadmin:not-the-password\n").expect("bad auth");
    let bad_auth = bad_auth.display().to_string();
    for (var, value, says) in [
        ("ONE_AUTH", bad_auth.as_str(), "oned refused"),
        (
            "ONE_XMLRPC",
            "http://127.0.0.1:9/RPC2",
            "cannot reach oned at",
        ),
    ] {
        let out = runner(&o, &state, &["backup", "1"], &[(var, value)]);
        assert_eq!(out.code, Some(1), "{var}: {}\n{}", out.stdout, out.stderr);
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{var}: one line: {}", out.stderr);
        assert!(lines[0].contains(says), "{var}: {}", out.stderr);
        assert!(!out.stderr.contains("not-the-password"), "{}", out.stderr);
    }
    assert_eq!(runner_images(&o, &state), images_before);

    // A retention plan carried out through oned: the job now makes FULL images and keeps
    // the newest point of each day, which the run applies after its backups: every older
    // image goes with one.image.delete (oned runs the datastore's rm), oned's records and
    // the repositories lose them, the runner's images are oned's.
    std::fs::write(
        &job,
        format!(
            "NAME = \"nightly\"\nDATASTORE_ID = {ds}\nBACKUP_VMS = \"{a}\"\nLABELS = \"nightly\"\n\
             MODE = \"FULL\"\nEXECUTION = \"PARALLEL\"\nKEEP_LAST = 1\nKEEP_DAILY = 1\n"
        ),
    )
    .expect("job template");
    runner_ok(&o, &state, &["update", "1", job.to_str().expect("utf-8")]);
    let out = runner_ok(&o, &state, &["backup", "1"]);
    for (vm, old) in [(a, img_a), (b, img_b)] {
        assert!(
            out.contains(&format!("VM {vm}: image {old} removed")),
            "{out}"
        );
        let ids = backup_ids(&o, vm);
        assert_eq!(ids.len(), 1, "VM {vm}: {ids:?}");
        assert_ne!(ids[0], old);
        let gone = o.cli("oneimage", &["show", &old.to_string()]);
        assert_ne!(gone.code, Some(0), "image {old} is gone from oned");
        let repo = o.base_path(&ds).join(vm.to_string());
        assert_eq!(crate::oned_real::snapshots(&repo).len(), 1, "VM {vm}");
    }
    let mut want = vec![(backup_ids(&o, a)[0], a, 1), (backup_ids(&o, b)[0], b, 1)];
    want.sort();
    let got: Vec<_> = runner_images(&o, &state)
        .into_iter()
        .filter(|i| i.1 != c)
        .collect();
    assert_eq!(got, want);

    // VM b deleted in oned: said, and it leaves the job; a is backed up again.
    o.cli_ok("onevm", &["terminate", "--hard", &b.to_string()]);
    o.wait(&format!("VM {b} DONE"), 120, None, || {
        first(&o.xml("onevm", &b.to_string()), "STATE") == "6"
    });
    let out = runner_ok(&o, &state, &["backup", "1"]);
    assert!(
        out.contains(&format!("VM {b}: VM {b} no longer exists in OpenNebula")),
        "{out}"
    );
    assert!(out.contains(&format!("VM {a}: backup ")), "{out}");
    let show = runner_ok(&o, &state, &["show", "1", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).expect("show json");
    let in_job: Vec<u64> = show["vms"]
        .as_array()
        .map(|l| l.iter().filter_map(|v| v["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(in_job, [a], "{show}");

    // VM a, named by BACKUP_VMS, deleted: ERROR with the reason, exit 1.
    o.cli_ok("onevm", &["terminate", "--hard", &a.to_string()]);
    o.wait(&format!("VM {a} DONE"), 120, None, || {
        first(&o.xml("onevm", &a.to_string()), "STATE") == "6"
    });
    let out = runner(&o, &state, &["backup", "1"], &[]);
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains(&format!("VM {a} does not exist in OpenNebula")),
        "{all}"
    );
}
