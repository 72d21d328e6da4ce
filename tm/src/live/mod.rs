//! prebackup_live and postbackup_live on the host: a running VM, through libvirt (`virsh`), as
//! driver contract §4.3 describes the stock KVM backup.
//!
//! - **FULL** (increment 0, or FULL mode): with the guest frozen (FS_FREEZE), a disk-only
//!   external snapshot `one-<vm>-backup` moves the backed-up disks onto overlays in
//!   `<vm_dir>/tmp/overlay_<id>.qcow2` (other disks `snapshot=no`); in INCREMENT mode the
//!   checkpoint `one-<vm>-0` is made right after it, every older one deleted first. The disk
//!   files are then no longer written and are read as they are, without qemu's image lock.
//!   postbackup_live block-commits the overlays back (`--active --pivot`), which also merges
//!   the checkpoint's bitmap into the disk.
//! - **CBT increment**: the parent checkpoint `one-<vm>-<parent>` must exist; when libvirt
//!   lost it (the domain was redefined, as OpenNebula does at every deploy), it is redefined
//!   from the disks' persistent bitmaps. Then, frozen, `virsh backup-begin` in pull mode:
//!   an NBD export per disk on `<vm_dir>/backup.socket` (named after the disk's target), a
//!   scratch file per disk in `<vm_dir>/tmp`, the dirty extents as
//!   `qemu:dirty-bitmap:backup-<target>`, and the new checkpoint `one-<vm>-<increment>`.
//!   Self-healing: when the parent checkpoint cannot be had, or the incremental job cannot
//!   start, the pull is a whole one (an `INFO:` line says why), never a failure or a wrong
//!   increment.
//!
//! Hand-over, as for stopped VMs: staging writes `disk.<id>.<n>` from the disk (FULL) or the
//! export (increment), and a pull-mode job ends at once; direct writes `backstop.json` naming
//! the disk file (read without locking) or the export, which stays up until postbackup_live.
//!
//! postbackup_live stops the pull-mode job, commits the overlays, settles the checkpoints
//! (after success only `one-<vm>-<n>` stays; after a failure it goes and the parent stays),
//! and removes `<vm_dir>/tmp` and the staging directory. A prebackup_live that fails undoes
//! what it did the same way before it reports. Problems in postbackup_live are `ERROR:`
//! lines; it always succeeds, as the stock script does.

use crate::delta::{self, Plan};
use crate::host::{self, Step, Summary, increment_of};
use crate::{Error, ErrorKind};
use backstop_image::Disk;
use backstop_image::disk_image::{DiskImage, Format};
use backstop_image::image::ImageSource;
use backstop_protocol::message::{BackupMode, FsFreeze};
use backstop_protocol::output::{Level, log};
use backstop_protocol::staging::{DirectDisk, DirectManifest, MANIFEST, NbdSource, bitmap_name};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod snapshot;
mod virsh;

pub use virsh::Virsh;
use virsh::{delete_checkpoint, disk_elements, diskspecs, frozen, xml_escape};

/// One backed-up disk of the running VM.
#[derive(Debug, Clone)]
struct LiveDisk {
    id: u32,
    target: String,
    /// The disk file (symlinks resolved).
    path: PathBuf,
    /// Its declared format and checked chain.
    image: DiskImage,
    size: u64,
}

impl LiveDisk {
    fn qcow2(&self) -> bool {
        self.image.format() == Format::Qcow2
    }
}

fn fail(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

fn vm_dir(step: &Step<'_>) -> PathBuf {
    PathBuf::from(&step.args.host_dir.vm_dir)
}

fn socket(step: &Step<'_>) -> PathBuf {
    vm_dir(step).join("backup.socket")
}

fn tmp_dir(step: &Step<'_>) -> PathBuf {
    vm_dir(step).join("tmp")
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

pub fn prebackup_live(step: &Step<'_>, virsh: &Virsh) -> Result<Summary, Error> {
    if rbd_only(step)? {
        return rbd_prebackup_live(step, virsh);
    }
    if host::snapshot_mode(step.vm) {
        return snapshot::prebackup(step, virsh);
    }
    let result = prepare(step, virsh);
    if result.is_err() {
        // Undo what was done: no overlay, job, stray checkpoint or scratch file stays.
        settle(step, virsh, true);
    }
    result
}

fn prepare(step: &Step<'_>, virsh: &Virsh) -> Result<Summary, Error> {
    let vm = step.vm;
    let (increment, parent) = increment_of(vm)?;
    let dom = step.args.deploy_id.as_str();
    let staging = &step.staging;
    host::fresh_staging(step)?;
    let tmp = fresh_tmp(step, virsh)?;

    let all = virsh.disks(dom)?;
    let mut disks = Vec::new();
    for &id in &step.args.disk_ids {
        let target = vm
            .disks
            .iter()
            .find(|d| d.disk_id == id)
            .and_then(|d| d.target.clone())
            .ok_or_else(|| fail(format!("VM {}: disk {id} has no TARGET", vm.id)))?;
        if !all.iter().any(|(t, _)| *t == target) {
            return Err(fail(format!(
                "VM {}: domain {dom} has no disk {target} (disk {id})",
                vm.id
            )));
        }
        let image = host::disk_image(step, id)?;
        disks.push(LiveDisk {
            id,
            target,
            path: image.path().to_path_buf(),
            size: image.virtual_size,
            image,
        });
    }
    let mut summary = Summary {
        increment,
        ..Summary::default()
    };
    let mut manifest = DirectManifest {
        version: 1,
        vm_id: vm.id,
        increment,
        disks: Vec::new(),
    };
    let current = bitmap_name(vm.id, increment);
    let live = Live {
        step,
        virsh,
        dom,
        all,
        disks,
        tmp,
        increment,
        current,
    };
    match parent {
        None => full(&live, &mut summary, &mut manifest)?,
        Some(p) => incremental(&live, p, &mut summary, &mut manifest)?,
    }
    if step.direct {
        host::write_manifest(staging, &manifest)?;
    }
    Ok(summary)
}

/// A new, empty `<vm_dir>/tmp`, after what an interrupted backup left there (its postbackup
/// never ran) is undone: the job stopped and the overlays committed first, or clearing tmp
/// would delete the disks' active layers; refused when one cannot be committed.
fn fresh_tmp(step: &Step<'_>, virsh: &Virsh) -> Result<PathBuf, Error> {
    let vm = step.vm;
    let dom = step.args.deploy_id.as_str();
    stop_and_commit(step, virsh, &|what, _| {
        log(
            Level::Info,
            &format!("VM {}: left by an interrupted backup: {what}", vm.id),
        );
    });
    let tmp = tmp_dir(step);
    if virsh
        .disks(dom)?
        .iter()
        .any(|(_, s)| Path::new(s).starts_with(&tmp))
    {
        return Err(fail(format!(
            "VM {}: a disk still runs on an overlay in {} that cannot be committed",
            vm.id,
            tmp.display()
        )));
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::io(format!("cannot clear {}", tmp.display()), e))?;
    }
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    Ok(tmp)
}

/// What preparing a running VM's backup works with, whichever way.
struct Live<'a> {
    step: &'a Step<'a>,
    virsh: &'a Virsh,
    dom: &'a str,
    /// Every disk of the domain: (target, source).
    all: Vec<(String, String)>,
    /// The disks backed up.
    disks: Vec<LiveDisk>,
    tmp: PathBuf,
    increment: u64,
    /// The checkpoint this backup makes: `one-<vm>-<increment>`.
    current: String,
}

/// FULL (increment 0, or FULL mode): a disk-only external snapshot moves the disks onto
/// overlays; the frozen disk files are read (or named, in direct mode).
fn full(
    live: &Live<'_>,
    summary: &mut Summary,
    manifest: &mut DirectManifest,
) -> Result<(), Error> {
    let Live {
        step,
        virsh,
        dom,
        all,
        disks,
        tmp,
        increment,
        current,
    } = live;
    let (vm, staging, increment, dom, disks) =
        (step.vm, &step.staging, *increment, *dom, disks.as_slice());
    let incremental_mode = vm.backup_config.mode == BackupMode::Increment;
    let mine = |name: &str| host::is_ours(vm.id, name);
    // FULL: a new chain; every older checkpoint goes.
    if incremental_mode {
        for cp in virsh.checkpoints(dom)?.into_iter().filter(|c| mine(c)) {
            delete_checkpoint(virsh, dom, &cp)?;
        }
    }
    let mut args: Vec<String> = [
        "snapshot-create-as",
        dom,
        "--name",
        &format!("one-{}-backup", vm.id),
        "--disk-only",
        "--atomic",
        "--no-metadata",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(diskspecs(
        all,
        disks,
        |d| {
            format!(
                "{},file={},driver=qcow2",
                d.target,
                tmp.join(format!("overlay_{}.qcow2", d.id)).display()
            )
        },
        "snapshot=no",
    ));
    let mut cp_args: Vec<String> = vec![
        "checkpoint-create-as".into(),
        dom.into(),
        "--name".into(),
        current.clone(),
    ];
    // Bitmaps only ever go into qcow2 disks: a raw disk is read whole every time.
    cp_args.extend(diskspecs(
        all,
        disks,
        |d| {
            let kind = if d.qcow2() { "bitmap" } else { "no" };
            format!("{},checkpoint={kind}", d.target)
        },
        "checkpoint=no",
    ));
    frozen(virsh, dom, vm.backup_config.fs_freeze, || {
        virsh.run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        if incremental_mode {
            virsh.run(&cp_args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    })?;
    // The disk files are the frozen bases now.
    for d in disks {
        if step.direct {
            manifest.disks.push(DirectDisk {
                disk_id: d.id,
                path: d.path.display().to_string(),
                format: d.image.format().to_string(),
                bitmap: None,
                full_reason: None,
                nbd: None,
                shared: true,
                rbd: None,
                layer: false,
            });
        } else {
            let base = Disk::Checked {
                image: &d.image,
                locking: false,
            };
            let image = backstop_image::open(base, None).map_err(|e| fail(e.to_string()))?;
            let w = delta::write_from(
                &image,
                &d.path.display().to_string(),
                &Plan::Full,
                &staging.join(format!("disk.{}.{increment}", d.id)),
                step.cancel,
            )?;
            summary.bytes_read += w.bytes_read;
            summary.staged_bytes += w.file_bytes;
        }
    }
    Ok(())
}

/// A CBT increment: a pull-mode backup from the parent checkpoint (redefined from the disks'
/// bitmaps when libvirt lost it), or a whole pull when that cannot be had.
fn incremental(
    live: &Live<'_>,
    p: u64,
    summary: &mut Summary,
    manifest: &mut DirectManifest,
) -> Result<(), Error> {
    let wanted = bitmap_name(live.step.vm.id, p);
    let reason = parent_checkpoint(live, &wanted)?;
    let reason = start_pull(live, &wanted, reason)?;
    hand_over_pull(live, reason.as_deref(), summary, manifest)?;
    if !live.step.direct {
        // Staged: the export is no longer needed.
        let _ = live.virsh.run(&["domjobabort", live.dom]);
    }
    Ok(())
}

/// The parent checkpoint `wanted`, the only one of this VM's left: leftovers of an attempt
/// whose postbackup never ran are deleted, and a checkpoint libvirt lost is redefined from the
/// disks' bitmaps. Why it cannot be used, if it cannot.
fn parent_checkpoint(live: &Live<'_>, wanted: &str) -> Result<Option<String>, Error> {
    let Live {
        step,
        virsh,
        dom,
        all,
        disks,
        tmp,
        ..
    } = live;
    let vm = step.vm;
    let dom = *dom;
    let disks = disks.as_slice();
    let mine = |name: &str| host::is_ours(vm.id, name);
    let mut reason = None;
    let existing = virsh.checkpoints(dom)?;
    // Leftovers of an attempt whose postbackup never ran, and anything but the parent.
    for cp in existing.iter().filter(|c| mine(c) && **c != wanted) {
        delete_checkpoint(virsh, dom, cp)?;
    }
    if !existing.iter().any(|c| c == wanted) {
        // libvirt lost it (a redefined domain): the bitmaps are in the disks.
        let xml = format!(
            "<domaincheckpoint><name>{wanted}</name><creationTime>{}</creationTime><disks>{}</disks></domaincheckpoint>",
            jiff::Timestamp::now().as_second(),
            disk_elements(
                all,
                disks,
                |d| if d.qcow2() {
                    format!(
                        "<disk name='{}' checkpoint='bitmap' bitmap='{wanted}'/>",
                        xml_escape(&d.target)
                    )
                } else {
                    format!("<disk name='{}' checkpoint='no'/>", xml_escape(&d.target))
                },
                |t| format!("<disk name='{}' checkpoint='no'/>", xml_escape(t)),
            )
        );
        let file = tmp.join("checkpoint-redefine.xml");
        write_file(&file, &xml)?;
        if let Err(e) = virsh.run(&[
            "checkpoint-create",
            dom,
            &file.display().to_string(),
            "--redefine",
        ]) {
            reason = Some(format!(
                "checkpoint {wanted} is gone and cannot be redefined from the disks ({e})"
            ));
        }
    }
    Ok(reason)
}

/// Starts the pull-mode backup: incremental from `wanted` unless `reason` says it cannot be,
/// whole otherwise (or when the incremental one does not start). Returns why it is whole.
fn start_pull(
    live: &Live<'_>,
    wanted: &str,
    mut reason: Option<String>,
) -> Result<Option<String>, Error> {
    let Live {
        step,
        virsh,
        dom,
        all,
        disks,
        tmp,
        increment,
        current,
    } = live;
    let (vm, staging, increment, dom, disks) =
        (step.vm, &step.staging, *increment, *dom, disks.as_slice());
    let _ = staging;
    for d in disks {
        let scratch = tmp.join(format!("scratch.{}.qcow2", d.id));
        backstop_image::disk_image::qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            scratch.as_os_str(),
            d.size.to_string().as_ref(),
        ])?;
    }
    let sock = socket(step);
    let _ = std::fs::remove_file(&sock);
    let backup_xml = |incremental: bool| {
        format!(
            "<domainbackup mode='pull'>{}<server transport='unix' socket='{}'/><disks>{}</disks></domainbackup>",
            if incremental {
                format!("<incremental>{wanted}</incremental>")
            } else {
                String::new()
            },
            xml_escape(&sock.display().to_string()),
            disk_elements(
                all,
                disks,
                // A raw disk has no bitmap: it is pulled whole.
                |d| format!(
                    "<disk name='{}' backup='yes'{} type='file'><driver type='qcow2'/><scratch file='{}'/></disk>",
                    xml_escape(&d.target),
                    if incremental && (!d.qcow2() || host::reread_reason(step, d.id).is_some()) {
                        " backupmode='full'"
                    } else {
                        ""
                    },
                    xml_escape(
                        &tmp.join(format!("scratch.{}.qcow2", d.id))
                            .display()
                            .to_string()
                    )
                ),
                |t| format!("<disk name='{}' backup='no'/>", xml_escape(t)),
            )
        )
    };
    let checkpoint_xml = format!(
        "<domaincheckpoint><name>{current}</name><disks>{}</disks></domaincheckpoint>",
        disk_elements(
            all,
            disks,
            |d| format!(
                "<disk name='{}' checkpoint='{}'/>",
                xml_escape(&d.target),
                if d.qcow2() { "bitmap" } else { "no" }
            ),
            |t| format!("<disk name='{}' checkpoint='no'/>", xml_escape(t)),
        )
    );
    let cp_file = tmp.join("checkpoint.xml");
    write_file(&cp_file, &checkpoint_xml)?;
    let begin = |incremental: bool| -> Result<(), Error> {
        let file = tmp.join("backup.xml");
        write_file(&file, &backup_xml(incremental))?;
        frozen(virsh, dom, vm.backup_config.fs_freeze, || {
            virsh
                .run(&[
                    "backup-begin",
                    dom,
                    &file.display().to_string(),
                    &cp_file.display().to_string(),
                    "--reuse-external",
                ])
                .map(|_| ())
        })
    };
    if reason.is_none()
        && let Err(e) = begin(true)
    {
        reason = Some(format!(
            "the incremental backup from checkpoint {wanted} could not start ({e})"
        ));
    }
    if let Some(r) = &reason {
        log(
            Level::Info,
            &format!(
                "VM {}: {r}; increment {increment} reads the whole disks",
                vm.id
            ),
        );
        begin(false)?;
    }
    Ok(reason)
}

/// Each disk from the pull-mode export: named in the manifest (direct), or staged.
fn hand_over_pull(
    live: &Live<'_>,
    reason: Option<&str>,
    summary: &mut Summary,
    manifest: &mut DirectManifest,
) -> Result<(), Error> {
    let Live {
        step,
        disks,
        increment,
        ..
    } = live;
    let staging = &step.staging;
    let increment = *increment;
    let sock = socket(step);
    let reason = reason.map(str::to_string);
    for d in disks {
        let context = format!("backup-{}", d.target);
        // A disk whose parent backup lacks healed-away data was pulled whole (start_pull).
        let reread = host::reread_reason(step, d.id);
        let changed = reason.is_none() && d.qcow2() && reread.is_none();
        let plan = if changed {
            Plan::Changed(context.clone())
        } else {
            Plan::Whole
        };
        if step.direct {
            manifest.disks.push(DirectDisk {
                disk_id: d.id,
                path: d.path.display().to_string(),
                format: d.image.format().to_string(),
                bitmap: changed.then(|| context.clone()),
                full_reason: if d.qcow2() {
                    reason.clone().or_else(|| reread.clone())
                } else {
                    Some(format!("disk {} is raw: it has no bitmaps", d.id))
                },
                nbd: Some(NbdSource {
                    socket: sock.display().to_string(),
                    export: d.target.clone(),
                }),
                shared: false,
                rbd: None,
                layer: false,
            });
        } else {
            let export = Disk::Export {
                socket: &sock,
                name: &d.target,
            };
            let bitmap = changed.then_some(context.as_str());
            let image = backstop_image::open(export, bitmap).map_err(|e| {
                fail(format!(
                    "cannot read disk {} from the backup export: {e}",
                    d.id
                ))
            })?;
            if image.source.size() != d.size {
                return Err(fail(format!(
                    "the backup export of disk {} has {} bytes, the disk {}",
                    d.id,
                    image.source.size(),
                    d.size
                )));
            }
            let w = delta::write_from(
                &image,
                &format!("disk {} ({})", d.id, d.target),
                &plan,
                &staging.join(format!("disk.{}.{increment}", d.id)),
                step.cancel,
            )?;
            summary.bytes_read += w.bytes_read;
            summary.staged_bytes += w.file_bytes;
        }
    }
    Ok(())
}

pub fn postbackup_live(step: &Step<'_>, virsh: &Virsh) {
    if rbd_only(step).unwrap_or(false) {
        // Nothing of libvirt's to undo: the snapshots settle as for a stopped VM.
        host::postbackup(step);
        return;
    }
    if host::snapshot_mode(step.vm) {
        snapshot::settle(step, virsh, step.vm.backup_failed);
    } else {
        settle(step, virsh, step.vm.backup_failed);
    }
    if !step.vm.backup_failed {
        host::clear_reread(step);
    }
}

/// Whether the backed-up disks are Ceph RBD images (all of them); a VM with both kinds is
/// refused, with the reason.
fn rbd_only(step: &Step<'_>) -> Result<bool, Error> {
    let vm = step.vm;
    let ids = &step.args.disk_ids;
    let rbd = ids
        .iter()
        .filter(|&&id| vm.disk(id).is_some_and(crate::ceph::is_rbd))
        .count();
    match rbd {
        0 => Ok(false),
        n if n == ids.len() => Ok(true),
        _ => Err(Error::new(
            ErrorKind::NotImplemented,
            format!(
                "VM {}: a running VM with both Ceph RBD disks and file disks is not supported yet (back it up powered off)",
                vm.id
            ),
        )),
    }
}

/// A running VM on Ceph (docs/ceph.md): each disk's snapshot is taken with the guest frozen
/// (FS_FREEZE: AGENT or SUSPEND) around it, here on the hypervisor that runs the VM; then the
/// backup reads the snapshots as for a stopped VM. libvirt is only asked to freeze and thaw.
fn rbd_prebackup_live(step: &Step<'_>, virsh: &Virsh) -> Result<Summary, Error> {
    let vm = step.vm;
    let dom = step.args.deploy_id.as_str();
    let targets = virsh.disks(dom)?;
    for &id in &step.args.disk_ids {
        let target = vm.disk(id).and_then(|d| d.target.clone());
        if !target
            .as_ref()
            .is_some_and(|t| targets.iter().any(|(have, _)| have == t))
        {
            return Err(fail(format!(
                "VM {}: domain {dom} has no disk {} (disk {id})",
                vm.id,
                target.as_deref().unwrap_or("(no TARGET)")
            )));
        }
    }
    // Only the snapshots are taken while frozen (as for direct delivery); staging reads them
    // after the thaw.
    let snapshots = Step {
        direct: true,
        staging: step.staging.clone(),
        ..*step
    };
    let mut summary = frozen(virsh, dom, vm.backup_config.fs_freeze, || {
        host::prebackup(&snapshots)
    })?;
    if !step.direct {
        let path = step.staging.join(MANIFEST);
        let manifest: DirectManifest = std::fs::read(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| fail(format!("{}: {e}", path.display())))
            })?;
        for d in &manifest.disks {
            let Some(rbd) = &d.rbd else { continue };
            let target = step
                .staging
                .join(format!("disk.{}.{}", d.disk_id, manifest.increment));
            let w = crate::ceph::stage(rbd, manifest.increment, &target, step.cancel)?;
            summary.bytes_read += w.bytes_read;
            summary.staged_bytes += w.file_bytes;
        }
        std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
    }
    Ok(summary)
}

/// Stops a pull-mode backup job and block-commits the overlays in `<vm_dir>/tmp` back into
/// the disks; `report` gets what was done (false) and what could not be done (true).
fn stop_and_commit(step: &Step<'_>, virsh: &Virsh, report: &dyn Fn(String, bool)) {
    let dom = step.args.deploy_id.as_str();
    if virsh.backup_job_active(dom) {
        match virsh.run(&["domjobabort", dom]) {
            Ok(_) => report(format!("stopped the backup job of {dom}"), false),
            Err(e) => report(e.to_string(), true),
        }
    }
    let tmp = tmp_dir(step);
    match virsh.disks(dom) {
        Ok(disks) => {
            for (target, source) in disks {
                if !Path::new(&source).starts_with(&tmp) {
                    continue;
                }
                // --shallow: into the overlay's own backing file (the disk's file) and no
                // deeper. Without it libvirt commits down to the bottom of the chain: for a
                // disk that is itself an overlay (the qcow2 TM's disk.<id>.snap/0 over an
                // image of the image datastore) that writes the VM's data into the image
                // every VM cloned from it reads, and leaves the VM running on it.
                match virsh.run(&[
                    "blockcommit",
                    dom,
                    &target,
                    "--active",
                    "--pivot",
                    "--shallow",
                    "--keep-relative",
                ]) {
                    Ok(_) => report(format!("committed the overlay of {target}"), false),
                    Err(e) => report(format!("the overlay of {target} stays: {e}"), true),
                }
            }
        }
        Err(e) => report(e.to_string(), true),
    }
}

/// Ends a live backup: the pull-mode job stopped, overlays committed, checkpoints settled,
/// `<vm_dir>/tmp` and the staging directory removed. Errors are logged.
fn settle(step: &Step<'_>, virsh: &Virsh, failed: bool) {
    let vm = step.vm;
    let dom = step.args.deploy_id.as_str();
    let report = |what: String| log(Level::Error, &format!("VM {}: {what}", vm.id));
    stop_and_commit(step, virsh, &|what, problem| {
        if problem {
            report(what);
        }
    });
    let tmp = tmp_dir(step);
    if vm.backup_config.mode == BackupMode::Increment
        && let Ok((increment, _)) = increment_of(vm)
    {
        let current = bitmap_name(vm.id, increment);
        match virsh.checkpoints(dom) {
            Ok(cps) => {
                for cp in cps.iter().filter(|c| host::is_ours(vm.id, c)) {
                    // After success only the new checkpoint stays; after a failure it goes
                    // and the parent's stays for the next attempt.
                    let drop = if failed {
                        *cp == current
                    } else {
                        *cp != current
                    };
                    if drop && let Err(e) = delete_checkpoint(virsh, dom, cp) {
                        report(e.to_string());
                    }
                }
            }
            Err(e) => report(e.to_string()),
        }
    }
    // An overlay that could not be committed is still the VM's disk: keep it.
    let overlay_in_use = virsh
        .disks(dom)
        .is_ok_and(|d| d.iter().any(|(_, s)| Path::new(s).starts_with(&tmp)));
    if tmp.exists() && !overlay_in_use {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let _ = std::fs::remove_file(socket(step));
    if step.staging.exists()
        && let Err(e) = std::fs::remove_dir_all(&step.staging)
    {
        report(format!("cannot remove {}: {e}", step.staging.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_cover_every_disk() {
        let all = vec![
            ("vda".to_string(), "/d/disk.0".to_string()),
            ("vdb".to_string(), "/d/disk.1".to_string()),
            ("hda".to_string(), "/d/disk.2".to_string()),
        ];
        let image = DiskImage {
            layers: vec![backstop_image::disk_image::Layer {
                path: "/d/disk.1".into(),
                format: Format::Qcow2,
            }],
            virtual_size: 1,
            bitmaps: Vec::new(),
        };
        let disks = vec![LiveDisk {
            id: 1,
            target: "vdb".into(),
            path: "/d/disk.1".into(),
            image,
            size: 1,
        }];
        assert_eq!(
            diskspecs(&all, &disks, |d| format!("{},x", d.target), "snapshot=no"),
            [
                "--diskspec",
                "vda,snapshot=no",
                "--diskspec",
                "vdb,x",
                "--diskspec",
                "hda,snapshot=no"
            ]
        );
        assert_eq!(
            disk_elements(
                &all,
                &disks,
                |d| format!("[{}]", d.target),
                |t| format!("({t})")
            ),
            "(vda)[vdb](hda)"
        );
    }
}
