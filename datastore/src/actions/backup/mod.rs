//! `backup`: store a VM's staged disks as one snapshot (driver contract §5.2, §15).
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

mod export;
mod host;
pub mod plan;
mod pull;

pub use export::{Exported, ExportedDisk, host_export};
pub use host::host_run;
pub use pull::pull;

use crate::config::DriverConfig;
use crate::remote::{
    Agent, PROGRESS_ENV, confinement, last_line, remote_call_with, sh_quote, target_host,
};
use crate::repo::Repo;
use crate::running::write_pid_file;
use crate::target::{RepoTarget, repo_id};
use crate::{Error, ErrorKind};
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::BackupRequest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        crate::target::ensure_escrow(ds, &storage, None)?;
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
        let repo = Repo::init(storage.clone(), &crate::target::password(ds)?)?;
        crate::target::ensure_escrow(ds, &storage, Some(&repo))?;
    } else {
        crate::target::ensure_escrow(ds, &storage, None)?;
    }
    Ok(())
}

/// The shell line that runs the host step `step` (`host-backup`, `host-export`, `host-pull`):
/// on the hypervisor the datastore's confinement prefix (it names the VM's directory, which a
/// proxy does not have), then `backstop <step> --staging <staging> <options> --` and the
/// action's six arguments, every word quoted.
pub(crate) fn host_step_line(
    args: &BackupArgs,
    request: &BackupRequest,
    cfg: &DriverConfig,
    step: &str,
    staging: &str,
    options: Vec<String>,
) -> Result<String, Error> {
    let mut words = vec![
        cfg.remote_binary(),
        step.to_string(),
        "--staging".to_string(),
        staging.to_string(),
    ];
    words.extend(options);
    words.push("--".into());
    words.extend(args.to_argv());
    let words: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
    let prefix = if step == "host-pull" {
        String::new()
    } else {
        confinement(&request.datastore, &args.host_dir.vm_dir)?
    };
    Ok(format!("{prefix}{}", words.join(" ")))
}

/// The request document as a host step may see it: without the attributes of
/// [`crate::settings::FRONT_END_ONLY`]. `None` when it held none of them (sent as it came).
fn host_document(raw_xml: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let bad = |e: String| Error::new(ErrorKind::Input, format!("the backup request: {e}"));
    let text = std::str::from_utf8(raw_xml).map_err(|_| bad("not UTF-8".into()))?;
    let root = backstop_protocol::xml::Element::parse(text).map_err(|e| bad(e.to_string()))?;
    Ok(backstop_protocol::message::without_datastore_attributes(
        &root,
        crate::settings::FRONT_END_ONLY,
    )
    .map(|doc| doc.to_xml().into_bytes()))
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
    crate::target::password(&request.datastore)?;
    ensure_repository(&target, request, cfg)?;
    let _pid = write_pid_file(cfg, args.vm_id, &args.deploy_id)?;
    let host = target_host(args, request.vm.as_ref());
    let settings = crate::settings::Settings::of(&request.datastore)?;
    let staging = cfg.staging_dir(&args.host_dir.vm_dir, args.vm_id);
    let mut options = Vec::new();
    // Who writes the repository: the host (direct mode), or in pull mode the proxy, or this
    // machine itself.
    let (writer, step, place) = match (settings.pull, settings.proxy) {
        (true, None) => return pull::run(args, request, raw_xml, cfg, cancel, &host),
        (true, Some(proxy)) => {
            // The proxy reaches the host's backstop where this front-end would.
            options.push("--scripts-remote-dir".into());
            options.push(cfg.scripts_remote_dir.clone());
            let place = format!("{proxy} (the proxy pulling from {host})");
            (proxy, "host-pull", place)
        }
        (false, _) => (host.clone(), "host-backup", host.clone()),
    };

    if let Some(c) = &cfg.ssh_config {
        options.push("--ssh-config".into());
        options.push(c.display().to_string());
    }
    // The job runner asks for progress through the environment; oned never does.
    let progress = std::env::var_os(PROGRESS_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if progress.is_some() {
        options.push("--progress".into());
    }
    let line = host_step_line(args, request, cfg, step, &staging, options)?;

    // The writer opens SFTP to the backup server with the front-end's agent; a repository on
    // a local path (a shared mount) needs no agent there.
    let agent = match target.location {
        crate::location::Location::Sftp { .. } => Agent::Forward,
        _ => Agent::NotForwarded,
    };
    // The host is sent the document without what the front-end keeps to itself (the
    // maintenance key).
    let for_host = host_document(raw_xml)?;
    let (status, stdout, stderr) = remote_call_with(
        cfg,
        &writer,
        agent,
        &line,
        for_host.as_deref().unwrap_or(raw_xml),
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
            format!("backup of VM {} on {place}: {reason}", args.vm_id),
        ));
    }
    let outcome: HostOutcome = last_line(&stdout)
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!(
                    "backup of VM {} on {place}: the host step printed no result (is backstop installed in {}?)",
                    args.vm_id, cfg.scripts_remote_dir
                ),
            )
        })?;
    // The id becomes oned's backup id: it must be a snapshot id, whoever printed it.
    if outcome.snapshot_id.len() != 64
        || !outcome.snapshot_id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(Error::new(
            ErrorKind::Repository,
            format!(
                "backup of VM {} on {place}: the host step's snapshot id is not 64 hex digits",
                args.vm_id
            ),
        ));
    }
    Ok(Outcome {
        backup_id: outcome.snapshot_id.chars().take(8).collect(),
        size_mb: outcome.size_bytes / (1024 * 1024),
    })
}
