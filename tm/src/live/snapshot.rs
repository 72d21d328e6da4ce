//! INCREMENT_MODE=SNAPSHOT of a running VM (docs/host-side.md, "SNAPSHOT mode"): the layout
//! of [`crate::snapshot_mode`], rotated through libvirt.
//!
//! prebackup_live, with the guest frozen (FS_FREEZE), puts each qcow2 disk onto a new overlay
//! `disk.<id>.snap/<n+1>` over the file it ran on, `<n>` (one atomic disk-only snapshot,
//! `--reuse-external`). Then, at once, `<n>` is merged into the base (`blockcommit --top
//! <target>[<index>] --shallow --keep-relative`) and `disk.<id>` is pointed at `<n+1>`: from
//! then on `disk.<id>` leads to what the VM runs on, so a VM started again from it (a crash, a
//! reboot) has every write. The file `<n>` is not touched by the merge and is what the backup
//! reads: for an increment only the clusters it holds itself, when it is the overlay the
//! parent backup left; whole otherwise. postbackup_live removes it. After a failed backup the
//! next increment reads the whole disk (the changes since the last good backup were merged).
//! A raw disk goes onto a temporary overlay in `<vm_dir>/tmp`, is read whole, and is committed
//! back afterwards, as for a FULL.
//!
//! The names in the qcow2 headers matter, because OpenNebula starts the VM from `disk.<id>`:
//! qemu writes into the overlay above a commit the base's name as qemu opened it, which is
//! `disk.<id>` itself when the VM was started on the base (a loop at the next start). So the
//! new overlay names `<n>` by its bare name, and libvirt's relative commit writes that name's
//! directory plus the base's name as `<n>` records it: `disk.<id>.snap/0`. An `<n>` that names
//! its base otherwise (another tool made it) is first merged into the base, and the increment
//! reads the whole disk. And qemu reopens a commit's base read-write by the name it first
//! opened it by: when that is `disk.<id>`, `disk.<id>` leads to the base while the job runs.

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

/// Whether qemu's name of the layer below the overlay a disk runs on is the base: the base's
/// own name, or `disk.<id>` when the VM was started on the base (the name then leads to the
/// overlay; the layer below it, as its header says, is the base).
fn is_base(in_qemu: &Path, c: &Chain) -> bool {
    same_file(in_qemu, &c.base()) || same_entry(in_qemu, &c.link)
}

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

/// Runs `job`, a block commit into `<snap>/0`, the base. qemu reopens a commit's base
/// read-write (and read-only again after) by the name it first opened it by; when that name
/// is `disk.<id>` (the VM was started on the base) and `disk.<id>` leads elsewhere, the reopen
/// would find the wrong file (qemu's image locks refuse it). So then `disk.<id>` leads to the
/// base while the job runs, and back where it led when the job fails; after success the caller
/// points it where the disk now runs.
fn committing_into_base(
    c: &Chain,
    base_path_in_qemu: &str,
    job: impl FnOnce() -> Result<(), Error>,
) -> Result<(), Error> {
    if !same_entry(Path::new(base_path_in_qemu), &c.link) {
        return job();
    }
    let before = std::fs::read_link(&c.link)
        .map_err(|e| Error::io(format!("cannot read the link {}", c.link.display()), e))?;
    chain::relink(&c.link, &format!("{}/0", c.slink))?;
    let result = job();
    if result.is_err() {
        chain::relink(&c.link, &before.to_string_lossy())?;
    }
    result
}

/// What an interrupted attempt left (the process died between the snapshot and pointing
/// `disk.<id>` at the new overlay): the domain runs on an overlay of the snapshot directory
/// that `disk.<id>` does not lead to. Over the file the link leads to (not merged yet), it is
/// merged back into it; over the base (merged), the link is pointed at it.
fn recover(virsh: &Virsh, dom: &str, target: &str, c: &Chain) -> Result<Option<String>, Error> {
    let layers = virsh.layers(dom, target)?;
    let Some((_, active)) = layers.first() else {
        return Ok(None);
    };
    let active = PathBuf::from(active);
    if same_file(&active, &c.link) || !active.starts_with(&c.snap) {
        return Ok(None);
    }
    let below = layers.get(1).map(|(_, p)| PathBuf::from(p));
    if below.as_ref().is_some_and(|b| same_file(b, &c.link)) {
        merge_back(virsh, dom, target, &active)?;
        return Ok(Some(format!(
            "{target} ran on {}, merged back",
            active.display()
        )));
    }
    if below.as_ref().is_some_and(|b| same_file(b, &c.base())) {
        let name = active
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        chain::relink(&c.link, &format!("{}/{name}", c.slink))?;
        return Ok(Some(format!(
            "{target} ran on {} over the base, where disk.{} now leads",
            active.display(),
            c.id
        )));
    }
    Err(fail(format!(
        "{target} runs on {}, which is neither over the file disk.{} leads to nor over the base",
        active.display(),
        c.id
    )))
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
        let named = |e: Error| Error {
            message: format!("VM {}: {}", vm.id, e.message),
            ..e
        };
        let layout = match crate::qemu::declared_format(vm, id)? {
            Format::Qcow2 => {
                let f = chain::check(&vm_dir, id).map_err(named)?;
                // What an interrupted attempt left is set right first (recover); the layout
                // as it is then.
                let f = match f {
                    Found::Chain(c) if c.in_vm_dir() => {
                        if let Some(what) = recover(virsh, dom, &target, &c)? {
                            log(
                                Level::Info,
                                &format!("VM {}: left by an interrupted backup: {what}", vm.id),
                            );
                        }
                        chain::check(&vm_dir, id).map_err(named)?
                    }
                    other => other,
                };
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
                    if std::fs::symlink_metadata(&new).is_ok() && !same_file(&new, &c.link) {
                        return Err(fail(format!(
                            "VM {}: {} is in the way of the next SNAPSHOT overlay; it is left as it is",
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
                let layers = virsh.layers(dom, &target)?;
                let on_top = layers
                    .first()
                    .is_some_and(|(_, p)| same_file(Path::new(p), &top));
                let base_in_qemu = layers.get(1).map(|(_, p)| p.clone()).unwrap_or_default();
                if !on_top || !is_base(Path::new(&base_in_qemu), &c) {
                    return Err(fail(format!(
                        "VM {}: {target} does not run on {} over {}",
                        vm.id,
                        top.display(),
                        c.base().display()
                    )));
                }
                committing_into_base(&c, &base_in_qemu, || merge_back(virsh, dom, &target, &top))?;
                chain::relink(&c.link, &format!("{}/0", c.slink))?;
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
    for r in &disks {
        match &r.chain {
            Some(c) => {
                // The bare name when the relative commit below rewrites it; else the name that
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

    // At once: the overlay read goes into the base (the file stays, for the backup), and
    // disk.<id> leads to what the VM runs on.
    for r in &mut disks {
        let Some(c) = &r.chain else { continue };
        if c.name != "0" {
            let layers = virsh.layers(dom, &r.disk.target)?;
            let (Some((_, new)), Some((Some(index), read)), Some((_, base))) =
                (layers.first(), layers.get(1), layers.get(2))
            else {
                return Err(fail(format!(
                    "VM {}: {} has not the layers the snapshot made",
                    vm.id, r.disk.target
                )));
            };
            if !same_file(Path::new(new), &c.snap.join(&next))
                || !same_file(Path::new(read), &c.top())
                || !is_base(Path::new(base), c)
            {
                return Err(fail(format!(
                    "VM {}: {} does not run on {} over {} over {}",
                    vm.id,
                    r.disk.target,
                    c.snap.join(&next).display(),
                    c.top().display(),
                    c.base().display()
                )));
            }
            let top_arg = format!("{}[{index}]", r.disk.target);
            committing_into_base(c, base, || {
                virsh
                    .run(&[
                        "blockcommit",
                        dom,
                        &r.disk.target,
                        "--top",
                        &top_arg,
                        "--shallow",
                        "--keep-relative",
                        "--wait",
                    ])
                    .map(|_| ())
            })?;
        }
        chain::relink(&c.link, &format!("{}/{next}", c.slink))?;
    }

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

/// After the VM stopped between the snapshot and the merge: the new overlay `<snap>/<new>`,
/// over the file `disk.<id>` leads to, is merged into that file with qemu-img (qemu's image
/// locks refuse it if anything still runs on it) and removed. Whether there was one.
fn merge_offline(c: &Chain, new: &str) -> Result<bool, Error> {
    let file = c.snap.join(new);
    if new == c.name || std::fs::symlink_metadata(&file).is_err() {
        return Ok(false);
    }
    let roots = backstop_protocol::dirs::backing_roots(c.link.parent().unwrap_or(Path::new("/")));
    let image = backstop_image::disk_image::inspect(
        &file,
        Format::Qcow2,
        backstop_image::disk_image::Backing::Within(&roots),
    )?;
    if !image
        .layers
        .get(1)
        .is_some_and(|l| same_file(&l.path, &c.top()))
    {
        return Err(fail(format!(
            "{} is not over {}",
            file.display(),
            c.top().display()
        )));
    }
    backstop_image::disk_image::qemu_img(&[
        "commit".as_ref(),
        "-q".as_ref(),
        image.json_spec(true).as_ref(),
    ])?;
    std::fs::remove_file(&file)
        .map_err(|e| Error::io(format!("cannot remove {}", file.display()), e))?;
    Ok(true)
}

/// Whether the overlay the disk runs on names its base exactly `disk.<id>.snap/0`, so that the
/// relative commit writes that name into the overlay above; why not, if not.
fn relative_backing(c: &Chain) -> Result<(), String> {
    let info = backstop_image::disk_image::info(&c.top(), Format::Qcow2)
        .map_err(|e| format!("cannot read overlay {}: {e}", c.name))?;
    let wanted = c.backing_name("0");
    match info.backing {
        Some((named, _)) if named == wanted => Ok(()),
        Some((named, _)) => Err(format!(
            "overlay {} names its backing file {named:?}, not {wanted:?} (another tool made it); it is merged into the base",
            c.name
        )),
        None => Err(format!("overlay {} has no backing file", c.name)),
    }
}

/// Ends a SNAPSHOT-mode backup of the running VM (also after a failed prebackup_live):
/// `disk.<id>` made to lead to what the domain runs on, the overlay the backup read removed
/// once it is merged (it is then in no chain of the domain), a new overlay the snapshot never
/// used removed when it is empty; raw disks' temporary overlays committed back. Files are only
/// removed when libvirt answered; problems are `ERROR:` lines.
pub(super) fn settle(step: &Step<'_>, virsh: &Virsh, failed: bool) {
    let vm = step.vm;
    let dom = step.args.deploy_id.as_str();
    let report = |what: String| log(Level::Error, &format!("VM {}: {what}", vm.id));
    let vm_dir = vm_dir(step);
    if let Ok((increment, _)) = increment_of(vm) {
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
            match recover(virsh, dom, &target, &c) {
                Ok(Some(what)) => log(Level::Info, &format!("VM {}: {what}", vm.id)),
                Ok(None) => {}
                Err(e) if virsh.layers(dom, &target).is_err() => {
                    // The VM stopped while its backup ran: what it wrote on the new overlay
                    // goes into the file disk.<id> leads to, or a start would not see it.
                    match merge_offline(&c, &(increment + 1).to_string()) {
                        Ok(true) => log(
                            Level::Info,
                            &format!(
                                "VM {}: {target} stopped on its new overlay ({e}); merged into {}",
                                vm.id,
                                c.top().display()
                            ),
                        ),
                        Ok(false) => {}
                        Err(m) => report(format!(
                            "the files of {target} are left as they are ({e}; {m})"
                        )),
                    }
                    continue;
                }
                Err(e) => {
                    report(format!("the files of {target} are left as they are: {e}"));
                    continue;
                }
            }
            // The domain runs on what disk.<id> leads to now, and nothing else of the snapshot
            // directory is above the base: the overlay the backup read (merged) goes, and a
            // new overlay the snapshot never used when it is empty. The base never goes.
            let Ok(Found::Chain(c)) = chain::find(&vm_dir, id) else {
                continue;
            };
            for name in [increment.to_string(), (increment + 1).to_string()] {
                let file = c.snap.join(&name);
                if name == "0" || name == c.name || std::fs::symlink_metadata(&file).is_err() {
                    continue;
                }
                let merged = name == increment.to_string();
                let empty = chain::overlay_extents(&file, true).is_ok_and(|e| e.is_empty());
                if (merged || empty)
                    && let Err(e) = std::fs::remove_file(&file)
                {
                    report(format!("cannot remove {}: {e}", file.display()));
                }
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
