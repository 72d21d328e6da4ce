//! Scheduled actions of the jobs.

use super::*;

impl State {
    /// Adds a scheduled action to a job; its id.
    pub fn add_sched_action(
        &mut self,
        job: u64,
        sa: &crate::schedule::SchedAction,
    ) -> Result<u64, StateError> {
        insert_sched_action(&self.conn, job, sa).map_err(|e| self.sql(e))
    }

    /// The scheduled actions of a job: (id, action, message).
    pub fn sched_actions(&self, job: u64) -> Result<Vec<super::SchedActionRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, time, repeat, days, end_type, end_value, done, message
                 FROM sched_actions WHERE job_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![job as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, time, repeat, days, end_type, end_value, done, message) =
                row.map_err(|e| self.sql(e))?;
            let mut sa =
                crate::schedule::SchedAction::new(time, repeat, &days, end_type, end_value)
                    .map_err(|e| self.invalid(format!("scheduled action {id}: {e}")))?;
            sa.done = done;
            out.push(super::SchedActionRow {
                id,
                action: sa,
                message,
            });
        }
        Ok(out)
    }

    /// Stores a scheduled action after a run (or a failed one, with its message).
    pub fn update_sched_action(
        &mut self,
        id: u64,
        sa: &crate::schedule::SchedAction,
        message: Option<&str>,
    ) -> Result<(), StateError> {
        let (end_type, end_value) = sa.end.codes();
        let days: Vec<String> = sa.days.iter().map(u32::to_string).collect();
        self.conn
            .execute(
                "UPDATE sched_actions SET time = ?1, done = ?2, end_type = ?3, end_value = ?4,
                 message = ?5, repeat = ?6, days = ?7 WHERE id = ?8",
                params![
                    sa.time,
                    sa.done,
                    end_type,
                    end_value,
                    message,
                    sa.repeat.code(),
                    days.join(","),
                    id as i64
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn delete_sched_action(&mut self, job: u64, id: u64) -> Result<(), StateError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM sched_actions WHERE id = ?1 AND job_id = ?2",
                params![id as i64, job as i64],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(self.invalid(format!("backup job {job} has no scheduled action {id}")));
        }
        Ok(())
    }
}

pub(super) fn insert_sched_action(
    conn: &rusqlite::Connection,
    job: u64,
    sa: &crate::schedule::SchedAction,
) -> rusqlite::Result<u64> {
    let (end_type, end_value) = sa.end.codes();
    let days: Vec<String> = sa.days.iter().map(u32::to_string).collect();
    conn.execute(
        "INSERT INTO sched_actions (job_id, time, repeat, days, end_type, end_value, done)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            job as i64,
            sa.time,
            sa.repeat.code(),
            days.join(","),
            end_type,
            end_value,
            sa.done
        ],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}
