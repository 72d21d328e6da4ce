//! The layout and naming rules backstop shares with OpenNebula's stock drivers, in one place:
//!
//! - on a host, a VM's directory is `<DATASTORE_LOCATION>/<system datastore>/<vm_id>`, and the
//!   image datastores are the other directories of `<DATASTORE_LOCATION>`;
//! - the staging directory holds `disk.<id>.<increment>`, `disk.tpm.0` and `vm.xml` (the VM
//!   document in base64), and a snapshot keeps each file at its staged path;
//! - every snapshot of VM `n` carries the tag `one-<n>`; backstop's complete disk images also
//!   carry [`IMAGE_TAG`];
//! - persistent bitmaps and libvirt checkpoints are `one-<vm>-<n>`
//!   ([`backstop_protocol::staging::bitmap_name`]).

use backstop_protocol::message::Vm;
use std::path::{Path, PathBuf};

/// The tag every snapshot of VM `vm_id` carries, in backstop's and the stock driver's
/// repositories alike.
pub fn vm_tag(vm_id: u64) -> String {
    format!("one-{vm_id}")
}

/// The staged file of disk `disk_id` at increment `increment`.
pub fn staged_disk(disk_id: u32, increment: u64) -> String {
    format!("disk.{disk_id}.{increment}")
}

/// Marks snapshots whose disks are complete raw images in fixed chunks (written by backstop),
/// as opposed to the stock driver's qcow2 files.
pub const IMAGE_TAG: &str = "backstop-image";

/// One staged file of the backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    Disk { disk_id: u32, increment: u64 },
    Tpm,
    VmXml,
}

/// Which staged file a name is (`disk.<id>.<inc>`, `disk.tpm.0`, `vm.xml`); others are ignored.
pub fn staged_kind(name: &str) -> Option<Staged> {
    if name == "vm.xml" {
        return Some(Staged::VmXml);
    }
    if name == "disk.tpm.0" {
        return Some(Staged::Tpm);
    }
    let rest = name.strip_prefix("disk.")?;
    let (id, inc) = rest.split_once('.')?;
    Some(Staged::Disk {
        disk_id: id.parse().ok()?,
        increment: inc.parse().ok()?,
    })
}

/// The file name of a path.
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// vm.xml as prebackup writes it: the VM XML in base64, wrapped at 60 columns.
pub fn decode_vm_xml(bytes: &[u8]) -> Result<Vm, String> {
    let roots = backstop_protocol::input::decode_siblings(
        bytes,
        backstop_protocol::input::Encoding::Base64,
    )
    .map_err(|e| e.to_string())?;
    backstop_protocol::message::vm_from_siblings(&roots).map_err(|e| e.to_string())
}

/// Where the backing files of a VM's disks may lie: the VM's directory and the datastores'
/// directory above it (each datastore's own directory too, resolved, for datastores mounted
/// elsewhere through a symlink). A backing file anywhere else is refused (see
/// `docs/security.md`).
pub fn backing_roots(vm_dir: &Path) -> Vec<PathBuf> {
    let mut roots = vec![vm_dir.to_path_buf()];
    if let Some(datastores) = vm_dir.parent().and_then(Path::parent) {
        roots.push(datastores.to_path_buf());
        if let Ok(entries) = std::fs::read_dir(datastores) {
            for e in entries.flatten() {
                if let Ok(real) = std::fs::canonicalize(e.path())
                    && real.is_dir()
                {
                    roots.push(real);
                }
            }
        }
    }
    roots
}

/// The URL scheme of this datastore's backups: `restic` when backstop replaces the stock restic
/// driver (drop-in), `backstop` side by side (downloader.sh has an arm for it).
pub fn scheme(ds: &backstop_protocol::message::Datastore) -> &'static str {
    if ds.ds_mad == "restic" {
        "restic"
    } else {
        "backstop"
    }
}

/// The disk files of a snapshot: disk id to path (`disk.<id>.<increment>`).
pub fn snapshot_disks(paths: &[String]) -> std::collections::BTreeMap<u32, String> {
    paths
        .iter()
        .filter_map(|p| match staged_kind(base_name(p))? {
            Staged::Disk { disk_id, .. } => Some((disk_id, p.clone())),
            _ => None,
        })
        .collect()
}

/// The URL's own path when the snapshot holds it, else the snapshot's file of the same disk
/// (`disk.<id>.<any increment>` in the same directory).
pub fn disk_path(
    snap: &crate::repo::format::Snapshot,
    wanted: &str,
    disk_id: u32,
) -> Option<String> {
    let want = norm(wanted);
    if snap.paths.iter().any(|p| norm(p) == want) {
        return Some(wanted.to_string());
    }
    let dir = &want[..want.len().saturating_sub(1)];
    let prefix = format!("disk.{disk_id}.");
    snap.paths
        .iter()
        .find(|p| {
            let parts = norm(p);
            parts.split_last().is_some_and(|(file, d)| {
                d == dir
                    && file
                        .strip_prefix(&prefix)
                        .is_some_and(|inc| inc.parse::<u64>().is_ok())
            })
        })
        .cloned()
}

fn norm(p: &str) -> Vec<&str> {
    p.split('/').filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names() {
        assert_eq!(
            staged_kind("disk.0.3"),
            Some(Staged::Disk {
                disk_id: 0,
                increment: 3
            })
        );
        assert_eq!(staged_kind("disk.tpm.0"), Some(Staged::Tpm));
        assert_eq!(staged_kind("vm.xml"), Some(Staged::VmXml));
        for other in [
            "disk.0",
            "disk.x.1",
            "disk.0.rbd2",
            "disk.1.2.rbdiff",
            "notes",
        ] {
            assert_eq!(staged_kind(other), None, "{other}");
        }
    }

    fn snap(paths: &[&str]) -> crate::repo::format::Snapshot {
        let mut s: crate::repo::format::Snapshot = serde_json::from_str(
            r#"{"time":"2026-01-01T00:00:00Z","tree":"0000000000000000000000000000000000000000000000000000000000000000","paths":[],"hostname":"h"}"#,
        )
        .expect("snapshot json");
        s.paths = paths.iter().map(|p| p.to_string()).collect();
        s
    }

    #[test]
    fn the_disk_is_found_by_path_or_by_disk_id() {
        let s = snap(&[
            "/var/lib/one//datastores/0/22/backup/disk.0.3",
            "/var/lib/one//datastores/0/22/backup/disk.1.3",
            "/var/lib/one//datastores/0/22/backup/vm.xml",
        ]);
        let dir = "/var/lib/one//datastores/0/22/backup";
        assert_eq!(
            disk_path(&s, &format!("{dir}/disk.1.3"), 1).as_deref(),
            Some("/var/lib/one//datastores/0/22/backup/disk.1.3")
        );
        // An URL naming an older increment's file still finds the disk in the last snapshot.
        assert_eq!(
            disk_path(&s, "/var/lib/one/datastores/0/22/backup/disk.1.0", 1).as_deref(),
            Some("/var/lib/one//datastores/0/22/backup/disk.1.3")
        );
        assert_eq!(disk_path(&s, &format!("{dir}/disk.2.3"), 2), None);
        assert_eq!(disk_path(&s, "/elsewhere/22/backup/disk.0.3", 0), None);
    }
}
