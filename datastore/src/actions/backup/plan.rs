//! What the host step of a backup reads, decided from what it was handed, without any I/O:
//! the staged files (or the direct-mode manifest), the VM document, and the repository's
//! snapshots. [`super::host`] carries the plan out.
//!
//! - Which increment this is: the one increment every staged disk belongs to.
//! - Its parent: none for increment 0; for increment n, the newest snapshot of the VM that
//!   holds `disk.<id>.<n-1>` of every disk (and `MODE` must be INCREMENT, `LAST_INCREMENT_ID`
//!   n-1).
//! - How each disk is read ([`Read`]): direct mode reads the disk itself (its changed extents
//!   when the parent is a backstop image and the disk has its bitmap, else all of it); a staged
//!   increment 0 is read whole; a staged increment on a backstop parent is a delta whose
//!   clusters are the changed extents; a staged increment on a stock parent is read whole on
//!   top of the stock chain, rebuilt once ([`Plan::stock_chain`]).

use crate::layout::{IMAGE_TAG, Staged, base_name, staged_disk, staged_kind};
use crate::repo::format::{RepoId, Snapshot};
use crate::vm_snapshots::find_parent;
use crate::{Error, ErrorKind};
use backstop_image::disk_image::Format;
use backstop_protocol::args::BackupArgs;
use backstop_protocol::message::{BackupMode, Vm};
use backstop_protocol::staging::{DirectDisk, DirectManifest, MANIFEST};
use backstop_protocol::url::ChainLink;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files of a staging directory the backup cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedFiles {
    /// (disk id, increment, file), for the disks the backup asked for.
    pub disks: Vec<(u32, u64, PathBuf)>,
    pub tpm: Option<PathBuf>,
    pub vm_xml: Option<PathBuf>,
}

impl StagedFiles {
    /// Sorts the names of `dir`'s files into staged disks (of `disk_ids` only), the TPM state
    /// and vm.xml; anything else is ignored.
    pub fn from_names(
        dir: &Path,
        names: impl IntoIterator<Item = String>,
        disk_ids: &[u32],
    ) -> Self {
        let mut files = StagedFiles::default();
        for name in names {
            // The stock Ceph TM stages rbd-format files for a chain that began in that format.
            if crate::layout::is_rbd_file(&name) {
                if let Some((disk_id, increment)) = crate::layout::stored_increment(&name)
                    && disk_ids.contains(&disk_id)
                {
                    files.disks.push((disk_id, increment, dir.join(&name)));
                }
                continue;
            }
            match staged_kind(&name) {
                Some(Staged::Disk { disk_id, increment }) if disk_ids.contains(&disk_id) => {
                    files.disks.push((disk_id, increment, dir.join(&name)));
                }
                Some(Staged::Tpm) => files.tpm = Some(dir.join(&name)),
                Some(Staged::VmXml) => files.vm_xml = Some(dir.join(&name)),
                Some(Staged::Disk { .. }) | None => {}
            }
        }
        files
    }
}

/// How one disk is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Direct mode: the disk as prebackup described it, in its declared format. With
    /// `bitmap`, only its changed extents (the parent is a backstop image); otherwise all of
    /// it, and `whole_reason` says why when a bitmap was there but cannot be used.
    Direct {
        disk: Box<DirectDisk>,
        format: Format,
        bitmap: Option<String>,
        whole_reason: Option<String>,
    },
    /// A staged increment 0: a standalone qcow2 file, read whole.
    Whole,
    /// A staged qcow2 delta on a backstop parent: its clusters are the changed extents.
    Delta,
    /// A staged qcow2 delta on a stock parent: read whole on top of the rebuilt chain, whose
    /// files are found by the parent's file of this disk.
    OnRebuiltChain { parent_file: String },
    /// A staged rbd-format file (the stock Ceph TM's `disk.<id>.rbd2`, or a
    /// `disk.<id>.<n>.rbdiff` on the parent's image rebuilt as raw, found by the parent's file
    /// of this disk): applied into one raw image, read whole.
    Rbd { parent_file: Option<String> },
}

/// One disk of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub disk_id: u32,
    /// The file to read (the staged file, or the disk itself in direct mode).
    pub file: PathBuf,
    /// Where it goes in the snapshot: its staged path, whatever the mode.
    pub snapshot_path: String,
    /// The same disk in the parent snapshot (the chunks reused for what did not change).
    pub parent_path: Option<String>,
    pub read: Read,
}

/// The whole plan of a host step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub increment: u64,
    pub parent: Option<RepoId>,
    /// The stock chain under a stock parent, oldest first: rebuilt once for the increment.
    pub stock_chain: Option<Vec<ChainLink>>,
    pub disks: Vec<DiskPlan>,
}

/// A staged disk: (disk id, increment, file).
type StagedDisk = (u32, u64, PathBuf);

/// The parent snapshot: its id and content.
type Parent = (RepoId, Snapshot);

fn input(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

fn is_rbd_staged(file: &Path) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(crate::layout::is_rbd_file)
}

fn is_image(snap: &Snapshot) -> bool {
    snap.tags.iter().any(|t| t == IMAGE_TAG)
}

/// Decides what the host step reads. `snapshots` lists the repository's snapshots, oldest
/// first; it is only called for an increment n > 0. `repo` names the repository in errors.
pub fn plan(
    args: &BackupArgs,
    staged: &StagedFiles,
    manifest: Option<&DirectManifest>,
    vm: &Vm,
    staging: &Path,
    snapshots: impl FnOnce() -> Result<Vec<(RepoId, Snapshot, jiff::Timestamp)>, Error>,
    repo: &str,
) -> Result<Plan, Error> {
    let (disks, increment) = staged_disks(args, staged, manifest, staging)?;
    let ids: Vec<u32> = disks.iter().map(|d| d.0).collect();
    let (parent, stock_chain) = if increment > 0 {
        let (parent, chain) = parent_of(
            args,
            vm,
            &ids,
            increment,
            (
                manifest.is_some(),
                disks.iter().any(|d| is_rbd_staged(&d.2)),
            ),
            snapshots,
            repo,
        )?;
        (Some(parent), chain)
    } else {
        (None, None)
    };
    let mut planned = Vec::new();
    for (disk_id, inc, file) in disks {
        planned.push(disk_plan(
            args,
            manifest,
            staging,
            parent.as_ref().map(|(_, p)| p),
            stock_chain.is_some(),
            (disk_id, inc, file),
        )?);
    }
    Ok(Plan {
        increment,
        parent: parent.map(|(id, _)| id),
        stock_chain,
        disks: planned,
    })
}

/// The disks to read (each asked-for disk exactly once) and the one increment they belong to.
fn staged_disks(
    args: &BackupArgs,
    staged: &StagedFiles,
    manifest: Option<&DirectManifest>,
    staging: &Path,
) -> Result<(Vec<StagedDisk>, u64), Error> {
    // Direct mode: prebackup copied nothing and named the disks and their bitmaps instead.
    let mut disks: Vec<StagedDisk> = match manifest {
        Some(m) => m
            .disks
            .iter()
            .filter(|d| args.disk_ids.contains(&d.disk_id))
            .map(|d| (d.disk_id, m.increment, PathBuf::from(&d.path)))
            .collect(),
        None => staged.disks.clone(),
    };
    disks.sort();
    for id in &args.disk_ids {
        match disks.iter().filter(|d| d.0 == *id).count() {
            1 => {}
            0 => {
                return Err(input(format!(
                    "disk {id} of VM {} is not staged in {} (expected disk.{id}.<increment>)",
                    args.vm_id,
                    staging.display()
                )));
            }
            _ => {
                return Err(input(format!(
                    "disk {id} of VM {} is staged more than once in {}",
                    args.vm_id,
                    staging.display()
                )));
            }
        }
    }
    let increments: BTreeSet<u64> = disks.iter().map(|d| d.1).collect();
    let increment = match increments.iter().collect::<Vec<_>>().as_slice() {
        [one] => **one,
        _ => {
            return Err(input(format!(
                "the staged disks of VM {} belong to different increments {increments:?}",
                args.vm_id
            )));
        }
    };
    Ok((disks, increment))
}

/// The parent snapshot of increment `increment` (> 0), and the stock chain under it when the
/// parent is the stock driver's and the disks are staged.
fn parent_of(
    args: &BackupArgs,
    vm: &Vm,
    ids: &[u32],
    increment: u64,
    (direct, rbd_staged): (bool, bool),
    snapshots: impl FnOnce() -> Result<Vec<(RepoId, Snapshot, jiff::Timestamp)>, Error>,
    repo: &str,
) -> Result<(Parent, Option<Vec<ChainLink>>), Error> {
    let bc = &vm.backup_config;
    if bc.mode != BackupMode::Increment {
        return Err(input(format!(
            "VM {}: increment {increment} is staged but BACKUP_CONFIG/MODE is not INCREMENT",
            args.vm_id
        )));
    }
    if bc.last_increment_id.is_some_and(|l| l + 1 != increment) {
        return Err(input(format!(
            "VM {}: increment {increment} is staged but LAST_INCREMENT_ID is {:?}",
            args.vm_id, bc.last_increment_id
        )));
    }
    let all = snapshots()?;
    let (pid, psnap) = find_parent(&all, args.vm_id, ids, increment - 1).ok_or_else(|| {
        Error::new(
            ErrorKind::Repository,
            format!(
                "VM {}: no snapshot in {repo} holds increment {} of disks {ids:?}, so increment {increment} has no parent; start a new chain (onevm backup --reset)",
                args.vm_id,
                increment - 1
            ),
        )
    })?;
    // A parent the stock restic driver stored is a qcow2 delta, not a complete image: its
    // chain (back to the FULL, or to a backstop image) is rebuilt once, and this increment
    // is stored whole; the increments after it are cheap again. Direct mode reads the
    // whole disk instead: no chain to rebuild.
    // Staged rbd-format files apply on the parent's image as raw, whatever stored it.
    let chain = if !direct && (!is_image(&psnap) || rbd_staged) {
        let mut links = Vec::new();
        for k in (0..increment).rev() {
            let (id, snap) = find_parent(&all, args.vm_id, ids, k).ok_or_else(|| {
                Error::new(
                    ErrorKind::Repository,
                    format!(
                        "VM {}: the stock chain under increment {increment} has no increment {k} in {repo}; start a new chain (onevm backup --reset)",
                        args.vm_id
                    ),
                )
            })?;
            links.push(ChainLink {
                increment_id: k,
                source: id.to_hex().to_string(),
            });
            if is_image(&snap) {
                break;
            }
        }
        links.reverse();
        Some(links)
    } else {
        None
    };
    Ok(((pid, psnap), chain))
}

/// How one disk is read, and where it goes.
fn disk_plan(
    args: &BackupArgs,
    manifest: Option<&DirectManifest>,
    staging: &Path,
    parent: Option<&Snapshot>,
    on_stock_chain: bool,
    (disk_id, inc, file): StagedDisk,
) -> Result<DiskPlan, Error> {
    let parent_path = parent.and_then(|p| {
        p.paths
            .iter()
            .find(|p| {
                crate::layout::stored_increment(base_name(p))
                    == Some((disk_id, inc.saturating_sub(1)))
            })
            .cloned()
    });
    let read = match manifest.and_then(|m| m.disks.iter().find(|d| d.disk_id == disk_id)) {
        Some(d) => {
            // The format is the VM's declared one, from prebackup: never guessed.
            let format = Format::parse(&d.format).ok_or_else(|| {
                input(format!(
                    "disk {disk_id}: {MANIFEST} names the format {:?}; backstop reads raw and qcow2",
                    d.format
                ))
            })?;
            let backstop_parent = parent.is_some_and(is_image);
            // What holds the changes since the parent: a qcow2 bitmap, the parent's RBD
            // snapshot (the changes are what rbd diff reports since it), or the overlay of
            // INCREMENT_MODE=SNAPSHOT (the clusters it holds itself).
            let changes = d
                .bitmap
                .clone()
                .or_else(|| d.rbd.as_ref().and_then(|r| r.parent_snapshot.clone()))
                .or_else(|| d.layer.then(|| "the snapshot overlay".to_string()));
            match &changes {
                Some(b) if backstop_parent => Read::Direct {
                    disk: Box::new(d.clone()),
                    format,
                    bitmap: Some(b.clone()),
                    whole_reason: None,
                },
                bitmap => Read::Direct {
                    disk: Box::new(d.clone()),
                    format,
                    bitmap: None,
                    whole_reason: bitmap.as_ref().map(|_| {
                        format!(
                            "VM {}: increment {} of disk {disk_id} has no backstop parent snapshot; reading the whole disk",
                            args.vm_id,
                            inc.saturating_sub(1)
                        )
                    }),
                },
            }
        }
        None if is_rbd_staged(&file) => Read::Rbd {
            parent_file: parent_path.clone(),
        },
        None if parent.is_none() => Read::Whole,
        None if on_stock_chain => Read::OnRebuiltChain {
            parent_file: parent_path.clone().unwrap_or_default(),
        },
        None => Read::Delta,
    };
    let keeps_parent = matches!(
        read,
        Read::Delta
            | Read::Direct {
                bitmap: Some(_),
                ..
            }
    );
    Ok(DiskPlan {
        disk_id,
        file,
        snapshot_path: crate::target::clean_path(&format!(
            "{}/{}",
            staging.display(),
            staged_disk(disk_id, inc)
        )),
        parent_path: parent_path.filter(|_| keeps_parent),
        read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(disks: &[u32]) -> BackupArgs {
        BackupArgs::parse(&[
            "hv1:/v/0/22".to_string(),
            disks
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(":"),
            "one-22".into(),
            "-".into(),
            "22".into(),
            "0".into(),
        ])
        .expect("args")
    }

    fn vm(mode: &str, last: i64) -> Vm {
        let xml = format!(
            "<VM><ID>22</ID><TEMPLATE/><BACKUPS><BACKUP_CONFIG><MODE>{mode}</MODE>\
             <LAST_INCREMENT_ID>{last}</LAST_INCREMENT_ID></BACKUP_CONFIG></BACKUPS></VM>"
        );
        Vm::from_xml(&backstop_protocol::xml::Element::parse(&xml).expect("xml")).expect("vm")
    }

    fn snap(inc: u64, disks: &[u32], image: bool) -> (RepoId, Snapshot, jiff::Timestamp) {
        let paths: Vec<String> = disks
            .iter()
            .map(|d| format!("/v/0/22/backup/disk.{d}.{inc}"))
            .collect();
        let mut tags = vec!["one-22".to_string()];
        if image {
            tags.push(IMAGE_TAG.into());
        }
        let s: Snapshot = serde_json::from_value(serde_json::json!({
            "time": "2026-01-01T00:00:00Z",
            "tree": "00".repeat(32),
            "paths": paths,
            "hostname": "h",
            "tags": tags,
        }))
        .expect("snapshot");
        let id = RepoId::of(format!("{inc}{image}").as_bytes());
        (id, s, jiff::Timestamp::UNIX_EPOCH)
    }

    fn staged(files: &[&str]) -> StagedFiles {
        StagedFiles::from_names(
            Path::new("/v/0/22/backup"),
            files.iter().map(|f| f.to_string()),
            &[0, 1],
        )
    }

    fn manifest(inc: u64, bitmap: bool) -> DirectManifest {
        DirectManifest {
            version: 1,
            vm_id: 22,
            increment: inc,
            disks: vec![DirectDisk {
                disk_id: 0,
                path: "/v/0/22/disk.0".into(),
                format: "qcow2".into(),
                bitmap: bitmap.then(|| "one-22-1".to_string()),
                full_reason: None,
                nbd: None,
                shared: false,
                rbd: None,
                layer: false,
            }],
        }
    }

    type Snaps = fn() -> Result<Vec<(RepoId, Snapshot, jiff::Timestamp)>, Error>;
    /// (why, staged files, manifest, VM, disks asked for, snapshots, (disk, read, parent)).
    type ReadCase = (
        &'static str,
        StagedFiles,
        Option<DirectManifest>,
        Vm,
        &'static [u32],
        Snaps,
        Vec<(u32, &'static str, bool)>,
    );
    /// (staged files, manifest, VM, disks asked for, the error).
    type RefusalCase = (
        StagedFiles,
        Option<DirectManifest>,
        Vm,
        &'static [u32],
        &'static str,
    );

    fn reads(p: &Plan) -> Vec<(u32, &'static str, bool)> {
        p.disks
            .iter()
            .map(|d| {
                let r = match &d.read {
                    Read::Whole => "whole",
                    Read::Delta => "delta",
                    Read::OnRebuiltChain { .. } => "on-chain",
                    Read::Rbd { .. } => "rbd",
                    Read::Direct {
                        bitmap: Some(_), ..
                    } => "direct-changed",
                    Read::Direct { bitmap: None, .. } => "direct-whole",
                };
                (d.disk_id, r, d.parent_path.is_some())
            })
            .collect()
    }

    #[test]
    fn how_each_disk_is_read_from_a_table() {
        let dir = Path::new("/v/0/22/backup");
        let image_chain = || Ok(vec![snap(0, &[0, 1], true), snap(1, &[0, 1], true)]);
        let stock_chain = || Ok(vec![snap(0, &[0, 1], false), snap(1, &[0, 1], false)]);
        let cases: Vec<ReadCase> = vec![
            (
                "a FULL: staged files read whole, no parent",
                staged(&["disk.0.0", "disk.1.0", "vm.xml", "notes"]),
                None,
                vm("FULL", -1),
                &[0, 1],
                || panic!("a full backup lists no snapshots"),
                vec![(0, "whole", false), (1, "whole", false)],
            ),
            (
                "an increment on a backstop image: deltas on the parent's chunks",
                staged(&["disk.0.2", "disk.1.2", "vm.xml"]),
                None,
                vm("INCREMENT", 1),
                &[0, 1],
                image_chain,
                vec![(0, "delta", true), (1, "delta", true)],
            ),
            (
                "an increment on a stock chain: read whole on the rebuilt chain",
                staged(&["disk.0.2", "disk.1.2", "vm.xml"]),
                None,
                vm("INCREMENT", 1),
                &[0, 1],
                stock_chain,
                vec![(0, "on-chain", false), (1, "on-chain", false)],
            ),
            (
                "direct, with the bitmap and a backstop parent: the changed extents",
                staged(&["vm.xml", "backstop.json"]),
                Some(manifest(2, true)),
                vm("INCREMENT", 1),
                &[0],
                image_chain,
                vec![(0, "direct-changed", true)],
            ),
            (
                "direct, with the bitmap but a stock parent: the whole disk",
                staged(&["vm.xml"]),
                Some(manifest(2, true)),
                vm("INCREMENT", 1),
                &[0],
                stock_chain,
                vec![(0, "direct-whole", false)],
            ),
            (
                "direct, increment 0",
                staged(&["vm.xml"]),
                Some(manifest(0, false)),
                vm("INCREMENT", -1),
                &[0],
                || panic!("increment 0 lists no snapshots"),
                vec![(0, "direct-whole", false)],
            ),
        ];
        for (why, files, m, v, disks, snaps, want) in cases {
            let p = plan(&args(disks), &files, m.as_ref(), &v, dir, snaps, "repo")
                .unwrap_or_else(|e| panic!("{why}: {e}"));
            assert_eq!(reads(&p), want, "{why}");
            assert_eq!(
                p.disks[0].snapshot_path,
                format!("/v/0/22/backup/disk.0.{}", p.increment),
                "{why}"
            );
        }
        let p = plan(
            &args(&[0, 1]),
            &staged(&["disk.0.2", "disk.1.2"]),
            None,
            &vm("INCREMENT", 1),
            dir,
            stock_chain,
            "repo",
        )
        .expect("stock");
        let chain: Vec<u64> = p
            .stock_chain
            .expect("chain")
            .iter()
            .map(|l| l.increment_id)
            .collect();
        assert_eq!(chain, [0, 1], "the whole stock chain, oldest first");
        let p = plan(
            &args(&[0]),
            &staged(&["vm.xml"]),
            Some(&manifest(2, true)),
            &vm("INCREMENT", 1),
            dir,
            stock_chain,
            "repo",
        )
        .expect("direct");
        match &p.disks[0].read {
            Read::Direct { whole_reason, .. } => assert!(
                whole_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("has no backstop parent snapshot")),
                "{whole_reason:?}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_from_a_table() {
        let dir = Path::new("/v/0/22/backup");
        let none = || Ok(Vec::new());
        let mut bad_format = manifest(0, false);
        bad_format.disks[0].format = "vmdk".into();
        let cases: Vec<RefusalCase> = vec![
            (
                staged(&["disk.0.0"]),
                None,
                vm("FULL", -1),
                &[0, 1],
                "disk 1 of VM 22 is not staged",
            ),
            (
                staged(&["disk.0.0", "disk.0.1"]),
                None,
                vm("FULL", -1),
                &[0],
                "disk 0 of VM 22 is staged more than once",
            ),
            (
                staged(&["disk.0.1", "disk.1.2"]),
                None,
                vm("INCREMENT", 1),
                &[0, 1],
                "belong to different increments {1, 2}",
            ),
            (
                staged(&["disk.0.2"]),
                None,
                vm("FULL", 1),
                &[0],
                "increment 2 is staged but BACKUP_CONFIG/MODE is not INCREMENT",
            ),
            (
                staged(&["disk.0.2"]),
                None,
                vm("INCREMENT", 5),
                &[0],
                "increment 2 is staged but LAST_INCREMENT_ID is Some(5)",
            ),
            (
                staged(&["disk.0.2"]),
                None,
                vm("INCREMENT", 1),
                &[0],
                "no snapshot in repo holds increment 1 of disks [0]",
            ),
            (
                staged(&[]),
                Some(bad_format),
                vm("FULL", -1),
                &[0],
                "backstop.json names the format \"vmdk\"",
            ),
        ];
        for (files, m, v, disks, want) in cases {
            let e = plan(&args(disks), &files, m.as_ref(), &v, dir, none, "repo").expect_err(want);
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
        }
    }
}
