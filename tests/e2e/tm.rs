//! backstop's own prebackup and postbackup (issue 5) with its datastore, as one_vmm_exec runs
//! them for a powered-off VM: prebackup on the front-end (ssh to the hypervisor "hv1"), the
//! datastore's backup, postbackup; FULL and three CBT increments with writes between them; in
//! staging mode (stock layout, which the stock consumers' rebase/commit also accept) and in
//! direct mode (no copy of the disks). Every increment restores byte-exact with plain restic,
//! the bitmaps are rotated, nothing is left on the host, and a lost or inconsistent bitmap
//! heals into a whole read.

use crate::cloud::{Cloud, DISKS, VM, bitmaps, parse_backup_line};
use crate::support::{self, BACKSTOP, Outcome};
use std::fs;
use std::path::{Path, PathBuf};

/// qemu-nbd processes serving files under `dir`.
pub(crate) fn our_qemu_nbd(dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("qemu-nbd") && c.contains(&dir)
            })
        })
        .collect()
}

/// backstop's prebackup and postbackup as transfer manager `tm`'s, as install.sh --with-tm
/// would place them.
pub(crate) fn install_tm(cloud: &Cloud, tm: &str) {
    for action in ["prebackup", "postbackup"] {
        let link = cloud.remotes.join(format!("tm/{tm}/{action}"));
        fs::create_dir_all(link.parent().expect("parent")).expect("tm dir");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    }
}

/// TM `tm`'s `action` as one_vmm_exec runs it (with BACKUP_RESULT=FAILURE when `failed`).
pub(crate) fn tm_step(
    cloud: &Cloud,
    tm: &str,
    action: &str,
    vm_xml: &str,
    failed: bool,
) -> Outcome {
    let stdin = if failed {
        format!("{vm_xml}<BACKUP_RESULT>FAILURE</BACKUP_RESULT>")
    } else {
        vm_xml.to_string()
    };
    let args = cloud.backup_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    support::run(
        cloud.remotes.join(format!("tm/{tm}/{action}")),
        &refs,
        stdin.as_bytes(),
    )
}

pub(crate) struct Tm {
    pub(crate) cloud: Cloud,
}

impl Tm {
    pub(crate) fn start(delivery: &str) -> Tm {
        let cloud = Cloud::start();
        let conf = cloud.remotes.join("etc/datastore/backstop.conf");
        let mut text = fs::read_to_string(&conf).expect("backstop.conf");
        text.push_str(&format!("TM_DELIVERY={delivery}\n"));
        fs::write(&conf, text).expect("backstop.conf");
        install_tm(&cloud, "qcow2");
        cloud.create_disks();
        Tm { cloud }
    }

    pub(crate) fn step(&self, action: &str, vm_xml: &str, failed: bool) -> Outcome {
        tm_step(&self.cloud, "qcow2", action, vm_xml, failed)
    }

    /// prebackup, backup, postbackup of increment `inc`; the backup id.
    fn backup(&self, inc: u64) -> (String, Outcome) {
        let vm_xml = self
            .cloud
            .vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        self.backup_with(&vm_xml)
    }

    /// prebackup, backup, postbackup of the VM document `vm_xml`: the backup id and
    /// prebackup's outcome.
    pub(crate) fn backup_with(&self, vm_xml: &str) -> (String, Outcome) {
        let pre = self.step("prebackup", vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup: {pre:?}");
        assert_eq!(pre.stdout, "");
        let (id, _) = parse_backup_line(&self.cloud.backup(vm_xml));
        let post = self.step("postbackup", vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup: {post:?}");
        (id, pre)
    }

    pub(crate) fn check_point(&self, inc: u64, id: &str, expected: &[Vec<u8>]) {
        let staging = self.cloud.staging();
        for (k, (d, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            let data = self.cloud.restic_ok(&["dump", id, &path]);
            assert!(
                data == expected[k],
                "restic dump of disk {d} at increment {inc} differs from the disk"
            );
        }
    }

    fn after_step_checks(&self, inc: u64) {
        assert!(
            !self.cloud.staging().exists(),
            "postbackup left the staging directory"
        );
        for (d, _) in DISKS {
            assert_eq!(
                bitmaps(&self.cloud.disk(d)),
                [format!("one-{VM}-{inc}")],
                "bitmaps of disk {d} after increment {inc}"
            );
        }
        assert!(our_qemu_nbd(self.cloud.dir.path()).is_empty());
    }
}

fn full_and_three_increments(delivery: &str) {
    let t = Tm::start(delivery);
    let cloud = &t.cloud;
    let kept: PathBuf = cloud.dir.path().join("kept");
    fs::create_dir_all(&kept).expect("kept");
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut ids = Vec::new();
    for inc in 0..4u64 {
        if inc > 0 {
            cloud.change_disks(inc, 12);
        }
        let vm_xml = cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        let pre = t.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        let staging = cloud.staging();
        assert!(staging.join("vm.xml").exists());
        for (d, _) in DISKS {
            let staged = staging.join(format!("disk.{d}.{inc}"));
            if delivery == "staging" {
                assert!(staged.exists(), "{} is not staged", staged.display());
                fs::copy(&staged, kept.join(format!("disk.{d}.{inc}"))).expect("keep");
            } else {
                assert!(!staged.exists(), "direct mode copied disk {d}");
            }
        }
        assert_eq!(staging.join("backstop.json").exists(), delivery == "direct");
        let out = cloud.backup(&vm_xml);
        let (id, size_mb) = parse_backup_line(&out);
        if inc > 0 {
            assert!(size_mb <= 8, "increment {inc} read {size_mb} MB");
        }
        let post = t.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        t.after_step_checks(inc);
        expected.push(DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect());
        cloud.restic_ok(&["check", "--read-data"]);
        t.check_point(inc, &id, &expected[inc as usize]);
        ids.push(id);
    }

    if delivery == "staging" {
        // The staged files are what the stock consumers expect: rebased onto each other they
        // give the disk at every point (as the stock downloader and flatten rebuild them).
        for (k, (d, _)) in DISKS.iter().enumerate() {
            for inc in 1..4u64 {
                let cur = kept.join(format!("disk.{d}.{inc}"));
                let prev = kept.join(format!("disk.{d}.{}", inc - 1));
                crate::cloud::sh_ok(
                    "qemu-img",
                    &[
                        "rebase",
                        "-u",
                        "-F",
                        "qcow2",
                        "-b",
                        prev.to_str().expect("utf-8"),
                        cur.to_str().expect("utf-8"),
                    ],
                );
            }
            for (inc, disks) in expected.iter().enumerate() {
                let raw = kept.join(format!("want.{d}.{inc}.raw"));
                fs::write(&raw, &disks[k]).expect("raw");
                crate::cloud::sh_ok(
                    "qemu-img",
                    &[
                        "compare",
                        "-q",
                        "-f",
                        "qcow2",
                        "-F",
                        "raw",
                        kept.join(format!("disk.{d}.{inc}"))
                            .to_str()
                            .expect("utf-8"),
                        raw.to_str().expect("utf-8"),
                    ],
                );
            }
        }
    }

    // A failed backup: postbackup with BACKUP_RESULT=FAILURE drops the new bitmap and keeps the
    // parent's, so the retry is the same increment from the same parent.
    cloud.change_disks(4, 5);
    let vm_xml = cloud.vm_xml(3, 40);
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let post = t.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
    t.after_step_checks(3);
    let (id, _) = t.backup(4);
    t.after_step_checks(4);
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(4, &id, &now);

    // Self-healing: disk 1 loses its bitmap (a restore, a copy) and disk 0's is left
    // inconsistent (the process that had it open died): the next increment reads both whole,
    // says why, and is correct; the bitmaps are sound again afterwards.
    crate::cloud::sh_ok(
        "qemu-img",
        &[
            "bitmap",
            "--remove",
            cloud.disk(1).to_str().expect("utf-8"),
            &format!("one-{VM}-4"),
        ],
    );
    let mut writer = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(cloud.disk(0))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io");
    std::thread::sleep(std::time::Duration::from_millis(500));
    writer.kill().expect("kill qemu-io");
    let _ = writer.wait();
    let info = crate::cloud::sh_ok(
        "qemu-img",
        &[
            "info",
            "-f",
            "qcow2",
            "-U",
            "--output=json",
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    assert!(
        info.contains("in-use"),
        "the bitmap is not left in use: {info}"
    );
    cloud.change_disks(5, 5);
    let (id, pre) = t.backup(5);
    assert!(
        pre.stderr.contains("disk 1 has no bitmap one-22-4")
            && pre
                .stderr
                .contains("bitmap one-22-4 of disk 0 is inconsistent"),
        "{}",
        pre.stderr
    );
    t.after_step_checks(5);
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(5, &id, &now);
    cloud.restic_ok(&["check", "--read-data"]);
}

#[test]
fn backstop_prebackup_in_staging_mode_feeds_any_consumer() {
    full_and_three_increments("staging");
}

#[test]
fn backstop_prebackup_in_direct_mode_copies_nothing() {
    full_and_three_increments("direct");
}

/// Processes whose argv[1] is `word` and whose command line mentions `dir`.
pub(crate) fn processes(word: &str, dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).to_string();
                let argv: Vec<&str> = c.split('\0').collect();
                argv.get(1) == Some(&word) && c.contains(&dir)
            })
        })
        .collect()
}

pub(crate) fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        if std::time::Instant::now() > deadline {
            let ps = std::process::Command::new("ps")
                .args(["-eo", "pid,ppid,stat,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let ps: Vec<&str> = ps
                .lines()
                .filter(|l| l.contains("qemu") || l.contains("host-") || l.contains("ssh"))
                .collect();
            panic!("timed out: {what}\n{}", ps.join("\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The qemu-nbd socket directories of exports of files under `dir`.
fn nbd_socket_dirs(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_dir(backstop_image::nbd::exports_dir().expect("exports dir"))
        .expect("exports dir")
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("export-")
                && fs::read_to_string(e.path().join("owner")).is_ok_and(|o| o.contains(&dir))
        })
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// prebackup killed half-way (the front-end by SIGKILL, then the host step by SIGKILL), and a
/// backup killed half-way: nothing stays on the host (qemu-nbd, staging files, bitmaps), the
/// repository checks clean, and the next backup is the right increment.
#[test]
fn interrupted_prebackups_and_backups_leave_nothing_behind() {
    use std::io::Write;
    let t = Tm::start("staging");
    let cloud = &t.cloud;
    // 40 MiB that do not compress in disk 0, so each step takes a moment.
    let noise = cloud.dir.path().join("noise.raw");
    let data = support::noise(40 << 20, 0x2545_f491_4f6c_dd1d);
    fs::write(&noise, &data).expect("noise");
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 40M", noise.display()),
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    let (id0, _) = t.backup(0);
    t.after_step_checks(0);

    let args = cloud.backup_args();
    let spawn = |action: &str, stdin: &str| {
        let mut child =
            std::process::Command::new(cloud.remotes.join(format!("tm/qcow2/{action}")))
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        child
    };
    // New noise (nothing to deduplicate), so increment 1 has 40 MiB to stage and upload.
    let data: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    fs::write(&noise, &data).expect("noise");
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 40M", noise.display()),
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    let vm_xml = cloud.vm_xml(0, 40);
    for round in ["the front-end", "the host step"] {
        let mut pre = spawn("prebackup", &vm_xml);
        // Half-way: qemu-nbd is serving disk 0 to the host step.
        wait_until("qemu-nbd of the prebackup", || {
            !our_qemu_nbd(cloud.dir.path()).is_empty()
        });
        if round == "the front-end" {
            pre.kill().expect("kill the front-end");
        } else {
            let host = processes("host-tm", cloud.dir.path());
            assert_eq!(host.len(), 1, "{host:?}");
            crate::cloud::sh_ok("kill", &["-KILL", &host[0].to_string()]);
        }
        let _ = pre.wait();
        wait_until(
            &format!("the host step to go after killing {round}"),
            || processes("host-tm", cloud.dir.path()).is_empty(),
        );
        // one_vmm_exec then runs postbackup with BACKUP_RESULT=FAILURE; it also stops what
        // a killed host step could not (its qemu-nbd, its socket directory).
        let post = t.step("postbackup", &vm_xml, true);
        assert_eq!(post.code, Some(0), "{post:?}");
        wait_until(&format!("qemu-nbd to go after killing {round}"), || {
            our_qemu_nbd(cloud.dir.path()).is_empty()
        });
        t.after_step_checks(0);
        let left = nbd_socket_dirs(cloud.dir.path());
        assert!(left.is_empty(), "socket directories left: {left:?}");
    }

    // A backup killed half-way (SIGKILL of the front-end, throttled upload).
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let stdin = format!(
        "<DS_DRIVER_ACTION_DATA>{}{vm_xml}</DS_DRIVER_ACTION_DATA>",
        cloud.datastore_xml_with("<RESTIC_BWLIMIT>2048</RESTIC_BWLIMIT>")
    );
    let mut backup = std::process::Command::new(cloud.action("backup"))
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("backup");
    backup
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    wait_until("the host step of the backup", || {
        !processes("host-backup", cloud.dir.path()).is_empty()
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    backup.kill().expect("kill the backup");
    let _ = backup.wait();
    wait_until("the host step to stop", || {
        processes("host-backup", cloud.dir.path()).is_empty()
            && our_qemu_nbd(cloud.dir.path()).is_empty()
    });
    let post = t.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
    t.after_step_checks(0);
    cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");

    // The retry is increment 1 on increment 0, and right.
    let (id1, _) = t.backup(1);
    t.after_step_checks(1);
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(1, &id1, &now);
    assert_ne!(id0, id1);
}

/// Direct mode's costs on a 1 GiB disk, counted (not timed): the host's extra disk usage
/// while the backup runs (the staging directory holds only vm.xml and the manifest; nothing
/// else is written on the host), and the bytes an incremental with 5 % of the disk changed in
/// 50 places reads. Run with --nocapture to see the figures.
#[test]
fn direct_mode_on_a_gib_disk_reads_only_what_changed() {
    let t = Tm::start("direct");
    let cloud = &t.cloud;
    let disk = cloud.disk(0);
    let d = disk.to_str().expect("utf-8");
    crate::cloud::sh_ok("qemu-img", &["resize", "-q", d, "1G"]);
    // 200 MiB of data that does not compress.
    let noise = cloud.dir.path().join("noise.raw");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let data: Vec<u8> = (0..8 << 20).map(|_| next() as u8).collect();
    fs::write(&noise, &data).expect("noise");
    let mut cmds: Vec<String> = (0..25)
        .map(|k| format!("write -s {} {}M 8M", noise.display(), k * 40))
        .collect();
    let run_io = |cmds: &[String]| {
        let mut args = vec!["-f", "qcow2"];
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        args.push(d);
        crate::cloud::sh_ok("qemu-io", &args);
    };
    run_io(&cmds);
    let staged_size = |dir: &Path| -> u64 {
        fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let gib = 1u64 << 30;
    let mut sizes = Vec::new();
    for inc in 0..2u64 {
        if inc == 1 {
            // 5 % of the disk, in 50 places of 1/50 each, at scattered offsets.
            let len = gib / 20 / 50;
            let chunk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            fs::write(&noise, &chunk).expect("noise");
            cmds = (0..50u64)
                .map(|k| {
                    let slot = gib / 50;
                    let off = k * slot + (next() % (slot - len));
                    format!("write -s {} {off} {len}", noise.display())
                })
                .collect();
            run_io(&cmds);
        }
        let vm_xml = cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        let pre = t.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "{pre:?}");
        let extra = staged_size(&cloud.staging());
        let (id, size_mb) = parse_backup_line(&cloud.backup(&vm_xml));
        let post = t.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "{post:?}");
        let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
        t.check_point(inc, &id, &now);
        eprintln!(
            "direct mode, 1 GiB disk, increment {inc}: {extra} bytes written on the host, {size_mb} MB read"
        );
        assert!(extra < 16 << 20, "{extra} bytes staged");
        sizes.push(size_mb);
    }
    // The incremental's backup line counts the bytes read (both disks, plus vm.xml).
    let percent = sizes[1] as f64 * 100.0 / 1024.0;
    eprintln!(
        "the 5 % incremental read {} MB, {percent:.1} % of the 1 GiB disk",
        sizes[1]
    );
    assert!(
        sizes[1] * 10 < 1024,
        "the 5 % incremental read {} MB",
        sizes[1]
    );
}

/// A MOCK oned (XML-RPC: no real one can run here) serving VM 22, backup image 40 and backup
/// datastore 100 for an in-place restore; with the session file the TM reads.
pub(crate) fn restore_oned(
    cloud: &crate::cloud::Cloud,
    vm_doc: String,
    image_doc: String,
    ds_doc: String,
) -> (crate::oned_mock::MockOned, PathBuf) {
    use crate::oned_mock::{MockOned, failed, ok};
    use backstop_protocol::xmlrpc::Value;
    let oned = MockOned::start(
        |s| s == crate::cloud::ONED_SESSION,
        move |method, params| match (method, params) {
            ("one.vm.info", [Value::Int(22), ..]) => ok(Value::Str(vm_doc.clone())),
            ("one.image.info", [Value::Int(40), ..]) => ok(Value::Str(image_doc.clone())),
            ("one.datastore.info", [Value::Int(100), ..]) => ok(Value::Str(ds_doc.clone())),
            _ => failed(&format!("[{method}] Error getting object"), 1024),
        },
    );
    let auth = cloud.dir.path().join("one_auth");
    fs::write(&auth, format!("{}\n", crate::cloud::ONED_SESSION)).expect("auth");
    (oned, auth)
}

/// The transfer manager's in-place restore (`onevm restore`), with a MOCK oned serving the VM,
/// the backup image and its datastore: every disk back to increment 1, then disk 1 alone to
/// increment 2; the restored disks carry no bitmaps, and the next backup starts a new chain.
/// A restore that cannot be done leaves the disks as they were.
#[test]
fn in_place_restore_brings_back_an_increment() {
    let t = Tm::start("direct");
    let cloud = &t.cloud;
    let link = cloud.remotes.join("tm/qcow2/restore");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    let mut ids = Vec::new();
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    for inc in 0..3u64 {
        if inc > 0 {
            cloud.change_disks(inc, 10);
        }
        ids.push(t.backup(inc).0);
        expected.push(DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect());
    }
    let chain: Vec<(u64, &str)> = ids
        .iter()
        .enumerate()
        .map(|(k, s)| (k as u64, s.as_str()))
        .collect();
    let (vm_doc, image_doc, ds_doc) = (
        cloud.vm_xml(2, 40),
        cloud.image_xml(&chain),
        cloud.datastore_xml(),
    );
    let (oned, auth) = restore_oned(cloud, vm_doc, image_doc, ds_doc);
    let env = [
        ("ONE_XMLRPC", oned.endpoint.as_str()),
        ("ONE_AUTH", auth.to_str().expect("utf-8")),
    ];
    let vm_dir = format!("hv1:{}", cloud.vm_dir.display());
    let restore = |inc: &str, disk: &str| {
        support::run_env(&link, &[&vm_dir, "22", "40", inc, disk], b"", &env)
    };
    let same = |disk: u32, want: &[u8]| {
        let raw = cloud.dir.path().join(format!("want.{disk}.raw"));
        fs::write(&raw, want).expect("raw");
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-q", "-F", "raw"])
            .arg(cloud.disk(disk))
            .arg(&raw)
            .output()
            .expect("qemu-img");
        out.status.success()
    };

    // The VM is damaged, then restored to increment 1.
    cloud.change_disks(9, 20);
    let out = restore("1", "-1");
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{out:?}");
    for (k, (d, _)) in DISKS.iter().enumerate() {
        let disk = cloud.disk(*d);
        assert_eq!(
            fs::read_link(&disk).expect("a link"),
            PathBuf::from(format!("disk.{d}.snap/0"))
        );
        assert!(same(*d, &expected[1][k]), "disk {d} is not increment 1");
        assert!(bitmaps(&disk).is_empty(), "disk {d} kept bitmaps");
        assert!(!cloud.vm_dir.join(format!("disk.{d}.backup")).exists());
    }
    // Disk 1 alone, to increment 2.
    let out = restore("2", "1");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(same(0, &expected[1][0]), "disk 0 moved");
    assert!(same(1, &expected[2][1]), "disk 1 is not increment 2");

    // A disk the backup does not hold: one line, nothing changed, nothing left.
    let out = restore("1", "5");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr == "restore: Error restoring VM disks: disk 5 is not in backup 40\n",
        "{}",
        out.stderr
    );
    assert!(same(0, &expected[1][0]) && same(1, &expected[2][1]));
    let leftovers: Vec<String> = fs::read_dir(&cloud.vm_dir)
        .expect("vm dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // oned resets the chain after a restore: the next backup is a new FULL.
    let (id, _) = t.backup(0);
    t.after_step_checks(0);
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(0, &id, &now);
    drop(oned);
}

/// prebackup runs under the backup datastore's confinement (driver contract §4.1, §10.3), which it reads
/// from oned (a MOCK here): the host step, found in /proc while it copies a disk of random
/// data, runs at the datastore's nice and I/O priority.
#[test]
fn prebackup_runs_under_the_datastores_confinement_read_from_mock_oned() {
    use crate::oned_mock::{MockOned, failed, ok};
    use backstop_protocol::xmlrpc::Value;
    let t = Tm::start("staging");
    let cloud = &t.cloud;
    // Disk 0 holds 384 MiB of random data, so copying it takes a while.
    let noise = cloud.dir.path().join("noise");
    crate::cloud::sh_ok(
        "sh",
        &[
            "-c",
            &format!("head -c 402653184 /dev/urandom > {}", noise.display()),
        ],
    );
    let disk = cloud.disk(0);
    crate::cloud::sh_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            disk.to_str().expect("utf-8"),
            "512M",
        ],
    );
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 384M", noise.display()),
            disk.to_str().expect("utf-8"),
        ],
    );
    fs::remove_file(&noise).expect("noise");
    let ds_doc =
        cloud.datastore_xml_with("<RESTIC_NICE>6</RESTIC_NICE><RESTIC_IONICE>4</RESTIC_IONICE>");
    let oned = MockOned::start(
        |s| s == crate::cloud::ONED_SESSION,
        move |method, params| match (method, params) {
            ("one.datastore.info", [Value::Int(100), ..]) => ok(Value::Str(ds_doc.clone())),
            _ => failed(&format!("[{method}] Error getting object"), 1024),
        },
    );
    let auth = cloud.dir.path().join("one_auth");
    fs::write(&auth, format!("{}\n", crate::cloud::ONED_SESSION)).expect("auth");
    let vm_xml = cloud.vm_xml(-1, -1);
    let args = cloud.backup_args();
    let mut pre = std::process::Command::new(cloud.remotes.join("tm/qcow2/prebackup"))
        .args(&args)
        .env("ONE_XMLRPC", &oned.endpoint)
        .env("ONE_AUTH", &auth)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prebackup");
    {
        use std::io::Write;
        pre.stdin
            .take()
            .expect("stdin")
            .write_all(vm_xml.as_bytes())
            .expect("stdin");
    }
    let staging = cloud.staging().display().to_string();
    let mut seen = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.is_none() && std::time::Instant::now() < deadline {
        if pre.try_wait().expect("wait").is_some() {
            break;
        }
        seen = processes("host-tm", cloud.dir.path())
            .into_iter()
            .find(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&staging))
            })
            .and_then(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let fields: Vec<String> = stat
                    .rsplit_once(") ")?
                    .1
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                let io = std::process::Command::new("ionice")
                    .args(["-p", &pid.to_string()])
                    .output()
                    .ok()?;
                Some((
                    fields.get(16)?.clone(),
                    String::from_utf8_lossy(&io.stdout).trim().to_string(),
                ))
            });
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = pre.wait_with_output().expect("prebackup");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        seen,
        Some(("6".to_string(), "best-effort: prio 4".to_string())),
        "the host step was not seen, or not confined"
    );
    let post = t.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
}

/// prebackup checks the backup datastore's attributes (read from oned, a MOCK here) with the
/// datastore driver's own check before it touches the VM: a datastore the backup would refuse
/// fails prebackup in one line naming the attribute, and the VM's disks are left as they were
/// (no bitmap added, nothing staged, no export left running).
#[test]
fn prebackup_refuses_a_bad_backup_datastore_before_touching_the_vm_mock_oned() {
    use crate::oned_mock::{MockOned, failed, ok};
    use backstop_protocol::xmlrpc::Value;
    let t = Tm::start("staging");
    let cloud = &t.cloud;
    let before = bitmaps(&cloud.disk(0));
    let ds_doc = cloud.datastore_xml_with("<RESTIC_COMPRESSION>fast</RESTIC_COMPRESSION>");
    let oned = MockOned::start(
        |s| s == crate::cloud::ONED_SESSION,
        move |method, params| match (method, params) {
            ("one.datastore.info", [Value::Int(100), ..]) => ok(Value::Str(ds_doc.clone())),
            _ => failed(&format!("[{method}] Error getting object"), 1024),
        },
    );
    let auth = cloud.dir.path().join("one_auth");
    fs::write(&auth, format!("{}\n", crate::cloud::ONED_SESSION)).expect("auth");
    let vm_xml = cloud.vm_xml(-1, -1);
    let mut pre = std::process::Command::new(cloud.remotes.join("tm/qcow2/prebackup"))
        .args(cloud.backup_args())
        .env("ONE_XMLRPC", &oned.endpoint)
        .env("ONE_AUTH", &auth)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prebackup");
    {
        use std::io::Write;
        pre.stdin
            .take()
            .expect("stdin")
            .write_all(vm_xml.as_bytes())
            .expect("stdin");
    }
    let out = pre.wait_with_output().expect("prebackup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("RESTIC_COMPRESSION \"fast\" is not one of"),
        "{err}"
    );
    assert_eq!(bitmaps(&cloud.disk(0)), before, "a bitmap was added");
    assert!(!cloud.staging().exists(), "something was staged");
    assert_eq!(our_qemu_nbd(cloud.dir.path()), Vec::<u32>::new());
}
