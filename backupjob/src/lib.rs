//! # backstop-backupjob
//!
//! Backup jobs as OpenNebula defines them (driver contract §8, §11): the job model, the scheduler
//! (priority, SEQUENTIAL/PARALLEL, limits, scheduled actions), SQLite state and the operations
//! the `backupjob` command line (in the `backstop` binary) and the web server call.
//!
//! - [`scheduler`]: the scheduling tick and a job's run as pure functions;
//! - [`schedule`]: the SCHED_ACTION arithmetic;
//! - [`state`]: SQLite, migrations, compare-and-set moves, orphaned VMs;
//! - [`runner`]: one VM's backup chain through the installed actions, recorded, KEEP_LAST;
//! - [`model`]: job and datastore templates, validated with line numbers;
//! - [`engine`]: jobs run together within the limits (one tick sees them all), with
//!   progress, the scheduler pass, and the reconciliation of what a killed runner left
//!   ONGOING with the repository;
//! - [`ops`]: the operations the command line and the web server call (run, retry, cancel,
//!   retention, definitions, sync and verify runs, the scheduler's pass), each with named
//!   options and a named result whose `Display` is the text shown for it;
//! - [`error`]: the one error type, with the kind of failure.

pub mod calendar;
pub mod discover;
pub mod engine;
pub mod error;
pub mod escrow;
pub mod filters;
pub mod job_template;
pub mod json_time;
pub mod model;
pub mod names;
pub mod notify;
pub mod oned;
pub mod ops;
pub mod pool;
pub mod rekey;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod scheduled;
pub mod scheduler;
pub mod state;
pub mod sync;
pub mod verify_job;

pub use error::Error;
