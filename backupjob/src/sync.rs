//! Sync jobs (docs/sync.md): a second copy of backup repositories, between a backup datastore of
//! the runner and a remote, by blob id ([`backstop_datastore::repo::copy`]).
//!
//! A sync job's template:
//! - `NAME`; `DIRECTION` `PUSH` (datastore to remote, the default) or `PULL` (remote to
//!   datastore); `DATASTORE_ID` (a backup datastore) and `REMOTE_ID` (a remote);
//! - the repositories and snapshots: `VMS` (VM ids: repositories `<vm_id>`), `BACKUP_JOBS`
//!   (backup job ids: repositories `job_<bj>`), `TAGS` (patterns on snapshot tags), each item
//!   possibly `exclude:<item>`; with no repository named, every one of the source datastore
//!   ([`crate::filters`]);
//! - `TRANSFER_LAST`: only the newest N snapshots of each VM (its `one-<vm>` tag); 0 (the
//!   default) copies all;
//! - `VERIFIED_ONLY` (`YES`/`NO`, PUSH only): only snapshots a verify job found clean;
//! - `EVERY` (`30m`, `6h`, `1d`, or seconds): the scheduler daemon runs the job when that long
//!   has passed since its last run started (and at its first pass); or `SCHEDULE`
//!   (`mon..fri 02:30`, `*:0/15`, `daily`: [`crate::calendar`]) at the local times it names;
//! - `REMOVE_VANISHED` (`YES`/`NO`): copies at the destination that this very job made (their
//!   `copied-by:<id>` tag names the job's own id, kept in the state: see
//!   [`backstop_datastore::repo::copy::CopierId`]) from this very source repository (their
//!   `copied-from:<id>` tag names its id, see [`backstop_datastore::repo::copy::copied_from`])
//!   and whose original is gone from it are forgotten there (never the other way round;
//!   snapshots made at the destination itself, copies by another job, from elsewhere or with
//!   no such tags, are never touched), at most `MAX_DELETE` (default 10) per repository and
//!   run: a run that would delete more deletes nothing and fails, naming the count;
//! - `RESYNC_CORRUPT` (`YES`/`NO`, PULL only): copies a verify job found damaged at the
//!   destination (and healed) are walked again and what they lack is copied again;
//! - `RATE_IN`, `RATE_OUT` (KiB/s, 0 for none): one limit for the whole run on what is read
//!   from the source and on what is written to the destination; `WORKERS` (default 4): blobs
//!   read from the source at once; `PARALLEL` (default 2): repositories copied at once.
//!
//! A run copies its repositories, `PARALLEL` at a time, creating each at the destination with
//! the destination's password when it is missing; a repository that fails is named and the
//! others still run. Each run is recorded (started, ended, snapshots and bytes, errors).

use crate::Error;
use crate::calendar::When;
use crate::error::TemplateError;
use crate::error::input;
use crate::filters::Selection;
use crate::job_template::{JobBasics, number_or, required_number, yes_no};
use crate::model::state_datastore as datastore;
use crate::pool::{Report, Running, each_at_once, with_ticks};
use crate::state::State;
use crate::state::sync::SyncRun;
use backstop_datastore::config::DriverConfig;
use backstop_datastore::repo::copy::{CopierId, CopyOptions, CopyStats, copy};
use backstop_datastore::repo::format::RepoId;
use backstop_datastore::target::RepoTarget;
use backstop_protocol::message::Datastore;
use backstop_protocol::template::Template;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Push,
    Pull,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "PUSH",
            Direction::Pull => "PULL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTemplate {
    pub name: String,
    pub direction: Direction,
    pub datastore_id: u64,
    pub remote_id: u64,
    pub select: Selection,
    pub transfer_last: usize,
    pub verified_only: bool,
    /// When the scheduler daemon runs it (`EVERY` or `SCHEDULE`); `None`: only when asked.
    pub when: Option<When>,
    /// Forget copies whose original vanished, at most this many per repository.
    pub remove_vanished: Option<usize>,
    pub resync_corrupt: bool,
    /// KiB/s read from the source; 0 for no limit.
    pub rate_in: u64,
    /// KiB/s written to the destination; 0 for no limit.
    pub rate_out: u64,
    pub workers: usize,
    /// Repositories copied at once.
    pub parallel: usize,
}

impl SyncTemplate {
    pub fn parse(text: &str) -> Result<SyncTemplate, TemplateError> {
        let t = Template::parse(text).map_err(|e| TemplateError(e.to_string()))?;
        let basics = JobBasics::parse(&t)?;
        let direction = match t.get("DIRECTION").map(|d| d.trim().to_ascii_uppercase()) {
            None => Direction::Push,
            Some(d) if d == "PUSH" => Direction::Push,
            Some(d) if d == "PULL" => Direction::Pull,
            Some(d) => {
                return Err(TemplateError(format!(
                    "DIRECTION {d:?} is not PUSH or PULL"
                )));
            }
        };
        let optional = |name: &str, default: u64| number_or(&t, name, default);
        let transfer_last = optional("TRANSFER_LAST", 0)? as usize;
        let workers = optional("WORKERS", 4)?;
        if !(1..=64).contains(&workers) {
            return Err(TemplateError(format!(
                "WORKERS {workers} is not between 1 and 64"
            )));
        }
        let verified_only = yes_no(&t, "VERIFIED_ONLY", false)?;
        if verified_only && direction == Direction::Pull {
            return Err(
                "VERIFIED_ONLY is for PUSH: verdicts are kept for the runner's own datastores"
                    .into(),
            );
        }
        let remove_vanished = match yes_no(&t, "REMOVE_VANISHED", false)? {
            false => None,
            true => Some(optional("MAX_DELETE", 10)? as usize),
        };
        let resync_corrupt = yes_no(&t, "RESYNC_CORRUPT", false)?;
        if resync_corrupt && direction == Direction::Push {
            return Err(
                "RESYNC_CORRUPT is for PULL: verdicts are kept for the runner's own datastores"
                    .into(),
            );
        }
        Ok(SyncTemplate {
            when: basics.when,
            resync_corrupt,
            remove_vanished,
            name: basics.name,
            direction,
            verified_only,
            datastore_id: basics.datastore_id,
            remote_id: required_number(&t, "REMOTE_ID")?,
            select: basics.select,
            transfer_last,
            rate_in: optional("RATE_IN", 0)?,
            rate_out: optional("RATE_OUT", 0)?,
            workers: workers as usize,
            parallel: basics.parallel,
        })
    }
}

/// The snapshots to copy: all, or the newest `last` of each VM (by its `one-<vm>` tag).
fn chosen(
    snaps: &[(RepoId, backstop_datastore::repo::format::Snapshot)],
    last: usize,
) -> Vec<RepoId> {
    if last == 0 {
        return snaps.iter().map(|(id, _)| *id).collect();
    }
    let vm_of = |s: &backstop_datastore::repo::format::Snapshot| {
        s.tags.iter().find(|t| t.starts_with("one-")).cloned()
    };
    let mut keep = Vec::new();
    for (k, (id, s)) in snaps.iter().enumerate() {
        let newer = snaps[k + 1..]
            .iter()
            .filter(|(_, o)| vm_of(o) == vm_of(s))
            .count();
        if newer < last {
            keep.push(*id);
        }
    }
    keep
}

/// What a run does in one repository, decided from the two repositories' snapshot lists
/// alone, before anything is written: a value, shown and tested as it is, then carried out
/// ([`sync_repository`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct SyncPlan {
    /// The source's snapshots to copy, oldest first (the copy skips those the destination
    /// has already, but for `resync`).
    copy: Vec<RepoId>,
    /// Of those, the ones behind a copy a verify job found damaged at the destination: walked
    /// again, and what the copy lacks copied again.
    resync: Vec<RepoId>,
    /// REMOVE_VANISHED: the copies to forget, and those left alone (counted).
    vanished: Sorted,
}

/// The plan for one repository: the snapshots the job selects (`TAGS`, `TRANSFER_LAST`;
/// `clean`: only these, for `VERIFIED_ONLY`), the sources of the `damaged` copies (their ids
/// at the destination) to resync, and with `REMOVE_VANISHED` and a job (`me`) the copies
/// [`vanished`] sorts out.
fn plan(
    (source_repo, source): (
        RepoId,
        &[(RepoId, backstop_datastore::repo::format::Snapshot)],
    ),
    destination: &[(RepoId, backstop_datastore::repo::format::Snapshot)],
    job: &SyncTemplate,
    (clean, damaged): (Option<&[String]>, &[String]),
    me: Option<&CopierId>,
) -> SyncPlan {
    let taken: Vec<_> = source
        .iter()
        .filter(|(_, s)| job.select.takes(&s.tags))
        .cloned()
        .collect();
    let mut copy = chosen(&taken, job.transfer_last);
    if let Some(clean) = clean {
        copy.retain(|id| clean.contains(&id.to_hex()));
    }
    // A run always copies as its job (`run_repositories`); with no job there would be no
    // copies of its own to forget.
    let vanished = match (job.remove_vanished, me) {
        (Some(_), Some(me)) => vanished((source_repo, source), me, destination),
        _ => Sorted::default(),
    };
    // The source snapshots behind the damaged copies.
    let mut resync = Vec::new();
    for (id, s) in destination {
        if let Some(o) = s.original.filter(|_| damaged.contains(&id.to_hex())) {
            resync.extend(
                source
                    .iter()
                    .filter(|(sid, ss)| ss.original.unwrap_or(*sid) == o)
                    .map(|(sid, _)| *sid),
            );
        }
    }
    for r in &resync {
        if !copy.contains(r) {
            copy.push(*r);
        }
    }
    SyncPlan {
        copy,
        resync,
        vanished,
    }
}

/// One repository: opened at both ends (created at the destination), planned ([`plan`]),
/// then the vanished copies forgotten and the snapshots copied.
fn sync_repository(
    (from, to): (&Datastore, &Datastore),
    repo_id: &str,
    job: &SyncTemplate,
    (clean, damaged): (Option<&[String]>, &[String]),
    (cfg, options): (&DriverConfig, &CopyOptions),
) -> Result<(CopyStats, Vanished), Error> {
    let (src_at, dst_at) = (
        RepoTarget::new(from, repo_id.to_string())?,
        RepoTarget::new(to, repo_id.to_string())?,
    );
    // Both repositories opened at once (two key derivations, two connections); one missing at
    // the destination is created only after the source opened, so a bad source leaves nothing
    // behind at the destination.
    let (src, dst) = std::thread::scope(|s| {
        let dst = s.spawn(|| dst_at.open(to, cfg, false));
        (src_at.open(from, cfg, false), dst.join())
    });
    let src = src?;
    let dst = match dst {
        Ok(Ok(repo)) => repo,
        _ => dst_at.open(to, cfg, true)?,
    };
    let listed = |repo: &backstop_datastore::repo::Repo| -> Result<Vec<_>, Error> {
        Ok(repo
            .all_snapshots()?
            .into_iter()
            .map(|(id, s, _)| (id, s))
            .collect())
    };
    let snaps = listed(&src)?;
    // The destination's snapshots matter only to forget vanished copies or resync damaged ones.
    let forgets = job.remove_vanished.is_some() && options.copied_by.is_some();
    let at_destination = if forgets || !damaged.is_empty() {
        listed(&dst)?
    } else {
        Vec::new()
    };
    let plan = plan(
        (src.id(), &snaps),
        &at_destination,
        job,
        (clean, damaged),
        options.copied_by.as_ref(),
    );
    let removed = match job.remove_vanished {
        Some(max) => remove_vanished(&dst, &plan.vanished, repo_id, max)?,
        None => Vanished::default(),
    };
    let options = CopyOptions {
        resync: plan.resync,
        ..options.clone()
    };
    let (_, stats) = copy(&src, &dst, &plan.copy, &options)?;
    Ok((stats, removed))
}

/// What REMOVE_VANISHED did in one repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Vanished {
    /// This job's copies from this source whose original it no longer has: forgotten.
    forgotten: usize,
    /// Copies whose original this source does not have and that record no job (made by hand,
    /// by `restic copy`, or by backstop before copies named their job), not recorded as from
    /// another source: left alone.
    unrecorded: usize,
    /// Copies recorded as from this source, whose original it does not have, made by another
    /// job (a job deleted and created again, another runner's, or a source posing as this
    /// one): left alone.
    others: usize,
}

/// The destination's copies whose original the source lacks, sorted out by [`vanished`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Sorted {
    /// Forgotten: this job's copies from this source.
    gone: Vec<RepoId>,
    /// Left alone, counted: copies recording no job (and no other source).
    unrecorded: Vec<RepoId>,
    /// Left alone, counted: copies from this source by another job.
    others: Vec<RepoId>,
}

/// Which of the destination's snapshots REMOVE_VANISHED forgets: the copies recorded as made
/// by this job (`me`, their single `copied-by:` tag) from `source_repo` (their single
/// `copied-from:` tag) whose original the source no longer holds.
///
/// The job's id decides: it lives in the runner's state and every copy's `copied-by:` tag is
/// written by the job that copies (a claim the source's snapshot makes is dropped), so no
/// repository can make a job take another's copies. The source's id cannot decide alone: the
/// source's config says it, so a hostile source may claim the id of a repository another job
/// copies from. The source's id still has to match, so a job whose source was replaced (re-
/// created, another site at the address) does not take what it copied from the one before for
/// vanished from the new one. Copies recording no job, or another job, are never taken; an
/// empty or hostile source must not make a job forget a third site's copies.
fn vanished(
    (source_repo, source): (
        RepoId,
        &[(RepoId, backstop_datastore::repo::format::Snapshot)],
    ),
    me: &CopierId,
    destination: &[(RepoId, backstop_datastore::repo::format::Snapshot)],
) -> Sorted {
    use backstop_datastore::repo::copy::{copied_by, copied_from};
    let there: std::collections::HashSet<RepoId> = source
        .iter()
        .map(|(id, s)| s.original.unwrap_or(*id))
        .collect();
    let mut sorted = Sorted::default();
    for (id, s) in destination {
        // Not a copy (made at the destination), or its original is still at the source.
        if s.original.is_none_or(|o| there.contains(&o)) {
            continue;
        }
        let from = copied_from(s);
        let elsewhere = from.is_some_and(|f| f != source_repo);
        match copied_by(s) {
            Some(by) if by == *me && from == Some(source_repo) => sorted.gone.push(*id),
            None if !elsewhere => sorted.unrecorded.push(*id),
            Some(by) if by != *me && from == Some(source_repo) => sorted.others.push(*id),
            _ => {}
        }
    }
    sorted
}

/// Forgets the copies the plan found vanished (`sorted.gone`: at most `max`, else nothing),
/// then deletes the packs only they used.
fn remove_vanished(
    dst: &backstop_datastore::repo::Repo,
    sorted: &Sorted,
    repo_id: &str,
    max: usize,
) -> Result<Vanished, Error> {
    use backstop_datastore::repo::lock::RetryLock;
    use backstop_datastore::repo::maintenance::PruneLimits;
    let gone: Vec<String> = sorted.gone.iter().map(RepoId::to_hex).collect();
    let mut done = Vanished {
        forgotten: 0,
        unrecorded: sorted.unrecorded.len(),
        others: sorted.others.len(),
    };
    if gone.is_empty() {
        return Ok(done);
    }
    if gone.len() > max {
        return Err(input(format!(
            "repository {repo_id}: {} copies have vanished at the source, more than MAX_DELETE {max}; nothing was deleted",
            gone.len()
        )));
    }
    let wait = RetryLock(std::time::Duration::from_secs(60));
    dst.forget(&gone, wait)?;
    dst.prune(
        &PruneLimits {
            max_unused: Some("unlimited".into()),
            max_repack: Some("0".into()),
        },
        wait,
    )?;
    done.forgotten = gone.len();
    Ok(done)
}

/// Runs sync job `id` now. The run's record; `None` when the job is running already in
/// another process (a job never overlaps itself).
pub fn run(
    st: &mut State,
    id: u64,
    location: &str,
    cfg: &DriverConfig,
    report: Report<'_>,
) -> Result<Option<SyncRun>, Error> {
    let crate::state::Named { template: text, .. } = st
        .sync_jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no sync job {id}")))?;
    let job = SyncTemplate::parse(&text).map_err(|e| input(format!("sync job {id}: {e}")))?;
    let local = datastore(&st.datastores()?, job.datastore_id, "datastore", location)?;
    let remote = datastore(&st.remotes()?, job.remote_id, "remote", location)?;
    let now = || jiff::Timestamp::now().as_second();
    let runner = backstop_image::process::ProcessId::current();
    let Some(run_id) = st.claim_sync_run(id, now(), &runner)? else {
        return Ok(None);
    };
    // Read once the run is this process's, so a job missing its id gets one once.
    let me = st.sync_job_copier(id)?;
    let mut record = SyncRun {
        id: run_id,
        kind: crate::state::sync::RunKind::Sync,
        job_id: id,
        started_at: now(),
        ended_at: None,
        snapshots: 0,
        bytes_read: 0,
        bytes_written: 0,
        error: None,
    };
    let ends = match job.direction {
        Direction::Push => (&local, &remote),
        Direction::Pull => (&remote, &local),
    };
    // One repository after another to or from the same server: its ssh sessions serve them
    // all, and end with the run.
    let keep = backstop_storage::sftp::KeepSessions::new();
    let errors = match job
        .select
        .repositories(|| Ok(backstop_datastore::target::repositories(ends.0, cfg)?))
    {
        Ok(repos) => run_repositories(st, (&job, &me), ends, &repos, cfg, &mut record, report)?,
        Err(e) => {
            let line = e.to_string().lines().next().unwrap_or_default().to_string();
            (report.done)(&line);
            vec![line]
        }
    };
    drop(keep);
    record.ended_at = Some(now());
    record.error = (!errors.is_empty()).then(|| errors.join("\n"));
    st.end_sync_run(&record)?;
    Ok(Some(record))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// What one repository of a run is given: its name, the snapshots a verify job found clean
/// (with VERIFIED_ONLY) and those found damaged (with RESYNC_CORRUPT).
type Work = (String, Option<Vec<String>>, Vec<String>);

/// The verdicts each repository's copy needs, read from the state before the copies start.
fn work_of(st: &State, job: &SyncTemplate, repos: &[String]) -> Result<Vec<Work>, Error> {
    let mut work = Vec::new();
    for repo in repos {
        let verdicts = if job.verified_only || job.resync_corrupt {
            st.verdicts(job.datastore_id, repo)?
        } else {
            Vec::new()
        };
        let clean = job.verified_only.then(|| {
            verdicts
                .iter()
                .filter(|v| v.bad.is_empty())
                .map(|v| v.snapshot.clone())
                .collect()
        });
        let damaged = verdicts
            .iter()
            .filter(|v| job.resync_corrupt && !v.bad.is_empty())
            .map(|v| v.snapshot.clone())
            .collect();
        work.push((repo.clone(), clean, damaged));
    }
    Ok(work)
}

/// Copies the repositories, `PARALLEL` at once, under the job's limits (one rate bucket for
/// all), with a progress line about every second naming each repository being copied; a line
/// per repository as it ends; the lines of the repositories that failed, in the job's order.
fn run_repositories(
    st: &mut State,
    (job, me): (&SyncTemplate, &CopierId),
    ends: (&Datastore, &Datastore),
    repos: &[String],
    cfg: &DriverConfig,
    record: &mut SyncRun,
    report: Report<'_>,
) -> Result<Vec<String>, Error> {
    use backstop_datastore::repo::copy::CopyProgress;
    use backstop_storage::bandwidth::Bandwidth;
    use std::sync::Arc;
    let base = CopyOptions {
        threads: job.workers,
        rate_in: Bandwidth::kib_per_sec(job.rate_in).map(Arc::new),
        rate_out: Bandwidth::kib_per_sec(job.rate_out).map(Arc::new),
        copied_by: Some(me.clone()),
        ..CopyOptions::default()
    };
    let work = work_of(st, job, repos)?;
    let running = Running::default();
    let Report {
        done,
        progress: tick,
    } = report;
    let line = || {
        running.line(tick, |name, p: &CopyProgress| {
            format!(
                "repository {name}: {} snapshots done, {} read, {} written",
                p.snapshots.load(Ordering::Relaxed),
                mib(p.bytes_read.load(Ordering::Relaxed)),
                mib(p.bytes_written.load(Ordering::Relaxed)),
            )
        })
    };
    let outcomes = with_ticks(line, || {
        each_at_once(
            job.parallel,
            &work,
            |(repo, clean, damaged)| {
                let options = CopyOptions {
                    progress: Arc::new(CopyProgress::default()),
                    ..base.clone()
                };
                running.track(repo, options.progress.clone(), || {
                    sync_repository(
                        ends,
                        repo,
                        job,
                        (clean.as_deref(), damaged),
                        (cfg, &options),
                    )
                    .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
                })
            },
            |i, outcome| match outcome {
                Ok((stats, removed)) => done(&repository_line(&work[i].0, stats, *removed)),
                Err(e) => done(&format!("repository {}: {e}", work[i].0)),
            },
        )
    });
    let mut errors = Vec::new();
    for ((repo, _, _), outcome) in work.iter().zip(outcomes) {
        match outcome {
            Some(Ok((s, _))) => {
                record.snapshots += s.snapshots as u64;
                record.bytes_read += s.bytes_read;
                record.bytes_written += s.bytes_written;
            }
            Some(Err(e)) => errors.push(format!("repository {repo}: {e}")),
            None => errors.push(format!(
                "repository {repo}: not copied (its worker stopped)"
            )),
        }
    }
    Ok(errors)
}

fn repository_line(repo: &str, s: &CopyStats, removed: Vanished) -> String {
    format!(
        "repository {repo}: {} snapshots copied, {} there already{}; {} bytes read, {} bytes written{}{}{}",
        s.snapshots,
        s.skipped,
        if s.resynced > 0 {
            format!(" ({} copied again where damaged)", s.resynced)
        } else {
            String::new()
        },
        s.bytes_read,
        s.bytes_written,
        if removed.forgotten > 0 {
            format!("; {} vanished copies forgotten", removed.forgotten)
        } else {
            String::new()
        },
        if removed.unrecorded > 0 {
            format!(
                "; {} copies with no recorded job left alone",
                removed.unrecorded
            )
        } else {
            String::new()
        },
        if removed.others > 0 {
            format!("; {} copies by another job left alone", removed.others)
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_datastore::repo::copy::source_tag;
    use backstop_datastore::repo::format::Snapshot;

    fn snap(original: Option<u8>, tags: &[String]) -> Snapshot {
        Snapshot {
            time: "2025-01-01T00:00:00Z".into(),
            parent: None,
            tree: RepoId::default(),
            paths: vec!["/x".into()],
            hostname: String::new(),
            username: String::new(),
            uid: 0,
            gid: 0,
            tags: tags.to_vec(),
            program_version: None,
            original: original.map(|o| RepoId([o; 32])),
            summary: None,
        }
    }

    /// A run's plan for one repository, from the two snapshot lists alone: the job's TAGS and
    /// TRANSFER_LAST choose, VERIFIED_ONLY keeps the clean ones, a damaged copy brings its
    /// source back for a resync even when TRANSFER_LAST left it out, and with
    /// REMOVE_VANISHED this job's vanished copy is to be forgotten.
    #[test]
    fn a_sync_plan_is_made_from_the_snapshot_lists_alone() {
        let id = |n: u8| RepoId([n; 32]);
        let vm = |n: u32| vec![format!("one-{n}")];
        let me = CopierId::parse(&"1".repeat(32)).expect("id");
        let source_repo = RepoId([0xa; 32]);
        let source = vec![
            (id(1), snap(None, &vm(7))),
            (id(2), snap(None, &vm(7))),
            (id(3), snap(None, &vm(7))),
            (id(4), snap(None, &vm(8))),
        ];
        let job = SyncTemplate::parse(
            "NAME=s\nDATASTORE_ID=100\nREMOTE_ID=1\nTRANSFER_LAST=2\nREMOVE_VANISHED=YES\nMAX_DELETE=3",
        )
        .expect("template");
        let tags = vec![source_tag(source_repo), me.tag()];
        let destination = vec![
            // The copy of 1, found damaged by a verify job.
            (id(101), snap(Some(1), &tags)),
            // This job's copy of a snapshot the source no longer has.
            (id(109), snap(Some(9), &tags)),
        ];
        let plan = plan(
            (source_repo, &source),
            &destination,
            &job,
            (None, &[id(101).to_hex()]),
            Some(&me),
        );
        // The newest two of VM 7, the one of VM 8, then 1 for its damaged copy.
        assert_eq!(plan.copy, [id(2), id(3), id(4), id(1)]);
        assert_eq!(plan.resync, [id(1)]);
        assert_eq!(plan.vanished.gone, [id(109)]);

        // VERIFIED_ONLY: only the clean ones; no job, nothing to forget.
        let clean = [id(3).to_hex()];
        let plan = super::plan(
            (source_repo, &source),
            &destination,
            &job,
            (Some(&clean), &[]),
            None,
        );
        assert_eq!(plan.copy, [id(3)]);
        assert!(plan.resync.is_empty() && plan.vanished == Sorted::default());

        // TAGS: VM 8's snapshots only.
        let job = SyncTemplate::parse("NAME=s\nDATASTORE_ID=100\nREMOTE_ID=1\nTAGS=\"one-8\"")
            .expect("template");
        let plan = super::plan((source_repo, &source), &[], &job, (None, &[]), Some(&me));
        assert_eq!(plan.copy, [id(4)]);
    }

    /// REMOVE_VANISHED takes only this job's copies from this source whose original it lacks;
    /// what a source says (its id, its snapshots' tags) never hands it another job's copies.
    #[test]
    fn only_this_jobs_vanished_copies_from_this_source_are_taken() {
        let (a, b) = (RepoId([0xa; 32]), RepoId([0xb; 32]));
        let id = |n: u8| RepoId([n; 32]);
        let job = |c: char| CopierId::parse(&c.to_string().repeat(32)).expect("id");
        let (me, other) = (job('1'), job('2'));
        let tags = |from: &[RepoId], by: &[&CopierId]| -> Vec<String> {
            let mut t: Vec<String> = from.iter().map(|f| source_tag(*f)).collect();
            t.extend(by.iter().map(|j| j.tag()));
            t
        };
        // The source still holds original 1 (as a snapshot of its own) and 2 (as a copy).
        let source = vec![(id(1), snap(None, &[])), (id(50), snap(Some(2), &[]))];
        let destination = vec![
            (id(101), snap(Some(1), &tags(&[a], &[&me]))), // still at the source
            (id(102), snap(Some(2), &tags(&[a], &[&me]))), // still there, as a copy
            (id(103), snap(Some(3), &tags(&[a], &[&me]))), // vanished: taken
            (id(104), snap(Some(4), &tags(&[b], &[&me]))), // mine, from the source before
            (id(105), snap(Some(5), &tags(&[a], &[&other]))), // another job's, same source id
            (id(106), snap(Some(6), &tags(&[b], &[&other]))), // another job's, elsewhere
            (id(107), snap(Some(7), &[])),                 // restic copy: no record
            (id(108), snap(Some(8), &tags(&[a], &[]))),    // from here, before copied-by
            (id(109), snap(Some(9), &tags(&[b], &[]))),    // from elsewhere, no job
            (id(110), snap(None, &tags(&[a], &[&me]))),    // tags, but no original: no copy
            (id(111), snap(Some(11), &tags(&[a], &[&me, &other]))), // two jobs: none
            (
                id(112),
                snap(Some(12), &[source_tag(a), "copied-by:ZZ".into()]),
            ), // a malformed job: none
            (id(113), snap(Some(13), &tags(&[a, b], &[&me]))), // two sources: not taken
            (id(114), snap(None, &[])),                    // made at the destination
        ];
        let sorted = vanished((a, &source), &me, &destination);
        assert_eq!(sorted.gone, [id(103)]);
        assert_eq!(sorted.unrecorded, [id(107), id(108), id(111), id(112)]);
        assert_eq!(sorted.others, [id(105)]);
        // An empty source takes only this job's copies recorded as from it.
        assert_eq!(
            vanished((a, &[]), &me, &destination).gone,
            [id(101), id(102), id(103)]
        );
        // A source posing as `a` (its config claims a's id) under another job, emptied: that
        // job takes only its own copies, never `me`'s.
        let posing = vanished((a, &[]), &other, &destination);
        assert_eq!(posing.gone, [id(105)]);
        assert_eq!(posing.others, [id(101), id(102), id(103)]);
        // Another repository in the source's place takes nothing.
        assert_eq!(
            vanished((RepoId([0xc; 32]), &[]), &me, &destination),
            Sorted {
                gone: vec![],
                unrecorded: vec![id(107)],
                others: vec![],
            }
        );
    }

    #[test]
    fn templates_are_checked() {
        let t = SyncTemplate::parse(
            "NAME=\"off\"\nDIRECTION=\"pull\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"22, 23\"\nBACKUP_JOBS=\"4\"\nTRANSFER_LAST=3\n",
        )
        .expect("parse");
        assert_eq!(t.direction, Direction::Pull);
        assert_eq!(t.select.named(), ["22", "23", "job_4"]);
        assert_eq!(t.transfer_last, 3);
        assert_eq!(t.when, None);
        for (text, secs) in [("90", 90), ("30m", 1800), ("6h", 21_600), ("1d", 86_400)] {
            let t = SyncTemplate::parse(&format!(
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=1\nEVERY=\"{text}\"\n"
            ))
            .expect("every");
            assert_eq!(t.when, Some(When::Every(secs)), "{text}");
        }
        let t = SyncTemplate::parse(
            "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nSCHEDULE=\"mon..fri 02:30\"\n",
        )
        .expect("schedule");
        assert!(matches!(t.when, Some(When::Calendar(_))));
        for (bad, says) in [
            ("DATASTORE_ID=1\nREMOTE_ID=2\nVMS=1\n", "NAME"),
            ("NAME=x\nREMOTE_ID=2\nVMS=1\n", "DATASTORE_ID"),
            (
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nWORKERS=0\n",
                "WORKERS 0",
            ),
            (
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nRATE_IN=fast\n",
                "RATE_IN",
            ),
            (
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nPARALLEL=0\n",
                "PARALLEL 0 is not between 1 and 16",
            ),
            ("NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"a\"\n", "VMS"),
            (
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nEVERY=1d\nSCHEDULE=daily\n",
                "EVERY and SCHEDULE both given",
            ),
            (
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nSCHEDULE=\"25:00\"\n",
                "hour 25 is more than 23",
            ),
            (
                "NAME=x\nDATASTORE_ID=1\nREMOTE_ID=2\nEVERY=\"99999999999999999d\"\n",
                "EVERY",
            ),
            (
                "NAME=x\nDIRECTION=up\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=1\n",
                "DIRECTION",
            ),
        ] {
            let e = SyncTemplate::parse(bad).expect_err(bad);
            assert!(e.0.contains(says), "{bad}: {e}");
        }
    }
}
