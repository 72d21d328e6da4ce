//! # backstop-backupjob
//!
//! Backup jobs as OpenNebula defines them (spec §8, §11): the job model, the scheduler
//! (priority, SEQUENTIAL/PARALLEL, limits, scheduled actions), SQLite state and the `backupjob`
//! command line.
//!
//! Written so far: the scheduling tick and a job's run as pure functions ([`scheduler`]), and
//! the SCHED_ACTION arithmetic ([`schedule`]).
//! The state store ([`state`]: SQLite, migrations, compare-and-set moves, reconciliation)
//! and the execution of one VM's backup through the installed actions with KEEP_LAST
//! ([`runner`]) are written; running whole jobs on the tick, cancel/retry and the `backupjob`
//! command line are not.

pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod state;
