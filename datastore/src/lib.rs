//! # backstop-datastore
//!
//! The backup datastore actions (`remotes/datastore/<mad>/<action>`), the repository engine and
//! the storage backends. Each action lives in `actions/<action>.rs`, named as OpenNebula names it.
//!
//! Where a datastore keeps its repositories ([`location::Location`]): over SFTP when
//! `RESTIC_SFTP_SERVER` is set, on S3 when `RESTIC_BACKEND=S3`, otherwise on a local path
//! (`BASE_PATH` on the machine that runs the step: an all-in-one machine or a shared mount).
//!
//! Implemented so far: `monitor` for local datastores, and the repository engine ([`repo`]) on
//! local paths. SFTP, S3 and the other actions are not written yet; the driver reports them as
//! not implemented.

pub mod actions;
pub mod config;
pub mod error;
pub mod location;
pub mod oned;
pub mod repo;
pub mod target;

pub use error::{Error, ErrorKind};
