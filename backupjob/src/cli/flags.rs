//! Flags that stand for template attributes: `create` and `update` of sync and verify jobs
//! take a template file, flags, or both (flags win), as backup jobs' `create` does.

use super::{input, read};
use crate::Error;
use backstop_protocol::template::Template;
use std::path::PathBuf;

/// A template's text with attributes set on top: each given value replaces every attribute of
/// its name (in any case); an empty value removes it. `what` names the text in errors.
pub(super) fn with_flags(
    text: &str,
    what: &str,
    flags: &[(&str, Option<String>)],
) -> Result<String, Error> {
    if flags.iter().all(|(_, v)| v.is_none()) {
        return Ok(text.to_string());
    }
    let mut t = Template::parse(text).map_err(|x| input(format!("{what}: template: {x}")))?;
    for (attr, value) in flags {
        let Some(v) = value else { continue };
        t.attributes.retain(|a| !a.name.eq_ignore_ascii_case(attr));
        // EVERY and SCHEDULE are one choice: setting one drops the other.
        let other = match *attr {
            "EVERY" => Some("SCHEDULE"),
            "SCHEDULE" => Some("EVERY"),
            _ => None,
        };
        if let Some(o) = other {
            t.attributes.retain(|a| !a.name.eq_ignore_ascii_case(o));
        }
        if !v.trim().is_empty() {
            t.push(attr, v.clone());
        }
    }
    t.render().map_err(|x| input(format!("{what}: {x}")))
}

/// The template a `create` or `update` ends with: the file's (else `base`, the stored one for
/// an update, empty for a create) with the flags on top; and what to name in errors.
pub(super) fn template_of(
    file: Option<&PathBuf>,
    base: &str,
    flags: &[(&str, Option<String>)],
) -> Result<(String, String), Error> {
    let (text, what) = match file {
        Some(f) => (read(f)?, f.display().to_string()),
        None if base.is_empty() => (String::new(), "the flags".to_string()),
        None => (base.to_string(), "the job's template".to_string()),
    };
    Ok((with_flags(&text, &what, flags)?, what))
}

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
    fn attributes(&self) -> [(&'static str, Option<String>); 3] {
        [
            ("VMS", self.vms.clone()),
            ("BACKUP_JOBS", self.backup_jobs.clone()),
            ("TAGS", self.tags.clone()),
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
    fn attributes(&self) -> [(&'static str, Option<String>); 2] {
        [
            ("EVERY", self.every.clone()),
            ("SCHEDULE", self.schedule.clone()),
        ]
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SyncJobArgs {
    /// A template file (NAME, DIRECTION, DATASTORE_ID, REMOTE_ID, VMS, ...; docs/sync.md).
    pub(crate) file: Option<PathBuf>,
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
    pub(super) fn attributes(&self) -> Vec<(&'static str, Option<String>)> {
        let n = |v: Option<u64>| v.map(|v| v.to_string());
        vec![
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
        .chain(self.select.attributes())
        .chain(self.when.attributes())
        .collect()
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyJobArgs {
    /// A template file (NAME, DATASTORE_ID, VMS, ...; docs/sync.md).
    pub(crate) file: Option<PathBuf>,
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
    pub(super) fn attributes(&self) -> Result<Vec<(&'static str, Option<String>)>, Error> {
        let n = |v: Option<u64>| v.map(|v| v.to_string());
        Ok(vec![
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
        .chain(self.select.attributes())
        .chain(self.when.attributes())
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_replace_attributes_in_any_case_and_every_and_schedule_exclude_each_other() {
        let text = "name=\"a\"\nEVERY=\"1h\"\nVMS=\"1\"\n";
        let out = with_flags(
            text,
            "t",
            &[
                ("NAME", Some("b".into())),
                ("SCHEDULE", Some("daily".into())),
                ("VMS", Some(String::new())),
                ("TAGS", None),
            ],
        )
        .expect("flags");
        let t = Template::parse(&out).expect("parse");
        assert_eq!(t.get("NAME"), Some("b"));
        assert_eq!(t.get("SCHEDULE"), Some("daily"));
        assert_eq!(t.get("EVERY"), None);
        assert_eq!(t.get("VMS"), None);
        assert_eq!(t.attributes.len(), 2, "{out}");
        assert_eq!(
            with_flags(text, "t", &[("TAGS", None)]).expect("same"),
            text
        );
        assert_eq!(shares("1/5").expect("1/5"), "5");
        assert_eq!(shares("7").expect("7"), "7");
        assert!(shares("2/5").is_err());
    }
}
