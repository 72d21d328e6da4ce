//! The security model (issue 12, `docs/security.md`), tried as an attacker would.
//!
//! A hostile guest: disk 0 of the VM is declared raw (`DRIVER=raw`); its guest
//! wrote a qcow2 header into the first sectors that names a file of the hypervisor (standing
//! for oneadmin's ssh key) as its backing file. Anything that lets qemu probe the format reads
//! the disk as qcow2, follows the backing file, and stores the host's file in the VM owner's
//! backup. backstop's prebackup, backup and postbackup run on it as oned runs them, for a
//! stopped VM and for a running one, in direct and in staging mode: the stored disk must be
//! byte for byte the raw disk, no byte of the host file may be in the repository, and the raw
//! disk must be unchanged (no bitmap written into it).

use crate::cloud::{Cloud, DISKS, parse_backup_line, sh_ok, with_raw_disk};
use std::fs;
use std::path::PathBuf;

/// What every line of the host's secret file starts with.
const SECRET: &[u8] = b"HOST-SECRET-OF-ONEADMIN:";

/// Plants the secret on the hypervisor and makes disk 0 the hostile raw disk; its content.
fn plant(cloud: &Cloud) -> Vec<u8> {
    let secret = cloud.dir.path().join("hv/oneadmin-id_rsa");
    let mut body = Vec::new();
    for line in 0..100_000u32 {
        body.extend_from_slice(SECRET);
        body.extend_from_slice(format!("{line:08}\n").as_bytes());
    }
    fs::write(&secret, &body).expect("secret");
    let header = cloud.dir.path().join("guest-header.qcow2");
    let size = format!("{}M", DISKS[0].1);
    sh_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            secret.to_str().expect("utf-8"),
            "-F",
            "raw",
            header.to_str().expect("utf-8"),
            &size,
        ],
    );
    let mut disk = fs::read(&header).expect("header");
    disk.resize((DISKS[0].1 << 20) as usize, 0);
    // Some of the guest's own data further on.
    disk[(9 << 20)..(11 << 20)].fill(0x5a);
    disk[(30 << 20)..(30 << 20) + 4096].fill(0xa5);
    fs::write(cloud.disk(0), &disk).expect("raw disk");
    // The attack is live: a probing qemu reads this raw disk as qcow2 on the host's file.
    let probed = sh_ok(
        "qemu-img",
        &[
            "info",
            "--output=json",
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    assert!(
        probed.contains("\"format\": \"qcow2\"") && probed.contains("oneadmin-id_rsa"),
        "the fixture is not hostile: {probed}"
    );
    disk
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file of every snapshot, dumped with plain restic: no byte of the host's file.
fn assert_no_secret(cloud: &Cloud) {
    let snapshots = cloud.restic_ok(&["snapshots", "--json"]);
    let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&snapshots).expect("json");
    assert!(!snapshots.is_empty());
    for s in snapshots {
        let id = s["id"].as_str().expect("id");
        for path in s["paths"].as_array().expect("paths") {
            let path = path.as_str().expect("path");
            let data = cloud.restic_ok(&["dump", id, path]);
            assert!(
                !contains(&data, SECRET),
                "snapshot {id} holds the host's file in {path}"
            );
        }
    }
    // And the raw pack files, in case something stored it uncompressed and unencrypted.
    for entry in walk(&cloud.repo()) {
        let data = fs::read(&entry).expect("repo file");
        assert!(!contains(&data, SECRET), "{} holds it", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn stopped(delivery: &str) {
    let t = crate::tm::Tm::start(delivery);
    let cloud = &t.cloud;
    let planted = plant(cloud);
    for inc in 0..2u64 {
        if inc > 0 {
            // Only the qcow2 disk changes; the raw disk is read whole again (it has no
            // bitmaps), and must still come out as its raw bytes.
            cloud.change_disks_only(1, inc, 6);
        }
        let vm_xml = with_raw_disk(
            &cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 }),
            0,
        );
        let pre = t.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        assert!(
            pre.stderr.contains("disk 0 is raw: it has no bitmaps") || inc == 0,
            "{pre:?}"
        );
        let (id, _) = parse_backup_line(&cloud.backup(&vm_xml));
        let post = t.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        let staging = cloud.staging();
        let stored =
            cloud.restic_ok(&["dump", &id, &format!("{}/disk.0.{inc}", staging.display())]);
        assert!(
            stored == planted,
            "{delivery}, increment {inc}: the stored disk 0 is not the raw disk"
        );
        let stored1 =
            cloud.restic_ok(&["dump", &id, &format!("{}/disk.1.{inc}", staging.display())]);
        assert!(
            stored1 == cloud.raw(1),
            "{delivery}, increment {inc}: disk 1"
        );
        assert!(
            fs::read(cloud.disk(0)).expect("disk 0") == planted,
            "{delivery}, increment {inc}: the host step changed the raw disk"
        );
    }
    cloud.restic_ok(&["check", "--read-data"]);
    assert_no_secret(cloud);
}

#[test]
fn a_raw_disk_with_a_guest_written_qcow2_header_is_stored_as_raw_bytes_stopped_vm() {
    stopped("direct");
    stopped("staging");
}

#[test]
fn a_raw_disk_with_a_guest_written_qcow2_header_is_stored_as_raw_bytes_running_vm() {
    let lv = crate::live::Libvirt::start();
    for delivery in ["direct", "staging"] {
        let vm = crate::live::LiveVm::start_with(&lv, delivery, Some(&plant));
        let planted = vm.expected[0].clone();
        // FULL (external snapshot; the frozen raw base is read) and a CBT increment (a
        // pull-mode backup: the raw disk is pulled whole). `backup` checks each point restores
        // as expected, and `expected[0]` is the planted raw content.
        for inc in 0..2u64 {
            let (_, _, pre) = vm.backup(inc);
            assert_eq!(pre.code, Some(0));
        }
        lv.virsh_ok(&["destroy", &vm.dom]);
        assert!(
            fs::read(vm.cloud.disk(0)).expect("disk 0") == planted,
            "{delivery}: the host steps changed the raw disk"
        );
        vm.cloud.restic_ok(&["check", "--read-data"]);
        assert_no_secret(&vm.cloud);
    }
}

/// A real ssh-agent for the front-end, stopped by its PID.
struct SshAgent {
    child: std::process::Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(dir: &std::path::Path, key: &std::path::Path) -> SshAgent {
        let socket = dir.join("agent.sock");
        let child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "ssh-agent did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let agent = SshAgent { child, socket };
        let out = crate::support::run_env(
            "ssh-add",
            &[key.to_str().expect("utf-8")],
            b"",
            &[("SSH_AUTH_SOCK", agent.sock())],
        );
        assert_eq!(out.code, Some(0), "ssh-add: {out:?}");
        agent
    }

    fn sock(&self) -> &str {
        self.socket.to_str().expect("utf-8")
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Least privilege over ssh: the front-end's agent goes only with the backup's host step,
/// which opens SFTP to the backup server; never with the transfer manager's host steps
/// (prebackup, postbackup) or with monitor's hop to the backup server. Seen from the real
/// sshd on each side: its debug log records every agent-forwarding request.
#[test]
fn the_agent_is_forwarded_only_to_the_host_step_that_opens_sftp() {
    let t = crate::tm::Tm::start("staging");
    let cloud = &t.cloud;
    let agent = SshAgent::start(cloud.dir.path(), &cloud.bks.client_key);
    let env = [("SSH_AUTH_SOCK", agent.sock())];
    let vm_xml = cloud.vm_xml(-1, -1);
    let args = cloud.backup_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tm = |action: &str| {
        crate::support::run_env(
            cloud.remotes.join(format!("tm/qcow2/{action}")),
            &args,
            vm_xml.as_bytes(),
            &env,
        )
    };

    let pre = tm("prebackup");
    assert_eq!(pre.code, Some(0), "{pre:?}");
    assert_eq!(
        cloud.hv.agent_requests(),
        0,
        "prebackup forwarded the agent"
    );

    let data = format!(
        "<DS_DRIVER_ACTION_DATA>{}{vm_xml}</DS_DRIVER_ACTION_DATA>",
        cloud.datastore_xml()
    );
    let backup = crate::support::run_env(cloud.action("backup"), &args, data.as_bytes(), &env);
    parse_backup_line(&backup);
    assert_eq!(
        cloud.hv.agent_requests(),
        1,
        "the backup's host step (SFTP to the backup server) gets the agent"
    );

    let post = tm("postbackup");
    assert_eq!(post.code, Some(0), "{post:?}");
    assert_eq!(
        cloud.hv.agent_requests(),
        1,
        "postbackup forwarded the agent"
    );

    let monitor = crate::support::run_env(
        cloud.action("monitor"),
        &["100"],
        crate::support::b64(&format!(
            "<DS_DRIVER_ACTION_DATA>{}</DS_DRIVER_ACTION_DATA>",
            cloud.datastore_xml()
        ))
        .as_bytes(),
        &env,
    );
    assert_eq!(monitor.code, Some(0), "{monitor:?}");
    assert!(monitor.stdout.starts_with("USED_MB="), "{monitor:?}");
    // The backup's SFTP sessions came from the host with the forwarded agent, not as
    // agent requests; monitor's ssh to the backup server asked for none.
    assert_eq!(cloud.bks.agent_requests(), 0, "monitor forwarded the agent");
}
