//! Pull mode (issue 29, docs/pull-mode.md): `BACKUP_PULL=YES` makes the host only serve its
//! disks read-only (`host-export`), while the front-end forwards the sockets over the same
//! ssh connection, reads them with backstop's NBD client and writes the repository itself.
//!
//! What it shows, on real sshd, qemu-nbd with persistent dirty bitmaps and the real S3 server
//! (SeaweedFS): FULL and three CBT increments of a stopped VM; every point restores byte-exact
//! with plain restic and the increments read only what changed; the host step (every
//! backstop call on the host, through a recording wrapper) never receives the repository
//! password or the S3 keys in its argv, environment or stdin, and no file on the host holds
//! them; no agent is forwarded; nothing is left running or behind (qemu-nbd, sockets, the
//! front-end's private directory); a pull killed in the middle leaves nothing running and the
//! retry is the same increment from the same parent.

use crate::cloud::{Cloud, DISKS, PASSWORD, parse_backup_line};
use crate::tm::{Tm, install_tm, our_qemu_nbd, processes, wait_until};
use std::fs;
use std::path::{Path, PathBuf};

const PULL: &str = "<BACKUP_PULL><![CDATA[YES]]></BACKUP_PULL>";

/// Replaces the host's backstop with a script that records each call's argv, environment and
/// stdin under `log`, then runs the real one (kept beside it, so it finds what it finds
/// relative to itself as before).
pub(crate) fn record_host_calls(cloud: &Cloud, log: &Path) {
    fs::create_dir_all(log).expect("log dir");
    let bin = cloud
        .dir
        .path()
        .join("hv/var/tmp/one/backstop/bin/backstop");
    let real = bin.with_file_name("backstop.real");
    let target = fs::canonicalize(&bin).expect("host binary");
    fs::copy(&target, &real).expect("copy the real binary");
    fs::remove_file(&bin).expect("remove");
    fs::write(
        &bin,
        format!(
            "#!/bin/sh\nn=$$\n{{ printf 'ARGV'; for a in \"$@\"; do printf ' %s' \"$a\"; done; echo; env; }} > {log}/$n.call\n\
             exec 3<&0\nmkfifo {log}/$n.fifo\ntee {log}/$n.stdin <&3 > {log}/$n.fifo &\ntee_pid=$!\n\
             {real} \"$@\" < {log}/$n.fifo 3<&-\nst=$?\nkill $tee_pid 2>/dev/null\nrm -f {log}/$n.fifo\nexit $st\n",
            log = log.display(),
            real = real.display()
        ),
    )
    .expect("wrapper");
    fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
}

/// Every file under `dir` (not following links).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The files among `files` that contain any of `secrets`.
fn holding(files: &[PathBuf], secrets: &[&str]) -> Vec<String> {
    files
        .iter()
        .filter(|f| {
            fs::read(f).is_ok_and(|data| {
                secrets
                    .iter()
                    .any(|s| data.windows(s.len()).any(|w| w == s.as_bytes()))
            })
        })
        .map(|f| f.display().to_string())
        .collect()
}

/// The front-end's private pull directories left behind in the temporary directory: those
/// whose owner process is gone (a pull that is running in another test keeps its own).
fn pull_dirs() -> Vec<String> {
    fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("backstop-pull-"))
        })
        .filter(|e| {
            let owner = fs::read_to_string(e.path().join("owner")).unwrap_or_default();
            let pid = owner.split('.').next().unwrap_or("").to_string();
            !Path::new(&format!("/proc/{pid}")).exists() || pid.is_empty()
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn pull_mode_backs_up_a_stopped_vm_without_giving_the_host_any_secret() {
    let cloud = Cloud::start_s3(false);
    let conf = cloud.remotes.join("etc/datastore/backstop.conf");
    let mut text = fs::read_to_string(&conf).expect("backstop.conf");
    text.push_str("TM_DELIVERY=direct\n");
    fs::write(&conf, text).expect("backstop.conf");
    install_tm(&cloud, "qcow2");
    cloud.create_disks();
    let t = Tm { cloud };
    let cloud = &t.cloud;
    let log = cloud.dir.path().join("host-calls");
    record_host_calls(cloud, &log);
    let ds = cloud.datastore_xml_with(PULL);
    let secrets = [
        PASSWORD,
        crate::s3server::ACCESS_KEY,
        crate::s3server::SECRET_KEY,
    ];

    let mut ids = Vec::new();
    for inc in 0..4u64 {
        if inc > 0 {
            cloud.change_disks(inc, 12);
        }
        let vm_xml = cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        let pre = t.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        if inc == 0 {
            // A host that plants its own VM document: the snapshot keeps oned's.
            let planted = vm_xml.replace("<NAME>db</NAME>", "<NAME>planted</NAME>");
            fs::write(
                cloud.staging().join("vm.xml"),
                crate::support::b64(&planted),
            )
            .expect("plant vm.xml");
        }
        let out = cloud.backup_to(&ds, &vm_xml);
        let (id, size_mb) = parse_backup_line(&out);
        if inc == 0 {
            use base64::Engine;
            let stored = cloud.restic_ok(&[
                "dump",
                &id,
                &format!("{}/vm.xml", cloud.staging().display()),
            ]);
            let text: Vec<u8> = stored
                .into_iter()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let doc = base64::engine::general_purpose::STANDARD
                .decode(&text)
                .expect("vm.xml is base64");
            let doc = String::from_utf8_lossy(&doc);
            assert!(
                doc.contains("<NAME>db</NAME>") && !doc.contains("planted"),
                "the stored VM document is not oned's: {doc}"
            );
        }
        if inc > 0 {
            assert!(size_mb <= 8, "increment {inc} read {size_mb} MB");
        }
        let post = t.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
        t.check_point(inc, &id, &now);
        assert!(
            our_qemu_nbd(cloud.dir.path()).is_empty(),
            "a qemu-nbd was left"
        );
        assert!(processes("host-export", cloud.dir.path()).is_empty());
        ids.push(id);
    }
    cloud.restic_ok(&["check", "--read-data"]);
    // Four snapshots, each one backup: the increments stand alone.
    let snaps = cloud.restic_ok(&["snapshots", "--json"]);
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&snaps).expect("json");
    assert_eq!(snaps.len(), 4);

    // The host step: called for every backup, sent nothing secret.
    let calls = files_under(&log);
    let exports: Vec<&PathBuf> = calls
        .iter()
        .filter(|c| {
            c.extension().is_some_and(|e| e == "call")
                && fs::read_to_string(c).is_ok_and(|t| t.starts_with("ARGV host-export "))
        })
        .collect();
    assert_eq!(exports.len(), 4, "host-export calls: {calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| fs::read_to_string(c).is_ok_and(|t| t.starts_with("ARGV host-backup"))),
        "a host-backup ran in pull mode"
    );
    for e in &exports {
        let stdin = fs::read(e.with_extension("stdin")).expect("stdin");
        assert_eq!(stdin, b"BACKSTOP-REQUEST 0\n", "host-export's stdin");
    }
    assert_eq!(
        holding(&calls, &secrets),
        Vec::<String>::new(),
        "secrets reached the host"
    );
    let host_files = files_under(&cloud.dir.path().join("hv"));
    assert_eq!(
        holding(&host_files, &secrets),
        Vec::<String>::new(),
        "files on the host hold a secret"
    );
    assert_eq!(
        cloud.hv.agent_requests(),
        0,
        "an agent was forwarded to the host"
    );
    assert_eq!(
        pull_dirs(),
        Vec::<String>::new(),
        "a pull directory was left"
    );

    // A pull killed while it reads: nothing stays running, and the retry is the same
    // increment from the same parent.
    cloud.change_disks(4, 12);
    let vm_xml = cloud.vm_xml(3, 40);
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    // Slowed down to 64 KiB/s towards the store, so that it is surely killed mid-way.
    let slow = cloud.datastore_xml_with(&format!("{PULL}<RESTIC_BWLIMIT>64</RESTIC_BWLIMIT>"));
    let mut action = start_backup(cloud, (&slow, &vm_xml));
    wait_until("the host serves the disks", || {
        our_qemu_nbd(cloud.dir.path()).len() == DISKS.len()
    });
    action.kill().expect("kill the backup action");
    let _ = action.wait();
    wait_until("qemu-nbd stops after the puller is killed", || {
        our_qemu_nbd(cloud.dir.path()).is_empty()
            && processes("host-export", cloud.dir.path()).is_empty()
    });
    let snaps: Vec<serde_json::Value> =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.len(), 4, "the killed pull wrote a snapshot");
    // The killed pull's private directory is left; a pull reaps such directories once they
    // are a minute old (so as never to race one being made): made older here.
    let left = pull_dirs();
    assert_eq!(left.len(), 1, "the killed pull's directory: {left:?}");
    crate::cloud::sh_ok("touch", &["-d", "2 minutes ago", &left[0]]);
    let out = cloud.backup_to(&ds, &vm_xml);
    let (id, size_mb) = parse_backup_line(&out);
    assert!(size_mb <= 8, "the retry read {size_mb} MB");
    let post = t.step("postbackup", &vm_xml, false);
    assert_eq!(post.code, Some(0), "{post:?}");
    let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
    t.check_point(4, &id, &now);
    assert_eq!(
        pull_dirs(),
        Vec::<String>::new(),
        "the killed pull's directory was not reaped"
    );
    a_misbehaving_host_is_refused_or_cancelled(&t);
}

/// A backup proxy (BACKUP_PROXY): the front-end sends the backup to `host-pull` on the proxy
/// (its own sshd, "px1"), which pulls the disks from `host-export` on the host and writes the
/// repository. S3 with split keys: the proxy is sent the write key (which may not delete) and
/// never the maintenance key; the host is sent nothing. FULL and two CBT increments, each
/// byte-exact; then a cancel (SIGTERM to the front-end's action, as backup_cancel sends it)
/// ends the proxy's pull, the host step and its qemu-nbd, and writes no snapshot.
#[test]
fn pull_mode_through_a_backup_proxy() {
    use crate::s3server::{ACCESS_KEY, NODELETE_SECRET_KEY, SECRET_KEY};
    let mut cloud = Cloud::start_s3(false);
    cloud.split_keys = true;
    let proxy = crate::cloud::start_sshd(cloud.dir.path(), "127.0.0.6", "px1");
    let ssh_config = cloud.dir.path().join("ssh_config");
    let mut text = fs::read_to_string(&ssh_config).expect("ssh_config");
    text.push_str(&proxy.host_block());
    fs::write(&ssh_config, text).expect("ssh_config");
    let conf = cloud.remotes.join("etc/datastore/backstop.conf");
    let mut text = fs::read_to_string(&conf).expect("backstop.conf");
    text.push_str("TM_DELIVERY=direct\n");
    fs::write(&conf, text).expect("backstop.conf");
    install_tm(&cloud, "qcow2");
    cloud.create_disks();
    let t = Tm { cloud };
    let cloud = &t.cloud;
    let log = cloud.dir.path().join("host-calls");
    record_host_calls(cloud, &log);
    let ds = cloud.datastore_xml_with(&format!("{PULL}<BACKUP_PROXY>px1</BACKUP_PROXY>"));

    for inc in 0..3u64 {
        if inc > 0 {
            cloud.change_disks(inc, 12);
        }
        let vm_xml = cloud.vm_xml(inc as i64 - 1, if inc == 0 { -1 } else { 40 });
        let pre = t.step("prebackup", &vm_xml, false);
        assert_eq!(pre.code, Some(0), "prebackup {inc}: {pre:?}");
        let out = cloud.backup_to(&ds, &vm_xml);
        let (id, size_mb) = parse_backup_line(&out);
        if inc > 0 {
            assert!(size_mb <= 8, "increment {inc} read {size_mb} MB");
        }
        let post = t.step("postbackup", &vm_xml, false);
        assert_eq!(post.code, Some(0), "postbackup {inc}: {post:?}");
        let now: Vec<Vec<u8>> = DISKS.iter().map(|(d, _)| cloud.raw(*d)).collect();
        t.check_point(inc, &id, &now);
    }
    cloud.restic_ok(&["check", "--read-data"]);

    // Who was called where, and sent what.
    let calls = files_under(&log);
    let named = |step: &str| -> Vec<PathBuf> {
        calls
            .iter()
            .filter(|c| {
                c.extension().is_some_and(|e| e == "call")
                    && fs::read_to_string(c).is_ok_and(|t| t.starts_with(&format!("ARGV {step} ")))
            })
            .cloned()
            .collect()
    };
    let (pulls, exports) = (named("host-pull"), named("host-export"));
    assert_eq!((pulls.len(), exports.len()), (3, 3), "{calls:?}");
    assert!(named("host-backup").is_empty(), "a host-backup ran");
    for p in &pulls {
        let call = fs::read_to_string(p).expect("call");
        assert!(
            call.lines()
                .any(|l| l.starts_with("SSH_CONNECTION=") && l.contains(" 127.0.0.6 ")),
            "host-pull did not run on the proxy:\n{call}"
        );
        let stdin = fs::read_to_string(p.with_extension("stdin")).expect("stdin");
        assert!(
            stdin.contains(PASSWORD) && stdin.contains(NODELETE_SECRET_KEY),
            "the proxy was not sent the password and the write key"
        );
        assert!(
            !stdin.contains(SECRET_KEY) && !stdin.contains("MAINTENANCE"),
            "the proxy was sent the maintenance key"
        );
        assert!(!call.contains(PASSWORD) && !call.contains(NODELETE_SECRET_KEY));
    }
    for e in &exports {
        let stdin = fs::read(e.with_extension("stdin")).expect("stdin");
        assert_eq!(stdin, b"BACKSTOP-REQUEST 0\n", "host-export's stdin");
    }
    let host_side: Vec<PathBuf> = exports
        .iter()
        .flat_map(|e| [e.clone(), e.with_extension("stdin")])
        .collect();
    assert_eq!(
        holding(
            &host_side,
            &[PASSWORD, ACCESS_KEY, SECRET_KEY, NODELETE_SECRET_KEY]
        ),
        Vec::<String>::new(),
        "a secret reached the host"
    );

    // A cancel while the proxy waits on a host step that never answers: SIGTERM to the
    // front-end's action (as backup_cancel sends it) ends the proxy's pull and the host step.
    let bin = cloud
        .dir
        .path()
        .join("hv/var/tmp/one/backstop/bin/backstop");
    let real = bin.with_file_name("backstop.real");
    fs::write(
        &bin,
        format!(
            "#!/bin/sh\nif [ \"$1\" = host-export ]; then cat > /dev/null; exit 0; fi\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .expect("a silent host step");
    cloud.change_disks(3, 12);
    let vm_xml = cloud.vm_xml(2, 40);
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let out = cancel_while_waiting(cloud, (&ds, &vm_xml), &["host-export", "host-pull"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cancelled"), "{}", out.stderr);
    wait_until("the proxy's pull and the host step end", || {
        leftovers("host-export", cloud.dir.path()).is_empty()
            && leftovers("host-pull", cloud.dir.path()).is_empty()
    });
    let snaps: Vec<serde_json::Value> =
        serde_json::from_slice(&cloud.restic_ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.len(), 3, "the cancelled pull wrote a snapshot");
    let post = t.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
    drop(proxy);
}

/// Starts the datastore's backup action as oned would, with the request on its stdin (closed
/// once written) and its output piped.
fn start_backup(cloud: &Cloud, (ds, vm_xml): (&str, &str)) -> std::process::Child {
    let stdin = format!("<DS_DRIVER_ACTION_DATA>{ds}{vm_xml}</DS_DRIVER_ACTION_DATA>");
    let mut action = std::process::Command::new(cloud.action("backup"))
        .args(cloud.backup_args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backup");
    {
        use std::io::Write;
        let mut s = action.stdin.take().expect("stdin");
        s.write_all(stdin.as_bytes()).expect("write");
    }
    action
}

/// Starts the backup action on `ds`, waits until a process of each of `waiting_on` runs (the
/// pull is then waiting on a silent host step), checks the action still runs a second later,
/// sends it SIGTERM (as backup_cancel does) and returns its outcome, which must come within
/// 30 s.
fn cancel_while_waiting(
    cloud: &Cloud,
    (ds, vm_xml): (&str, &str),
    waiting_on: &[&str],
) -> crate::support::Outcome {
    let mut action = start_backup(cloud, (ds, vm_xml));
    wait_until("the pull waits on the silent host step", || {
        waiting_on
            .iter()
            .all(|w| !leftovers(w, cloud.dir.path()).is_empty())
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        action.try_wait().expect("wait").is_none(),
        "the pull ended on its own"
    );
    let signalled = std::time::Instant::now();
    crate::cloud::sh_ok("kill", &["-TERM", &action.id().to_string()]);
    let out = crate::support::Outcome::from(action.wait_with_output().expect("wait"));
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(30),
        "the cancel took {:?}",
        signalled.elapsed()
    );
    out
}

/// Processes whose command line holds `word` and `dir` (a script's too), and ssh processes
/// of a pull (its private directory on their command line).
fn leftovers(word: &str, dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let c = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            ((c.contains(word) && c.contains(&dir))
                || (c.starts_with("ssh ") && c.contains("backstop-pull-")))
            .then_some(format!("{pid}: {c}"))
        })
        .collect()
}

/// A host that edits its answer (a socket path that would make the front-end's ssh expand a
/// variable of its environment) is refused in one line, and everything the pull started ends:
/// the host's qemu-nbd and host step, the ssh master, the private directory. A host that
/// never answers holds the backup until it is cancelled: SIGTERM, as backup_cancel sends it,
/// ends the pull at once, with the same cleanup.
fn a_misbehaving_host_is_refused_or_cancelled(t: &Tm) {
    let cloud = &t.cloud;
    let bin = cloud
        .dir
        .path()
        .join("hv/var/tmp/one/backstop/bin/backstop");
    let real = bin.with_file_name("backstop.real");
    let fake = |export: &str| {
        fs::write(
            &bin,
            format!(
                "#!/bin/sh
if [ \"$1\" = host-export ]; then
{export}
fi
exec {} \"$@\"\n",
                real.display()
            ),
        )
        .expect("fake host");
    };
    let vm_xml = cloud.vm_xml(4, 40);
    let pre = t.step("prebackup", &vm_xml, false);
    assert_eq!(pre.code, Some(0), "{pre:?}");
    let ds = cloud.datastore_xml_with(PULL);
    let snapshots = || {
        serde_json::from_slice::<Vec<serde_json::Value>>(&cloud.restic_ok(&["snapshots", "--json"]))
            .expect("json")
            .len()
    };
    let before = snapshots();

    fake(&format!(
        "{} \"$@\" | sed -u 's|\"socket\":\"/|\"socket\":\"/${{HOME}}/|g'
exit 0",
        real.display()
    ));
    let out = cloud.backup_to(&ds, &vm_xml);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("socket \"/${HOME}/") && out.stderr.contains("holds '$'"),
        "{}",
        out.stderr
    );
    wait_until("the refused pull's processes end", || {
        our_qemu_nbd(cloud.dir.path()).is_empty()
            && leftovers("host-export", cloud.dir.path()).is_empty()
    });
    assert_eq!(
        pull_dirs(),
        Vec::<String>::new(),
        "a pull directory was left"
    );

    fake("cat > /dev/null\nexit 0");
    let out = cancel_while_waiting(cloud, (&ds, &vm_xml), &["host-export"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("cancelled"), "{}", out.stderr);
    wait_until("the cancelled pull's processes end", || {
        leftovers("host-export", cloud.dir.path()).is_empty()
    });
    assert_eq!(
        pull_dirs(),
        Vec::<String>::new(),
        "a pull directory was left"
    );
    assert_eq!(
        snapshots(),
        before,
        "a misbehaving host's pull wrote a snapshot"
    );
    let post = t.step("postbackup", &vm_xml, true);
    assert_eq!(post.code, Some(0), "{post:?}");
}

/// A running VM (TCG under a real libvirtd) in pull mode: the FULL reads the frozen base under
/// prebackup_live's external snapshot, served by the host's own qemu-nbd without qemu's lock;
/// the increments read libvirt's backup export (`backup-begin` with checkpoints), forwarded,
/// with the dirty extents the host read from it. Every point restores byte-exact with restic
/// (checked against what the guest wrote), and the host is sent no secret.
#[test]
fn pull_mode_backs_up_a_running_vm_through_libvirts_export() {
    let lv = crate::live::Libvirt::start();
    let mut vm = crate::live::LiveVm::start(&lv, "direct");
    vm.datastore_extra = PULL.to_string();
    let log = vm.cloud.dir.path().join("host-calls");
    record_host_calls(&vm.cloud, &log);
    let (_, _, pre) = vm.backup(0);
    assert!(
        pre.stderr
            .contains("increment 0 of the running VM prepared"),
        "{pre:?}"
    );
    for inc in 1..=3u64 {
        vm.change(inc, 6);
        let (_, mb, pre) = vm.backup(inc);
        // 6 writes of 64 KiB per disk: at most 12 chunks of 1 MiB.
        assert!(mb <= 12, "increment {inc} read {mb} MB");
        assert!(!pre.stderr.contains("whole"), "{pre:?}");
    }
    vm.cloud.restic_ok(&["check", "--read-data"]);
    let calls = files_under(&log);
    let exports = calls
        .iter()
        .filter(|c| fs::read_to_string(c).is_ok_and(|t| t.starts_with("ARGV host-export ")))
        .count();
    assert_eq!(exports, 4, "host-export calls: {calls:?}");
    assert_eq!(holding(&calls, &[PASSWORD]), Vec::<String>::new());
    assert_eq!(
        holding(&files_under(&vm.cloud.dir.path().join("hv")), &[PASSWORD]),
        Vec::<String>::new(),
        "files on the host hold the password"
    );
    assert_eq!(vm.cloud.hv.agent_requests(), 0, "an agent was forwarded");
    lv.virsh_ok(&["destroy", &vm.dom]);
}
