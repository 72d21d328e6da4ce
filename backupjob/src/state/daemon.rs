//! The scheduler daemon's heartbeat: one row, written when it starts, every few seconds while
//! it lives (a pass can take hours), at the start and end of every pass, and when it stops
//! cleanly; read by the dashboard (docs/web.md, "Overdue work").

use super::*;

/// What the scheduler daemon last said of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerBeat {
    pub pid: u32,
    /// When this daemon started (epoch seconds).
    pub started_at: i64,
    /// When it last said it was alive.
    pub alive_at: i64,
    /// When the pass it is in started; `None` between passes.
    pub pass_started_at: Option<i64>,
    /// When its last pass ended; `None` before the first one ends.
    pub last_pass_at: Option<i64>,
    /// Seconds between its passes.
    pub interval: u64,
    /// The limits it runs jobs within (0: unlimited).
    pub max_backups: u32,
    pub max_backups_host: u32,
    /// When it stopped on SIGTERM or SIGINT; `None` while it runs (or when it died).
    pub stopped_at: Option<i64>,
}

/// What a scheduler says of itself when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerStart {
    pub pid: u32,
    pub interval: u64,
    pub max_backups: u32,
    pub max_backups_host: u32,
}

impl State {
    /// A scheduler daemon starts at `now`: its row replaces any earlier daemon's.
    pub fn scheduler_started(&self, s: &SchedulerStart, now: i64) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO scheduler (id, pid, started_at, alive_at, pass_started_at,
                                        last_pass_at, interval, max_backups, max_backups_host,
                                        stopped_at)
                 VALUES (1, ?1, ?2, ?2, NULL, NULL, ?3, ?4, ?5, NULL)
                 ON CONFLICT (id) DO UPDATE SET pid = ?1, started_at = ?2, alive_at = ?2,
                    pass_started_at = NULL, last_pass_at = NULL, interval = ?3,
                    max_backups = ?4, max_backups_host = ?5, stopped_at = NULL",
                params![
                    s.pid,
                    now,
                    s.interval as i64,
                    s.max_backups,
                    s.max_backups_host
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The scheduler `pid` is alive at `now` (a later daemon's row is left alone).
    pub fn scheduler_alive(&self, pid: u32, now: i64) -> Result<(), StateError> {
        self.scheduler_update("alive_at = ?2", pid, now)
    }

    /// The scheduler `pid` starts a pass at `now`.
    pub fn scheduler_pass_starts(&self, pid: u32, now: i64) -> Result<(), StateError> {
        self.scheduler_update("alive_at = ?2, pass_started_at = ?2", pid, now)
    }

    /// The scheduler `pid` ended a pass at `now`.
    pub fn scheduler_pass_ends(&self, pid: u32, now: i64) -> Result<(), StateError> {
        self.scheduler_update(
            "alive_at = ?2, pass_started_at = NULL, last_pass_at = ?2",
            pid,
            now,
        )
    }

    /// The scheduler `pid` stopped cleanly at `now`.
    pub fn scheduler_stopped(&self, pid: u32, now: i64) -> Result<(), StateError> {
        self.scheduler_update(
            "alive_at = ?2, pass_started_at = NULL, stopped_at = ?2",
            pid,
            now,
        )
    }

    fn scheduler_update(&self, set: &str, pid: u32, now: i64) -> Result<(), StateError> {
        self.conn
            .execute(
                &format!("UPDATE scheduler SET {set} WHERE id = 1 AND pid = ?1"),
                params![pid, now],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The scheduler's heartbeat; `None` when no scheduler ever ran on this state.
    pub fn scheduler_beat(&self) -> Result<Option<SchedulerBeat>, StateError> {
        self.conn
            .query_row(
                "SELECT pid, started_at, alive_at, pass_started_at, last_pass_at, interval,
                        max_backups, max_backups_host, stopped_at FROM scheduler WHERE id = 1",
                [],
                |r| {
                    Ok(SchedulerBeat {
                        pid: r.get(0)?,
                        started_at: r.get(1)?,
                        alive_at: r.get(2)?,
                        pass_started_at: r.get(3)?,
                        last_pass_at: r.get(4)?,
                        interval: r.get::<_, i64>(5)?.max(0) as u64,
                        max_backups: r.get(6)?,
                        max_backups_host: r.get(7)?,
                        stopped_at: r.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }
}
