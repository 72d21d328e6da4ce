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

/// The disk id of a disk file a snapshot holds: `disk.<id>.<increment>` (backstop's and the
/// stock driver's qcow2 files), or the stock driver's rbd-format files `disk.<id>.rbd2` and
/// `disk.<id>.<increment>.rbdiff` (see [`is_rbd_file`]).
pub fn stored_disk(name: &str) -> Option<u32> {
    if let Some(Staged::Disk { disk_id, .. }) = staged_kind(name) {
        return Some(disk_id);
    }
    let rest = name.strip_prefix("disk.")?;
    let (id, tail) = rest.split_once('.')?;
    let rbd = tail == "rbd2"
        || tail
            .strip_suffix(".rbdiff")
            .is_some_and(|inc| inc.parse::<u64>().is_ok());
    rbd.then(|| id.parse().ok()).flatten()
}

/// The disk id and increment of a disk file a snapshot holds or prebackup staged:
/// `disk.<id>.<n>` and `disk.<id>.<n>.rbdiff` are increment n, `disk.<id>.rbd2` increment 0.
pub fn stored_increment(name: &str) -> Option<(u32, u64)> {
    let disk_id = stored_disk(name)?;
    if name.ends_with(".rbd2") {
        return Some((disk_id, 0));
    }
    let inc = name.trim_end_matches(".rbdiff").rsplit('.').next()?;
    Some((disk_id, inc.parse().ok()?))
}

/// Whether a disk file is one of the stock driver's rbd-format files: `disk.<id>.rbd2` (`rbd
/// export --export-format 2` of the first increment) or `disk.<id>.<n>.rbdiff` (`rbd
/// export-diff` from increment n-1).
pub fn is_rbd_file(name: &str) -> bool {
    stored_disk(name).is_some() && (name.ends_with(".rbd2") || name.ends_with(".rbdiff"))
}

/// The file name of a path.
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// vm.xml as prebackup writes it: the VM XML in base64, wrapped at 60 columns.
pub fn decode_vm_xml(bytes: &[u8]) -> Result<Vm, VmXmlError> {
    let roots = backstop_protocol::input::decode_siblings(
        bytes,
        backstop_protocol::input::Encoding::Base64,
    )?;
    Ok(backstop_protocol::message::vm_from_siblings(&roots)?)
}

/// Why a vm.xml cannot be read: not base64 XML, or not a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmXmlError {
    #[error(transparent)]
    Encoding(#[from] backstop_protocol::input::InputError),
    #[error(transparent)]
    Vm(#[from] backstop_protocol::message::MessageError),
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

/// The disk files of a snapshot: disk id to path (any name [`stored_disk`] knows).
pub fn snapshot_disks(paths: &[String]) -> std::collections::BTreeMap<u32, String> {
    paths
        .iter()
        .filter_map(|p| Some((stored_disk(base_name(p))?, p.clone())))
        .collect()
}

/// The URL's own path when the snapshot holds it, else the snapshot's file of the same disk
/// in the same directory (`disk.<id>.<any increment>`, or an rbd-format file of it).
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
    snap.paths
        .iter()
        .find(|p| {
            let parts = norm(p);
            parts
                .split_last()
                .is_some_and(|(file, d)| d == dir && stored_disk(file) == Some(disk_id))
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

    #[test]
    fn stock_rbd_files_are_disks_of_their_own_kind() {
        for (name, disk, rbd) in [
            ("disk.0.3", Some(0), false),
            ("disk.0.rbd2", Some(0), true),
            ("disk.12.4.rbdiff", Some(12), true),
            ("disk.1.rbdiff", None, false),
            ("disk.x.rbd2", None, false),
            ("disk.1.2.rbd2", None, false),
            ("disk.tpm.0", None, false),
            ("disk.1.-2.rbdiff", None, false),
        ] {
            assert_eq!(stored_disk(name), disk, "{name}");
            assert_eq!(is_rbd_file(name), rbd, "{name}");
            let inc = match name {
                "disk.0.3" => Some((0, 3)),
                "disk.0.rbd2" => Some((0, 0)),
                "disk.12.4.rbdiff" => Some((12, 4)),
                _ => None,
            };
            assert_eq!(stored_increment(name), inc, "{name}");
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
