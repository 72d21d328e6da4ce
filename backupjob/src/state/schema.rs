//! The state database's schema, as migrations applied in order ([`MIGRATIONS`]).

/// Schema migrations; `user_version` is how many have been applied.
pub const MIGRATIONS: &[&str] = &[
    // 1: datastores, VMs, jobs, their VMs and schedules, backup images and increments. Ids
    // are never reused (AUTOINCREMENT), as OpenNebula never reuses them: an image of a
    // deleted job must not look like one of a new job.
    "CREATE TABLE datastores (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        template TEXT NOT NULL
     );
     CREATE TABLE vms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        host TEXT,
        document TEXT NOT NULL
     );
     CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        priority INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 99),
        template TEXT NOT NULL,
        locked INTEGER NOT NULL DEFAULT 0,
        last_backup_time INTEGER,
        last_backup_duration INTEGER
     );
     CREATE TABLE job_vms (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        vm_id INTEGER NOT NULL UNIQUE,
        position INTEGER NOT NULL,
        state TEXT CHECK (state IN ('OUTDATED', 'ONGOING', 'UPDATED', 'ERROR')),
        reason TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        runner_pid INTEGER,
        started_at INTEGER,
        ended_at INTEGER,
        PRIMARY KEY (job_id, vm_id)
     );
     CREATE TABLE sched_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        time INTEGER NOT NULL,
        repeat INTEGER NOT NULL,
        days TEXT NOT NULL,
        end_type INTEGER NOT NULL,
        end_value INTEGER,
        done INTEGER NOT NULL DEFAULT 0,
        message TEXT
     );
     CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        vm_id INTEGER NOT NULL,
        job_id INTEGER,
        datastore_id INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE increments (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        id INTEGER NOT NULL,
        source TEXT NOT NULL,
        size_mb INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('FULL', 'INCREMENT')),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (image_id, id)
     );",
    // 2: the runner of an ONGOING VM named by PID, start time and boot
    // (backstop_image::process::ProcessId), not by its PID alone: a PID reused by another
    // process must not make a killed runner's VM look attended.
    "ALTER TABLE job_vms ADD COLUMN runner TEXT;",
    // 3: remotes (the other site of a sync): a datastore template like a backup datastore's,
    // in the same table, marked; jobs never use one as their DATASTORE_ID.
    "ALTER TABLE datastores ADD COLUMN remote INTEGER NOT NULL DEFAULT 0;",
    // 4: sync jobs and a record per run.
    "CREATE TABLE sync_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        template TEXT NOT NULL
     );
     CREATE TABLE sync_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES sync_jobs(id) ON DELETE CASCADE,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        snapshots INTEGER NOT NULL DEFAULT 0,
        bytes_read INTEGER NOT NULL DEFAULT 0,
        bytes_written INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        runner TEXT
     );",
    // 5: verify jobs, their runs, and the last verdict on each snapshot they read.
    "CREATE TABLE verify_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        template TEXT NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        last_run INTEGER,
        runner TEXT
     );
     CREATE TABLE verify_results (
        datastore_id INTEGER NOT NULL,
        repository TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        verified_at INTEGER NOT NULL,
        bad TEXT NOT NULL,
        PRIMARY KEY (datastore_id, repository, snapshot)
     );",
    // 6: protected backup images: no retention rule removes them.
    "ALTER TABLE images ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;",
    // 7: a running backup's progress, as the runner last read it: image positions settled of
    // the total, bytes read, and when (ms); for `backstop serve`.
    "ALTER TABLE job_vms ADD COLUMN progress_done INTEGER;
     ALTER TABLE job_vms ADD COLUMN progress_total INTEGER;
     ALTER TABLE job_vms ADD COLUMN progress_read INTEGER;
     ALTER TABLE job_vms ADD COLUMN progress_at INTEGER;",
    // 8: when a sync or verify job's template was last written (create, update): a job with
    // a SCHEDULE runs at the first time it names after that, or after its last run.
    "ALTER TABLE sync_jobs ADD COLUMN written_at INTEGER;
     ALTER TABLE verify_jobs ADD COLUMN written_at INTEGER;",
    // 9: each sync job's own random id, tagged on every copy it makes (`copied-by:<id>`,
    // backstop_datastore::repo::copy::CopierId): REMOVE_VANISHED forgets only copies with its
    // job's id, which no source repository can choose (the source repository's id, in
    // `copied-from:`, is the source's to say). Jobs that exist get one here (SQLite's
    // randomblob, seeded from the system's random source); new ones at creation.
    "ALTER TABLE sync_jobs ADD COLUMN copier TEXT;
     UPDATE sync_jobs SET copier = lower(hex(randomblob(16)));
     CREATE UNIQUE INDEX sync_jobs_copier ON sync_jobs (copier);",
    // 10: one record per run for every kind of job (backup, sync, verify), in one table.
    // Sync runs move over as they are (a run going on stays open, under its runner). Verify
    // runs were counted on their job (the count picks the share a run reads): each counted
    // run becomes a record at the job's last start, closed but for one going on. The old
    // table and columns stay, unused, so that a runner of the version before that is still
    // running when this one migrates ends without an error; a later schema drops them.
    "CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('backup', 'sync', 'verify')),
        job_id INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        snapshots INTEGER NOT NULL DEFAULT 0,
        bytes_read INTEGER NOT NULL DEFAULT 0,
        bytes_written INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        runner TEXT
     );
     CREATE INDEX job_runs_by_job ON job_runs (kind, job_id, id);
     INSERT INTO job_runs (id, kind, job_id, started_at, ended_at, snapshots, bytes_read,
                           bytes_written, error, runner)
        SELECT id, 'sync', job_id, started_at, ended_at, snapshots, bytes_read, bytes_written,
               error, runner FROM sync_runs;
     WITH RECURSIVE n(i) AS (
        SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < (SELECT max(runs) FROM verify_jobs)
     )
     INSERT INTO job_runs (kind, job_id, started_at, ended_at, runner)
        SELECT 'verify', v.id, coalesce(v.last_run, 0),
               CASE WHEN n.i = v.runs AND v.runner IS NOT NULL THEN NULL
                    ELSE coalesce(v.last_run, 0) END,
               CASE WHEN n.i = v.runs THEN v.runner END
        FROM verify_jobs v JOIN n ON n.i <= v.runs ORDER BY v.id, n.i;",
    // 11: a datastore's password being changed (docs/rekey.md): its old and new templates
    // (secrets sealed) and how far the change got: ADDING (a key for the new password is
    // being added to every repository; the datastore's template is still the old one) or
    // REMOVING (the template is the new one; the old password's keys are being removed).
    "CREATE TABLE rekeys (
        datastore_id INTEGER PRIMARY KEY,
        old_template TEXT NOT NULL,
        new_template TEXT NOT NULL,
        phase TEXT NOT NULL CHECK (phase IN ('ADDING', 'REMOVING')),
        started_at INTEGER NOT NULL
     );",
    // 12: what the dashboard reads of 500,000 increments without reading them all: each
    // image's points, size and newest date from an index that holds them (a third of the
    // table's width), and the newest points from one by time.
    "CREATE INDEX increments_summary ON increments (image_id, created_at, size_mb);
     CREATE INDEX increments_by_time ON increments (created_at);",
    // 13: the scheduler daemon's heartbeat (one row): when it started, when it last said it
    // was alive (every few seconds, in a pass or between passes), the pass it is in, its last
    // pass, how often it passes and the limits it runs with, and when it stopped cleanly; the
    // dashboard tells a scheduler that is down from one that is between passes or in a long one.
    "CREATE TABLE scheduler (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        alive_at INTEGER NOT NULL,
        pass_started_at INTEGER,
        last_pass_at INTEGER,
        interval INTEGER NOT NULL,
        max_backups INTEGER NOT NULL,
        max_backups_host INTEGER NOT NULL,
        stopped_at INTEGER
     );",
    // 14: the size of each datastore's recorded points by the UTC day they were taken, kept by
    // triggers on increments as they are recorded, changed and removed (an image's points are
    // removed before the image, so every trigger finds its datastore): the dashboard's
    // stored-size chart reads at most 91 rows instead of summing 500,000 points.
    "CREATE TABLE stored_by_day (
        datastore_id INTEGER NOT NULL,
        day INTEGER NOT NULL,
        mb INTEGER NOT NULL,
        PRIMARY KEY (datastore_id, day)
     ) WITHOUT ROWID;
     INSERT INTO stored_by_day (datastore_id, day, mb)
        SELECT m.datastore_id, (i.created_at / 86400) * 86400, sum(i.size_mb)
        FROM increments i JOIN images m ON m.id = i.image_id GROUP BY 1, 2;
     CREATE TRIGGER stored_by_day_insert AFTER INSERT ON increments BEGIN
        INSERT INTO stored_by_day (datastore_id, day, mb)
            SELECT datastore_id, (NEW.created_at / 86400) * 86400, NEW.size_mb
            FROM images WHERE id = NEW.image_id
            ON CONFLICT (datastore_id, day) DO UPDATE SET mb = mb + excluded.mb;
     END;
     CREATE TRIGGER stored_by_day_delete AFTER DELETE ON increments BEGIN
        UPDATE stored_by_day SET mb = mb - OLD.size_mb
            WHERE datastore_id = (SELECT datastore_id FROM images WHERE id = OLD.image_id)
            AND day = (OLD.created_at / 86400) * 86400;
     END;
     CREATE TRIGGER stored_by_day_update AFTER UPDATE OF size_mb, created_at, image_id ON increments
     BEGIN
        UPDATE stored_by_day SET mb = mb - OLD.size_mb
            WHERE datastore_id = (SELECT datastore_id FROM images WHERE id = OLD.image_id)
            AND day = (OLD.created_at / 86400) * 86400;
        INSERT INTO stored_by_day (datastore_id, day, mb)
            SELECT datastore_id, (NEW.created_at / 86400) * 86400, NEW.size_mb
            FROM images WHERE id = NEW.image_id
            ON CONFLICT (datastore_id, day) DO UPDATE SET mb = mb + excluded.mb;
     END;",
];
