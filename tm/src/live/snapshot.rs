//! INCREMENT_MODE=SNAPSHOT of a running VM (docs/host-side.md, "SNAPSHOT mode"): the layout
//! of [`crate::snapshot_mode`], rotated through libvirt.
//!
//! prebackup_live, with the guest frozen (FS_FREEZE), puts each qcow2 disk onto a new overlay
//! `disk.<id>.snap/<n+1>` over the file it ran on, `<n>` (one atomic disk-only snapshot,
//! `--reuse-external`), and points `disk.<id>` at the new overlay at once. The new overlay
//! names `<n>` relative to the VM directory (`disk.<id>.snap/<n>`, which the directory's
//! self-link makes good from inside it too), so from then on a VM started again from
//! `disk.<id>` (a crash, a reboot while the backup uploads) has every write.
//!
//! Then `<n>` is merged into the file below it (`blockcommit --top <target>[<index>]
//! --shallow`). That file is written while `<n>` stays in the chain above it, so the disk
//! reads the same at every moment of the merge, and qemu names it in the new overlay by the
//! name qemu opened it by. That name is never `disk.<id>`: when qemu knows the file below as
//! `disk.<id>` (the VM was started on it) it would reopen that name read-write, which now leads
//! to the new overlay, and it would write `disk.<id>` into the new overlay as its own backing
//! file. Then `<n>` is not merged but kept as a layer of the chain, once per start of the VM:
//! the chain is the base, at most one kept layer, and the overlay.
//!
//! The file `<n>` is what the backup reads (for an increment only the clusters it holds
//! itself, when it is the overlay the parent backup left; whole otherwise); postbackup_live
//! removes it when it was merged. After a failed backup the changes since the last good one
//! are merged, so the retry reads the whole disk. A raw disk goes onto a temporary overlay in
//! `<vm_dir>/tmp`, is read whole, and is committed back afterwards, as for a FULL.

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

/// The staging directory's list of files the merges emptied out of the chains (one path per
/// line): what postbackup_live removes, and nothing else of the snapshot directories.
const MERGED: &str = "backstop-merged";

/// Whether two names are the same directory entry (not what they lead to): the same name in
/// the same directory (`/var/lib/one//datastores/0/7/disk.0` is `disk.0` of the VM directory).
fn same_entry(a: &Path, b: &Path) -> bool {
    a.file_name() == b.file_name()
        && match (a.parent(), b.parent()) {
            (Some(pa), Some(pb)) => same_file(pa, pb),
            _ => false,
        }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The file `overlay` names as its backing file, resolved as OpenNebula's start of the VM
/// resolves it (relative to the VM directory, where `disk.<id>` is).
fn backing_of(c: &Chain, overlay: &Path) -> Option<PathBuf> {
    let info = backstop_image::disk_image::info(overlay, Format::Qcow2).ok()?;
    let (named, _) = info.backing?;
    let vm_dir = c.link.parent()?;
    Some(vm_dir.join(named))
}

/// What an interrupted attempt left: `disk.<id>` not leading to the new overlay the domain
/// (or, when it stopped, the snapshot directory) has over the file the link leads to. The
/// link is pointed at it; the overlay names that file so that it resolves from `disk.<id>`.
fn recover(virsh: &Virsh, dom: &str, target: &str, c: &Chain, new: &str) -> Option<String> {
    let new_file = c.snap.join(new);
    if new == c.name || std::fs::symlink_metadata(&new_file).is_err() {
        return None;
    }
    let active = virsh
        .layers(dom, target)
        .ok()
        .and_then(|l| l.first().map(|(_, p)| PathBuf::from(p)));
    let runs_on_new = active.as_ref().is_some_and(|a| same_file(a, &new_file));
    let stopped = active.is_none()
        && virsh
            .run(&["domstate", dom])
            .map_or(true, |state| state.contains("shut off"));
    let over_link = backing_of(c, &new_file).is_some_and(|b| same_file(&b, &c.top()));
    if (runs_on_new || stopped) && over_link {
        return match chain::relink(&c.link, &format!("{}/{new}", c.slink)) {
            Ok(()) => Some(format!(
                "{target} {} {}, where disk.{} now leads",
                if stopped { "stopped on" } else { "ran on" },
                new_file.display(),
                c.id
            )),
            Err(e) => Some(format!("{e}")),
        };
    }
    None
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
    let next = (increment + 1).to_string();
    host::refuse_disk_snapshots(step)?;
    host::fresh_staging(step)?;
    let tmp = fresh_tmp(step, virsh)?;

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
        let named = |e: Error| Error {
            message: format!("VM {}: {}", vm.id, e.message),
            ..e
        };
        let layout = match crate::qemu::declared_format(vm, id)? {
            Format::Qcow2 => {
                let f = chain::check(&vm_dir, id).map_err(named)?;
                if let Found::Chain(c) = &f {
                    if !c.in_vm_dir() {
                        return Err(Error::new(
                            ErrorKind::NotImplemented,
                            format!(
                                "VM {}: disk {id} is a persistent image whose snapshots are kept in its datastore ({}); INCREMENT_MODE=SNAPSHOT backs it up only while the VM is powered off (use INCREMENT_MODE=CBT while it runs)",
                                vm.id,
                                c.snap.display()
                            ),
                        ));
                    }
                    let new = c.snap.join(&next);
                    if std::fs::symlink_metadata(&new).is_ok()
                        && !same_file(&new, &c.link)
                        && !chain::overlay_extents(&new, true).is_ok_and(|e| e.is_empty())
                    {
                        return Err(fail(format!(
                            "VM {}: {} is in the way of the next SNAPSHOT overlay and holds data; it is left as it is",
                            vm.id,
                            new.display()
                        )));
                    }
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
                // An empty leftover where the new overlay goes (checked above) goes.
                let new = c.snap.join(&next);
                if std::fs::symlink_metadata(&new).is_ok() && !same_file(&new, &c.link) {
                    std::fs::remove_file(&new)
                        .map_err(|e| Error::io(format!("cannot remove {}", new.display()), e))?;
                }
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
                    .map_err(Some),
            },
        };
        // The disk runs on the name the new overlay must have: a backup that failed after
        // its rotation left it (its changes since the last good backup are partly merged
        // below, so this one is read whole anyway). It is merged into the file below first.
        let (chain, image) = match chain {
            Some(c) if c.name == next => {
                let c = merge_away(virsh, dom, &target, c)?;
                (Some(c), host::disk_image(step, id)?)
            }
            other => (other, image),
        };
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
    for r in &disks {
        match &r.chain {
            Some(c) => chain::create_overlay(c, &next, &c.backing_name(&c.name), r.disk.size)?,
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

    // disk.<id> leads to what the VM runs on, at once; then the file read is merged into the
    // one below it where qemu allows it (the file stays, for the backup).
    let mut merged = Vec::new();
    for r in &disks {
        let Some(c) = &r.chain else { continue };
        chain::relink(&c.link, &format!("{}/{next}", c.slink))?;
        if c.name == "0" {
            continue;
        }
        match merge_down(virsh, dom, &r.disk.target, c, &next) {
            Ok(true) => merged.push(c.top()),
            Ok(false) => log(
                Level::Info,
                &format!(
                    "VM {}: {} stays a layer of disk {}'s chain (qemu knows the file below it as disk.{}, the VM was started on it)",
                    vm.id,
                    c.top().display(),
                    r.disk.id,
                    r.disk.id
                ),
            ),
            Err(e) => log(
                Level::Error,
                &format!(
                    "VM {}: {} stays a layer of disk {}'s chain: {e}",
                    vm.id,
                    c.top().display(),
                    r.disk.id
                ),
            ),
        }
    }
    let list: String = merged
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    write_file(&step.staging.join(MERGED), &list)?;

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
        // Its clusters are the changes.
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

/// Merges the overlay the domain runs on (`c.top()`) into the file below it (`--active
/// --pivot --shallow`), points `disk.<id>` at that file and removes the overlay; the chain as
/// it is then. Refused when qemu knows the file below as `disk.<id>` (it would reopen that
/// name, which leads to the overlay).
fn merge_away(virsh: &Virsh, dom: &str, target: &str, c: Chain) -> Result<Chain, Error> {
    let top = c.top();
    let layers = virsh.layers(dom, target)?;
    let (Some((_, active)), Some((_, below))) = (layers.first(), layers.get(1)) else {
        return Err(fail(format!(
            "{target} has no file below {}",
            top.display()
        )));
    };
    let below = PathBuf::from(below);
    let below_name = below
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !(same_file(Path::new(active), &top) || same_entry(Path::new(active), &c.link))
        || same_entry(&below, &c.link)
        || !below.parent().is_some_and(|d| same_file(d, &c.snap))
    {
        return Err(fail(format!(
            "{target} runs on {} over {}, which cannot be merged here",
            top.display(),
            below.display()
        )));
    }
    virsh.run(&[
        "blockcommit",
        dom,
        target,
        "--active",
        "--pivot",
        "--shallow",
        "--wait",
    ])?;
    chain::relink(&c.link, &format!("{}/{below_name}", c.slink))?;
    std::fs::remove_file(&top)
        .map_err(|e| Error::io(format!("cannot remove {}", top.display()), e))?;
    Ok(Chain {
        name: below_name,
        ..c
    })
}

/// Merges the file the disk ran on (`c.top()`, now under the new overlay `<next>`) into the
/// file below it, unless qemu knows that file as `disk.<id>`: whether it merged.
fn merge_down(
    virsh: &Virsh,
    dom: &str,
    target: &str,
    c: &Chain,
    next: &str,
) -> Result<bool, Error> {
    let layers = virsh.layers(dom, target)?;
    let (Some((_, new)), Some((Some(index), read)), Some((_, below))) =
        (layers.first(), layers.get(1), layers.get(2))
    else {
        return Err(fail(format!(
            "{target} has not the layers the snapshot made"
        )));
    };
    // qemu knows the file read as `disk.<id>` when the VM was started on it.
    if !same_file(Path::new(new), &c.snap.join(next))
        || !(same_file(Path::new(read), &c.top()) || same_entry(Path::new(read), &c.link))
    {
        return Err(fail(format!(
            "{target} does not run on {} over {}",
            c.snap.join(next).display(),
            c.top().display()
        )));
    }
    if same_entry(Path::new(below), &c.link) {
        return Ok(false);
    }
    let top = format!("{target}[{index}]");
    virsh.run(&[
        "blockcommit",
        dom,
        target,
        "--top",
        &top,
        "--shallow",
        "--wait",
    ])?;
    Ok(true)
}

/// Ends a SNAPSHOT-mode backup of the running VM (also after a failed prebackup_live):
/// `disk.<id>` made to lead to the new overlay the domain runs on if an interrupted step left
/// it elsewhere; the files the merges emptied out of the chains (listed by prebackup_live)
/// removed; a new overlay the snapshot never used removed when it is empty; raw disks'
/// temporary overlays committed back. Problems are `ERROR:` lines.
pub(super) fn settle(step: &Step<'_>, virsh: &Virsh, failed: bool) {
    let vm = step.vm;
    let dom = step.args.deploy_id.as_str();
    let report = |what: String| log(Level::Error, &format!("VM {}: {what}", vm.id));
    let vm_dir = vm_dir(step);
    if let Ok((increment, _)) = increment_of(vm) {
        let next = (increment + 1).to_string();
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
            if let Some(what) = recover(virsh, dom, &target, &c, &next) {
                log(Level::Info, &format!("VM {}: {what}", vm.id));
                continue;
            }
            // Made for a snapshot that never happened: empty, and nothing runs on it.
            let new = c.snap.join(&next);
            let unused = std::fs::symlink_metadata(&new).is_ok()
                && !same_file(&new, &c.link)
                && virsh
                    .layers(dom, &target)
                    .is_ok_and(|l| !l.iter().any(|(_, p)| same_file(Path::new(p), &new)));
            if unused
                && chain::overlay_extents(&new, true).is_ok_and(|e| e.is_empty())
                && let Err(e) = std::fs::remove_file(&new)
            {
                report(format!("cannot remove {}: {e}", new.display()));
            }
        }
    }
    if let Ok(list) = std::fs::read_to_string(step.staging.join(MERGED)) {
        for file in list.lines().filter(|l| !l.is_empty()).map(Path::new) {
            // Only files of this VM's snapshot directories, never the base.
            let ours = file.parent().is_some_and(|d| {
                d.parent() == Some(vm_dir.as_path())
                    && d.file_name()
                        .is_some_and(|n| n.to_string_lossy().ends_with(".snap"))
            }) && file.file_name().is_some_and(|n| n != "0");
            if ours && let Err(e) = std::fs::remove_file(file) {
                report(format!("cannot remove {}: {e}", file.display()));
            }
        }
    }
    let _ = failed;
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
