//! Flags that stand for template attributes: `create` and `update` of sync and verify jobs
//! take a template file, flags, or both (flags win), as backup jobs' `create` does.

use super::{file_text, input};
use backstop_backupjob::Error;
use backstop_backupjob::ops::definitions::{Definition, Setting};
use std::path::PathBuf;

/// A `YES`/`NO` flag: given alone it means `YES`.
fn yes_no(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.to_ascii_uppercase())
}

/// The repositories and snapshots a sync or verify job takes (docs/sync.md).
#[derive(Debug, clap::Args)]
struct SelectArgs {
    /// VMS: VM ids (22,23; exclude:24).
    #[arg(long)]
    vms: Option<String>,
    /// BACKUP_JOBS: backup job ids (exclude:<id> forms too).
    #[arg(long)]
    backup_jobs: Option<String>,
    /// TAGS: patterns on snapshot tags (exclude:<pattern> forms too).
    #[arg(long)]
    tags: Option<String>,
}

impl SelectArgs {
    fn attributes(&self) -> [Setting; 3] {
        [
            Setting::new("VMS", self.vms.clone()),
            Setting::new("BACKUP_JOBS", self.backup_jobs.clone()),
            Setting::new("TAGS", self.tags.clone()),
        ]
    }
}

/// When the scheduler daemon runs a sync or verify job.
#[derive(Debug, clap::Args)]
struct WhenArgs {
    /// EVERY: 30m, 6h, 1d ('' removes it).
    #[arg(long)]
    every: Option<String>,
    /// SCHEDULE: calendar times, e.g. "mon..fri 02:30" ('' removes it).
    #[arg(long)]
    schedule: Option<String>,
}

impl WhenArgs {
    fn attributes(&self) -> [Setting; 2] {
        [
            Setting::new("EVERY", self.every.clone()),
            Setting::new("SCHEDULE", self.schedule.clone()),
        ]
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SyncJobArgs {
    /// A template file (NAME, DIRECTION, DATASTORE_ID, REMOTE_ID, VMS, ...; docs/sync.md).
    pub(crate) file: Option<PathBuf>,
    /// NAME.
    #[arg(long)]
    name: Option<String>,
    /// DIRECTION: push (datastore to remote) or pull.
    #[arg(long)]
    direction: Option<String>,
    /// DATASTORE_ID: the runner's backup datastore.
    #[arg(long)]
    datastore: Option<u64>,
    /// REMOTE_ID.
    #[arg(long)]
    remote: Option<u64>,
    #[command(flatten)]
    select: SelectArgs,
    /// TRANSFER_LAST: only the newest N snapshots of each VM.
    #[arg(long)]
    transfer_last: Option<u64>,
    /// REMOVE_VANISHED (alone: yes).
    #[arg(long, num_args = 0..=1, default_missing_value = "yes")]
    remove_vanished: Option<String>,
    /// MAX_DELETE: the guard of REMOVE_VANISHED.
    #[arg(long)]
    max_delete: Option<u64>,
    /// VERIFIED_ONLY (alone: yes).
    #[arg(long, num_args = 0..=1, default_missing_value = "yes")]
    verified_only: Option<String>,
    /// RESYNC_CORRUPT (alone: yes).
    #[arg(long, num_args = 0..=1, default_missing_value = "yes")]
    resync_corrupt: Option<String>,
    /// RATE_IN in KiB/s.
    #[arg(long)]
    rate_in: Option<u64>,
    /// RATE_OUT in KiB/s.
    #[arg(long)]
    rate_out: Option<u64>,
    /// WORKERS: blobs read at once.
    #[arg(long)]
    workers: Option<u64>,
    /// PARALLEL: repositories copied at once.
    #[arg(long)]
    parallel: Option<u64>,
    #[command(flatten)]
    when: WhenArgs,
}

impl SyncJobArgs {
    /// The template file (read) and the attributes the flags set.
    pub(super) fn definition(&self) -> Result<Definition, Error> {
        let n = |v: Option<u64>| v.map(|v| v.to_string());
        let settings = [
            ("NAME", self.name.clone()),
            ("DIRECTION", self.direction.clone()),
            ("DATASTORE_ID", n(self.datastore)),
            ("REMOTE_ID", n(self.remote)),
            ("TRANSFER_LAST", n(self.transfer_last)),
            ("REMOVE_VANISHED", yes_no(&self.remove_vanished)),
            ("MAX_DELETE", n(self.max_delete)),
            ("VERIFIED_ONLY", yes_no(&self.verified_only)),
            ("RESYNC_CORRUPT", yes_no(&self.resync_corrupt)),
            ("RATE_IN", n(self.rate_in)),
            ("RATE_OUT", n(self.rate_out)),
            ("WORKERS", n(self.workers)),
            ("PARALLEL", n(self.parallel)),
        ]
        .into_iter()
        .map(|(name, value)| Setting::new(name, value))
        .chain(self.select.attributes())
        .chain(self.when.attributes())
        .collect();
        Ok(Definition {
            file: self.file.as_deref().map(file_text).transpose()?,
            settings,
        })
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyJobArgs {
    /// A template file (NAME, DATASTORE_ID, VMS, ...; docs/sync.md).
    pub(crate) file: Option<PathBuf>,
    /// NAME.
    #[arg(long)]
    name: Option<String>,
    /// DATASTORE_ID: the runner's backup datastore.
    #[arg(long)]
    datastore: Option<u64>,
    #[command(flatten)]
    select: SelectArgs,
    /// OUTDATED_AFTER in days.
    #[arg(long)]
    outdated_after: Option<u64>,
    /// IGNORE_VERIFIED (alone: yes).
    #[arg(long, num_args = 0..=1, default_missing_value = "yes")]
    ignore_verified: Option<String>,
    /// SHARES as restic's form 1/M (or M): each run reads the next M-th of the packs.
    #[arg(long)]
    read_data_subset: Option<String>,
    /// HEAL (alone: yes).
    #[arg(long, num_args = 0..=1, default_missing_value = "yes")]
    heal: Option<String>,
    /// PARALLEL: repositories read at once.
    #[arg(long)]
    parallel: Option<u64>,
    #[command(flatten)]
    when: WhenArgs,
}

/// `--read-data-subset`: `1/M` or `M` is SHARES=M. Another `n/M` is refused: a verify job
/// reads the next share at each run, it does not stay on one.
fn shares(v: &str) -> Result<String, Error> {
    let m = match v.trim().split_once('/') {
        None => v.trim(),
        Some(("1", m)) => m.trim(),
        Some(_) => {
            return Err(input(format!(
                "--read-data-subset {v:?}: give 1/M (each run reads the next M-th of the packs)"
            )));
        }
    };
    Ok(m.to_string())
}

impl VerifyJobArgs {
    /// The template file (read) and the attributes the flags set.
    pub(super) fn definition(&self) -> Result<Definition, Error> {
        let n = |v: Option<u64>| v.map(|v| v.to_string());
        let settings = [
            ("NAME", self.name.clone()),
            ("DATASTORE_ID", n(self.datastore)),
            ("OUTDATED_AFTER", n(self.outdated_after)),
            ("IGNORE_VERIFIED", yes_no(&self.ignore_verified)),
            (
                "SHARES",
                self.read_data_subset.as_deref().map(shares).transpose()?,
            ),
            ("HEAL", yes_no(&self.heal)),
            ("PARALLEL", n(self.parallel)),
        ]
        .into_iter()
        .map(|(name, value)| Setting::new(name, value))
        .chain(self.select.attributes())
        .chain(self.when.attributes())
        .collect();
        Ok(Definition {
            file: self.file.as_deref().map(file_text).transpose()?,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_data_subset_is_one_share_of_m() {
        assert_eq!(shares("1/5").expect("1/5"), "5");
        assert_eq!(shares("7").expect("7"), "7");
        assert!(shares("2/5").is_err());
    }
}
