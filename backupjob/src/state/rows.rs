//! The records the state hands out: one named struct per kind of row, never a tuple.

use crate::schedule::SchedAction;

/// A datastore, a remote or a sync job: its id, name and template (secrets opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub id: u64,
    pub name: String,
    pub template: String,
}

/// A backup job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: u64,
    pub name: String,
    pub priority: u8,
    pub template: String,
}

/// Whether a backup job is locked, and when its last run started and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStatus {
    pub locked: bool,
    /// Seconds since the epoch.
    pub last_started: Option<i64>,
    /// Seconds.
    pub last_duration: Option<i64>,
}

/// A VM left ONGOING by a runner that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub job: u64,
    pub vm: u64,
    /// When it went ONGOING, in milliseconds since the epoch (0 when not recorded).
    pub ongoing_since_ms: i64,
}

/// A scheduled action of a backup job, and the message of its last outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedActionRow {
    pub id: u64,
    pub action: SchedAction,
    pub message: Option<String>,
}

/// A verify job, with the number of runs it has had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyJobRow {
    pub id: u64,
    pub name: String,
    pub template: String,
    pub runs: u64,
}

/// When a verify job's last run started (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastRun {
    pub job: u64,
    pub started_at: Option<i64>,
}

/// The chain a VM's next INCREMENT extends: its newest image and that image's last increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chain {
    pub image: Option<u64>,
    pub last_increment: Option<u64>,
}
