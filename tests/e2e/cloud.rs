//! The test that plays oned: a hypervisor and a backup server (two real sshd on loopback,
//! reached through aliases in a test ssh config), the remotes tree installed by install.sh and
//! copied to the hypervisor's remote scripts directory as `onehost sync` does, staging done as
//! the stock CBT prebackup does it (qemu-img, qemu-nbd with the dirty bitmap, qemu-io
//! copy-on-read), then the datastore actions called with oned's argv and stdin. The real
//! restic binary checks the repository after every step.

use crate::oned_mock::{MockOned, failed, ok};
use crate::s3server::S3Server;
use crate::support::{self, Outcome};
use backstop_protocol::xmlrpc::Value;
use backstop_testkit::sshd;
use sshd::{Sshd, run as sh};

/// Another test sshd (a second hypervisor), stopped when dropped.
pub fn start_sshd(dir: &Path, addr: &str, alias: &str) -> Sshd {
    Sshd::start_on(dir, addr, alias)
}

/// Runs a command that must succeed; its stdout.
pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    sh(cmd, args)
}
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const VM: u64 = 22;
/// The bucket of the S3 datastore (made by the first backup's repository init).
pub const S3_BUCKET: &str = "one-backups";
pub const PASSWORD: &str = "hunter2-secret";
/// The front-end's oned login (ONE_AUTH) the MOCK oned accepts.
pub const ONED_SESSION: &str = "oneadmin:opennebula-test";
/// The server user's password (ONE_CIPHER_AUTH) the MOCK oned accepts cipher logins from.
const SERVERADMIN_PASSWORD: &str = "srv-secret-7";

/// Whether `session` is a valid server-cipher login of serveradmin as `user`, checked the way
/// oned's server_cipher driver checks it: decrypted with openssl (the reference cipher), the
/// user names matching and the expiry in the future but no more than ~2 minutes away.
fn cipher_login_for(session: &str, user: &str) -> bool {
    use sha2::Digest;
    let Some(b64) = session.strip_prefix(&format!("serveradmin:{user}:")) else {
        return false;
    };
    let hex = hex::encode(sha2::Sha256::digest(SERVERADMIN_PASSWORD.as_bytes()));
    let key = hex::encode(&hex.as_bytes()[..32]);
    let iv = hex::encode(&hex.as_bytes()[..16]);
    let mut child = Command::new("openssl")
        .args([
            "enc",
            "-d",
            "-aes-256-cbc",
            "-base64",
            "-A",
            "-K",
            &key,
            "-iv",
            &iv,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    use std::io::Write;
    let _ = child.stdin.take().expect("stdin").write_all(b64.as_bytes());
    let out = child.wait_with_output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match text.strip_prefix(&format!("serveradmin:{user}:")) {
        Some(exp) if out.status.success() => {
            exp.parse::<i64>().is_ok_and(|e| e > now && e <= now + 130)
        }
        _ => false,
    }
}
/// Disk id and size in MiB.
pub const DISKS: [(u32, u64); 2] = [(0, 48), (1, 24)];

/// qemu-nbd exporting a disk read-only with a dirty bitmap, stopped by its PID.
struct Export(Child);

impl Drop for Export {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Cloud {
    pub dir: tempfile::TempDir,
    pub hv: Sshd,
    pub bks: Sshd,
    pub remotes: PathBuf,
    pub vm_dir: PathBuf,
    pub base_path: PathBuf,
    /// The datastore driver name: `backstop` side by side, `restic` drop-in.
    pub mad: &'static str,
    /// An S3 datastore on this server instead of SFTP to `bks`.
    pub s3: Option<S3Server>,
    /// S3 with split keys: the datastore's write key may not delete (but lock files), and its
    /// maintenance key is the admin's (docs/s3.md, "Split keys").
    pub split_keys: bool,
}

impl Cloud {
    pub fn start() -> Cloud {
        Cloud::start_as("backstop")
    }

    /// `restic`: backstop installed drop-in (`--replace-stock`) in place of the stock driver.
    pub fn start_as(mad: &'static str) -> Cloud {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Sshd::start_on(dir.path(), "127.0.0.2", "hv1");
        let bks = Sshd::start_on(dir.path(), "127.0.0.3", "bks");
        let ssh_config = dir.path().join("ssh_config");
        // "stranger" is the backup server under a name whose host key nobody recorded.
        let no_keys = dir.path().join("known_hosts.empty");
        fs::write(&no_keys, "").expect("known_hosts.empty");
        let stranger = bks
            .block_with(&no_keys)
            .replacen("Host bks\n", "Host stranger\n", 1);
        fs::write(
            &ssh_config,
            format!("{}{}{stranger}", hv.host_block(), bks.host_block()),
        )
        .expect("ssh_config");
        // A stock front-end's remotes tree (with its downloader.sh), backstop installed side
        // by side.
        let remotes = dir.path().join("fe/remotes");
        support::stock_remotes(&remotes);
        let flags: &[&str] = if mad == "restic" {
            &["--replace-stock"]
        } else {
            &[]
        };
        let out = support::install_sh(&remotes, flags);
        assert_eq!(out.code, Some(0), "install.sh: {}", out.stderr);
        let host_remotes = dir.path().join("hv/var/tmp/one");
        let run_dir = dir.path().join("fe/run");
        fs::create_dir_all(remotes.join("etc/datastore")).expect("etc");
        fs::write(
            remotes.join("etc/datastore/backstop.conf"),
            format!(
                "SCRIPTS_REMOTE_DIR={}\nSSH_CONFIG={}\nRUN_DIR={}\n",
                host_remotes.display(),
                ssh_config.display(),
                run_dir.display()
            ),
        )
        .expect("backstop.conf");
        // onehost sync: the whole tree, copied.
        fs::create_dir_all(host_remotes.parent().expect("parent")).expect("host dir");
        sh(
            "cp",
            &[
                "-a",
                remotes.to_str().expect("utf-8"),
                host_remotes.to_str().expect("utf-8"),
            ],
        );
        let vm_dir = dir.path().join(format!("hv/datastores/0/{VM}"));
        fs::create_dir_all(&vm_dir).expect("vm dir");
        let base_path = dir.path().join("bks/datastores/100");
        Cloud {
            dir,
            hv,
            bks,
            remotes,
            vm_dir,
            base_path,
            mad,
            s3: None,
            split_keys: false,
        }
    }

    /// The cloud with its backup datastore on S3 (SeaweedFS on loopback), over plain http or
    /// https with a private CA (`RESTIC_S3_CACERT`).
    pub fn start_s3(tls: bool) -> Cloud {
        Cloud::start_as_s3("backstop", tls)
    }

    /// [`Cloud::start_s3`] with the driver installed as `mad`.
    pub fn start_as_s3(mad: &'static str, tls: bool) -> Cloud {
        let mut cloud = Cloud::start_as(mad);
        cloud.s3 = Some(S3Server::start_with(cloud.dir.path(), tls));
        cloud
    }

    pub fn disk(&self, id: u32) -> PathBuf {
        self.vm_dir.join(format!("disk.{id}"))
    }

    pub fn staging(&self) -> PathBuf {
        self.vm_dir.join("backup")
    }

    pub fn repo(&self) -> PathBuf {
        self.base_path.join(VM.to_string())
    }

    pub fn datastore_xml(&self) -> String {
        self.datastore_xml_with("")
    }

    /// The datastore with more template attributes.
    pub fn datastore_xml_with(&self, extra: &str) -> String {
        let storage = match &self.s3 {
            None => "<RESTIC_SFTP_SERVER><![CDATA[bks]]></RESTIC_SFTP_SERVER>\
                     <RESTIC_SFTP_USER><![CDATA[root]]></RESTIC_SFTP_USER>"
                .to_string(),
            Some(s3) => format!(
                "<RESTIC_BACKEND><![CDATA[S3]]></RESTIC_BACKEND>\
                 <RESTIC_S3_ENDPOINT><![CDATA[{}]]></RESTIC_S3_ENDPOINT>\
                 <RESTIC_S3_BUCKET><![CDATA[{S3_BUCKET}]]></RESTIC_S3_BUCKET>\
                 <RESTIC_S3_ACCESS_KEY_ID><![CDATA[{}]]></RESTIC_S3_ACCESS_KEY_ID>\
                 <RESTIC_S3_SECRET_ACCESS_KEY><![CDATA[{}]]></RESTIC_S3_SECRET_ACCESS_KEY>{}{}",
                s3.endpoint,
                if self.split_keys {
                    crate::s3server::NODELETE_ACCESS_KEY
                } else {
                    crate::s3server::ACCESS_KEY
                },
                if self.split_keys {
                    crate::s3server::NODELETE_SECRET_KEY
                } else {
                    crate::s3server::SECRET_KEY
                },
                if self.split_keys {
                    format!(
                        "<RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID><![CDATA[{}]]></RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID>\
                         <RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY><![CDATA[{}]]></RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY>",
                        crate::s3server::ACCESS_KEY,
                        crate::s3server::SECRET_KEY
                    )
                } else {
                    String::new()
                },
                s3.ca
                    .as_ref()
                    .map(|ca| format!(
                        "<RESTIC_S3_CACERT><![CDATA[{}]]></RESTIC_S3_CACERT>",
                        ca.display()
                    ))
                    .unwrap_or_default()
            ),
        };
        format!(
            "<DATASTORE><ID>100</ID><NAME>backups</NAME><DS_MAD><![CDATA[{}]]></DS_MAD>\
             <TM_MAD><![CDATA[-]]></TM_MAD><BASE_PATH><![CDATA[{}]]></BASE_PATH><TYPE>3</TYPE>\
             <TEMPLATE><RESTIC_PASSWORD><![CDATA[{PASSWORD}]]></RESTIC_PASSWORD>\
             {storage}{extra}</TEMPLATE></DATASTORE>",
            self.mad,
            self.base_path.display()
        )
    }

    /// The VM as oned describes it, with its backup pointers.
    pub fn vm_xml(&self, last_increment: i64, image: i64) -> String {
        let disks: String = DISKS
            .iter()
            .map(|(id, mb)| {
                format!(
                    "<DISK><DISK_ID><![CDATA[{id}]]></DISK_ID><FORMAT><![CDATA[qcow2]]></FORMAT>\
                     <SIZE><![CDATA[{mb}]]></SIZE><TARGET><![CDATA[vd{}]]></TARGET>\
                     <TYPE><![CDATA[FILE]]></TYPE></DISK>",
                    char::from(b'a' + *id as u8)
                )
            })
            .collect();
        format!(
            "<VM><ID>{VM}</ID><UID>0</UID><NAME>db</NAME><STATE>8</STATE><LCM_STATE>70</LCM_STATE>\
             <DEPLOY_ID>one-{VM}</DEPLOY_ID><TEMPLATE>{disks}<VMID><![CDATA[{VM}]]></VMID></TEMPLATE>\
             <USER_TEMPLATE/><HISTORY_RECORDS><HISTORY><HOSTNAME>hv1</HOSTNAME><HID>0</HID>\
             <DS_ID>0</DS_ID><TM_MAD>ssh</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS>\
             <BACKUPS><BACKUP_CONFIG><MODE><![CDATA[INCREMENT]]></MODE>\
             <INCREMENT_MODE><![CDATA[CBT]]></INCREMENT_MODE>\
             <LAST_INCREMENT_ID><![CDATA[{last_increment}]]></LAST_INCREMENT_ID>\
             <INCREMENTAL_BACKUP_ID><![CDATA[{image}]]></INCREMENTAL_BACKUP_ID>\
             <LAST_DATASTORE_ID><![CDATA[100]]></LAST_DATASTORE_ID></BACKUP_CONFIG>\
             <BACKUP_IDS/></BACKUPS></VM>"
        )
    }

    /// Makes the VM's disks: qcow2 files with data in a few places.
    pub fn create_disks(&self) {
        for (id, mb) in DISKS {
            let d = self.disk(id);
            let p = d.to_str().expect("utf-8");
            sh(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", p, &format!("{mb}M")],
            );
            sh(
                "qemu-io",
                &[
                    "-f",
                    "qcow2",
                    "-c",
                    &format!("write -P 0x{:02x} 0 5M", 0x11 + id),
                    "-c",
                    &format!("write -P 0x{:02x} 9M 3M", 0x21 + id),
                    "-c",
                    "write -P 0x33 20M 1M",
                    p,
                ],
            );
        }
    }

    /// Changes the disks in `n` scattered places (deterministic per round).
    pub fn change_disks(&self, round: u64, n: u64) {
        for (id, _) in DISKS {
            self.change_disks_only(id, round, n);
        }
    }

    /// [`Cloud::change_disks`] of one disk.
    pub fn change_disks_only(&self, id: u32, round: u64, n: u64) {
        {
            let mb = DISKS.iter().find(|d| d.0 == id).expect("disk").1;
            let d = self.disk(id);
            let mut cmds = Vec::new();
            for k in 0..n {
                let x = (round * 7919 + k * 104_729 + u64::from(id) * 31)
                    % (mb * 1024 * 1024 - 300_000);
                let len = 4096 + (k * 37_813 + round * 5) % 200_000;
                cmds.push(format!(
                    "write -P 0x{:02x} {x} {len}",
                    (round * 16 + k) % 251 + 1
                ));
            }
            let mut args = vec!["-f", "qcow2"];
            for c in &cmds {
                args.push("-c");
                args.push(c);
            }
            let p = d.to_str().expect("utf-8").to_string();
            args.push(&p);
            sh("qemu-io", &args);
        }
    }

    /// The content now of a qcow2 disk, raw.
    pub fn raw(&self, id: u32) -> Vec<u8> {
        let out = self.dir.path().join(format!("expect.{id}.raw"));
        sh(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                self.disk(id).to_str().expect("utf-8"),
                out.to_str().expect("utf-8"),
            ],
        );
        let data = fs::read(&out).expect("raw");
        fs::remove_file(&out).expect("rm");
        data
    }

    /// What the stock CBT prebackup (poweroff) leaves in `<vm_dir>/backup`: `vm.xml` (the VM
    /// XML in base64, 60 columns) and `disk.<id>.<increment>` per disk (a full qcow2 for
    /// increment 0; for later ones, a qcow2 holding the dirty-bitmap extents, read through
    /// qemu-nbd with copy-on-read, whose backing file is the nbd URI). Then the bitmaps move
    /// on as the stock script moves them.
    pub fn stage(&self, increment: u64, vm_xml: &str) {
        let staging = self.staging();
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).expect("staging");
        let b64 = support::b64(vm_xml);
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(60)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        fs::write(staging.join("vm.xml"), format!("{}\n", wrapped.join("\n"))).expect("vm.xml");
        for (id, _) in DISKS {
            let disk = self.disk(id);
            let d = disk.to_str().expect("utf-8");
            let target = staging.join(format!("disk.{id}.{increment}"));
            let t = target.to_str().expect("utf-8");
            if increment == 0 {
                sh(
                    "qemu-img",
                    &["convert", "-m", "4", "-O", "qcow2", "-U", d, t],
                );
                for name in bitmaps(&disk) {
                    sh("qemu-img", &["bitmap", "--remove", d, &name]);
                }
                sh("qemu-img", &["bitmap", "--add", d, &format!("one-{VM}-0")]);
                continue;
            }
            let parent = format!("one-{VM}-{}", increment - 1);
            let socket = self.dir.path().join(format!("nbd.{id}.sock"));
            let s = socket.to_str().expect("utf-8");
            let _ = fs::remove_file(&socket);
            let _export = Export(
                Command::new("qemu-nbd")
                    .args(["-r", "-k", s, "-f", "qcow2", "-t", "-B", &parent, d])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("qemu-nbd"),
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "qemu-nbd did not start"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let uri = format!("nbd+unix:///?socket={s}");
            let map = sh(
                "nbdinfo",
                &["--json", &format!("--map=qemu:dirty-bitmap:{parent}"), &uri],
            );
            let extents: Vec<serde_json::Value> = serde_json::from_str(&map).expect("map json");
            sh(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &uri, t],
            );
            let mut args: Vec<String> = vec!["-C".into(), "-f".into(), "qcow2".into()];
            for e in &extents {
                if e["type"].as_u64().unwrap_or(0) & 1 == 1 {
                    args.push("-c".into());
                    args.push(format!(
                        "read {} {}",
                        e["offset"].as_u64().expect("offset"),
                        e["length"].as_u64().expect("length")
                    ));
                }
            }
            args.push(t.to_string());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            sh("qemu-io", &refs);
            drop(_export);
            for name in bitmaps(&disk) {
                if name != parent {
                    sh("qemu-img", &["bitmap", "--remove", d, &name]);
                }
            }
            sh(
                "qemu-img",
                &["bitmap", "--add", d, &format!("one-{VM}-{increment}")],
            );
        }
    }

    pub fn action(&self, name: &str) -> PathBuf {
        self.remotes.join("datastore").join(self.mad).join(name)
    }

    /// The datastore `backup` action as one_vmm_exec runs it.
    pub fn backup(&self, vm_xml: &str) -> Outcome {
        self.backup_to(&self.datastore_xml(), vm_xml)
    }

    /// `backup` to another datastore document.
    pub fn backup_to(&self, ds: &str, vm_xml: &str) -> Outcome {
        let stdin = format!("<DS_DRIVER_ACTION_DATA>{ds}{vm_xml}</DS_DRIVER_ACTION_DATA>");
        let args = self.backup_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        support::run(self.action("backup"), &refs, stdin.as_bytes())
    }

    /// `host:vm_dir disk_ids deploy_id bj_id vm_id sys_ds_id`
    pub fn backup_args(&self) -> Vec<String> {
        vec![
            format!("hv1:{}", self.vm_dir.display()),
            "0:1".into(),
            format!("one-{VM}"),
            "-".into(),
            VM.to_string(),
            "0".into(),
        ]
    }

    /// The backup image oned keeps for the chain: its increments and their sources.
    pub fn image_xml(&self, chain: &[(u64, &str)]) -> String {
        let incs: String = chain
            .iter()
            .enumerate()
            .map(|(k, (id, src))| {
                let (parent, kind) = if k == 0 {
                    (-1, "FULL")
                } else {
                    (chain[k - 1].0 as i64, "INCREMENT")
                };
                format!(
                    "<INCREMENT><DATE>17632620{k:02}</DATE><ID>{id}</ID><PARENT_ID>{parent}</PARENT_ID>\
                     <SIZE>{}</SIZE><SOURCE><![CDATA[{src}]]></SOURCE><TYPE><![CDATA[{kind}]]></TYPE></INCREMENT>",
                    10 + id
                )
            })
            .collect();
        format!(
            "<IMAGE><ID>40</ID><NAME>{VM} 21-Nov 03.00.08</NAME><TYPE>6</TYPE>\
             <SOURCE><![CDATA[{}]]></SOURCE><PATH><![CDATA[]]></PATH><FORMAT><![CDATA[raw]]></FORMAT>\
             <SIZE>100</SIZE><DATASTORE_ID>100</DATASTORE_ID><VMS><ID>{VM}</ID></VMS><TEMPLATE/>\
             <BACKUP_INCREMENTS>{incs}</BACKUP_INCREMENTS><BACKUP_DISK_IDS><ID>0</ID><ID>1</ID></BACKUP_DISK_IDS></IMAGE>",
            chain[0].1
        )
    }

    /// A one_datastore action: argv the id, stdin the base64 of DS_DRIVER_ACTION_DATA.
    pub fn ds_action(&self, name: &str, id: &str, parts: &[&str]) -> Outcome {
        let data = format!(
            "<DS_DRIVER_ACTION_DATA>{}</DS_DRIVER_ACTION_DATA>",
            parts.concat()
        );
        support::run(self.action(name), &[id], support::b64(&data).as_bytes())
    }

    pub fn restic(&self, args: &[&str]) -> std::process::Output {
        if let Some(s3) = &self.s3 {
            return s3.restic(&s3.repo(S3_BUCKET, &VM.to_string()), PASSWORD, args);
        }
        Command::new("restic")
            .arg("--repo")
            .arg(self.repo())
            .arg("--no-cache")
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .expect("the restic binary must be installed")
    }

    pub fn restic_ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.restic(args);
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// `qemu-img info --output=json` of a qcow2 file (`-U`: a running VM may hold it).
pub fn qemu_info(disk: &Path) -> serde_json::Value {
    let info = sh(
        "qemu-img",
        &[
            "info",
            "-f",
            "qcow2",
            "-U",
            "--output=json",
            disk.to_str().expect("utf-8"),
        ],
    );
    serde_json::from_str(&info).expect("info json")
}

/// The persistent bitmaps of a qcow2 file, by name, sorted.
pub fn bitmaps(disk: &Path) -> Vec<String> {
    let mut names: Vec<String> = qemu_info(disk)["format-specific"]["data"]["bitmaps"]
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

/// The VM document with disk `id` declared raw (`FORMAT` and `DRIVER`), as OpenNebula
/// describes a raw disk.
pub fn with_raw_disk(vm_xml: &str, id: u32) -> String {
    let qcow2 =
        format!("<DISK><DISK_ID><![CDATA[{id}]]></DISK_ID><FORMAT><![CDATA[qcow2]]></FORMAT>");
    assert!(vm_xml.contains(&qcow2), "no disk {id} in {vm_xml}");
    vm_xml.replace(
        &qcow2,
        &format!(
            "<DISK><DISK_ID><![CDATA[{id}]]></DISK_ID><FORMAT><![CDATA[raw]]></FORMAT>\
             <DRIVER><![CDATA[raw]]></DRIVER>"
        ),
    )
}

pub fn parse_backup_line(out: &Outcome) -> (String, u64) {
    assert_eq!(out.code, Some(0), "backup failed: {}", out.stderr);
    let line = out.stdout.trim_end_matches('\n');
    assert!(
        !line.contains('\n'),
        "backup printed more than one line: {line:?}"
    );
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words.len(), 3, "backup line {line:?}");
    assert!(
        words[0].len() == 8 && words[0].chars().all(|c| c.is_ascii_hexdigit()),
        "backup id {line:?}"
    );
    assert_eq!(words[2], "raw");
    (words[0].to_string(), words[1].parse().expect("size in MB"))
}

/// FULL and three INCREMENTs of a VM with two qcow2 disks, over SFTP, staged as the stock CBT
/// prebackup stages them; every snapshot restores byte-exact with plain `restic dump`.
#[test]
fn oned_backs_up_a_vm_full_then_three_increments_over_sftp() {
    the_whole_cycle(&Cloud::start());
}

/// With split keys: the host steps are given the write key alone, which may not delete; the
/// front-end's actions use the maintenance key.
#[test]
fn oned_backs_up_a_vm_full_then_three_increments_on_s3() {
    let mut cloud = Cloud::start_s3(false);
    cloud.split_keys = true;
    crate::pull::record_host_calls(&cloud, &cloud.dir.path().join("host-calls"));
    the_whole_cycle(&cloud);
}

#[test]
fn oned_backs_up_a_vm_full_then_three_increments_on_s3_over_https_with_a_private_ca() {
    the_whole_cycle(&Cloud::start_s3(true));
}

/// FULL and three increments, then monitor, ls, stat, the downloader (MOCK oned), restore
/// (MOCK oned), increment_flatten and rm, with `restic check --read-data` after every write
/// and every point dumped byte-exact by plain restic.
fn the_whole_cycle(cloud: &Cloud) {
    cloud.create_disks();
    let mut sources: Vec<String> = Vec::new();
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    for increment in 0..4u64 {
        if increment > 0 {
            cloud.change_disks(increment, 12);
        }
        let vm_xml = cloud.vm_xml(increment as i64 - 1, if increment == 0 { -1 } else { 40 });
        cloud.stage(increment, &vm_xml);
        let out = cloud.backup(&vm_xml);
        let (id, size_mb) = parse_backup_line(&out);
        if increment == 0 {
            assert!(
                size_mb >= 8,
                "a full backup reads the allocated data: {size_mb} MB"
            );
        } else {
            assert!(
                size_mb <= 8,
                "an increment reads the changed data only: {size_mb} MB"
            );
        }
        sources.push(id);
        expected.push(DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect());
        cloud.restic_ok(&["check", "--read-data"]);
    }
    // Every snapshot holds complete disks: plain restic restores each generation.
    let staging = cloud.staging();
    for (inc, id) in sources.iter().enumerate() {
        for (k, (disk, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{disk}.{inc}", staging.display());
            let data = cloud.restic_ok(&["dump", id, &path]);
            assert!(
                data == expected[inc][k],
                "restic dump of disk {disk} at increment {inc} differs from the disk"
            );
        }
        let vm_xml = cloud.restic_ok(&["dump", id, &format!("{}/vm.xml", staging.display())]);
        assert!(
            String::from_utf8_lossy(&vm_xml)
                .lines()
                .all(|l| l.len() <= 60)
        );
    }
    // Snapshots are tagged for OpenNebula and as backstop images.
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(4));
    for s in snaps.as_array().expect("array") {
        let tags: Vec<&str> = s["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert!(
            tags.contains(&"one-22") && tags.contains(&"backstop-image"),
            "{tags:?}"
        );
    }

    let ds = cloud.datastore_xml();
    let chain: Vec<(u64, &str)> = sources
        .iter()
        .enumerate()
        .map(|(k, s)| (k as u64, s.as_str()))
        .collect();
    let link = |upto: usize| {
        chain[..=upto]
            .iter()
            .map(|(i, s)| format!("{i}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    };

    // monitor: df of BASE_PATH on the backup server, over ssh; on S3 the repositories'
    // objects against TOTAL_MB.
    let out = cloud.ds_action("monitor", "100", &[&ds]);
    assert_eq!(out.code, Some(0), "monitor: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("USED_MB=")
            && lines[1].starts_with("TOTAL_MB=")
            && lines[2].starts_with("FREE_MB="),
        "{}",
        out.stdout
    );
    if cloud.s3.is_some() {
        assert_eq!(lines[1], "TOTAL_MB=1048576");
        // The disks' patterns compress to little: the sum itself is tested in the engine's
        // S3 tests (datastore/repo/tests/s3.rs).
        let used: u64 = lines[0]["USED_MB=".len()..].parse().expect("USED_MB");
        assert!(used < 100, "{}", out.stdout);
        assert_eq!(lines[2], format!("FREE_MB={}", 1_048_576 - used));
    }

    // ls -i 1 (raw XML on stdin, as the TM restore calls it): the chain up to increment 1.
    let image = cloud.image_xml(&chain);
    let vm_xml = cloud.vm_xml(3, 40);
    let stdin = format!("<DS_DRIVER_ACTION_DATA>{ds}{vm_xml}{image}</DS_DRIVER_ACTION_DATA>");
    let out = support::run(cloud.action("ls"), &["-i", "1"], stdin.as_bytes());
    assert_eq!(out.code, Some(0), "ls: {}", out.stderr);
    let map: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("ls json");
    for (disk, _) in DISKS {
        let want = format!(
            "backstop://100//{}{}/disk.{disk}.1",
            link(1),
            staging.display()
        );
        assert_eq!(
            map[disk.to_string()].as_str(),
            Some(want.as_str()),
            "{}",
            out.stdout
        );
    }

    // stat: the virtual size of disk 1 from the saved VM template.
    let url = format!("backstop://100//{}{}/disk.1.2", link(2), staging.display());
    let stat_image = format!("<IMAGE><PATH><![CDATA[{url}]]></PATH><SIZE>0</SIZE></IMAGE>");
    let out = cloud.ds_action("stat", "5", &[&stat_image, &ds]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "24\n"),
        "stat: {}",
        out.stderr
    );

    // The downloader, with a MOCK oned serving the datastore: downloader.sh hands each URL to
    // backstop_downloader, whose command streams a standalone qcow2 of the disk as it was at
    // that increment, straight from the repository over SFTP.
    let served = ds.clone();
    let next_id = std::sync::atomic::AtomicI64::new(100);
    let oned = MockOned::start(
        |session| session == ONED_SESSION || cipher_login_for(session, "alice"),
        move |method, params| match (method, params) {
            ("one.datastore.info", [Value::Int(100), Value::Bool(true)]) => {
                ok(Value::Str(served.clone()))
            }
            ("one.image.allocate", [Value::Str(t), Value::Int(1), Value::Bool(false)]) => {
                if t.contains("NAME = \"refused-disk-1\"") {
                    failed("[one.image.allocate] Not enough space in datastore", 2048)
                } else {
                    ok(Value::Int(
                        next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    ))
                }
            }
            ("one.template.allocate", [Value::Str(_)]) => ok(Value::Int(
                next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            )),
            _ => failed(&format!("[{method}] Error getting datastore"), 1024),
        },
    );
    let auth = cloud.dir.path().join("one_auth");
    fs::write(&auth, format!("{ONED_SESSION}\n")).expect("one_auth");
    let env = [
        ("ONE_XMLRPC", oned.endpoint.as_str()),
        ("ONE_AUTH", auth.to_str().expect("utf-8")),
    ];
    let downloads = cloud.dir.path().join("downloads");
    fs::create_dir_all(&downloads).expect("downloads");
    for (inc, disks) in expected.iter().enumerate() {
        for (k, (disk, _)) in DISKS.iter().enumerate() {
            let url = format!(
                "backstop://100//{}{}/disk.{disk}.{inc}",
                link(inc),
                staging.display()
            );
            let target = downloads.join(format!("disk.{disk}.{inc}.qcow2"));
            let out = support::run_env(
                cloud.remotes.join("datastore/downloader.sh"),
                &[&url, target.to_str().expect("utf-8")],
                b"",
                &env,
            );
            assert_eq!(out.code, Some(0), "downloader.sh {url}: {}", out.stderr);
            let raw = downloads.join(format!("disk.{disk}.{inc}.raw"));
            fs::write(&raw, &disks[k]).expect("raw");
            let t = target.to_str().expect("utf-8");
            sh("qemu-img", &["check", "-q", "-f", "qcow2", t]);
            sh(
                "qemu-img",
                &[
                    "compare",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    t,
                    raw.to_str().expect("utf-8"),
                ],
            );
        }
    }
    // Its answer names no secret; both steps asked oned for the decrypted datastore.
    let url = format!("backstop://100//{}{}/disk.0.1", link(1), staging.display());
    // As oned's `fs/cp` reaches it: downloader.sh runs as `datastore/fs/../downloader.sh` and
    // calls the downloader beside itself, `..` and all.
    fs::create_dir_all(cloud.remotes.join("datastore/fs")).expect("datastore/fs");
    let out = support::run_env(
        cloud.remotes.join("datastore/fs/../backstop_downloader"),
        &[&url],
        b"",
        &env,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with("command=\"") && lines[0].contains("--stream"));
    assert_eq!(lines[1], "clean_command=\"\"");
    for secret in [PASSWORD, crate::s3server::SECRET_KEY] {
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }
    let calls = oned.calls();
    assert!(!calls.is_empty());
    assert!(
        calls.iter().all(|c| c.method == "one.datastore.info"
            && c.params == [Value::Int(100), Value::Bool(true)])
    );
    // Wrong credentials, an unknown datastore, a snapshot that is gone: one line, exit 1.
    let bad_auth = cloud.dir.path().join("bad_auth");
    fs::write(&bad_auth, "oneadmin:wrong\n").expect("bad auth");
    let cases = [
        (
            url.clone(),
            bad_auth.to_str().expect("utf-8").to_string(),
            "oned refused one.datastore.info (error 256): [one.datastore.info] User couldn't be authenticated",
        ),
        (
            url.replace("backstop://100/", "backstop://101/"),
            auth.to_str().expect("utf-8").to_string(),
            "oned refused one.datastore.info (error 1024)",
        ),
        (
            format!("backstop://100//0:0badc0de{}/disk.0.0", staging.display()),
            auth.to_str().expect("utf-8").to_string(),
            "no snapshot 0badc0de in",
        ),
    ];
    for (url, auth, want) in cases {
        let out = support::run_env(
            cloud.remotes.join("datastore/backstop_downloader"),
            &[&url],
            b"",
            &[("ONE_XMLRPC", oned.endpoint.as_str()), ("ONE_AUTH", &auth)],
        );
        assert_eq!(out.code, Some(1), "{url}: {out:?}");
        assert!(
            out.stderr.starts_with("backstop_downloader: ") && out.stderr.contains(want),
            "{url}: {}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert_eq!(out.stdout, "");
    }

    // restore (oneimage restore --increment 1) into image datastore 1, as user alice through a
    // server-cipher login: one image per disk whose PATH downloads as the disk at increment 1,
    // and a VM template that uses them.
    let cipher_auth = cloud.dir.path().join("onegate_auth");
    fs::write(
        &cipher_auth,
        format!("serveradmin:{SERVERADMIN_PASSWORD}\n"),
    )
    .expect("onegate_auth");
    let restore_env = [
        ("ONE_XMLRPC", oned.endpoint.as_str()),
        ("ONE_CIPHER_AUTH", cipher_auth.to_str().expect("utf-8")),
        ("ONE_AUTH", auth.to_str().expect("utf-8")),
    ];
    let restore_via = |options: &str, env: &[(&str, &str)]| {
        let data = format!(
            "<DS_DRIVER_ACTION_DATA>{image}{ds}<DESTINATION_DS_ID>1</DESTINATION_DS_ID>\
             <TEMPLATE><USERNAME>alice</USERNAME>{options}</TEMPLATE></DS_DRIVER_ACTION_DATA>"
        );
        support::run_env(
            cloud.action("restore"),
            &["7"],
            support::b64(&data).as_bytes(),
            env,
        )
    };
    let restore = |options: &str| restore_via(options, &restore_env);
    let before = oned.calls().len();
    let out = restore("<INCREMENT_ID>1</INCREMENT_ID>");
    assert_eq!(out.code, Some(0), "restore: {}", out.stderr);
    let ids: Vec<i64> = out
        .stdout
        .split_whitespace()
        .map(|w| w.parse().expect("ids"))
        .collect();
    assert_eq!(out.stdout.lines().count(), 1);
    let calls: Vec<_> = oned.calls()[before..].to_vec();
    let allocations: Vec<_> = calls
        .iter()
        .filter(|c| c.method == "one.image.allocate")
        .collect();
    assert_eq!(allocations.len(), 2, "{calls:?}");
    let templ: Vec<_> = calls
        .iter()
        .filter(|c| c.method == "one.template.allocate")
        .collect();
    assert_eq!(templ.len(), 1);
    assert!(
        calls
            .iter()
            .all(|c| c.method == "one.datastore.info" || cipher_login_for(&c.session, "alice"))
    );
    // stdout: the template id, then the image ids in disk order.
    assert_eq!(ids.len(), 3, "{}", out.stdout);
    let (image_ids, template_id) = (&ids[1..], ids[0]);
    assert!(image_ids[0] < image_ids[1] && image_ids[1] < template_id);
    for (k, (disk, _)) in DISKS.iter().enumerate() {
        let Value::Str(text) = &allocations[k].params[0] else {
            panic!("template")
        };
        let t = backstop_protocol::template::Template::parse(text).expect("image template");
        let base = format!("{VM}-{}", sources[1]);
        assert_eq!(t.get("NAME"), Some(format!("{base}-disk-{disk}").as_str()));
        assert_eq!(
            t.get("TYPE"),
            Some(if *disk == 0 { "OS" } else { "DATABLOCK" })
        );
        assert_eq!(t.get("FROM_BACKUP_DS"), Some("100"));
        let path = t.get("PATH").expect("PATH");
        assert_eq!(
            path,
            format!(
                "backstop://100//{}{}/disk.{disk}.1",
                link(1),
                staging.display()
            )
        );
        // oned's next steps: stat on the backup datastore, then cp downloads the PATH.
        let stat_image = format!("<IMAGE><PATH><![CDATA[{path}]]></PATH><SIZE>0</SIZE></IMAGE>");
        let st = cloud.ds_action("stat", "5", &[&stat_image, &ds]);
        assert_eq!(st.stdout, format!("{}\n", DISKS[k].1), "{}", st.stderr);
        let target = downloads.join(format!("restored.{disk}.qcow2"));
        let dl = support::run_env(
            cloud.remotes.join("datastore/downloader.sh"),
            &[path, target.to_str().expect("utf-8")],
            b"",
            &env,
        );
        assert_eq!(dl.code, Some(0), "{}", dl.stderr);
        sh(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                target.to_str().expect("utf-8"),
                downloads
                    .join(format!("disk.{disk}.1.raw"))
                    .to_str()
                    .expect("utf-8"),
            ],
        );
    }
    let Value::Str(text) = &templ[0].params[0] else {
        panic!("template")
    };
    let t = backstop_protocol::template::Template::parse(text).expect("vm template");
    assert_eq!(t.get("NAME"), Some(format!("{VM}-{}", sources[1]).as_str()));
    let disks: Vec<_> = t.vectors("DISK").collect();
    assert_eq!(disks.len(), 2, "{text}");
    for (k, d) in disks.iter().enumerate() {
        assert_eq!(
            d.iter()
                .find(|(k, _)| k == "IMAGE_ID")
                .map(|(_, v)| v.as_str()),
            Some(image_ids[k].to_string().as_str()),
            "{text}"
        );
        assert!(
            !d.iter()
                .any(|(k, _)| k == "DISK_ID" || k == "TYPE" || k == "SIZE")
        );
    }
    assert_eq!(t.get("VMID"), None);

    // One disk: no template (-1), one image.
    let before = oned.calls().len();
    let out = restore("<DISK_ID>1</DISK_ID><NAME>one-disk</NAME>");
    assert_eq!(out.code, Some(0), "restore: {}", out.stderr);
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{}", out.stdout);
    assert_eq!(words[0], "-1");
    let calls: Vec<_> = oned.calls()[before..].to_vec();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.method == "one.image.allocate")
            .count(),
        1
    );
    assert!(!calls.iter().any(|c| c.method == "one.template.allocate"));

    // oned refuses the second image: exit 1, one line naming the image already created.
    let out = restore("<NAME>refused</NAME>");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("restore: oned refused one.image.allocate (error 2048): [one.image.allocate] Not enough space")
            && out.stderr.contains("these images were already restored: "),
        "{}",
        out.stderr
    );
    if cloud.s3.as_ref().is_some_and(|s| s.ca.is_some()) {
        https_oned(&oned, cloud, (&url, &downloads), &restore_via, &restore_env);
    }
    // A wrong server password: oned refuses the login.
    fs::write(&cipher_auth, "serveradmin:not-the-password\n").expect("onegate_auth");
    let out = restore("");
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("User couldn't be authenticated"),
        "{}",
        out.stderr
    );
    drop(oned);

    // increment_flatten with KEEP_LAST=2: increments 0..2 merge into 2, metadata only.
    let out = cloud.ds_action(
        "increment_flatten",
        "40",
        &[
            &image,
            &ds,
            "<EXTRA_DATA><KEEP_LAST>2</KEEP_LAST></EXTRA_DATA>",
        ],
    );
    assert_eq!(out.code, Some(0), "increment_flatten: {}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("{} 2:{},3:{}\n", 10 + 11 + 12, sources[2], sources[3])
    );
    cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{snaps}");
    for (inc, id) in sources.iter().enumerate().skip(2) {
        for (k, (disk, _)) in DISKS.iter().enumerate() {
            let path = format!("{}/disk.{disk}.{inc}", staging.display());
            assert!(
                cloud.restic_ok(&["dump", id, &path]) == expected[inc][k],
                "disk {disk} of increment {inc} changed after the flatten"
            );
        }
    }

    let flattened = cloud.image_xml(&chain[2..]);
    if cloud.split_keys {
        split_keys_keep_deletes_on_the_front_end(cloud, &ds, &flattened);
    }
    // rm of the flattened image: both snapshots go, and a second rm finds nothing to do.
    for round in 0..2 {
        let out = cloud.ds_action("rm", "40", &[&flattened, &ds]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), ""),
            "rm {round}: {}",
            out.stderr
        );
    }
    cloud.restic_ok(&["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(0));
}

/// Split keys (docs/s3.md): every host step was sent the write key and not the maintenance
/// key (recorded stdin, argv and environment), and the write key really cannot delete: `rm`
/// given only it fails in one line and removes nothing; the front-end's rm, which has the
/// maintenance key, then works (the caller's next step).
fn split_keys_keep_deletes_on_the_front_end(cloud: &Cloud, ds: &str, image: &str) {
    use crate::s3server::{NODELETE_SECRET_KEY, SECRET_KEY};
    let log = cloud.dir.path().join("host-calls");
    let mut host_backups = 0;
    for e in fs::read_dir(&log).expect("host calls").flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "call") {
            let call = fs::read_to_string(&path).expect("call");
            assert!(
                !call.contains(SECRET_KEY) && !call.contains(NODELETE_SECRET_KEY),
                "a key in the host's argv or environment: {}",
                path.display()
            );
            if call.starts_with("ARGV host-backup ") || call.contains(" host-backup ") {
                host_backups += 1;
                let stdin = fs::read_to_string(path.with_extension("stdin")).expect("stdin");
                assert!(
                    stdin.contains(NODELETE_SECRET_KEY),
                    "the host step was not sent the write key"
                );
                assert!(
                    !stdin.contains(SECRET_KEY) && !stdin.contains("MAINTENANCE"),
                    "the host step was sent the maintenance key"
                );
            }
        }
    }
    assert_eq!(host_backups, 4, "host-backup calls recorded");
    let write_only: String = {
        let mut d = ds.to_string();
        for name in [
            "RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID",
            "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY",
        ] {
            let start = d.find(&format!("<{name}>")).expect(name);
            let end_tag = format!("</{name}>");
            let end = d.find(&end_tag).expect(name) + end_tag.len();
            d.replace_range(start..end, "");
        }
        d
    };
    let count = || {
        serde_json::from_slice::<serde_json::Value>(&cloud.restic_ok(&["snapshots", "--json"]))
            .expect("json")
            .as_array()
            .map(Vec::len)
    };
    let before = count();
    let out = cloud.ds_action("rm", "40", &[image, &write_only]);
    assert_eq!(out.code, Some(1), "rm with the write key: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("rm: ") && out.stderr.contains("Access Denied"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(NODELETE_SECRET_KEY), "{}", out.stderr);
    assert_eq!(count(), before, "the write key removed a snapshot");

    // The write key may delete lock files, and only them: a path that climbs out of
    // `locks/` (sent as written, not normalised by the client) does not reach a pack.
    let s3 = cloud.s3.as_ref().expect("s3");
    let curl = |keys: (&str, &str), method: &str, key: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--path-as-is",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-X", method])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{}:{}", keys.0, keys.1))
            .arg(format!("{}/{S3_BUCKET}/{key}", s3.endpoint))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let admin = (crate::s3server::ACCESS_KEY, SECRET_KEY);
    let writer = (crate::s3server::NODELETE_ACCESS_KEY, NODELETE_SECRET_KEY);
    let lock = format!("{VM}/locks/{}", "ab".repeat(32));
    let store = backstop_storage::s3::S3Backend::connect(
        &backstop_storage::s3::S3Location::parse(&s3.repo(S3_BUCKET, &VM.to_string()))
            .expect("location"),
        &backstop_storage::s3::S3Options {
            access_key_id: admin.0.into(),
            secret_access_key: backstop_storage::s3::Secret::new(admin.1),
            ..backstop_storage::s3::S3Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("connect: {e}"));
    store.put_object(&lock, b"lock").expect("a lock file");
    assert_eq!(
        curl(writer, "DELETE", &lock),
        "204",
        "the write key removes a lock"
    );
    let packs = String::from_utf8(cloud.restic_ok(&["list", "packs"])).expect("utf-8");
    let pack = packs.lines().next().expect("a pack").to_string();
    let climbing = format!("{VM}/locks/../data/{}/{pack}", &pack[..2]);
    let code = curl(writer, "DELETE", &climbing);
    assert_ne!(code, "204", "DELETE {climbing} answered 204");
    let after = String::from_utf8(cloud.restic_ok(&["list", "packs"])).expect("utf-8");
    assert!(
        after.lines().any(|p| p == pack),
        "pack {pack} is gone ({code})"
    );
    cloud.restic_ok(&["check"]);
}

/// backup_cancel stops a running backup found through its PID file: the backup exits 1 with
/// one line, no snapshot is written, no lock is left (restic check takes an exclusive one)
/// and the repository checks clean.
/// `restore` with options and an environment.
type RestoreVia<'a> = dyn Fn(&str, &[(&str, &str)]) -> Outcome + 'a;

/// The MOCK oned behind TLS with a private CA, as production front-ends behind a proxy have
/// it: the downloader streams a disk and restore allocates an image with `ONE_XMLRPC` on
/// https and `ONE_CERT_DIR` naming the CA; without the CA the certificate is refused, and
/// `ONE_DISABLE_SSL_VERIFY` is refused; each with one line and exit 1.
fn https_oned(
    oned: &MockOned,
    cloud: &Cloud,
    (url, downloads): (&str, &Path),
    restore_via: &RestoreVia<'_>,
    plain_env: &[(&str, &str)],
) {
    let tls_dir = cloud.dir.path().join("oned-tls");
    fs::create_dir_all(&tls_dir).expect("dir");
    let (https, ca_dir) = oned.serve_tls(&tls_dir);
    let ca = ca_dir.to_str().expect("utf-8");
    let mut env: Vec<(&str, &str)> = plain_env
        .iter()
        .filter(|(k, _)| *k != "ONE_XMLRPC")
        .copied()
        .collect();
    env.push(("ONE_XMLRPC", &https));
    let before = oned.calls().len();
    let download = |env: &[(&str, &str)]| {
        let target = downloads.join("over-tls.qcow2");
        let _ = fs::remove_file(&target);
        let out = support::run_env(
            cloud.remotes.join("datastore/downloader.sh"),
            &[url, target.to_str().expect("utf-8")],
            b"",
            env,
        );
        (out, target)
    };
    let mut trusted = env.clone();
    trusted.push(("ONE_CERT_DIR", ca));
    let (out, target) = download(&trusted);
    assert_eq!(out.code, Some(0), "downloader over https: {}", out.stderr);
    sh(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            target.to_str().expect("utf-8"),
            downloads.join("disk.0.1.raw").to_str().expect("utf-8"),
        ],
    );
    let out = restore_via("<DISK_ID>1</DISK_ID><NAME>over-tls</NAME>", &trusted);
    assert_eq!(out.code, Some(0), "restore over https: {}", out.stderr);
    assert_eq!(out.stdout.split_whitespace().next(), Some("-1"));
    assert!(
        oned.calls()[before..]
            .iter()
            .any(|c| c.method == "one.image.allocate"),
        "the restore reached oned over TLS"
    );
    // Without the CA: refused, one line.
    let out = support::run_env(
        cloud.remotes.join("datastore/backstop_downloader"),
        &[url],
        b"",
        &env,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("certificate verify failed") && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );
    let mut insecure = trusted.clone();
    insecure.push(("ONE_DISABLE_SSL_VERIFY", "1"));
    let out = support::run_env(
        cloud.remotes.join("datastore/backstop_downloader"),
        &[url],
        b"",
        &insecure,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("ONE_DISABLE_SSL_VERIFY is set: backstop always verifies"),
        "{}",
        out.stderr
    );
}

#[test]
fn backup_cancel_stops_a_running_backup_and_leaves_the_repository_clean() {
    use std::io::Write;
    let cloud = Cloud::start();
    cloud.create_disks();
    // 20 MiB that do not compress in disk 0.
    let noise = support::noise(20 << 20, 0x9E37_79B9_7F4A_7C15);
    let noise_file = cloud.dir.path().join("noise.raw");
    fs::write(&noise_file, &noise).expect("noise");
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 20M", noise_file.display()),
            cloud.disk(0).to_str().expect("utf-8"),
        ],
    );
    let vm_xml = cloud.vm_xml(-1, -1);
    cloud.stage(0, &vm_xml);
    // 1 MiB/s to the backup server: the backup takes long enough to be cancelled mid-way.
    // RESTIC_NICE and RESTIC_IONICE confine the host step (driver contract §10.3).
    let stdin = format!(
        "<DS_DRIVER_ACTION_DATA>{}{vm_xml}</DS_DRIVER_ACTION_DATA>",
        cloud.datastore_xml_with(
            "<RESTIC_BWLIMIT>1024</RESTIC_BWLIMIT><RESTIC_NICE>7</RESTIC_NICE>\
             <RESTIC_IONICE>5</RESTIC_IONICE>"
        )
    );
    let mut backup = Command::new(cloud.action("backup"))
        .args(cloud.backup_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backup");
    backup
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let pid_file = cloud.dir.path().join(format!("fe/run/backup-{VM}.pid"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(std::time::Instant::now() < deadline, "no PID file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Let the host step start writing.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        backup.try_wait().expect("wait").is_none(),
        "the backup ended too soon to cancel"
    );
    // The host step (found by its unique staging path) runs at nice 7, best-effort I/O 5.
    let staging = cloud.staging().display().to_string();
    let host_step: Vec<u32> = fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).to_string();
                let argv: Vec<&str> = c.split('\0').collect();
                argv[0].ends_with("/backstop")
                    && argv.get(1) == Some(&"host-backup")
                    && argv.contains(&staging.as_str())
            })
        })
        .collect();
    assert_eq!(host_step.len(), 1, "the host step: {host_step:?}");
    let stat = fs::read_to_string(format!("/proc/{}/stat", host_step[0])).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[16], "7", "nice of the host step: {stat}");
    let io = sh("ionice", &["-p", &host_step[0].to_string()]);
    assert_eq!(io.trim(), "best-effort: prio 5");
    let cancel = support::run(
        cloud.action("backup_cancel"),
        &[
            &format!("hv1:{}", cloud.vm_dir.display()),
            &format!("one-{VM}"),
        ],
        vm_xml.as_bytes(),
    );
    assert_eq!(cancel.code, Some(0), "backup_cancel: {}", cancel.stderr);
    let out = backup.wait_with_output().expect("backup output");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "backup: the backup of VM 22 was cancelled\n"
    );
    assert!(!pid_file.exists(), "the PID file was left behind");
    // The host step is gone too: restic's exclusive lock succeeds and nothing is half-written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let check = cloud.restic(&["check", "--read-data"]);
        if check.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restic check after the cancel: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let snaps: serde_json::Value =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{snaps}");
    // Nothing to cancel any more: still exit 0.
    let again = support::run(
        cloud.action("backup_cancel"),
        &[
            &format!("hv1:{}", cloud.vm_dir.display()),
            &format!("one-{VM}"),
        ],
        vm_xml.as_bytes(),
    );
    assert_eq!(
        (again.code, again.stdout.as_str()),
        (Some(0), ""),
        "{}",
        again.stderr
    );
}
