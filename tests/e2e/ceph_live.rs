//! A running VM on Ceph: a TCG domain (no KVM, no guest OS) whose two disks are RBD images
//! opened by qemu through librbd (libvirt `network` disks with the test cluster's config file),
//! guest writes made through the disks' own virtio devices, and backstop's `ceph` TM
//! prebackup_live / the datastore's backup / postbackup_live called as one_vmm_exec calls them.
//! FULL and three increments in direct mode, then a new chain of FULL and three increments in
//! staging mode, with FS_FREEZE=SUSPEND: the guest is paused around the snapshots and running again after; each
//! point restores byte-exact with plain restic against what the guest wrote; an increment
//! reads only what changed; only the last snapshot stays.

use crate::ceph::{CephCloud, DISKS};
use crate::cephcluster::POOL;
use crate::cloud::{VM, parse_backup_line};
use crate::live::Libvirt;
use crate::support::{BACKSTOP, Outcome};
use std::fs;

struct RbdVm<'a> {
    cc: CephCloud,
    lv: &'a Libvirt,
    dom: String,
    expected: Vec<Vec<u8>>,
}

impl<'a> RbdVm<'a> {
    fn start(lv: &'a Libvirt) -> RbdVm<'a> {
        let cc = CephCloud::start();
        for action in ["prebackup_live", "postbackup_live"] {
            let link = cc.cloud.remotes.join(format!("tm/ceph/{action}"));
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
        }
        let kvmrc = cc.cloud.dir.path().join("hv/var/tmp/one/etc/vmm/kvm/kvmrc");
        fs::create_dir_all(kvmrc.parent().expect("parent")).expect("kvmrc dir");
        fs::write(&kvmrc, format!("export LIBVIRT_URI=\"{}\"\n", lv.uri)).expect("kvmrc");
        let disks: String = DISKS
            .iter()
            .map(|(d, _, image, _)| {
                format!(
                    "<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
                     <source protocol='rbd' name='{POOL}/{image}'><config file='{}'/></source>\
                     <target dev='vd{}' bus='virtio'/><alias name='ua-disk{d}'/></disk>",
                    cc.ceph.conf.display(),
                    char::from(b'a' + *d as u8)
                )
            })
            .collect();
        let dom = format!("one-{VM}");
        let xml = format!(
            "<domain type='qemu'><name>{dom}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>\
             <devices>{disks}</devices></domain>"
        );
        let file = cc.cloud.dir.path().join("domain.xml");
        fs::write(&file, xml).expect("domain.xml");
        lv.virsh_ok(&["create", file.to_str().expect("utf-8")]);
        let expected = DISKS
            .iter()
            .map(|(_, _, _, mib)| vec![0u8; (*mib << 20) as usize])
            .collect();
        RbdVm {
            cc,
            lv,
            dom,
            expected,
        }
    }

    /// A guest write: through the disk's virtio device, into the running VM.
    fn write(&mut self, disk: u32, pattern: u8, offset: u64, length: u64) {
        let cmd = format!(
            "qemu-io -d /machine/peripheral/ua-disk{disk}/virtio-backend \"write -P 0x{pattern:02x} {offset} {length}\""
        );
        let out = self
            .lv
            .virsh_ok(&["qemu-monitor-command", &self.dom, "--hmp", &cmd]);
        assert!(!out.contains("error"), "{cmd}: {out}");
        self.expected[disk as usize][offset as usize..(offset + length) as usize].fill(pattern);
    }

    /// The VM document of the running VM at increment `inc`, FS_FREEZE=SUSPEND.
    fn vm_xml(&self, inc: u64) -> String {
        self.cc
            .vm_xml(inc as i64 - 1)
            .replace(
                "<STATE>8</STATE><LCM_STATE>70</LCM_STATE>",
                "<STATE>3</STATE><LCM_STATE>3</LCM_STATE>",
            )
            .replace(
                "<BACKUP_CONFIG>",
                "<BACKUP_CONFIG><FS_FREEZE>SUSPEND</FS_FREEZE>",
            )
    }

    fn step(&self, action: &str, vm_xml: &str) -> Outcome {
        crate::tm::tm_step(&self.cc.cloud, "ceph", action, vm_xml, false)
    }
}

#[test]
fn running_vm_on_ceph_direct_and_staged_with_the_guest_paused_around_the_snapshots() {
    let lv = Libvirt::start();
    let mut vm = RbdVm::start(&lv);
    let staging = vm.cc.cloud.staging();
    for round in 0..8u64 {
        let inc = round % 4;
        if round == 4 {
            // A new chain in staging mode: the snapshots are taken frozen, the stock layout's
            // files written from them after the thaw.
            vm.cc.set_delivery("staging");
        }
        for k in 0..4u64 {
            let offset = ((round * 13 + k * 7) % 40) << 20;
            vm.write(0, 0x20 + (round * 4 + k) as u8, offset, 256 << 10);
            vm.write(
                1,
                0x60 + (round * 4 + k) as u8,
                offset % (20 << 20),
                64 << 10,
            );
        }
        let vm_xml = vm.vm_xml(inc);
        let pre = vm.step("prebackup_live", &vm_xml);
        assert_eq!(pre.code, Some(0), "prebackup_live {inc}: {pre:?}");
        // The guest was paused for the snapshots (libvirt says why it runs: it was unpaused),
        // runs again, and keeps writing while the backup reads the snapshots.
        let state = vm.lv.virsh_ok(&["domstate", &vm.dom, "--reason"]);
        assert!(state.contains("running (unpaused)"), "{state}");
        let at_snapshot = vm.expected.clone();
        vm.write(0, 0xfe, 0, 1 << 20);
        let out = vm.cc.cloud.backup(&vm_xml);
        let (id, mb) = parse_backup_line(&out);
        let chunks = vm.cc.diff_chunks(inc);
        if inc > 0 {
            assert!(
                mb <= chunks && mb < 24,
                "increment {inc} read {mb} MB; rbd diff reports {chunks} MiB chunks"
            );
        }
        let post = vm.step("postbackup_live", &vm_xml);
        assert_eq!(post.code, Some(0), "postbackup_live {inc}: {post:?}");
        assert!(!post.stderr.contains("ERROR"), "{post:?}");
        for (k, (d, _, image, _)) in DISKS.iter().enumerate() {
            assert_eq!(
                vm.cc.snapshots(image),
                [(format!("one_backup_{inc}"), true)],
                "snapshots of {image} after increment {inc}"
            );
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            let data = vm.cc.cloud.restic_ok(&["dump", &id, &path]);
            assert!(
                data == at_snapshot[k],
                "increment {inc}: disk {d} differs from what the guest had written at the snapshot"
            );
        }
        vm.cc.cloud.restic_ok(&["check", "--read-data"]);
        assert!(!staging.exists(), "the staging directory stayed");
    }
}
