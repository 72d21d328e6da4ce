//! Verify jobs (docs/sync.md): the snapshots of a backup datastore's repositories read back
//! ([`backstop_datastore::repo::verify`]), the verdict on each kept in SQLite, and damaged
//! blobs healed so that the next backup of the VM writes them again.
//!
//! A verify job's template: `NAME`; `DATASTORE_ID`; `VMS`, `BACKUP_JOBS` and `TAGS` as for a
//! sync job ([`crate::filters`]: with no repository named, every one of the datastore);
//! `OUTDATED_AFTER` (days: a snapshot verified clean more recently is not read again; 0, the
//! default, reads every snapshot every run); `IGNORE_VERIFIED` (`YES`: a snapshot verified
//! clean once is not read again, unless OUTDATED_AFTER says it is outdated); `SHARES` (m: each run
//! reads one m-th of the packs, the next run the next one, so m runs cover the datastore;
//! default 1); `HEAL` (`YES`, the default, or `NO`); `PARALLEL` (repositories read at once, 1
//! to 16, default 2); `EVERY` or `SCHEDULE` (as for sync jobs: when the scheduler daemon runs
//! it).

use crate::Error;
use crate::error::TemplateError;
use crate::error::input;
use crate::job_template::{JobBasics, number_or, yes_no};
use crate::model::state_datastore;
use crate::pool::{Report, Running, each_at_once, with_ticks};
use crate::state::State;
use crate::state::sync::{JobRun, RunKind, Verdict};
use backstop_datastore::config::DriverConfig;
use backstop_datastore::repo::lock::RetryLock;
use backstop_datastore::repo::verify::{
    Healed, Share, VerifyProgress, VerifyReport, heal, verify_counted,
};
use backstop_datastore::target::RepoTarget;
use backstop_protocol::template::Template;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyTemplate {
    pub name: String,
    pub datastore_id: u64,
    pub select: crate::filters::Selection,
    pub outdated_after_days: u64,
    pub ignore_verified: bool,
    pub shares: u8,
    pub heal: bool,
    /// Repositories read at once (`PARALLEL`, 1 to 16, default 2).
    pub parallel: usize,
    /// When the scheduler daemon runs it (`EVERY` or `SCHEDULE`, as for sync jobs).
    pub when: Option<crate::calendar::When>,
}

impl VerifyTemplate {
    pub fn parse(text: &str) -> Result<VerifyTemplate, TemplateError> {
        let t = Template::parse(text).map_err(|e| TemplateError(e.to_string()))?;
        let basics = JobBasics::parse(&t)?;
        let number = |name: &str, default: u64| number_or(&t, name, default);
        let shares = number("SHARES", 1)?;
        if !(1..=255).contains(&shares) {
            return Err(TemplateError(format!(
                "SHARES {shares} is not between 1 and 255"
            )));
        }
        let heal = yes_no(&t, "HEAL", true)?;
        let ignore_verified = yes_no(&t, "IGNORE_VERIFIED", false)?;
        Ok(VerifyTemplate {
            when: basics.when,
            name: basics.name,
            datastore_id: basics.datastore_id,
            select: basics.select,
            ignore_verified,
            outdated_after_days: number("OUTDATED_AFTER", 0)?,
            shares: shares as u8,
            heal,
            parallel: basics.parallel,
        })
    }
}

/// What a run found: per repository (snapshots read, damaged snapshots, packs healed).
#[derive(Debug)]
pub struct VerifyRun {
    pub lines: Vec<String>,
    pub damaged: Vec<String>,
    /// Snapshots read, in every repository.
    pub snapshots: u64,
    /// Bytes of packs read, in every repository.
    pub bytes_read: u64,
}

/// Runs verify job `id` now; `None` when it is running already in another process.
pub fn run(
    st: &mut State,
    id: u64,
    location: &str,
    cfg: &DriverConfig,
    report: Report<'_>,
) -> Result<Option<VerifyRun>, Error> {
    let crate::state::VerifyJobRow { template: text, .. } = st
        .verify_jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no verify job {id}")))?;
    let job = VerifyTemplate::parse(&text).map_err(|e| input(format!("verify job {id}: {e}")))?;
    let ds = state_datastore(&st.datastores()?, job.datastore_id, "datastore", location)?;
    let now = jiff::Timestamp::now().as_second();
    let runner = backstop_image::process::ProcessId::current();
    let Some(claim) = st.claim_verify_run(id, now, &runner)? else {
        return Ok(None);
    };
    // One repository after another on the same server: its ssh sessions serve them all.
    let keep = backstop_storage::sftp::KeepSessions::new();
    let result = verify_all(st, (&job, &ds, claim.before), cfg, report);
    drop(keep);
    // The run's record: what it read, and what it found wrong (damage, a repository it could
    // not read or heal), or why it stopped.
    let (snapshots, bytes_read, error) = match &result {
        Ok(r) => (
            r.snapshots,
            r.bytes_read,
            (!r.damaged.is_empty()).then(|| r.damaged.join("\n")),
        ),
        Err(e) => (0, 0, Some(e.to_string())),
    };
    st.end_run(&JobRun {
        id: claim.run,
        kind: RunKind::Verify,
        job_id: id,
        started_at: now,
        ended_at: Some(jiff::Timestamp::now().as_second()),
        snapshots,
        bytes_read,
        bytes_written: 0,
        error,
    })?;
    result.map(Some)
}

/// What reading one repository gave: its verdicts and, when blobs were damaged and the job
/// heals, what healing did (or why it failed).
struct Checked {
    report: VerifyReport,
    healed: Option<Result<Healed, backstop_datastore::Error>>,
}

/// Run `k` of a verify job over its repositories, `PARALLEL` at once (each reads its packs on
/// as many threads as there are cores; several at once overlap the fixed costs of opening
/// one: the key derivation, the SSH session, listing and loading the index). The verdicts
/// are recorded here, on the caller's thread, and its line reported, as each repository
/// ends.
fn verify_all(
    st: &mut State,
    (job, ds, k): (&VerifyTemplate, &backstop_protocol::message::Datastore, u64),
    cfg: &DriverConfig,
    report: Report<'_>,
) -> Result<VerifyRun, Error> {
    let Report { done, progress } = report;
    let share = (job.shares > 1).then(|| Share {
        n: (k % u64::from(job.shares)) as u8 + 1,
        m: job.shares,
    });
    let now = jiff::Timestamp::now().as_second();
    let fresh = (job.outdated_after_days * 86_400) as i64;
    let names = job
        .select
        .repositories(|| Ok(backstop_datastore::target::repositories(ds, cfg)?))?;
    // Clean verdicts that spare a snapshot this run: recent ones (OUTDATED_AFTER), or any one
    // that is not outdated (IGNORE_VERIFIED).
    let mut work = Vec::new();
    for name in names {
        let spared: Vec<String> = st
            .verdicts(job.datastore_id, &name)?
            .into_iter()
            .filter(|v| v.bad.is_empty())
            .filter(|v| {
                let outdated = fresh > 0 && now - v.verified_at >= fresh;
                !outdated && (fresh > 0 || job.ignore_verified)
            })
            .map(|v| v.snapshot)
            .collect();
        work.push((name, spared));
    }
    let running = Running::default();
    let line = || {
        running.line(progress, |name, counted: &VerifyProgress| {
            format!(
                "repository {name}: {:.1} of {:.1} MiB read",
                counted.bytes_read.load(Ordering::Relaxed) as f64 / 1_048_576.0,
                counted.bytes_total.load(Ordering::Relaxed) as f64 / 1_048_576.0
            )
        })
    };
    let mut out = VerifyRun {
        lines: Vec::new(),
        damaged: Vec::new(),
        snapshots: 0,
        bytes_read: 0,
    };
    let mut recorded: Result<(), Error> = Ok(());
    with_ticks(line, || {
        each_at_once(
            job.parallel,
            &work,
            |(name, spared)| {
                let counted = Arc::new(VerifyProgress::default());
                running.track(name, counted.clone(), || {
                    verify_repository(ds, cfg, (job, share), (name, spared), &counted)
                })
            },
            |i, checked| {
                let name = &work[i].0;
                if recorded.is_ok() {
                    recorded = record(st, job, (name, now, share), checked, &mut out);
                    if let Some(line) = out.lines.last() {
                        done(line);
                    }
                }
            },
        )
    });
    recorded?;
    Ok(out)
}

/// Reads one repository's snapshots (those the job takes and no verdict spares) and heals it
/// when blobs were damaged and the job heals.
fn verify_repository(
    ds: &backstop_protocol::message::Datastore,
    cfg: &DriverConfig,
    (job, share): (&VerifyTemplate, Option<Share>),
    (name, spared): (&str, &[String]),
    counted: &VerifyProgress,
) -> Result<Checked, backstop_datastore::Error> {
    // A run's line says a repository that cannot be opened by its message, any other failure
    // by the first line of what it prints.
    let first = |e: backstop_datastore::Error| backstop_datastore::Error {
        message: first_line(&e),
        source: None,
        ..e
    };
    let repo = RepoTarget::new(ds, name.to_string())
        .and_then(|t| t.open(ds, cfg, false))
        .map_err(|e| backstop_datastore::Error { source: None, ..e })?;
    let ids: Vec<_> = repo
        .all_snapshots()
        .map_err(|e| first(e.into()))?
        .into_iter()
        .filter(|(id, s, _)| job.select.takes(&s.tags) && !spared.contains(&id.to_hex()))
        .map(|(id, _, _)| id)
        .collect();
    let retry = RetryLock(std::time::Duration::from_secs(60));
    let report = verify_counted(&repo, &ids, share, retry, counted).map_err(|e| first(e.into()))?;
    let bad: BTreeSet<_> = report
        .verdicts
        .iter()
        .flat_map(|v| v.bad.iter().copied())
        .collect();
    let healed = (job.heal && !bad.is_empty()).then(|| {
        let bad: Vec<_> = bad.into_iter().collect();
        heal(&repo, &bad, retry).map_err(|e| first(e.into()))
    });
    Ok(Checked { report, healed })
}

/// The first line of an error, as a run's line says it.
fn first_line(e: &backstop_datastore::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Records one repository's verdicts in the state and its lines in the run.
fn record(
    st: &mut State,
    job: &VerifyTemplate,
    (name, now, share): (&str, i64, Option<Share>),
    checked: &Result<Checked, backstop_datastore::Error>,
    out: &mut VerifyRun,
) -> Result<(), Error> {
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            let line = format!("repository {name}: {e}");
            out.lines.push(line.clone());
            out.damaged.push(line);
            return Ok(());
        }
    };
    out.snapshots += checked.report.verdicts.len() as u64;
    out.bytes_read += checked.report.bytes_read;
    let mut damaged = Vec::new();
    for v in &checked.report.verdicts {
        st.record_verdict(&Verdict {
            datastore_id: job.datastore_id,
            repository: name.to_string(),
            snapshot: v.snapshot.to_hex(),
            verified_at: now,
            bad: v.bad.iter().map(|b| b.to_hex()).collect(),
        })?;
        if !v.bad.is_empty() {
            damaged.push(v.snapshot.to_hex()[..8].to_string());
        }
    }
    let mut line = format!(
        "repository {name}: {} snapshots verified{}, {} blobs read, {} damaged",
        checked.report.verdicts.len(),
        share.map_or(String::new(), |s| format!(" (share {}/{})", s.n, s.m)),
        checked.report.blobs_read,
        damaged.len()
    );
    match &checked.healed {
        Some(Ok(h)) => line.push_str(&format!(
            "; healed: {} packs rewritten, {} blobs out (the next backup writes them again)",
            h.packs, h.removed
        )),
        Some(Err(e)) => {
            line.push_str(&format!("; NOT healed: {e}"));
            out.damaged
                .push(format!("repository {name}: healing failed: {e}"));
        }
        None => {}
    }
    if !damaged.is_empty() {
        out.damaged.push(format!(
            "repository {name}: damaged snapshots {}",
            damaged.join(", ")
        ));
    }
    out.lines.push(line);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        let t = VerifyTemplate::parse(
            "NAME=\"v\"\nDATASTORE_ID=1\nVMS=\"22\"\nOUTDATED_AFTER=7\nSHARES=4\nHEAL=no\n",
        )
        .expect("parse");
        assert_eq!(
            (
                t.select.named(),
                t.outdated_after_days,
                t.shares,
                t.heal,
                t.ignore_verified
            ),
            (vec!["22".to_string()], 7, 4, false, false)
        );
        let all = VerifyTemplate::parse("NAME=v\nDATASTORE_ID=1\nIGNORE_VERIFIED=yes\n")
            .expect("the whole datastore");
        assert!(!all.select.names_repositories() && all.ignore_verified);
        for (bad, says) in [
            (
                "NAME=v\nDATASTORE_ID=1\nIGNORE_VERIFIED=1\n",
                "IGNORE_VERIFIED",
            ),
            ("NAME=v\nDATASTORE_ID=1\nVMS=1\nSHARES=0\n", "SHARES"),
            ("NAME=v\nDATASTORE_ID=1\nVMS=1\nHEAL=maybe\n", "HEAL"),
        ] {
            let e = VerifyTemplate::parse(bad).expect_err(bad);
            assert!(e.0.contains(says), "{bad}: {e}");
        }
    }
}
