//! A VM with two Ceph RBD disks (one persistent, one a non-persistent clone) backed up through
//! backstop's `ceph` TM prebackup/postbackup in direct mode and the datastore's backup: FULL and
//! three increments, each point dumped by plain restic exactly as `rbd export` gives the
//! snapshot; increments read only what `rbd diff` reports; only the last increment's snapshot
//! stays, protected; a failed backup keeps the parent and the retry is the same increment; a
//! leaked snapshot is cleaned up by the next run; the in-place restore brings the disks back.
//! Increments 2 and 3 are pulled (BACKUP_PULL): the host serves the snapshots, the front-end
//! reads them.
//! A real single-node Ceph cluster.

use crate::cephcluster::{Ceph, POOL};
use crate::cloud::{Cloud, VM, parse_backup_line};
use crate::support::{self, BACKSTOP, Outcome};
use std::fs;
use std::process::Command;

/// (disk id, image as the disk names it, the RBD image read, size MiB).
pub(crate) const DISKS: [(u32, &str, &str, u64); 2] = [
    (0, "vm22-root", "vm22-root", 48),
    (1, "base-img", "base-img-22-1", 24),
];

pub(crate) struct CephCloud {
    pub(crate) cloud: Cloud,
    pub(crate) ceph: Ceph,
}

impl CephCloud {
    pub(crate) fn start() -> CephCloud {
        CephCloud::start_as("backstop")
    }

    /// `restic`: backstop installed drop-in.
    pub(crate) fn start_as(mad: &'static str) -> CephCloud {
        let cloud = Cloud::start_as(mad);
        let ceph = Ceph::start(cloud.dir.path());
        let conf = cloud.remotes.join("etc/datastore/backstop.conf");
        let mut text = fs::read_to_string(&conf).expect("backstop.conf");
        text.push_str("TM_DELIVERY=direct\n");
        fs::write(&conf, text).expect("backstop.conf");
        crate::tm::install_tm(&cloud, "ceph");
        for (_, _, image, mib) in DISKS {
            ceph.rbd(&[
                "create",
                "--size",
                &format!("{mib}M"),
                &format!("{POOL}/{image}"),
            ]);
        }
        CephCloud { cloud, ceph }
    }

    /// TM_DELIVERY from now on: `direct` or `staging`.
    pub(crate) fn set_delivery(&self, delivery: &str) {
        let conf = self.cloud.remotes.join("etc/datastore/backstop.conf");
        let text = fs::read_to_string(&conf).expect("backstop.conf");
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("TM_DELIVERY="))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&conf, format!("{kept}TM_DELIVERY={delivery}\n")).expect("backstop.conf");
    }

    pub(crate) fn write(&self, image: &str, pattern: u8, offset_mib: u64, mib: u64) {
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P {pattern:#x} {offset_mib}M {mib}M"))
            .arg(self.ceph.qemu_name(image))
            .output()
            .expect("qemu-io");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn vm_xml(&self, last_increment: i64) -> String {
        let conf = self.ceph.conf.display();
        let disks: String = DISKS
            .iter()
            .map(|(id, source, _, mb)| {
                let clone = if *id == 1 { "YES" } else { "NO" };
                format!(
                    "<DISK><DISK_ID>{id}</DISK_ID><TYPE>RBD</TYPE><DISK_TYPE>RBD</DISK_TYPE>\
                     <TM_MAD>ceph</TM_MAD><SOURCE>{POOL}/{source}</SOURCE><CLONE>{clone}</CLONE>\
                     <POOL_NAME>{POOL}</POOL_NAME><CEPH_CONF>{conf}</CEPH_CONF><FORMAT>raw</FORMAT>\
                     <SIZE>{mb}</SIZE><TARGET>vd{}</TARGET></DISK>",
                    char::from(b'a' + *id as u8)
                )
            })
            .collect();
        format!(
            "<VM><ID>{VM}</ID><UID>0</UID><NAME>db</NAME><STATE>8</STATE><LCM_STATE>70</LCM_STATE>\
             <DEPLOY_ID>one-{VM}</DEPLOY_ID><TEMPLATE>{disks}<VMID>{VM}</VMID></TEMPLATE>\
             <USER_TEMPLATE/><HISTORY_RECORDS><HISTORY><HOSTNAME>hv1</HOSTNAME><HID>0</HID>\
             <DS_ID>0</DS_ID><TM_MAD>ceph</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS>\
             <BACKUPS><BACKUP_CONFIG><MODE>INCREMENT</MODE><INCREMENT_MODE>CBT</INCREMENT_MODE>\
             <LAST_INCREMENT_ID>{last_increment}</LAST_INCREMENT_ID>\
             <INCREMENTAL_BACKUP_ID>{}</INCREMENTAL_BACKUP_ID>\
             <LAST_DATASTORE_ID>100</LAST_DATASTORE_ID></BACKUP_CONFIG><BACKUP_IDS/></BACKUPS></VM>",
            if last_increment < 0 { -1 } else { 40 }
        )
    }

    fn step(&self, action: &str, vm_xml: &str, failed: bool) -> Outcome {
        crate::tm::tm_step(&self.cloud, "ceph", action, vm_xml, failed)
    }

    /// What `rbd diff` reports between increment `inc - 1` and `inc` of both disks, in the
    /// 1 MiB chunks backstop reads (0 for increment 0).
    pub(crate) fn diff_chunks(&self, inc: u64) -> u64 {
        if inc == 0 {
            return 0;
        }
        DISKS
            .iter()
            .map(|(_, _, image, _)| {
                let text = self.ceph.rbd(&[
                    "diff",
                    "--format",
                    "json",
                    "--from-snap",
                    &format!("one_backup_{}", inc - 1),
                    &format!("{POOL}/{image}@one_backup_{inc}"),
                ]);
                let extents = backstop_image::rbd::parse_diff(&text).expect("diff");
                let mut chunks = std::collections::BTreeSet::new();
                for e in extents {
                    chunks.extend((e.offset >> 20)..=((e.offset + e.length - 1) >> 20));
                }
                chunks.len() as u64
            })
            .sum()
    }

    pub(crate) fn snapshots(&self, image: &str) -> Vec<(String, bool)> {
        let text = self
            .ceph
            .rbd(&["snap", "ls", "--format", "json", &format!("{POOL}/{image}")]);
        backstop_image::rbd::parse_snapshots(&text)
            .expect("snap ls")
            .into_iter()
            .map(|s| (s.name, s.protected))
            .collect()
    }
}

#[test]
fn rbd_disks_full_and_three_increments_through_the_ceph_tm_direct() {
    let cc = CephCloud::start();
    cc.write("vm22-root", 0x11, 0, 8);
    cc.write("base-img-22-1", 0x22, 4, 6);
    let staging = cc.cloud.staging();
    let mut points: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for inc in 0..4u64 {
        if inc > 0 {
            cc.write("vm22-root", 0x30 + inc as u8, 10 + inc * 5, 2);
            cc.write("base-img-22-1", 0x40 + inc as u8, inc * 3, 1);
        }
        if inc == 2 {
            // A failed attempt first: the parent stays and the retry is the same increment.
            let vm_xml = cc.vm_xml(inc as i64 - 1);
            let pre = cc.step("prebackup", &vm_xml, false);
            assert_eq!(pre.code, Some(0), "{pre:?}");
            let post = cc.step("postbackup", &vm_xml, true);
            assert_eq!(post.code, Some(0), "{post:?}");
            for (_, _, image, _) in DISKS {
                assert_eq!(
                    cc.snapshots(image),
                    [("one_backup_1".to_string(), true)],
                    "after a failed increment 2 of {image}"
                );
            }
            // And a leaked snapshot (an interrupted run's), which the next run removes.
            cc.ceph
                .rbd(&["snap", "create", &format!("{POOL}/vm22-root@one_backup_7")]);
        }
        let vm_xml = cc.vm_xml(inc as i64 - 1);
        let pre = cc.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        if inc == 2 {
            assert!(
                pre.stderr.contains(
                    "removing snapshot one/vm22-root@one_backup_7 left by an earlier run"
                ),
                "{}",
                pre.stderr
            );
        }
        // What the snapshot holds, before anything else changes.
        let expected: Vec<Vec<u8>> = DISKS
            .iter()
            .map(|(_, _, image, _)| {
                cc.ceph
                    .rbd_bytes(&["export", &format!("{POOL}/{image}@one_backup_{inc}"), "-"])
            })
            .collect();
        let diff_chunks = cc.diff_chunks(inc);
        // Increments 2 and 3 in pull mode (docs/pull-mode.md): the host serves each RBD
        // snapshot through librbd and names what `rbd diff` reports; this machine reads them.
        let out = if inc >= 2 {
            let pull = cc
                .cloud
                .datastore_xml_with("<BACKUP_PULL><![CDATA[YES]]></BACKUP_PULL>");
            cc.cloud.backup_to(&pull, &vm_xml)
        } else {
            cc.cloud.backup(&vm_xml)
        };
        assert_eq!(out.code, Some(0), "backup {inc}: {out:?}");
        assert_eq!(
            out.stderr
                .contains("pull mode: 2 disk(s) read from the exports of hv1"),
            inc >= 2,
            "{}",
            out.stderr
        );
        let (id, size_mb) = parse_backup_line(&out);
        if inc == 0 {
            assert!(
                size_mb >= 14,
                "a full backup reads the written data: {size_mb} MB"
            );
        } else {
            assert!(
                size_mb <= diff_chunks,
                "increment {inc} read {size_mb} MB; rbd diff reports {diff_chunks} MiB chunks"
            );
            assert!(
                size_mb < 24,
                "increment {inc} read {size_mb} MB: more than a disk"
            );
        }
        let post = cc.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        for (_, _, image, _) in DISKS {
            assert_eq!(
                cc.snapshots(image),
                [(format!("one_backup_{inc}"), true)],
                "snapshots of {image} after increment {inc}"
            );
        }
        cc.cloud.restic_ok(&["check", "--read-data"]);
        points.push((id, expected));
    }
    killed_host_step_leaves_only_the_parent(&cc);
    the_repo_command_line_reads_rbd_snapshots(&cc);
    in_place_restore_brings_rbd_disks_back(&cc, &points);
    for (inc, (id, expected)) in points.iter().enumerate() {
        for (k, (d, _, _, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            let data = cc.cloud.restic_ok(&["dump", id, &path]);
            assert!(
                data == expected[k],
                "disk {d} at increment {inc} differs from its RBD snapshot"
            );
        }
    }
}

/// Staging mode, FULL and three increments: prebackup writes the stock layout's qcow2 files
/// from the RBD snapshots (the
/// whole image at increment 0, then deltas of what `rbd diff` lists, which the stock drivers
/// rebase onto the file before), which the backup stores as complete images. Each staged chain,
/// rebuilt the stock way, is the snapshot; each stored point dumps as `rbd export` gives it.
#[test]
fn rbd_disks_staged_in_the_stock_layout() {
    let cc = CephCloud::start();
    cc.set_delivery("staging");
    cc.write("vm22-root", 0x11, 0, 8);
    cc.write("base-img-22-1", 0x22, 4, 6);
    let staging = cc.cloud.staging();
    let kept = cc.cloud.dir.path().join("staged");
    fs::create_dir_all(&kept).expect("kept");
    for inc in 0..4u64 {
        if inc > 0 {
            cc.write("vm22-root", 0x30 + inc as u8, 10 + inc * 5, 2);
            cc.write("base-img-22-1", 0x40 + inc as u8, inc * 3, 1);
        }
        let vm_xml = cc.vm_xml(inc as i64 - 1);
        let pre = cc.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        assert!(
            !staging.join("backstop.json").exists(),
            "a direct manifest in staging mode"
        );
        for (d, _, image, _) in DISKS {
            let file = kept.join(format!("disk.{d}.{inc}"));
            fs::copy(staging.join(format!("disk.{d}.{inc}")), &file).expect("staged file");
            if inc > 0 {
                crate::cloud::sh_ok(
                    "qemu-img",
                    &[
                        "rebase",
                        "-u",
                        "-f",
                        "qcow2",
                        "-F",
                        "qcow2",
                        "-b",
                        &format!("disk.{d}.{}", inc - 1),
                        file.to_str().expect("utf-8"),
                    ],
                );
            }
            let want = kept.join(format!("want.{d}.{inc}.raw"));
            fs::write(
                &want,
                cc.ceph
                    .rbd_bytes(&["export", &format!("{POOL}/{image}@one_backup_{inc}"), "-"]),
            )
            .expect("raw");
            crate::stock::compare(&file, &want);
        }
        let out = cc.cloud.backup(&vm_xml);
        let (id, _) = parse_backup_line(&out);
        let post = cc.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        for (d, ..) in DISKS {
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            let want = kept.join(format!("want.{d}.{inc}.raw"));
            assert!(
                cc.cloud.restic_ok(&["dump", &id, &path]) == fs::read(&want).expect("raw"),
                "disk {d} at increment {inc} differs from its RBD snapshot"
            );
        }
    }
    cc.cloud.restic_ok(&["check", "--read-data"]);
    // The increments are deltas: the last one holds only what changed.
    let delta = fs::metadata(kept.join("disk.0.2")).expect("delta").len();
    assert!(
        delta < 8 << 20,
        "increment 2 of disk 0 staged {delta} bytes"
    );
}

/// The `ceph` TM's in-place restore (`onevm restore`), with a MOCK oned serving the VM, the
/// backup image and its datastore: both disks back to increment 1, then disk 0 alone to
/// increment 3, each image as its snapshot was; the old images are gone with their snapshots,
/// no `.new.`/`.old.` image is left. A restore that cannot be done changes nothing.
fn in_place_restore_brings_rbd_disks_back(cc: &CephCloud, points: &[(String, Vec<Vec<u8>>)]) {
    let cloud = &cc.cloud;
    let link = cloud.remotes.join("tm/ceph/restore");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    let chain: Vec<(u64, &str)> = points
        .iter()
        .enumerate()
        .map(|(k, (s, _))| (k as u64, s.as_str()))
        .collect();
    let (vm_doc, image_doc, ds_doc) =
        (cc.vm_xml(3), cloud.image_xml(&chain), cloud.datastore_xml());
    let (oned, auth) = crate::tm::restore_oned(cloud, vm_doc, image_doc, ds_doc);
    let env = [
        ("ONE_XMLRPC", oned.endpoint.as_str()),
        ("ONE_AUTH", auth.to_str().expect("utf-8")),
    ];
    let vm_dir = format!("hv1:{}", cloud.vm_dir.display());
    let restore = |inc: &str, disk: &str| {
        support::run_env(&link, &[&vm_dir, "22", "40", inc, disk], b"", &env)
    };
    let head = |image: &str| {
        cc.ceph
            .rbd_bytes(&["export", &format!("{POOL}/{image}"), "-"])
    };
    let images = || {
        let mut names: Vec<String> = cc
            .ceph
            .rbd(&["ls", POOL])
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    };
    let before = images();

    cc.write("vm22-root", 0x99, 0, 4);
    let out = restore("1", "-1");
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{out:?}");
    for (k, (_, _, image, _)) in DISKS.iter().enumerate() {
        assert!(head(image) == points[1].1[k], "{image} is not increment 1");
        assert!(cc.snapshots(image).is_empty(), "{image} kept snapshots");
    }
    assert_eq!(images(), before, "images left beside the disks");
    let leftovers: Vec<String> = fs::read_dir(&cloud.vm_dir)
        .expect("vm dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let out = restore("3", "0");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        head("vm22-root") == points[3].1[0],
        "disk 0 is not increment 3"
    );
    assert!(head("base-img-22-1") == points[1].1[1], "disk 1 moved");

    // A disk the backup does not hold: one line, nothing changed, nothing left.
    let out = restore("1", "5");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr == "restore: Error restoring VM disks: disk 5 is not in backup 40\n",
        "{}",
        out.stderr
    );
    assert!(head("vm22-root") == points[3].1[0]);
    assert_eq!(images(), before);
    drop(oned);
}

/// SIGKILL of the backup's host step half-way through increment 4: oned's postbackup
/// (FAILURE) leaves only the parent's snapshot, no export keeps running, the repository checks
/// clean, and the retry is increment 4 again, whole and right.
fn killed_host_step_leaves_only_the_parent(cc: &CephCloud) {
    use crate::tm::{our_qemu_nbd, processes, wait_until};
    use std::io::Write;
    let dir = cc.cloud.dir.path();
    // 40 MiB that neither compress nor deduplicate, so the backup takes a moment.
    let noise = dir.join("noise.raw");
    fs::write(&noise, support::noise(40 << 20, 0x9e37_79b9_7f4a_7c15)).expect("noise");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -s {} 0 40M", noise.display()))
        .arg(cc.ceph.qemu_name("vm22-root"))
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm_xml = cc.vm_xml(3);
    let pre = cc.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let args = cc.cloud.backup_args();
    let mut backup = Command::new(cc.cloud.action("backup"))
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
        .write_all(
            format!(
                "<DS_DRIVER_ACTION_DATA>{}{vm_xml}</DS_DRIVER_ACTION_DATA>",
                cc.cloud.datastore_xml()
            )
            .as_bytes(),
        )
        .expect("stdin");
    // Killed once its export is registered (the owner file the next step's reaper reads),
    // as a real kill half-way through a backup finds it.
    let registered = || {
        fs::read_dir(backstop_image::nbd::exports_dir().expect("exports dir"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("export-")
                        && fs::read_to_string(e.path().join("owner"))
                            .is_ok_and(|o| o.contains("vm22-root@one_backup_4"))
                })
            })
            .unwrap_or(false)
    };
    wait_until("the host step's RBD export", || {
        !our_qemu_nbd(dir).is_empty() && registered()
    });
    for pid in processes("host-backup", dir) {
        crate::cloud::sh_ok("kill", &["-KILL", &pid.to_string()]);
    }
    let status = backup.wait().expect("wait");
    assert!(
        !status.success(),
        "the backup finished before the kill: nothing was tested"
    );
    wait_until("the host step to go", || {
        processes("host-backup", dir).is_empty()
    });
    let post = cc.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
    wait_until("its export to stop", || our_qemu_nbd(dir).is_empty());
    for (_, _, image, _) in DISKS {
        assert_eq!(
            cc.snapshots(image),
            [("one_backup_3".to_string(), true)],
            "{image} after a killed increment 4"
        );
    }
    // The killed run's lock is a dead process's: restic's own unlock removes it.
    cc.cloud.restic_ok(&["unlock"]);
    cc.cloud.restic_ok(&["check", "--read-data"]);
    // The retry.
    let pre = cc.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let expected = cc
        .ceph
        .rbd_bytes(&["export", &format!("{POOL}/vm22-root@one_backup_4"), "-"]);
    let (id, _) = parse_backup_line(&cc.cloud.backup(&vm_xml));
    let post = cc.step("postbackup", &vm_xml, false);
    assert_eq!(post.code, Some(0), "{post:?}");
    let path = format!("{}/disk.0.4", cc.cloud.staging().display());
    assert!(
        cc.cloud.restic_ok(&["dump", &id, &path]) == expected,
        "the retried increment 4 of disk 0 differs from its snapshot"
    );
    cc.cloud.restic_ok(&["check", "--read-data"]);
}

/// `backstop repo backup --rbd POOL/IMAGE@SNAP`, then an increment with --rbd-from-snap: what
/// it stores plain restic dumps like `rbd export`, and the increment reuses the parent's chunks.
fn the_repo_command_line_reads_rbd_snapshots(cc: &CephCloud) {
    let repo = cc.cloud.dir.path().join("cli-repo");
    let conf = cc.ceph.conf.display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(BACKSTOP)
            .arg("repo")
            .arg("-r")
            .arg(&repo)
            .args(args)
            .env("RESTIC_PASSWORD", crate::cloud::PASSWORD)
            .output()
            .expect("backstop repo");
        assert!(
            out.status.success(),
            "backstop repo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["init"]);
    let image = format!("{POOL}/vm22-root");
    cc.ceph.rbd(&["snap", "create", &format!("{image}@cli_a")]);
    let path = "/var/lib/one/datastores/0/22/backup/disk.0.0";
    run(&[
        "backup",
        "--rbd",
        &format!("{image}@cli_a"),
        "--ceph-conf",
        &conf,
        "--path",
        path,
    ]);
    cc.write("vm22-root", 0x77, 30, 1);
    cc.ceph.rbd(&["snap", "create", &format!("{image}@cli_b")]);
    let out = run(&[
        "backup",
        "--rbd",
        &format!("{image}@cli_b"),
        "--rbd-from-snap",
        "cli_a",
        "--parent",
        "latest",
        "--ceph-conf",
        &conf,
        "--path",
        path,
        "--json",
    ]);
    let stats: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        stats["reused_chunks"].as_u64().is_some_and(|n| n >= 40),
        "{stats}"
    );
    let expected = cc
        .ceph
        .rbd_bytes(&["export", &format!("{image}@cli_b"), "-"]);
    let dumped = Command::new("restic")
        .arg("--repo")
        .arg(&repo)
        .args(["--no-cache", "dump", "latest", path])
        .env("RESTIC_PASSWORD", crate::cloud::PASSWORD)
        .output()
        .expect("restic");
    assert!(
        dumped.status.success() && dumped.stdout == expected,
        "the --rbd increment differs"
    );
    for snap in ["cli_a", "cli_b"] {
        cc.ceph.rbd(&["snap", "rm", &format!("{image}@{snap}")]);
    }
}
