//! A backup job's run now, a retry of its failed VMs, and the cancel of its run.

use super::{datastore_of, job_row};
use crate::Error;
use crate::engine::{self, Event};
use crate::error::input;
use crate::model::JobTemplate;
use crate::runner::Env;
use crate::scheduler::Limits;
use crate::state::{State, VmState};
use std::fmt;
use std::io::Write;

/// How to run a backup job now.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub job: u64,
    pub limits: Limits,
    /// The global notification settings (a job's own override them).
    pub notify: crate::notify::Settings,
}

/// What a run did: its VMs backed up and in ERROR, what the notifications said (for the log,
/// not the output) and what the job's retention did after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub job: u64,
    pub updated: usize,
    pub failed: usize,
    pub notifications: Vec<String>,
    pub retention: Vec<String>,
}

impl RunResult {
    /// Whether every VM of the run was backed up.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.job;
        write!(
            f,
            "backup job {id}: {} VMs backed up, {} in ERROR",
            self.updated, self.failed
        )?;
        for line in &self.retention {
            write!(f, "\nbackup job {id}: {line}")?;
        }
        Ok(())
    }
}

/// Runs backup job `options.job` to its end ([`engine::run_now`]), each VM event handed to
/// `on_event`; then notifies about its failures and carries out its retention plan (when it
/// has period rules), as the scheduler does after a run.
pub fn run(
    env: &Env,
    st: &mut State,
    options: &RunOptions,
    on_event: impl FnMut(&Event),
) -> Result<RunResult, Error> {
    let id = options.job;
    let since = jiff::Timestamp::now().as_millisecond();
    let (updated, failed) = engine::run_now(env, st, id, &options.limits, on_event)?;
    let notifications = crate::notify::after_job_run(st, &options.notify, id, since);
    let retention = super::retention::after_run(st, env, id);
    Ok(RunResult {
        job: id,
        updated,
        failed,
        notifications,
        retention,
    })
}

/// Which job's failed VMs to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOptions {
    pub job: u64,
}

/// How many VMs went from ERROR back to OUTDATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retried {
    pub job: u64,
    pub moved: usize,
}

impl fmt::Display for Retried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backup job {}: {} VMs back to OUTDATED",
            self.job, self.moved
        )
    }
}

/// Moves the job's VMs in ERROR back to OUTDATED (its next run, or the one going on, takes
/// them).
pub fn retry(st: &mut State, options: &RetryOptions) -> Result<Retried, Error> {
    let id = options.job;
    let mut moved = 0;
    for r in st.job_vms(id)? {
        if r.state == Some(VmState::Error)
            && st.move_vm(
                id,
                r.vm_id,
                Some(VmState::Error),
                VmState::Outdated,
                None,
                jiff::Timestamp::now().as_millisecond(),
            )?
        {
            moved += 1;
        }
    }
    Ok(Retried { job: id, moved })
}

/// Which job's run to cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelOptions {
    pub job: u64,
}

/// What a cancel did: waiting VMs dropped from the run, running backups stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    pub job: u64,
    pub dropped: usize,
    pub stopped: usize,
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backup job {}: {} VMs dropped from the run, {} running backups stopped",
            self.job, self.dropped, self.stopped
        )
    }
}

/// Stops a job's run: OUTDATED VMs are dropped from it; each running backup ends in ERROR and
/// is stopped by the datastore's `backup_cancel` action, run as a child process. That action
/// signals only the backup action's own process (named in its PID file, checked by start time
/// and boot), never the runner's, so cancelling from inside a long-lived process (the web
/// server, which runs jobs on its own threads) leaves that process alone.
pub fn cancel(env: &Env, st: &mut State, options: &CancelOptions) -> Result<Cancelled, Error> {
    let id = options.job;
    let crate::state::JobRow { template, .. } = job_row(st, id)?;
    let job = JobTemplate::parse(&template).map_err(|x| input(format!("backup job {id}: {x}")))?;
    // OpenNebula mode (told by the stored template, without asking oned): oned runs the
    // backups, and cancels them.
    let stored = st
        .datastores()?
        .into_iter()
        .find(|d| d.id == job.datastore_id)
        .map(|d| d.template);
    let oned = match &stored {
        Some(t) if crate::oned::is_oned(t) => Some(crate::oned::client(t)?),
        _ => None,
    };
    let ds_mad = if oned.is_some() {
        String::new()
    } else {
        datastore_of(st, &env.datastore_location, job.datastore_id)
            .map_or_else(|_| "backstop".to_string(), |d| d.datastore.ds_mad)
    };
    let mut refused = Vec::new();
    let docs = st.vms()?;
    let now = jiff::Timestamp::now().as_millisecond();
    let (mut dropped, mut stopped) = (0, 0);
    // The waiting VMs go first: once a running one is stopped, the runner would
    // otherwise start the next.
    let rows = st.job_vms(id)?;
    for r in rows.iter().filter(|r| r.state == Some(VmState::Outdated)) {
        dropped += usize::from(st.clear_vm(id, r.vm_id, VmState::Outdated)?);
    }
    for r in rows.iter().filter(|r| r.state == Some(VmState::Ongoing)) {
        st.cancel_vm(id, r.vm_id, now)?;
        if let Some(client) = &oned {
            // Each VM asked on its own: one oned refuses (its backup just ended) does not
            // keep the others running.
            match client.vm_backup_cancel(r.vm_id) {
                Ok(()) => stopped += 1,
                Err(x) => refused.push(format!("VM {}: {x}", r.vm_id)),
            }
            continue;
        }
        let Some(crate::state::VmRow { document: doc, .. }) = docs.iter().find(|d| d.id == r.vm_id)
        else {
            continue;
        };
        let root = backstop_protocol::xml::Element::parse(doc).map_err(|x| input(x.to_string()))?;
        let vm =
            backstop_protocol::message::Vm::from_xml(&root).map_err(|x| input(x.to_string()))?;
        let Some(place) = vm.placement.clone() else {
            continue;
        };
        let vm_dir = format!(
            "{}/{}/{}",
            env.datastore_location.trim_end_matches('/'),
            place.system_ds_id.unwrap_or(0),
            vm.id
        );
        let action = env
            .remotes
            .join(format!("datastore/{ds_mad}/backup_cancel"));
        let mut child = std::process::Command::new(&action)
            .arg(format!("{}:{vm_dir}", place.hostname))
            .arg(
                vm.deploy_id
                    .clone()
                    .unwrap_or_else(|| format!("one-{}", vm.id)),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|x| input(format!("cannot run {}: {x}", action.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(doc.as_bytes());
        }
        let out = child.wait_with_output().map_err(|x| input(x.to_string()))?;
        if !out.status.success() {
            return Err(input(format!(
                "backup_cancel of VM {}: {}",
                vm.id,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        stopped += 1;
    }
    if !refused.is_empty() {
        return Err(input(format!(
            "backup job {id}: {stopped} running backups stopped; oned refused to cancel {}",
            refused.join("; ")
        )));
    }
    Ok(Cancelled {
        job: id,
        dropped,
        stopped,
    })
}
