//! One module per action, named as OpenNebula names it.

pub mod backup;
pub mod backup_cancel;
pub mod chain;
pub mod downloader;
pub mod increment_flatten;
pub mod ls;
pub mod monitor;
pub mod restore;
pub mod rm;
pub mod stat;

use crate::Error;
use crate::config::DriverConfig;
use crate::repo::Repo;
use crate::repo::format::Snapshot;
use crate::repo::lock::RetryLock;
use crate::target::RepoTarget;
use backstop_protocol::message::{Datastore, Vm};

/// The URL scheme of this datastore's backups: `restic` when backstop replaces the stock restic
/// driver (drop-in), `backstop` side by side (downloader.sh has an arm for it).
pub fn scheme(ds: &Datastore) -> &'static str {
    if ds.ds_mad == "restic" {
        "restic"
    } else {
        "backstop"
    }
}

/// Opens an existing repository for an action that reads or forgets.
pub fn open(ds: &Datastore, repo_id: String, cfg: &DriverConfig) -> Result<Repo, Error> {
    RepoTarget::new(ds, repo_id)?.open(ds, cfg, false)
}

/// How long actions wait for a conflicting repository lock: `BACKSTOP_LOCK_WAIT` seconds from
/// the datastore, default 10 minutes (the stock driver retries for 5 to 15 minutes). Every
/// action that reaches a repository has checked the datastore's settings on the way
/// ([`RepoTarget::storage`]), so a bad value was refused there.
pub fn lock_wait(ds: &Datastore) -> RetryLock {
    crate::settings::Settings::of(ds)
        .map(|s| s.lock_wait)
        .unwrap_or(RetryLock(std::time::Duration::from_secs(600)))
}

/// The VM saved in a snapshot's `vm.xml` (base64 of the VM XML, as prebackup writes it).
pub fn saved_vm(repo: &Repo, source: &str, snap: &Snapshot, wait: RetryLock) -> Result<Vm, Error> {
    let path = snap
        .paths
        .iter()
        .find(|p| p.rsplit('/').next() == Some("vm.xml"))
        .ok_or_else(|| {
            Error::new(
                crate::ErrorKind::Repository,
                format!("backup {source} holds no vm.xml"),
            )
        })?;
    let mut bytes = Vec::new();
    repo.dump(source, path, &mut bytes, wait)?;
    backup::decode_vm_xml(&bytes).map_err(|e| {
        Error::new(
            crate::ErrorKind::Repository,
            format!("the vm.xml of backup {source}: {e}"),
        )
    })
}
