//! The job runner's state, in SQLite (rusqlite with the bundled library).
//!
//! - Where: `--state PATH`, else `BACKSTOP_STATE`, else `<data dir>/backstop/state.db`
//!   (`$XDG_DATA_HOME`, else `~/.local/share`).
//! - WAL and a busy timeout, so the command line and the scheduler daemon can work at once;
//!   every change is one transaction, so a killed process loses nothing it reported as done.
//! - Schema versions in `PRAGMA user_version`, applied in order on open ([`MIGRATIONS`]).
//!
//! A VM of a job is in one of four sets (driver contract §11.1): OUTDATED, ONGOING (oned's BACKING_UP),
//! UPDATED or ERROR. Moves are compare-and-set ([`State::move_vm`]), so two processes never
//! both start the same backup. [`State::orphans`] are the ONGOING VMs whose runner is gone;
//! the engine settles them by what really happened.

use backstop_image::process::ProcessId;
mod daemon;
mod discovered;
mod images;
mod inventory;
mod mirrored;
mod rekeys;
mod rows;
mod schedules;
mod schema;
pub mod secrets;
pub mod sync;

pub use daemon::{SchedulerBeat, SchedulerStart};
pub use mirrored::MirroredImage;
pub use rekeys::{Rekey, RekeyPhase};
pub use rows::{Chain, JobRow, JobStatus, LastRun, Named, Orphan, SchedActionRow, VerifyJobRow};
use schedules::insert_sched_action;
pub use schema::MIGRATIONS;

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state database {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Where a VM stands in its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Outdated,
    Ongoing,
    Updated,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Outdated => "OUTDATED",
            VmState::Ongoing => "ONGOING",
            VmState::Updated => "UPDATED",
            VmState::Error => "ERROR",
        }
    }

    fn parse(s: &str) -> Option<VmState> {
        Some(match s {
            "OUTDATED" => VmState::Outdated,
            "ONGOING" => VmState::Ongoing,
            "UPDATED" => VmState::Updated,
            "ERROR" => VmState::Error,
            _ => return None,
        })
    }
}

/// A VM of a job, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobVm {
    pub vm_id: u64,
    pub position: u32,
    pub state: Option<VmState>,
    pub reason: Option<String>,
    pub failures: u32,
    pub runner_pid: Option<u32>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// The latest progress of its running backup: (done, total, bytes read, when in ms).
    pub progress: Option<(u64, u64, u64, i64)>,
}

/// A backup image and its increments (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub id: u64,
    pub vm_id: u64,
    pub job_id: Option<u64>,
    pub datastore_id: u64,
    /// No retention rule removes it.
    pub protected: bool,
    pub increments: Vec<IncrementRow>,
}

/// An image with a summary of its points (the dashboard's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: u64,
    pub vm_id: u64,
    pub job_id: Option<u64>,
    pub datastore_id: u64,
    pub protected: bool,
    pub points: u64,
    pub stored_mb: u64,
    pub newest: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementRow {
    pub id: u64,
    pub source: String,
    pub size_mb: u64,
    pub kind: String,
    pub created_at: i64,
}

/// A registered VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub id: u64,
    pub name: String,
    /// The host it ran on when registered, if its document names one.
    pub host: Option<String>,
    /// Its `onevm show -x` document, as registered.
    pub document: String,
}

#[derive(Debug)]
pub struct State {
    conn: Connection,
    path: String,
    file: PathBuf,
    /// Seals the datastores' secrets at rest ([`secrets`]).
    seal: secrets::SealKey,
}

/// The default state file.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BACKSTOP_STATE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(data.join("backstop/state.db"))
}

impl State {
    /// Opens (creating it and its directory if needed) and migrates the state database.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let shown = path.display().to_string();
        let sql = |source| StateError::Sqlite {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Invalid {
                path: shown.clone(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        // It holds the datastores' templates, passwords included: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StateError::Invalid {
                    path: shown.clone(),
                    message: format!("cannot make it private: {e}"),
                },
            )?;
        }
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        // Deleted and rewritten rows are zeroed, so a secret sealed on open leaves no copy in
        // clear in a free page.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(sql)?;
        let seal = secrets::SealKey::load_or_create(&secrets::key_path(path)).map_err(|e| {
            StateError::Invalid {
                path: shown.clone(),
                message: e.0,
            }
        })?;
        let mut state = State {
            conn,
            path: shown,
            file: path.to_path_buf(),
            seal,
        };
        state.migrate()?;
        state.seal_stored_secrets()?;
        Ok(state)
    }

    fn sql(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// A failed insert or update: a UNIQUE violation said as `taken`, anything else as is.
    fn taken(&self, e: rusqlite::Error, taken: impl FnOnce() -> String) -> StateError {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                self.invalid(taken())
            }
            e => self.sql(e),
        }
    }

    fn invalid(&self, message: String) -> StateError {
        StateError::Invalid {
            path: self.path.clone(),
            message,
        }
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(self.invalid(format!(
                "schema version {version} is newer than this backstop knows ({known}); use a newer backstop"
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let path = self.path.clone();
            let tx = self.conn.transaction().map_err(|e| StateError::Sqlite {
                path: path.clone(),
                source: e,
            })?;
            tx.execute_batch(m)
                .and_then(|()| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|()| tx.commit())
                .map_err(|e| StateError::Sqlite { path, source: e })?;
        }
        Ok(())
    }

    /// The database file (another connection can open it).
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn schema_version(&self) -> Result<i64, StateError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    /// Adds a job with its VMs (in backup order); a VM may be in one job only.
    pub fn create_job(
        &mut self,
        name: &str,
        priority: u8,
        template: &str,
        vms: &[u64],
    ) -> Result<u64, StateError> {
        self.create_job_with(name, priority, template, vms, &[])
    }

    /// A new job with its scheduled actions, in one transaction.
    pub fn create_job_with(
        &mut self,
        name: &str,
        priority: u8,
        template: &str,
        vms: &[u64],
        sched: &[crate::schedule::SchedAction],
    ) -> Result<u64, StateError> {
        if priority > 99 {
            return Err(self.invalid(format!("PRIORITY {priority} is not 0–99")));
        }
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for vm in vms {
            let other: Option<(u64, String)> = tx
                .query_row(
                    "SELECT j.id, j.name FROM job_vms v JOIN jobs j ON j.id = v.job_id WHERE v.vm_id = ?1",
                    params![*vm as i64],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            if let Some((id, other)) = other {
                return Err(StateError::Invalid {
                    path: path.clone(),
                    message: format!("VM {vm} is already in backup job {id} ({other})"),
                });
            }
        }
        tx.execute(
            "INSERT INTO jobs (name, priority, template) VALUES (?1, ?2, ?3)",
            params![name, priority, template],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StateError::Invalid {
                    path: path.clone(),
                    message: format!("a backup job named {name:?} already exists"),
                }
            }
            e => err(e),
        })?;
        let id = tx.last_insert_rowid() as u64;
        for (pos, vm) in vms.iter().enumerate() {
            tx.execute(
                "INSERT INTO job_vms (job_id, vm_id, position) VALUES (?1, ?2, ?3)",
                params![id as i64, *vm as i64, pos as i64],
            )
            .map_err(err)?;
        }
        for sa in sched {
            insert_sched_action(&tx, id, sa).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// The VMs of a job, in backup order.
    pub fn job_vms(&self, job: u64) -> Result<Vec<JobVm>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT vm_id, position, state, reason, failures, runner_pid, started_at, ended_at
                        , progress_done, progress_total, progress_read, progress_at
                 FROM job_vms WHERE job_id = ?1 ORDER BY position",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![job as i64], |r| {
                Ok(JobVm {
                    vm_id: r.get::<_, i64>(0)? as u64,
                    position: r.get::<_, i64>(1)? as u32,
                    state: r
                        .get::<_, Option<String>>(2)?
                        .and_then(|s| VmState::parse(&s)),
                    reason: r.get(3)?,
                    failures: r.get::<_, i64>(4)? as u32,
                    runner_pid: r.get::<_, Option<i64>>(5)?.map(|p| p as u32),
                    started_at: r.get(6)?,
                    ended_at: r.get(7)?,
                    progress: match (
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, Option<i64>>(9)?,
                        r.get::<_, Option<i64>>(10)?,
                        r.get::<_, Option<i64>>(11)?,
                    ) {
                        (Some(d), Some(t), Some(b), Some(at)) => {
                            Some((d as u64, t as u64, b as u64, at))
                        }
                        _ => None,
                    },
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Records the progress of a VM's running backup (`at` in ms).
    pub fn set_progress(
        &mut self,
        job: u64,
        vm: u64,
        (done, total, read): (u64, u64, u64),
        at: i64,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE job_vms SET progress_done = ?1, progress_total = ?2, progress_read = ?3,
                 progress_at = ?4 WHERE job_id = ?5 AND vm_id = ?6",
                params![
                    done as i64,
                    total as i64,
                    read as i64,
                    at,
                    job as i64,
                    vm as i64
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Moves a VM of a job from `from` (None: in no set) to `to`, only if it is still in
    /// `from`; returns whether it moved. `now` is in milliseconds since the epoch. Entering ONGOING records the runner's PID and the
    /// start; leaving it records the end; ERROR counts a failure, UPDATED resets the count.
    pub fn move_vm(
        &mut self,
        job: u64,
        vm: u64,
        from: Option<VmState>,
        to: VmState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StateError> {
        let me = ProcessId::current();
        let from = from.map(VmState::as_str);
        let changed = self
            .conn
            .execute(
                "UPDATE job_vms SET
                    state = ?1,
                    reason = ?2,
                    runner_pid = CASE WHEN ?1 = 'ONGOING' THEN ?3 ELSE runner_pid END,
                    runner = CASE WHEN ?1 = 'ONGOING' THEN ?8 ELSE runner END,
                    started_at = CASE WHEN ?1 = 'ONGOING' THEN ?4 ELSE started_at END,
                    ended_at = CASE WHEN ?1 = 'ONGOING' THEN NULL
                                    WHEN state = 'ONGOING' THEN ?4 ELSE ended_at END,
                    failures = CASE WHEN ?1 = 'ERROR' AND state = 'ONGOING' THEN failures + 1
                                    WHEN ?1 = 'UPDATED' THEN 0 ELSE failures END,
                    progress_at = CASE WHEN ?1 = 'ONGOING' THEN NULL ELSE progress_at END
                 WHERE job_id = ?5 AND vm_id = ?6 AND state IS ?7",
                params![
                    to.as_str(),
                    reason,
                    me.pid,
                    now,
                    job as i64,
                    vm as i64,
                    from,
                    me.to_string()
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(changed == 1)
    }

    /// Every job.
    pub fn jobs(&self) -> Result<Vec<JobRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, priority, template FROM jobs ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JobRow {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    priority: r.get::<_, i64>(2)? as u8,
                    template: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Whether a job is locked, and when its last finished run started and how long it took
    /// (seconds): read from the run records (`job_runs`); a killed run is not counted (its
    /// end is when the kill was noticed). For a job whose last run predates the records
    /// (schema 9 and older), from the job's own columns, which nothing writes any more.
    pub fn job_status(&self, job: u64) -> Result<JobStatus, StateError> {
        self.conn
            .query_row(
                "SELECT j.locked, r.started_at, r.ended_at - r.started_at, \
                 j.last_backup_time, j.last_backup_duration FROM jobs j \
                 LEFT JOIN job_runs r ON r.id = (SELECT max(id) FROM job_runs \
                 WHERE kind = 'backup' AND job_id = j.id AND ended_at IS NOT NULL \
                 AND error IS NOT ?2) \
                 WHERE j.id = ?1",
                params![job as i64, sync::KILLED],
                |r| {
                    let run: Option<i64> = r.get(1)?;
                    Ok(JobStatus {
                        locked: r.get::<_, i64>(0)? != 0,
                        last_started: run.or(r.get(3)?),
                        last_duration: match run {
                            Some(_) => r.get(2)?,
                            None => r.get(4)?,
                        },
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| self.invalid(format!("there is no backup job {job}")))
    }

    fn update_job(
        &mut self,
        job: u64,
        sql: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<(), StateError> {
        let n = self
            .conn
            .execute(sql, params![value, job as i64])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    self.invalid("that value is taken or out of range".into())
                }
                e => self.sql(e),
            })?;
        if n == 0 {
            return Err(self.invalid(format!("there is no backup job {job}")));
        }
        Ok(())
    }

    /// Replaces a job's template and its VMs (in backup order). VMs that left lose their sets;
    /// new VMs start in none; a VM may still be in one job only.
    pub fn set_job_template(
        &mut self,
        job: u64,
        template: &str,
        vms: &[u64],
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for vm in vms {
            let other: Option<i64> = tx
                .query_row(
                    "SELECT job_id FROM job_vms WHERE vm_id = ?1 AND job_id != ?2",
                    params![*vm as i64, job as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            if let Some(other) = other {
                return Err(StateError::Invalid {
                    path: path.clone(),
                    message: format!("VM {vm} is already in backup job {other}"),
                });
            }
        }
        let n = tx
            .execute(
                "UPDATE jobs SET template = ?1 WHERE id = ?2",
                params![template, job as i64],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StateError::Invalid {
                path: path.clone(),
                message: format!("there is no backup job {job}"),
            });
        }
        place_job_vms(&tx, job, vms).map_err(err)?;
        tx.commit().map_err(err)
    }

    pub fn set_priority(&mut self, job: u64, priority: u8) -> Result<(), StateError> {
        if priority > 99 {
            return Err(self.invalid(format!("PRIORITY {priority} is not 0–99")));
        }
        self.update_job(
            job,
            "UPDATE jobs SET priority = ?1 WHERE id = ?2",
            &priority,
        )
    }

    pub fn rename_job(&mut self, job: u64, name: &str) -> Result<(), StateError> {
        self.update_job(job, "UPDATE jobs SET name = ?1 WHERE id = ?2", &name)
    }

    pub fn set_locked(&mut self, job: u64, locked: bool) -> Result<(), StateError> {
        self.update_job(job, "UPDATE jobs SET locked = ?1 WHERE id = ?2", &locked)
    }

    pub fn locked(&self, job: u64) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT locked FROM jobs WHERE id = ?1",
                params![job as i64],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| self.invalid(format!("there is no backup job {job}")))
    }

    /// Deletes a job, its VMs' membership and its scheduled actions (its backup images stay:
    /// they are the VMs' backups). Refused while a VM is ONGOING.
    pub fn delete_job(&mut self, job: u64) -> Result<(), StateError> {
        if self
            .job_vms(job)?
            .iter()
            .any(|v| v.state == Some(VmState::Ongoing))
        {
            return Err(self.invalid(format!(
                "backup job {job} has backups in progress; cancel it first"
            )));
        }
        // The job and the records of its runs go together.
        self.delete_with_runs(("jobs", "backup job"), sync::RunKind::Backup, job)
    }

    /// A cancelled backup: ONGOING → ERROR with the reason, without counting a failure (a
    /// cancel says nothing about the VM). Returns whether it moved.
    pub fn cancel_vm(&mut self, job: u64, vm: u64, now: i64) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute(
                "UPDATE job_vms SET state = 'ERROR', reason = 'the backup was cancelled',
                 ended_at = ?1 WHERE job_id = ?2 AND vm_id = ?3 AND state = 'ONGOING'",
                params![now, job as i64, vm as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// Takes a VM out of every set if it is still in `from` (a cancelled OUTDATED VM).
    pub fn clear_vm(&mut self, job: u64, vm: u64, from: VmState) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute(
                "UPDATE job_vms SET state = NULL, reason = NULL WHERE job_id = ?1 AND vm_id = ?2 AND state = ?3",
                params![job as i64, vm as i64, from.as_str()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// The ONGOING VMs whose runner process is gone (a killed scheduler or `backupjob
    /// backup`): (job, VM, when it went ONGOING in ms). A runner is named by its
    /// [`ProcessId`]; one recorded without it (before schema 2) counts as gone.
    pub fn orphans(
        &self,
        runner_alive: impl Fn(&ProcessId) -> bool,
    ) -> Result<Vec<Orphan>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job_id, vm_id, runner, started_at FROM job_vms
                 WHERE state = 'ONGOING' ORDER BY job_id, position",
            )
            .map_err(|e| self.sql(e))?;
        let rows: Vec<(u64, u64, Option<ProcessId>, Option<i64>)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<String>>(2)?
                        .and_then(|p| ProcessId::parse(&p)),
                    r.get(3)?,
                ))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, runner, _)| !runner.as_ref().is_some_and(&runner_alive))
            .map(|(job, vm, _, started)| Orphan {
                job,
                vm,
                ongoing_since_ms: started.unwrap_or(0),
            })
            .collect())
    }
}

/// Makes `vms` (in backup order) a job's VMs: those that left lose their rows, new ones get
/// a row in no set, the others keep theirs with their new position.
fn place_job_vms(tx: &rusqlite::Transaction<'_>, job: u64, vms: &[u64]) -> rusqlite::Result<()> {
    let keep: Vec<String> = vms.iter().map(u64::to_string).collect();
    tx.execute(
        &format!(
            "DELETE FROM job_vms WHERE job_id = ?1 AND vm_id NOT IN ({})",
            if keep.is_empty() {
                "-1".to_string()
            } else {
                keep.join(",")
            }
        ),
        params![job as i64],
    )?;
    for (pos, vm) in vms.iter().enumerate() {
        tx.execute(
            "INSERT INTO job_vms (job_id, vm_id, position) VALUES (?1, ?2, ?3)
             ON CONFLICT(job_id, vm_id) DO UPDATE SET position = ?3",
            params![job as i64, *vm as i64, pos as i64],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
