//! INCREMENT_MODE=SNAPSHOT of a running VM (docs/host-side.md, "SNAPSHOT mode"): the layout
//! of [`crate::snapshot_mode`], rotated through libvirt.
//!
//! prebackup_live, with the guest frozen (FS_FREEZE), puts each qcow2 disk onto a new overlay
//! `disk.<id>.snap/<n+1>` over the file it ran on (one atomic disk-only snapshot,
//! `--reuse-external`); that file no longer changes and is read: for an increment, only the
//! clusters it holds itself when it is the overlay the parent backup left; whole otherwise.
//! A raw disk goes onto a temporary overlay in `<vm_dir>/tmp`, is read whole, and is committed
//! back afterwards, as for a FULL.
//!
//! postbackup_live, after success, merges the overlay the backup read into the base
//! (`blockcommit --top <it> --shallow --keep-relative`) and points `disk.<id>` at the new one;
//! after a failure it merges the new overlay back into the one the backup read
//! (`blockcommit --active --pivot --shallow`), so the retry reads the same changes.
//!
//! The names in the qcow2 headers matter, because OpenNebula starts the VM again from
//! `disk.<id>`: the new overlay names the file below it by its bare name, and libvirt's
//! relative commit then writes `disk.<id>.snap/0` into it (the directory of that bare name
//! and the base's name as the file below recorded it). Without `--keep-relative` qemu would
//! write the base's name as it opened it, which is `disk.<id>` itself when the VM was started
//! on the base: a loop at the next start. So a file below whose backing name is absolute
//! (written by another tool) is first merged into the base, and the increment reads the
//! whole disk.

use super::*;
use crate::snapshot_mode::{self as chain, Chain, Found};

/// One disk's part in a SNAPSHOT-mode backup of the running VM.
#[derive(Debug, Clone)]
struct Rotating {
    disk: LiveDisk,
    /// The snapshot chain of a qcow2 disk; `None` for a raw disk (temporary overlay).
    chain: Option<Chain>,
    /// `Ok` when the file read is the parent's overlay (its clusters are listed once the
    /// snapshot froze it); else why it is read whole (`None` for a FULL).
    changed: Result<(), Option<String>>,
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The file the domain writes disk `target` to now.
fn active_source(virsh: &Virsh, dom: &str, target: &str) -> Result<Option<String>, Error> {
    Ok(virsh
        .disks(dom)?
        .into_iter()
        .find(|(t, _)| t == target)
        .map(|(_, s)| s))
}

/// Merges the domain's active layer of `target` into the file below it and removes it (it
/// is `file`): the undo of a snapshot onto a new overlay.
fn merge_back(virsh: &Virsh, dom: &str, target: &str, file: &Path) -> Result<(), Error> {
    virsh.run(&[
        "blockcommit",
        dom,
        target,
        "--active",
        "--pivot",
        "--shallow",
        "--wait",
    ])?;
    std::fs::remove_file(file)
        .map_err(|e| Error::io(format!("cannot remove {}", file.display()), e))
}

/// Runs `job`, a block commit into the file `<snap>/<base>`, with `disk.<id>` leading to that
/// file meanwhile. qemu reopens a commit's base read-write (and read-only again after) by the
/// name it first opened it by, and that name is `disk.<id>` when the VM was started on that
/// file (OpenNebula starts it from `disk.<id>`), while between backups `disk.<id>` leads to
/// the overlay on top. The link is put back when the job fails; after success the caller
/// points it where the disk now runs.
fn committing_into(
    c: &Chain,
    base: &str,
    job: impl FnOnce() -> Result<(), Error>,
) -> Result<(), Error> {
    let before = std::fs::read_link(&c.link)
        .map_err(|e| Error::io(format!("cannot read the link {}", c.link.display()), e))?;
    chain::relink(&c.link, &format!("{}/{base}", c.slink))?;
    let result = job();
    if result.is_err()
        && let Err(e) = chain::relink(&c.link, &before.to_string_lossy())
    {
        log(Level::Error, &e.to_string());
    }
    result
}

/// What an interrupted attempt left (its postbackup never ran): a disk whose domain runs on
/// an overlay of its snapshot directory that `disk.<id>` does not lead to. It is merged back.
fn undo_interrupted(step: &Step<'_>, virsh: &Virsh, dom: &str, target: &str, c: &Chain) {
    let Ok(Some(active)) = active_source(virsh, dom, target) else {
        return;
    };
    let active = PathBuf::from(active);
    if same_file(&active, &c.top()) || !active.starts_with(&c.snap) {
        return;
    }
    match merge_back(virsh, dom, target, &active) {
        Ok(()) => log(
            Level::Info,
            &format!(
                "VM {}: left by an interrupted backup: {target} ran on {}, merged back",
                step.vm.id,
                active.display()
            ),
        ),
        Err(e) => log(
            Level::Error,
            &format!(
                "VM {}: {target} runs on {}, which cannot be merged back: {e}",
                step.vm.id,
                active.display()
            ),
        ),
    }
}

pub(super) fn prebackup(step: &Step<'_>, virsh: &Virsh) -> Result<Summary, Error> {
    let result = prepare(step, virsh);
    if result.is_err() {
        settle(step, virsh, true);
    }
    result
}

fn prepare(step: &Step<'_>, virsh: &Virsh) -> Result<Summary, Error> {
    let vm = step.vm;
    let (increment, parent) = increment_of(vm)?;
    let dom = step.args.deploy_id.as_str();
    let vm_dir = vm_dir(step);
    host::refuse_disk_snapshots(step)?;
    host::fresh_staging(step)?;
    stop_and_commit(step, virsh, &|what, _| {
        log(
            Level::Info,
            &format!("VM {}: left by an interrupted backup: {what}", vm.id),
        );
    });
    let tmp = tmp_dir(step);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::io(format!("cannot clear {}", tmp.display()), e))?;
    }
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;

    // Every disk checked before anything moves.
    let all = virsh.disks(dom)?;
    let mut found = Vec::new();
    for &id in &step.args.disk_ids {
        let target = vm
            .disk(id)
            .and_then(|d| d.target.clone())
            .ok_or_else(|| fail(format!("VM {}: disk {id} has no TARGET", vm.id)))?;
        if !all.iter().any(|(t, _)| *t == target) {
            return Err(fail(format!(
                "VM {}: domain {dom} has no disk {target} (disk {id})",
                vm.id
            )));
        }
        let format = crate::qemu::declared_format(vm, id)?;
        let layout = match format {
            Format::Qcow2 => {
                let f = chain::find(&vm_dir, id).map_err(|e| Error {
                    message: format!("VM {}: {}", vm.id, e.message),
                    ..e
                })?;
                if let Found::Chain(c) = &f
                    && !c.in_vm_dir()
                {
                    return Err(Error::new(
                        ErrorKind::NotImplemented,
                        format!(
                            "VM {}: disk {id} is a persistent image whose snapshots are kept in its datastore ({}); INCREMENT_MODE=SNAPSHOT backs it up only while the VM is powered off (use INCREMENT_MODE=CBT while it runs)",
                            vm.id,
                            c.snap.display()
                        ),
                    ));
                }
                Some(f)
            }
            Format::Raw => None,
        };
        found.push((id, target, layout));
    }

    let mut disks = Vec::new();
    for (id, target, layout) in found {
        let chain = match layout {
            None => None,
            Some(Found::Plain) => Some(chain::make_snap_dir(&vm_dir, id)?),
            Some(Found::Chain(c)) => {
                chain::self_link(&c)?;
                undo_interrupted(step, virsh, dom, &target, &c);
                Some(c)
            }
        };
        let image = host::disk_image(step, id)?;
        let changed = match (&chain, parent) {
            (_, None) => Err(None),
            (None, Some(_)) => Err(Some(format!(
                "disk {id} is raw: SNAPSHOT mode keeps no overlay on it"
            ))),
            (Some(c), Some(_)) => match host::reread_reason(step, id) {
                Some(r) => Err(Some(r)),
                None => chain::parent_overlay(&Found::Chain(c.clone()), &image, increment, id)
                    .and_then(|()| relative_backing(c))
                    .map_err(Some),
            },
        };
        // Whatever is read whole starts from the base: an overlay the disk runs on is
        // merged into it first (into its own backing file, no deeper).
        let chain = match chain {
            Some(c) if changed.is_err() && c.name != "0" => {
                let top = c.top();
                let active = active_source(virsh, dom, &target)?;
                if !active.is_some_and(|a| same_file(Path::new(&a), &top)) {
                    return Err(fail(format!(
                        "VM {}: {target} does not run on {}, where disk.{id} leads",
                        vm.id,
                        top.display()
                    )));
                }
                committing_into(&c, "0", || merge_back(virsh, dom, &target, &top))?;
                Some(Chain {
                    name: "0".into(),
                    ..c
                })
            }
            other => other,
        };
        let image = host::disk_image(step, id)?;
        disks.push(Rotating {
            disk: LiveDisk {
                id,
                target,
                path: image.path().to_path_buf(),
                size: image.virtual_size,
                image,
            },
            chain,
            changed,
        });
    }

    // The new overlays, then one atomic snapshot onto them.
    let next = (increment + 1).to_string();
    for r in &disks {
        match &r.chain {
            Some(c) => {
                if std::fs::symlink_metadata(c.snap.join(&next)).is_ok() {
                    return Err(fail(format!(
                        "VM {}: {} is in the way of the next SNAPSHOT overlay",
                        vm.id,
                        c.snap.join(&next).display()
                    )));
                }
                // The bare name when a relative commit will rewrite it; else the name that
                // resolves from the VM directory.
                let backing = if r.changed.is_ok() {
                    c.name.clone()
                } else {
                    c.backing_name("0")
                };
                chain::create_overlay(c, &next, &backing, r.disk.size)?;
            }
            None => {
                let overlay = tmp.join(format!("overlay_{}.qcow2", r.disk.id));
                let size = r.disk.size.to_string();
                backstop_image::disk_image::qemu_img(&[
                    "create".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    "-F".as_ref(),
                    "raw".as_ref(),
                    "-b".as_ref(),
                    r.disk.path.as_os_str(),
                    "-u".as_ref(),
                    overlay.as_os_str(),
                    size.as_ref(),
                ])?;
            }
        }
    }
    let live_disks: Vec<LiveDisk> = disks.iter().map(|r| r.disk.clone()).collect();
    let mut args: Vec<String> = [
        "snapshot-create-as",
        dom,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--reuse-external",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(diskspecs(
        &all,
        &live_disks,
        |d| {
            let r = disks.iter().find(|r| r.disk.id == d.id);
            let file = match r.and_then(|r| r.chain.as_ref()) {
                Some(c) => c.snap.join(&next),
                None => tmp.join(format!("overlay_{}.qcow2", d.id)),
            };
            format!("{},file={},driver=qcow2", d.target, file.display())
        },
        "snapshot=no",
    ));
    frozen(virsh, dom, vm.backup_config.fs_freeze, || {
        virsh
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .map(|_| ())
    })?;

    // The files below the new overlays no longer change: read them.
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
    for r in &mut disks {
        // The overlay the backup reads is frozen now: its clusters are the changes.
        let listed = match (&r.changed, &r.chain) {
            (Ok(()), Some(c)) => Some(chain::overlay_extents(&c.top(), false)),
            _ => None,
        };
        let extents = match listed {
            Some(Ok(e)) => Some(e),
            Some(Err(reason)) => {
                r.changed = Err(Some(reason));
                None
            }
            None => None,
        };
        let d = &r.disk;
        if let Err(Some(reason)) = &r.changed {
            log(
                Level::Info,
                &format!(
                    "VM {}: {reason}; increment {increment} reads the whole disk",
                    vm.id
                ),
            );
        }
        if step.direct {
            manifest.disks.push(DirectDisk {
                disk_id: d.id,
                path: d.path.display().to_string(),
                format: d.image.format().to_string(),
                bitmap: None,
                full_reason: r.changed.as_ref().err().cloned().flatten(),
                nbd: None,
                shared: true,
                rbd: None,
                layer: extents.is_some(),
            });
        } else {
            let plan = match (extents, &r.changed) {
                (Some(extents), _) => Plan::Listed(extents),
                (None, Err(None)) => Plan::Full,
                (None, _) => Plan::Whole,
            };
            let frozen_disk = Disk::Checked {
                image: &d.image,
                locking: false,
            };
            let image = backstop_image::open(frozen_disk, None).map_err(|e| fail(e.to_string()))?;
            let w = delta::write_from(
                &image,
                &d.path.display().to_string(),
                &plan,
                &step.staging.join(format!("disk.{}.{increment}", d.id)),
                step.cancel,
            )?;
            summary.bytes_read += w.bytes_read;
            summary.staged_bytes += w.file_bytes;
        }
    }
    if step.direct {
        host::write_manifest(&step.staging, &manifest)?;
    }
    Ok(summary)
}

/// Whether the overlay the disk runs on names its backing file relative to the VM directory,
/// so that a relative commit can keep the names relative; why not, if not.
fn relative_backing(c: &Chain) -> Result<(), String> {
    let info = backstop_image::disk_image::info(&c.top(), Format::Qcow2)
        .map_err(|e| format!("cannot read overlay {}: {e}", c.name))?;
    match info.backing {
        Some((named, _)) if !named.starts_with('/') => Ok(()),
        Some((named, _)) => Err(format!(
            "overlay {} names its backing file by the absolute name {named:?} (another tool made it); it is merged into the base",
            c.name
        )),
        None => Err(format!("overlay {} has no backing file", c.name)),
    }
}

/// Ends a SNAPSHOT-mode backup of the running VM; problems are `ERROR:` lines.
pub(super) fn settle(step: &Step<'_>, virsh: &Virsh, failed: bool) {
    let vm = step.vm;
    let dom = step.args.deploy_id.as_str();
    let report = |what: String| log(Level::Error, &format!("VM {}: {what}", vm.id));
    let vm_dir = vm_dir(step);
    let next = increment_of(vm).map(|(i, _)| (i + 1).to_string());
    for &id in &step.args.disk_ids {
        let Some(target) = vm.disk(id).and_then(|d| d.target.clone()) else {
            continue;
        };
        let Ok(Format::Qcow2) = crate::qemu::declared_format(vm, id) else {
            continue;
        };
        let Ok(Found::Chain(c)) = chain::find(&vm_dir, id) else {
            continue;
        };
        let Ok(next) = &next else { continue };
        let new = c.snap.join(next);
        let on_new = active_source(virsh, dom, &target)
            .ok()
            .flatten()
            .is_some_and(|a| same_file(Path::new(&a), &new));
        if !on_new {
            // The snapshot never happened (a failed prebackup_live): an overlay made for it
            // is not in use.
            if !same_file(&new, &c.top()) && new.exists() {
                let _ = std::fs::remove_file(&new);
            }
            continue;
        }
        if failed {
            if let Err(e) = merge_back(virsh, dom, &target, &new) {
                report(format!("{target} stays on {}: {e}", new.display()));
            }
            continue;
        }
        if c.name != "0" {
            let top = c.top();
            // The overlay the backup read, by libvirt's index: its path may be disk.<id>,
            // which leads elsewhere while the job runs.
            let below = match virsh.below_active(dom, &target) {
                Ok(Some((index, path))) if same_file(Path::new(&path), &top) => Ok(index),
                Ok(other) => Err(fail(format!(
                    "{target} does not run on {} over {} ({other:?})",
                    new.display(),
                    top.display()
                ))),
                Err(e) => Err(e),
            };
            let commit = below.and_then(|index| {
                committing_into(&c, "0", || {
                    virsh
                        .run(&[
                            "blockcommit",
                            dom,
                            &target,
                            "--top",
                            &format!("{target}[{index}]"),
                            "--shallow",
                            "--keep-relative",
                            "--wait",
                        ])
                        .map(|_| ())
                })
            });
            if let Err(e) = commit {
                // disk.<id> keeps leading to the overlay the backup read; the new one goes
                // back into it, and the next increment reads the whole disk.
                report(format!(
                    "disk {id}: overlay {} cannot be merged into the base: {e}",
                    c.name
                ));
                if let Err(e) = merge_back(virsh, dom, &target, &new) {
                    report(format!("{target} stays on {}: {e}", new.display()));
                }
                continue;
            }
            if let Err(e) = std::fs::remove_file(&top) {
                report(format!("cannot remove {}: {e}", top.display()));
            }
        }
        if let Err(e) = chain::relink(&c.link, &format!("{}/{next}", c.slink)) {
            report(e.to_string());
        }
    }
    // Raw disks' temporary overlays, the scratch directory and the staging directory.
    stop_and_commit(step, virsh, &|what, problem| {
        if problem {
            report(what);
        }
    });
    let tmp = tmp_dir(step);
    let overlay_in_use = virsh
        .disks(dom)
        .is_ok_and(|d| d.iter().any(|(_, s)| Path::new(s).starts_with(&tmp)));
    if tmp.exists() && !overlay_in_use {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if step.staging.exists()
        && let Err(e) = std::fs::remove_dir_all(&step.staging)
    {
        report(format!("cannot remove {}: {e}", step.staging.display()));
    }
}
