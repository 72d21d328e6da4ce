//! # backstop-datastore
//!
//! The backup datastore actions (`remotes/datastore/<mad>/<action>`), one module per action in
//! [`actions`], named as OpenNebula names it, and what two actions share, in modules named for
//! what it is:
//!
//! - where a datastore's repositories are ([`location`], [`target`]) and its attributes, read
//!   and checked once ([`settings`]); the installation's configuration ([`config`]);
//! - the layout and naming rules shared with OpenNebula ([`layout`]), a VM's snapshots and how
//!   a URL names them ([`vm_snapshots`]), a point of a backup image ([`backup_image`]), a URL's
//!   disk as a qcow2 stream ([`disk_source`]), chains the stock restic driver stored
//!   ([`stock_chain`]);
//! - running a step on another machine ([`remote`]), backups running here ([`running`]),
//!   oned's XML-RPC API ([`oned`]).
//!
//! The repository engine is its own crate, `backstop-repo` (re-exported as [`repo`]): it
//! knows nothing of OpenNebula, and Cargo keeps it that way.
//!
//! Every action is written for local and SFTP repositories, backstop's own backups and the
//! stock restic driver's (full backups and increment chains). S3 is not written yet (see the
//! README's status). The design notes are in `docs/` at the repository's root.

pub mod actions;
pub mod backup_image;
pub mod disk_source;
mod error;
pub mod layout;
pub mod location;
pub mod running;
pub mod settings;
pub mod stock_chain;
pub mod target;
pub mod vm_snapshots;

/// The driver configuration, the oned client and remote execution live with the protocol
/// (the host side uses them too); re-exported under their old names.
pub use backstop_protocol::{config, oned, remote};
/// The repository engine (its own crate: it knows nothing of OpenNebula).
pub use backstop_repo as repo;
pub use error::{Error, ErrorKind};
