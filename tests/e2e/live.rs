//! Backups of a running VM (issue 5) through libvirt, as production runs them: a real
//! libvirtd and virtlogd (started by this test on private sockets, stopped by PID), a TCG
//! domain (`qemu-system-x86_64`, never KVM) with two qcow2 virtio disks and no guest OS,
//! guest writes made through the disks' own virtio devices (HMP `qemu-io` on the device's
//! block backend, so they go through the running VM exactly as a guest's would), and
//! backstop's prebackup_live / datastore backup / postbackup_live called as one_vmm_exec calls
//! them, over ssh to the hypervisor "hv1".
//!
//! What it shows, in direct and in staging mode: a FULL (external snapshot, read, blockcommit)
//! and CBT increments (pull-mode `backup-begin` with checkpoints) each restore byte-exact with
//! plain restic; the checkpoints rotate (`one-<vm>-<n>` alone after each backup); a failed
//! backup keeps the parent; checkpoint metadata libvirt lost is redefined from the disks'
//! bitmaps (the increment stays small); a lost bitmap heals into a whole read with an INFO
//! line; nothing stays behind (no overlay, no job, no scratch file, no socket, no staging).
//! The expected disk contents are computed from the writes the test makes, not read from the
//! live images (qemu caches qcow2 metadata, so outside reads of a running image are unsafe).

use crate::cloud::{Cloud, DISKS, VM, parse_backup_line};
use crate::support::{self, BACKSTOP, Outcome};
use std::fs;
use std::process::{Child, Command, Stdio};

/// libvirtd and virtlogd of this test, on private sockets; stopped by PID when dropped.
/// One libvirtd at a time: its QEMU driver keeps machine-wide state (`/run/libvirt/qemu`).
static ONE_LIBVIRT: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) struct Libvirt {
    /// Held while this libvirtd runs (tests run in parallel threads).
    _only: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
    pub(crate) uri: String,
}

impl Libvirt {
    pub(crate) fn start() -> Libvirt {
        let only = ONE_LIBVIRT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for tool in ["libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is missing: run .ci/install-libvirt.sh (libvirt 11.3 and qemu 10 from bookworm-backports)"
            );
        }
        // Short: unix socket paths must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("bslv")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path().to_path_buf();
        fs::create_dir_all(d.join("run")).expect("run");
        fs::write(
            d.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nunix_sock_group = \"root\"\nunix_sock_ro_perms = \"0700\"\n\
                 unix_sock_rw_perms = \"0700\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\n\
                 log_outputs = \"3:file:{}\"\n",
                d.join("run").display(),
                d.join("libvirtd.log").display()
            ),
        )
        .expect("libvirtd.conf");
        fs::write(
            d.join("virtlogd.conf"),
            format!(
                "log_outputs = \"3:file:{}\"\n",
                d.join("virtlogd.log").display()
            ),
        )
        .expect("virtlogd.conf");
        let spawn = |program: &str, conf: &str, pid: &str| {
            Command::new(program)
                .arg("-f")
                .arg(d.join(conf))
                .arg("-p")
                .arg(d.join(pid))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{program}: {e}"))
        };
        let mut lv = Libvirt {
            _only: only,
            uri: format!("qemu:///system?socket={}/run/libvirt-sock", d.display()),
            daemons: Vec::new(),
            dir,
        };
        lv.daemons
            .push(spawn("virtlogd", "virtlogd.conf", "virtlogd.pid"));
        lv.daemons
            .push(spawn("libvirtd", "libvirtd.conf", "libvirtd.pid"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while lv.virsh(&["version"]).code != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "libvirtd did not answer: {}",
                fs::read_to_string(lv.dir.path().join("libvirtd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        lv
    }

    fn virsh(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["--connect", &self.uri];
        all.extend_from_slice(args);
        support::run("virsh", &all, b"")
    }

    pub(crate) fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert_eq!(out.code, Some(0), "virsh {args:?}: {out:?}");
        out.stdout
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let dom = format!("one-{VM}");
        let _ = self.virsh(&["destroy", &dom]);
        for d in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .status();
            let _ = d.wait();
        }
    }
}

/// Makes disk 0 a raw file in the cloud; returns its content.
pub(crate) type PlantDisk = dyn Fn(&Cloud) -> Vec<u8>;

/// The test VM: its domain, the cloud around it, and what its disks must hold.
pub(crate) struct LiveVm<'a> {
    lv: &'a Libvirt,
    pub(crate) cloud: Cloud,
    pub(crate) expected: Vec<Vec<u8>>,
    pub(crate) dom: String,
    /// Disk 0 is a raw disk (`DRIVER=raw`), whose content the test planted.
    raw0: bool,
    /// Disk 1 is laid out as the qcow2 TM lays out a non-persistent image: `disk.1` ->
    /// `disk.1.snap/0`, an overlay over this file of the image datastore.
    pub(crate) image1: Option<std::path::PathBuf>,
    /// More attributes of the backup datastore's template (pull mode, for one).
    pub(crate) datastore_extra: String,
}

impl<'a> LiveVm<'a> {
    pub(crate) fn start(lv: &'a Libvirt, delivery: &str) -> LiveVm<'a> {
        Self::start_with(lv, delivery, None)
    }

    /// [`LiveVm::start`] with disk 1 on an image of the image datastore, as the qcow2 TM
    /// clones a non-persistent image: `disk.1` -> `disk.1.snap/0`, a qcow2 overlay whose
    /// backing file is the image (`<datastores>/1/<hash>`), which no backup may ever write.
    pub(crate) fn start_on_image(lv: &'a Libvirt, delivery: &str) -> LiveVm<'a> {
        Self::start_layout(lv, delivery, None, true)
    }

    /// With `raw0`, disk 0 is a raw file made by that function (which returns its content),
    /// declared raw to libvirt and in the VM document.
    pub(crate) fn start_with(
        lv: &'a Libvirt,
        delivery: &str,
        raw0: Option<&PlantDisk>,
    ) -> LiveVm<'a> {
        Self::start_layout(lv, delivery, raw0, false)
    }

    fn start_layout(
        lv: &'a Libvirt,
        delivery: &str,
        raw0: Option<&PlantDisk>,
        on_image: bool,
    ) -> LiveVm<'a> {
        let cloud = Cloud::start();
        let conf = cloud.remotes.join("etc/datastore/backstop.conf");
        let mut text = fs::read_to_string(&conf).expect("backstop.conf");
        text.push_str(&format!("TM_DELIVERY={delivery}\n"));
        fs::write(&conf, text).expect("backstop.conf");
        for action in ["prebackup_live", "postbackup_live"] {
            let link = cloud.remotes.join(format!("tm/qcow2/{action}"));
            fs::create_dir_all(link.parent().expect("parent")).expect("tm dir");
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
        }
        // OpenNebula's KVM driver settings in the host's synced tree: which libvirt to use.
        let kvmrc = cloud.dir.path().join("hv/var/tmp/one/etc/vmm/kvm/kvmrc");
        fs::create_dir_all(kvmrc.parent().expect("parent")).expect("kvmrc dir");
        fs::write(&kvmrc, format!("export LIBVIRT_URI=\"{}\"\n", lv.uri)).expect("kvmrc");
        cloud.create_disks();
        let image1 = on_image.then(|| image_chain(&cloud, 1));
        let mut expected: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
        if let Some(plant) = raw0 {
            expected[0] = plant(&cloud);
        }
        let dom = format!("one-{VM}");
        let disks: String = DISKS
            .iter()
            .map(|(d, _)| {
                format!(
                    "<disk type='file' device='disk'><driver name='qemu' type='{}'/>\
                     <source file='{}'/><target dev='vd{}' bus='virtio'/><alias name='ua-disk{d}'/></disk>",
                    if *d == 0 && raw0.is_some() { "raw" } else { "qcow2" },
                    cloud.disk(*d).display(),
                    char::from(b'a' + *d as u8)
                )
            })
            .collect();
        let xml = format!(
            "<domain type='qemu'><name>{dom}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>\
             <devices>{disks}</devices></domain>"
        );
        let file = cloud.dir.path().join("domain.xml");
        fs::write(&file, xml).expect("domain.xml");
        lv.virsh_ok(&["create", file.to_str().expect("utf-8")]);
        LiveVm {
            lv,
            cloud,
            expected,
            dom,
            raw0: raw0.is_some(),
            image1,
            datastore_extra: String::new(),
        }
    }

    /// A guest write: through the disk's virtio device, into the running VM.
    pub(crate) fn write(&mut self, disk: u32, pattern: u8, offset: u64, length: u64) {
        let cmd = format!(
            "qemu-io -d /machine/peripheral/ua-disk{disk}/virtio-backend \"write -P 0x{pattern:02x} {offset} {length}\""
        );
        let out = self
            .lv
            .virsh_ok(&["qemu-monitor-command", &self.dom, "--hmp", &cmd]);
        assert!(!out.contains("error"), "{cmd}: {out}");
        let buf = &mut self.expected[disk as usize];
        buf[offset as usize..(offset + length) as usize].fill(pattern);
    }

    /// Writes in `n` scattered places of both disks (deterministic per round).
    pub(crate) fn change(&mut self, round: u64, n: u64) {
        for (d, mb) in DISKS {
            for k in 0..n {
                let offset =
                    ((round * 7919 + k * 104_729 + u64::from(d) * 31) % (mb * 16 - 1)) * 65_536;
                self.write(d, (0x40 + round * 3 + k) as u8, offset, 65_536);
            }
        }
    }

    /// The VM document of a running VM (ACTIVE/RUNNING) at increment `inc` of its chain.
    pub(crate) fn vm_xml(&self, inc: u64) -> String {
        let xml = self
            .cloud
            .vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 })
            .replace(
                "<STATE>8</STATE><LCM_STATE>70</LCM_STATE>",
                "<STATE>3</STATE><LCM_STATE>3</LCM_STATE>",
            );
        if self.raw0 {
            crate::cloud::with_raw_disk(&xml, 0)
        } else {
            xml
        }
    }

    pub(crate) fn step(&self, action: &str, vm_xml: &str, failed: bool) -> Outcome {
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

    /// prebackup_live, backup, postbackup_live of increment `inc`: the backup id, its MB and
    /// prebackup's outcome. Checks the point restores byte-exact and nothing stays behind.
    pub(crate) fn backup(&self, inc: u64) -> (String, u64, Outcome) {
        let vm_xml = self.vm_xml(inc);
        let pre = self.step("prebackup_live", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup_live {inc}: {pre:?}");
        let ds = self.cloud.datastore_xml_with(&self.datastore_extra);
        let out = self.cloud.backup_to(&ds, &vm_xml);
        let (id, mb) = parse_backup_line(&out);
        let post = self.step("postbackup_live", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup_live {inc}: {post:?}");
        assert!(!post.stderr.contains("ERROR"), "{post:?}");
        self.check_clean(&[format!("one-{VM}-{inc}")]);
        let staging = self.cloud.staging();
        for (d, _) in DISKS {
            let path = format!("{}/disk.{d}.{inc}", staging.display());
            let data = self.cloud.restic_ok(&["dump", &id, &path]);
            assert!(
                data == self.expected[d as usize],
                "increment {inc}: disk {d} restored from {id} differs from what the guest wrote"
            );
        }
        (id, mb, pre)
    }

    pub(crate) fn checkpoints(&self) -> Vec<String> {
        let mut list: Vec<String> = self
            .lv
            .virsh_ok(&["checkpoint-list", &self.dom, "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        list.sort();
        list
    }

    /// After a postbackup_live: these checkpoints, the disks back on their files, no job, and
    /// nothing left in the VM directory but the disks.
    fn check_clean(&self, checkpoints: &[String]) {
        assert_eq!(self.checkpoints(), checkpoints);
        let blk = self.lv.virsh_ok(&["domblklist", &self.dom]);
        for (d, _) in DISKS {
            assert!(
                blk.contains(&self.cloud.disk(d).display().to_string()),
                "disk {d} is not back on its file: {blk}"
            );
        }
        let job = self.lv.virsh_ok(&["domjobinfo", &self.dom]);
        assert!(job.contains("None"), "a job is left: {job}");
        let mut left: Vec<String> = fs::read_dir(&self.cloud.vm_dir)
            .expect("vm dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let want: &[&str] = if self.image1.is_some() {
            &["disk.0", "disk.1", "disk.1.snap"]
        } else {
            &["disk.0", "disk.1"]
        };
        assert_eq!(left, want, "left in the VM directory");
    }
}

/// Moves disk `id` into the image datastore (`<datastores>/1/<hash>`) and makes `disk.<id>` the
/// qcow2 TM's clone of it: a link to `disk.<id>.snap/0`, an empty qcow2 overlay backed by the
/// image (absolute name, format given). Returns the image's path.
pub(crate) fn image_chain(cloud: &Cloud, id: u32) -> std::path::PathBuf {
    let datastores = cloud
        .vm_dir
        .parent()
        .and_then(|p| p.parent())
        .expect("datastores");
    let image = datastores.join(format!("1/5d3c0e9a1f7b{id}"));
    fs::create_dir_all(image.parent().expect("ds 1")).expect("image datastore");
    let disk = cloud.disk(id);
    fs::rename(&disk, &image).expect("into the image datastore");
    let snap = cloud.vm_dir.join(format!("disk.{id}.snap"));
    fs::create_dir(&snap).expect("snap dir");
    crate::cloud::sh_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            image.to_str().expect("utf-8"),
            snap.join("0").to_str().expect("utf-8"),
        ],
    );
    std::os::unix::fs::symlink(format!("disk.{id}.snap/0"), &disk).expect("link");
    image
}

fn digest(path: &std::path::Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(fs::read(path).expect("read")).to_vec()
}

/// The qcow2 TM's non-persistent disk: `disk.1` an overlay over an image every VM cloned from
/// it reads. A FULL (whose snapshot overlay is committed back) and CBT increments of the
/// running VM leave the image byte for byte as it was, and the VM on its own overlay: the
/// commit goes into the overlay's own backing file and no deeper (libvirt's default is the
/// bottom of the chain, which wrote the guest's data into the image).
#[test]
fn running_vm_on_an_image_clone_never_writes_the_image() {
    let lv = Libvirt::start();
    for delivery in ["direct", "staging"] {
        let mut vm = LiveVm::start_on_image(&lv, delivery);
        let image = vm.image1.clone().expect("image");
        let before = digest(&image);
        for inc in 0..3u64 {
            if inc > 0 {
                vm.change(inc, 4);
            }
            vm.backup(inc);
            assert!(
                digest(&image) == before,
                "{delivery}: increment {inc} wrote into the image datastore's image"
            );
            let blk = lv.virsh_ok(&["dumpxml", &vm.dom]);
            assert!(
                blk.contains(&image.display().to_string()),
                "{delivery}: the image is no longer under disk 1: {blk}"
            );
        }
        vm.cloud.restic_ok(&["check", "--read-data"]);
        lv.virsh_ok(&["destroy", &vm.dom]);
    }
}

fn live_backups(lv: &Libvirt, delivery: &str) {
    let mut vm = LiveVm::start(lv, delivery);
    // FULL through an external snapshot, then increments through pull-mode backups.
    let (_, _, pre) = vm.backup(0);
    assert!(
        pre.stderr
            .contains("increment 0 of the running VM prepared"),
        "{pre:?}"
    );
    for inc in 1..=2u64 {
        vm.change(inc, 6);
        let (_, mb, pre) = vm.backup(inc);
        // 6 writes of 64 KiB per disk: at most 12 chunks of 1 MiB.
        assert!(mb <= 12, "increment {inc} read {mb} MB");
        assert!(!pre.stderr.contains("whole"), "{pre:?}");
    }

    // A failed backup: the new checkpoint goes, the parent stays, and the retry is the same
    // increment from the same parent.
    vm.change(3, 4);
    let xml = vm.vm_xml(3);
    let pre = vm.step("prebackup_live", &xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    if delivery == "direct" {
        assert!(
            vm.cloud
                .dir
                .path()
                .join(format!("hv/datastores/0/{VM}/backup.socket"))
                .exists()
        );
    }
    let post = vm.step("postbackup_live", &xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
    vm.check_clean(&[format!("one-{VM}-2")]);
    let (_, mb, _) = vm.backup(3);
    assert!(mb <= 8, "the retried increment read {mb} MB");

    // An attempt whose front-end died after prebackup_live: no backup, no postbackup. Its
    // job (direct mode keeps the export up) and its checkpoint are still there.
    let pre = vm.step("prebackup_live", &vm.vm_xml(4), false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    assert_eq!(
        vm.checkpoints(),
        [format!("one-{VM}-3"), format!("one-{VM}-4")]
    );
    // And libvirt loses the parent's checkpoint metadata (OpenNebula redefines the domain at
    // every deploy). The next attempt stops the old job, drops the stale checkpoint,
    // redefines the parent from the disks' bitmaps, and the increment stays small.
    lv.virsh_ok(&[
        "checkpoint-delete",
        &vm.dom,
        &format!("one-{VM}-3"),
        "--metadata",
    ]);
    assert_eq!(vm.checkpoints(), [format!("one-{VM}-4")]);
    vm.change(4, 4);
    let (_, mb, pre) = vm.backup(4);
    assert!(mb <= 8, "increment 4 read {mb} MB: {pre:?}");
    assert!(!pre.stderr.contains("whole"), "{pre:?}");

    // The bitmaps themselves are gone (a disk copied, a restore): a whole read, said so, and
    // correct; the chain goes on from it.
    lv.virsh_ok(&["checkpoint-delete", &vm.dom, &format!("one-{VM}-4")]);
    vm.change(5, 3);
    let (_, mb, pre) = vm.backup(5);
    assert!(
        pre.stderr.contains("one-22-4") && pre.stderr.contains("reads the whole disks"),
        "{pre:?}"
    );
    assert!(mb > 12, "a whole read reads the data: {mb} MB");
    vm.change(6, 3);
    let (_, mb, _) = vm.backup(6);
    assert!(
        mb <= 6,
        "after healing, increments are small again: {mb} MB"
    );

    if delivery == "direct" {
        // FS_FREEZE=AGENT with no guest agent: refused with the reason, nothing changed.
        let agent = vm.vm_xml(7).replace(
            "<INCREMENT_MODE>",
            "<FS_FREEZE><![CDATA[AGENT]]></FS_FREEZE><INCREMENT_MODE>",
        );
        let pre = vm.step("prebackup_live", &agent, false);
        assert_eq!(pre.code, Some(1), "{pre:?}");
        assert!(
            pre.stderr.contains("FS_FREEZE: cannot freeze one-22") && pre.stderr.contains("agent"),
            "{pre:?}"
        );
        vm.check_clean(&[format!("one-{VM}-6")]);
        // FS_FREEZE=SUSPEND: paused around backup-begin, running again after.
        vm.change(7, 2);
        let xml = vm.vm_xml(7).replace(
            "<INCREMENT_MODE>",
            "<FS_FREEZE><![CDATA[SUSPEND]]></FS_FREEZE><INCREMENT_MODE>",
        );
        let pre = vm.step("prebackup_live", &xml, false);
        assert_eq!(pre.code, Some(0), "{pre:?}");
        assert!(lv.virsh_ok(&["domstate", &vm.dom]).contains("running"));
        let (_, _) = parse_backup_line(&vm.cloud.backup(&xml));
        let post = vm.step("postbackup_live", &xml, false);
        assert_eq!(post.code, Some(0), "{post:?}");
        vm.check_clean(&[format!("one-{VM}-7")]);

        // A new chain (a reset) whose FULL was interrupted after its snapshot: the disks run
        // on overlays. The next attempt commits them first, then backs up correctly.
        vm.change(8, 2);
        let pre = vm.step("prebackup_live", &vm.vm_xml(0), false);
        assert_eq!(pre.code, Some(0), "{pre:?}");
        let blk = lv.virsh_ok(&["domblklist", &vm.dom]);
        assert!(blk.contains("overlay_0.qcow2"), "{blk}");
        vm.change(9, 2);
        let (_, _, pre) = vm.backup(0);
        assert!(
            pre.stderr.contains("committed the overlay of vda"),
            "{pre:?}"
        );
    }
    vm.cloud.restic_ok(&["check", "--read-data"]);
    lv.virsh_ok(&["destroy", &vm.dom]);
}

#[test]
fn running_vm_full_and_cbt_increments_through_libvirt() {
    let lv = Libvirt::start();
    live_backups(&lv, "direct");
    live_backups(&lv, "staging");
}
