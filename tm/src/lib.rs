//! # backstop-tm
//!
//! The host side of a backup (`remotes/tm/<tm>/<action>`): prebackup/postbackup for stopped and
//! running VMs, changed-block tracking with qcow2 bitmaps, direct streaming of disks, and
//! in-place restore (spec §4, §9.2).
//!
//! Nothing here is written yet: the driver answers every transfer-manager action with
//! "not implemented", and `install.sh --with-tm` refuses to replace the stock actions until it is.
