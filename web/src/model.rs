//! What the pages and the API show, read from the runner's state in one go (a snapshot): jobs,
//! VMs with their state and last good backup, images, datastores (names only: their templates
//! hold secrets), sync and verify jobs with their last runs. Nothing here writes.

use crate::Error;
use backstop_backupjob::model::JobTemplate;
use backstop_backupjob::state::sync::{JobRun, RunKind};
use backstop_backupjob::state::{State, VmState};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub name: String,
    pub priority: u8,
    pub locked: bool,
    pub mode: &'static str,
    pub datastore_id: Option<u64>,
    pub vms: Vec<u64>,
    pub last_run: Option<i64>,
    pub last_duration: Option<i64>,
    /// The earliest time a scheduled action of the job is due.
    pub next_run: Option<i64>,
    pub keep: String,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: u64,
    pub name: String,
    pub host: Option<String>,
    pub job: Option<u64>,
    pub state: Option<&'static str>,
    pub reason: Option<String>,
    pub failures: u32,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// When its newest backup point was taken (seconds).
    pub last_backup: Option<i64>,
    /// A running backup's progress: (done, total, bytes read, when in ms).
    pub progress: Option<(u64, u64, u64, i64)>,
}

#[derive(Debug, Clone)]
pub struct Increment {
    pub id: u64,
    pub kind: String,
    pub source: String,
    pub size_mb: u64,
    pub date: i64,
    /// The last verify verdict: (when, clean).
    pub verified: Option<(i64, bool)>,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: u64,
    pub vm: u64,
    pub job: Option<u64>,
    pub datastore: u64,
    pub protected: bool,
    /// How many points it has, their summed size and the newest one's date: always read.
    pub points: u64,
    pub stored_mb: u64,
    pub newest: Option<i64>,
    /// Its points one by one: only when the page asks for them ([`Detail`]).
    pub increments: Vec<Increment>,
}

/// Which images' points a page reads one by one. A state of 500,000 points is summarised
/// per image from an index; reading every point for every page took seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// None: the overview, the job and datastore pages, the run history, `/api/status`,
    /// `/metrics`.
    Summary,
    /// One VM's images (its page), and its 30-day grid.
    Vm(u64),
    /// A job's page: the durations of its newest runs.
    Job(u64),
    /// A datastore's page: its stored size by day.
    Datastore(u64),
    /// Every image (`/api/images`).
    All,
}

/// How many days the stored-size chart and the VM grid cover.
pub const CHART_DAYS: i64 = 90;
pub const GRID_DAYS: i64 = 30;
/// How many of a job's newest runs the duration chart shows.
pub const RUNS_CHARTED: u32 = 30;

/// What a page's chart draws (read only for the page that shows it, [`Detail`]).
#[derive(Debug, Clone, Default)]
pub struct Charts {
    /// A datastore's stored size at the end of each of the last [`CHART_DAYS`] days and today
    /// (day, MB), oldest first: the recorded points taken up to that day.
    pub stored: Vec<(i64, u64)>,
    /// A job's newest finished runs, oldest first: (started, seconds, ok).
    pub durations: Vec<(i64, i64, bool)>,
    /// A VM's last [`GRID_DAYS`] days, oldest first: (day, what happened).
    pub grid: Vec<(i64, DayMark)>,
}

/// A day of a VM's grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayMark {
    /// A backup point of it was taken that day.
    BackedUp,
    /// Its job ran that day and no point of it was taken.
    Failed,
    /// Its job did not run.
    NoRun,
}

impl DayMark {
    pub fn word(self) -> &'static str {
        match self {
            DayMark::BackedUp => "backed-up",
            DayMark::Failed => "failed",
            DayMark::NoRun => "no-run",
        }
    }
}

const DAY: i64 = 86_400;

/// The start of `t`'s UTC day.
fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY) * DAY
}

#[derive(Debug, Clone)]
pub struct Run {
    /// `backup`, `sync`, `verify`.
    pub kind: &'static str,
    pub what: String,
    pub started: i64,
    pub ended: Option<i64>,
    pub ok: bool,
    pub detail: String,
}

/// A sync or verify job and how its last run went.
#[derive(Debug, Clone)]
pub struct SecondCopy {
    /// `sync` or `verify`.
    pub kind: &'static str,
    pub id: u64,
    pub name: String,
    pub last_run: Option<i64>,
    /// The last run's failures (sync: repositories that failed; verify: damaged snapshots).
    pub problem: Option<String>,
    /// When its EVERY or SCHEDULE made it due, if it is due now and has not run since.
    pub due_since: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: i64,
    pub jobs: Vec<Job>,
    pub vms: Vec<Vm>,
    pub images: Vec<Image>,
    pub datastores: Vec<(u64, String)>,
    pub runs: Vec<Run>,
    pub second_copies: Vec<SecondCopy>,
    /// The scheduler daemon's heartbeat; `None` when none ever ran on this state.
    pub scheduler: Option<backstop_backupjob::state::SchedulerBeat>,
    /// The page's chart, when it has one.
    pub charts: Charts,
}

fn read_err(e: impl std::fmt::Display) -> Error {
    Error::State(format!("cannot read the state: {e}"))
}

impl Snapshot {
    /// Reads the state at `path`, every image's points included.
    pub fn read(path: &Path) -> Result<Snapshot, Error> {
        Self::read_with(path, Detail::All)
    }

    /// Reads the state at `path`, the points of the images `detail` names one by one.
    pub fn read_with(path: &Path, detail: Detail) -> Result<Snapshot, Error> {
        if !path.exists() {
            return Err(Error::State(format!(
                "there is no state database at {}",
                path.display()
            )));
        }
        let st = State::open(path).map_err(read_err)?;
        let now = jiff::Timestamp::now().as_second();
        let mut jobs = Vec::new();
        let mut vm_job = std::collections::HashMap::new();
        let mut vm_rows = std::collections::HashMap::new();
        for backstop_backupjob::state::JobRow {
            id,
            name,
            priority,
            template,
        } in st.jobs().map_err(read_err)?
        {
            let t = JobTemplate::parse(&template).ok();
            let backstop_backupjob::state::JobStatus {
                locked,
                last_started: last_run,
                last_duration,
            } = st.job_status(id).map_err(read_err)?;
            let next_run = st
                .sched_actions(id)
                .map_err(read_err)?
                .iter()
                // Pending only: a one-off action that ran stays in the template, done.
                .filter(|s| !s.action.ended() && s.action.done < s.action.time)
                .map(|s| s.action.time)
                .min();
            let rows = st.job_vms(id).map_err(read_err)?;
            for r in &rows {
                vm_job.insert(r.vm_id, id);
                vm_rows.insert(r.vm_id, r.clone());
            }
            jobs.push(Job {
                id,
                name,
                priority,
                locked,
                mode: match t.as_ref().map(|t| t.mode) {
                    Some(backstop_backupjob::runner::Mode::Increment) => "INCREMENT",
                    _ => "FULL",
                },
                datastore_id: t.as_ref().map(|t| t.datastore_id),
                vms: rows.iter().map(|r| r.vm_id).collect(),
                last_run,
                last_duration,
                next_run,
                keep: t
                    .map(|t| {
                        t.keep
                            .attributes()
                            .iter()
                            .map(|(k, n)| format!("{k}={n}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            });
        }
        let mut images: Vec<Image> = st
            .image_summaries()
            .map_err(read_err)?
            .into_iter()
            .map(|i| Image {
                id: i.id,
                vm: i.vm_id,
                job: i.job_id,
                datastore: i.datastore_id,
                protected: i.protected,
                points: i.points,
                stored_mb: i.stored_mb,
                newest: i.newest,
                increments: Vec::new(),
            })
            .collect();
        let detailed = match detail {
            Detail::Summary | Detail::Job(_) | Detail::Datastore(_) => Vec::new(),
            Detail::Vm(vm) => st.images_where(Some(vm), None).map_err(read_err)?,
            Detail::All => st.all_images().map_err(read_err)?,
        };
        // Each datastore's verdicts read once, found by repository and the snapshot id's
        // first 8 characters (a source is a snapshot id or its first 8 characters).
        let mut verdicts_of: std::collections::HashMap<
            u64,
            std::collections::HashMap<
                (String, String),
                Vec<backstop_backupjob::state::sync::Verdict>,
            >,
        > = std::collections::HashMap::new();
        let at: std::collections::HashMap<u64, usize> =
            images.iter().enumerate().map(|(k, i)| (i.id, k)).collect();
        for img in detailed {
            let Some(&k) = at.get(&img.id) else { continue };
            let repo = match img.job_id {
                Some(j) => format!("job_{j}"),
                None => img.vm_id.to_string(),
            };
            let by = match verdicts_of.entry(img.datastore_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut by = std::collections::HashMap::<_, Vec<_>>::new();
                    for v in st.verdicts_in(img.datastore_id).map_err(read_err)? {
                        let short: String = v.snapshot.chars().take(8).collect();
                        by.entry((v.repository.clone(), short)).or_default().push(v);
                    }
                    e.insert(by)
                }
            };
            images[k].increments = img
                .increments
                .iter()
                .map(|n| Increment {
                    id: n.id,
                    kind: n.kind.clone(),
                    source: n.source.clone(),
                    size_mb: n.size_mb,
                    date: n.created_at,
                    verified: by
                        .get(&(repo.clone(), n.source.chars().take(8).collect()))
                        .and_then(|vs| {
                            vs.iter()
                                .find(|v| !n.source.is_empty() && v.snapshot.starts_with(&n.source))
                        })
                        .map(|v| (v.verified_at, v.bad.is_empty())),
                })
                .collect();
        }
        let mut vms = Vec::new();
        let mut newest: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
        for i in &images {
            if let Some(d) = i.newest {
                let e = newest.entry(i.vm).or_insert(d);
                *e = (*e).max(d);
            }
        }
        for backstop_backupjob::state::VmRow { id, name, host, .. } in st.vms().map_err(read_err)? {
            let row = vm_rows.get(&id);
            let last_backup = newest.get(&id).copied();
            vms.push(Vm {
                id,
                name,
                host,
                job: vm_job.get(&id).copied(),
                state: row.and_then(|r| r.state).map(VmState::as_str),
                reason: row.and_then(|r| r.reason.clone()),
                failures: row.map_or(0, |r| r.failures),
                started_at_ms: row.and_then(|r| r.started_at),
                ended_at_ms: row.and_then(|r| r.ended_at),
                last_backup,
                progress: row
                    .filter(|r| r.state == Some(VmState::Ongoing))
                    .and_then(|r| r.progress),
            });
        }
        let datastores = st
            .datastores()
            .map_err(read_err)?
            .into_iter()
            .map(|d| (d.id, d.name))
            .collect();
        let runs = runs(&st, &images, &vms)?;
        let second_copies = second_copies(&st, now)?;
        let scheduler = st.scheduler_beat().map_err(read_err)?;
        let charts = charts(&st, detail, now, &images, &vm_job)?;
        Ok(Snapshot {
            now,
            jobs,
            vms,
            images,
            datastores,
            runs,
            second_copies,
            scheduler,
            charts,
        })
    }

    /// The snapshot without snapshot ids, for a caller who showed no token and no session:
    /// the first 8 hex characters of an id authorise a restore of that backup through a
    /// backup URL (docs/security.md), so neither the increments' sources nor the ids that
    /// error texts (failure reasons, sync errors) may carry are shown; every run of 8 or more
    /// hex digits in those texts reads [`HIDDEN`].
    #[must_use]
    pub fn without_ids(mut self) -> Snapshot {
        for i in &mut self.images {
            for n in &mut i.increments {
                n.source.clear();
            }
        }
        for v in &mut self.vms {
            v.reason = v.reason.as_deref().map(hide_ids);
        }
        for r in self.runs.iter_mut().filter(|r| !r.ok) {
            r.detail = hide_ids(&r.detail);
        }
        for c in &mut self.second_copies {
            c.problem = c.problem.as_deref().map(hide_ids);
        }
        self
    }
}

impl Snapshot {
    /// What an OpenNebula user logged in to the dashboard may see (docs/web.md, "Tenants"):
    /// the VMs of `vms` (those oned lets them use) and their images; the jobs that hold one
    /// of them, each with only those VMs; the datastores their images or those jobs use. No
    /// runs (a run's text names every VM it took), no sync or verify jobs, no job's run
    /// durations and no datastore's size over time (both count other users' data), no job an
    /// image names that they do not see, and no snapshot ids ([`Snapshot::without_ids`]). Whatever is not theirs is as absent as a
    /// deleted VM: its page is a 404, never a refusal that says it exists.
    #[must_use]
    pub fn for_tenant(mut self, vms: &std::collections::BTreeSet<u64>) -> Snapshot {
        self.vms.retain(|v| vms.contains(&v.id));
        self.images.retain(|i| vms.contains(&i.vm));
        self.jobs.retain_mut(|j| {
            j.vms.retain(|v| vms.contains(v));
            // How long the whole job took is everyone's VMs' time.
            j.last_duration = None;
            !j.vms.is_empty()
        });
        let visible = |job: Option<u64>| job.filter(|j| self.jobs.iter().any(|k| k.id == *j));
        for v in &mut self.vms {
            v.job = visible(v.job);
        }
        for i in &mut self.images {
            i.job = visible(i.job);
        }
        let used: std::collections::BTreeSet<u64> = self
            .images
            .iter()
            .map(|i| i.datastore)
            .chain(self.jobs.iter().filter_map(|j| j.datastore_id))
            .collect();
        self.datastores.retain(|(id, _)| used.contains(id));
        self.runs.clear();
        self.second_copies.clear();
        self.charts.stored.clear();
        self.charts.durations.clear();
        self.without_ids()
    }
}

/// What stands for a hidden snapshot id.
pub const HIDDEN: &str = "[hidden]";

/// `text` with every run of 8 or more hex digits (a snapshot id, its 8-character prefix, a
/// blob or pack id) replaced by [`HIDDEN`], whatever stands next to it ("0x...", a letter): a
/// word or a long decimal number that happens to be such a run goes too, which costs a viewer
/// without a token a little text and can never show an id.
pub fn hide_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        out.push_str(if run.len() >= 8 { HIDDEN } else { run });
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The sync jobs with their last run, the verify jobs with their damaged snapshots.
/// The charts of the page `detail` names, read for it alone.
fn charts(
    st: &State,
    detail: Detail,
    now: i64,
    images: &[Image],
    vm_job: &std::collections::HashMap<u64, u64>,
) -> Result<Charts, Error> {
    let today = day_of(now);
    let mut charts = Charts::default();
    match detail {
        Detail::Datastore(ds) => {
            let first = today - CHART_DAYS * DAY;
            let added: std::collections::HashMap<i64, u64> = st
                .stored_by_day(ds, first)
                .map_err(read_err)?
                .into_iter()
                .collect();
            // What was there before the window: the datastore's total (the image summaries
            // the page reads anyway) less what the window added.
            let all: u64 = images
                .iter()
                .filter(|i| i.datastore == ds)
                .map(|i| i.stored_mb)
                .sum();
            let mut total = all.saturating_sub(added.values().sum());
            for k in 0..=CHART_DAYS {
                let day = first + k * DAY;
                total += added.get(&day).copied().unwrap_or(0);
                charts.stored.push((day, total));
            }
        }
        Detail::Job(job) => {
            let mut runs: Vec<(i64, i64, bool)> = st
                .recent_runs(RunKind::Backup, job, RUNS_CHARTED)
                .map_err(read_err)?
                .into_iter()
                .filter_map(|r| {
                    r.ended_at
                        .map(|e| (r.started_at, (e - r.started_at).max(0), r.error.is_none()))
                })
                .collect();
            runs.sort_by_key(|r| r.0);
            charts.durations = runs;
        }
        Detail::Vm(vm) => {
            let first = today - (GRID_DAYS - 1) * DAY;
            let taken: std::collections::HashSet<i64> = images
                .iter()
                .filter(|i| i.vm == vm)
                .flat_map(|i| i.increments.iter().map(|n| day_of(n.date)))
                .collect();
            let ran: std::collections::HashSet<i64> = match vm_job.get(&vm) {
                Some(job) => st
                    .recent_runs(RunKind::Backup, *job, 500)
                    .map_err(read_err)?
                    .into_iter()
                    .filter(|r| r.started_at >= first)
                    .map(|r| day_of(r.started_at))
                    .collect(),
                None => Default::default(),
            };
            for k in 0..GRID_DAYS {
                let day = first + k * DAY;
                let mark = if taken.contains(&day) {
                    DayMark::BackedUp
                } else if ran.contains(&day) {
                    DayMark::Failed
                } else {
                    DayMark::NoRun
                };
                charts.grid.push((day, mark));
            }
        }
        Detail::Summary | Detail::All => {}
    }
    Ok(charts)
}

fn second_copies(st: &State, now: i64) -> Result<Vec<SecondCopy>, Error> {
    use backstop_backupjob::state::sync::JobKind;
    let tz = jiff::tz::TimeZone::system();
    let due_since = |when: Option<&backstop_backupjob::calendar::When>,
                     last: Option<i64>,
                     kind: JobKind,
                     id: u64|
     -> Result<Option<i64>, Error> {
        let Some(w) = when else { return Ok(None) };
        let written = st.written_at(kind, id).map_err(read_err)?;
        Ok(w.due_since(now, last, written, &tz))
    };
    let mut out = Vec::new();
    for backstop_backupjob::state::Named {
        id,
        name,
        template: text,
    } in st.sync_jobs().map_err(read_err)?
    {
        let last = st
            .recent_runs(RunKind::Sync, id, 1)
            .map_err(read_err)?
            .into_iter()
            .next();
        let when = backstop_backupjob::sync::SyncTemplate::parse(&text)
            .ok()
            .and_then(|t| t.when);
        let last_run = last.as_ref().map(|r| r.started_at);
        out.push(SecondCopy {
            kind: "sync",
            id,
            name,
            last_run,
            problem: last.and_then(|r| r.error).map(|e| e.replace('\n', "; ")),
            due_since: due_since(when.as_ref(), last_run, JobKind::Sync, id)?,
        });
    }
    for backstop_backupjob::state::VerifyJobRow {
        id,
        name,
        template: text,
        ..
    } in st.verify_jobs().map_err(read_err)?
    {
        let last = st
            .recent_runs(RunKind::Verify, id, 1)
            .map_err(read_err)?
            .into_iter()
            .next();
        let parsed = backstop_backupjob::verify_job::VerifyTemplate::parse(&text).ok();
        let datastore = parsed.as_ref().map(|t| t.datastore_id);
        let when = parsed.and_then(|t| t.when);
        let damaged = match datastore {
            Some(ds) => st
                .verdicts_in(ds)
                .map_err(read_err)?
                .iter()
                .filter(|v| !v.bad.is_empty())
                .count(),
            None => 0,
        };
        // The damaged snapshots first (they stay until healed), else why the last run failed.
        let problem = (damaged > 0)
            .then(|| format!("{damaged} damaged snapshots"))
            .or_else(|| {
                last.as_ref()
                    .and_then(|r| r.error.as_ref())
                    .map(|e| e.replace('\n', "; "))
            });
        let last_run = last.as_ref().map(|r| r.started_at);
        out.push(SecondCopy {
            kind: "verify",
            id,
            name,
            last_run,
            problem,
            due_since: due_since(when.as_ref(), last_run, JobKind::Verify, id)?,
        });
    }
    Ok(out)
}

/// How many of each job's newest runs the history shows.
const RUNS_SHOWN: u32 = 50;

/// One run of a backup, sync or verify job as the history shows it.
fn job_run(kind: RunKind, id: u64, name: &str, r: &JobRun) -> Run {
    let (label, done) = match kind {
        RunKind::Backup => ("backup job", format!("{} VMs backed up", r.snapshots)),
        RunKind::Sync => (
            "sync job",
            format!(
                "{} snapshots, {} bytes written",
                r.snapshots, r.bytes_written
            ),
        ),
        RunKind::Verify => (
            "verify job",
            format!("{} snapshots, {} bytes read", r.snapshots, r.bytes_read),
        ),
    };
    Run {
        kind: match kind {
            RunKind::Backup => "backup",
            RunKind::Sync => "sync",
            RunKind::Verify => "verify",
        },
        what: format!("{label} {id} ({name})"),
        started: r.started_at,
        ended: r.ended_at,
        ok: r.error.is_none(),
        detail: match (&r.error, r.ended_at) {
            (Some(e), _) => e.replace('\n', "; "),
            (None, None) => "running".to_string(),
            (None, Some(_)) => done,
        },
    }
}

/// The run history: each backup point recorded, each VM's last failure, and every run of a
/// backup, sync or verify job; newest first.
/// The runs kept for the run history (the page and `/api/runs`): the newest.
const RUNS_KEPT: usize = 500;

fn runs(st: &State, images: &[Image], vms: &[Vm]) -> Result<Vec<Run>, Error> {
    let mut out = Vec::new();
    // Only the newest backups can be among the runs kept: read from the index by time.
    let vm_of: std::collections::HashMap<u64, u64> = images.iter().map(|i| (i.id, i.vm)).collect();
    for (image, n) in st.recent_increments(RUNS_KEPT).map_err(read_err)? {
        let Some(vm) = vm_of.get(&image) else {
            continue;
        };
        out.push(Run {
            kind: "backup",
            what: format!("VM {vm}"),
            started: n.created_at,
            ended: Some(n.created_at),
            ok: true,
            detail: format!(
                "image {image} increment {} ({}, {} MiB)",
                n.id, n.kind, n.size_mb
            ),
        });
    }
    for v in vms.iter().filter(|v| v.state == Some("ERROR")) {
        out.push(Run {
            kind: "backup",
            what: format!("VM {}", v.id),
            started: v.started_at_ms.map_or(0, |t| t / 1000),
            ended: v.ended_at_ms.map(|t| t / 1000),
            ok: false,
            detail: v.reason.clone().unwrap_or_default(),
        });
    }
    // The jobs' own runs, all three kinds read the same way from the one run table.
    let mut jobs: Vec<(RunKind, u64, String)> = Vec::new();
    for backstop_backupjob::state::JobRow { id, name, .. } in st.jobs().map_err(read_err)? {
        jobs.push((RunKind::Backup, id, name));
    }
    for backstop_backupjob::state::Named { id, name, .. } in st.sync_jobs().map_err(read_err)? {
        jobs.push((RunKind::Sync, id, name));
    }
    for backstop_backupjob::state::VerifyJobRow { id, name, .. } in
        st.verify_jobs().map_err(read_err)?
    {
        jobs.push((RunKind::Verify, id, name));
    }
    for (kind, id, name) in jobs {
        for r in st.recent_runs(kind, id, RUNS_SHOWN).map_err(read_err)? {
            out.push(job_run(kind, id, &name, &r));
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.started));
    out.truncate(RUNS_KEPT);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hidden_from_texts() {
        for (text, shown) in [
            (
                "no snapshot 3f9a01bc in /var/backups/job_1",
                "no snapshot [hidden] in /var/backups/job_1",
            ),
            (
                "backup 3F9A01BC2d/disk.0:3f9a01bc2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8",
                "backup [hidden]/disk.0:[hidden]",
            ),
            (
                "snapshot 12345678 (all digits)",
                "snapshot [hidden] (all digits)",
            ),
            ("0x3f9a01bc, 3f9a01bcz", "0x[hidden], [hidden]z"),
            ("cafe, 1234567, abc_def01234", "cafe, 1234567, abc_[hidden]"),
            (
                "host down: ssh exited with 255",
                "host down: ssh exited with 255",
            ),
            ("", ""),
        ] {
            assert_eq!(hide_ids(text), shown, "{text}");
        }
    }
}
