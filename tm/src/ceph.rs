//! Ceph RBD disks in prebackup and postbackup (powered-off VMs, direct hand-over), with
//! OpenNebula's snapshot conventions (docs/ceph.md):
//!
//! - the disk's image is `SOURCE` (persistent), `SOURCE-<vm>-<disk>` (a clone, `CLONE=YES`) or
//!   `<POOL_NAME>/one-sys-<vm>-<disk>` (a volatile disk);
//! - INCREMENT mode keeps one protected snapshot `one_backup_<n>` per disk: increment `n` is
//!   what changed since `one_backup_<n-1>` (`rbd diff`), or the whole image when that parent
//!   is gone (said in an `INFO:` line, never a failure); FULL mode takes `one_backup` and
//!   removes it afterwards;
//! - the snapshot of the last good backup is never removed before a new good one exists:
//!   prebackup removes a leftover under the new snapshot's name and, when the parent is at
//!   hand, every other snapshot of ours (leftovers of interrupted runs; each said in an
//!   `INFO:` line); postbackup after success keeps only the new increment's snapshot (none for
//!   FULL), after a failure removes the new snapshot and keeps the rest.

use crate::{Error, ErrorKind};
use backstop_image::rbd::{RbdImage, RbdSnapshot, cluster_path};
use backstop_protocol::message::{Disk, Vm};
use backstop_protocol::output::{Level, log};
use backstop_protocol::staging::RbdSource;
use std::path::{Path, PathBuf};

/// The prefix of increment snapshots. The stock driver's: changing it breaks its chains.
pub const INC_PREFIX: &str = "one_backup_";
/// The snapshot a FULL backup reads.
pub const FULL_SNAPSHOT: &str = "one_backup";

fn attr<'a>(disk: &'a Disk, name: &str) -> Option<&'a str> {
    disk.attributes
        .iter()
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
}

/// Whether the disk is an RBD image (a Ceph datastore's disk, or a volatile disk on a Ceph
/// system datastore). DISK_TYPE says it when present: a Ceph image on an `ssh` system
/// datastore (TM_MAD_SYSTEM=ssh) is copied to the host and is a file there (DISK_TYPE=FILE),
/// though its TM_MAD stays `ceph`.
pub fn is_rbd(disk: &Disk) -> bool {
    let is = |v: Option<&str>, want: &str| v.is_some_and(|v| v.eq_ignore_ascii_case(want));
    match attr(disk, "DISK_TYPE") {
        Some(t) => t.eq_ignore_ascii_case("RBD"),
        None => {
            is(disk.disk_type.as_deref(), "RBD")
                || (is(attr(disk, "TM_MAD"), "ceph") && !is(attr(disk, "TM_MAD_SYSTEM"), "ssh"))
        }
    }
}

/// Snapshots this driver owns: `one_backup` and `one_backup_<n>`.
fn is_ours(name: &str) -> bool {
    name == FULL_SNAPSHOT
        || name
            .strip_prefix(INC_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn input(vm: u64, disk: u32, what: String) -> Error {
    Error::new(ErrorKind::Input, format!("VM {vm}: disk {disk}: {what}"))
}

/// The RBD image of a disk, with the cluster options of its attributes.
pub fn image_of(vm_id: u64, disk: &Disk) -> Result<RbdImage, Error> {
    let id = disk.disk_id;
    let volatile = disk
        .disk_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("fs") || t.eq_ignore_ascii_case("swap"));
    let (pool, image) = if volatile {
        let pool = attr(disk, "POOL_NAME")
            .ok_or_else(|| input(vm_id, id, "a volatile RBD disk without POOL_NAME".into()))?;
        (pool.to_string(), format!("one-sys-{vm_id}-{id}"))
    } else {
        let source = disk
            .source
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| input(vm_id, id, "an RBD disk without SOURCE".into()))?;
        let (pool, image) = source.split_once('/').ok_or_else(|| {
            input(
                vm_id,
                id,
                format!("SOURCE {source:?} is not <pool>/<image>"),
            )
        })?;
        let clone = attr(disk, "CLONE").is_some_and(|c| c.eq_ignore_ascii_case("YES"));
        let image = if clone {
            format!("{image}-{vm_id}-{id}")
        } else {
            image.to_string()
        };
        (pool.to_string(), image)
    };
    // Checked here too, to name the attribute: a VM template may carry these where the
    // datastore does not set them (docs/ceph.md).
    for name in ["CEPH_CONF", "CEPH_KEY"] {
        if let Some(value) = attr(disk, name).filter(|v| !cluster_path(Path::new(v))) {
            return Err(input(
                vm_id,
                id,
                format!(
                    "{name} {value:?} is not an absolute path without blanks or control characters"
                ),
            ));
        }
    }
    let image = RbdImage {
        pool,
        image,
        snapshot: None,
        conf: attr(disk, "CEPH_CONF").map(PathBuf::from),
        user: attr(disk, "CEPH_USER").map(str::to_string),
        keyfile: attr(disk, "CEPH_KEY").map(PathBuf::from),
    };
    image.check().map_err(|e| input(vm_id, id, e.to_string()))?;
    Ok(image)
}

fn ceph_error(vm: u64, disk: u32, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Repository, format!("VM {vm}: disk {disk}: {e}"))
}

/// prebackup of one RBD disk: the snapshot this backup reads, taken now, and the parent whose
/// differences are the increment. `increment`/`parent` as [`crate::host::increment_of`];
/// `incremental` is INCREMENT mode.
pub fn prepare(
    vm: &Vm,
    disk: &Disk,
    increment: u64,
    parent: Option<u64>,
    incremental: bool,
) -> Result<RbdSource, Error> {
    let id = disk.disk_id;
    let image = image_of(vm.id, disk)?;
    let snaps = image.snapshots().map_err(|e| ceph_error(vm.id, id, e))?;
    let (snapshot, wanted_parent) = if incremental {
        (
            format!("{INC_PREFIX}{increment}"),
            parent.map(|p| format!("{INC_PREFIX}{p}")),
        )
    } else {
        (FULL_SNAPSHOT.to_string(), None)
    };
    let parent = wanted_parent.filter(|p| snaps.iter().any(|s| &s.name == p));
    if incremental && increment > 0 && parent.is_none() {
        log(
            Level::Info,
            &format!(
                "VM {}: disk {id}: the parent snapshot {}@{INC_PREFIX}{} is gone; increment {increment} reads the whole image",
                vm.id,
                image.spec(),
                increment - 1
            ),
        );
    }
    // A snapshot under the new one's name is what an interrupted attempt of this same backup
    // left (maybe half taken). With a parent at hand, every other snapshot of ours is a
    // leftover too; without one, the older ones may be all that is left of the last good
    // backup, so they stay until postbackup knows this one worked.
    for s in snaps.iter().filter(|s| {
        is_ours(&s.name)
            && (s.name == snapshot || (parent.is_some() && Some(&s.name) != parent.as_ref()))
    }) {
        log(
            Level::Info,
            &format!(
                "VM {}: disk {id}: removing snapshot {}@{} left by an earlier run",
                vm.id,
                image.spec(),
                s.name
            ),
        );
        image.snap_remove(s).map_err(|e| ceph_error(vm.id, id, e))?;
    }
    image
        .snap_create(&snapshot)
        .map_err(|e| ceph_error(vm.id, id, e))?;
    if incremental {
        image
            .snap_protect(&snapshot)
            .map_err(|e| ceph_error(vm.id, id, e))?;
    }
    Ok(RbdSource {
        pool: image.pool.clone(),
        image: image.image.clone(),
        snapshot,
        parent_snapshot: parent,
        conf: image.conf.as_ref().map(|p| p.display().to_string()),
        user: image.user.clone(),
        keyfile: image.keyfile.as_ref().map(|p| p.display().to_string()),
    })
}

/// Staging mode: the snapshot as the stock Ceph TM stages it, a qcow2 `target` in the stock
/// layout: increment 0 (or FULL) the whole image; an increment the extents `rbd diff` lists
/// since the parent snapshot, as a delta the consumers rebase onto the previous file; an
/// increment whose parent snapshot is gone everything, covering whatever it is rebased onto.
pub fn stage(
    rbd: &RbdSource,
    increment: u64,
    target: &std::path::Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<crate::delta::Written, Error> {
    use crate::delta::{Plan, write_from};
    let image = RbdImage {
        pool: rbd.pool.clone(),
        image: rbd.image.clone(),
        snapshot: Some(rbd.snapshot.clone()),
        conf: rbd.conf.as_ref().map(PathBuf::from),
        user: rbd.user.clone(),
        keyfile: rbd.keyfile.as_ref().map(PathBuf::from),
    };
    let what = image.spec();
    let rbd_disk = backstop_image::Disk::Rbd {
        image: &image,
        since: rbd.parent_snapshot.as_deref(),
    };
    let source = backstop_image::open(rbd_disk, None)?;
    let plan = match (&source.changed, increment) {
        (Some(listed), _) => Plan::Listed(listed.clone()),
        (None, 0) => Plan::Full,
        (None, _) => Plan::Whole,
    };
    write_from(&source, &what, &plan, target, cancel)
}

/// postbackup of one RBD disk: after success only the new increment's snapshot stays (it is
/// the next parent; none after a FULL); after a failure only the new snapshot goes, so the
/// retry diffs from the same parent. Problems are logged, never fatal.
pub fn settle(vm: &Vm, disk: &Disk, increment: u64, incremental: bool) {
    let id = disk.disk_id;
    let report = |what: String| log(Level::Error, &format!("VM {}: disk {id}: {what}", vm.id));
    let image = match image_of(vm.id, disk) {
        Ok(i) => i,
        Err(e) => return report(e.message),
    };
    let snaps: Vec<RbdSnapshot> = match image.snapshots() {
        Ok(s) => s,
        Err(e) => return report(e.to_string()),
    };
    // The snapshot this backup read; after success it is the only one of ours that stays
    // (INCREMENT: the next parent), or none (FULL); after a failure it alone goes.
    let current = if incremental {
        format!("{INC_PREFIX}{increment}")
    } else {
        FULL_SNAPSHOT.to_string()
    };
    for s in snaps.iter().filter(|s| is_ours(&s.name)) {
        let drop = if vm.backup_failed {
            s.name == current
        } else {
            !incremental || s.name != current
        };
        if drop && let Err(e) = image.snap_remove(s) {
            report(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(attrs: &[(&str, &str)], source: Option<&str>, kind: Option<&str>) -> Disk {
        Disk {
            disk_id: 1,
            size_mb: None,
            format: None,
            disk_type: kind.map(str::to_string),
            source: source.map(str::to_string),
            image_id: None,
            target: None,
            persistent: false,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A volatile disk's CEPH_KEY or CEPH_CONF with a blank would set any librados option
    /// through CEPH_ARGS (issue 23): refused, naming the attribute.
    #[test]
    fn cluster_paths_with_blanks_or_relative_are_refused() {
        for (name, value) in [
            (
                "CEPH_KEY",
                "/etc/ceph/key --log-file /var/lib/one/.ssh/authorized_keys",
            ),
            ("CEPH_KEY", "/etc/ceph/key\t--mon-host=127.0.0.9"),
            ("CEPH_CONF", "/etc/ceph/c.conf --log-file /tmp/x"),
            ("CEPH_CONF", "ceph.conf"),
            ("CEPH_KEY", "/etc/ceph/k\u{1b}ey"),
        ] {
            let d = disk(
                &[("TM_MAD", "ceph"), ("POOL_NAME", "sys"), (name, value)],
                None,
                Some("fs"),
            );
            let e = image_of(22, &d).expect_err(value).to_string();
            assert_eq!(
                e,
                format!(
                    "VM 22: disk 1: {name} {:?} is not an absolute path without blanks or control characters",
                    value.trim()
                )
            );
        }
        let fine = disk(
            &[
                ("TM_MAD", "ceph"),
                ("POOL_NAME", "sys"),
                ("CEPH_KEY", "/etc/ceph/ceph.client.libvirt.key"),
                ("CEPH_CONF", "/etc/ceph/ceph.conf"),
            ],
            None,
            Some("fs"),
        );
        assert!(image_of(22, &fine).is_ok());
    }

    #[test]
    fn images_are_named_as_the_stock_driver_names_them() {
        let persistent = disk(
            &[
                ("TM_MAD", "ceph"),
                ("CEPH_USER", "libvirt"),
                ("CEPH_CONF", "/etc/ceph/c.conf"),
            ],
            Some("one/one-5"),
            Some("RBD"),
        );
        assert!(is_rbd(&persistent));
        let i = image_of(22, &persistent).expect("image");
        assert_eq!(
            (i.spec(), i.user.as_deref()),
            ("one/one-5".into(), Some("libvirt"))
        );
        let clone = disk(
            &[("TM_MAD", "ceph"), ("CLONE", "YES")],
            Some("one/one-5"),
            None,
        );
        assert_eq!(
            image_of(22, &clone).expect("clone").spec(),
            "one/one-5-22-1"
        );
        let volatile = disk(
            &[("TM_MAD", "ceph"), ("POOL_NAME", "sys")],
            None,
            Some("fs"),
        );
        assert_eq!(
            image_of(22, &volatile).expect("volatile").spec(),
            "sys/one-sys-22-1"
        );
        assert!(!is_rbd(&disk(
            &[("TM_MAD", "qcow2")],
            Some("/x"),
            Some("FILE")
        )));
        // A Ceph image copied to an ssh system datastore is a file on the host.
        assert!(!is_rbd(&disk(
            &[
                ("TM_MAD", "ceph"),
                ("TM_MAD_SYSTEM", "ssh"),
                ("DISK_TYPE", "FILE")
            ],
            Some("one/one-5"),
            None
        )));
        assert!(!is_rbd(&disk(
            &[("TM_MAD", "ceph"), ("TM_MAD_SYSTEM", "ssh")],
            Some("one/one-5"),
            None
        )));
        assert!(is_rbd(&disk(&[("DISK_TYPE", "RBD")], None, Some("fs"))));
        for bad in ["one", "one/a@b", "one/a:conf=/etc/passwd", "one/-x"] {
            assert!(
                image_of(22, &disk(&[("TM_MAD", "ceph")], Some(bad), None)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_our_snapshots_are_ours() {
        for n in ["one_backup", "one_backup_0", "one_backup_17"] {
            assert!(is_ours(n), "{n}");
        }
        for n in [
            "one_backup_",
            "one_backup_x",
            "mine",
            "one_backup_1a",
            "snap-one_backup_1",
        ] {
            assert!(!is_ours(n), "{n}");
        }
    }
}
