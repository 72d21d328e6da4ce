//! `backupjob verify-job create|list|show|update|remove|run` (also `backstop verify-job ...`): verify
//! jobs ([`backstop_backupjob::verify_job`], docs/sync.md).

use super::flags::VerifyJobArgs;
use super::{Args, input, print};
use backstop_backupjob::Error;
use backstop_backupjob::json_time;
use backstop_backupjob::ops;
use backstop_backupjob::state::State;
use backstop_backupjob::state::sync::Verdict;
use backstop_backupjob::verify_job::VerifyTemplate;
use std::process::ExitCode;

pub(super) fn create(st: &mut State, a: &VerifyJobArgs) -> Result<(), Error> {
    print(&ops::definitions::create_verify_job(st, &a.definition()?)?.to_string())
}

/// Replaces a verify job's template, or changes the attributes the flags name; its verdicts
/// stay.
pub(super) fn update(st: &mut State, id: u64, a: &VerifyJobArgs) -> Result<(), Error> {
    ops::definitions::update_verify_job(st, id, &a.definition()?)
}

/// A job, its runs, and per repository (name, snapshots with a verdict, damaged ones).
type Summary = (u64, VerifyTemplate, u64, Vec<(String, usize, usize)>);

/// The verdicts on the repositories a job takes (those it names, else every one it has a
/// verdict on), by repository.
fn verdicts_of(st: &State, t: &VerifyTemplate) -> Result<Vec<Verdict>, Error> {
    let all = st.verdicts_in(t.datastore_id)?;
    let mut seen: Vec<String> = all.iter().map(|v| v.repository.clone()).collect();
    seen.dedup();
    let repos = t.select.repositories(|| Ok(seen))?;
    let mut out = Vec::new();
    for r in &repos {
        out.extend(all.iter().filter(|v| &v.repository == r).cloned());
    }
    Ok(out)
}

fn summary(st: &State) -> Result<Vec<Summary>, Error> {
    let mut out = Vec::new();
    for backstop_backupjob::state::VerifyJobRow {
        id,
        template: text,
        runs,
        ..
    } in st.verify_jobs()?
    {
        let t = VerifyTemplate::parse(&text).map_err(|e| input(format!("verify job {id}: {e}")))?;
        let mut repos: Vec<(String, usize, usize)> = Vec::new();
        for v in verdicts_of(st, &t)? {
            if repos.last().is_none_or(|r| r.0 != v.repository) {
                repos.push((v.repository.clone(), 0, 0));
            }
            if let Some(r) = repos.last_mut() {
                r.1 += 1;
                r.2 += usize::from(!v.bad.is_empty());
            }
        }
        out.push((id, t, runs, repos));
    }
    Ok(out)
}

pub(super) fn list(st: &State, json: bool) -> Result<(), Error> {
    let all = summary(st)?;
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|(id, t, runs, repos)| {
                let repos: Vec<_> = repos
                    .iter()
                    .map(|(r, n, bad)| serde_json::json!({"repository": r, "verified": n, "damaged": bad}))
                    .collect();
                serde_json::json!({"id": id, "name": t.name, "datastore_id": t.datastore_id,
                    "runs": runs, "repositories": repos})
            })
            .collect();
        return print(&serde_json::Value::Array(v).to_string());
    }
    print(&format!(
        "{:>4} {:<16} {:>3} {:>5} STATE",
        "ID", "NAME", "DS", "RUNS"
    ))?;
    for (id, t, runs, repos) in all {
        let bad: usize = repos.iter().map(|r| r.2).sum();
        let state = if runs == 0 {
            "never run".to_string()
        } else if bad > 0 {
            format!("{bad} damaged snapshots")
        } else {
            "clean".to_string()
        };
        print(&format!(
            "{id:>4} {:<16} {:>3} {runs:>5} {state}",
            t.name, t.datastore_id
        ))?;
    }
    Ok(())
}

pub(super) fn show(st: &State, id: u64, json: bool) -> Result<(), Error> {
    let backstop_backupjob::state::VerifyJobRow {
        name,
        template: text,
        runs,
        ..
    } = st
        .verify_jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no verify job {id}")))?;
    let t = VerifyTemplate::parse(&text).map_err(|e| input(format!("verify job {id}: {e}")))?;
    let last = st.verify_last_runs()?.into_iter().find(|l| l.job == id);
    let next = super::next_run(t.when.as_ref(), last.and_then(|l| l.started_at));
    let verdicts = verdicts_of(st, &t)?;
    if json {
        let v: Vec<_> = verdicts
            .iter()
            .map(|v| {
                serde_json::json!({"repository": v.repository, "snapshot": v.snapshot,
                "verified_at": json_time::seconds(Some(v.verified_at)), "ok": v.bad.is_empty(), "bad_blobs": v.bad.len(),
                "damaged_blobs": v.bad})
            })
            .collect();
        return print(
            &serde_json::json!({"id": id, "name": name, "runs": runs, "template": super::shown_template(&text),
                "snapshots": v, "next_run": json_time::seconds(next)})
            .to_string(),
        );
    }
    print(&format!(
        "VERIFY JOB {id} INFORMATION\nID       : {id}\nNAME     : {name}\nRUNS     : {runs}\nNEXT RUN : {}\n\nTEMPLATE\n{}\n\nSNAPSHOTS",
        next.map_or("only when asked".into(), super::local_time),
        super::shown_template(&text)
    ))?;
    for v in verdicts {
        print(&format!(
            "{} {} verified {} {}",
            v.repository,
            &v.snapshot[..8.min(v.snapshot.len())],
            v.verified_at,
            if v.bad.is_empty() {
                "ok".to_string()
            } else {
                format!("DAMAGED ({} blobs)", v.bad.len())
            }
        ))?;
    }
    Ok(())
}

/// One run now; exit 1 when something is damaged (each named on stderr).
pub(super) fn run(st: &mut State, args: &Args, id: u64) -> Result<ExitCode, Error> {
    let ticker = super::Ticker::new(args.progress_every);
    let report = backstop_backupjob::pool::Report {
        done: &mut |l| ticker.line(l),
        progress: &|l| ticker.progress(l),
    };
    let outcome = ops::runs::verify(&super::env(args), st, id, report)?;
    if outcome.ok() {
        return Ok(ExitCode::SUCCESS);
    }
    for d in &outcome.damaged {
        eprintln!("backupjob: verify job {id}: {d}");
    }
    for line in outcome.notify(st, &super::notify_settings()) {
        eprintln!("backupjob: verify job {id}: {line}");
    }
    Ok(ExitCode::FAILURE)
}
