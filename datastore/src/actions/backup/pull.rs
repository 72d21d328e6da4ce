//! A backup in pull mode (`BACKUP_PULL=YES`, docs/pull-mode.md), on the machine that pulls:
//! the host serves its disks read-only ([`super::export`]), this machine forwards the sockets
//! over ssh, reads the disks with backstop's NBD client and writes the repository itself.
//! The host is sent an empty request: no password, no storage key, no agent.
//!
//! Everything the host says is checked before use. It names its own sockets, which only
//! become the far end of an ssh forward (a path with `:` or a control character is refused);
//! the local ends are this machine's, in a private directory it makes. The disk ids must be
//! the ones asked for, and the changed extents must lie inside each disk.

use super::export::{EXPORTED_VERSION, Exported};
use super::host::{Handed, PulledDisk, write_snapshot};
use super::plan::StagedFiles;
use super::{HostOutcome, Outcome};
use crate::config::DriverConfig;
use crate::remote::{
    Agent, PROGRESS_ENV, is_this_machine, last_line, ssh_command, ssh_forward_command,
    ssh_master_command, write_request,
};
use crate::repo::writer::Progress;
use crate::{Error, ErrorKind};
use backstop_image::image::Extent;
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::BackupRequest;
use base64::Engine;
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest line `host-export` may print (it carries vm.xml, the TPM state and the changed
/// extents of every disk: a million extents take about 30 MiB).
const MAX_LINE: u64 = 64 << 20;

/// How long the host step may take to answer (it starts qemu-nbd and reads the bitmaps).
const ANSWER_WAIT: Duration = Duration::from_secs(600);

/// How long the host step may take to stop once its stdin is closed.
const HOST_STOP_WAIT: Duration = Duration::from_secs(60);

fn failed(args: &BackupArgs, host: &str, m: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Repository,
        format!("backup of VM {} on {host}: {m}", args.vm_id),
    )
}

/// The process and the directory a pull holds; both go when it ends, however it ends: the
/// host step (its stdin closed, then killed after [`HOST_STOP_WAIT`]), whose ssh is the
/// master connection that carries the forwards, and the local sockets' directory.
struct Session {
    host_step: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    dir: Option<PathBuf>,
}

impl Session {
    /// Closes the host step's stdin and waits for it to exit, killing its ssh after
    /// [`HOST_STOP_WAIT`].
    fn stop(&mut self) {
        drop(self.host_step.stdin.take());
        let deadline = Instant::now() + HOST_STOP_WAIT;
        loop {
            match self.host_step.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.host_step.kill();
                    let _ = self.host_step.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // End of file on the host step's stdin: it stops serving.
        self.stop();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A path the host names for its socket: absolute, short enough for a unix socket, and made
/// only of letters, digits and `/._+-`. ssh reads `-L` itself: `:` separates, and `$`, `{`,
/// `\\` and `[` would be expanded or parsed by it (an environment variable of this machine's
/// could otherwise be sent to the host).
fn check_remote_socket(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("socket {path:?} is not an absolute path"));
    }
    if path.len() > 107 {
        return Err(format!(
            "socket {path:?} is longer than a unix socket path can be"
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._+-".contains(*c)))
    {
        return Err(format!("socket {path:?} holds {c:?}"));
    }
    Ok(())
}

/// An export's name: at most 255 letters, digits and `._-` (it goes into an NBD URI, where
/// `?`, `#` or `&` would add parameters).
fn check_export_name(name: &str) -> Result<(), String> {
    if name.len() > 255
        || name
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(format!("the export name {name:?} is not usable"));
    }
    Ok(())
}

/// Checks the host's answer against the request: version, VM, the disks asked for (each
/// once), its socket paths and the changed extents' shape.
fn check_exported(args: &BackupArgs, e: &Exported) -> Result<(), String> {
    if e.version != EXPORTED_VERSION {
        return Err(format!(
            "the host's backstop answers in version {}, not {EXPORTED_VERSION} (update backstop on the host: onehost sync)",
            e.version
        ));
    }
    if e.manifest.vm_id != args.vm_id {
        return Err(format!(
            "the host served VM {}, not VM {}",
            e.manifest.vm_id, args.vm_id
        ));
    }
    let mut served: Vec<u32> = e.disks.iter().map(|d| d.disk_id).collect();
    served.sort_unstable();
    let mut asked = args.disk_ids.clone();
    asked.sort_unstable();
    asked.dedup();
    if served != asked {
        return Err(format!(
            "the host served disks {served:?}, not the disks asked for {asked:?}"
        ));
    }
    for d in &e.disks {
        check_remote_socket(&d.socket).map_err(|m| format!("disk {}: {m}", d.disk_id))?;
        check_export_name(&d.export).map_err(|m| format!("disk {}: {m}", d.disk_id))?;
    }
    Ok(())
}

/// What a pull's private directory is called in the temporary directory.
const DIR_PREFIX: &str = "backstop-pull-";

/// A private directory for the ssh control socket and the local ends of the forwards: made
/// exclusively, 0700, in the temporary directory (a unix socket's path is short), with the
/// identity of the process that owns it, so that a later pull removes it if that process was
/// killed ([`reap_stale_dirs`]).
fn private_socket_dir() -> Result<PathBuf, Error> {
    reap_stale_dirs();
    let mut random = [0u8; 6];
    getrandom::fill(&mut random)
        .map_err(|e| Error::new(ErrorKind::Repository, format!("no randomness: {e}")))?;
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", hex::encode(random)));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("cannot make {}", dir.display()), e))?;
    let me = backstop_image::process::ProcessId::current();
    let tmp = dir.join("owner.tmp");
    if let Err(e) = std::fs::write(&tmp, format!("{me}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join("owner")))
    {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Error::io(format!("cannot write in {}", dir.display()), e));
    }
    Ok(dir)
}

/// Removes the private directories of pulls whose process is gone (killed before it could
/// clean up): only directories of this user, not links, older than a minute, whose owner
/// record names a process that no longer runs. The ssh master it recorded, if it still runs
/// (a host that keeps the session open), is stopped first.
fn reap_stale_dirs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let uid = rustix::process::geteuid().as_raw();
    for e in entries.flatten() {
        let path = e.path();
        let ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX))
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !ours {
            continue;
        }
        let recent = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < Duration::from_secs(60));
        let record = |name: &str| {
            std::fs::read_to_string(path.join(name))
                .ok()
                .and_then(|t| backstop_image::process::ProcessId::parse(t.trim()))
        };
        if recent || !record("owner").is_some_and(|o| o.start != 0 && !o.is_running()) {
            continue;
        }
        if let Some(master) = record("master") {
            let _ = master.signal(rustix::process::Signal::TERM);
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Reads the host step's first line of stdout on a thread of its own (capped at
/// [`MAX_LINE`]); the rest of its stdout is drained.
fn first_line(stdout: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Option<String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        let got = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .ok()
            .filter(|n| *n > 0 && line.ends_with(b"\n"))
            .and_then(|_| String::from_utf8(line).ok());
        let _ = tx.send(got);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx
}

/// The VM document of the action's request (`DS_DRIVER_ACTION_DATA/VM`), as `vm.xml` holds it:
/// base64, 60 columns a line.
fn vm_document(raw_xml: &[u8]) -> Option<Vec<u8>> {
    use backstop_protocol::input::{Encoding, decode_siblings};
    let roots = decode_siblings(raw_xml, Encoding::RawXml).ok()?;
    let vm = roots
        .iter()
        .find(|r| r.name == "DS_DRIVER_ACTION_DATA")?
        .child("VM")?
        .to_xml();
    let b64 = base64::engine::general_purpose::STANDARD.encode(vm.as_bytes());
    let mut text = Vec::with_capacity(b64.len() + b64.len() / 60 + 1);
    for line in b64.as_bytes().chunks(60) {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    Some(text)
}

/// The front-end's side of a backup in pull mode, when it pulls itself (no BACKUP_PROXY).
pub fn run(
    args: &BackupArgs,
    request: &BackupRequest,
    raw_xml: &[u8],
    cfg: &DriverConfig,
    cancel: &Arc<AtomicBool>,
    host: &str,
) -> Result<Outcome, Error> {
    let staging = cfg.staging_dir(&args.host_dir.vm_dir, args.vm_id);
    let progress = Arc::new(Progress::default());
    let reporter = progress_reporter(&progress);
    let pulled = pull(
        args,
        (request, raw_xml),
        (cfg, &staging),
        cancel,
        host,
        &progress,
    );
    if let Some((done, handle)) = reporter {
        done.store(true, Ordering::SeqCst);
        let _ = handle.join();
    }
    let outcome = pulled?;
    Ok(Outcome {
        backup_id: outcome.snapshot_id.chars().take(8).collect(),
        size_mb: outcome.size_bytes / (1024 * 1024),
    })
}

/// A backup in pull mode on the machine that pulls (the front-end, or the proxy's
/// `host-pull`): the host step `host-export` on `host` serves the disks of `staging`, this
/// machine reads them and writes the snapshot, counting in `progress`.
pub fn pull(
    args: &BackupArgs,
    (request, raw_xml): (&BackupRequest, &[u8]),
    (cfg, staging): (&DriverConfig, &str),
    cancel: &Arc<AtomicBool>,
    host: &str,
    progress: &Arc<Progress>,
) -> Result<HostOutcome, Error> {
    let line = super::host_step_line(args, request, cfg, "host-export", staging, Vec::new())?;
    // The local ends and ssh's control socket: this machine's own names.
    let direct = is_this_machine(host);
    let dir = (!direct).then(private_socket_dir).transpose()?;
    let control = dir.as_ref().map(|d| d.join("ctl"));
    let mut command = match &control {
        Some(c) => ssh_master_command(cfg, host, c),
        None => ssh_command(cfg, host, Agent::NotForwarded),
    };
    let spawned = command
        .arg(line)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(d) = &dir {
                let _ = std::fs::remove_dir_all(d);
            }
            return Err(Error::io("cannot run ssh", e));
        }
    };
    if let (Some(d), Some(p)) = (&dir, backstop_image::process::ProcessId::of(child.id())) {
        // For the reaper, should this process be killed while the master lives on.
        let tmp = d.join("master.tmp");
        let _ = std::fs::write(&tmp, format!("{p}\n"))
            .and_then(|()| std::fs::rename(&tmp, d.join("master")));
    }
    if let Some(s) = child.stdin.as_mut() {
        // An empty request: the host step needs nothing of the datastore.
        let _ = write_request(s, b"");
    }
    let lines = first_line(child.stdout.take().expect("stdout is piped"));
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = (&mut e).take(1 << 20).read_to_string(&mut text);
            let _ = std::io::copy(&mut e, &mut std::io::sink());
            text
        })
    });
    let session = Session {
        host_step: child,
        stderr,
        dir,
    };
    let mut session = session;

    // The host's answer, while watching for a cancel.
    let asked = Instant::now();
    let answer = loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled(args));
        }
        if asked.elapsed() > ANSWER_WAIT {
            let m = format!(
                "the host step did not answer within {} s",
                ANSWER_WAIT.as_secs()
            );
            return Err(failed(args, host, m));
        }
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(l)) => break l,
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // No usable answer: the host step is told to stop (and killed if it does not)
                // before its stderr is read.
                session.stop();
                let err = session.stderr();
                let reason = last_line(&err).unwrap_or_else(|| {
                    format!(
                        "the host step printed nothing (is backstop installed in {}?)",
                        cfg.scripts_remote_dir
                    )
                });
                return Err(failed(args, host, reason));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    let exported: Exported = serde_json::from_str(answer.trim_end()).map_err(|e| {
        failed(
            args,
            host,
            format!("the host step's answer is not usable: {e}"),
        )
    })?;
    check_exported(args, &exported).map_err(|m| failed(args, host, m))?;

    let mut pulled = BTreeMap::new();
    let mut forwards = Vec::new();
    for d in &exported.disks {
        let socket = match &session.dir {
            Some(dir) => {
                let local = dir.join(format!("disk.{}.sock", d.disk_id));
                forwards.push((local.clone(), d.socket.clone()));
                local
            }
            None => PathBuf::from(&d.socket),
        };
        pulled.insert(
            d.disk_id,
            PulledDisk {
                socket,
                export: d.export.clone(),
                changed: d.changed.as_ref().map(|c| {
                    c.iter()
                        .map(|&(offset, length)| Extent { offset, length })
                        .collect()
                }),
            },
        );
    }
    if let Some(control) = &control
        && !forwards.is_empty()
    {
        forward(cfg, host, control, &forwards).map_err(|m| failed(args, host, m))?;
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    // The VM document stored with the snapshot (restore makes a template of it) is oned's,
    // from this action's request, not the host's; the host's only when oned sent none (up to
    // 6.10).
    let vm_xml = match vm_document(raw_xml) {
        Some(v) => v,
        None => b64
            .decode(&exported.vm_xml)
            .map_err(|_| failed(args, host, "the host step's vm.xml is not base64"))?,
    };
    let tpm = exported
        .tpm
        .as_ref()
        .map(|t| b64.decode(t))
        .transpose()
        .map_err(|_| failed(args, host, "the host step's TPM state is not base64"))?;
    let handed = Handed {
        staged: StagedFiles::default(),
        manifest: Some(exported.manifest),
        vm_xml,
        tpm,
        pulled: Some(pulled),
    };
    // A cancel ends the master connection at once: a host that stops answering in the middle
    // of a read cannot hold the backup up; the reads fail and the writer stops.
    let done = Arc::new(AtomicBool::new(false));
    let master = backstop_image::process::ProcessId::of(session.host_step.id());
    let watchdog = master.map(|master| {
        let (done, cancel) = (done.clone(), cancel.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if cancel.load(Ordering::SeqCst) {
                    let _ = master.signal(rustix::process::Signal::TERM);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let written = write_snapshot(
        args,
        request,
        Path::new(staging),
        &handed,
        cfg,
        cancel,
        progress,
    );
    done.store(true, Ordering::SeqCst);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    drop(session);
    if cancel.load(Ordering::SeqCst) {
        return Err(cancelled(args));
    }
    let outcome: HostOutcome = written?;
    // On stderr with a log prefix: oned keeps it in the VM's log.
    backstop_protocol::output::log(
        backstop_protocol::output::Level::Info,
        &format!(
            "VM {}: pull mode: {} disk(s) read from the exports of {host}",
            args.vm_id,
            exported.disks.len()
        ),
    );
    Ok(outcome)
}

fn cancelled(args: &BackupArgs) -> Error {
    Error::new(
        ErrorKind::Cancelled,
        format!("the backup of VM {} was cancelled", args.vm_id),
    )
}

/// Adds the forwards to the master connection.
fn forward(
    cfg: &DriverConfig,
    host: &str,
    control: &Path,
    forwards: &[(PathBuf, String)],
) -> Result<(), String> {
    let out = ssh_forward_command(cfg, host, control, forwards)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or_else(|| format!("ssh exited with {}", out.status), str::to_string);
        return Err(format!("cannot forward the disks' sockets: {why}"));
    }
    // The master answers once it listens on every local socket.
    match forwards.iter().find(|(l, _)| !l.exists()) {
        Some((l, _)) => Err(format!("ssh did not make the socket {}", l.display())),
        None => Ok(()),
    }
}

/// The job runner asks for progress through the environment: the writer's counters go to
/// that file (`<done> <total> <read>`, replaced atomically) once a second.
fn progress_reporter(
    progress: &Arc<Progress>,
) -> Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    let file = std::env::var_os(PROGRESS_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)?;
    let done = Arc::new(AtomicBool::new(false));
    let (counters, stop) = (progress.clone(), done.clone());
    let handle = std::thread::spawn(move || {
        let tmp = file.with_extension("partial");
        let mut last = None;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            let now = counters.get();
            if last != Some(now) && now.1 > 0 {
                let (d, t, r) = now;
                if std::fs::write(&tmp, format!("{d} {t} {r}")).is_ok() {
                    let _ = std::fs::rename(&tmp, &file);
                }
                last = Some(now);
            }
        }
    });
    Some((done, handle))
}

#[cfg(test)]
mod tests {
    use super::super::export::ExportedDisk;
    use super::*;
    use backstop_protocol::staging::DirectManifest;

    fn args() -> BackupArgs {
        BackupArgs::parse(&[
            "hv1:/v/0/22".to_string(),
            "0:1".into(),
            "one-22".into(),
            "-".into(),
            "22".into(),
            "0".into(),
        ])
        .expect("args")
    }

    fn exported(disks: &[(u32, &str)]) -> Exported {
        Exported {
            version: EXPORTED_VERSION,
            vm_xml: String::new(),
            tpm: None,
            manifest: DirectManifest {
                version: 1,
                vm_id: 22,
                increment: 0,
                disks: Vec::new(),
            },
            disks: disks
                .iter()
                .map(|(id, socket)| ExportedDisk {
                    disk_id: *id,
                    socket: socket.to_string(),
                    export: String::new(),
                    changed: None,
                })
                .collect(),
        }
    }

    /// What the host names is checked before any of it is used: its sockets only become the
    /// far end of a forward, so a name that would change how ssh reads `-L` is refused, and
    /// the disks must be the ones asked for.
    #[test]
    fn a_hostile_answer_is_refused_in_one_line() {
        let a = args();
        assert!(
            check_exported(
                &a,
                &exported(&[(0, "/tmp/a/nbd.sock"), (1, "/tmp/b/nbd.sock")])
            )
            .is_ok()
        );
        let cases: Vec<(Exported, &str)> = vec![
            (
                exported(&[(0, "/tmp/a.sock"), (1, "/tmp/b:/x.sock")]),
                "holds ':'",
            ),
            (
                exported(&[(0, "tmp/a.sock"), (1, "/tmp/b.sock")]),
                "is not an absolute path",
            ),
            (
                exported(&[(0, "/tmp/a\n.sock"), (1, "/tmp/b.sock")]),
                "holds '\\n'",
            ),
            (
                exported(&[(0, "/tmp/a.sock")]),
                "not the disks asked for [0, 1]",
            ),
            (
                exported(&[(0, "/tmp/a.sock"), (0, "/tmp/b.sock")]),
                "not the disks asked for",
            ),
            (
                exported(&[(0, "/tmp/a.sock"), (1, "/tmp/b.sock"), (2, "/tmp/c.sock")]),
                "not the disks asked for",
            ),
            (
                exported(&[(0, &format!("/{}", "a".repeat(120))), (1, "/b")]),
                "longer than a unix socket",
            ),
        ];
        for (e, want) in cases {
            let m = check_exported(&a, &e).expect_err(want);
            assert!(m.contains(want), "{m:?} does not say {want:?}");
        }
        // ssh would expand a variable of the front-end's environment in a forward's path.
        let m = check_exported(&a, &exported(&[(0, "/tmp/${HOME}"), (1, "/b")])).expect_err("$");
        assert!(m.contains("holds '$'"), "{m}");
        let mut uri = exported(&[(0, "/a"), (1, "/b")]);
        uri.disks[1].export = "vda?socket=/run/other.sock#".into();
        let m = check_exported(&a, &uri).expect_err("export name");
        assert!(m.starts_with("disk 1: the export name"), "{m}");
        let mut other_vm = exported(&[(0, "/a"), (1, "/b")]);
        other_vm.manifest.vm_id = 23;
        assert_eq!(
            check_exported(&a, &other_vm).expect_err("vm"),
            "the host served VM 23, not VM 22"
        );
        let mut newer = exported(&[(0, "/a"), (1, "/b")]);
        newer.version = 2;
        assert!(
            check_exported(&a, &newer)
                .expect_err("version")
                .contains("version 2")
        );
    }
}
