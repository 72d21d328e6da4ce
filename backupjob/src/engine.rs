//! Running a job now (`backupjob backup <id>`): the job's run ([`scheduler::execute`]), then
//! scheduling ticks ([`scheduler::tick`]) that start VM backups in worker threads within the
//! limits, each one the chain oned runs ([`runner::run_chain`]), recorded as it finishes
//! ([`runner::record`]). Every move of a VM is a compare-and-set in the state database, so
//! what is shown at any moment is what is happening.

use crate::Error;
use crate::error::{input, step};
use crate::model::{self, JobTemplate};
use crate::runner::{self, ChainPointers, Env};
use crate::scheduler::{self, Decision, JobView, Limits, VmView};
use crate::state::{State, VmState};
use backstop_image::process::ProcessId;
use std::collections::HashMap;
use std::sync::mpsc;

/// What happened, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        vm: u64,
    },
    /// A running backup's progress (backstop's datastore reports it; others do not): image
    /// positions settled of the total, bytes read, since the VM's backup started.
    Progress {
        vm: u64,
        done: u64,
        total: u64,
        read: u64,
        elapsed_ms: u64,
    },
    Done {
        vm: u64,
        line: String,
    },
    /// Something to know about a VM's backup before it starts (a chain policy starting a new
    /// chain).
    Note {
        vm: u64,
        line: String,
    },
    /// A VM a killed runner left ONGOING, settled by what really happened.
    Settled {
        vm: u64,
        line: String,
    },
    Failed {
        vm: u64,
        reason: String,
    },
    /// Something done to a datastore before the run (a password change completed).
    Datastore {
        datastore: u64,
        line: String,
    },
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// VM moves record their times in milliseconds, so concurrency shows even in short runs.
fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The job's settings for a VM's next backup: its chain policy (MAX_INCREMENTS,
/// CHAIN_MAX_DAYS) may start a new chain, by the scheduler's clock `now` (seconds); why, when it
/// does.
fn config_for(
    state: &State,
    cfg: &runner::JobConfig,
    image: Option<u64>,
    now: i64,
) -> Result<(runner::JobConfig, Option<String>), Error> {
    let Some(image) = image.filter(|_| !cfg.reset && cfg.mode == runner::Mode::Increment) else {
        return Ok((cfg.clone(), None));
    };
    let times: Vec<i64> = state
        .image(image)?
        .increments
        .iter()
        .map(|i| i.created_at)
        .collect();
    Ok(match cfg.chain.due(&times, now) {
        Some(why) => (
            runner::JobConfig {
                reset: true,
                ..cfg.clone()
            },
            Some(why),
        ),
        None => (cfg.clone(), None),
    })
}

fn host_of(doc: &str) -> Option<String> {
    let root = backstop_protocol::xml::Element::parse(doc).ok()?;
    let vm = backstop_protocol::message::Vm::from_xml(&root).ok()?;
    vm.placement.map(|p| p.hostname)
}

/// What a job's run needs from the state: its template, datastore and VM documents.
struct JobContext {
    priority: u8,
    job: JobTemplate,
    ds: runner::BackupDatastore,
    cfg: runner::JobConfig,
    docs: HashMap<u64, String>,
    /// Each registered VM's host, parsed once (every tick needs it).
    hosts: HashMap<u64, Option<String>>,
    /// OpenNebula mode: the job's datastore is oned's, and oned backs its VMs up.
    oned: Option<std::sync::Arc<backstop_protocol::oned::OnedClient>>,
}

impl JobContext {
    /// The job the state records this job's images under, which also names their repository
    /// (`job_<id>`, or the VM's own for none). oned's backups of a VM go to the VM's own
    /// repository (`one.vm.backup` names no backup job), so in OpenNebula mode a VM's images
    /// are recorded under no job: the job's images are its VMs' in its datastore.
    fn images_job(&self, job_id: u64) -> Option<u64> {
        if self.oned.is_some() {
            None
        } else {
            Some(job_id)
        }
    }
}

impl JobContext {
    fn load(env: &Env, state: &State, job_id: u64) -> Result<JobContext, Error> {
        let crate::state::JobRow {
            priority, template, ..
        } = state
            .jobs()?
            .into_iter()
            .find(|j| j.id == job_id)
            .ok_or_else(|| input(format!("there is no backup job {job_id}")))?;
        let job = JobTemplate::parse(&template)
            .map_err(|e| input(format!("backup job {job_id}: {e}")))?;
        let crate::state::Named {
            template: ds_template,
            ..
        } = state
            .datastores()?
            .into_iter()
            .find(|d| d.id == job.datastore_id)
            .ok_or_else(|| {
                input(format!(
                    "backup job {job_id}: there is no datastore {}",
                    job.datastore_id
                ))
            })?;
        let oned = if crate::oned::is_oned(&ds_template) {
            Some(std::sync::Arc::new(crate::oned::client(&ds_template)?))
        } else {
            None
        };
        let ds = match &oned {
            Some(client) => crate::oned::datastore(client, job.datastore_id)?.1,
            None => {
                model::datastore(job.datastore_id, &ds_template, &env.datastore_location)
                    .map_err(|e| input(format!("datastore {}: {e}", job.datastore_id)))?
                    .1
            }
        };
        let cfg = job.config(job_id);
        let docs: HashMap<u64, String> = state
            .vms()?
            .into_iter()
            .map(|v| (v.id, v.document))
            .collect();
        let hosts = docs.iter().map(|(id, doc)| (*id, host_of(doc))).collect();
        Ok(JobContext {
            priority,
            job,
            ds,
            cfg,
            docs,
            hosts,
            oned,
        })
    }
}

/// What an orphaned backup (its runner killed) really did.
enum Settlement {
    /// The backup action is still running: left ONGOING, settled by a later pass.
    Running,
    /// It finished: its snapshot was found in the repository and recorded.
    Recorded(runner::Outcome),
    /// No backup of it is in the repository: it runs again.
    NotDone,
}

/// Settles the VMs a killed runner left ONGOING by what really happened. A backup action
/// still running is left alone. A backup that finished (its snapshot is in the job's
/// repository but not in the records) is recorded as the run would have recorded it, KEEP_LAST
/// included, the TM postbackup runs as after a success, and the VM is UPDATED. Otherwise the
/// postbackup runs as after a failure (cleaning the host) and the VM goes back to OUTDATED to
/// run again. A check that fails (an unreachable repository) also sends it back to OUTDATED.
pub fn reconcile(
    env: &Env,
    state: &mut State,
    on_event: &mut impl FnMut(u64, &Event),
) -> Result<usize, Error> {
    state.close_dead_runs(now())?;
    // A password change a killed command left half done is completed first: every
    // repository keeps opening with the template's password meanwhile (docs/rekey.md).
    for (datastore, line) in crate::rekey::complete_all(env, state) {
        on_event(0, &Event::Datastore { datastore, line });
    }
    let orphans = state.orphans(backstop_image::process::ProcessId::is_running)?;
    let mut settled = 0;
    for crate::state::Orphan {
        job: job_id,
        vm,
        ongoing_since_ms: since_ms,
    } in orphans
    {
        if settle_vm(env, state, (job_id, vm, since_ms), on_event)? {
            settled += 1;
        }
    }
    Ok(settled)
}

/// Settles one VM an interrupted run left ONGOING (see [`reconcile`]); whether it moved.
fn settle_vm(
    env: &Env,
    state: &mut State,
    (job_id, vm, since_ms): (u64, u64, i64),
    on_event: &mut impl FnMut(u64, &Event),
) -> Result<bool, Error> {
    let (to, line) = match settle(env, state, job_id, vm, since_ms) {
        Ok(Settlement::Running) => return Ok(false),
        Ok(Settlement::Recorded(o)) => (
            VmState::Updated,
            format!(
                "the interrupted run's backup {} was found in the repository and recorded as increment {} of image {}",
                o.backup_id, o.increment_id, o.image_id
            ),
        ),
        Ok(Settlement::NotDone) => (
            VmState::Outdated,
            "the interrupted run left no backup; it runs again".to_string(),
        ),
        Err(e) => (
            VmState::Outdated,
            format!("cannot tell what the interrupted run did ({e}); it runs again"),
        ),
    };
    let moved = state.move_vm(job_id, vm, Some(VmState::Ongoing), to, None, now_ms())?;
    if moved {
        on_event(job_id, &Event::Settled { vm, line });
    }
    Ok(moved)
}

/// What a run that stopped on an error had under way.
struct Stopped<'a> {
    /// Each job's id and when its run started.
    jobs: &'a [(u64, i64)],
    /// Each job's run record.
    records: &'a HashMap<u64, u64>,
    /// Each job's VMs backed up and failed so far.
    counts: &'a HashMap<u64, (usize, usize)>,
    /// The VMs whose backup it started and had not recorded: VM -> (job, since).
    started: &'a HashMap<u64, (u64, std::time::Instant)>,
}

/// After a run stopped on an error: its workers have all ended (the thread scope joined
/// them), so the VMs it left ONGOING are settled now, as a killed runner's are at the next
/// run, and its run records are closed with the error. A run inside a long-lived process (the
/// web server) would otherwise leave them ONGOING, its runner alive, until that process ends.
/// Best effort: the error that stopped the run (a locked state, say) may stop this too.
fn interrupted(
    env: &Env,
    state: &mut State,
    run: &Stopped<'_>,
    error: &Error,
    on_event: &mut impl FnMut(u64, &Event),
) {
    let Stopped {
        jobs,
        records,
        counts,
        started,
    } = run;
    for (&vm, &(job_id, _)) in started.iter() {
        let since_ms = state
            .job_vms(job_id)
            .ok()
            .and_then(|rows| rows.into_iter().find(|r| r.vm_id == vm))
            .and_then(|r| r.started_at)
            .unwrap_or(0);
        let _ = settle_vm(env, state, (job_id, vm, since_ms), on_event);
    }
    let ended_at = now();
    for &(job_id, started_at) in jobs.iter() {
        if let Some(&id) = records.get(&job_id) {
            let _ = state.end_run(&crate::state::sync::JobRun {
                id,
                kind: crate::state::sync::RunKind::Backup,
                job_id,
                started_at,
                ended_at: Some(ended_at),
                snapshots: counts.get(&job_id).map_or(0, |c| c.0 as u64),
                bytes_read: 0,
                bytes_written: 0,
                error: Some(format!("the run stopped: {error}")),
            });
        }
    }
}

fn settle(
    env: &Env,
    state: &mut State,
    job_id: u64,
    vm: u64,
    since_ms: i64,
) -> Result<Settlement, Error> {
    let ctx = JobContext::load(env, state, job_id)?;
    if let Some(client) = ctx.oned.clone() {
        return settle_oned(state, &ctx, &client, (job_id, vm), since_ms);
    }
    let dcfg = backstop_datastore::config::DriverConfig::load(&env.remotes)?;
    if backstop_datastore::running::backup_running(&dcfg, vm) {
        return Ok(Settlement::Running);
    }
    let doc = ctx
        .docs
        .get(&vm)
        .ok_or_else(|| input(format!("VM {vm} is not registered")))?;
    let crate::state::Chain {
        image,
        last_increment: last,
    } = state.chain_of(vm, ctx.images_job(job_id), ctx.ds.id)?;
    let chain = ChainPointers {
        image_id: image,
        last_increment: last,
    };
    // The decision the run made when it started (its chain policy at its start time).
    let (cfg, _) = config_for(state, &ctx.cfg, image, since_ms / 1000)?;
    let call = runner::ChainCall::new(env, doc, &cfg, &ctx.ds, chain)?;
    let root = backstop_protocol::xml::Element::parse(&ctx.ds.document)
        .map_err(|e| step(e.to_string()))?;
    let ds =
        backstop_protocol::message::Datastore::from_xml(&root).map_err(|e| step(e.to_string()))?;
    let mut recorded = Vec::new();
    for i in state.images_of(vm, ctx.images_job(job_id), ctx.ds.id)? {
        recorded.extend(state.image(i)?.increments.into_iter().map(|n| n.source));
    }
    // The snapshot's time is the host's clock: allow for some skew.
    let since = jiff::Timestamp::from_millisecond(since_ms - CLOCK_SKEW_MS)
        .map_err(|e| step(e.to_string()))?;
    let found = backstop_datastore::vm_snapshots::unrecorded_backup(
        &ds,
        Some(job_id),
        vm,
        since,
        &recorded,
        &dcfg,
    )
    .map_err(|e| step(e.to_string()))?;
    let Some(found) = found else {
        call.postbackup(true);
        return Ok(Settlement::NotDone);
    };
    call.postbackup(false);
    let result = runner::ChainResult {
        vm_id: vm,
        backup_id: found.id.chars().take(8).collect(),
        size_mb: found.size_bytes / (1024 * 1024),
        new_chain: call.new_chain,
        chain,
    };
    runner::record(env, state, &ctx.cfg, &ctx.ds, result, now()).map(Settlement::Recorded)
}

/// OpenNebula mode: what oned did with the backup an interrupted run asked for. Still in a
/// backup state: running. Otherwise the state's images of the VM are made oned's again, and
/// a backup point made since the run started means it was done.
fn settle_oned(
    state: &mut State,
    ctx: &JobContext,
    client: &backstop_protocol::oned::OnedClient,
    (job_id, vm): (u64, u64),
    since_ms: i64,
) -> Result<Settlement, Error> {
    let Some(doc) = client.document_if_any("one.vm.info", vm)? else {
        return Ok(Settlement::NotDone);
    };
    let record = crate::oned::backup::Record::parse(&doc)
        .map_err(|e| step(format!("oned's VM {vm}: {e}")))?;
    if record.in_backup() {
        return Ok(Settlement::Running);
    }
    // Only a point the state did not hold can be the interrupted run's backup.
    let mut held = std::collections::HashSet::new();
    for i in state.images_of(vm, ctx.images_job(job_id), ctx.ds.id)? {
        for n in state.image(i)?.increments {
            held.insert((i, n.id, n.source));
        }
    }
    let images = crate::oned::images::mirror(
        state,
        client,
        vm,
        &record.backup_ids,
        ctx.images_job(job_id),
        ctx.ds.id,
    )?;
    // oned stamps its points with its own clock; the runner's may differ a little.
    let since = (since_ms - ONED_CLOCK_SKEW_MS) / 1000;
    let newest = images
        .iter()
        .flat_map(|i| i.increments.iter().map(move |n| (i.id, n)))
        .filter(|(i, n)| !held.contains(&(*i, n.id, n.source.clone())))
        .filter(|(_, n)| n.created_at >= since)
        .max_by_key(|(_, n)| n.created_at);
    Ok(match newest {
        Some((image, n)) => Settlement::Recorded(runner::Outcome {
            backup_id: n.source.chars().take(8).collect(),
            size_mb: n.size_mb,
            image_id: image,
            increment_id: n.id,
        }),
        None => Settlement::NotDone,
    })
}

/// How far oned's clock (which dates the points) may be behind the runner's.
const ONED_CLOCK_SKEW_MS: i64 = 60 * 1000;

/// How far the hypervisor's clock (which stamps the snapshot) may be behind the runner's.
const CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;

/// How often running backups' progress is read.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A private directory for the progress files of one run, removed when the run ends.
struct ProgressDir(std::path::PathBuf);

impl ProgressDir {
    /// None when no directory can be made: the run goes on without progress. Directories a
    /// killed runner left are removed. They live in this user's private directory, where no
    /// other user can plant or take a name.
    fn new(job_id: u64) -> Option<ProgressDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = backstop_image::private_dir::private_dir("progress").ok()?;
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(runner) = name
                    .strip_prefix("run-")
                    .and_then(|r| r.split('-').next())
                    .and_then(ProcessId::parse)
                else {
                    continue;
                };
                if !runner.is_running() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("run-{}-{job_id}", ProcessId::current()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .ok()
            .map(|()| ProgressDir(dir))
    }

    fn file(&self, vm: u64) -> std::path::PathBuf {
        self.0.join(format!("vm-{vm}"))
    }

    /// (done, total, read) as the backup action last wrote it.
    fn read(&self, vm: u64) -> Option<(u64, u64, u64)> {
        let text = std::fs::read_to_string(self.file(vm)).ok()?;
        let mut n = text.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some((n.next()??, n.next()??, n.next()??))
    }
}

impl Drop for ProgressDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs job `job_id` to the end. Returns how many VMs ended UPDATED and how many in ERROR.
pub fn run_now(
    env: &Env,
    state: &mut State,
    job_id: u64,
    limits: &Limits,
    mut on_event: impl FnMut(&Event),
) -> Result<(usize, usize), Error> {
    let report = run_jobs(env, state, &[job_id], limits, |_, e| on_event(e))?;
    match report.into_iter().next() {
        Some((_, Ok(counts))) => Ok(counts),
        Some((_, Err(refused))) => Err(refused),
        None => Err(input(format!("there is no backup job {job_id}"))),
    }
}

/// The VMs of a job as the scheduler sees them.
fn view(
    state: &State,
    job_id: u64,
    ctx: &JobContext,
) -> Result<(JobView, HashMap<u64, VmView>), Error> {
    let rows = state.job_vms(job_id)?;
    let mut v = JobView::new(
        job_id,
        ctx.priority,
        ctx.job.execution,
        &rows.iter().map(|r| r.vm_id).collect::<Vec<_>>(),
    );
    let mut vms = HashMap::new();
    for r in &rows {
        match r.state {
            Some(VmState::Outdated) => v.outdated.insert(r.vm_id),
            Some(VmState::Ongoing) => v.backing_up.insert(r.vm_id),
            Some(VmState::Updated) => v.updated.insert(r.vm_id),
            Some(VmState::Error) => v.error.insert(r.vm_id),
            None => false,
        };
        if let Some(host) = ctx.hosts.get(&r.vm_id) {
            vms.insert(
                r.vm_id,
                VmView {
                    id: r.vm_id,
                    host: host.clone(),
                    done: false,
                    consecutive_failures: r.failures,
                },
            );
        }
    }
    Ok((v, vms))
}

/// Starts a run of a job: refused when it is locked or still has backups in progress;
/// otherwise every VM but those over the failure cap becomes OUTDATED (VMs already OUTDATED,
/// after a retry or an interrupted run, are simply continued).
fn start_run(
    env: &Env,
    state: &mut State,
    job_id: u64,
    limits: &Limits,
    on_event: &mut impl FnMut(u64, &Event),
) -> Result<(JobContext, usize), Error> {
    if state.locked(job_id)? {
        return Err(input(format!(
            "backup job {job_id} is locked (backupjob unlock {job_id})"
        )));
    }
    let mut ctx = JobContext::load(env, state, job_id)?;
    if let Some(r) = state.rekey(ctx.ds.id)? {
        // What completes it ran first (reconcile) and could not: no backup with a password
        // that is about to change, or into a repository the change does not know.
        return Err(input(format!(
            "backup job {job_id}: the password change of datastore {} begun at {} is not complete (backupjob datastore update {} with the same template completes it; datastore abort-rekey {} gives it up)",
            r.datastore, r.started_at, r.datastore, r.datastore
        )));
    }
    let (current, _) = view(state, job_id, &ctx)?;
    if !current.backing_up.is_empty() {
        return Err(input(format!(
            "backup job {job_id} has backups in progress (VMs {:?})",
            current.backing_up
        )));
    }
    // OpenNebula mode: the job's VMs as oned has them now, once no run of it is under way.
    let mut gone = Vec::new();
    if let Some(client) = ctx.oned.clone() {
        gone = take_inventory(state, job_id, &ctx.job, &client, on_event)?;
        ctx = JobContext::load(env, state, job_id)?;
    }
    let (current, vms) = view(state, job_id, &ctx)?;
    let next = if current.outdated.is_empty() {
        scheduler::execute(&current, &vms, limits).map_err(|e| step(e.to_string()))?
    } else {
        current.clone()
    };
    for row in state.job_vms(job_id)? {
        if next.outdated.contains(&row.vm_id) {
            state.move_vm(
                job_id,
                row.vm_id,
                row.state,
                VmState::Outdated,
                None,
                now_ms(),
            )?;
        }
    }
    // VMs the job names that oned no longer lists: reported, and not backed up.
    let mut failed = 0;
    for (vm, reason) in gone {
        if state.move_vm(
            job_id,
            vm,
            Some(VmState::Outdated),
            VmState::Error,
            Some(&reason),
            now_ms(),
        )? {
            failed += 1;
            on_event(job_id, &Event::Failed { vm, reason });
        }
    }
    Ok((ctx, failed))
}

/// OpenNebula mode: the job's VMs as oned has them now (their host, state and document
/// registered, the job's VM list set from BACKUP_VMS and LABELS). Returns the VMs BACKUP_VMS
/// names that oned does not list, with the line to report.
fn take_inventory(
    state: &mut State,
    job_id: u64,
    job: &JobTemplate,
    client: &backstop_protocol::oned::OnedClient,
    on_event: &mut impl FnMut(u64, &Event),
) -> Result<Vec<(u64, String)>, Error> {
    use crate::oned::inventory;
    let mut pool = inventory::read_pool(client, inventory::PAGE)?;
    // The VMs the job names or had that the pages did not list are asked for one by one: a
    // VM deleted while the pages were read shifts them, and one would be missed.
    let listed: std::collections::HashSet<u64> = pool
        .iter()
        .filter(|v| v.state != inventory::DONE)
        .map(|v| v.id)
        .collect();
    let had: Vec<u64> = state.job_vms(job_id)?.iter().map(|r| r.vm_id).collect();
    let mut asked = std::collections::HashSet::new();
    for vm in job.vms.iter().chain(had.iter()) {
        if !listed.contains(vm)
            && asked.insert(*vm)
            && let Some(v) = inventory::confirm(client, *vm)?
        {
            pool.push(v);
        }
    }
    let (chosen, missing) = inventory::select(&pool, &job.vms, &job.labels);
    for v in &chosen {
        state.register_vm(v.id, &v.name, v.host.as_deref(), &v.document)?;
    }
    let mut ids: Vec<u64> = chosen.iter().map(|v| v.id).collect();
    ids.extend(&missing);
    // VMs a label chose before and oned no longer has leave the job, said once.
    let listed: std::collections::HashSet<u64> = pool
        .iter()
        .filter(|v| v.state != inventory::DONE)
        .map(|v| v.id)
        .collect();
    for r in state.job_vms(job_id)? {
        if !ids.contains(&r.vm_id) && !listed.contains(&r.vm_id) {
            on_event(
                job_id,
                &Event::Note {
                    vm: r.vm_id,
                    line: format!(
                        "VM {} no longer exists in OpenNebula; it leaves the job (its backups stay)",
                        r.vm_id
                    ),
                },
            );
        }
    }
    for (vm, other) in state.set_job_vms(job_id, &ids)? {
        on_event(
            job_id,
            &Event::Note {
                vm,
                line: format!("VM {vm} is backed up by backup job {other}, not this one"),
            },
        );
    }
    Ok(missing
        .into_iter()
        .map(|vm| {
            (
                vm,
                format!(
                    "VM {vm} does not exist in OpenNebula (deleted, or not visible to {}); skipped",
                    client.user()
                ),
            )
        })
        .collect())
}

/// Per job: (VMs UPDATED, VMs in ERROR), or why its run was refused.
pub type RunReport = Vec<(u64, Result<(usize, usize), Error>)>;

/// Runs jobs together to their end under one set of limits: each scheduling tick sees every
/// job, so strict priority, SEQUENTIAL/PARALLEL, MAX_BACKUPS and MAX_BACKUPS_HOST apply across
/// them as oned applies them (a lower-priority job starts once no higher one has OUTDATED VMs).
/// VM backups run in worker threads, each the chain oned runs, recorded as it finishes. What
/// a killed runner left ONGOING is reconciled first.
pub fn run_jobs(
    env: &Env,
    state: &mut State,
    job_ids: &[u64],
    limits: &Limits,
    mut on_event: impl FnMut(u64, &Event),
) -> Result<RunReport, Error> {
    reconcile(env, state, &mut on_event)?;
    let mut report: RunReport = Vec::new();
    let mut jobs: Vec<(u64, JobContext, i64)> = Vec::new();
    let runner = backstop_image::process::ProcessId::current();
    let mut records: HashMap<u64, u64> = HashMap::new();
    let mut counts: HashMap<u64, (usize, usize)> = HashMap::new();
    for &job_id in job_ids {
        match start_run(env, state, job_id, limits, &mut on_event) {
            Ok((ctx, failed)) => {
                counts.entry(job_id).or_default().1 += failed;
                let started_at = now();
                records.insert(
                    job_id,
                    state.record_backup_run(job_id, started_at, &runner)?,
                );
                jobs.push((job_id, ctx, started_at));
            }
            Err(e) => report.push((job_id, Err(e))),
        }
    }
    let ctx_of = |job: u64| jobs.iter().find(|j| j.0 == job).map(|j| &j.1);
    // OpenNebula mode: the backups asked of oned stay within oned's own limits.
    let oned_limits = jobs.iter().find_map(|j| j.1.oned.clone()).map(|client| {
        match crate::oned::config(&client) {
            Ok(conf) => crate::oned::within_oned_limits(limits, &conf),
            Err(_) => *limits,
        }
    });
    let limits = oned_limits.as_ref().unwrap_or(limits);

    type Finished = (u64, u64, Result<Backed, Error>);
    let (tx, rx) = mpsc::channel::<Finished>();
    let mut running = 0usize;
    let progress_dir = ProgressDir::new(job_ids.first().copied().unwrap_or(0));
    let mut started: HashMap<u64, (u64, std::time::Instant)> = HashMap::new();
    let outcome = std::thread::scope(|scope| -> Result<(), Error> {
        loop {
            let mut views = Vec::new();
            let mut vms = HashMap::new();
            for (job_id, ctx, _) in &jobs {
                let (v, m) = view(state, *job_id, ctx)?;
                views.push(v);
                vms.extend(m);
            }
            for d in scheduler::tick(&views, &vms, limits) {
                let (job_id, vm) = match d {
                    Decision::Start { job, vm } => (job, vm),
                    Decision::Remove { job, vm } => {
                        // Not registered (any more): it cannot be backed up.
                        let reason = format!("VM {vm} is not registered (backupjob vm register)");
                        if state.move_vm(
                            job,
                            vm,
                            Some(VmState::Outdated),
                            VmState::Error,
                            Some(&reason),
                            now_ms(),
                        )? {
                            counts.entry(job).or_default().1 += 1;
                            on_event(job, &Event::Failed { vm, reason });
                        }
                        continue;
                    }
                };
                let Some(ctx) = ctx_of(job_id) else {
                    continue;
                };
                if !state.move_vm(
                    job_id,
                    vm,
                    Some(VmState::Outdated),
                    VmState::Ongoing,
                    None,
                    now_ms(),
                )? {
                    continue;
                }
                let crate::state::Chain {
                    image,
                    last_increment: last,
                } = state.chain_of(vm, ctx.images_job(job_id), ctx.ds.id)?;
                let chain = ChainPointers {
                    image_id: image,
                    last_increment: last,
                };
                let (cfg, new_chain) = config_for(state, &ctx.cfg, image, now())?;
                if let Some(why) = new_chain {
                    on_event(
                        job_id,
                        &Event::Note {
                            vm,
                            line: format!("a new chain starts: {why}"),
                        },
                    );
                }
                let doc = ctx.docs.get(&vm).cloned().unwrap_or_default();
                let (tx, env, ds) = (tx.clone(), env.clone(), ctx.ds.clone());
                let oned = ctx.oned.clone();
                let file = state.file().to_path_buf();
                let progress = progress_dir.as_ref().map(|d| d.file(vm));
                on_event(job_id, &Event::Started { vm });
                started.insert(vm, (job_id, std::time::Instant::now()));
                running += 1;
                scope.spawn(move || {
                    // Cancelled when `backupjob cancel` took the VM out of ONGOING.
                    let cancelled = || {
                        State::open(&file)
                            .and_then(|s| s.job_vms(job_id))
                            .is_ok_and(|rows| {
                                rows.iter()
                                    .any(|r| r.vm_id == vm && r.state != Some(VmState::Ongoing))
                            })
                    };
                    let r = match &oned {
                        Some(client) => {
                            crate::oned::backup::run(client, vm, ds.id, &cfg, &cancelled)
                                .map(Backed::Oned)
                        }
                        None => runner::run_chain(
                            &env,
                            &doc,
                            &cfg,
                            &ds,
                            chain,
                            &cancelled,
                            progress.as_deref(),
                        )
                        .map(Backed::Chain),
                    };
                    let _ = tx.send((job_id, vm, r));
                });
            }
            if running == 0 {
                return Ok(());
            }
            let (job_id, vm, result) = match rx.recv_timeout(PROGRESS_EVERY) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(dir) = &progress_dir {
                        report_progress(dir, &started, state, &mut on_event);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            running -= 1;
            started.remove(&vm);
            let Some(ctx) = ctx_of(job_id) else {
                continue;
            };
            finish_vm(
                env,
                state,
                ctx,
                (job_id, vm),
                result,
                &mut counts,
                &mut on_event,
            )?;
        }
    });
    if let Err(e) = outcome {
        let runs: Vec<(u64, i64)> = jobs.iter().map(|j| (j.0, j.2)).collect();
        let stopped = Stopped {
            jobs: &runs,
            records: &records,
            counts: &counts,
            started: &started,
        };
        interrupted(env, state, &stopped, &e, &mut on_event);
        return Err(e);
    }
    for (job_id, _, started_at) in &jobs {
        let ended_at = now();
        let (updated, failed) = counts.get(job_id).copied().unwrap_or_default();
        if let Some(&id) = records.get(job_id) {
            state.end_run(&crate::state::sync::JobRun {
                id,
                kind: crate::state::sync::RunKind::Backup,
                job_id: *job_id,
                started_at: *started_at,
                ended_at: Some(ended_at),
                snapshots: updated as u64,
                bytes_read: 0,
                bytes_written: 0,
                error: (failed > 0).then(|| format!("{failed} VMs failed")),
            })?;
        }
        report.push((*job_id, Ok((updated, failed))));
    }
    Ok(report)
}

/// What a VM's backup made: the chain the runner ran, or oned's backup.
enum Backed {
    Chain(runner::ChainResult),
    Oned(crate::oned::backup::Made),
}

/// Records oned's backup of a VM: the state's images of it made oned's again; the outcome
/// from the image oned made or extended.
fn record_oned(
    state: &mut State,
    ctx: &JobContext,
    client: &backstop_protocol::oned::OnedClient,
    (job_id, vm): (u64, u64),
    made: &crate::oned::backup::Made,
) -> Result<runner::Outcome, Error> {
    let images = crate::oned::images::mirror(
        state,
        client,
        vm,
        &made.backup_ids,
        ctx.images_job(job_id),
        ctx.ds.id,
    )?;
    let increment = images
        .iter()
        .find(|i| i.id == made.image_id)
        .and_then(|i| i.increments.iter().find(|n| n.id == made.increment_id))
        .ok_or_else(|| {
            step(format!(
                "oned reports backup image {} of VM {vm}, but it is not in datastore {}",
                made.image_id, ctx.ds.id
            ))
        })?;
    Ok(runner::Outcome {
        backup_id: increment.source.chars().take(8).collect(),
        size_mb: increment.size_mb,
        image_id: made.image_id,
        increment_id: made.increment_id,
    })
}

/// Records a VM's finished backup (the runner's chain: the increment, KEEP_LAST; oned's: its
/// images) and moves it to UPDATED, or to ERROR with the reason.
fn finish_vm(
    env: &Env,
    state: &mut State,
    ctx: &JobContext,
    (job_id, vm): (u64, u64),
    result: Result<Backed, Error>,
    counts: &mut HashMap<u64, (usize, usize)>,
    on_event: &mut impl FnMut(u64, &Event),
) -> Result<(), Error> {
    let outcome = result.and_then(|r| match (r, &ctx.oned) {
        (Backed::Chain(r), _) => runner::record(env, state, &ctx.cfg, &ctx.ds, r, now()),
        (Backed::Oned(made), Some(client)) => record_oned(state, ctx, client, (job_id, vm), &made),
        (Backed::Oned(_), None) => Err(step("an oned backup in a job without oned")),
    });
    let entry = counts.entry(job_id).or_default();
    match outcome {
        Ok(o) => {
            state.move_vm(
                job_id,
                vm,
                Some(VmState::Ongoing),
                VmState::Updated,
                None,
                now_ms(),
            )?;
            entry.0 += 1;
            on_event(
                job_id,
                &Event::Done {
                    vm,
                    line: format!(
                        "backup {} ({} MiB), increment {} of image {}",
                        o.backup_id, o.size_mb, o.increment_id, o.image_id
                    ),
                },
            );
        }
        Err(failed) => {
            let reason = failed.to_string();
            state.move_vm(
                job_id,
                vm,
                Some(VmState::Ongoing),
                VmState::Error,
                Some(&reason),
                now_ms(),
            )?;
            entry.1 += 1;
            on_event(job_id, &Event::Failed { vm, reason });
        }
    }
    Ok(())
}

/// Each running backup's latest progress, as an event and in the state (for `backstop
/// serve`; a failed write only loses a progress line).
fn report_progress(
    dir: &ProgressDir,
    started: &HashMap<u64, (u64, std::time::Instant)>,
    state: &mut State,
    on_event: &mut impl FnMut(u64, &Event),
) {
    for (vm, (job, since)) in started {
        if let Some((done, total, read)) = dir.read(*vm) {
            let _ = state.set_progress(*job, *vm, (done, total, read), now_ms());
            on_event(
                *job,
                &Event::Progress {
                    vm: *vm,
                    done,
                    total,
                    read,
                    elapsed_ms: since.elapsed().as_millis() as u64,
                },
            );
        }
    }
}

/// What a scheduler pass did: the jobs run, highest priority first, and the jobs that missed
/// their schedule (a due run refused, or started more than [`LATE_AFTER`] seconds after its
/// time, as when the daemon was not running), with why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub ran: Vec<u64>,
    pub missed: Vec<(u64, String)>,
}

/// A scheduled run that starts this much later than its time missed its schedule.
pub const LATE_AFTER: i64 = 900;

/// One scheduler pass (`backupjob scheduler`): settles what a killed runner left ONGOING
/// ([`reconcile`]); then runs together ([`run_jobs`]) every job that has a due scheduled
/// action or VMs still OUTDATED; then moves the due actions on, or records why a job's run was
/// refused and leaves them due.
pub fn scheduler_pass(
    env: &Env,
    state: &mut State,
    limits: &Limits,
    tz: &jiff::tz::TimeZone,
    mut on_event: impl FnMut(u64, &Event),
) -> Result<PassReport, Error> {
    let t = now();
    // Settled before the due jobs are chosen: a VM that goes back to OUTDATED makes its job
    // run.
    reconcile(env, state, &mut on_event)?;
    let mut jobs = state.jobs()?;
    jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let mut chosen = Vec::new();
    let mut due_of = HashMap::new();
    for crate::state::JobRow { id: job, .. } in jobs {
        let due: Vec<_> = state
            .sched_actions(job)?
            .into_iter()
            .filter(|s| s.action.due(t))
            .collect();
        let outdated = state
            .job_vms(job)?
            .iter()
            .any(|v| v.state == Some(VmState::Outdated));
        if due.is_empty() && !outdated {
            continue;
        }
        chosen.push(job);
        due_of.insert(job, due);
    }
    if chosen.is_empty() {
        return Ok(PassReport::default());
    }
    let report = run_jobs(env, state, &chosen, limits, &mut on_event)?;
    let mut pass = PassReport::default();
    for job in chosen {
        let due = due_of.remove(&job).unwrap_or_default();
        match report.iter().find(|r| r.0 == job).map(|r| &r.1) {
            Some(Ok(_)) => {
                if let Some(late) = due.iter().map(|s| t - s.action.time).max()
                    && late > LATE_AFTER
                {
                    pass.missed.push((
                        job,
                        format!(
                            "its scheduled run started {} minutes late (was the scheduler stopped?)",
                            late / 60
                        ),
                    ));
                }
                let done = now();
                for crate::state::SchedActionRow {
                    id, action: mut sa, ..
                } in due
                {
                    sa.ran(done, tz);
                    state.update_sched_action(id, &sa, None)?;
                }
                pass.ran.push(job);
            }
            Some(Err(e)) => {
                let message = format!("{t} : {e}");
                if !due.is_empty() {
                    pass.missed
                        .push((job, format!("its scheduled run was refused: {e}")));
                }
                for crate::state::SchedActionRow { id, action: sa, .. } in due {
                    state.update_sched_action(id, &sa, Some(&message))?;
                }
            }
            None => {}
        }
    }
    Ok(pass)
}
