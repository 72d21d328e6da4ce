//! backstop's own prebackup and postbackup (issue 5) with its datastore, as one_vmm_exec runs
//! them for a powered-off VM: prebackup on the front-end (ssh to the hypervisor "hv1"), the
//! datastore's backup, postbackup; FULL and three CBT increments with writes between them; in
//! staging mode (stock layout, which the stock consumers' rebase/commit also accept) and in
//! direct mode (no copy of the disks). Every increment restores byte-exact with plain restic,
//! the bitmaps are rotated, nothing is left on the host, and a lost or inconsistent bitmap
//! heals into a whole read.

use crate::cloud::{Cloud, DISKS, VM, parse_backup_line};
use crate::support::{self, BACKSTOP, Outcome};
use std::fs;
use std::path::{Path, PathBuf};

fn bitmaps(disk: &Path) -> Vec<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .expect("qemu-img");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info json");
    let mut names: Vec<String> = v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// qemu-nbd processes serving files under `dir`.
fn our_qemu_nbd(dir: &Path) -> Vec<u32> {
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

struct Tm {
    cloud: Cloud,
}

impl Tm {
    fn start(delivery: &str) -> Tm {
        let cloud = Cloud::start();
        let conf = cloud.remotes.join("etc/datastore/backstop.conf");
        let mut text = fs::read_to_string(&conf).expect("backstop.conf");
        text.push_str(&format!("TM_DELIVERY={delivery}\n"));
        fs::write(&conf, text).expect("backstop.conf");
        // The transfer manager's actions, as install.sh --with-tm would place them.
        for action in ["prebackup", "postbackup"] {
            let link = cloud.remotes.join(format!("tm/qcow2/{action}"));
            fs::create_dir_all(link.parent().expect("parent")).expect("tm dir");
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
        }
        cloud.create_disks();
        Tm { cloud }
    }

    fn step(&self, action: &str, vm_xml: &str, failed: bool) -> Outcome {
        let stdin = if failed {
            format!("{vm_xml}<BACKUP_RESULT>FAILURE</BACKUP_RESULT>")
        } else {
            vm_xml.to_string()
        };
        let args = self.cloud.backup_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        support::run(
            self.cloud.remotes.join(format!("tm/qcow2/{action}")),
            &refs,
            stdin.as_bytes(),
        )
    }

    /// prebackup, backup, postbackup of increment `inc`; the backup id.
    fn backup(&self, inc: u64) -> (String, Outcome) {
        let vm_xml = self
            .cloud
            .vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        let pre = self.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        assert_eq!(pre.stdout, "");
        let (id, _) = parse_backup_line(&self.cloud.backup(&vm_xml));
        let post = self.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        (id, pre)
    }

    fn check_point(&self, inc: u64, id: &str, expected: &[Vec<u8>]) {
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
