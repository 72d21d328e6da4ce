//! INCREMENT_MODE=SNAPSHOT done by backstop's own prebackup and postbackup (issue 26) for a
//! powered-off VM, as one_vmm_exec runs them: prebackup on the front-end (ssh to "hv1"), the
//! datastore's backup, postbackup; in staging and in direct mode.
//!
//! What it shows: the FULL turns each plain disk file into OpenNebula's rotating layout
//! (`disk.<id>` -> `disk.<id>.snap/1` over the base `disk.<id>.snap/0`); each increment reads
//! exactly the clusters the overlay holds (counted against `qemu-img map` of the overlay) and
//! restores byte-exact with plain restic; a failed backup leaves the chain as it was, so the
//! retry reads the same overlay; a chain rotated without a recorded backup (what the stock
//! script leaves when the datastore step fails after its prebackup) is noticed and read whole,
//! with the reason; a disk with disk snapshots is refused before anything moves.

use crate::cloud::{DISKS, parse_backup_line};
use crate::tm::Tm;
use std::fs;
use std::path::Path;

fn snapshot_xml(t: &Tm, inc: u64) -> String {
    t.cloud
        .vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 })
        .replace(
            "<INCREMENT_MODE><![CDATA[CBT]]></INCREMENT_MODE>",
            "<INCREMENT_MODE><![CDATA[SNAPSHOT]]></INCREMENT_MODE>",
        )
}

/// The bytes of the clusters a qcow2 file holds itself (its backing file not opened), and
/// how many 1 MiB chunks of the disk they touch.
fn own_clusters(file: &Path) -> (u64, u64) {
    let spec = serde_json::json!({
        "driver": "qcow2",
        "file": {"driver": "file", "filename": file.display().to_string()},
        "backing": null,
    });
    let out = crate::cloud::sh_ok(
        "qemu-img",
        &["map", "--output=json", &format!("json:{spec}")],
    );
    let map: Vec<serde_json::Value> = serde_json::from_str(&out).expect("map json");
    let mut bytes = 0;
    let mut chunks = std::collections::BTreeSet::new();
    for e in map.iter().filter(|e| e["present"].as_bool() == Some(true)) {
        let (start, length) = (
            e["start"].as_u64().expect("start"),
            e["length"].as_u64().expect("length"),
        );
        bytes += length;
        chunks.extend(start >> 20..=(start + length - 1) >> 20);
    }
    (bytes, chunks.len() as u64)
}

fn bytes_read(pre: &crate::support::Outcome) -> u64 {
    let at = pre.stderr.find(" bytes read").expect("the summary line");
    let start = pre.stderr[..at].rfind('(').expect("(") + 1;
    pre.stderr[start..at].parse().expect("bytes read")
}

/// Disk `d` of the VM in `vm_dir` runs on `disk.<d>.snap/<overlay>`, the only overlay of its
/// snapshot directory beside the base and the self-link, and names the base as OpenNebula
/// does; its `qemu-img info`.
fn assert_chain(vm_dir: &Path, d: u32, overlay: u64, what: &str) -> serde_json::Value {
    let link = vm_dir.join(format!("disk.{d}"));
    assert_eq!(
        fs::read_link(&link).expect("disk link"),
        Path::new(&format!("disk.{d}.snap/{overlay}")),
        "{what}: disk {d}"
    );
    let snap = vm_dir.join(format!("disk.{d}.snap"));
    assert_eq!(
        fs::read_link(snap.join(format!("disk.{d}.snap"))).expect("self-link"),
        Path::new(".")
    );
    let mut files: Vec<String> = fs::read_dir(&snap)
        .expect("snap dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "0".to_string(),
            overlay.to_string(),
            format!("disk.{d}.snap")
        ],
        "{what}: disk {d}'s snapshot directory"
    );
    let v = crate::cloud::qemu_info(&snap.join(overlay.to_string()));
    assert_eq!(
        v["backing-filename"],
        format!("disk.{d}.snap/0"),
        "{what}: disk {d}"
    );
    v
}

/// A running VM's disk `d`: `disk.<d>` leads to `disk.<d>.snap/<overlay>`, which resolves
/// from `disk.<d>` (as OpenNebula starts the VM) to a file of the snapshot directory; the
/// directory holds the base, at most one layer kept between (the VM was started on the
/// base), the overlay and the self-link.
fn assert_live_chain(vm_dir: &Path, d: u32, overlay: u64, what: &str) {
    let link = vm_dir.join(format!("disk.{d}"));
    assert_eq!(
        fs::read_link(&link).expect("disk link"),
        Path::new(&format!("disk.{d}.snap/{overlay}")),
        "{what}: disk {d}"
    );
    let v = crate::cloud::qemu_info(&link);
    let below = v["full-backing-filename"].as_str().expect("a backing file");
    let snap = vm_dir.join(format!("disk.{d}.snap"));
    let below = fs::canonicalize(below).expect("the backing file resolves from disk.<id>");
    assert_eq!(
        below.parent(),
        Some(fs::canonicalize(&snap).expect("snap").as_path()),
        "{what}: disk {d}'s overlay is over {}",
        below.display()
    );
    let mut files: Vec<String> = fs::read_dir(&snap)
        .expect("snap dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let kept = below
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let mut want = vec![
        "0".to_string(),
        kept,
        overlay.to_string(),
        format!("disk.{d}.snap"),
    ];
    want.sort();
    want.dedup();
    assert_eq!(files, want, "{what}: disk {d}'s snapshot directory");
}

/// Every disk runs on `disk.<id>.snap/<overlay>` ([`assert_chain`]); no bitmaps are kept.
fn check_layout(t: &Tm, overlay: u64) {
    for (d, _) in DISKS {
        let v = assert_chain(&t.cloud.vm_dir, d, overlay, "powered off");
        assert!(
            v["format-specific"]["data"]["bitmaps"]
                .as_array()
                .is_none_or(|b| b.is_empty()),
            "bitmaps kept in SNAPSHOT mode: {v}"
        );
    }
}

fn full_and_three_snapshot_increments(delivery: &str) {
    let t = Tm::start(delivery);
    let cloud = &t.cloud;
    for inc in 0..4u64 {
        let (mut overlay_bytes, mut overlay_chunks) = (0, 0);
        if inc > 0 {
            cloud.change_disks(inc, 12);
            for (d, _) in DISKS {
                let (b, c) = own_clusters(&cloud.vm_dir.join(format!("disk.{d}.snap/{inc}")));
                overlay_bytes += b;
                overlay_chunks += c;
            }
            assert!(overlay_bytes > 0);
        }
        let vm_xml = snapshot_xml(&t, inc);
        let pre = t.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        assert!(!pre.stderr.contains("whole"), "{pre:?}");
        let (id, size_mb) = parse_backup_line(&cloud.backup(&vm_xml));
        if inc > 0 {
            if delivery == "staging" {
                // Exactly the overlays' own clusters were read.
                assert_eq!(bytes_read(&pre), overlay_bytes, "increment {inc}");
            } else {
                // The backup reads the 1 MiB chunks the overlay's clusters touch, no others.
                assert!(
                    size_mb <= overlay_chunks,
                    "increment {inc} read {size_mb} MB for {overlay_chunks} chunks of overlay"
                );
            }
        }
        let post = t.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        assert!(!post.stderr.contains("ERROR"), "{post:?}");
        check_layout(&t, inc + 1);
        let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
        t.check_point(inc, &id, &now);
    }

    // A failed backup: nothing rotates, and the retry reads the same overlay (both rounds of
    // writes).
    cloud.change_disks(4, 5);
    let xml = snapshot_xml(&t, 4);
    let pre = t.step("prebackup", &xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let post = t.step("postbackup", &xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
    check_layout(&t, 4);
    cloud.change_disks(5, 5);
    let (id, pre) = t.backup_with(&xml);
    assert!(!pre.stderr.contains("whole"), "{pre:?}");
    check_layout(&t, 5);
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(4, &id, &now);

    // A rotation no backup recorded (the stock prebackup rotates before the datastore step,
    // which then failed): the overlay is not the one increment 5 needs, so it is read whole,
    // with the reason, and the chain is sound again after.
    let xml = snapshot_xml(&t, 5);
    assert_eq!(t.step("prebackup", &xml, false).code, Some(0));
    assert_eq!(t.step("postbackup", &xml, false).code, Some(0));
    check_layout(&t, 6);
    cloud.change_disks(6, 3);
    let (id, pre) = t.backup_with(&xml);
    assert!(
        pre.stderr
            .contains("disk 0 runs on overlay 6 of its snapshot directory, not on 5")
            && pre.stderr.contains("reads the whole disk"),
        "{pre:?}"
    );
    check_layout(&t, 6);
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(5, &id, &now);
    cloud.change_disks(7, 3);
    let (id, pre) = t.backup_with(&snapshot_xml(&t, 6));
    assert!(!pre.stderr.contains("whole"), "{pre:?}");
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(6, &id, &now);

    // Disk snapshots would be merged by the rotation: refused, nothing moved.
    let with_snapshots = snapshot_xml(&t, 7).replace(
        "<BACKUPS>",
        "<SNAPSHOTS><DISK_ID>1</DISK_ID><SNAPSHOT><ID>0</ID><NAME>s</NAME></SNAPSHOT></SNAPSHOTS><BACKUPS>",
    );
    let pre = t.step("prebackup", &with_snapshots, false);
    assert_eq!(pre.code, Some(1), "{pre:?}");
    assert!(
        pre.stderr
            .contains("disk 1 has disk snapshots, which INCREMENT_MODE=SNAPSHOT would merge"),
        "{pre:?}"
    );
    check_layout(&t, 7);
    cloud.restic_ok(&["check", "--read-data"]);
}

#[test]
fn snapshot_mode_of_a_stopped_vm_staged() {
    full_and_three_snapshot_increments("staging");
}

#[test]
fn snapshot_mode_of_a_stopped_vm_direct() {
    full_and_three_snapshot_increments("direct");
}

/// The running VM (TCG under a private libvirtd, guest writes through its virtio disks):
/// disk 0 a plain file (the ssh TM's), disk 1 the qcow2 TM's clone of an image
/// (`disk.1` -> `disk.1.snap/0` over an image of the image datastore). FULL and three
/// increments, direct and staged: each increment reads only the chunks the overlay touched and
/// restores byte-exact; the chain rotates through libvirt with the headers naming
/// `disk.<id>.snap/0`, so the VM starts again from `disk.<id>` afterwards (and its backups go
/// on, now with qemu knowing the overlay, not the base, as `disk.<id>`); the image is never
/// written; after a failed backup the retry reads the whole disks, with the reason.
/// The stopped VM's disks, read from `disk.<id>` as OpenNebula starts them, hold what the
/// guest wrote.
fn as_written(vm: &crate::live::LiveVm<'_>, when: &str) {
    for (d, _) in DISKS {
        assert!(
            vm.cloud.raw(d) == vm.expected[d as usize],
            "disk {d} read from disk.{d} {when}"
        );
    }
}

#[test]
fn snapshot_mode_of_a_running_vm() {
    use crate::live::{Libvirt, LiveVm};
    let lv = Libvirt::start();
    for delivery in ["direct", "staging"] {
        let mut vm = LiveVm::start_on_image(&lv, delivery);
        let image = vm.image1.clone().expect("image");
        let image_before = fs::read(&image).expect("image");
        let xml = |vm: &LiveVm<'_>, inc: u64| {
            vm.vm_xml(inc).replace(
                "<INCREMENT_MODE><![CDATA[CBT]]></INCREMENT_MODE>",
                "<INCREMENT_MODE><![CDATA[SNAPSHOT]]></INCREMENT_MODE>",
            )
        };
        let check = |vm: &LiveVm<'_>, inc: u64, id: &str, overlay: u64| {
            let blk = lv.virsh_ok(&["domblklist", &vm.dom]);
            for (d, _) in DISKS {
                assert_live_chain(&vm.cloud.vm_dir, d, overlay, delivery);
                let top = vm.cloud.vm_dir.join(format!("disk.{d}.snap/{overlay}"));
                assert!(
                    blk.contains(&top.display().to_string()),
                    "{delivery}: the VM does not run on {}: {blk}",
                    top.display()
                );
                let staging = vm.cloud.staging();
                let path = format!("{}/disk.{d}.{inc}", staging.display());
                let data = vm.cloud.restic_ok(&["dump", id, &path]);
                assert!(
                    data == vm.expected[d as usize],
                    "{delivery}: increment {inc} of disk {d} differs from what the guest wrote"
                );
            }
            assert!(
                fs::read(&image).expect("image") == image_before,
                "{delivery}: the image datastore's image was written"
            );
            assert!(vm.checkpoints().is_empty());
        };
        let backup = |vm: &LiveVm<'_>, inc: u64| -> (String, u64, crate::support::Outcome) {
            let doc = xml(vm, inc);
            let pre = vm.step("prebackup_live", &doc, false);
            assert_eq!(
                pre.code,
                Some(0),
                "{delivery}: prebackup_live {inc}: {pre:?}"
            );
            let (id, mb) = parse_backup_line(&vm.cloud.backup(&doc));
            assert!(!pre.stderr.contains("ERROR"), "{delivery}: {pre:?}");
            let post = vm.step("postbackup_live", &doc, false);
            assert_eq!(post.code, Some(0), "{post:?}");
            assert!(!post.stderr.contains("ERROR"), "{delivery}: {post:?}");
            (id, mb, pre)
        };
        for inc in 0..4u64 {
            if inc > 0 {
                vm.change(inc, 6);
            }
            let (id, mb, pre) = backup(&vm, inc);
            if inc > 0 {
                assert!(!pre.stderr.contains("whole"), "{delivery}: {pre:?}");
                // 6 writes of 64 KiB per disk: at most 12 chunks of 1 MiB.
                assert!(mb <= 12, "{delivery}: increment {inc} read {mb} MB");
            }
            check(&vm, inc, &id, inc + 1);
        }

        // A failed backup: the overlay it read was merged at once (disk.<id> already leads
        // to the new one, so a VM started again has every write), so the retry cannot know
        // what changed since the last good backup and reads the whole disks, saying why.
        vm.change(4, 3);
        let doc = xml(&vm, 4);
        let pre = vm.step("prebackup_live", &doc, false);
        assert_eq!(pre.code, Some(0), "{pre:?}");
        let post = vm.step("postbackup_live", &doc, true);
        assert_eq!(post.code, Some(0), "{post:?}");
        assert!(!post.stderr.contains("ERROR"), "{post:?}");
        assert!(!vm.cloud.vm_dir.join("disk.0.snap/4").exists());
        vm.change(5, 3);
        let (id, mb, pre) = backup(&vm, 4);
        assert!(
            pre.stderr.contains("not on 4") && pre.stderr.contains("reads the whole disk"),
            "{delivery}: {pre:?}"
        );
        assert!(mb > 12, "{delivery}: the retry read {mb} MB");
        check(&vm, 4, &id, 5);

        // OpenNebula starts the VM again from disk.<id>: the chain resolves, and holds what
        // the guest wrote.
        lv.virsh_ok(&["destroy", &vm.dom]);
        as_written(&vm, "after the VM stopped");
        let domain = vm.cloud.dir.path().join("domain.xml");
        lv.virsh_ok(&["create", domain.to_str().expect("utf-8")]);
        // Started on the overlay this time (qemu knows it as disk.<id>): the chain goes on.
        vm.change(6, 3);
        let (id, mb, pre) = backup(&vm, 5);
        assert!(!pre.stderr.contains("whole"), "{delivery}: {pre:?}");
        assert!(mb <= 6, "{delivery}: increment 5 read {mb} MB");
        check(&vm, 5, &id, 6);
        lv.virsh_ok(&["destroy", &vm.dom]);
        as_written(&vm, "after the second run");
        vm.cloud.restic_ok(&["check", "--read-data"]);
    }
}
