//! # backstop-tm
//!
//! The host side of a backup (`remotes/tm/<tm>/<action>`): prebackup/postbackup, changed-block
//! tracking with qcow2 bitmaps, direct hand-over of disks, and in-place restore (driver contract §4,
//! §9.2).
//!
//! prebackup and postbackup for powered-off VMs ([`host`]) and for running VMs through libvirt
//! ([`live`]), in the stock staging layout ([`delta`]) or direct, run on the host by the
//! front-end step ([`fe`]); Ceph RBD disks ([`ceph`]); the in-place restore ([`restore`]), its
//! host step ([`restore_host`]) and the TPM archive it unpacks ([`tpm_archive`]). What they
//! leave to the stock scripts they replaced: [`hand_over`].

pub mod ceph;
pub mod ceph_restore;
pub mod delta;
mod error;
pub mod fe;
pub mod hand_over;
pub mod host;
pub mod live;
pub mod qemu;
pub mod restore;
pub mod restore_host;
pub mod snapshot_mode;
pub mod tpm_archive;

pub use error::{Error, ErrorKind};
