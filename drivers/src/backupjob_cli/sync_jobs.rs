//! `backupjob sync-job create|list|show|update|remove|run` (also `backstop sync-job ...`): sync jobs
//! ([`backstop_backupjob::sync`], docs/sync.md).

use super::flags::SyncJobArgs;
use super::{Args, input, print};
use backstop_backupjob::Error;
use backstop_backupjob::json_time;
use backstop_backupjob::ops;
use backstop_backupjob::state::State;
use backstop_backupjob::sync::SyncTemplate;
use std::process::ExitCode;

pub(super) fn create(st: &mut State, a: &SyncJobArgs) -> Result<(), Error> {
    print(&ops::definitions::create_sync_job(st, &a.definition()?)?.to_string())
}

/// Replaces a sync job's template, or changes the attributes the flags name; its run records
/// stay.
pub(super) fn update(st: &mut State, id: u64, a: &SyncJobArgs) -> Result<(), Error> {
    ops::definitions::update_sync_job(st, id, &a.definition()?)
}

fn parsed(st: &State) -> Result<Vec<(u64, SyncTemplate)>, Error> {
    st.sync_jobs()?
        .into_iter()
        .map(
            |backstop_backupjob::state::Named {
                 id, template: text, ..
             }| {
                SyncTemplate::parse(&text)
                    .map(|t| (id, t))
                    .map_err(|e| input(format!("sync job {id}: {e}")))
            },
        )
        .collect()
}

fn run_json(r: &backstop_backupjob::state::sync::SyncRun) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "started_at": json_time::seconds(Some(r.started_at)),
        "ended_at": json_time::seconds(r.ended_at),
        "snapshots": r.snapshots, "bytes_read": r.bytes_read,
        "bytes_written": r.bytes_written, "error": r.error,
    })
}

pub(super) fn list(st: &State, json: bool) -> Result<(), Error> {
    let jobs = parsed(st)?;
    if json {
        let mut v = Vec::new();
        for (id, t) in &jobs {
            let last = st.sync_runs(*id)?.first().map(run_json);
            v.push(serde_json::json!({
                "id": id, "name": t.name, "direction": t.direction.as_str(),
                "datastore_id": t.datastore_id, "remote_id": t.remote_id,
                "repositories": t.select.named(),
                "whole_datastore": !t.select.names_repositories(), "last_run": last,
            }));
        }
        return print(&serde_json::Value::Array(v).to_string());
    }
    print(&format!(
        "{:>4} {:<16} {:<5} {:>3} {:>6} LAST",
        "ID", "NAME", "DIR", "DS", "REMOTE"
    ))?;
    for (id, t) in jobs {
        let last = match st.sync_runs(id)?.first() {
            None => "never".to_string(),
            Some(r) if r.error.is_some() => format!("failed (run {})", r.id),
            Some(r) => format!("ok, {} snapshots (run {})", r.snapshots, r.id),
        };
        print(&format!(
            "{id:>4} {:<16} {:<5} {:>3} {:>6} {last}",
            t.name,
            t.direction.as_str(),
            t.datastore_id,
            t.remote_id
        ))?;
    }
    Ok(())
}

pub(super) fn show(st: &State, id: u64, json: bool) -> Result<(), Error> {
    let backstop_backupjob::state::Named {
        name,
        template: text,
        ..
    } = st
        .sync_jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no sync job {id}")))?;
    let runs = st.sync_runs(id)?;
    let when = SyncTemplate::parse(&text)
        .map_err(|e| input(format!("sync job {id}: {e}")))?
        .when;
    let next = super::next_run(when.as_ref(), runs.first().map(|r| r.started_at));
    // The id the job's copies are tagged with (`copied-by:<id>`): no secret (every copy shows
    // it), shown so an operator can find or forget by hand what a job copied.
    let copier = st.stored_copier(id)?.flatten();
    if json {
        let runs: Vec<_> = runs.iter().map(run_json).collect();
        return print(
            &serde_json::json!({"id": id, "name": name, "copied_by": copier,
                "template": super::shown_template(&text), "runs": runs, "next_run": json_time::seconds(next)})
            .to_string(),
        );
    }
    print(&format!(
        "SYNC JOB {id} INFORMATION\nID       : {id}\nNAME     : {name}\nCOPY TAG : {}\nNEXT RUN : {}\n\nTEMPLATE\n{}\n\nRUNS",
        copier.map_or("- (given at the next run)".into(), |c| format!(
            "copied-by:{c}"
        )),
        next.map_or("only when asked".into(), super::local_time),
        super::shown_template(&text)
    ))?;
    for r in runs.iter().take(10) {
        print(&format!(
            "{:>5} started {} ended {} snapshots {} read {} written {}{}",
            r.id,
            r.started_at,
            r.ended_at.map_or("-".into(), |e| e.to_string()),
            r.snapshots,
            r.bytes_read,
            r.bytes_written,
            r.error.as_deref().map_or(String::new(), |e| format!(
                " FAILED: {}",
                e.replace('\n', "; ")
            ))
        ))?;
    }
    Ok(())
}

/// One run now; exit 1 when a repository failed (each named on stderr).
pub(super) fn run(st: &mut State, args: &Args, id: u64) -> Result<ExitCode, Error> {
    let ticker = super::Ticker::new(args.progress_every);
    let report = backstop_backupjob::pool::Report {
        done: &mut |l| ticker.line(l),
        progress: &|l| ticker.progress(l),
    };
    let outcome = ops::runs::sync(&super::env(args), st, id, report)?;
    print(&outcome.to_string())?;
    if outcome.ok() {
        return Ok(ExitCode::SUCCESS);
    }
    for line in outcome.failures() {
        eprintln!("backupjob: sync job {id}: {line}");
    }
    for line in outcome.notify(st, &super::notify_settings()) {
        eprintln!("backupjob: sync job {id}: {line}");
    }
    Ok(ExitCode::FAILURE)
}
