//! The scheduler daemon's heartbeat: one row, written at its start, after every pass and when
//! it stops cleanly, read by the dashboard (docs/web.md, "Overdue work").

use super::*;

/// What the scheduler daemon last said of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerBeat {
    pub pid: u32,
    /// When this daemon started (epoch seconds).
    pub started_at: i64,
    /// When its last pass ended.
    pub last_pass_at: i64,
    /// Seconds between its passes.
    pub interval: u64,
    /// The limits it runs jobs within (0: unlimited).
    pub max_backups: u32,
    pub max_backups_host: u32,
    /// When it stopped on SIGTERM or SIGINT; `None` while it runs (or when it died).
    pub stopped_at: Option<i64>,
}

impl State {
    /// Records a pass of the scheduler (a new daemon's first pass replaces the row).
    pub fn record_scheduler_pass(&self, beat: &SchedulerBeat) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO scheduler (id, pid, started_at, last_pass_at, interval, max_backups,
                                        max_backups_host, stopped_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, NULL)
                 ON CONFLICT (id) DO UPDATE SET pid = ?1, started_at = ?2, last_pass_at = ?3,
                    interval = ?4, max_backups = ?5, max_backups_host = ?6, stopped_at = NULL",
                params![
                    beat.pid,
                    beat.started_at,
                    beat.last_pass_at,
                    beat.interval as i64,
                    beat.max_backups,
                    beat.max_backups_host
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Records that the scheduler daemon `pid` stopped cleanly at `now`.
    pub fn record_scheduler_stop(&self, pid: u32, now: i64) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE scheduler SET stopped_at = ?2 WHERE id = 1 AND pid = ?1",
                params![pid, now],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The scheduler's heartbeat; `None` when no scheduler ever ran on this state.
    pub fn scheduler_beat(&self) -> Result<Option<SchedulerBeat>, StateError> {
        self.conn
            .query_row(
                "SELECT pid, started_at, last_pass_at, interval, max_backups, max_backups_host,
                        stopped_at FROM scheduler WHERE id = 1",
                [],
                |r| {
                    Ok(SchedulerBeat {
                        pid: r.get(0)?,
                        started_at: r.get(1)?,
                        last_pass_at: r.get(2)?,
                        interval: r.get::<_, i64>(3)?.max(0) as u64,
                        max_backups: r.get(4)?,
                        max_backups_host: r.get(5)?,
                        stopped_at: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }
}
