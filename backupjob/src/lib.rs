//! # backstop-backupjob
//!
//! Backup jobs as OpenNebula defines them (spec §8, §11): the job model, the scheduler
//! (priority, SEQUENTIAL/PARALLEL, limits, scheduled actions), SQLite state and the `backupjob`
//! command line.
//!
//! Nothing here is written yet.
