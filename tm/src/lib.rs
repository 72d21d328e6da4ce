//! # backstop-tm
//!
//! The host side of a backup (`remotes/tm/<tm>/<action>`): prebackup/postbackup, changed-block
//! tracking with qcow2 bitmaps, direct hand-over of disks, and in-place restore (spec §4,
//! §9.2).
//!
//! Written so far: prebackup and postbackup for powered-off VMs ([`host`]), in the stock
//! staging layout ([`delta`]) or direct, run on the host by the front-end step ([`fe`]); the
//! in-place restore ([`restore`]). prebackup_live and postbackup_live are not written yet.

pub mod delta;
pub mod fe;
pub mod host;
pub mod qemu;
pub mod restore;
