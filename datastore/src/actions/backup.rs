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
use crate::layout::{IMAGE_TAG, Staged, base_name, decode_vm_xml, staged_kind};
use crate::remote::{
    Agent, PROGRESS_ENV, confinement, last_line, remote_call_with, sh_quote, target_host,
};
use crate::repo::Repo;
use crate::repo::disk_image::{self, Backing, Format};
use crate::repo::image::{ImageSource, RawImage};
use crate::repo::nbd::{self, NbdImage};
use crate::repo::writer::{self, BackupOptions, Content, FileSpec};
use crate::running::write_pid_file;
use crate::target::{RepoTarget, repo_id};
use crate::vm_snapshots::find_parent;
use crate::{Error, ErrorKind};
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::{BackupMode, BackupRequest};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
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
    let _pid = write_pid_file(cfg, args.vm_id, &args.deploy_id)?;
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
            Some((links, crate::stock_chain::WorkDir::new(ds)?))
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
                    crate::stock_chain::links(&repo, links, &parent_path, *disk_id, args.vm_id)?;
                let top = crate::stock_chain::fetch(&repo, ds, &files, *disk_id, &dir)?;
                crate::stock_chain::rebase(path, Some(&top))?;
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
        retry_lock: crate::settings::lock_wait(ds).0,
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
