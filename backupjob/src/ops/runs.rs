//! Runs of sync and verify jobs, the scheduler's pass, and the discovery of what a
//! datastore's repositories hold.

use crate::Error;
use crate::engine::{self, Event};
use crate::error::input;
use crate::pool::Report;
use crate::runner::Env;
use crate::scheduler::Limits;
use crate::state::State;
use crate::state::sync::SyncRun;
use backstop_datastore::config::DriverConfig;
use std::fmt;

/// What a sync job's run did: its record (its error names each repository that failed).
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub job: u64,
    pub run: SyncRun,
}

impl SyncOutcome {
    pub fn ok(&self) -> bool {
        self.run.error.is_none()
    }

    /// A line per repository that failed.
    pub fn failures(&self) -> Vec<String> {
        self.run
            .error
            .as_deref()
            .map(|e| e.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Sends the message of a failed run with the job's settings over `global`; the lines to
    /// log.
    pub fn notify(&self, st: &State, global: &crate::notify::Settings) -> Vec<String> {
        let text = st
            .sync_jobs()
            .ok()
            .and_then(|jobs| jobs.into_iter().find(|j| j.id == self.job))
            .map(|j| j.template)
            .unwrap_or_default();
        crate::notify::after_run(global, ("sync job", self.job, &text), &self.failures())
    }
}

impl fmt::Display for SyncOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.run;
        write!(
            f,
            "sync job {}: run {}: {} snapshots copied, {} bytes read, {} bytes written",
            self.job, r.id, r.snapshots, r.bytes_read, r.bytes_written
        )
    }
}

/// Runs sync job `job` now ([`crate::sync::run`]); refused when it is running already.
pub fn sync(env: &Env, st: &mut State, job: u64, report: Report<'_>) -> Result<SyncOutcome, Error> {
    let cfg = DriverConfig::load(&env.remotes)?;
    let run = crate::sync::run(st, job, &env.datastore_location, &cfg, report)?
        .ok_or_else(|| input(format!("sync job {job} is running already")))?;
    Ok(SyncOutcome { job, run })
}

/// What a verify job's run found: a line per damaged repository.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    pub job: u64,
    pub damaged: Vec<String>,
}

impl VerifyOutcome {
    pub fn ok(&self) -> bool {
        self.damaged.is_empty()
    }

    /// Sends the message of a run that found damage, with the job's settings over `global`;
    /// the lines to log.
    pub fn notify(&self, st: &State, global: &crate::notify::Settings) -> Vec<String> {
        let text = st
            .verify_jobs()
            .ok()
            .and_then(|jobs| jobs.into_iter().find(|j| j.id == self.job))
            .map(|j| j.template)
            .unwrap_or_default();
        crate::notify::after_run(global, ("verify job", self.job, &text), &self.damaged)
    }
}

/// Runs verify job `job` now ([`crate::verify_job::run`]); refused when it is running already.
pub fn verify(
    env: &Env,
    st: &mut State,
    job: u64,
    report: Report<'_>,
) -> Result<VerifyOutcome, Error> {
    let cfg = DriverConfig::load(&env.remotes)?;
    let out = crate::verify_job::run(st, job, &env.datastore_location, &cfg, report)?
        .ok_or_else(|| input(format!("verify job {job} is running already")))?;
    Ok(VerifyOutcome {
        job,
        damaged: out.damaged,
    })
}

/// How the scheduler runs a pass.
#[derive(Debug, Clone)]
pub struct PassOptions {
    pub limits: Limits,
    pub notify: crate::notify::Settings,
    pub tz: jiff::tz::TimeZone,
}

/// One scheduler pass: the backup jobs that are due run together ([`engine::scheduler_pass`],
/// each VM event handed to `on_event`), each missed schedule and failed run is notified, the
/// jobs' retention is carried out, and then the sync and verify jobs whose EVERY or SCHEDULE
/// has come round run. Each line to log goes to `on_line` as it happens (an error of `on_line`
/// ends the pass); returns the backup jobs that ran.
pub fn scheduler_pass(
    env: &Env,
    st: &mut State,
    options: &PassOptions,
    on_event: impl FnMut(u64, &Event),
    mut on_line: impl FnMut(&str) -> Result<(), Error>,
) -> Result<Vec<u64>, Error> {
    let notify = &options.notify;
    let since = jiff::Timestamp::now().as_millisecond();
    let pass = engine::scheduler_pass(env, st, &options.limits, &options.tz, on_event)?;
    let ran = pass.ran;
    for (job, why) in &pass.missed {
        on_line(&format!(
            "scheduler: backup job {job} missed its schedule: {why}"
        ))?;
        for line in crate::notify::after_missed(st, notify, *job, why) {
            on_line(&format!("scheduler: backup job {job}: {line}"))?;
        }
    }
    if !ran.is_empty() {
        let list: Vec<String> = ran.iter().map(u64::to_string).collect();
        on_line(&format!("scheduler: ran backup jobs {}", list.join(", ")))?;
    }
    for job in &ran {
        for line in crate::notify::after_job_run(st, notify, *job, since) {
            on_line(&format!("scheduler: backup job {job}: {line}"))?;
        }
        for line in super::retention::after_run(st, env, *job) {
            on_line(&format!("scheduler: backup job {job}: {line}"))?;
        }
    }
    // Then the sync and verify jobs whose EVERY or SCHEDULE has come round.
    let cfg = DriverConfig::load(&env.remotes)?;
    let now = jiff::Timestamp::now().as_second();
    for line in crate::scheduled::scheduled_pass(
        st,
        &env.datastore_location,
        &cfg,
        (now, &options.tz, notify),
    )? {
        on_line(&format!("scheduler: {line}"))?;
    }
    Ok(ran)
}

/// What a discovery recorded, a line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub datastore: u64,
    pub lines: Vec<String>,
}

impl fmt::Display for Discovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return write!(
                f,
                "datastore {}: nothing the state does not hold already",
                self.datastore
            );
        }
        f.write_str(&self.lines.join("\n"))
    }
}

/// Records in the state the backups already in datastore `datastore`'s repositories
/// ([`crate::discover::discover`]); what the state holds is left as it is.
pub fn discover(env: &Env, st: &mut State, datastore: u64) -> Result<Discovered, Error> {
    let cfg = DriverConfig::load(&env.remotes)?;
    let lines = crate::discover::discover(st, datastore, &env.datastore_location, &cfg)?;
    Ok(Discovered { datastore, lines })
}
