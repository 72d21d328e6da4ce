//! Checking, forgetting and pruning, through rustic_core, each under an exclusive
//! restic-compatible lock (restic takes exclusive locks for the same three).
//!
//! Prune also removes the temporary files of interrupted writes (killed backups leave them;
//! restic ignores them and never removes them).
//!
//! Prune deletes at once (`instant_delete`): rustic_core's default only marks packs and deletes
//! them a day later, which keeps the space; we hold the exclusive lock, so no reader can still
//! need them.

use crate::lock::RetryLock;
use crate::{Error, ErrorKind};
use crate::{Repo, rustic_error, rustic_message};
use rustic_core::repofile::SnapshotId;
use rustic_core::{CheckOptions, LimitOption, PruneOptions, ReadSubsetOption};

/// How much of the data `check` reads.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadData {
    /// Metadata only: snapshots, trees, index, pack headers.
    None,
    /// Every pack, every blob decrypted and hashed.
    All,
    /// A subset, as restic writes it: `10%`, `500M`, or `n/m`.
    Subset(String),
}

/// Prune limits, in restic's forms (`RESTIC_PRUNE_MAX_UNUSED`, `RESTIC_PRUNE_MAX_REPACK`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneLimits {
    /// `0` (OpenNebula's default: repack until nothing is unused), `5%`, `1G`, `unlimited`.
    pub max_unused: Option<String>,
    pub max_repack: Option<String>,
}

impl Repo {
    /// Checks the repository; an error lists what is wrong.
    pub fn check(&self, read: &ReadData, retry: RetryLock) -> Result<(), Error> {
        let _lock = self.lock(true, retry)?;
        let mut opts = CheckOptions::default();
        match read {
            ReadData::None => {}
            ReadData::All => opts = opts.read_data(true),
            ReadData::Subset(s) => {
                let subset: ReadSubsetOption =
                    s.parse().map_err(|e: Box<rustic_core::RusticError>| {
                        Error::invalid(format!("--read-data-subset {s:?}: {}", rustic_message(&e)))
                    })?;
                opts = opts.read_data(true).read_data_subset(subset);
            }
        }
        let repo = self.rustic()?;
        let results = repo
            .check(opts)
            .map_err(|e| rustic_error("check failed", &e))?;
        results.is_ok().map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("the repository has errors: {}", rustic_message(&e)),
            )
        })
    }

    /// Removes snapshots (ids or unique prefixes); returns how many.
    pub fn forget(&self, ids: &[String], retry: RetryLock) -> Result<usize, Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        let lock = self.lock(true, retry)?;
        self.refresh_retention()?;
        let repo = self.rustic()?;
        let snaps = repo
            .get_snapshots_from_strs(ids, |_| true)
            .map_err(|e| rustic_error("cannot find the snapshots to forget", &e))?;
        let ids: Vec<SnapshotId> = snaps.iter().map(|s| s.id).collect();
        lock.check()?;
        repo.delete_snapshots(&ids)
            .map_err(|e| rustic_error("cannot forget snapshots", &e))?;
        Ok(ids.len())
    }

    /// Removes data no snapshot needs; returns the bytes removed from packs that were deleted.
    pub fn prune(&self, limits: &PruneLimits, retry: RetryLock) -> Result<u64, Error> {
        let lock = self.lock(true, retry)?;
        self.refresh_retention()?;
        let limit = |what: &str, v: &Option<String>, default: &str| -> Result<LimitOption, Error> {
            let text = v.as_deref().unwrap_or(default);
            text.parse().map_err(|e: Box<rustic_core::RusticError>| {
                Error::invalid(format!("{what} {text:?}: {}", rustic_message(&e)))
            })
        };
        let opts = PruneOptions::default()
            .instant_delete(true)
            .max_unused(limit("RESTIC_PRUNE_MAX_UNUSED", &limits.max_unused, "0")?)
            .max_repack(limit(
                "RESTIC_PRUNE_MAX_REPACK",
                &limits.max_repack,
                "unlimited",
            )?);
        let repo = self.rustic()?;
        let before = self.data_size()?;
        let plan = repo
            .prune_plan(&opts)
            .map_err(|e| rustic_error("cannot plan the prune", &e))?;
        // Nothing is deleted unless the exclusive lock still stands.
        lock.check()?;
        repo.prune(&opts, plan)
            .map_err(|e| rustic_error("prune failed", &e))?;
        // Still under the exclusive lock: no writer runs, so interrupted writes are garbage.
        self.backend().remove_temp_files()?;
        Ok(before.saturating_sub(self.data_size()?))
    }

    /// Bytes in pack files.
    pub fn data_size(&self) -> Result<u64, Error> {
        Ok(self
            .backend()
            .list_with_size(rustic_core::FileType::Pack)
            .map_err(|e| rustic_error("cannot list packs", &e))?
            .iter()
            .map(|(_, s)| u64::from(*s))
            .sum())
    }
}
