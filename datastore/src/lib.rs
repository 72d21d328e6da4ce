//! # backstop-datastore
//!
//! The backup datastore actions (`remotes/datastore/<mad>/<action>`), the repository engine and
//! the storage backends. Each action lives in `actions/<action>.rs`, named as OpenNebula names it.
//!
//! Where a datastore keeps its repositories ([`location::Location`]): over SFTP when
//! `RESTIC_SFTP_SERVER` is set, on S3 when `RESTIC_BACKEND=S3`, otherwise on a local path
//! (`BASE_PATH` on the machine that runs the step: an all-in-one machine or a shared mount).
//!
//! Every datastore action is written, for local and SFTP repositories; [`oned`] is the client
//! for oned's XML-RPC API that `restore` and the downloader use. S3 is not written yet, nor the
//! handling of increment chains the stock restic driver made (see the README's status).

pub mod actions;
pub mod backup_image;
pub mod config;
pub mod disk_source;
pub mod error;
pub mod layout;
pub mod location;
pub mod oned;
pub mod process;
pub mod remote;
pub mod repo;
pub mod running;
pub mod settings;
pub mod stock_chain;
pub mod target;
pub mod vm_snapshots;

pub use error::{Error, ErrorKind};
