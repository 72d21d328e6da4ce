//! # backstop-backupjob
//!
//! Backup jobs as OpenNebula defines them (spec §8, §11): the job model, the scheduler
//! (priority, SEQUENTIAL/PARALLEL, limits, scheduled actions), SQLite state and the `backupjob`
//! command line.
//!
//! Written so far: the scheduling tick and a job's run as pure functions ([`scheduler`]), and
//! the SCHED_ACTION arithmetic ([`schedule`]).
//! The state store ([`state`]: SQLite, migrations, compare-and-set moves, reconciliation),
//! the execution of one VM's backup through the installed actions with KEEP_LAST
//! ([`runner`]), job templates ([`model`]), running a job now within the limits ([`engine`])
//! a scheduler pass and daemon over the scheduled actions ([`engine::scheduler_pass`]) and a
//! first command line ([`cli`]: datastore, vm, create, list, show, backup, retry, cancel,
//! update, priority, rename, lock, unlock, delete, sched-add, sched-delete, image list,
//! scheduler). Not written yet: sched-update, image show/restore, progress with MB/s and ETA,
//! several jobs at once in the scheduler.

pub mod cli;
pub mod engine;
pub mod model;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod state;
