//! The operator's guide (docs/guide/) run as written: every ```sh block of a page, in order, in
//! one bash (`set -euo pipefail`), in a stage that stands for the operator's machine: the
//! installed remotes tree, the runner's state, real qcow2 disks, real restic. The commands are
//! the page's own; only two things are the test's:
//! - a line `NAME=value   # yours: ...` (a value the reader chooses) gets the stage's value for
//!   NAME;
//! - at `<!-- test: ... -->` between blocks, the stage does what the page says happens there
//!   (the reader fixes something), then the blocks go on.
//!
//! A page in docs/guide/ with `sh` blocks and no test here fails
//! `every_guide_page_is_run_by_a_test`.

use crate::support::{self, BACKSTOP};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The pages with commands, each run by the test of the same name.
const PAGES: &[&str] = &[
    "second-copy.md",
    "password.md",
    "backup-failed.md",
    "install.md",
    "first-backup.md",
    "restore.md",
];

fn guide_dir() -> PathBuf {
    support::repo_root().join("docs/guide")
}

/// The runnable parts of a page: the `sh` blocks, split where a `<!-- test: ... -->` comment
/// stands between them.
fn segments(page: &str) -> Vec<Vec<String>> {
    let mut segments = vec![Vec::new()];
    let mut block: Option<String> = None;
    for line in page.lines() {
        match &mut block {
            None if line.trim_start().starts_with("<!-- test:") => segments.push(Vec::new()),
            None if line.trim_end() == "```sh" => block = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => {
                let done = block.take().expect("block");
                segments.last_mut().expect("a segment").push(done);
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(block.is_none(), "a ```sh block is not closed");
    segments
}

/// `line` with the stage's value when it sets a value the reader chooses (`# yours`).
fn yours(line: &str, values: &BTreeMap<&str, String>) -> String {
    let Some((assign, comment)) = line.split_once("# yours") else {
        return line.to_string();
    };
    let Some((name, _)) = assign.split_once('=') else {
        return line.to_string();
    };
    let name = name.trim();
    let value = values.get(name).unwrap_or_else(|| {
        panic!("the page lets the reader choose {name}, and the test has no value for it")
    });
    format!("{name}={value}   # yours{comment}")
}

/// A stand-in for the operator's front-end: the tree, the state, the disks, the tools.
struct Stage {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    values: BTreeMap<&'static str, String>,
}

impl Stage {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bj(&self, args: &[&str]) -> support::Outcome {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut all = vec!["backupjob"];
        all.extend_from_slice(args);
        support::run_env(BACKSTOP, &all, b"", &env)
    }

    fn bj_ok(&self, args: &[&str]) -> String {
        let out = self.bj(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        out.stdout
    }

    /// Runs the page, segment after segment, `between` after each segment but the last with
    /// what that segment printed. The segments are one reader's shell session: the variables
    /// and functions a segment defines, and the directory it ends in, are the next one's.
    fn run_page(&self, name: &str, mut between: impl FnMut(&Stage, &str)) {
        let page = fs::read_to_string(guide_dir().join(name)).expect("page");
        let work = self.path("work");
        fs::create_dir_all(&work).expect("work");
        let segments = segments(&page);
        assert!(
            segments.iter().any(|s| !s.is_empty()),
            "{name} has no sh block"
        );
        let session = self.path(&format!("{name}.session"));
        let last = segments.len() - 1;
        for (i, blocks) in segments.iter().enumerate() {
            let mut script = String::from("set -euo pipefail\n");
            script.push_str("__before=\" $(compgen -v | tr '\\n' ' ') \"\n");
            if i > 0 {
                script.push_str(&format!(". '{}'\n", session.display()));
            }
            for (k, b) in blocks.iter().enumerate() {
                script.push_str(&format!("echo '# {name}: block {}' >&2\n", k + 1));
                for line in b.lines() {
                    script.push_str(&yours(line, &self.values));
                    script.push('\n');
                }
            }
            // What the next segment starts from: the variables this one set, its functions,
            // its directory.
            script.push_str(&format!(
                "{{ for __v in $(compgen -v); do case \"$__before\" in *\" $__v \"*) ;; *) \
                 case \"$__v\" in __*|_|BASH*|FUNCNAME|PIPESTATUS|OPT*) ;; *) declare -p \"$__v\" ;; esac ;; \
                 esac; done; declare -f; \
                 printf 'cd %q\\n' \"$PWD\"; }} > '{}'\n",
                session.display()
            ));
            let file = self.path(&format!("{name}.{i}.sh"));
            fs::write(&file, &script).expect("script");
            let env: Vec<(&str, &str)> = self
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let out = std::process::Command::new("bash")
                .arg(&file)
                .current_dir(&work)
                .envs(env)
                .output()
                .expect("bash");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name}, part {}: {}\n--- stdout\n{stdout}\n--- stderr\n{}\n--- script\n{script}",
                i + 1,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            if i < last {
                between(self, &stdout);
            }
        }
    }
}

/// What `./quickstart.sh DIR` makes, built the same way with the test's binary: the remotes
/// tree installed by install.sh (with backstop's qcow2 prebackup and postbackup), VM 7 with two
/// qcow2 disks on this machine, backup datastore 1 on a local directory, backup job 1
/// (INCREMENT) run twice with the disks changed in between. With `vm8_host`, VM 8 (one disk, on
/// that host) is in job 1 too.
fn quickstart_stage(vm8_host: Option<&str>) -> Stage {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let remotes = root.join("remotes");
    fs::create_dir_all(remotes.join("datastore")).expect("remotes");
    support::write_exec(
        &remotes.join("datastore/downloader.sh"),
        support::DOWNLOADER_SH,
    );
    let out = support::install_sh(&remotes, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    fs::create_dir_all(remotes.join("tm/qcow2")).expect("tm");
    for action in ["prebackup", "postbackup", "restore"] {
        std::os::unix::fs::symlink(
            "../../backstop/bin/backstop",
            remotes.join("tm/qcow2").join(action),
        )
        .expect("tm link");
    }
    fs::create_dir_all(remotes.join("etc/datastore")).expect("etc");
    fs::write(
        remotes.join("etc/datastore/backstop.conf"),
        format!(
            "SCRIPTS_REMOTE_DIR={}\nRUN_DIR={}\nTM_DELIVERY=direct\n",
            remotes.display(),
            root.join("run").display()
        ),
    )
    .expect("backstop.conf");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("bin");
    std::os::unix::fs::symlink(BACKSTOP, bin.join("backstop")).expect("bin/backstop");
    let location = root.join("datastores");
    let env = vec![
        (
            "PATH".to_string(),
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        (
            "BACKSTOP_STATE".into(),
            root.join("state.db").display().to_string(),
        ),
        ("BACKSTOP_REMOTES".into(), remotes.display().to_string()),
        (
            "BACKSTOP_DATASTORE_LOCATION".into(),
            location.display().to_string(),
        ),
        ("HOME".into(), root.join("home").display().to_string()),
    ];
    fs::create_dir_all(root.join("home")).expect("home");
    let values = BTreeMap::from([
        ("OFFSITE", root.join("offsite").display().to_string()),
        ("COPY_PASSWORD", "copies-password-of-the-test".to_string()),
        ("NEW_PASSWORD", "the-new-password-of-the-test".to_string()),
        ("BACKUPS", root.join("backups").display().to_string()),
    ]);
    let stage = Stage { dir, env, values };

    let qemu = |args: &[&str]| {
        let out = support::run(args[0], &args[1..], b"");
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
    };
    let vm7 = location.join("0/7");
    fs::create_dir_all(&vm7).expect("vm dir");
    let d = |n: u32| vm7.join(format!("disk.{n}")).display().to_string();
    qemu(&["qemu-img", "create", "-q", "-f", "qcow2", &d(0), "64M"]);
    qemu(&["qemu-img", "create", "-q", "-f", "qcow2", &d(1), "32M"]);
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 8M", &d(0)]);
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 6M", &d(1)]);
    let doc = |id: u32, host: &str, disks: &str| {
        format!(
            "<VM><ID>{id}</ID><UID>0</UID><NAME>vm-{id}</NAME><STATE>8</STATE><LCM_STATE>0</LCM_STATE>\
             <DEPLOY_ID>one-{id}</DEPLOY_ID><TEMPLATE>{disks}</TEMPLATE><USER_TEMPLATE/>\
             <HISTORY_RECORDS><HISTORY><HOSTNAME>{host}</HOSTNAME><HID>0</HID><DS_ID>0</DS_ID>\
             <TM_MAD>qcow2</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS></VM>"
        )
    };
    let disk = |id: u32, mb: u32| {
        format!(
            "<DISK><DISK_ID>{id}</DISK_ID><FORMAT>qcow2</FORMAT><SIZE>{mb}</SIZE><TYPE>FILE</TYPE>\
             <TARGET>vd{}</TARGET></DISK>",
            ["a", "b"][id as usize]
        )
    };
    let vm7_xml = stage.path("vm7.xml");
    fs::write(
        &vm7_xml,
        doc(7, "localhost", &format!("{}{}", disk(0, 64), disk(1, 32))),
    )
    .expect("vm7.xml");
    let ds = stage.path("datastore.tmpl");
    fs::write(
        &ds,
        format!(
            "NAME = \"local-backups\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{}\"\nRESTIC_PASSWORD = \"quickstart-password\"\n",
            root.join("backups").display()
        ),
    )
    .expect("datastore.tmpl");
    stage.bj_ok(&["datastore", "create", ds.to_str().expect("utf-8")]);
    stage.bj_ok(&["vm", "register", vm7_xml.to_str().expect("utf-8")]);
    let mut vms = "7".to_string();
    if let Some(host) = vm8_host {
        let vm8 = location.join("0/8");
        fs::create_dir_all(&vm8).expect("vm8 dir");
        let d8 = vm8.join("disk.0").display().to_string();
        qemu(&["qemu-img", "create", "-q", "-f", "qcow2", &d8, "16M"]);
        qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x88 0 2M", &d8]);
        let vm8_xml = stage.path("vm8.xml");
        fs::write(&vm8_xml, doc(8, host, &disk(0, 16))).expect("vm8.xml");
        stage.bj_ok(&["vm", "register", vm8_xml.to_str().expect("utf-8")]);
        // The document as it will be once the VM's host answers again.
        fs::write(
            stage.path("vm8-fixed.xml"),
            doc(8, "localhost", &disk(0, 16)),
        )
        .expect("vm8-fixed.xml");
        vms.push_str(",8");
    }
    stage.bj_ok(&[
        "create",
        "--name",
        "quickstart",
        "--vms",
        &vms,
        "--datastore",
        "1",
        "--mode",
        "INCREMENT",
        "--keep",
        "2",
    ]);
    let backup = |stage: &Stage| {
        let out = stage.bj(&["backup", "1"]);
        assert_eq!(
            out.code,
            Some(if vm8_host.is_some() { 1 } else { 0 }),
            "{out:?}"
        );
    };
    backup(&stage);
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 3M", &d(0)]);
    backup(&stage);
    stage
}

#[test]
fn second_copy() {
    let stage = quickstart_stage(None);
    stage.run_page("second-copy.md", |_, _| {});
    // The copy restores as the original: the latest snapshot's disk, byte for byte.
    let out = support::run_env(
        "restic",
        &[
            "-r",
            stage.path("offsite/job_1").to_str().expect("utf-8"),
            "snapshots",
            "--json",
        ],
        b"",
        &[("RESTIC_PASSWORD", "copies-password-of-the-test")],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let copies: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(copies.as_array().map(Vec::len), Some(2), "{copies}");
    let verify: serde_json::Value =
        serde_json::from_str(&stage.bj_ok(&["verify-job", "show", "1", "--json"]))
            .expect("verify json");
    let snapshots = verify["snapshots"].as_array().expect("snapshots");
    assert!(
        !snapshots.is_empty() && snapshots.iter().all(|s| s["ok"] == true),
        "{verify}"
    );
}

#[test]
fn password() {
    let stage = quickstart_stage(None);
    stage.run_page("password.md", |_, _| {});
    // The old password opens nothing any more; the new one everything, a new backup included.
    let repo = stage.path("backups/job_1").display().to_string();
    let old = support::run_env(
        "restic",
        &["-r", &repo, "snapshots"],
        b"",
        &[("RESTIC_PASSWORD", "quickstart-password")],
    );
    assert_ne!(
        old.code,
        Some(0),
        "the old password still opens it: {old:?}"
    );
    let new = support::run_env(
        "restic",
        &["-r", &repo, "snapshots", "--json"],
        b"",
        &[("RESTIC_PASSWORD", "the-new-password-of-the-test")],
    );
    let snaps: serde_json::Value = serde_json::from_str(&new.stdout).expect("json");
    // KEEP_LAST = 2: the page's backup is the newest of the two kept.
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{new:?}");
}

#[test]
fn backup_failed() {
    // VM 8's host: an address of this machine where nothing answers ssh.
    let stage = quickstart_stage(Some("127.0.0.9"));
    let show = stage.bj_ok(&["show", "1"]);
    assert!(show.contains("ERROR    : 8"), "{show}");
    stage.run_page("backup-failed.md", |stage, _| {
        // The host answers again: here, the VM is on this machine now.
        stage.bj_ok(&[
            "vm",
            "register",
            stage.path("vm8-fixed.xml").to_str().expect("utf-8"),
        ]);
    });
    let show = stage.bj_ok(&["show", "1"]);
    assert!(show.contains("UPDATED  : 7,8"), "{show}");
}

/// The pages that need OpenNebula itself, on a REAL oned 7.4.0 with backstop installed (see
/// oned_real.rs; not run without `BACKSTOP_ONED_REFERENCE`): first-backup.md makes a backup
/// datastore, backs a powered-off VM up with `onevm backup` and dumps its disk with plain
/// restic (equal to the disk); the VM changes and oned backs it up again (increment 1), then
/// its disk is damaged; restore.md brings the newest point back as a new VM (its image equal to
/// the point, the VM running), the oldest point's disk as an image (equal to it), and the
/// newest point in place (the damaged disk equal to the point again).
#[test]
fn real_oned_first_backup_and_restore() {
    use crate::oned_real::{RealOned, first, make_image, raw_copy, values, write_pattern};
    // Installed as install.md installs (side by side, the stock TM actions).
    let Some(o) = RealOned::start(false) else {
        return;
    };
    let image = o.images.path().join("web.qcow2");
    make_image(&image);
    let vm = o.stopped_vm("web", &image);
    let disk = o.vm_disk(vm);
    let point = |k: u32| o.images.path().join(format!("point-{k}.raw"));
    raw_copy(&disk, &point(0));
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    fs::create_dir_all(&home).expect("home");
    let password = dir.path().join("password");
    fs::write(&password, "the-guide-s-datastore-password\n").expect("password");
    let check = dir.path().join("check");
    let mut env = o.env().to_vec();
    env.push(("HOME".into(), home.display().to_string()));
    let mut stage = Stage {
        dir,
        env,
        values: BTreeMap::from([
            ("VM", vm.to_string()),
            ("PASSWORD_FILE", password.display().to_string()),
            ("CHECK_DIR", check.display().to_string()),
        ]),
    };

    stage.run_page("first-backup.md", |_, _| {});
    // What plain restic restored under CHECK_DIR (at the snapshot's own path) is the disk.
    let find = support::run(
        "find",
        &[
            check.to_str().expect("utf-8"),
            "-type",
            "f",
            "-name",
            "disk.0.*",
        ],
        b"",
    );
    let restored: Vec<&str> = find.stdout.lines().collect();
    assert_eq!(restored.len(), 1, "{find:?}");
    assert!(
        fs::read(restored[0]).expect("the restored disk") == fs::read(point(0)).expect("point 0"),
        "restic's restore is the disk as it was"
    );
    let ds = first(&o.xml("onedatastore", "backups"), "ID");
    let bimg = |o: &RealOned| {
        let xml = o.xml("onevm", &vm.to_string());
        values(&values(&xml, "BACKUP_IDS")[0], "ID")
            .last()
            .cloned()
            .expect("a backup image")
    };
    let backup_image = bimg(&o);
    // A second point, then the disk damaged.
    write_pattern(&disk, 0x6c, 20 << 20, 2 << 20);
    raw_copy(&disk, &point(1));
    o.backup(vm, &ds, 1, &[]);
    assert_eq!(bimg(&o), backup_image, "an increment of the same image");
    write_pattern(&disk, 0x99, 0, 4 << 20);

    let before: Vec<String> = values(&o.cli_ok("oneimage", &["list", "-x"]), "IMAGE")
        .iter()
        .map(|i| first(i, "ID"))
        .collect();
    stage.values.insert("IMAGE", backup_image.clone());
    stage.values.insert("IMAGE_DS", "1".into());
    stage.run_page("restore.md", |_, _| {});

    // The new images: the whole VM's (newest point) and the one disk's (oldest point).
    let new: Vec<(String, String)> = values(&o.cli_ok("oneimage", &["list", "-x"]), "IMAGE")
        .iter()
        .filter(|i| !before.contains(&first(i, "ID")) && first(i, "TYPE") == "0")
        .map(|i| (first(i, "NAME"), first(i, "SOURCE")))
        .collect();
    assert_eq!(new.len(), 2, "{new:?}");
    for (name, source) in &new {
        let want = if name.contains("disk0-first") { 0 } else { 1 };
        crate::stock::compare(Path::new(source), &point(want));
    }
    // The restored VM runs; the original's disk is the newest point again.
    let vms = o.cli_ok("onevm", &["list", "-x"]);
    let restored = values(&vms, "VM")
        .into_iter()
        .find(|v| first(v, "NAME") == format!("vm{vm}-restored"))
        .unwrap_or_else(|| panic!("no restored VM in {vms}"));
    let id: u64 = first(&restored, "ID").parse().expect("id");
    o.wait("the restored VM running", 120, Some(id), || {
        o.vm_state(id).1 == "3"
    });
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-U", "-f", "qcow2", "-F", "raw"])
        .arg(&disk)
        .arg(point(1))
        .status()
        .expect("qemu-img");
    assert!(
        same.success(),
        "the in-place restore put the newest point back"
    );
}

/// install.md on a REAL oned 7.4.0 as OpenNebula installs it (no backstop in its tree or its
/// oned.conf; not run without `BACKSTOP_ONED_REFERENCE`): the page installs side by side; the
/// lines install.sh printed are put into oned.conf as the page tells the reader, and oned
/// restarted; oned then creates and monitors a backup datastore with DS_MAD "backstop" (its
/// monitor is backstop's). The page installs drop-in; an "upgrade" writes the stock
/// downloader.sh and restic driver back, which `--check` names (exit 1); the page's check and
/// install put backstop back; its uninstall leaves the remotes tree exactly as it was before.
#[test]
fn real_oned_install() {
    use crate::oned_real::RealOned;
    let Some(o) = RealOned::start_stock() else {
        return;
    };
    let stock = tempfile::tempdir().expect("tempdir");
    let pristine = stock.path().join("remotes");
    let cp = support::run(
        "cp",
        &[
            "-a",
            o.remotes().to_str().expect("utf-8"),
            pristine.to_str().expect("utf-8"),
        ],
        b"",
    );
    assert_eq!(cp.code, Some(0), "{cp:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    fs::create_dir_all(&home).expect("home");
    let mut env = o.env().to_vec();
    env.push(("HOME".into(), home.display().to_string()));
    let stage = Stage {
        dir,
        env,
        values: BTreeMap::from([
            ("SRC", support::repo_root().display().to_string()),
            ("BINARY", BACKSTOP.to_string()),
            (
                "ONED_CONF",
                o.conf_orig()
                    .with_file_name("oned.conf")
                    .display()
                    .to_string(),
            ),
            ("OPTIONS", "--replace-stock".to_string()),
        ]),
    };
    let mut step = 0;
    stage.run_page("install.md", |_, out| {
        step += 1;
        if step == 1 {
            // The reader's edit: install.sh's DATASTORE_MAD block for oned.conf's own, the
            // other printed lines at the end; then oned restarted.
            let advice: Vec<&str> = out
                .split("To let oned use DS_MAD=\"backstop\"")
                .nth(1)
                .unwrap_or_else(|| panic!("no oned.conf advice in:\n{out}"))
                .lines()
                .filter(|l| l.starts_with("     ") && !l.trim().is_empty())
                .map(str::trim)
                .collect();
            assert!(
                advice.iter().any(|l| l.starts_with("DATASTORE_MAD")),
                "{advice:?}"
            );
            let conf = fs::read_to_string(o.conf_orig()).expect("oned.conf");
            let mut kept = Vec::new();
            let mut in_block = false;
            for line in conf.lines() {
                if line.starts_with("DATASTORE_MAD") {
                    in_block = true;
                } else if in_block && line.trim() == "]" {
                    in_block = false;
                } else if !in_block {
                    kept.push(line);
                }
            }
            let edited = format!("{}\n{}\n", kept.join("\n"), advice.join("\n"));
            fs::write(o.conf_orig(), edited).expect("oned.conf");
            o.restart();
            // oned takes a backstop datastore now, and monitors it with backstop's monitor.
            let t = o.template(
                "guide-ds.tmpl",
                "NAME = \"guide-backups\"\nTYPE = \"BACKUP_DS\"\nDS_MAD = \"backstop\"\n\
                 TM_MAD = \"-\"\nRESTIC_PASSWORD = \"a-password-of-the-guide\"\n",
            );
            o.cli_ok("onedatastore", &["create", &t]);
            o.datastore("guide-backups");
        } else {
            // An OpenNebula upgrade: its stock files back over backstop's.
            let put_back = |rel: &str| {
                let out = support::run(
                    "cp",
                    &[
                        "-a",
                        pristine.join(rel).to_str().expect("utf-8"),
                        o.remotes()
                            .join(rel)
                            .parent()
                            .expect("dir")
                            .to_str()
                            .expect("utf-8"),
                    ],
                    b"",
                );
                assert_eq!(out.code, Some(0), "{out:?}");
            };
            put_back("datastore/downloader.sh");
            put_back("datastore/restic");
            let check = support::run_env(
                support::repo_root().join("install.sh"),
                &["--binary", BACKSTOP, "--check"],
                b"",
                &o.env()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(check.code, Some(1), "{check:?}");
            assert!(
                format!("{}{}", check.stdout, check.stderr).contains("downloader.sh"),
                "{check:?}"
            );
        }
    });
    assert_eq!(step, 2, "the page's two test points");
    // Uninstalled: the tree is OpenNebula's again, file for file.
    let diff = support::run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            pristine.to_str().expect("utf-8"),
            o.remotes().to_str().expect("utf-8"),
        ],
        b"",
    );
    assert_eq!(diff.code, Some(0), "{}{}", diff.stdout, diff.stderr);
}

#[test]
fn every_guide_page_is_run_by_a_test() {
    let mut untested = Vec::new();
    for entry in fs::read_dir(guide_dir()).expect("docs/guide") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = fs::read_to_string(&path).unwrap_or_default();
        let runs = segments(&text).iter().any(|s| !s.is_empty());
        if runs && !PAGES.contains(&name.as_str()) {
            untested.push(name);
        }
    }
    assert!(
        untested.is_empty(),
        "pages with commands that no test runs: {untested:?}"
    );
    for page in PAGES {
        assert!(guide_dir().join(page).exists(), "{page} is gone");
    }
    // The index names every page.
    let index = fs::read_to_string(guide_dir().join("README.md")).expect("index");
    for page in PAGES {
        assert!(
            index.contains(&format!("({page})")),
            "the index lacks {page}"
        );
    }
}

#[test]
fn the_reader_s_values_are_the_only_lines_changed() {
    let values = BTreeMap::from([("OFFSITE", "/tmp/x".to_string())]);
    assert_eq!(
        yours("OFFSITE=/srv/offsite    # yours: where", &values),
        "OFFSITE=/tmp/x   # yours: where"
    );
    assert_eq!(yours("echo hi", &values), "echo hi");
    let page = "a\n```sh\none\n```\n<!-- test: fix -->\n```text\nno\n```\n```sh\ntwo\n```\n";
    assert_eq!(
        segments(page),
        vec![vec!["one\n".to_string()], vec!["two\n".to_string()]]
    );
}
