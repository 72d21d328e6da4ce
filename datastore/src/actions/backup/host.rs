//! The host step of a backup (`backstop host-backup`): on the hypervisor, reads what prebackup
//! staged (or, in direct mode, the disks themselves), decides what to read ([`super::plan`]),
//! opens every disk in its declared format, and writes one snapshot holding the disks at
//! their staged paths, `disk.tpm.0` and `vm.xml`, tagged `one-<vm_id>` and [`IMAGE_TAG`].

use super::HostOutcome;
use super::plan::{Plan, Read, StagedFiles, plan};
use crate::config::DriverConfig;
use crate::layout::{IMAGE_TAG, decode_vm_xml, vm_tag};
use crate::repo::Repo;
use crate::repo::writer::{self, BackupOptions, Content, FileSpec, Progress};
use crate::stock_chain::{self, WorkDir};
use crate::target::{RepoTarget, clean_path, repo_id};
use crate::{Error, ErrorKind};
use backstop_image::Disk;
use backstop_image::disk_image::{Backing, Format};
use backstop_image::image::{Extent, ImageSource};
use backstop_image::nbd;
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::{BackupRequest, Datastore};
use backstop_protocol::staging::{DirectManifest, MANIFEST, REREAD_NEXT_ATTEMPT, reread_marker};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A disk opened for reading.
struct Opened {
    path: String,
    parent_path: Option<String>,
    source: backstop_image::Source,
    changed: Option<Vec<Extent>>,
}

/// The VM's repository: being opened on a thread of its own (the key derivation is slow by
/// design) until something needs it; a full backup needs it only to write, so its disks are
/// read meanwhile.
enum VmRepo {
    Opening(crate::repo::Opening),
    Open(Repo),
    /// Opening failed; the error went to whoever asked first.
    Failed,
}

impl VmRepo {
    fn get(&mut self) -> Result<&Repo, Error> {
        if let VmRepo::Opening(_) = self {
            let VmRepo::Opening(opening) = std::mem::replace(self, VmRepo::Failed) else {
                unreachable!("matched just above");
            };
            *self = VmRepo::Open(opening.wait()?);
        }
        match self {
            VmRepo::Open(repo) => Ok(repo),
            _ => Err(Error::new(
                ErrorKind::Repository,
                "the repository could not be opened",
            )),
        }
    }
}

/// The staging directory's files, and the direct-mode manifest when prebackup wrote one.
pub(super) fn read_staging(
    staging: &Path,
    disk_ids: &[u32],
) -> Result<(StagedFiles, Option<DirectManifest>), Error> {
    let names = std::fs::read_dir(staging)
        .and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| {
            Error::io(
                format!("cannot read the staging directory {}", staging.display()),
                e,
            )
        })?;
    let files = StagedFiles::from_names(staging, names, disk_ids);
    let manifest_path = staging.join(MANIFEST);
    if !manifest_path.exists() {
        return Ok((files, None));
    }
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| Error::io(format!("cannot read {}", manifest_path.display()), e))?;
    let manifest = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Input,
            format!(
                "{} is not a backstop manifest: {e}",
                manifest_path.display()
            ),
        )
    })?;
    Ok((files, Some(manifest)))
}

/// The host step: reads the staged files and writes the snapshot.
pub fn host_run(
    args: &BackupArgs,
    request: &BackupRequest,
    staging: &Path,
    cfg: &DriverConfig,
    cancel: &Arc<AtomicBool>,
    progress: &Arc<Progress>,
) -> Result<HostOutcome, Error> {
    let (staged, manifest) = read_staging(staging, &args.disk_ids)?;
    let vm_xml_path = staged.vm_xml.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("no vm.xml in the staging directory {}", staging.display()),
        )
    })?;
    let vm_xml = std::fs::read(&vm_xml_path)
        .map_err(|e| Error::io(format!("cannot read {}", vm_xml_path.display()), e))?;
    let tpm = staged
        .tpm
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e)))
        .transpose()?;
    let handed = Handed {
        staged,
        manifest,
        vm_xml,
        tpm,
        pulled: None,
    };
    write_snapshot(args, request, staging, &handed, cfg, cancel, progress)
}

/// A disk another machine serves in pull mode, reached here through a forwarded socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledDisk {
    /// The local end of the forward (named by the puller, never by the host).
    pub socket: PathBuf,
    pub export: String,
    /// The changed extents the host worked out from its bitmap, checked against the disk's
    /// size when it is opened.
    pub changed: Option<Vec<Extent>>,
}

/// What prebackup handed over: the staged files (or the manifest), `vm.xml` and the TPM state
/// as bytes, and in pull mode the disks' exports by disk id.
pub struct Handed {
    pub staged: StagedFiles,
    pub manifest: Option<DirectManifest>,
    pub vm_xml: Vec<u8>,
    pub tpm: Option<Vec<u8>>,
    pub pulled: Option<std::collections::BTreeMap<u32, PulledDisk>>,
}

/// Plans the backup from what was handed over and writes the snapshot: the same on the host
/// (direct and staged delivery) and on the machine that pulls.
pub fn write_snapshot(
    args: &BackupArgs,
    request: &BackupRequest,
    staging: &Path,
    handed: &Handed,
    cfg: &DriverConfig,
    cancel: &Arc<AtomicBool>,
    progress: &Arc<Progress>,
) -> Result<HostOutcome, Error> {
    let (staged, manifest, vm_xml) = (&handed.staged, handed.manifest.as_ref(), &handed.vm_xml);
    let staged_vm = decode_vm_xml(vm_xml).map_err(|e| {
        Error::new(
            ErrorKind::Input,
            format!("{}/vm.xml: {e}", staging.display()),
        )
    })?;
    let vm = request.vm.as_ref().unwrap_or(&staged_vm);

    let ds = &request.datastore;
    let target = RepoTarget::new(ds, repo_id(args.job_id, args.vm_id))?;
    let mut repo = VmRepo::Opening(target.open_in_background(ds, cfg)?);
    let plan = plan(
        args,
        staged,
        manifest,
        vm,
        staging,
        || Ok(repo.get()?.all_snapshots()?),
        &target.url(),
    )?;
    // A stock chain, or staged rbd-format files, are rebuilt under RESTIC_TMP_DIR, removed
    // when this ends.
    let rbd = plan
        .disks
        .iter()
        .any(|d| matches!(d.read, Read::Rbd { .. }));
    let work = (plan.stock_chain.is_some() || rbd)
        .then(|| WorkDir::new(ds))
        .transpose()?;
    let mut opened = Vec::new();
    for d in &plan.disks {
        let pulled = handed.pulled.as_ref().and_then(|p| p.get(&d.disk_id));
        opened.push(open_disk(
            args,
            &mut repo,
            ds,
            &plan,
            d,
            work.as_ref(),
            pulled,
        )?);
    }
    let tpm = &handed.tpm;

    let mut files: Vec<FileSpec<'_>> = opened
        .iter()
        .map(|o| FileSpec {
            path: o.path.clone(),
            content: Content::Image {
                source: &o.source,
                changed: o.changed.as_deref(),
                parent_path: o.parent_path.clone(),
            },
        })
        .collect();
    let staged_path = |name: &str| clean_path(&format!("{}/{name}", staging.display()));
    if let Some(b) = &tpm {
        files.push(FileSpec {
            path: staged_path("disk.tpm.0"),
            content: Content::Bytes(b),
        });
    }
    files.push(FileSpec {
        path: staged_path("vm.xml"),
        content: Content::Bytes(vm_xml),
    });

    let settings = crate::settings::Settings::of(ds)?;
    let options = BackupOptions {
        tags: vec![vm_tag(args.vm_id), IMAGE_TAG.to_string()],
        compression: settings.compression,
        // Reading ahead of the key holds up to 96 MiB on top of scrypt's 128 MiB: not under a
        // tight memory limit.
        prefetch_budget: match settings.confinement.memory_max_mb {
            Some(mb) if mb < 512 => 0,
            _ => writer::prefetch::BUDGET,
        },
        parent: plan.parent,
        retry_lock: crate::settings::lock_wait(ds).0,
        cancel: cancel.clone(),
        progress: progress.clone(),
        ..BackupOptions::default()
    };
    let written = match repo {
        VmRepo::Opening(opening) => writer::backup_opening(opening, &files, options, |_, _| Ok(()))
            .map(|(_, r)| r)
            .map_err(Error::from),
        VmRepo::Open(repo) => writer::backup(&repo, &files, &options).map_err(Error::from),
        VmRepo::Failed => Err(Error::new(
            ErrorKind::Repository,
            "the repository could not be opened",
        )),
    };
    let result = written.map_err(|e| reread_next_time(e, args, &plan))?;
    if let Some(reason) = &result.total.full_reason {
        // On stderr with a log prefix: oned logs it, it does not become the error text.
        let _ = writeln!(std::io::stderr(), "INFO: read the whole disk: {reason}");
    }
    // Bytes read from the disks (their allocated or changed data) plus the small files.
    let extra = tpm.as_ref().map_or(0, |b| b.len() as u64) + vm_xml.len() as u64;
    Ok(HostOutcome {
        snapshot_id: result.snapshot_id.to_hex(),
        size_bytes: result.total.bytes_read + extra,
    })
}

/// An increment handed over as changes only (staged deltas) whose parent snapshot lacks data a
/// verify job healed away cannot be completed from what was handed over. The disks concerned
/// get a note in the VM's directory that makes backstop's prebackup read them whole at the
/// next attempt (as it does when a bitmap is lost); the error says so, and names the fix for
/// a transfer manager that is not backstop's (a chain reset).
fn reread_next_time(e: Error, args: &BackupArgs, plan: &Plan) -> Error {
    if e.kind != ErrorKind::ParentIncomplete {
        return e;
    }
    let deltas: Vec<_> = plan
        .disks
        .iter()
        .filter(|d| d.read == Read::Delta)
        .collect();
    let named: Vec<_> = deltas
        .iter()
        .copied()
        .filter(|d| e.message.starts_with(&format!("{}:", d.snapshot_path)))
        .collect();
    let disks = if named.is_empty() { deltas } else { named };
    let vm_dir = Path::new(&args.host_dir.vm_dir);
    let mut ids = Vec::new();
    let mut unmarked = None;
    for d in &disks {
        let marker = reread_marker(vm_dir, d.disk_id);
        if let Err(err) = std::fs::write(&marker, format!("increment {}\n", plan.increment)) {
            unmarked = Some(format!(
                " (the note {} could not be written: {err})",
                marker.display()
            ));
        }
        ids.push(d.disk_id.to_string());
    }
    Error::new(
        ErrorKind::ParentIncomplete,
        format!(
            "VM {}: disk {}: the parent backup lacks data a verify job healed away, so increment {} cannot be completed from the staged changes; {REREAD_NEXT_ATTEMPT}{}; with another transfer manager, reset the chain (onevm backup --reset)",
            args.vm_id,
            ids.join(", "),
            plan.increment,
            unmarked.unwrap_or_default()
        ),
    )
}

/// The RBD snapshot prebackup named, as librbd opens it.
pub(crate) fn rbd_image(
    r: &backstop_protocol::staging::RbdSource,
) -> backstop_image::rbd::RbdImage {
    backstop_image::rbd::RbdImage {
        pool: r.pool.clone(),
        image: r.image.clone(),
        snapshot: Some(r.snapshot.clone()),
        conf: r.conf.as_ref().map(PathBuf::from),
        user: r.user.clone(),
        keyfile: r.keyfile.as_ref().map(PathBuf::from),
    }
}

/// A staged rbd-format file applied into one raw image under `work`: an `rbd2` alone, an
/// `rbdiff` on the parent's image of this disk rebuilt as raw (a backstop image, or a stock
/// rbd chain). Returns the raw image, which is read whole and stored as a complete disk.
fn staged_rbd(
    args: &BackupArgs,
    repo: &mut VmRepo,
    ds: &Datastore,
    plan: &Plan,
    d: &super::plan::DiskPlan,
    parent_file: Option<&str>,
    work: &WorkDir,
) -> Result<PathBuf, Error> {
    let disk_id = d.disk_id;
    let dir = work.path.join(format!("disk{disk_id}"));
    std::fs::create_dir(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let name = d
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let raw = match (parent_file, plan.stock_chain.as_ref()) {
        (Some(parent_file), Some(links)) => {
            let repo = repo.get()?;
            let files = stock_chain::links(repo, links, parent_file, disk_id, args.vm_id)?;
            stock_chain::fetch_raw(repo, ds, &files, disk_id, &dir)?
        }
        (None, _) if plan.increment == 0 => dir.join(format!("disk.{disk_id}.raw")),
        _ => {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "VM {}: the parent of {name} holds no disk {disk_id}",
                    args.vm_id
                ),
            ));
        }
    };
    let target = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&raw)
        .map_err(|e| Error::io(format!("cannot open {}", raw.display()), e))?;
    let staged = std::fs::File::open(&d.file)
        .map_err(|e| Error::io(format!("cannot read {}", d.file.display()), e))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, staged);
    let until = format!("one_backup_{}", plan.increment);
    let applied = backstop_image::rbd_stream::apply_until(&mut input, &target, name, Some(&until))?;
    let expected = plan
        .increment
        .checked_sub(1)
        .map(|p| format!("one_backup_{p}"));
    if name.ends_with(".rbdiff") && applied.from_snap != expected {
        return Err(Error::new(
            ErrorKind::Input,
            format!(
                "{name} starts from snapshot {}, not {}",
                applied.from_snap.as_deref().unwrap_or("(none)"),
                expected.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    Ok(raw)
}

/// Changed extents from another machine: in order, not overlapping, inside the disk.
fn check_extents(extents: &[Extent], size: u64) -> Result<(), String> {
    let mut end = 0u64;
    for e in extents {
        let Some(e_end) = e.offset.checked_add(e.length) else {
            return Err(format!("overflow at offset {}", e.offset));
        };
        if e.length == 0 {
            return Err(format!("hold an empty extent at offset {}", e.offset));
        }
        if e.offset < end {
            return Err(format!(
                "are out of order or overlap at offset {}",
                e.offset
            ));
        }
        if e_end > size {
            return Err(format!(
                "reach past the end of the disk ({e_end} > {size} bytes)"
            ));
        }
        end = e_end;
    }
    Ok(())
}

/// Opens one disk as the plan says; formats are never guessed (a guest writes the content).
fn open_disk(
    args: &BackupArgs,
    repo: &mut VmRepo,
    ds: &Datastore,
    plan: &Plan,
    d: &super::plan::DiskPlan,
    work: Option<&WorkDir>,
    pulled: Option<&PulledDisk>,
) -> Result<Opened, Error> {
    let (disk_id, path) = (d.disk_id, d.file.as_path());
    let open = |disk: Disk<'_>, bitmap: Option<&str>| {
        backstop_image::open(disk, bitmap).map_err(|e| {
            let e = Error::from(e);
            Error {
                message: format!("VM {}: disk {disk_id}: {}", args.vm_id, e.message),
                ..e
            }
        })
    };
    // A staged file is a qcow2 file by the stock contract, written by prebackup (not by the
    // guest); anything else is refused rather than read as something it might be.
    let staged_qcow2 = || -> Result<(), Error> {
        if nbd::is_qcow2(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?
        {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Input,
            format!(
                "the staged file of disk {disk_id} ({}) is not a qcow2 file",
                path.display()
            ),
        ))
    };
    // A raw file read directly has no changes to reuse its parent with.
    let mut with_parent = true;
    let opened = match &d.read {
        Read::Direct {
            disk,
            format,
            bitmap,
            whole_reason,
        } => {
            if let Some(r) = whole_reason {
                backstop_protocol::output::log(backstop_protocol::output::Level::Info, r);
            }
            if let Some(p) = pulled {
                // Pull mode: the host serves the disk; its changes came with the export.
                let mut opened = open(
                    Disk::Export {
                        socket: &p.socket,
                        name: &p.export,
                    },
                    None,
                )?;
                if bitmap.is_some() {
                    opened.changed = p.changed.clone();
                    if let Some(c) = &opened.changed {
                        check_extents(c, opened.source.size()).map_err(|m| {
                            Error::new(
                                ErrorKind::Input,
                                format!(
                                    "VM {}: disk {disk_id}: the host's changed extents {m}",
                                    args.vm_id
                                ),
                            )
                        })?;
                    }
                }
                let keeps_parent = opened.changed.is_some();
                return Ok(Opened {
                    path: d.snapshot_path.clone(),
                    parent_path: d.parent_path.clone().filter(|_| keeps_parent),
                    source: opened.source,
                    changed: opened.changed,
                });
            }
            let roots = backstop_protocol::dirs::backing_roots(Path::new(&args.host_dir.vm_dir));
            // The disk as prebackup described it: an RBD snapshot, a running VM's pull-mode
            // export, a file read without qemu's lock (a running VM's frozen base), a qcow2
            // file, or raw bytes.
            if let Some(r) = &disk.rbd {
                let image = rbd_image(r);
                // Only what changed since the parent's snapshot, when a backstop parent exists.
                let since = r.parent_snapshot.as_deref().filter(|_| bitmap.is_some());
                open(
                    Disk::Rbd {
                        image: &image,
                        since,
                    },
                    None,
                )?
            } else if let Some(n) = &disk.nbd {
                open(
                    Disk::Export {
                        socket: Path::new(&n.socket),
                        name: &n.export,
                    },
                    bitmap.as_deref(),
                )?
            } else if disk.layer {
                // SNAPSHOT mode: the chain read whole, the changes from the overlay alone
                // (when a backstop parent is there to put them on).
                if *format != Format::Qcow2 {
                    return Err(Error::new(
                        ErrorKind::Input,
                        format!(
                            "disk {disk_id}: {MANIFEST} names a {format} snapshot overlay; an overlay is qcow2"
                        ),
                    ));
                }
                let mut opened = open(
                    Disk::File {
                        path,
                        format: Format::Qcow2,
                        backing: Backing::Within(&roots),
                        locking: !disk.shared,
                    },
                    None,
                )?;
                if bitmap.is_some() {
                    let extents = nbd::layer_extents(path, !disk.shared).map_err(|e| {
                        Error::io(
                            format!(
                                "VM {}: disk {disk_id}: cannot list the clusters of {}",
                                args.vm_id,
                                path.display()
                            ),
                            e,
                        )
                    })?;
                    opened.changed = Some(extents);
                }
                opened
            } else {
                // A raw disk has no bitmap to read.
                let direct = *format == Format::Raw && !disk.shared;
                with_parent = !direct;
                let bitmap = bitmap.as_deref().filter(|_| !direct);
                open(
                    Disk::File {
                        path,
                        format: *format,
                        backing: Backing::Within(&roots),
                        locking: !disk.shared,
                    },
                    bitmap,
                )?
            }
        }
        Read::Whole => {
            // Increment 0 stands alone.
            staged_qcow2()?;
            let alone = Disk::File {
                path,
                format: Format::Qcow2,
                backing: Backing::Refused,
                locking: true,
            };
            open(alone, None)?
        }
        Read::Delta => {
            staged_qcow2()?;
            open(Disk::Delta(path), None)?
        }
        Read::Rbd { parent_file } => {
            let work =
                work.ok_or_else(|| Error::new(ErrorKind::Repository, "no work directory"))?;
            let raw = staged_rbd(args, repo, ds, plan, d, parent_file.as_deref(), work)?;
            open(
                Disk::File {
                    path: &raw,
                    format: Format::Raw,
                    backing: Backing::Refused,
                    locking: true,
                },
                None,
            )?
        }
        Read::OnRebuiltChain { parent_file } => {
            staged_qcow2()?;
            let (Some(work), Some(links)) = (work, plan.stock_chain.as_ref()) else {
                return Err(Error::new(
                    ErrorKind::Repository,
                    "no stock chain to rebuild",
                ));
            };
            // The parent's chain for this disk, then the staged delta on top of it.
            let dir = work.path.join(format!("disk{disk_id}"));
            std::fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            let repo = repo.get()?;
            let files = stock_chain::links(repo, links, parent_file, disk_id, args.vm_id)?;
            let top = stock_chain::fetch(repo, ds, &files, disk_id, &dir)?;
            stock_chain::rebase(path, Some(&top))?;
            let rebuilt = Disk::File {
                path,
                format: Format::Qcow2,
                backing: Backing::Within(std::slice::from_ref(&work.path)),
                locking: true,
            };
            open(rebuilt, None)?
        }
    };
    Ok(Opened {
        path: d.snapshot_path.clone(),
        parent_path: d.parent_path.clone().filter(|_| with_parent),
        source: opened.source,
        changed: opened.changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    /// Changed extents from a host in pull mode are checked before the writer uses them: in
    /// order, not overlapping, inside the disk, no overflow.
    #[test]
    fn extents_from_another_machine_are_checked() {
        assert_eq!(check_extents(&[], 10), Ok(()));
        assert_eq!(check_extents(&[e(0, 4), e(4, 6)], 10), Ok(()));
        let cases = [
            (
                vec![e(4, 2), e(0, 2)],
                "out of order or overlap at offset 0",
            ),
            (
                vec![e(0, 4), e(3, 2)],
                "out of order or overlap at offset 3",
            ),
            (
                vec![e(8, 4)],
                "reach past the end of the disk (12 > 10 bytes)",
            ),
            (vec![e(u64::MAX, 2)], "overflow at offset"),
            (vec![e(2, 0)], "hold an empty extent at offset 2"),
        ];
        for (extents, want) in cases {
            let m = check_extents(&extents, 10).expect_err(want);
            assert!(m.contains(want), "{m:?} does not say {want:?}");
        }
    }
}
