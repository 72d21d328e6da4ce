//! `backupjob retention JOB [--vm ID] [--json] [--apply --yes [--max-delete N]]`: the
//! retention plan of a job's VMs ([`backstop_backupjob::ops::retention`], docs/retention.md), read, or
//! carried out.

use super::{input, print};
use backstop_backupjob::Error;
use backstop_backupjob::ops::retention::{self, ApplyOptions, PlanOptions};
use backstop_backupjob::state::State;

pub(super) fn show(st: &State, id: u64, vm: Option<u64>, json: bool) -> Result<(), Error> {
    let plan = retention::plan(st, &PlanOptions { job: id, vm })?;
    if json {
        return print(&plan.json().to_string());
    }
    print(&plan.to_string())
}

/// `--apply --yes`: carries the plan out ([`retention::apply`]).
pub(super) fn apply(
    st: &mut State,
    args: &super::Args,
    (id, vm): (u64, Option<u64>),
    yes: bool,
    max_delete: usize,
) -> Result<(), Error> {
    if !yes {
        return Err(input(
            "--apply removes backups: add --yes to carry the plan out (run without --apply to read it first)",
        ));
    }
    let options = ApplyOptions {
        job: id,
        vm,
        max_delete,
        confirmed: None,
    };
    print(&retention::apply(&super::env(args), st, &options)?.to_string())
}
