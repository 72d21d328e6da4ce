//! `backup`: store a VM's staged disks as one snapshot (spec §5.2, §15).
//!
//! oned's one_vmm_exec runs this on the front-end with `host:vm_dir disk_ids deploy_id
//! bj_id|- vm_id sys_ds_id` and the raw `DS_DRIVER_ACTION_DATA{DATASTORE,VM}` XML (a bare
//! `<DATASTORE>` up to 6.10). The work happens on the host (or `LAST_BRIDGE`), where the TM's
//! prebackup staged the disks:
//!
//! 1. Front-end ([`run`]): create the repository on first use (under a local lock, so parallel
//!    backups of one job do not race to initialise it), leave a PID file for `backup_cancel`,
//!    then `ssh <host> <SCRIPTS_REMOTE_DIR>/backstop/bin/backstop host-backup …` with the same
//!    XML on stdin (the password travels there, never in argv). stdin stays open: when the
//!    front-end process dies or is told to stop, the host sees end-of-file and stops too.
//! 2. Host ([`host_run`]): read `<staging>/disk.<id>.<inc>`, `disk.tpm.0` and `vm.xml` and write
//!    one snapshot holding them at their staged paths, tagged `one-<vm_id>` and
//!    [`IMAGE_TAG`]. A disk is stored as its complete raw content cut in fixed chunks (not as
//!    the staged qcow2 file): increment 0 is read whole (only allocated ranges); increment n > 0
//!    is a stock increment (a qcow2 delta) whose clusters are the changed extents, merged with
//!    the parent snapshot (the one holding `disk.<id>.<n-1>`), so every snapshot restores
//!    alone.
//! 3. stdout: `<first 8 hex of the snapshot id> <MB> raw`. The size is what was read from the
//!    disks (allocated data of a full backup, changed data of an increment), in whole MiB,
//!    as the stock driver reports the size of the files it processed.
//!
//! On SIGTERM, or when `backup_cancel` sends it, the backup stops: no snapshot is written and
//! the repository stays consistent (packs already written are unreferenced until a prune);
//! the exit code is 1.

use crate::config::DriverConfig;
use crate::process::ProcessId;
use crate::repo::Repo;
use crate::repo::disk_image::{self, Backing, Format};
use crate::repo::format::{RepoId, Snapshot};
use crate::repo::image::{ImageSource, RawImage};
use crate::repo::nbd::{self, NbdImage};
use crate::repo::writer::{self, BackupOptions, Content, FileSpec};
use crate::target::{RepoTarget, repo_id};
use crate::{Error, ErrorKind};
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::{BackupMode, BackupRequest, Datastore, Vm};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Marks snapshots whose disks are complete raw images in fixed chunks (written by backstop),
/// as opposed to the stock driver's qcow2 files.
pub const IMAGE_TAG: &str = "backstop-image";

/// The first line the front-end sends the host step, before the XML.
const REQUEST_HEADER: &str = "BACKSTOP-REQUEST";

/// How long the front-end waits for the host to stop after a cancel before it kills ssh.
const CANCEL_GRACE: Duration = Duration::from_secs(120);

/// What the host step prints (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOutcome {
    pub snapshot_id: String,
    pub size_bytes: u64,
}

/// The answer oned reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub backup_id: String,
    pub size_mb: u64,
}

impl Outcome {
    pub fn line(&self) -> String {
        format!("{} {} raw", self.backup_id, self.size_mb)
    }
}

/// Quotes a word for the remote shell ssh hands the command line to.
pub fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The host (or bridge) the work runs on.
pub fn target_host(args: &BackupArgs, vm: Option<&Vm>) -> String {
    vm.and_then(|v| v.backup_config.last_bridge.clone())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| args.host_dir.host.clone())
}

/// Whether a hop forwards the front-end's ssh agent. Only a host step that itself opens SFTP
/// to the backup server with the agent's keys needs it; every other hop goes without, so a
/// host (or a backup server) never holds a usable agent it does not need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Forward,
    NotForwarded,
}

/// A command that runs a shell line on `host`: `sh -c` when the host is this machine,
/// otherwise ssh. ssh options every hop uses: never prompt, no shared connections (as the
/// stock drivers); the agent only with [`Agent::Forward`].
pub fn ssh_command(cfg: &DriverConfig, host: &str, agent: Agent) -> Command {
    if is_this_machine(host) {
        // An all-in-one installation: the host is the front-end itself; no ssh to it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c");
        return cmd;
    }
    let mut cmd = Command::new("ssh");
    if let Some(c) = &cfg.ssh_config {
        cmd.arg("-F").arg(c);
    }
    cmd.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        if agent == Agent::Forward {
            "ForwardAgent=yes"
        } else {
            "ForwardAgent=no"
        },
        "-o",
        "ConnectTimeout=30",
        "--",
        host,
    ]);
    cmd
}

/// The shell prefix that confines the host step (spec §10.3), from the datastore's
/// `RESTIC_MAX_RIOPS`, `RESTIC_MAX_WIOPS`, `RESTIC_CPU_QUOTA` (percent), `RESTIC_MEMORY_MAX_MB`
/// (a systemd user slice `backup.<ds_id>.slice` shared by all backups to the datastore, as the
/// stock drivers use; its limits are set as runtime properties), or else `RESTIC_NICE` and
/// `RESTIC_IONICE` (`nice`, `ionice -c2`). Empty when none is set.
pub fn confinement(ds: &Datastore, vm_dir: &str) -> Result<String, Error> {
    let c = crate::settings::Settings::of(ds)?.confinement;
    let (riops, wiops, cpu, mem, nice, ionice) = (
        c.max_riops,
        c.max_wiops,
        c.cpu_quota,
        c.memory_max_mb,
        c.nice,
        c.ionice,
    );
    if riops.is_some() || wiops.is_some() || cpu.is_some() || mem.is_some() {
        let slice = format!("backup.{}.slice", ds.id);
        let mut props = Vec::new();
        if let Some(c) = cpu {
            props.push(format!("CPUQuota={c}%"));
        }
        if let Some(m) = mem {
            props.push(format!("MemoryMax={m}M"));
        }
        if let Some(r) = riops {
            props.push(format!("IOReadIOPSMax={vm_dir} {r}"));
        }
        if let Some(w) = wiops {
            props.push(format!("IOWriteIOPSMax={vm_dir} {w}"));
        }
        let props: Vec<String> = props.iter().map(|p| sh_quote(p)).collect();
        return Ok(format!(
            "systemctl --user set-property --runtime {slice} {} && exec systemd-run --user --quiet --pipe --collect --wait --slice={slice} ",
            props.join(" ")
        ));
    }
    let mut prefix = String::new();
    if let Some(n) = nice {
        prefix.push_str(&format!("nice -n {n} "));
    }
    if let Some(n) = ionice {
        prefix.push_str(&format!("ionice -c2 -n{n} "));
    }
    Ok(prefix)
}

/// Whether `host` names this machine: `localhost`, a loopback address literal, or this
/// machine's own host name. Steps for it run here, without ssh.
pub fn is_this_machine(host: &str) -> bool {
    let host = host.rsplit('@').next().unwrap_or(host);
    matches!(host, "localhost" | "127.0.0.1" | "::1")
        || rustix::system::uname().nodename().to_str() == Ok(host)
}

/// Creates the repository when it is missing. Parallel backups of one job share a repository:
/// a lock file on this machine makes sure only one of them initialises it.
pub fn ensure_repository(
    target: &RepoTarget,
    request: &BackupRequest,
    cfg: &DriverConfig,
) -> Result<(), Error> {
    let ds = &request.datastore;
    let storage = target.storage(ds, cfg)?;
    if target.exists(&storage)? {
        return Ok(());
    }
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(|e| Error::io(format!("cannot create {}", cfg.run_dir.display()), e))?;
    let lock_path = cfg.run_dir.join("repository-init.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("cannot open {}", lock_path.display()), e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(format!("cannot lock {}", lock_path.display()), e.into()))?;
    if !target.exists(&storage)? {
        Repo::init(storage, &crate::target::password(ds)?)?;
    }
    Ok(())
}

/// Removes the PID file when the backup ends, however it ends.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The PID file of a VM's running backup.
pub fn pid_file(cfg: &DriverConfig, vm_id: u64) -> PathBuf {
    cfg.run_dir.join(format!("backup-{vm_id}.pid"))
}

/// What a backup's PID file says: `<pid> <deploy_id> <process id>` (see
/// [`crate::process::ProcessId`]).
pub fn read_pid_file(cfg: &DriverConfig, vm_id: u64) -> Option<(String, ProcessId)> {
    let text = std::fs::read_to_string(pid_file(cfg, vm_id)).ok()?;
    let mut words = text.split_whitespace();
    let _pid = words.next()?;
    let deploy_id = words.next()?.to_string();
    let process = ProcessId::parse(words.next()?)?;
    Some((deploy_id, process))
}

/// Whether a backup action of the VM is still running on this machine: its PID file names a
/// process that still runs, the very one (PID, start time, boot), not one that got its PID.
/// For the job runner's reconciliation after it was killed.
pub fn backup_running(cfg: &DriverConfig, vm_id: u64) -> bool {
    read_pid_file(cfg, vm_id).is_some_and(|(_, p)| p.is_running())
}

/// A backup that is in the repository but not in the caller's records: what a backup action
/// left when the process that ran it (the job runner) was killed before it read the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecorded {
    /// The snapshot id.
    pub id: String,
    /// Its disks' sizes, summed (the image's size, not what was read).
    pub size_bytes: u64,
}

/// The newest snapshot of VM `vm_id` in the repository of `job_id` taken at or after `since`
/// whose id does not start with any of `recorded`; None when there is none or the repository
/// does not exist yet.
pub fn unrecorded_backup(
    ds: &Datastore,
    job_id: Option<u64>,
    vm_id: u64,
    since: jiff::Timestamp,
    recorded: &[String],
    cfg: &DriverConfig,
) -> Result<Option<Unrecorded>, Error> {
    let target = RepoTarget::new(ds, repo_id(job_id, vm_id))?;
    if !target.exists(&target.storage(ds, cfg)?)? {
        return Ok(None);
    }
    let repo = crate::actions::open(ds, repo_id(job_id, vm_id), cfg)?;
    let tag = format!("one-{vm_id}");
    let Some((id, snap, _)) = repo.all_snapshots()?.into_iter().rfind(|(id, snap, time)| {
        let hex = id.to_hex();
        *time >= since
            && snap.tags.contains(&tag)
            && !recorded
                .iter()
                .any(|r| !r.is_empty() && hex.starts_with(r.as_str()))
    }) else {
        return Ok(None);
    };
    let known = repo.known_blobs()?;
    let mut size_bytes = 0;
    for path in crate::actions::restore::snapshot_disks(&snap.paths).values() {
        if let Some(node) = repo.file_node(&snap, path, &known)? {
            size_bytes += node.size;
        }
    }
    Ok(Some(Unrecorded {
        id: id.to_hex().to_string(),
        size_bytes,
    }))
}

fn write_pid_file(cfg: &DriverConfig, args: &BackupArgs) -> Result<PidFile, Error> {
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(|e| Error::io(format!("cannot create {}", cfg.run_dir.display()), e))?;
    let path = pid_file(cfg, args.vm_id);
    let tmp = path.with_extension("pid.tmp");
    let me = ProcessId::current();
    std::fs::write(&tmp, format!("{} {} {me}\n", me.pid, args.deploy_id))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    Ok(PidFile(path))
}

/// The front-end step: everything oned's one_vmm_exec sees.
pub fn run(
    args: &BackupArgs,
    request: &BackupRequest,
    raw_xml: &[u8],
    cfg: &DriverConfig,
    cancel: &Arc<AtomicBool>,
) -> Result<Outcome, Error> {
    let target = RepoTarget::new(&request.datastore, repo_id(args.job_id, args.vm_id))?;
    if matches!(target.location, crate::location::Location::S3) {
        return Err(Error::not_implemented("backup to an S3 datastore"));
    }
    crate::target::password(&request.datastore)?;
    ensure_repository(&target, request, cfg)?;
    let _pid = write_pid_file(cfg, args)?;
    let host = target_host(args, request.vm.as_ref());
    let staging = cfg.staging_dir(&args.host_dir.vm_dir, args.vm_id);

    let mut remote = vec![
        cfg.remote_binary(),
        "host-backup".to_string(),
        "--staging".to_string(),
        staging,
    ];
    if let Some(c) = &cfg.ssh_config {
        remote.push("--ssh-config".into());
        remote.push(c.display().to_string());
    }
    // The job runner asks for progress through the environment; oned never does.
    let progress = std::env::var_os(PROGRESS_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if progress.is_some() {
        remote.push("--progress".into());
    }
    remote.push("--".into());
    remote.push(format!("{}:{}", args.host_dir.host, args.host_dir.vm_dir));
    remote.push(
        args.disk_ids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(":"),
    );
    remote.push(args.deploy_id.clone());
    remote.push(args.job_id.map_or("-".into(), |j| j.to_string()));
    remote.push(args.vm_id.to_string());
    remote.push(args.system_ds_id.to_string());
    let line: Vec<String> = remote.iter().map(|w| sh_quote(w)).collect();
    let line = format!(
        "{}{}",
        confinement(&request.datastore, &args.host_dir.vm_dir)?,
        line.join(" ")
    );

    // The host opens SFTP to the backup server with the front-end's agent; a repository on a
    // local path (a shared mount) needs no agent on the host.
    let agent = match target.location {
        crate::location::Location::Sftp { .. } => Agent::Forward,
        _ => Agent::NotForwarded,
    };
    let (status, stdout, stderr) = remote_call_with(
        cfg,
        &host,
        agent,
        &line,
        raw_xml,
        cancel,
        progress.as_deref(),
    )?;
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Cancelled,
            format!("the backup of VM {} was cancelled", args.vm_id),
        ));
    }
    if !status.success() {
        let reason = last_line(&stderr).unwrap_or_else(|| format!("ssh exited with {status}"));
        return Err(Error::new(
            ErrorKind::Repository,
            format!("backup of VM {} on {host}: {reason}", args.vm_id),
        ));
    }
    let outcome: HostOutcome = last_line(&stdout)
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!(
                    "backup of VM {} on {host}: the host step printed no result (is backstop installed in {}?)",
                    args.vm_id, cfg.scripts_remote_dir
                ),
            )
        })?;
    Ok(Outcome {
        backup_id: outcome.snapshot_id.chars().take(8).collect(),
        size_mb: outcome.size_bytes / (1024 * 1024),
    })
}

/// Runs `line` on `host` over ssh with `request` sent as the framed request on its stdin, and
/// waits. A cancel closes the host's stdin (the host step stops cleanly), then kills ssh after a
/// grace period. Returns the exit status, stdout and stderr.
pub fn remote_call(
    cfg: &DriverConfig,
    host: &str,
    line: &str,
    request: &[u8],
    cancel: &Arc<AtomicBool>,
) -> Result<(std::process::ExitStatus, String, String), Error> {
    remote_call_with(cfg, host, Agent::NotForwarded, line, request, cancel, None)
}

/// The prefix of the host step's progress lines on stderr (`--progress`).
pub const PROGRESS_PREFIX: &str = "backstop-progress";

/// Set by the job runner for the backup action: a file the action keeps the host step's latest
/// progress in (`<done> <total> <read>`, bytes), replaced atomically.
pub const PROGRESS_ENV: &str = "BACKSTOP_PROGRESS_FILE";

/// [`remote_call`]; with `progress`, the host's progress lines are taken out of its stderr and
/// the latest is kept in that file.
pub fn remote_call_with(
    cfg: &DriverConfig,
    host: &str,
    agent: Agent,
    line: &str,
    request: &[u8],
    cancel: &Arc<AtomicBool>,
    progress: Option<&Path>,
) -> Result<(std::process::ExitStatus, String, String), Error> {
    let mut child = ssh_command(cfg, host, agent)
        .arg(line)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("cannot run ssh", e))?;
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        // A host that is gone shows up below as ssh's own error; a write error here says less.
        let _ = s
            .write_all(format!("{REQUEST_HEADER} {}\n", request.len()).as_bytes())
            .and_then(|()| s.write_all(request))
            .and_then(|()| s.flush());
    }
    let out = child.stdout.take().map(collect);
    let err = match progress {
        None => child.stderr.take().map(collect),
        Some(file) => child
            .stderr
            .take()
            .map(|r| collect_progress(r, file.to_path_buf())),
    };

    let mut cancelled_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(Error::io("cannot wait for ssh", e)),
        }
        if cancel.load(Ordering::SeqCst) {
            match cancelled_at {
                None => {
                    // End of file on the host's stdin: it stops and leaves things consistent.
                    drop(stdin.take());
                    cancelled_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > CANCEL_GRACE => {
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let stdout = out.map(join).unwrap_or_default();
    let stderr = err.map(join).unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Collects stderr but for the progress lines, whose latest it writes to `file` (a temporary
/// name, then a rename, so a reader never sees half a line).
fn collect_progress(
    r: impl Read + Send + 'static,
    file: PathBuf,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let tmp = file.with_extension("partial");
        let mut kept = String::new();
        for line in std::io::BufReader::new(r).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            match text.strip_prefix(PROGRESS_PREFIX) {
                Some(rest) => {
                    if std::fs::write(&tmp, rest.trim().as_bytes()).is_ok() {
                        let _ = std::fs::rename(&tmp, &file);
                    }
                }
                None => {
                    kept.push_str(&text);
                    kept.push('\n');
                }
            }
        }
        kept
    })
}

fn collect(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// The last non-empty line, without the `<action>: ` prefix a backstop error line carries.
pub fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(
        ["host-backup: ", "host-tm: "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .unwrap_or(line)
            .to_string(),
    )
}

/// Reads the request the front-end sent: a header line with the length, then the XML. The rest
/// of stdin is watched in the background: end of file means the front-end is gone or cancels.
pub fn read_request(
    stdin: impl Read + Send + 'static,
    cancel: &Arc<AtomicBool>,
) -> Result<Vec<u8>, Error> {
    let mut reader = std::io::BufReader::new(stdin);
    let mut header = String::new();
    std::io::BufRead::read_line(&mut reader, &mut header)
        .map_err(|e| Error::io("cannot read the request", e))?;
    let len: usize = header
        .trim_end()
        .strip_prefix(REQUEST_HEADER)
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n <= 64 << 20)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Input,
                "host-backup reads its request from the front-end's backup action, not from a terminal",
            )
        })?;
    let mut xml = vec![0u8; len];
    reader
        .read_exact(&mut xml)
        .map_err(|e| Error::io("cannot read the request", e))?;
    let flag = cancel.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        loop {
            match reader.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    Ok(xml)
}

/// One staged file of the backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    Disk { disk_id: u32, increment: u64 },
    Tpm,
    VmXml,
}

/// Which staged file a name is (`disk.<id>.<inc>`, `disk.tpm.0`, `vm.xml`); others are ignored.
pub fn staged_kind(name: &str) -> Option<Staged> {
    if name == "vm.xml" {
        return Some(Staged::VmXml);
    }
    if name == "disk.tpm.0" {
        return Some(Staged::Tpm);
    }
    let rest = name.strip_prefix("disk.")?;
    let (id, inc) = rest.split_once('.')?;
    Some(Staged::Disk {
        disk_id: id.parse().ok()?,
        increment: inc.parse().ok()?,
    })
}

/// The file name of a path.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The newest backstop snapshot of the VM that holds `disk.<id>.<increment>` for every disk.
pub fn find_parent(
    snapshots: &[(RepoId, Snapshot, jiff::Timestamp)],
    vm_id: u64,
    disks: &[u32],
    increment: u64,
) -> Option<(RepoId, Snapshot)> {
    let tag = format!("one-{vm_id}");
    snapshots
        .iter()
        .rev()
        .find(|(_, s, _)| {
            s.tags.contains(&tag)
                && disks.iter().all(|d| {
                    let want = format!("disk.{d}.{increment}");
                    s.paths.iter().any(|p| base_name(p) == want)
                })
        })
        .map(|(id, s, _)| (*id, s.clone()))
}

/// The host step: reads the staged files and writes the snapshot.
pub fn host_run(
    args: &BackupArgs,
    request: &BackupRequest,
    staging: &Path,
    cfg: &DriverConfig,
    cancel: &Arc<AtomicBool>,
    progress: &Arc<crate::repo::writer::Progress>,
) -> Result<HostOutcome, Error> {
    let entries = std::fs::read_dir(staging).map_err(|e| {
        Error::io(
            format!("cannot read the staging directory {}", staging.display()),
            e,
        )
    })?;
    let mut disks: Vec<(u32, u64, PathBuf)> = Vec::new();
    let mut tpm = None;
    let mut vm_xml = None;
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::io(format!("cannot read {}", staging.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match staged_kind(&name) {
            Some(Staged::Disk { disk_id, increment }) if args.disk_ids.contains(&disk_id) => {
                disks.push((disk_id, increment, entry.path()));
            }
            Some(Staged::Tpm) => tpm = Some(entry.path()),
            Some(Staged::VmXml) => vm_xml = Some(entry.path()),
            Some(Staged::Disk { .. }) | None => {}
        }
    }
    // Direct mode: prebackup copied nothing and named the disks and their bitmaps instead.
    let manifest_path = staging.join(backstop_protocol::staging::MANIFEST);
    let direct: Option<backstop_protocol::staging::DirectManifest> = if manifest_path.exists() {
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| Error::io(format!("cannot read {}", manifest_path.display()), e))?;
        let m: backstop_protocol::staging::DirectManifest =
            serde_json::from_str(&text).map_err(|e| {
                Error::new(
                    ErrorKind::Input,
                    format!(
                        "{} is not a backstop manifest: {e}",
                        manifest_path.display()
                    ),
                )
            })?;
        disks = m
            .disks
            .iter()
            .filter(|d| args.disk_ids.contains(&d.disk_id))
            .map(|d| (d.disk_id, m.increment, PathBuf::from(&d.path)))
            .collect();
        Some(m)
    } else {
        None
    };
    disks.sort();
    for id in &args.disk_ids {
        match disks.iter().filter(|d| d.0 == *id).count() {
            1 => {}
            0 => {
                return Err(Error::new(
                    ErrorKind::Input,
                    format!(
                        "disk {id} of VM {} is not staged in {} (expected disk.{id}.<increment>)",
                        args.vm_id,
                        staging.display()
                    ),
                ));
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Input,
                    format!(
                        "disk {id} of VM {} is staged more than once in {}",
                        args.vm_id,
                        staging.display()
                    ),
                ));
            }
        }
    }
    let vm_xml_path = vm_xml.ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("no vm.xml in the staging directory {}", staging.display()),
        )
    })?;
    let vm_xml_bytes = std::fs::read(&vm_xml_path)
        .map_err(|e| Error::io(format!("cannot read {}", vm_xml_path.display()), e))?;
    let staged_vm = decode_vm_xml(&vm_xml_bytes)
        .map_err(|e| Error::new(ErrorKind::Input, format!("{}: {e}", vm_xml_path.display())))?;
    let vm = request.vm.as_ref().unwrap_or(&staged_vm);
    let increments: std::collections::BTreeSet<u64> = disks.iter().map(|d| d.1).collect();
    let increment = match increments.iter().collect::<Vec<_>>().as_slice() {
        [one] => **one,
        _ => {
            return Err(Error::new(
                ErrorKind::Input,
                format!(
                    "the staged disks of VM {} belong to different increments {increments:?}",
                    args.vm_id
                ),
            ));
        }
    };

    let ds = &request.datastore;
    let target = RepoTarget::new(ds, repo_id(args.job_id, args.vm_id))?;
    let repo = target.open(ds, cfg, false)?;

    // An increment n > 0 is a delta on increment n-1: find that snapshot.
    let parent = if increment > 0 {
        let bc = &vm.backup_config;
        if bc.mode != BackupMode::Increment {
            return Err(Error::new(
                ErrorKind::Input,
                format!(
                    "VM {}: increment {increment} is staged but BACKUP_CONFIG/MODE is not INCREMENT",
                    args.vm_id
                ),
            ));
        }
        if bc.last_increment_id.is_some_and(|l| l + 1 != increment) {
            return Err(Error::new(
                ErrorKind::Input,
                format!(
                    "VM {}: increment {increment} is staged but LAST_INCREMENT_ID is {:?}",
                    args.vm_id, bc.last_increment_id
                ),
            ));
        }
        let all = repo.all_snapshots()?;
        let ids: Vec<u32> = disks.iter().map(|d| d.0).collect();
        let (pid, psnap) = find_parent(&all, args.vm_id, &ids, increment - 1).ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!(
                    "VM {}: no snapshot in {} holds increment {} of disks {ids:?}, so increment {increment} has no parent; start a new chain (onevm backup --reset)",
                    args.vm_id,
                    target.url(),
                    increment - 1
                ),
            )
        })?;
        Some((pid, psnap))
    } else {
        None
    };
    // A parent the stock restic driver stored is a qcow2 delta, not a complete image: its chain
    // (back to the FULL, or to a backstop image) is rebuilt here once, and this increment is
    // stored whole; the increments after it are cheap again.
    let stock_chain = match &parent {
        // Direct mode reads the whole disk instead (see below): no chain to rebuild.
        Some((_, psnap)) if direct.is_none() && !psnap.tags.iter().any(|t| t == IMAGE_TAG) => {
            let all = repo.all_snapshots()?;
            let ids: Vec<u32> = disks.iter().map(|d| d.0).collect();
            let mut links = Vec::new();
            for k in (0..increment).rev() {
                let (id, snap) = find_parent(&all, args.vm_id, &ids, k).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Repository,
                        format!(
                            "VM {}: the stock chain under increment {increment} has no increment {k} in {}; start a new chain (onevm backup --reset)",
                            args.vm_id,
                            target.url()
                        ),
                    )
                })?;
                links.push(backstop_protocol::url::ChainLink {
                    increment_id: k,
                    source: id.to_hex(),
                });
                if snap.tags.iter().any(|t| t == IMAGE_TAG) {
                    break;
                }
            }
            links.reverse();
            Some((links, crate::actions::chain::WorkDir::new(ds)?))
        }
        _ => None,
    };

    // Open every disk: a full image through its allocation map, or a delta and its clusters.
    struct Opened {
        path: String,
        parent_path: Option<String>,
        source: Box<dyn ImageSource>,
        changed: Option<Vec<crate::repo::image::Extent>>,
    }
    let mut opened = Vec::new();
    for (disk_id, inc, path) in &disks {
        // Where the file lived in the stock layout, whatever the disk's own path (direct mode).
        let snapshot_path = format!("{}/disk.{disk_id}.{inc}", staging.display());
        let snapshot_path = crate::target::clean_path(&snapshot_path);
        let input = |e: std::io::Error| {
            Error::new(
                ErrorKind::Input,
                format!("cannot read disk {disk_id} ({}): {e}", path.display()),
            )
        };
        let direct_disk = direct
            .as_ref()
            .and_then(|m| m.disks.iter().find(|d| d.disk_id == *disk_id));
        // The format is never guessed from the content (a guest writes that): direct mode
        // has the VM's declared format from prebackup; a staged file is a qcow2 file by the
        // stock contract, which prebackup (not the guest) wrote.
        let format = match direct_disk {
            Some(d) => Format::parse(&d.format).ok_or_else(|| {
                Error::new(
                    ErrorKind::Input,
                    format!(
                        "disk {disk_id}: {} names the format {:?}; backstop reads raw and qcow2",
                        backstop_protocol::staging::MANIFEST,
                        d.format
                    ),
                )
            })?,
            None => {
                if !nbd::is_qcow2(path)
                    .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?
                {
                    return Err(Error::new(
                        ErrorKind::Input,
                        format!(
                            "the staged file of disk {disk_id} ({}) is not a qcow2 file",
                            path.display()
                        ),
                    ));
                }
                Format::Qcow2
            }
        };
        let qcow2 = format == Format::Qcow2;
        let checked = |backing: Backing<'_>| {
            disk_image::inspect(path, format, backing).map_err(|e| Error {
                message: format!("VM {}: disk {disk_id}: {}", args.vm_id, e.message),
                ..e
            })
        };
        let item = match (&parent, &stock_chain) {
            // Direct mode: the disk itself, with the parent's bitmap for its changed extents.
            _ if direct_disk.is_some() => {
                let d = direct_disk.ok_or_else(|| Error::new(ErrorKind::Input, "no disk"))?;
                let backstop_parent = parent
                    .as_ref()
                    .filter(|(_, p)| p.tags.iter().any(|t| t == IMAGE_TAG));
                let roots = crate::layout::backing_roots(Path::new(&args.host_dir.vm_dir));
                // The disk as prebackup described it: a file (locked or not), or a running
                // VM's pull-mode export.
                let open = |bitmap: Option<&str>| -> Result<Box<NbdImage>, Error> {
                    Ok(Box::new(match &d.nbd {
                        Some(n) => NbdImage::connect_export(Path::new(&n.socket), &n.export)
                            .map_err(input)?,
                        None => {
                            NbdImage::open(&checked(Backing::Within(&roots))?, bitmap, !d.shared)
                                .map_err(input)?
                        }
                    }))
                };
                match (&d.bitmap, backstop_parent) {
                    (Some(bitmap), Some((_, psnap))) => {
                        let img = open(Some(bitmap))?;
                        let changed = img.dirty(bitmap).map_err(input)?;
                        let want = format!("disk.{disk_id}.{}", inc - 1);
                        Opened {
                            path: snapshot_path,
                            parent_path: psnap.paths.iter().find(|p| base_name(p) == want).cloned(),
                            source: img,
                            changed: Some(changed),
                        }
                    }
                    (bitmap, _) => {
                        if bitmap.is_some() {
                            backstop_protocol::output::log(
                                backstop_protocol::output::Level::Info,
                                &format!(
                                    "VM {}: increment {} of disk {disk_id} has no backstop parent snapshot; reading the whole disk",
                                    args.vm_id,
                                    inc - 1
                                ),
                            );
                        }
                        Opened {
                            path: snapshot_path,
                            parent_path: None,
                            source: if qcow2 || d.nbd.is_some() || d.shared {
                                open(None)?
                            } else {
                                Box::new(RawImage::open(path).map_err(input)?)
                            },
                            changed: None,
                        }
                    }
                }
            }
            (Some((_, psnap)), Some((links, work))) => {
                // The parent's chain for this disk, then the staged delta on top of it.
                let want = format!("disk.{disk_id}.{}", inc - 1);
                let parent_path = psnap
                    .paths
                    .iter()
                    .find(|p| base_name(p) == want)
                    .cloned()
                    .unwrap_or_default();
                let dir = work.path.join(format!("disk{disk_id}"));
                std::fs::create_dir(&dir)
                    .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
                let files =
                    crate::actions::chain::links(&repo, links, &parent_path, *disk_id, args.vm_id)?;
                let top = crate::actions::chain::fetch(&repo, ds, &files, *disk_id, &dir)?;
                crate::actions::chain::rebase(path, Some(&top))?;
                Opened {
                    path: snapshot_path,
                    parent_path: None,
                    source: Box::new(
                        NbdImage::open(
                            &checked(Backing::Within(std::slice::from_ref(&work.path)))?,
                            None,
                            true,
                        )
                        .map_err(input)?,
                    ),
                    changed: None,
                }
            }
            (Some((_, psnap)), None) => {
                if !qcow2 {
                    return Err(Error::new(
                        ErrorKind::Input,
                        format!(
                            "increment {inc} of disk {disk_id} ({}) is not a qcow2 delta",
                            path.display()
                        ),
                    ));
                }
                checked(Backing::Detached)?;
                let (img, present) = NbdImage::open_delta(path).map_err(input)?;
                let want = format!("disk.{disk_id}.{}", inc - 1);
                Opened {
                    path: snapshot_path,
                    parent_path: psnap.paths.iter().find(|p| base_name(p) == want).cloned(),
                    source: Box::new(img),
                    changed: Some(present),
                }
            }
            // Increment 0 stands alone.
            (None, _) if qcow2 => Opened {
                path: snapshot_path,
                parent_path: None,
                source: Box::new(
                    NbdImage::open(&checked(Backing::Refused)?, None, true).map_err(input)?,
                ),
                changed: None,
            },
            (None, _) => Opened {
                path: snapshot_path,
                parent_path: None,
                source: Box::new(RawImage::open(path).map_err(input)?),
                changed: None,
            },
        };
        opened.push(item);
    }
    let tpm_bytes = tpm
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e)))
        .transpose()?;

    let mut files: Vec<FileSpec<'_>> = opened
        .iter()
        .map(|o| FileSpec {
            path: o.path.clone(),
            content: Content::Image {
                source: o.source.as_ref(),
                changed: o.changed.as_deref(),
                parent_path: o.parent_path.clone(),
            },
        })
        .collect();
    let staged_path =
        |name: &str| crate::target::clean_path(&format!("{}/{name}", staging.display()));
    if let Some(b) = &tpm_bytes {
        files.push(FileSpec {
            path: staged_path("disk.tpm.0"),
            content: Content::Bytes(b),
        });
    }
    files.push(FileSpec {
        path: staged_path("vm.xml"),
        content: Content::Bytes(&vm_xml_bytes),
    });

    let options = BackupOptions {
        tags: vec![format!("one-{}", args.vm_id), IMAGE_TAG.to_string()],
        compression: crate::settings::Settings::of(ds)?.compression,
        parent: parent.as_ref().map(|(id, _)| *id),
        retry_lock: crate::actions::lock_wait(ds).0,
        cancel: cancel.clone(),
        progress: progress.clone(),
        ..BackupOptions::default()
    };
    let result = writer::backup(&repo, &files, &options)?;
    if let Some(reason) = &result.total.full_reason {
        // On stderr with a log prefix: oned logs it, it does not become the error text.
        let _ = writeln!(std::io::stderr(), "INFO: read the whole disk: {reason}");
    }
    // Bytes read from the disks (their allocated or changed data) plus the small files.
    let extra = tpm_bytes.as_ref().map_or(0, |b| b.len() as u64) + vm_xml_bytes.len() as u64;
    Ok(HostOutcome {
        snapshot_id: result.snapshot_id.to_hex(),
        size_bytes: result.total.bytes_read + extra,
    })
}

/// vm.xml as prebackup writes it: the VM XML in base64, wrapped at 60 columns.
pub fn decode_vm_xml(bytes: &[u8]) -> Result<Vm, String> {
    let roots = backstop_protocol::input::decode_siblings(
        bytes,
        backstop_protocol::input::Encoding::Base64,
    )
    .map_err(|e| e.to_string())?;
    backstop_protocol::message::vm_from_siblings(&roots).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds_with(attrs: &str) -> Datastore {
        let xml = format!(
            "<DATASTORE><ID>100</ID><DS_MAD>backstop</DS_MAD><BASE_PATH>/b</BASE_PATH>\
             <TEMPLATE>{attrs}</TEMPLATE></DATASTORE>"
        );
        let root = backstop_protocol::xml::Element::parse(&xml).expect("xml");
        Datastore::from_xml(&root).expect("datastore")
    }

    #[test]
    fn confinement_prefixes() {
        let vm_dir = "/var/lib/one//datastores/0/22";
        assert_eq!(confinement(&ds_with(""), vm_dir).expect("none"), "");
        assert_eq!(
            confinement(
                &ds_with("<RESTIC_NICE>10</RESTIC_NICE><RESTIC_IONICE>6</RESTIC_IONICE>"),
                vm_dir
            )
            .expect("nice"),
            "nice -n 10 ionice -c2 -n6 "
        );
        assert_eq!(
            confinement(
                &ds_with(
                    "<RESTIC_CPU_QUOTA>50</RESTIC_CPU_QUOTA><RESTIC_MAX_RIOPS>300</RESTIC_MAX_RIOPS>\
                     <RESTIC_NICE>10</RESTIC_NICE>"
                ),
                vm_dir
            )
            .expect("systemd"),
            "systemctl --user set-property --runtime backup.100.slice 'CPUQuota=50%' \
             'IOReadIOPSMax=/var/lib/one//datastores/0/22 300' && exec systemd-run --user --quiet \
             --pipe --collect --wait --slice=backup.100.slice "
        );
        for bad in [
            "<RESTIC_NICE>99</RESTIC_NICE>",
            "<RESTIC_IONICE>x</RESTIC_IONICE>",
            "<RESTIC_MEMORY_MAX_MB>0</RESTIC_MEMORY_MAX_MB>",
        ] {
            let e = confinement(&ds_with(bad), vm_dir).expect_err(bad);
            assert!(e.to_string().starts_with("datastore 100: RESTIC_"), "{e}");
        }
    }

    #[test]
    fn staged_names() {
        assert_eq!(
            staged_kind("disk.0.3"),
            Some(Staged::Disk {
                disk_id: 0,
                increment: 3
            })
        );
        assert_eq!(staged_kind("disk.tpm.0"), Some(Staged::Tpm));
        assert_eq!(staged_kind("vm.xml"), Some(Staged::VmXml));
        for other in [
            "disk.0",
            "disk.x.1",
            "disk.0.rbd2",
            "disk.1.2.rbdiff",
            "notes",
        ] {
            assert_eq!(staged_kind(other), None, "{other}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/var/tmp/one"), "/var/tmp/one");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(x)"), "'$(x)'");
    }
}
