//! prebackup and postbackup on the host, for a VM that is powered off (driver contract §4.2, §4.3).
//!
//! The increment is `0` for FULL or a new chain, else `LAST_INCREMENT_ID + 1`. Changed blocks
//! are tracked with persistent qcow2 bitmaps `one-<vm>-<n>`: bitmap `n` records every write
//! since increment `n` was taken.
//!
//! prebackup:
//! 1. recreates the staging directory and writes `vm.xml` (base64 of the VM document, 60
//!    columns) and `disk.tpm.0` (a tar.gz of `<vm_dir>/tpm`) when the VM has a TPM;
//! 2. for each disk chooses what to read: everything for increment 0; the parent's bitmap for
//!    a CBT increment; everything again, with the reason logged as an `INFO:` line, when that
//!    bitmap is missing or inconsistent (self-healing: never a failed backup, never a wrong
//!    increment);
//! 3. hands the disks over: staging writes `disk.<id>.<n>` in the stock layout
//!    ([`crate::delta`]); direct writes only `backstop.json`, and the datastore's backup reads
//!    the disk itself;
//! 4. drops every other `one-<vm>-*` bitmap and adds `one-<vm>-<n>` (INCREMENT mode).
//!
//! postbackup: after success keeps only `one-<vm>-<n>`; after a failure drops it again, so the
//! next attempt starts from the same parent. Then removes the staging directory. It reports
//! problems as `ERROR:` lines and succeeds, as the stock script does.

use crate::delta::{self, Plan};
use crate::qemu;
use crate::{Error, ErrorKind};
use backstop_image::disk_image::{DiskImage, Format};
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::{BackupMode, IncrementMode, Vm};
use backstop_protocol::output::{Level, log};
use backstop_protocol::staging::{
    DirectDisk, DirectManifest, MANIFEST, bitmap_name, reread_marker,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// One host step's inputs.
#[derive(Debug)]
pub struct Step<'a> {
    pub args: &'a BackupArgs,
    pub vm: &'a Vm,
    /// The VM document as oned sent it (for `vm.xml`).
    pub vm_xml: &'a [u8],
    pub staging: PathBuf,
    pub direct: bool,
    pub cancel: &'a AtomicBool,
}

/// The increment this backup is and its parent.
pub fn increment_of(vm: &Vm) -> Result<(u64, Option<u64>), Error> {
    let bc = &vm.backup_config;
    if bc.mode != BackupMode::Increment {
        return Ok((0, None));
    }
    Ok(match bc.last_increment_id {
        Some(last) => (last + 1, Some(last)),
        None => (0, None),
    })
}

/// Whether this backup is an increment of INCREMENT_MODE=SNAPSHOT ([`crate::snapshot_mode`]).
pub fn snapshot_mode(vm: &Vm) -> bool {
    let bc = &vm.backup_config;
    bc.mode == BackupMode::Increment && bc.increment_mode == Some(IncrementMode::Snapshot)
}

/// SNAPSHOT mode merges a disk's overlays into its base: a disk with disk snapshots (which
/// live in the same directory) is refused, with the reason, before anything is changed.
pub(crate) fn refuse_disk_snapshots(step: &Step<'_>) -> Result<(), Error> {
    let vm = step.vm;
    if !snapshot_mode(vm) {
        return Ok(());
    }
    match step
        .args
        .disk_ids
        .iter()
        .find(|id| vm.disk_snapshots.contains(id))
    {
        Some(id) => Err(Error::new(
            ErrorKind::Input,
            format!(
                "VM {}: disk {id} has disk snapshots, which INCREMENT_MODE=SNAPSHOT would merge into its backup chain; delete them, or back the VM up with INCREMENT_MODE=CBT or MODE=FULL",
                vm.id
            ),
        )),
        None => Ok(()),
    }
}

/// Whether a bitmap or checkpoint name is one of this VM's (`one-<vm>-<n>`).
pub(crate) fn is_ours(vm_id: u64, name: &str) -> bool {
    name.strip_prefix(&format!("one-{vm_id}-"))
        .is_some_and(|n| n.parse::<u64>().is_ok())
}

fn ours(vm_id: u64) -> impl Fn(&qemu::Bitmap) -> bool {
    move |b| is_ours(vm_id, &b.name)
}

/// `<vm_dir>/disk.<id>`, as OpenNebula names it (a symlink for some disks: qemu resolves a
/// relative backing file against this name's directory).
pub(crate) fn disk_path(step: &Step<'_>, id: u32) -> Result<PathBuf, Error> {
    let p = Path::new(&step.args.host_dir.vm_dir).join(format!("disk.{id}"));
    if !p.exists() {
        return Err(Error::new(
            ErrorKind::Input,
            format!("cannot find disk {id} at {}", p.display()),
        ));
    }
    Ok(p)
}

/// Disk `id` as declared and checked (see [`qemu::inspect`]).
pub(crate) fn disk_image(step: &Step<'_>, id: u32) -> Result<DiskImage, Error> {
    let path = disk_path(step, id)?;
    qemu::inspect(step.vm, id, &path, Path::new(&step.args.host_dir.vm_dir))
}

/// What prebackup did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub increment: u64,
    pub bytes_read: u64,
    pub staged_bytes: u64,
}

pub fn prebackup(step: &Step<'_>) -> Result<Summary, Error> {
    let vm = step.vm;
    let (increment, parent) = increment_of(vm)?;
    let snapshot = snapshot_mode(vm);
    // Bitmaps are kept only for CBT increments.
    let incremental_mode = vm.backup_config.mode == BackupMode::Increment && !snapshot;
    let staging = &step.staging;
    refuse_disk_snapshots(step)?;
    fresh_staging(step)?;

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
    // Bitmaps to drop and to add once the disks are closed again.
    let mut drop_bitmaps: Vec<(PathBuf, String)> = Vec::new();
    let mut add_bitmaps: Vec<(PathBuf, String)> = Vec::new();
    for &id in &step.args.disk_ids {
        if let Some(disk) = vm.disk(id).filter(|d| crate::ceph::is_rbd(d)) {
            // Ceph: a snapshot, read by the backup through librbd, or staged (docs/ceph.md).
            // Ceph's increments are RBD snapshots, whatever INCREMENT_MODE says.
            let rbd_increments = vm.backup_config.mode == BackupMode::Increment;
            let rbd = crate::ceph::prepare(vm, disk, increment, parent, rbd_increments)?;
            if !step.direct {
                let w = crate::ceph::stage(
                    &rbd,
                    increment,
                    &staging.join(format!("disk.{id}.{increment}")),
                    step.cancel,
                )?;
                summary.bytes_read += w.bytes_read;
                summary.staged_bytes += w.file_bytes;
                continue;
            }
            manifest.disks.push(DirectDisk {
                disk_id: id,
                path: format!("{}/{}@{}", rbd.pool, rbd.image, rbd.snapshot),
                format: "raw".into(),
                bitmap: None,
                full_reason: None,
                nbd: None,
                shared: false,
                rbd: Some(rbd),
                layer: false,
            });
            continue;
        }
        let image = disk_image(step, id)?;
        let disk = image.path().to_path_buf();
        let qcow2 = image.format() == Format::Qcow2;
        let mine: Vec<&qemu::Bitmap> = image.bitmaps.iter().filter(|b| ours(vm.id)(b)).collect();
        // SNAPSHOT mode: the layout is checked now (postbackup, which rotates it, cannot
        // fail), and an increment reads the clusters of the overlay the parent backup left.
        let chain = (snapshot && qcow2)
            .then(|| crate::snapshot_mode::check(Path::new(&step.args.host_dir.vm_dir), id))
            .transpose()
            .map_err(|e| Error {
                message: format!("VM {}: {}", vm.id, e.message),
                ..e
            })?;
        let (plan, reason) = match parent {
            None => (Plan::Full, None),
            Some(_) if snapshot => match (reread_reason(step, id), &chain) {
                (Some(r), _) => (Plan::Whole, Some(r)),
                (None, None) => (
                    Plan::Whole,
                    Some(format!(
                        "disk {id} is {}: SNAPSHOT mode keeps no overlay on it",
                        image.format()
                    )),
                ),
                (None, Some(c)) => {
                    match crate::snapshot_mode::changed_extents(c, &image, increment, id) {
                        Ok(extents) => (Plan::Listed(extents), None),
                        Err(r) => (Plan::Whole, Some(r)),
                    }
                }
            },
            Some(p) => {
                let wanted = bitmap_name(vm.id, p);
                let reread = reread_reason(step, id);
                match mine.iter().find(|b| b.name == wanted) {
                    _ if reread.is_some() => (Plan::Whole, reread),
                    Some(b) if qcow2 && b.consistent() => (Plan::Changed(wanted), None),
                    Some(_) => (
                        Plan::Whole,
                        Some(format!(
                            "bitmap {wanted} of disk {id} is inconsistent (the disk was not closed cleanly)"
                        )),
                    ),
                    None if !qcow2 => (
                        Plan::Whole,
                        Some(format!(
                            "disk {id} is {}: it has no bitmaps",
                            image.format()
                        )),
                    ),
                    None => (
                        Plan::Whole,
                        Some(format!("disk {id} has no bitmap {wanted}")),
                    ),
                }
            }
        };
        if let Some(r) = &reason {
            log(
                Level::Info,
                &format!(
                    "VM {}: {r}; increment {increment} reads the whole disk",
                    vm.id
                ),
            );
        }
        if qcow2 {
            let keep = match &plan {
                Plan::Changed(b) => Some(b.clone()),
                _ => None,
            };
            for b in &mine {
                if Some(&b.name) != keep.as_ref() {
                    drop_bitmaps.push((disk.clone(), b.name.clone()));
                }
            }
            if incremental_mode {
                add_bitmaps.push((disk.clone(), bitmap_name(vm.id, increment)));
            }
        }
        if step.direct {
            manifest.disks.push(DirectDisk {
                disk_id: id,
                path: disk.display().to_string(),
                format: image.format().to_string(),
                bitmap: match &plan {
                    Plan::Changed(b) => Some(b.clone()),
                    _ => None,
                },
                full_reason: reason,
                nbd: None,
                shared: false,
                rbd: None,
                layer: matches!(plan, Plan::Listed(_)),
            });
        } else {
            let target = staging.join(format!("disk.{id}.{increment}"));
            let w = delta::write(&image, &plan, &target, step.cancel)?;
            summary.bytes_read += w.bytes_read;
            summary.staged_bytes += w.file_bytes;
        }
    }
    // The new bitmap starts now; the parent's stays until postbackup knows the backup worked.
    for (disk, name) in &drop_bitmaps {
        qemu::bitmap_remove(disk, name)?;
    }
    for (disk, name) in &add_bitmaps {
        qemu::bitmap_add(disk, name)?;
    }
    if step.direct {
        write_manifest(staging, &manifest)?;
    }
    Ok(summary)
}

/// Why disk `id` must be read whole although its bitmap is there: the backup's host step left
/// a note that the parent backup lacks data a verify job healed away (the staged changes
/// could not be completed from it).
pub(crate) fn reread_reason(step: &Step<'_>, id: u32) -> Option<String> {
    let marker = reread_marker(Path::new(&step.args.host_dir.vm_dir), id);
    std::fs::symlink_metadata(marker)
        .ok()
        .map(|_| format!("the parent backup of disk {id} lacks data a verify job healed away"))
}

/// After a successful backup the notes of [`reread_reason`] have done their work.
pub(crate) fn clear_reread(step: &Step<'_>) {
    for &id in &step.args.disk_ids {
        let marker = reread_marker(Path::new(&step.args.host_dir.vm_dir), id);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log(
                Level::Error,
                &format!("VM {}: cannot remove {}: {e}", step.vm.id, marker.display()),
            ),
        }
    }
}

/// A new staging directory with `vm.xml` and, for a VM with a TPM, `disk.tpm.0`.
pub(crate) fn fresh_staging(step: &Step<'_>) -> Result<(), Error> {
    let staging = &step.staging;
    if staging.exists() {
        std::fs::remove_dir_all(staging)
            .map_err(|e| Error::io(format!("cannot clear {}", staging.display()), e))?;
    }
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
    write_vm_xml(staging, step.vm_xml)?;
    if step.vm.tpm.is_some() {
        write_tpm(step)?;
    }
    Ok(())
}

/// `backstop.json`, written under a temporary name and renamed.
pub(crate) fn write_manifest(staging: &Path, manifest: &DirectManifest) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::new(ErrorKind::Input, e.to_string()))?;
    let tmp = staging.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, staging.join(MANIFEST)))
        .map_err(|e| Error::io(format!("cannot write {}", staging.display()), e))
}

/// `vm.xml`: the base64 of the VM document, 60 columns per line, as the stock prebackup writes.
fn write_vm_xml(staging: &Path, xml: &[u8]) -> Result<(), Error> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(xml);
    let mut text = String::with_capacity(b64.len() + b64.len() / 60 + 2);
    for line in b64.as_bytes().chunks(60) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    let path = staging.join("vm.xml");
    std::fs::write(&path, text)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn write_tpm(step: &Step<'_>) -> Result<(), Error> {
    let vm_dir = Path::new(&step.args.host_dir.vm_dir);
    if !vm_dir.join("tpm").is_dir() {
        log(
            Level::Info,
            &format!(
                "VM {}: it has a TPM but {}/tpm does not exist; no TPM state is backed up",
                step.vm.id,
                vm_dir.display()
            ),
        );
        return Ok(());
    }
    let target = step.staging.join("disk.tpm.0");
    let out = std::process::Command::new("tar")
        .arg("czf")
        .arg(&target)
        .arg("-C")
        .arg(vm_dir)
        .arg("tpm")
        .output()
        .map_err(|e| Error::io("cannot run tar", e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Input,
            format!(
                "cannot archive the TPM state: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// postbackup: bitmaps settled, staging removed. Problems are logged, never fatal.
pub fn postbackup(step: &Step<'_>) {
    let vm = step.vm;
    let report = |what: String| log(Level::Error, &what);
    if vm.backup_config.mode == BackupMode::Increment {
        match increment_of(vm) {
            Ok((increment, _)) => {
                let current = bitmap_name(vm.id, increment);
                for &id in &step.args.disk_ids {
                    if let Some(disk) = vm.disk(id).filter(|d| crate::ceph::is_rbd(d)) {
                        crate::ceph::settle(vm, disk, increment, true);
                        continue;
                    }
                    // Only a qcow2 disk has bitmaps or a snapshot chain: the format is the
                    // declared one.
                    let Ok(Format::Qcow2) = qemu::declared_format(vm, id) else {
                        continue;
                    };
                    if snapshot_mode(vm) {
                        // After success the overlay the backup read goes into the base and a
                        // new one starts; after a failure nothing moved, and the retry reads
                        // the same overlay.
                        if !vm.backup_failed
                            && let Err(e) = crate::snapshot_mode::rotate(
                                Path::new(&step.args.host_dir.vm_dir),
                                id,
                                increment,
                            )
                        {
                            report(format!(
                                "VM {}: the snapshot chain of disk {id} is not rotated ({e}); the next increment reads the whole disk",
                                vm.id
                            ));
                        }
                        continue;
                    }
                    let Ok(disk) = disk_path(step, id) else {
                        continue;
                    };
                    let Ok(bitmaps) = qemu::bitmaps(&disk, Format::Qcow2) else {
                        continue;
                    };
                    for b in bitmaps.iter().filter(|b| ours(vm.id)(b)) {
                        // After success only the new bitmap stays; after a failure it goes
                        // and the parent's stays for the next attempt.
                        let drop = if vm.backup_failed {
                            b.name == current
                        } else {
                            b.name != current
                        };
                        if drop && let Err(e) = qemu::bitmap_remove(&disk, &b.name) {
                            report(format!("VM {}: {e}", vm.id));
                        }
                    }
                }
            }
            Err(e) => report(format!("VM {}: {e}", vm.id)),
        }
    } else {
        // FULL: the snapshot the backup read goes.
        for disk in step
            .args
            .disk_ids
            .iter()
            .filter_map(|&id| vm.disk(id))
            .filter(|d| crate::ceph::is_rbd(d))
        {
            crate::ceph::settle(vm, disk, 0, false);
        }
    }
    if !vm.backup_failed {
        clear_reread(step);
    }
    if step.staging.exists()
        && let Err(e) = std::fs::remove_dir_all(&step.staging)
    {
        report(format!("cannot remove {}: {e}", step.staging.display()));
    }
    // With BACKUP_BASE_PATH the staging directory is <base>/<vm_id>/backup: its parent goes
    // too when empty.
    if let Some(parent) = step.staging.parent()
        && parent.file_name().and_then(|n| n.to_str()) == Some(&vm.id.to_string())
        && parent != Path::new(&step.args.host_dir.vm_dir)
    {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(config: &str) -> Vm {
        let xml = format!(
            "<VM><ID>22</ID><NAME>db</NAME><TEMPLATE/><BACKUPS><BACKUP_CONFIG>{config}</BACKUP_CONFIG></BACKUPS></VM>"
        );
        let root = backstop_protocol::xml::Element::parse(&xml).expect("xml");
        Vm::from_xml(&root).expect("vm")
    }

    #[test]
    fn increments_follow_backup_config() {
        let full = vm("<MODE>FULL</MODE><LAST_INCREMENT_ID>4</LAST_INCREMENT_ID>");
        assert_eq!(increment_of(&full).expect("full"), (0, None));
        let new_chain = vm("<MODE>INCREMENT</MODE><LAST_INCREMENT_ID>-1</LAST_INCREMENT_ID>");
        assert_eq!(increment_of(&new_chain).expect("new"), (0, None));
        let next = vm(
            "<MODE>INCREMENT</MODE><INCREMENT_MODE>CBT</INCREMENT_MODE><LAST_INCREMENT_ID>4</LAST_INCREMENT_ID>",
        );
        assert_eq!(increment_of(&next).expect("next"), (5, Some(4)));
        let snapshot = vm(
            "<MODE>INCREMENT</MODE><INCREMENT_MODE>SNAPSHOT</INCREMENT_MODE><LAST_INCREMENT_ID>4</LAST_INCREMENT_ID>",
        );
        assert_eq!(increment_of(&snapshot).expect("snapshot"), (5, Some(4)));
        assert!(snapshot_mode(&snapshot));
        assert!(!snapshot_mode(&next) && !snapshot_mode(&full));
    }
}
