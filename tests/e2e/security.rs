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

/// A USER_TEMPLATE value that would become top-level attributes after a value written as
/// `"x\"` (oned's lexer reads on to the next bare quote).
const SMUGGLE: &str = "\nEMULATOR = /tmp/evil\nCONTEXT = [ FILES = /etc/shadow ]\nZ = ";

/// A USER_TEMPLATE value that holds what a text cut would stop at.
const NOTE: &str = "</VM><TEMPLATE><DISK><DISK_ID>9</DISK_ID></DISK></TEMPLATE>";

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
        // The VM owner's USER_TEMPLATE holds "</VM>": vm.xml must still be the whole VM.
        let vm_xml = with_raw_disk(
            &cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 }),
            0,
        )
        .replace(
            "<USER_TEMPLATE/>",
            &format!("<USER_TEMPLATE><NOTE><![CDATA[{NOTE}]]></NOTE></USER_TEMPLATE>"),
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
        let saved = cloud.restic_ok(&["dump", &id, &format!("{}/vm.xml", staging.display())]);
        let saved =
            backstop_protocol::input::decode(&saved, backstop_protocol::input::Encoding::Base64)
                .expect("vm.xml is base64 of a VM document");
        assert_eq!(saved.text_at("USER_TEMPLATE/NOTE"), Some(NOTE));
        assert!(saved.child("BACKUPS").is_some(), "vm.xml was cut short");
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

/// A backup URL names one snapshot of its own VM, and nothing else (see `vm_snapshots`).
/// A backup job's repository holds a snapshot of VM 22 and one of VM 23, made by the real
/// restic binary as the stock driver makes them (tag `one-<vm>`), and a planted copy of VM
/// 22's snapshot file under another name sharing its first 63 characters. `latest`, a short
/// prefix, VM 23's snapshot named in a URL of VM 22, and the ambiguous prefix are refused by
/// stat, ls, restore, rm, increment_flatten and the downloader with one line and exit 1,
/// and nothing is forgotten; the full 8-character id works.
#[test]
fn a_backup_url_names_one_snapshot_of_its_own_vm_mock_oned() {
    use crate::oned_mock::{MockOned, failed, ok};
    use crate::support::{self, action_data, b64, datastore_xml};
    use backstop_protocol::xmlrpc::Value;
    const PASSWORD: &str = "hunter2-secret";
    let dir = tempfile::tempdir().expect("tempdir");
    let remotes = dir.path().join("remotes");
    support::stock_remotes(&remotes);
    assert_eq!(support::install_sh(&remotes, &[]).code, Some(0));
    let base = dir.path().join("ds/100");
    let repo = base.join("job_7");
    let restic = |args: &[&str]| {
        let out = std::process::Command::new("restic")
            .arg("--repo")
            .arg(&repo)
            .arg("--no-cache")
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .expect("restic");
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    restic(&["init"]);
    // A backup of each VM, laid out as prebackup stages it.
    let mut ids = Vec::new();
    for vm in [22u64, 23] {
        let staging = dir.path().join(format!("v/0/{vm}/backup"));
        fs::create_dir_all(&staging).expect("staging");
        // A qcow2 file, as the stock prebackup stages a FULL (the downloader checks it).
        let disk = staging.join("disk.0.0");
        let d = disk.to_str().expect("utf-8");
        sh_ok("qemu-img", &["create", "-q", "-f", "qcow2", d, "1M"]);
        sh_ok(
            "qemu-io",
            &["-f", "qcow2", "-c", &format!("write -P {vm} 0 1M"), d],
        );
        // VM 22's owner left a USER_TEMPLATE value ending in a backslash, then text that
        // would be top-level attributes if the value were written as "x\".
        let doc = format!(
            "<VM><ID>{vm}</ID><NAME>v{vm}</NAME><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>1</SIZE></DISK></TEMPLATE>\
             <USER_TEMPLATE><A><![CDATA[x\\]]></A><B><![CDATA[{SMUGGLE}]]></B></USER_TEMPLATE></VM>"
        );
        fs::write(staging.join("vm.xml"), format!("{}\n", b64(&doc))).expect("vm.xml");
        restic(&[
            "backup",
            &format!("--tag=one-{vm}"),
            staging.join("disk.0.0").to_str().expect("utf-8"),
            staging.join("vm.xml").to_str().expect("utf-8"),
        ]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&restic(&[
            "snapshots",
            "--json",
            &format!("--tag=one-{vm}"),
        ]))
        .expect("snapshots");
        ids.push(list[0]["id"].as_str().expect("id").to_string());
    }
    let (own, foreign) = (ids[0].clone(), ids[1].clone());
    let foreign8 = foreign[..8].to_string();
    // The planted twin: VM 22's snapshot file again, under a name sharing 63 characters.
    let twin = format!(
        "{}{}",
        &own[..63],
        if own.ends_with('0') { '1' } else { '0' }
    );
    let twin = repo.join("snapshots").join(twin);
    let own8 = own[..8].to_string();
    let path22 = dir
        .path()
        .join("v/0/22/backup/disk.0.0")
        .display()
        .to_string();
    let url = |source: &str| format!("backstop://100/7/0:{source}{path22}");
    let ds = datastore_xml(base.to_str().expect("utf-8"), "");
    let action = |name: &str| remotes.join("datastore/backstop").join(name);
    let image = |sources: &[&str]| {
        let incs: String = sources
            .iter()
            .enumerate()
            .map(|(k, s)| {
                format!(
                    "<INCREMENT><ID>{k}</ID><PARENT_ID>{}</PARENT_ID><SIZE>1</SIZE><SOURCE><![CDATA[{s}]]></SOURCE><TYPE>{}</TYPE></INCREMENT>",
                    k as i64 - 1,
                    if k == 0 { "FULL" } else { "INCREMENT" }
                )
            })
            .collect();
        format!(
            "<IMAGE><ID>40</ID><TYPE>6</TYPE><SOURCE><![CDATA[{}]]></SOURCE><FORMAT>raw</FORMAT><SIZE>1</SIZE>\
             <DATASTORE_ID>100</DATASTORE_ID><VMS><ID>22</ID></VMS><TEMPLATE><BACKUP_JOB_ID>7</BACKUP_JOB_ID></TEMPLATE>\
             <BACKUP_INCREMENTS>{incs}</BACKUP_INCREMENTS></IMAGE>",
            sources[0]
        )
    };
    let stat = |source: &str| {
        let img = format!(
            "<IMAGE><ID>5</ID><SOURCE>x</SOURCE><PATH><![CDATA[{}]]></PATH></IMAGE>",
            url(source)
        );
        support::run(
            action("stat"),
            &["5"],
            b64(&action_data(&[&img, &ds])).as_bytes(),
        )
    };
    let oned_session = "oneadmin:opennebula-test";
    let served = ds.clone();
    // restore logs in as alice with a server-cipher token (checked by the cloud tests; here
    // any token for alice is let in: what matters is the template it allocates).
    let oned = MockOned::start(
        move |s| s == oned_session || s.starts_with("serveradmin:alice:"),
        move |method, params| match (method, params) {
            ("one.datastore.info", [Value::Int(100), Value::Bool(true)]) => {
                ok(Value::Str(served.clone()))
            }
            ("one.image.allocate", [Value::Str(_), Value::Int(1), Value::Bool(false)]) => {
                ok(Value::Int(61))
            }
            ("one.template.allocate", [Value::Str(_)]) => ok(Value::Int(62)),
            _ => failed("not here", 1024),
        },
    );
    let cipher = dir.path().join("onegate_auth");
    fs::write(&cipher, "serveradmin:srv-secret-7\n").expect("onegate_auth");
    let auth = dir.path().join("one_auth");
    fs::write(&auth, format!("{oned_session}\n")).expect("one_auth");
    let download = |source: &str| {
        support::run_env(
            remotes.join("datastore/backstop_downloader"),
            &[&url(source)],
            b"",
            &[
                ("ONE_XMLRPC", oned.endpoint.as_str()),
                ("ONE_AUTH", auth.to_str().expect("utf-8")),
            ],
        )
    };
    let vm22 = "<VM><ID>22</ID><NAME>v22</NAME><TEMPLATE/></VM>";
    let with_image = |name: &str, sources: &[&str]| {
        match name {
        "ls" => support::run(
            action("ls"),
            &["-i", "-1"],
            action_data(&[&ds, vm22, &image(sources)]).as_bytes(),
        ),
        "restore" => support::run_env(
            action("restore"),
            &["40"],
            b64(&action_data(&[
                &image(sources),
                &ds,
                "<DESTINATION_DS_ID>1</DESTINATION_DS_ID><TEMPLATE><USERNAME>alice</USERNAME></TEMPLATE>",
            ]))
            .as_bytes(),
            &[
                ("ONE_XMLRPC", oned.endpoint.as_str()),
                ("ONE_CIPHER_AUTH", cipher.to_str().expect("utf-8")),
            ],
        ),
        "rm" => support::run(action("rm"), &["40"], b64(&action_data(&[&image(sources), &ds])).as_bytes()),
        "increment_flatten" => support::run(
            action("increment_flatten"),
            &["40"],
            b64(&action_data(&[
                &image(sources),
                &ds,
                "<EXTRA_DATA><KEEP_LAST>1</KEEP_LAST></EXTRA_DATA>",
            ]))
            .as_bytes(),
        ),
        other => panic!("{other}"),
    }
    };
    let snapshots = || {
        let mut s: Vec<String> = fs::read_dir(repo.join("snapshots"))
            .expect("snapshots")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        s.sort();
        s
    };
    let before = snapshots();
    let cases: [(&str, String, &str); 4] = [
        ("latest", "latest".into(), "is not a snapshot id"),
        (
            "a short prefix",
            own[..4].to_string(),
            "is not a snapshot id",
        ),
        (
            "another VM's snapshot",
            foreign8,
            "is not a backup of VM 22",
        ),
        ("an ambiguous prefix", own[..12].to_string(), "is ambiguous"),
    ];
    let one_line_refusal = |what: &str, who: &str, out: &crate::support::Outcome, want: &str| {
        assert_eq!(out.code, Some(1), "{who}, {what}: {out:?}");
        assert!(out.stderr.contains(want), "{who}, {what}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "{who}, {what}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{who}, {what}");
    };
    for (what, source, want) in &cases {
        let ambiguous = want.contains("ambiguous");
        if ambiguous {
            fs::copy(repo.join("snapshots").join(&own), &twin).expect("twin");
        }
        one_line_refusal(what, "stat", &stat(source), want);
        one_line_refusal(what, "downloader", &download(source), want);
        for name in ["ls", "restore", "rm", "increment_flatten"] {
            // The bad source alone, last (the point ls and restore read, flatten's new
            // base) and first (the first rm and flatten forget).
            let mut chains = vec![vec![source.as_str()]];
            if !ambiguous {
                chains.push(vec![&own8, source]);
                chains.push(vec![source, &own8]);
            }
            for chain in chains {
                if chain.len() == 1 && name == "increment_flatten" {
                    continue; // nothing to flatten in a chain of one
                }
                let out = with_image(name, &chain);
                if chain[0] == source.as_str()
                    && chain.len() > 1
                    && (name == "ls" || name == "restore")
                {
                    continue; // they read only the last point
                }
                one_line_refusal(what, &format!("{name} {chain:?}"), &out, want);
            }
        }
        if ambiguous {
            fs::remove_file(&twin).expect("twin");
        }
        assert_eq!(snapshots(), before, "{what}: something was forgotten");
    }
    // The 8-character id of VM 22's own snapshot works.
    let out = stat(&own8);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "1\n"), "{out:?}");
    let out = download(&own8);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("command="), "{out:?}");
    let out = with_image("ls", &[&own8]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&format!("0:{own8}")), "{out:?}");
    // restore of VM 22's backup: the template it allocates as alice reads back (with oned's
    // grammar) with A and B as their owner wrote them, and nothing smuggled out of them.
    let out = with_image("restore", &[&own8]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "62 61\n"),
        "{out:?}"
    );
    let calls = oned.calls();
    let template = calls
        .iter()
        .find(|c| c.method == "one.template.allocate")
        .and_then(|c| match c.params.first() {
            Some(Value::Str(t)) => Some(t.clone()),
            _ => None,
        })
        .expect("a template was allocated");
    let t = backstop_protocol::template::Template::parse(&template)
        .unwrap_or_else(|e| panic!("{e}\n{template}"));
    assert_eq!(t.get("A"), Some("x\\"), "{template}");
    assert_eq!(t.get("B"), Some(SMUGGLE), "{template}");
    assert_eq!(t.get("EMULATOR"), None, "{template}");
    assert_eq!(t.vectors("CONTEXT").count(), 0, "{template}");

    let out = with_image("rm", &[&own8]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(snapshots(), [foreign], "rm forgot only VM 22's snapshot");
}

/// Bounded everything: a number past its range in the datastore template, and a disk whose
/// header claims more than backstop handles, each give one line naming what was wrong, exit
/// 1, and nothing written.
#[test]
fn overflowing_attributes_and_sizes_give_one_clear_line() {
    let t = crate::tm::Tm::start("direct");
    let cloud = &t.cloud;
    let vm_xml = cloud.vm_xml(-1, -1);
    for (attr, value, range) in [
        ("RESTIC_CONNECTIONS", "99999999999999999999", "1 to 64"),
        ("BACKSTOP_LOCK_WAIT", "18446744073709551616", "0 to 86400"),
        (
            "RESTIC_MEMORY_MAX_MB",
            "9223372036854775807",
            "1 to 16777216",
        ),
    ] {
        let ds = cloud.datastore_xml_with(&format!("<{attr}><![CDATA[{value}]]></{attr}>"));
        let out = cloud.backup_to(&ds, &vm_xml);
        assert_eq!(out.code, Some(1), "{attr}: {out:?}");
        assert_eq!(
            out.stderr.trim_end(),
            format!("backup: datastore 100: {attr} is {value:?}, not a whole number from {range}"),
            "{attr}"
        );
        assert_eq!(out.stdout, "");
        assert!(!cloud.repo().exists(), "{attr}: the repository was created");
    }

    // Disk 1 claims 100 TiB (a sparse qcow2 header; nothing is allocated).
    let big = cloud.disk(1);
    fs::remove_file(&big).expect("rm");
    sh_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            big.to_str().expect("utf-8"),
            "100T",
        ],
    );
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(1), "{pre:?}");
    let last = pre
        .stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("VM 22: disk 1: ")
            && last.contains(
                "is 109951162777600 bytes, more than the 70368744177664 bytes backstop handles"
            ),
        "{pre:?}"
    );
    let post = t.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
}

/// PIDs are not identities: a PID file whose backup ended, and whose PID now belongs to
/// another process (here a `sleep` with the same PID written in, but another start time), is
/// never signalled by backup_cancel, nor taken for a running backup.
#[test]
fn backup_cancel_never_signals_a_reused_pid() {
    let cloud = Cloud::start();
    let run_dir = cloud.dir.path().join("fe/run");
    fs::create_dir_all(&run_dir).expect("run dir");
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let real = backstop_image::process::ProcessId::of(other.id()).expect("runs");
    let recorded = backstop_image::process::ProcessId {
        start: real.start.saturating_sub(100),
        ..real
    };
    let pid_file = run_dir.join(format!("backup-{}.pid", crate::cloud::VM));
    let cancel = || {
        crate::support::run(
            cloud.action("backup_cancel"),
            &[
                &format!("hv1:{}", cloud.vm_dir.display()),
                &format!("one-{}", crate::cloud::VM),
            ],
            cloud.vm_xml(-1, -1).as_bytes(),
        )
    };
    fs::write(
        &pid_file,
        format!("{} one-{} {recorded}\n", real.pid, crate::cloud::VM),
    )
    .expect("pid file");
    let out = cancel();
    assert_eq!(out.code, Some(0), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        other.try_wait().expect("wait").is_none(),
        "backup_cancel signalled the process that reused the PID"
    );
    let cfg = backstop_datastore::config::DriverConfig::load(&cloud.remotes).expect("config");
    assert!(!backstop_datastore::running::backup_running(
        &cfg,
        crate::cloud::VM
    ));
    // The same record with the right start time is that process: it is signalled.
    fs::write(
        &pid_file,
        format!("{} one-{} {real}\n", real.pid, crate::cloud::VM),
    )
    .expect("pid file");
    assert!(backstop_datastore::running::backup_running(
        &cfg,
        crate::cloud::VM
    ));
    let out = cancel();
    assert_eq!(out.code, Some(0), "{out:?}");
    let status = other.wait().expect("wait");
    assert!(!status.success(), "sleep was not stopped: {status}");
}

/// Issue 23: the records that decide what a host step signals. Another local user plants an
/// export record in the shared temporary directory naming a dead owner and a live process of
/// ours (standing for a guest's qemu: its PID, start time and boot id are public in /proc);
/// and a record in our own private directory names a live process that is not the qemu-nbd of
/// that export. The next host step signals neither; the second is reported in one line.
#[test]
fn a_planted_export_record_signals_nothing() {
    use backstop_image::process::ProcessId;
    let mut victim = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .expect("sleep");
    let real = ProcessId::of(victim.id()).expect("runs");
    // An owner that does not run: a PID no process can have.
    let gone = ProcessId {
        pid: 4_000_000_000,
        ..real
    };
    let record = format!("{gone} {real}\n/var/lib/one/datastores/0/7/disk.0\n");
    let unique = format!("{:x}{:x}", std::process::id(), real.start);
    let shared = std::env::temp_dir().join(format!("backstop-nbd-{unique}"));
    fs::create_dir(&shared).expect("mkdir");
    fs::write(shared.join("owner"), &record).expect("record");
    // Another user's, as a local user would leave it (a uid of no one in particular).
    let _ = std::process::Command::new("chown")
        .args(["-R", "4242:4242"])
        .arg(&shared)
        .status();
    let private = backstop_image::nbd::exports_dir()
        .expect("exports dir")
        .join(format!("export-{unique}"));
    fs::create_dir(&private).expect("mkdir");
    fs::write(private.join("owner"), &record).expect("record");
    // Any host step reaps first; this one then fails on its arguments.
    let out = crate::support::run(
        crate::support::BACKSTOP,
        &["host-tm", "prebackup", "--staging", "/nonexistent", "x"],
        b"",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alive = victim.try_wait().expect("wait").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    let _ = fs::remove_dir_all(&shared);
    let left = private.exists();
    let _ = fs::remove_dir_all(&private);
    assert!(
        alive,
        "a host step signalled a process a planted record named: {out:?}"
    );
    assert!(left, "the record that failed its check was removed");
    assert!(
        out.stderr.contains(&format!(
            "host-tm: warning: left {}: its record names process {}, which is not the qemu-nbd serving that export",
            private.display(),
            real.pid
        )),
        "{}",
        out.stderr
    );
}

/// The in-place restore of a backup a hostile repository holds (issue 23: a PULL sync job's
/// source, a compromised backup server, anyone with the repository's password). The backup is
/// stored with plain restic in the stock driver's layout (increment 0 of VM 22: `disk.0.0`,
/// `disk.1.0`, `vm.xml`), after `craft` made its files hostile in the staging directory. The
/// VM has TPM state of its own. The restore runs as `onevm restore` runs it, with a MOCK oned
/// (XML-RPC: no real one can run here); what it printed, and the secret file of the host.
struct HostileRestore {
    t: crate::tm::Tm,
    out: crate::support::Outcome,
    secret: PathBuf,
    body: Vec<u8>,
    disks: Vec<Vec<u8>>,
}

fn hostile_restore(craft: impl Fn(&Cloud, &std::path::Path, &std::path::Path)) -> HostileRestore {
    use crate::support::{self, BACKSTOP};
    let t = crate::tm::Tm::start("staging");
    let cloud = &t.cloud;
    let link = cloud.remotes.join("tm/qcow2/restore");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    let secret = cloud.dir.path().join("hv/oneadmin-id_rsa");
    let mut body = Vec::new();
    while body.len() < 1 << 20 {
        body.extend_from_slice(SECRET);
        body.extend_from_slice(format!("{:08}\n", body.len()).as_bytes());
    }
    body.truncate(1 << 20);
    fs::write(&secret, &body).expect("secret");
    fs::create_dir_all(cloud.vm_dir.join("tpm")).expect("tpm");
    fs::write(
        cloud.vm_dir.join("tpm/tpm2-00.permall"),
        b"the VM's own state",
    )
    .expect("tpm");

    fs::create_dir_all(cloud.repo().parent().expect("parent")).expect("base");
    cloud.restic_ok(&["init"]);
    let vm_xml = cloud.vm_xml(-1, -1);
    cloud.stage(0, &vm_xml);
    let staging = cloud.staging();
    craft(cloud, &staging, &secret);
    let mut args = vec![
        "backup".to_string(),
        "--json".into(),
        "--tag".into(),
        format!("one-{}", crate::cloud::VM),
    ];
    for e in fs::read_dir(&staging).expect("staging").flatten() {
        args.push(e.path().display().to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = String::from_utf8_lossy(&cloud.restic_ok(&refs)).to_string();
    let id = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["snapshot_id"].as_str().map(|s| s[..8].to_string()))
        .expect("restic snapshot id");
    fs::remove_dir_all(&staging).expect("staging");

    let tmp = cloud.dir.path().join("fe-tmp");
    fs::create_dir_all(&tmp).expect("tmp");
    let ds = cloud.datastore_xml_with(&format!(
        "<RESTIC_TMP_DIR><![CDATA[{}]]></RESTIC_TMP_DIR>",
        tmp.display()
    ));
    let (oned, auth) = crate::tm::restore_oned(
        cloud,
        cloud.vm_xml(0, 40),
        cloud.image_xml(&[(0, id.as_str())]),
        ds,
    );
    let disks: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    let out = support::run_env(
        &link,
        &[
            &format!("hv1:{}", cloud.vm_dir.display()),
            "22",
            "40",
            "0",
            "-1",
        ],
        b"",
        &[
            ("ONE_XMLRPC", oned.endpoint.as_str()),
            ("ONE_AUTH", auth.to_str().expect("utf-8")),
        ],
    );
    drop(oned);
    assert!(
        fs::read_dir(&tmp).expect("tmp").next().is_none(),
        "the downloader left its work directory"
    );
    HostileRestore {
        t,
        out,
        secret,
        body,
        disks,
    }
}

impl HostileRestore {
    /// The restore failed in one line holding `said`, and the VM and the host are as they were.
    fn refused(&self, said: &str) {
        let cloud = &self.t.cloud;
        eprintln!("the restore said: {}", self.out.stderr.trim_end());
        assert_eq!(self.out.code, Some(1), "{:?}", self.out);
        assert!(
            self.out
                .stderr
                .starts_with("restore: Error restoring VM disks: ")
                && self.out.stderr.ends_with(&format!("{said}\n"))
                && self.out.stderr.lines().count() == 1,
            "{}",
            self.out.stderr
        );
        for (k, (d, _)) in DISKS.iter().enumerate() {
            assert!(
                fs::symlink_metadata(cloud.disk(*d))
                    .expect("disk")
                    .file_type()
                    .is_file(),
                "disk {d} was swapped"
            );
            assert!(cloud.raw(*d) == self.disks[k], "disk {d} changed");
        }
        let tpm: Vec<String> = fs::read_dir(cloud.vm_dir.join("tpm"))
            .expect("tpm")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(tpm, ["tpm2-00.permall"]);
        let state = cloud.vm_dir.join("tpm/tpm2-00.permall");
        assert!(fs::symlink_metadata(&state).expect("state").is_file());
        assert_eq!(fs::read(&state).expect("state"), b"the VM's own state");
        let left: Vec<String> = fs::read_dir(&cloud.vm_dir)
            .expect("vm dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".backup") || n.starts_with("tpm."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(
            fs::read(&self.secret).expect("secret") == self.body,
            "the host's file was written"
        );
    }
}

/// Disk 0 of the hostile backup is a qcow2 whose clusters are a file of the hypervisor (an
/// external data file, its L2 tables filled): restored as it came, qemu would read that file
/// into the VM's disk and the VM would write it. The restore refuses it, naming the file.
#[test]
fn the_in_place_restore_refuses_a_stored_qcow2_that_names_a_host_file_mock_oned() {
    let r = hostile_restore(|cloud, staging, secret| {
        let decoy = cloud.dir.path().join("decoy");
        fs::write(&decoy, vec![0u8; 1 << 20]).expect("decoy");
        let evil = staging.join("disk.0.0");
        fs::remove_file(&evil).expect("staged disk");
        let e = evil.to_str().expect("utf-8");
        sh_ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!(
                    "data_file={},data_file_raw=on,preallocation=metadata",
                    decoy.display()
                ),
                e,
                "1M",
            ],
        );
        sh_ok(
            "qemu-img",
            &[
                "amend",
                "-f",
                "qcow2",
                "-o",
                &format!("data_file={}", secret.display()),
                e,
            ],
        );
        fs::remove_file(&decoy).expect("decoy");
        // The attack is live: qemu reads the host's file through it.
        let through = sh_ok("qemu-io", &["-f", "qcow2", "-c", "read -v 0 64", e]);
        assert!(
            through.contains("48 4f 53 54 2d 53 45 43 52 45 54"),
            "the fixture is not hostile: {through}"
        );
    });
    r.refused(&format!(
        "uses the external data file {:?}, which backstop does not open",
        r.secret.display().to_string()
    ));
}

/// The hostile backup's TPM archive holds the state file as a symbolic link to a file of the
/// hypervisor: unpacked by `tar`, swtpm would read and write that file as the VM's TPM. The
/// restore refuses the archive, naming the member, before any disk is swapped.
#[test]
fn the_in_place_restore_unpacks_no_link_from_a_hostile_tpm_archive_mock_oned() {
    let r = hostile_restore(|cloud, staging, secret| {
        let craft = cloud.dir.path().join("craft/tpm");
        fs::create_dir_all(&craft).expect("craft");
        std::os::unix::fs::symlink(secret, craft.join("tpm2-00.permall")).expect("link");
        sh_ok(
            "tar",
            &[
                "czf",
                staging.join("disk.tpm.0").to_str().expect("utf-8"),
                "-C",
                craft.parent().expect("parent").to_str().expect("utf-8"),
                "tpm",
            ],
        );
    });
    r.refused(&format!(
        "cannot put the restored disks in place on hv1: the TPM archive {}: member \"tpm/tpm2-00.permall\" is a symbolic link, not a regular file or a directory; nothing is restored",
        r.t.cloud.vm_dir.join("disk.tpm.backup").display()
    ));
}
