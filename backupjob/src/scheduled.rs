//! The scheduler daemon's pass over the sync and verify jobs that have `EVERY` or `SCHEDULE`.

use crate::Error;
use crate::calendar::When;
use crate::pool::Report;
use crate::state::State;
use crate::sync::SyncTemplate;
use crate::verify_job::VerifyTemplate;
use backstop_datastore::config::DriverConfig;

/// The scheduler daemon's pass over sync and verify jobs with `EVERY` or `SCHEDULE`: each one due runs now,
/// one after another; a job running in another process is left to it. The lines to log.
pub fn scheduled_pass(
    st: &mut State,
    location: &str,
    cfg: &DriverConfig,
    (now, tz, notify): (i64, &jiff::tz::TimeZone, &crate::notify::Settings),
) -> Result<Vec<String>, Error> {
    use crate::state::sync::JobKind;
    let due = |when: &Option<When>, last: Option<i64>, written: Option<i64>| {
        when.as_ref().is_some_and(|w| w.due(now, last, written, tz))
    };
    let mut lines = Vec::new();
    let closed = st.close_dead_runs(now)?;
    if closed > 0 {
        lines.push(format!(
            "closed {closed} run records whose runner was killed"
        ));
    }
    for crate::state::Named {
        id, template: text, ..
    } in st.sync_jobs()?
    {
        let Ok(job) = SyncTemplate::parse(&text) else {
            continue;
        };
        let last = st.sync_runs(id)?.first().map(|r| r.started_at);
        if !due(&job.when, last, st.written_at(JobKind::Sync, id)?) {
            continue;
        }
        let report = Report {
            done: &mut |_| {},
            progress: &|_| {},
        };
        match crate::sync::run(st, id, location, cfg, report)? {
            None => lines.push(format!("sync job {id}: running already, not started again")),
            Some(r) => {
                lines.push(format!(
                    "sync job {id}: run {}: {} snapshots copied, {} bytes written{}",
                    r.id,
                    r.snapshots,
                    r.bytes_written,
                    r.error.as_ref().map_or(String::new(), |e| format!(
                        "; FAILED: {}",
                        e.replace('\n', "; ")
                    ))
                ));
                let failed: Vec<String> = r
                    .error
                    .as_deref()
                    .map(|e| e.lines().map(str::to_string).collect())
                    .unwrap_or_default();
                lines.extend(
                    crate::notify::after_run(notify, ("sync job", id, &text), &failed)
                        .into_iter()
                        .map(|l| format!("sync job {id}: {l}")),
                );
            }
        }
    }
    let last_runs = st.verify_last_runs()?;
    for crate::state::VerifyJobRow {
        id, template: text, ..
    } in st.verify_jobs()?
    {
        let Ok(job) = VerifyTemplate::parse(&text) else {
            continue;
        };
        let last = last_runs
            .iter()
            .find(|l| l.job == id)
            .and_then(|l| l.started_at);
        if !due(&job.when, last, st.written_at(JobKind::Verify, id)?) {
            continue;
        }
        let quiet = Report {
            done: &mut |_| {},
            progress: &|_| {},
        };
        match crate::verify_job::run(st, id, location, cfg, quiet)? {
            None => lines.push(format!(
                "verify job {id}: running already, not started again"
            )),
            Some(r) => {
                lines.extend(r.lines.iter().map(|l| format!("verify job {id}: {l}")));
                lines.extend(
                    r.damaged
                        .iter()
                        .map(|d| format!("verify job {id}: FAILED: {d}")),
                );
                lines.extend(
                    crate::notify::after_run(notify, ("verify job", id, &text), &r.damaged)
                        .into_iter()
                        .map(|l| format!("verify job {id}: {l}")),
                );
            }
        }
    }
    Ok(lines)
}
