//! install.sh on a remotes tree: what it installs, that a second run is a no-op, that it
//! refuses what it must, and that --uninstall puts back what it replaced.

use crate::support::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Every executable of driver contract §15 for DS_MAD backstop.
fn ds_actions() -> Vec<&'static str> {
    let work = [
        "backup",
        "backup_cancel",
        "monitor",
        "stat",
        "rm",
        "increment_flatten",
        "ls",
        "restore",
    ];
    work.iter().chain(UNSUPPORTED).copied().collect()
}

#[test]
fn side_by_side_install_is_complete_idempotent_and_reversible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);

    // The front-end's oned.conf (OpenNebula 7.4's driver lists): the advice keeps every driver
    // it lists and adds backstop, and names only the lines it lacks.
    let conf = dir.path().join("oned.conf");
    fs::write(
        &conf,
        "DATASTORE_MAD = [\n    EXECUTABLE = \"one_datastore\",\n    ARGUMENTS  = \"-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp,purefa,virtiofs,interactive -s dummy,lvm,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp,purefa\"\n]\nDATASTORE_ENCRYPTED_ATTR = \"RESTIC_PASSWORD\"\n",
    )
    .expect("oned.conf");
    let first = install_sh(&r, &["--oned-conf", conf.to_str().expect("utf-8")]);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stdout.contains("DS_MAD_CONF = [ NAME = \"backstop\", REQUIRED_ATTRS = \"RESTIC_PASSWORD\", PERSISTENT_ONLY = \"YES\" ]"), "{}", first.stdout);
    assert!(
        first.stdout.contains(
            "ARGUMENTS = \"-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp,purefa,virtiofs,interactive,backstop -s dummy,lvm,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp,purefa\""
        ),
        "{}",
        first.stdout
    );
    assert!(
        first
            .stdout
            .contains("DATASTORE_ENCRYPTED_ATTR = \"RESTIC_S3_SECRET_ACCESS_KEY\"")
            && !first
                .stdout
                .contains("DATASTORE_ENCRYPTED_ATTR = \"RESTIC_PASSWORD\""),
        "{}",
        first.stdout
    );
    for attr in ["CEPH_USER", "CEPH_KEY", "CEPH_CONF", "POOL_NAME"] {
        assert!(
            first
                .stdout
                .contains(&format!("VM_RESTRICTED_ATTR = \"DISK/{attr}\"")),
            "{}",
            first.stdout
        );
    }
    for action in ds_actions()
        .iter()
        .map(|a| format!("datastore/backstop/{a}"))
        .chain([
            "datastore/backstop_downloader".to_string(),
            "backstop/bin/backstop".to_string(),
        ])
    {
        let m = fs::metadata(r.join(&action)).unwrap_or_else(|_| panic!("{action} missing"));
        assert!(
            m.is_file() && m.permissions().mode() & 0o111 == 0o111,
            "{action} not executable"
        );
    }
    let patched = fs::read_to_string(r.join("datastore/downloader.sh")).expect("downloader.sh");
    assert_eq!(patched.matches("backstop://*|backstop+rbd://*)").count(), 1);
    // The stock driver is untouched in side-by-side mode.
    for stock in [
        "datastore/restic/backup",
        "datastore/restic_downloader.rb",
        "tm/qcow2/prebackup",
    ] {
        assert_eq!(
            contents(&r).get(stock),
            before.get(stock),
            "{stock} changed"
        );
    }

    // A second run changes nothing, not even a modification time.
    let snap = snapshot(&r);
    let second = install_sh(&r, &[]);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        second.stdout.contains("nothing changed"),
        "{}",
        second.stdout
    );
    assert_eq!(snapshot(&r), snap, "second install changed the tree");

    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert_eq!(contents(&r), before, "uninstall did not restore the tree");
    // Uninstalling twice is harmless.
    let again = install_sh(&r, &["--uninstall"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(again.stdout.contains("nothing to do"));
}

#[test]
fn unsupported_actions_refuse_as_specified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    assert_eq!(install_sh(&r, &[]).code, Some(0));
    for action in UNSUPPORTED {
        let out = run(
            r.join("datastore/backstop").join(action),
            &["7"],
            b"PEEvPg==",
        );
        assert_eq!(out.code, Some(1), "{action}: {out:?}");
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr, format!("{action}: Operation not supported\n"));
    }
}

#[test]
fn a_missing_downloader_sh_is_reported_not_invented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    let out = install_sh(&r, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("datastore/downloader.sh does not exist"),
        "{}",
        out.stderr
    );
    assert!(!r.join("datastore/downloader.sh").exists());
}

#[test]
fn an_unwritable_target_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").expect("write");
    let r = file.join("remotes");
    let out = install_sh(&r, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "install: cannot write to {}: Not a directory (os error 20)\n",
            r.display()
        )
    );
}

#[test]
fn a_foreign_downloader_sh_stops_the_install_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    write_exec(
        &r.join("datastore/downloader.sh"),
        "#!/bin/sh\necho not the stock one\n",
    );
    let before = contents(&r);
    let out = install_sh(&r, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("has no line `case \"$FROM\" in`"),
        "{}",
        out.stderr
    );
    assert_eq!(contents(&r), before);
}

/// Everything a stock restic datastore uses is served (S3, and Ceph's rbd-format backups), so
/// `--replace-stock` installs without `--allow-unimplemented`; so does `--with-tm`.
#[test]
fn replacing_stock_drivers_needs_no_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let flag = "--replace-stock";
    let out = install_sh(&r, &[flag]);
    assert_eq!(out.code, Some(0), "{flag}: {out:?}");
    assert!(!out.stderr.contains("not implemented"), "{}", out.stderr);
    assert!(
        fs::read_to_string(r.join("datastore/restic/backup"))
            .is_ok_and(|t| t.contains("backstop-shim")),
        "{out:?}"
    );
    let out = install_sh(&r, &["--with-tm"]);
    assert_eq!(out.code, Some(0), "--with-tm: {out:?}");
    assert!(
        out.stdout.contains(
            "transfer managers with backstop's backup actions: qcow2, shared, ssh, ceph\n"
        ),
        "{out:?}"
    );
}

/// `--with-tm` into a tree with no transfer manager of the qcow2 family says so, rather than
/// installing nothing in silence.
#[test]
fn with_tm_warns_when_it_finds_no_transfer_manager() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    fs::create_dir_all(r.join("datastore")).expect("remotes");
    let out = install_sh(&r, &["--with-tm"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains(
            "warning: --with-tm found none of the transfer managers qcow2, shared, ssh, local, ceph under"
        ),
        "{out:?}"
    );
    assert!(!r.join("tm").exists(), "a tm directory was made");
}

#[test]
fn drop_in_and_tm_replacement_keep_and_restore_the_stock_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);
    let out = install_sh(&r, &["--replace-stock", "--with-tm"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let shim = |p: &str| fs::read_to_string(r.join(p)).is_ok_and(|t| t.contains("backstop-shim"));
    for p in ds_actions().iter().map(|a| format!("datastore/restic/{a}")) {
        assert!(shim(&p), "{p} is not backstop's");
    }
    assert!(shim("datastore/restic_downloader.rb"));
    for a in TM_ACTIONS {
        assert!(shim(&format!("tm/qcow2/{a}")), "tm/qcow2/{a}");
        assert!(shim(&format!("tm/ssh/{a}")), "tm/ssh/{a}");
        assert!(shim(&format!("tm/ceph/{a}")), "tm/ceph/{a}");
    }
    // Untouched: files backstop has no action for, and the tm/shared link.
    assert_eq!(
        contents(&r).get("datastore/restic/restic.rb"),
        before.get("datastore/restic/restic.rb")
    );
    assert_eq!(
        contents(&r).get("tm/qcow2/clone"),
        before.get("tm/qcow2/clone")
    );
    assert_eq!(contents(&r).get("tm/shared"), before.get("tm/shared"));
    // The stock files are kept, symlinks as symlinks.
    let kept = contents(&r.join("backstop/replaced"));
    assert_eq!(
        kept.get("datastore/restic/backup"),
        before.get("datastore/restic/backup")
    );
    assert_eq!(kept.get("tm/ssh/prebackup"), before.get("tm/ssh/prebackup"));
    assert_eq!(
        kept.get("tm/ssh/prebackup").map(|e| e.0.as_str()),
        Some("link")
    );

    // Idempotent in this mode too.
    let snap = snapshot(&r);
    let again = install_sh(&r, &["--replace-stock", "--with-tm"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(snapshot(&r), snap);

    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert_eq!(
        contents(&r),
        before,
        "uninstall did not restore the stock tree"
    );
}

/// An OpenNebula upgrade writes its own prebackup and downloader.sh over backstop's:
/// `--check` names both and fails; installing again puts backstop's back and keeps the
/// upgrade's stock files for an uninstall, which then restores them.
#[test]
fn check_finds_what_an_upgrade_overwrote_and_installing_again_puts_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let out = install_sh(&r, &["--with-tm"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let fine = install_sh(&r, &["--check"]);
    assert_eq!(fine.code, Some(0), "{fine:?}");
    assert!(
        fine.stdout.contains("files in") && fine.stdout.contains("are in place"),
        "{fine:?}"
    );

    // The upgrade: a newer stock prebackup, and a stock downloader.sh without the arm.
    let upgraded = "#!/usr/bin/env ruby\n# stock qcow2 prebackup, 7.4.1\n";
    fs::remove_file(r.join("tm/qcow2/prebackup")).expect("rm");
    fs::write(r.join("tm/qcow2/prebackup"), upgraded).expect("upgrade");
    fs::write(r.join("datastore/downloader.sh"), DOWNLOADER_SH).expect("upgrade");
    let snap = snapshot(&r);
    let lost = install_sh(&r, &["--check"]);
    assert_eq!(lost.code, Some(1), "{lost:?}");
    assert!(
        lost.stdout
            .contains("tm/qcow2/prebackup is not backstop's any more"),
        "{lost:?}"
    );
    assert!(
        lost.stdout
            .contains("datastore/downloader.sh has lost backstop's arm"),
        "{lost:?}"
    );
    assert!(
        lost.stdout.contains("2 of backstop's")
            && lost.stdout.contains(&format!(
                "./install.sh --remotes-dir {} --with-tm`",
                r.display()
            )),
        "{lost:?}"
    );
    assert_eq!(snapshot(&r), snap, "--check changed the tree");
    // The scheduler says so when it starts.
    let state = dir.path().join("state.db");
    let sched = run(
        BACKSTOP,
        &[
            "backupjob",
            "--state",
            state.to_str().expect("utf-8"),
            "--remotes",
            r.to_str().expect("utf-8"),
            "scheduler",
        ],
        b"",
    );
    assert!(
        sched.stderr.contains(
            "backupjob scheduler: warning: tm/qcow2/prebackup is not backstop's any more"
        ),
        "{sched:?}"
    );

    let again = install_sh(&r, &["--with-tm"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again
            .stdout
            .contains("tm/qcow2/prebackup was the stock file again"),
        "{again:?}"
    );
    assert_eq!(install_sh(&r, &["--check"]).code, Some(0));
    assert_eq!(
        fs::read_to_string(r.join("backstop/replaced/tm/qcow2/prebackup")).expect("kept"),
        upgraded
    );
    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert_eq!(
        fs::read_to_string(r.join("tm/qcow2/prebackup")).expect("restored"),
        upgraded,
        "the upgrade's stock file is what an uninstall restores"
    );
}

/// An uninstall right after an OpenNebula upgrade overwrote one of the replaced files keeps
/// the upgrade's file and restores every other stock file (it stopped half-way before).
#[test]
fn uninstall_after_an_upgrade_keeps_the_upgrades_file_and_restores_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);
    assert_eq!(install_sh(&r, &["--with-tm"]).code, Some(0));
    let upgraded = "#!/usr/bin/env ruby\n# stock qcow2 prebackup, 7.4.1\n";
    fs::remove_file(r.join("tm/qcow2/prebackup")).expect("rm");
    fs::write(r.join("tm/qcow2/prebackup"), upgraded).expect("upgrade");
    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert!(gone.stdout.contains("kept tm/qcow2/prebackup"), "{gone:?}");
    let after = contents(&r);
    assert_eq!(
        fs::read_to_string(r.join("tm/qcow2/prebackup")).expect("kept"),
        upgraded
    );
    for (path, entry) in &before {
        if path != "tm/qcow2/prebackup" {
            assert_eq!(after.get(path), Some(entry), "{path} not restored");
        }
    }
    assert!(!r.join("backstop").exists(), "backstop/ left behind");
}

/// `--check` cannot check a tree with no install (exit 2, not 1), and an oned.conf that is a
/// FIFO does not hang the installer (it falls back to 7.4's lists and says why).
#[test]
fn check_without_an_install_and_an_unreadable_oned_conf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let none = install_sh(&r, &["--check"]);
    assert_eq!(none.code, Some(2), "{none:?}");
    assert!(none.stderr.contains("not installed"), "{none:?}");
    let fifo = dir.path().join("oned.conf");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let out = install_sh(&r, &["--oned-conf", fifo.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("cannot be read: not a regular file")
            && out.stdout.contains("interactive,backstop -s"),
        "{out:?}"
    );
}

/// A stand-in for a stock TM script: records its $0, argv and stdin under $RECORD, says
/// something on stdout and stderr, and exits 7.
const RECORDER: &str = "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > \"$RECORD/argv\"\ncat > \"$RECORD/stdin\"\necho 'stock said hello'\necho 'stock on stderr' >&2\nexit 7\n";

/// With --with-tm, what backstop's TM actions leave to the stock scripts (an interactive
/// backup) reaches the stock script it replaced with the argv and
/// stdin oned gave, byte for byte, the environment passed on, and its output and exit status
/// are the action's; also through tm/ssh, whose stock actions are links into tm/shared.
#[test]
fn with_tm_hands_interactive_backups_to_the_stock_scripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    for a in ["prebackup", "postbackup_live"] {
        write_exec(&r.join("tm/qcow2").join(a), RECORDER);
    }
    let out = install_sh(&r, &["--with-tm"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        fs::read_to_string(r.join("tm/qcow2/prebackup.backstop-stock")).expect("stock copy")
            == RECORDER
            && fs::read_to_string(r.join("tm/ssh/prebackup.backstop-stock")).expect("via link")
                == RECORDER,
        "the stock copies beside the shims"
    );
    let record = dir.path().join("record");
    fs::create_dir_all(&record).expect("mkdir");
    let vm_dir = dir.path().join("datastores/0/7");
    let argv = [
        "localhost:".to_string() + vm_dir.to_str().expect("utf-8"),
        "0".into(),
        "one-7".into(),
        "-".into(),
        "7".into(),
        "0".into(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let doc = |config: &str| {
        format!(
            "<VM><ID>7</ID><DEPLOY_ID>one-7</DEPLOY_ID><TEMPLATE/><BACKUPS><BACKUP_CONFIG>{config}</BACKUP_CONFIG></BACKUPS></VM>\n"
        )
    };
    for (action, config) in [
        (
            "tm/qcow2/prebackup",
            "<MODE>FULL</MODE><INTERACTIVE>YES</INTERACTIVE>",
        ),
        (
            "tm/ssh/prebackup",
            "<MODE>FULL</MODE><INTERACTIVE>YES</INTERACTIVE>",
        ),
        (
            "tm/qcow2/postbackup_live",
            "<MODE>INCREMENT</MODE><INCREMENT_MODE>CBT</INCREMENT_MODE><LAST_INCREMENT_ID>2</LAST_INCREMENT_ID><INTERACTIVE>YES</INTERACTIVE>",
        ),
    ] {
        let _ = fs::remove_file(record.join("argv"));
        let stdin = doc(config);
        let out = run_env(
            r.join(action),
            &argv,
            stdin.as_bytes(),
            &[("RECORD", record.to_str().expect("utf-8"))],
        );
        assert_eq!(out.code, Some(7), "{action}: {out:?}");
        assert!(out.stdout.contains("stock said hello"), "{action}: {out:?}");
        assert!(out.stderr.contains("stock on stderr"), "{action}: {out:?}");
        let recorded = fs::read_to_string(record.join("argv")).expect("the stock script ran");
        let mut lines = recorded.lines();
        assert_eq!(
            lines.next(),
            Some(format!("{}.backstop-stock", r.join(action).display()).as_str()),
            "{action}"
        );
        assert_eq!(lines.collect::<Vec<_>>(), argv, "{action}: argv");
        assert_eq!(
            fs::read(record.join("stdin")).expect("stdin"),
            stdin.as_bytes(),
            "{action}: stdin"
        );
    }
    // A backup backstop does itself never reaches the stock script: FULL, and
    // INCREMENT_MODE=SNAPSHOT (backstop's own since issue 26, in the stock layout).
    for config in [
        "<MODE>FULL</MODE>",
        "<MODE>INCREMENT</MODE><INCREMENT_MODE>SNAPSHOT</INCREMENT_MODE><LAST_INCREMENT_ID>2</LAST_INCREMENT_ID>",
    ] {
        let _ = fs::remove_file(record.join("argv"));
        let out = run_env(
            r.join("tm/qcow2/prebackup"),
            &argv,
            doc(config).as_bytes(),
            &[("RECORD", record.to_str().expect("utf-8"))],
        );
        assert_ne!(out.code, Some(7), "{config}: {out:?}");
        assert!(
            !record.join("argv").exists(),
            "{config}: the stock script ran: {out:?}"
        );
    }

    // --check knows the copies; an uninstall removes them and restores the stock tree.
    assert_eq!(install_sh(&r, &["--check"]).code, Some(0));
    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert!(!r.join("tm/qcow2/prebackup.backstop-stock").exists());
    assert!(!r.join("tm/ssh/prebackup.backstop-stock").exists());
    assert_eq!(
        fs::read_to_string(r.join("tm/qcow2/prebackup")).expect("stock"),
        RECORDER
    );
}

#[test]
fn the_patched_downloader_hands_backstop_urls_to_backstop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    assert_eq!(install_sh(&r, &[]).code, Some(0));
    let target = dir.path().join("disk.out");
    let url = "backstop://100//0:a1b2c3d4/var/lib/one//datastores/0/22/backup/disk.0.0";
    let auth = dir.path().join("no_such_one_auth");
    let out = crate::support::run_env(
        r.join("datastore/downloader.sh"),
        &[url, target.to_str().expect("utf-8")],
        b"",
        &[("ONE_AUTH", auth.to_str().expect("utf-8"))],
    );
    // The downloader runs (through the arm, the shim and the binary) and its failure aborts the
    // copy: nothing is written to the target.
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "backstop_downloader: cannot read the OpenNebula credentials file {}: No such file or directory (os error 2)\n",
            auth.display()
        )
    );
    assert!(!target.exists());
    // A malformed URL is reported by the downloader, not copied as an empty image.
    let out = run(
        r.join("datastore/downloader.sh"),
        &["backstop://100///x/disk.0.0", "-"],
        b"",
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.starts_with(
            "backstop_downloader: backup URL \"backstop://100///x/disk.0.0\" has no increment chain"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn the_tree_works_when_copied_to_a_hosts_remote_dir() {
    // oned copies the remotes tree to /var/tmp/one on hosts; the shims find the binary
    // relative to themselves, so any copy of the tree works.
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    assert_eq!(install_sh(&r, &[]).code, Some(0));
    let host = dir.path().join("var/tmp/one");
    fs::create_dir_all(host.parent().expect("parent")).expect("mkdir");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&r)
        .arg(&host)
        .status()
        .expect("cp");
    assert!(cp.success());
    fs::remove_dir_all(&r).expect("remove original");
    let out = run(host.join("datastore/backstop/clone"), &["1"], b"");
    assert_eq!(out.stderr, "clone: Operation not supported\n");
}

#[test]
fn one_location_sets_the_default_remotes_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(repo_root().join("install.sh"))
        .args(["--binary", BACKSTOP])
        .env("ONE_LOCATION", dir.path())
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "{out:?}");
    let shim = dir.path().join("var/remotes/datastore/backstop/monitor");
    assert!(shim.is_file(), "nothing at {}", shim.display());
}

/// `--with-services`: systemd units for the scheduler and `serve` that `systemd-analyze verify`
/// accepts, an environment file made 0600 and never overwritten, a foreign unit refused, and
/// `--uninstall` removing the units (the environment file stays).
#[test]
fn services_are_written_verified_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);
    let sd = dir.path().join("systemd");
    let env = dir.path().join("etc/backstop.env");
    let args = [
        "--with-services",
        "--systemd-dir",
        sd.to_str().expect("utf-8"),
        "--env-file",
        env.to_str().expect("utf-8"),
    ];
    // A dry run names the units and the environment file, and writes neither (nor the tree).
    let dry = install_sh(&r, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert!(
        dry.stdout.contains(&format!(
            "wrote {}",
            sd.join("backstop-scheduler.service").display()
        )) && dry
            .stdout
            .contains(&format!("wrote {} (settings", env.display())),
        "{}",
        dry.stdout
    );
    assert!(
        !sd.exists() && !env.exists(),
        "--dry-run wrote the services"
    );
    assert_eq!(contents(&r), before, "--dry-run changed the tree");
    let out = install_sh(&r, &args);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(
            "systemctl daemon-reload && systemctl enable --now backstop-scheduler.service backstop-web.service"
        ),
        "{}",
        out.stdout
    );
    let bin = r.join("backstop/bin/backstop");
    let scheduler = fs::read_to_string(sd.join("backstop-scheduler.service")).expect("unit");
    assert!(
        scheduler.contains(&format!(
            "ExecStart={} backupjob --remotes {} scheduler --loop",
            bin.display(),
            r.display()
        )) && scheduler.contains("User=oneadmin")
            && scheduler.contains(&format!("EnvironmentFile=-{}", env.display())),
        "{scheduler}"
    );
    let web = fs::read_to_string(sd.join("backstop-web.service")).expect("unit");
    assert!(
        web.contains(&format!("ExecStart={} serve", bin.display())),
        "{web}"
    );
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(sd.join("backstop-scheduler.service"))
        .arg(sd.join("backstop-web.service"))
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !said.contains("backstop-"),
        "systemd-analyze verify: {said}"
    );
    assert_eq!(
        fs::metadata(&env).expect("env").permissions().mode() & 0o777,
        0o600
    );
    // The operator's settings survive a second install.
    let mut text = fs::read_to_string(&env).expect("env");
    text.push_str("BACKSTOP_LISTEN=127.0.0.1:9000\n");
    fs::write(&env, &text).expect("env");
    let out = install_sh(&r, &args);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(fs::read_to_string(&env).expect("env"), text);
    // A unit of the same name that is not backstop's is not replaced.
    let foreign = dir.path().join("foreign");
    fs::create_dir_all(&foreign).expect("dir");
    fs::write(
        foreign.join("backstop-web.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .expect("unit");
    let out = install_sh(
        &r,
        &[
            "--with-services",
            "--systemd-dir",
            foreign.to_str().expect("utf-8"),
            "--env-file",
            env.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("exists and is not backstop's"),
        "{out:?}"
    );
    // The refused install recorded nothing new: uninstall removes the units it wrote.
    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert!(!sd.join("backstop-scheduler.service").exists());
    assert!(!sd.join("backstop-web.service").exists());
    assert!(env.exists(), "the environment file stays");
    assert_eq!(contents(&r), before, "uninstall did not restore the tree");
}

/// The account that owns the remotes tree in the tests below (oneadmin on a front-end): any
/// uid but root's; no such user needs to exist.
const TREE_OWNER: u32 = 4242;

fn is_root() -> bool {
    // The effective uid, as /proc reports it.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `chown -R` to the tree's owner, links included (as the owner would have made them).
fn give_to_owner(path: &std::path::Path) {
    let out = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{TREE_OWNER}:{TREE_OWNER}")])
        .arg(path)
        .output()
        .expect("chown");
    assert!(out.status.success(), "{out:?}");
}

/// A root-only file outside the tree, and its content.
fn root_only_file(path: &std::path::Path, content: &str) {
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn assert_untouched(path: &std::path::Path, content: &str) {
    let m = fs::symlink_metadata(path).expect("victim");
    assert_eq!(
        fs::read_to_string(path).expect("victim"),
        content,
        "{} was written",
        path.display()
    );
    assert_eq!(
        (m.permissions().mode() & 0o7777, m.uid()),
        (0o600, 0),
        "{} changed mode or owner",
        path.display()
    );
}

/// Issue 23: root runs install.sh over a tree another account owns, which planted links where
/// the installer writes: a link at a temporary name the installer used (root wrote the tree's
/// downloader.sh through it into a root-only file, and made it executable), and a linked
/// directory where the shims go (root wrote them into the directory it names). Nothing outside
/// the tree changes; what the installer cannot do safely is refused in one line; in a clean tree
/// owned by that account, everything the installer creates belongs to that account.
#[test]
fn root_never_writes_through_links_the_trees_owner_planted() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("root-only");
    root_only_file(&victim, "ROOT'S OWN\n");
    let elsewhere = dir.path().join("cron.d");
    fs::create_dir(&elsewhere).expect("mkdir");

    // A link where the old installer put its temporary copy of downloader.sh.
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    std::os::unix::fs::symlink(&victim, r.join("datastore/.downloader.sh.backstop-tmp"))
        .expect("link");
    give_to_owner(&r);
    // A set-uid bit the owner put on its downloader.sh: root must not write a set-uid file of
    // the owner's text.
    fs::set_permissions(
        r.join("datastore/downloader.sh"),
        fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    let out = install_sh(&r, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_untouched(&victim, "ROOT'S OWN\n");
    let patched = fs::metadata(r.join("datastore/downloader.sh")).expect("downloader.sh");
    assert_eq!(patched.permissions().mode() & 0o7777, 0o755);
    // The tree's new files belong to its owner.
    for made in [
        "backstop/bin/backstop",
        "backstop/manifest",
        "datastore/backstop/backup",
        "datastore/downloader.sh",
    ] {
        let m = fs::symlink_metadata(r.join(made)).expect(made);
        assert_eq!((m.uid(), m.gid()), (TREE_OWNER, TREE_OWNER), "{made}");
    }
    let m = fs::symlink_metadata(r.join("datastore/backstop")).expect("dir");
    assert_eq!(m.uid(), TREE_OWNER, "datastore/backstop");

    // A linked directory where the shims go: refused, nothing written through it.
    let r2 = dir.path().join("remotes2");
    stock_remotes(&r2);
    fs::create_dir_all(r2.join("datastore")).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, r2.join("datastore/backstop")).expect("link");
    give_to_owner(&r2);
    let out = install_sh(&r2, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "backstop is a symbolic link; the installer does not follow links inside the tree"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(
        fs::read_dir(&elsewhere).expect("dir").count(),
        0,
        "the installer wrote into the directory a link in the tree named"
    );

    // The tree itself reached through a link in a directory its owner can change: refused.
    let home = dir.path().join("one");
    fs::create_dir(&home).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, home.join("remotes")).expect("link");
    give_to_owner(&home);
    let out = install_sh(&home.join("remotes"), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("remotes is a symbolic link in a directory that uid 4242"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read_dir(&elsewhere).expect("dir").count(), 0);
}

/// Issue 23: the tree's owner edits `backstop/manifest` to name a path outside the tree; root's
/// `--uninstall` used to move the owner's file there (`replaced ../<name>`). Now every line must
/// name a file the installer writes, or nothing is done.
#[test]
fn root_uninstall_acts_on_no_path_the_manifest_smuggles_in() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    give_to_owner(&r);
    assert_eq!(install_sh(&r, &[]).code, Some(0));
    // What the owner stages (r/backstop/cron-job), and the line that made the old uninstall
    // rename r/backstop/replaced/../cron-job to r/../cron-job: beside the tree, where only root
    // may write (standing for /etc/cron.d).
    fs::create_dir_all(r.join("backstop/replaced")).expect("mkdir");
    fs::write(r.join("backstop/cron-job"), "* * * * * root /tmp/evil\n").expect("write");
    let manifest = r.join("backstop/manifest");
    let mut text = fs::read_to_string(&manifest).expect("manifest");
    text.push_str("replaced ../cron-job\n");
    fs::write(&manifest, &text).expect("manifest");
    give_to_owner(&r);
    let out = install_sh(&r, &["--uninstall"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "install: {} names \"../cron-job\", which is not a file backstop installs; refusing to act on it (was the manifest edited?)\n",
            manifest.display()
        )
    );
    assert!(
        !dir.path().join("cron-job").exists(),
        "uninstall moved the owner's file out of the tree"
    );
    assert!(
        r.join("backstop/bin/backstop").exists(),
        "nothing was removed"
    );
}

/// Issue 23: `install.sh --uninstall` without --binary ran `backstop/bin/backstop` from the
/// tree, which its owner can replace; as root it never does.
#[test]
fn root_uninstall_never_runs_the_trees_executable() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    assert_eq!(install_sh(&r, &[]).code, Some(0));
    let ran = dir.path().join("ran-as-root");
    write_exec(
        &r.join("backstop/bin/backstop"),
        &format!("#!/bin/sh\ntouch {}\n", ran.display()),
    );
    give_to_owner(&r);
    // No cargo on the PATH: install.sh cannot build one of its own either.
    let out = run_env(
        repo_root().join("install.sh"),
        &["--uninstall", "--remotes-dir", r.to_str().expect("utf-8")],
        b"",
        &[("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")],
    );
    assert!(
        !ran.exists(),
        "install.sh ran the tree's executable as root"
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "install.sh: as root, --uninstall does not run {}/backstop/bin/backstop: another account can change it or a directory above it, or a link is on its path; pass --binary FILE with a backstop you trust, or run --uninstall as that account\n",
            r.display()
        )
    );
}

/// `--services-only`: the root step alone writes the units and the environment file, and of the
/// tree only the record of what it wrote; the drivers are installed apart (as the tree's owner).
#[test]
fn services_only_writes_the_units_and_nothing_of_the_drivers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);
    let sd = dir.path().join("systemd");
    let env = dir.path().join("etc/backstop.env");
    let out = install_sh(
        &r,
        &[
            "--services-only",
            "--systemd-dir",
            sd.to_str().expect("utf-8"),
            "--env-file",
            env.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(sd.join("backstop-scheduler.service").is_file());
    assert!(sd.join("backstop-web.service").is_file());
    assert!(env.is_file());
    let mut after = contents(&r);
    assert!(after.remove("backstop/services").is_some(), "no record");
    assert!(after.remove("backstop").is_some());
    assert_eq!(after, before, "--services-only changed the drivers");
}

/// PATH without cargo: install.sh can build nothing, so a flag error that comes first proves the
/// flags are checked before any build.
const NO_CARGO: (&str, &str) = ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");

#[test]
fn install_sh_checks_every_flag_before_it_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);
    let remotes = r.to_str().expect("utf-8");
    for (args, said) in [
        (
            vec!["--with-tmm"],
            "install.sh: unknown option --with-tmm; see ./install.sh --help\n",
        ),
        (
            vec!["--remotes-dir"],
            "install.sh: --remotes-dir needs a value; see ./install.sh --help\n",
        ),
        (
            vec!["--binary", "--with-tm"],
            "install.sh: --binary needs a value; see ./install.sh --help\n",
        ),
        (
            vec!["--with-tm=yes"],
            "install.sh: --with-tm takes no value; see ./install.sh --help\n",
        ),
        (
            vec!["--uninstall", "--with-tm"],
            "install.sh: --uninstall cannot be used with --with-tm; see ./install.sh --help\n",
        ),
        (
            vec!["--check", "--uninstall"],
            "install.sh: --check and --uninstall cannot be used together; see ./install.sh --help\n",
        ),
        (
            vec!["--services-only", "--replace-stock"],
            "install.sh: --services-only cannot be used with --replace-stock; see ./install.sh --help\n",
        ),
        (
            vec!["--check", "--dry-run"],
            "install.sh: --check changes nothing already; it takes no --dry-run; see ./install.sh --help\n",
        ),
    ] {
        let mut all = vec!["--remotes-dir", remotes];
        all.extend(&args);
        let out = run_env(repo_root().join("install.sh"), &all, b"", &[NO_CARGO]);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr, said, "{args:?}");
        assert_eq!(out.stdout, "", "{args:?}");
    }
    assert_eq!(contents(&r), before, "a refused flag changed the tree");
    // Help needs no build either.
    let help = run_env(
        repo_root().join("install.sh"),
        &["--help"],
        b"",
        &[NO_CARGO],
    );
    assert_eq!(help.code, Some(0), "{help:?}");
    assert!(help.stdout.contains("--dry-run"), "{}", help.stdout);
}

/// `--dry-run` runs the whole install (drop-in and TM replacement included) and the uninstall
/// in memory: it says what a real one then says, and not one byte of the tree changes.
#[test]
fn dry_run_says_what_would_change_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = snapshot(&r);
    let stock = contents(&r);
    let flags = ["--replace-stock", "--with-tm"];
    let dry = install_sh(&r, &[&flags[..], &["--dry-run"]].concat());
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert_eq!(snapshot(&r), before, "--dry-run changed the tree");
    assert!(dry.stdout.starts_with(&format!(
        "dry run: nothing is changed; an install into {} would say:\n",
        r.display()
    )));
    assert!(
        dry.stdout.contains("(dry run: nothing was changed)"),
        "{}",
        dry.stdout
    );
    let real = install_sh(&r, &flags);
    assert_eq!(real.code, Some(0), "{real:?}");
    // The change lines of the dry run are those of the real install, in order.
    let changes = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                l.starts_with("wrote ") || l.starts_with("kept ") || l.starts_with("patched ")
            })
            .map(str::to_string)
            .collect()
    };
    assert!(changes(&real.stdout).len() > 20, "{}", real.stdout);
    assert_eq!(changes(&dry.stdout), changes(&real.stdout));

    // Once installed, a dry run of the same install has nothing to do.
    let installed = snapshot(&r);
    let again = install_sh(&r, &[&flags[..], &["--dry-run"]].concat());
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(again.stdout.contains("nothing changed"), "{}", again.stdout);
    assert_eq!(snapshot(&r), installed);

    // The uninstall's dry run: the same lines as the real one, and the tree as it was.
    let dry_gone = install_sh(&r, &["--uninstall", "--dry-run"]);
    assert_eq!(dry_gone.code, Some(0), "{dry_gone:?}");
    assert_eq!(
        snapshot(&r),
        installed,
        "--uninstall --dry-run changed the tree"
    );
    let gone = install_sh(&r, &["--uninstall"]);
    assert_eq!(gone.code, Some(0), "{gone:?}");
    let steps = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("removed ") || l.starts_with("restored "))
            .map(str::to_string)
            .collect()
    };
    assert!(steps(&gone.stdout).len() > 20, "{}", gone.stdout);
    assert_eq!(steps(&dry_gone.stdout), steps(&gone.stdout));
    assert!(
        contents(&r) == stock,
        "uninstall did not restore the stock tree"
    );
}

/// A directory for a tree that nobody but this user or root can change all the way up (the
/// test's temporary directories live under /tmp, which everyone can write).
fn trusted_parent() -> Option<std::path::PathBuf> {
    // /proc/self belongs to the process's effective uid.
    let me = fs::metadata("/proc/self").ok()?.uid();
    let ok = |p: &std::path::Path| {
        p.ancestors().all(|a| {
            fs::metadata(a).is_ok_and(|m| (m.uid() == 0 || m.uid() == me) && m.mode() & 0o022 == 0)
        })
    };
    [
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        std::path::PathBuf::from(std::env::var_os("HOME")?),
    ]
    .into_iter()
    .find(|p| ok(p))
}

/// `--uninstall` and `--check` need no cargo when the installed executable sits in a tree only
/// this user (or root) can change: they run it.
#[test]
fn uninstall_and_check_need_no_cargo_when_the_installed_executable_is_trusted() {
    let Some(parent) = trusted_parent() else {
        eprintln!("skipped: no directory here that only this user or root can change");
        return;
    };
    let dir = tempfile::tempdir_in(parent).expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = dir.path().join("remotes");
    stock_remotes(&r);
    let before = contents(&r);
    assert_eq!(install_sh(&r, &["--with-tm"]).code, Some(0));
    let remotes = r.to_str().expect("utf-8");
    // A link on the way is never followed, even to a file only root could have written:
    // whoever owns the link's directory could point it at any program.
    let bin = r.join("backstop/bin/backstop");
    let real = dir.path().join("elsewhere-backstop");
    fs::rename(&bin, &real).expect("move");
    std::os::unix::fs::symlink(&real, &bin).expect("link");
    let linked = run_env(
        repo_root().join("install.sh"),
        &["--check", "--remotes-dir", remotes],
        b"",
        &[NO_CARGO],
    );
    assert_eq!(linked.code, Some(2), "{linked:?}");
    assert!(
        linked.stderr.contains("a link is on its path"),
        "{linked:?}"
    );
    fs::remove_file(&bin).expect("unlink");
    fs::rename(&real, &bin).expect("move back");
    let check = run_env(
        repo_root().join("install.sh"),
        &["--check", "--remotes-dir", remotes],
        b"",
        &[NO_CARGO],
    );
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.stdout.contains("are in place"), "{}", check.stdout);
    let gone = run_env(
        repo_root().join("install.sh"),
        &["--uninstall", "--remotes-dir", remotes],
        b"",
        &[NO_CARGO],
    );
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert!(
        gone.stdout.contains("backstop is uninstalled"),
        "{}",
        gone.stdout
    );
    assert_eq!(
        contents(&r),
        before,
        "uninstall did not restore the stock tree"
    );
}

/// The Debian package (`cargo deb`, built by CI, which sets BACKSTOP_DEB) installed with dpkg
/// into a root of its own (`--root`, the maintainer scripts run with DPKG_ROOT) holding a
/// stock-like OpenNebula tree and oned.conf: the drivers go in side by side, oned.conf is left
/// as it was and what it needs is printed; removing the package puts the tree back as it was.
#[test]
fn the_debian_package_installs_side_by_side_and_comes_out_cleanly() {
    let Some(deb) = std::env::var_os("BACKSTOP_DEB") else {
        eprintln!("skipped: BACKSTOP_DEB names no package (CI builds one with cargo deb)");
        return;
    };
    if !is_root() {
        eprintln!("skipped: dpkg needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/one"] {
        fs::create_dir_all(root.join(d)).expect("dpkg dirs");
    }
    fs::write(root.join("var/lib/dpkg/status"), "").expect("status");
    let remotes = root.join("var/lib/one/remotes");
    stock_remotes(&remotes);
    let before = contents(&remotes);
    let conf = root.join("etc/one/oned.conf");
    let conf_text = "DATASTORE_MAD = [\n    EXECUTABLE = \"one_datastore\",\n    ARGUMENTS  = \"-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp,purefa,virtiofs,interactive -s dummy,lvm,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp,purefa\"\n]\nDATASTORE_ENCRYPTED_ATTR = \"RESTIC_PASSWORD\"\n";
    fs::write(&conf, conf_text).expect("oned.conf");
    let dpkg = |args: &[&str]| {
        let mut all = vec![
            "--root",
            root.to_str().expect("utf-8"),
            "--force-script-chrootless",
            "--force-depends",
            "--log",
            "/dev/null",
        ];
        all.extend_from_slice(args);
        crate::support::run("dpkg", &all, b"")
    };
    let out = dpkg(&["-i", deb.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("DS_MAD_CONF = [ NAME = \"backstop\"")
            && out.stdout.contains("oned.conf was not changed"),
        "{}",
        out.stdout
    );
    assert_eq!(fs::read_to_string(&conf).expect("oned.conf"), conf_text);
    let shim = fs::read_to_string(remotes.join("datastore/backstop/backup")).expect("shim");
    assert!(shim.contains("backstop-shim"), "{shim}");
    assert!(remotes.join("backstop/bin/backstop").is_file());
    assert!(root.join("usr/bin/backstop").is_file());
    assert!(
        root.join("lib/systemd/system/backstop-scheduler.service")
            .is_file()
    );
    // The installed executable works.
    let version = crate::support::run(root.join("usr/bin/backstop"), &["--version"], b"");
    assert!(version.stdout.starts_with("backstop "), "{version:?}");

    let out = dpkg(&["-r", "backstop"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        contents(&remotes) == before,
        "removing the package did not put the stock tree back"
    );
    assert!(!root.join("usr/bin/backstop").exists());
    assert!(
        !root
            .join("lib/systemd/system/backstop-scheduler.service")
            .exists()
    );
    assert!(!root.join("var/lib/backstop").exists());
    assert_eq!(fs::read_to_string(&conf).expect("oned.conf"), conf_text);
}
