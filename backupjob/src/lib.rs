//! # backstop-backupjob
//!
//! Backup jobs as OpenNebula defines them (spec §8, §11): the job model, the scheduler
//! (priority, SEQUENTIAL/PARALLEL, limits, scheduled actions), SQLite state and the `backupjob`
//! command line.
//!
//! Written so far: the scheduling tick and a job's run as pure functions ([`scheduler`]), and
//! the SCHED_ACTION arithmetic ([`schedule`]).
//! The state store ([`state`]: SQLite, migrations, compare-and-set moves, reconciliation)
//! is written; the execution of jobs and the command line are not.

pub mod schedule;
pub mod scheduler;
pub mod state;
