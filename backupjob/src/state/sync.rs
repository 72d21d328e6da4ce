//! Sync and verify jobs, and the record of every job's runs (docs/sync.md): one `job_runs`
//! table for backup, sync and verify runs.

use super::*;
use backstop_datastore::repo::copy::CopierId;

/// The kind of job a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Backup,
    Sync,
    Verify,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Sync => "sync",
            RunKind::Verify => "verify",
        }
    }
}

/// One run of a job, as recorded: the same shape for backup, sync and verify runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub id: u64,
    pub kind: RunKind,
    pub job_id: u64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub snapshots: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// What failed, one line per repository (or VM); none when the run worked.
    pub error: Option<String>,
}

/// A sync job's run.
pub type SyncRun = JobRun;

/// The error a run record is closed with when its process is gone; its end is when that was
/// noticed, not when the run stopped.
pub const KILLED: &str = "its runner was killed";

/// A verify run started ([`State::claim_verify_run`]): its record, and how many runs the job
/// had before it (which picks the share of packs this one reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyClaim {
    pub run: u64,
    pub before: u64,
}

/// A sync or a verify job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Sync,
    Verify,
}

/// Whether a recorded runner (a [`ProcessId`]) is still running.
fn alive(runner: Option<&str>) -> bool {
    runner
        .and_then(ProcessId::parse)
        .is_some_and(|p| p.is_running())
}

/// How many run records are open.
fn count_open(tx: &rusqlite::Transaction) -> rusqlite::Result<usize> {
    tx.query_row(
        "SELECT count(*) FROM job_runs WHERE ended_at IS NULL",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
}

/// Closes the open run records (of one job, or all) whose process is gone; how many open ones
/// are left, in live processes.
fn close_dead_runs(
    tx: &rusqlite::Transaction,
    of: Option<(RunKind, u64)>,
    now: i64,
) -> rusqlite::Result<usize> {
    let open: Vec<(i64, Option<String>)> = {
        use rusqlite::types::Value;
        let (filter, args) = match of {
            Some((kind, job)) => (
                " AND kind = ?1 AND job_id = ?2",
                vec![
                    Value::from(kind.as_str().to_string()),
                    Value::from(job as i64),
                ],
            ),
            None => ("", Vec::new()),
        };
        let mut stmt = tx.prepare(&format!(
            "SELECT id, runner FROM job_runs WHERE ended_at IS NULL{filter}"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut live = 0;
    for (id, who) in open {
        if alive(who.as_deref()) {
            live += 1;
            continue;
        }
        tx.execute(
            "UPDATE job_runs SET ended_at = ?1, error = ?2 WHERE id = ?3",
            params![now, KILLED, id],
        )?;
    }
    Ok(live)
}

impl State {
    /// A new sync job, with a new random id for its copies ([`State::sync_job_copier`]).
    pub fn add_sync_job(&mut self, name: &str, template: &str) -> Result<u64, StateError> {
        let copier = CopierId::random().map_err(|e| self.invalid(e.message))?;
        self.conn
            .execute(
                "INSERT INTO sync_jobs (name, template, written_at, copier) VALUES (?1, ?2, ?3, ?4)",
                params![
                    name,
                    template,
                    jiff::Timestamp::now().as_second(),
                    copier.as_str()
                ],
            )
            .map_err(|e| self.taken(e, || format!("a sync job named {name:?} already exists")))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// The id sync job `id` tags its copies with (`copied-by:<id>`), which decides the copies
    /// its REMOVE_VANISHED may forget. Every job has one from its creation (or from the schema
    /// migration for older jobs); one missing or not well formed (a state edited by hand) is
    /// replaced by a new one here, and that job's earlier copies are then left alone.
    pub fn sync_job_copier(&mut self, id: u64) -> Result<CopierId, StateError> {
        let stored = self
            .stored_copier(id)?
            .ok_or_else(|| self.invalid(format!("there is no sync job {id}")))?;
        if let Some(copier) = stored.as_deref().and_then(CopierId::parse) {
            return Ok(copier);
        }
        let copier = CopierId::random().map_err(|e| self.invalid(e.message))?;
        self.conn
            .execute(
                "UPDATE sync_jobs SET copier = ?1 WHERE id = ?2",
                params![copier.as_str(), id as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(copier)
    }

    /// Sync job `id`'s copier id as stored (`None` outside: no such job; inside: none yet).
    pub fn stored_copier(&self, id: u64) -> Result<Option<Option<String>>, StateError> {
        self.conn
            .query_row(
                "SELECT copier FROM sync_jobs WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every sync job.
    pub fn sync_jobs(&self) -> Result<Vec<super::Named>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, template FROM sync_jobs ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(super::Named {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    template: r.get(2)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Deletes a sync job and its run records (what it copied stays).
    pub fn delete_sync_job(&mut self, id: u64) -> Result<(), StateError> {
        self.delete_with_runs(("sync_jobs", "sync job"), RunKind::Sync, id)
    }

    /// Deletes a job's row and its run records, both or neither.
    pub(super) fn delete_with_runs(
        &mut self,
        (table, what): (&str, &str),
        kind: RunKind,
        id: u64,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let n = tx
            .execute(
                &format!("DELETE FROM {table} WHERE id = ?1"),
                params![id as i64],
            )
            .map_err(err)?;
        if n == 0 {
            drop(tx);
            return Err(self.invalid(format!("there is no {what} {id}")));
        }
        tx.execute(
            "DELETE FROM job_runs WHERE kind = ?1 AND job_id = ?2",
            params![kind.as_str(), id as i64],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// A new row of a job table (`sync_jobs`, `verify_jobs`) with a unique name; its id.
    fn insert_named(
        &mut self,
        table: &str,
        what: &str,
        name: &str,
        template: &str,
    ) -> Result<u64, StateError> {
        self.conn
            .execute(
                &format!("INSERT INTO {table} (name, template, written_at) VALUES (?1, ?2, ?3)"),
                params![name, template, jiff::Timestamp::now().as_second()],
            )
            .map_err(|e| self.taken(e, || format!("a {what} named {name:?} already exists")))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Replaces a job's template (and its name) in `sync_jobs` or `verify_jobs`.
    fn update_named(
        &mut self,
        (table, what): (&str, &str),
        id: u64,
        name: &str,
        template: &str,
    ) -> Result<(), StateError> {
        let n = self
            .conn
            .execute(
                &format!(
                    "UPDATE {table} SET name = ?1, template = ?2, written_at = ?3 WHERE id = ?4"
                ),
                params![
                    name,
                    template,
                    jiff::Timestamp::now().as_second(),
                    id as i64
                ],
            )
            .map_err(|e| self.taken(e, || format!("a {what} named {name:?} already exists")))?;
        if n == 0 {
            return Err(self.invalid(format!("there is no {what} {id}")));
        }
        Ok(())
    }

    /// When a job's template was last written (created or updated); `None` for a job from
    /// before that was recorded.
    pub fn written_at(&self, kind: JobKind, id: u64) -> Result<Option<i64>, StateError> {
        let table = match kind {
            JobKind::Sync => "sync_jobs",
            JobKind::Verify => "verify_jobs",
        };
        self.conn
            .query_row(
                &format!("SELECT written_at FROM {table} WHERE id = ?1"),
                params![id as i64],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.sql(e))
    }

    pub fn update_sync_job(
        &mut self,
        id: u64,
        name: &str,
        template: &str,
    ) -> Result<(), StateError> {
        self.update_named(("sync_jobs", "sync job"), id, name, template)
    }

    pub fn update_verify_job(
        &mut self,
        id: u64,
        name: &str,
        template: &str,
    ) -> Result<(), StateError> {
        self.update_named(("verify_jobs", "verify job"), id, name, template)
    }

    /// Starts a run record of a sync job for `runner` (this process); its id. `None` when a
    /// run of the job is going on in a live process: a job never overlaps itself. A run whose
    /// process is gone (killed) is closed first, saying so.
    pub fn claim_sync_run(
        &mut self,
        job: u64,
        now: i64,
        runner: &ProcessId,
    ) -> Result<Option<u64>, StateError> {
        self.claim_run(RunKind::Sync, job, now, runner)
    }

    /// Starts a run record of any kind of job, as [`State::claim_sync_run`] says.
    pub fn claim_run(
        &mut self,
        kind: RunKind,
        job: u64,
        now: i64,
        runner: &ProcessId,
    ) -> Result<Option<u64>, StateError> {
        self.open_run(kind, job, now, runner, true)
    }

    /// Starts a run record of a backup job; its id. Runs of one backup job may overlap (each
    /// VM is claimed on its own, [`State::job_vms`]), so a live one does not stop it; a run
    /// whose process is gone is closed first, saying so.
    pub fn record_backup_run(
        &mut self,
        job: u64,
        now: i64,
        runner: &ProcessId,
    ) -> Result<u64, StateError> {
        let id = self.open_run(RunKind::Backup, job, now, runner, false)?;
        Ok(id.unwrap_or_default())
    }

    /// Opens a run record; with `alone`, none while a run of the job is going on in a live
    /// process.
    fn open_run(
        &mut self,
        kind: RunKind,
        job: u64,
        now: i64,
        runner: &ProcessId,
        alone: bool,
    ) -> Result<Option<u64>, StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        // Immediate: the write lock is taken before the read, so two processes claiming at
        // once queue (the busy timeout) instead of one failing when it upgrades.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let live = close_dead_runs(&tx, Some((kind, job)), now).map_err(err)?;
        if alone && live > 0 {
            // The dead runs just closed stay closed.
            tx.commit().map_err(err)?;
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO job_runs (kind, job_id, started_at, runner) VALUES (?1, ?2, ?3, ?4)",
            params![kind.as_str(), job as i64, now, runner.to_string()],
        )
        .map_err(err)?;
        let id = tx.last_insert_rowid() as u64;
        tx.commit().map_err(err)?;
        Ok(Some(id))
    }

    /// Closes every run record whose process is gone (a killed runner), saying so; how many it
    /// closed. The scheduled pass and each backup run call it, so a dead run does not show as
    /// going on until its job runs again.
    pub fn close_dead_runs(&mut self, now: i64) -> Result<usize, StateError> {
        let path = self.path.clone();
        let err = |e| StateError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let open = count_open(&tx).map_err(err)?;
        let live = close_dead_runs(&tx, None, now).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(open - live)
    }

    /// The runs going on in a live process, after the dead ones are closed: (kind, job).
    pub fn live_runs(&mut self, now: i64) -> Result<Vec<(RunKind, u64)>, StateError> {
        self.close_dead_runs(now)?;
        let mut stmt = self
            .conn
            .prepare("SELECT kind, job_id FROM job_runs WHERE ended_at IS NULL ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(rows
            .into_iter()
            .map(|(k, j)| {
                let kind = match k.as_str() {
                    "sync" => RunKind::Sync,
                    "verify" => RunKind::Verify,
                    _ => RunKind::Backup,
                };
                (kind, j as u64)
            })
            .collect())
    }

    /// Ends a sync run's record with what it did.
    pub fn end_sync_run(&mut self, run: &SyncRun) -> Result<(), StateError> {
        self.end_run(run)
    }

    /// Ends a run record with what the run did.
    pub fn end_run(&mut self, run: &JobRun) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE job_runs SET ended_at = ?1, snapshots = ?2, bytes_read = ?3, \
                 bytes_written = ?4, error = ?5 WHERE id = ?6",
                params![
                    run.ended_at,
                    run.snapshots as i64,
                    run.bytes_read as i64,
                    run.bytes_written as i64,
                    run.error,
                    run.id as i64
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The runs of a sync job, newest first.
    pub fn sync_runs(&self, job: u64) -> Result<Vec<SyncRun>, StateError> {
        self.runs(RunKind::Sync, job)
    }

    /// The runs of a job, newest first.
    pub fn runs(&self, kind: RunKind, job: u64) -> Result<Vec<JobRun>, StateError> {
        self.recent_runs(kind, job, u32::MAX)
    }

    /// The newest `limit` runs of a job, newest first (for pages that show a history: a job
    /// that runs hourly records thousands a year).
    pub fn recent_runs(
        &self,
        kind: RunKind,
        job: u64,
        limit: u32,
    ) -> Result<Vec<JobRun>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, job_id, started_at, ended_at, snapshots, bytes_read, bytes_written, \
                 error FROM job_runs WHERE kind = ?1 AND job_id = ?2 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![kind.as_str(), job as i64, i64::from(limit)], |r| {
                Ok(JobRun {
                    id: r.get::<_, i64>(0)? as u64,
                    kind,
                    job_id: r.get::<_, i64>(1)? as u64,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    snapshots: r.get::<_, i64>(4)? as u64,
                    bytes_read: r.get::<_, i64>(5)? as u64,
                    bytes_written: r.get::<_, i64>(6)? as u64,
                    error: r.get(7)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

/// The last verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub datastore_id: u64,
    pub repository: String,
    pub snapshot: String,
    pub verified_at: i64,
    /// The damaged blobs (hex ids); empty when it verified clean.
    pub bad: Vec<String>,
}

impl State {
    pub fn add_verify_job(&mut self, name: &str, template: &str) -> Result<u64, StateError> {
        self.insert_named("verify_jobs", "verify job", name, template)
    }

    /// Every verify job.
    pub fn verify_jobs(&self) -> Result<Vec<super::VerifyJobRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.id, v.name, v.template, \
                 (SELECT count(*) FROM job_runs r WHERE r.kind = 'verify' AND r.job_id = v.id) \
                 FROM verify_jobs v ORDER BY v.id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(super::VerifyJobRow {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    template: r.get(2)?,
                    runs: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    pub fn delete_verify_job(&mut self, id: u64) -> Result<(), StateError> {
        self.delete_with_runs(("verify_jobs", "verify job"), RunKind::Verify, id)
    }

    /// Starts a run of a verify job for `runner`: its record and the number of runs before it,
    /// or `None` when a run is going on in a live process.
    pub fn claim_verify_run(
        &mut self,
        id: u64,
        now: i64,
        runner: &ProcessId,
    ) -> Result<Option<VerifyClaim>, StateError> {
        let Some(run) = self.claim_run(RunKind::Verify, id, now, runner)? else {
            return Ok(None);
        };
        let before: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM job_runs WHERE kind = 'verify' AND job_id = ?1 AND id < ?2",
                params![id as i64, run as i64],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        Ok(Some(VerifyClaim {
            run,
            before: before as u64,
        }))
    }

    /// When each verify job last started.
    pub fn verify_last_runs(&self) -> Result<Vec<super::LastRun>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.id, \
                 (SELECT max(started_at) FROM job_runs r WHERE r.kind = 'verify' AND r.job_id = v.id) \
                 FROM verify_jobs v ORDER BY v.id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(super::LastRun {
                    job: r.get::<_, i64>(0)? as u64,
                    started_at: r.get(1)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Records the verdict on a snapshot (replacing the one before).
    pub fn record_verdict(&mut self, v: &Verdict) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO verify_results \
                 (datastore_id, repository, snapshot, verified_at, bad) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    v.datastore_id as i64,
                    v.repository,
                    v.snapshot,
                    v.verified_at,
                    v.bad.join(",")
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The verdicts recorded for a datastore's repository.
    pub fn verdicts(&self, datastore: u64, repository: &str) -> Result<Vec<Verdict>, StateError> {
        self.verdicts_where(datastore, Some(repository))
    }

    /// The verdicts on every repository of a datastore, by repository and snapshot.
    pub fn verdicts_in(&self, datastore: u64) -> Result<Vec<Verdict>, StateError> {
        self.verdicts_where(datastore, None)
    }

    fn verdicts_where(
        &self,
        datastore: u64,
        repository: Option<&str>,
    ) -> Result<Vec<Verdict>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT snapshot, verified_at, bad, repository FROM verify_results \
                 WHERE datastore_id = ?1 AND (?2 IS NULL OR repository = ?2) \
                 ORDER BY repository, snapshot",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![datastore as i64, repository], |r| {
                let bad: String = r.get(2)?;
                Ok(Verdict {
                    datastore_id: datastore,
                    repository: r.get(3)?,
                    snapshot: r.get(0)?,
                    verified_at: r.get(1)?,
                    bad: bad
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}
