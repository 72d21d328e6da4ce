//! The staging directory: the contract between the transfer manager's prebackup and the
//! datastore's backup (driver contract §4.2). The stock layout is `vm.xml` (base64 of the VM document),
//! `disk.tpm.0` and one qcow2 file `disk.<id>.<increment>` per disk.
//!
//! backstop's direct mode copies no disk: prebackup leaves `backstop.json` ([`DirectManifest`])
//! next to `vm.xml`, naming each disk file and the persistent dirty bitmap whose extents
//! changed since the parent increment; the datastore's backup reads the disk itself.

use serde::{Deserialize, Serialize};

/// The manifest's file name in the staging directory.
pub const MANIFEST: &str = "backstop.json";

/// What prebackup leaves for a direct-mode backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectManifest {
    /// 1.
    pub version: u32,
    pub vm_id: u64,
    /// The increment this backup is (0 for FULL or a new chain).
    pub increment: u64,
    pub disks: Vec<DirectDisk>,
}

/// One disk to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectDisk {
    pub disk_id: u32,
    /// The disk file on the host (symlinks resolved).
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The persistent bitmap holding the changes since the parent increment; `None` means
    /// read the whole disk.
    pub bitmap: Option<String>,
    /// Why a whole read was chosen for an increment (a missing or inconsistent bitmap).
    pub full_reason: Option<String>,
    /// Read the disk from this NBD export instead of the file (libvirt's pull-mode backup of
    /// a running VM); `bitmap` then names the export's dirty-bitmap context (`backup-vda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdSource>,
    /// Open the file without qemu's image lock: the base under a live snapshot's overlay,
    /// which the running VM holds open but no longer writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Read the disk from this Ceph RBD snapshot (through librbd) instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<RbdSource>,
    /// INCREMENT_MODE=SNAPSHOT: the changes since the parent increment are the clusters the
    /// qcow2 file at `path` (the overlay of the snapshot chain the parent backup left) holds
    /// itself; the disk is read through its backing chain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layer: bool,
}

/// A Ceph RBD image at the snapshot prebackup took, and the parent increment's snapshot whose
/// differences (`rbd diff`) are the changed extents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdSource {
    pub pool: String,
    pub image: String,
    pub snapshot: String,
    /// `None`: read the whole image (a FULL, a new chain, or a parent snapshot that is gone).
    pub parent_snapshot: Option<String>,
    /// CEPH_CONF, CEPH_USER and CEPH_KEY of the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<String>,
}

/// An NBD export on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdSource {
    pub socket: String,
    pub export: String,
}

/// The name of the bitmap that tracks changes since increment `n` of VM `vm_id` (driver contract §4.3).
pub fn bitmap_name(vm_id: u64, n: u64) -> String {
    format!("one-{vm_id}-{n}")
}

/// What the backup's error line says when it left [`reread_marker`] notes: a runner that sees
/// it may try once more at once, and backstop's prebackup then reads those disks whole.
pub const REREAD_NEXT_ATTEMPT: &str =
    "backstop's prebackup reads the whole disk at the next attempt";

/// The file in the VM's directory on the host that asks prebackup to read disk `disk_id`
/// whole at the next increment: the backup's host step leaves it when the staged changes could
/// not be completed because the parent backup lacks data a verify job healed away
/// (docs/host-side.md). postbackup removes it after a successful backup.
pub fn reread_marker(vm_dir: &std::path::Path, disk_id: u32) -> std::path::PathBuf {
    vm_dir.join(format!(".backstop-reread.{disk_id}"))
}
