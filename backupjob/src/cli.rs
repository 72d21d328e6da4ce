//! `backstop backupjob ...`: the onebackupjob-style command line over the state database.
//!
//! Jobs: `create`, `list`, `show`, `update`, `delete`, `rename`, `lock`/`unlock`, `priority`,
//! `backup` (one run now, in the foreground, with a line per VM event), `cancel`, `retry`,
//! `sched-add|update|delete`; `datastore create|list|show|delete`; `vm
//! register|list|show|unregister`; `image list|show|restore`; `scheduler`. Every command that
//! reads takes `--json`. Exit codes: 0 done, 1 a failure (a VM in ERROR after `backup`, bad
//! input, a refused change), 2 bad usage.

use crate::engine::{self, Event};
use crate::model::{self, JobTemplate};
use crate::runner::Env;
use crate::scheduler::Limits;
use crate::state::{self, State, VmState};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "backupjob",
    about = "Backup jobs: define datastores, VMs and jobs, and run them."
)]
pub struct Args {
    /// The state database (default: $BACKSTOP_STATE, else <data dir>/backstop/state.db).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// The OpenNebula remotes tree the actions are run from.
    #[arg(long, global = true, default_value = "/var/lib/one/remotes")]
    remotes: PathBuf,
    /// oned's DATASTORE_LOCATION (VM directories are <location>/<system ds>/<vm id>).
    #[arg(long, global = true, default_value = "/var/lib/one//datastores")]
    datastore_location: String,
    /// Running backups at most, overall (0: unlimited).
    #[arg(long, global = true, default_value_t = 5)]
    max_backups: u32,
    /// Running backups at most per host (0: unlimited).
    #[arg(long, global = true, default_value_t = 2)]
    max_backups_host: u32,
    /// Seconds between progress log lines of a running backup when stdout is not a terminal
    /// (on a terminal, a live line is redrawn every second).
    #[arg(long, global = true, default_value_t = 30)]
    progress_every: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backup datastores.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// VMs, registered from their `onevm show -x` document.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Create a job from a template file, from flags, or both (the flags win).
    Create {
        file: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        /// BACKUP_VMS: VM ids, in backup order (1,2,3).
        #[arg(long)]
        vms: Option<String>,
        /// DATASTORE_ID.
        #[arg(long)]
        datastore: Option<u64>,
        /// MODE: FULL or INCREMENT.
        #[arg(long)]
        mode: Option<String>,
        /// KEEP_LAST.
        #[arg(long)]
        keep: Option<u32>,
        /// EXECUTION: SEQUENTIAL or PARALLEL.
        #[arg(long)]
        execution: Option<String>,
        /// PRIORITY (0–99).
        #[arg(long)]
        priority: Option<u8>,
    },
    /// List the jobs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a job and where each of its VMs stands.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Run a job now, in the foreground.
    Backup {
        id: u64,
    },
    /// Move the job's VMs in ERROR back to OUTDATED.
    Retry {
        id: u64,
    },
    /// Stop a job's run: OUTDATED VMs are dropped from it, running backups are stopped with
    /// the datastore's backup_cancel and end in ERROR.
    Cancel {
        id: u64,
    },
    /// Replace a job's template with a file's (or merge it in with --append). NAME, PRIORITY
    /// and SCHED_ACTION are not changed this way (rename, priority, sched-*).
    Update {
        id: u64,
        file: PathBuf,
        #[arg(long)]
        append: bool,
    },
    /// Set a job's priority (0–99; higher runs first).
    Priority {
        id: u64,
        priority: u8,
    },
    Rename {
        id: u64,
        name: String,
    },
    /// A locked job is not run.
    Lock {
        id: u64,
    },
    Unlock {
        id: u64,
    },
    /// Delete a job and its scheduled actions (its backup images stay).
    Delete {
        id: u64,
    },
    /// Change a scheduled action of a job, from a file holding `SCHED_ACTION = [...]` or from
    /// flags; what is not given stays as it was.
    SchedUpdate {
        id: u64,
        sched_id: u64,
        file: Option<PathBuf>,
        /// When: an epoch, or a local date and time (2026-11-22T03:00).
        #[arg(long)]
        time: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        repeat: Option<String>,
        #[arg(long)]
        days: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        end_type: Option<i64>,
        #[arg(long, allow_hyphen_values = true)]
        end_value: Option<i64>,
    },
    /// Delete a scheduled action of a job.
    SchedDelete {
        id: u64,
        sched_id: u64,
    },
    /// Backup images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Add a scheduled action to a job (SCHED_ACTION: TIME, REPEAT, DAYS, END_TYPE, END_VALUE).
    SchedAdd {
        id: u64,
        /// When: an epoch, or a local date and time (2026-11-22T03:00).
        #[arg(long)]
        time: String,
        /// -1 none, 0 weekly, 1 monthly, 2 yearly, 3 hourly (or: weekly, monthly, yearly,
        /// hourly).
        #[arg(long, default_value = "-1", allow_hyphen_values = true)]
        repeat: String,
        /// Weekdays (0 = Sunday), days of the month, days of the year, or the hours.
        #[arg(long, default_value = "")]
        days: String,
        /// -1 none, 0 never, 1 after END_VALUE runs, 2 until the epoch END_VALUE.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        end_type: i64,
        #[arg(long)]
        end_value: Option<i64>,
    },
    /// Run the jobs whose scheduled actions are due (one pass, or --loop as a daemon that
    /// stops cleanly on SIGTERM).
    Scheduler {
        #[arg(long = "loop")]
        forever: bool,
        /// Seconds between passes with --loop.
        #[arg(long, default_value_t = 15)]
        interval: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DatastoreCommand {
    /// Create a backup datastore from a template file (NAME, DS_MAD, BASE_PATH, RESTIC_...).
    Create { file: PathBuf },
    List {
        #[arg(long)]
        json: bool,
    },
    /// A datastore's template (secrets hidden) and the jobs and images that use it.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Delete a datastore no job names and no backup image lives in (the repository stays).
    Delete { id: u64 },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Every backup image with its increments.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A backup image and its increments.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup image into a directory: disk.<id>.qcow2 per disk (standalone qcow2),
    /// vm.xml, and disk.tpm.0 when the VM had a TPM.
    Restore {
        id: u64,
        /// The directory to write (created if missing).
        #[arg(long)]
        to: PathBuf,
        /// The increment to restore (default: the latest).
        #[arg(long)]
        increment: Option<u64>,
        /// Only this disk.
        #[arg(long)]
        disk_id: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Register a VM from its XML document.
    Register { file: PathBuf },
    List {
        #[arg(long)]
        json: bool,
    },
    /// A VM: its host, disks, job and backup images.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Forget a VM that is in no job (its backup images stay).
    Unregister { id: u64 },
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "backupjob: {}",
                e.lines().next().unwrap_or("")
            );
            ExitCode::FAILURE
        }
    }
}

fn event_line(ev: &Event) -> String {
    match ev {
        Event::Started { vm } => format!("VM {vm}: backing up"),
        Event::Progress {
            vm,
            done,
            total,
            elapsed_ms,
            ..
        } => format!(
            "VM {vm}: {}",
            backstop_datastore::repo::writer::progress_line(
                *done,
                *total,
                std::time::Duration::from_millis(*elapsed_ms)
            )
        ),
        Event::Done { vm, line } => format!("VM {vm}: {line}"),
        Event::Settled { vm, line } => format!("VM {vm}: {line}"),
        Event::Failed { vm, reason } => format!("VM {vm}: ERROR: {reason}"),
    }
}

/// Shows a run's events: a line each; progress as one live line on a terminal, redrawn in
/// place, or as a log line per VM every `every` otherwise.
struct Reporter {
    tty: bool,
    every: std::time::Duration,
    /// The latest progress line of each running VM.
    live: std::collections::BTreeMap<u64, String>,
    logged: std::collections::HashMap<u64, std::time::Instant>,
    drawn: bool,
}

impl Reporter {
    fn new(every: u64) -> Reporter {
        use std::io::IsTerminal;
        Reporter {
            tty: std::io::stdout().is_terminal(),
            every: std::time::Duration::from_secs(every.max(1)),
            live: Default::default(),
            logged: Default::default(),
            drawn: false,
        }
    }

    fn event(&mut self, prefix: &str, ev: &Event) {
        let mut out = std::io::stdout().lock();
        let line = format!("{prefix}{}", event_line(ev));
        match ev {
            Event::Progress { vm, .. } => {
                if self.tty {
                    self.live.insert(*vm, line);
                    let all: Vec<&str> = self.live.values().map(String::as_str).collect();
                    let _ = write!(out, "\r\x1b[K{}", all.join(" | "));
                    let _ = out.flush();
                    self.drawn = true;
                } else {
                    // The first one after `every`, then every `every`.
                    let now = std::time::Instant::now();
                    let first = now
                        .checked_sub(self.every)
                        .map_or(now, |t| t + std::time::Duration::from_millis(900));
                    let due = self.logged.entry(*vm).or_insert(first);
                    if now.duration_since(*due) >= self.every {
                        *due = now;
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
            Event::Started { vm }
            | Event::Done { vm, .. }
            | Event::Settled { vm, .. }
            | Event::Failed { vm, .. } => {
                self.live.remove(vm);
                self.logged.remove(vm);
                if self.drawn {
                    let _ = write!(out, "\r\x1b[K");
                    self.drawn = false;
                }
                let _ = writeln!(out, "{line}");
            }
        }
    }
}

fn print(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| format!("cannot write: {e}"))
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let path = match &args.state {
        Some(p) => p.clone(),
        None => state::default_path()
            .ok_or("no state database: give --state or set BACKSTOP_STATE or HOME")?,
    };
    let mut st = State::open(&path).map_err(|e| e.to_string())?;
    let e = |e: state::StateError| e.to_string();
    match &args.command {
        Command::Datastore {
            command: DatastoreCommand::Create { file },
        } => {
            let text = read(file)?;
            // Validated with the id it will get.
            let next = st.datastores().map_err(e)?.last().map_or(0, |d| d.0) + 1;
            let (name, _) = model::datastore(next, &text, &args.datastore_location)
                .map_err(|x| format!("{}: {x}", file.display()))?;
            let id = st.add_datastore(&name, &text).map_err(e)?;
            print(&format!("ID: {id}"))?;
        }
        Command::Datastore {
            command: DatastoreCommand::List { json },
        } => {
            let list = st.datastores().map_err(e)?;
            if *json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(id, name, _)| serde_json::json!({"id": id, "name": name}))
                    .collect();
                print(&serde_json::Value::Array(v).to_string())?;
            } else {
                print(&format!("{:>4} {}", "ID", "NAME"))?;
                for (id, name, _) in list {
                    print(&format!("{id:>4} {name}"))?;
                }
            }
        }
        Command::Vm {
            command: VmCommand::Register { file },
        } => {
            let doc = read(file)?;
            let root = backstop_protocol::xml::Element::parse(&doc)
                .map_err(|x| format!("{}: {x}", file.display()))?;
            let vm = backstop_protocol::message::Vm::from_xml(&root)
                .map_err(|x| format!("{}: {x}", file.display()))?;
            let host = vm.placement.as_ref().map(|p| p.hostname.clone());
            st.register_vm(vm.id, &vm.name, host.as_deref(), &doc)
                .map_err(e)?;
            print(&format!("ID: {}", vm.id))?;
        }
        Command::Vm {
            command: VmCommand::List { json },
        } => {
            let list = st.vms().map_err(e)?;
            if *json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(id, name, host, _)| serde_json::json!({"id": id, "name": name, "host": host}))
                    .collect();
                print(&serde_json::Value::Array(v).to_string())?;
            } else {
                print(&format!("{:>4} {:<20} {}", "ID", "NAME", "HOST"))?;
                for (id, name, host, _) in list {
                    print(&format!(
                        "{id:>4} {name:<20} {}",
                        host.unwrap_or_else(|| "-".into())
                    ))?;
                }
            }
        }
        Command::Create {
            file,
            name,
            vms,
            datastore,
            mode,
            keep,
            execution,
            priority,
        } => {
            use backstop_protocol::template::Template;
            let (mut text, what) = match file {
                Some(f) => (read(f)?, f.display().to_string()),
                None => (String::new(), "the flags".to_string()),
            };
            let flags = [
                ("NAME", name.clone()),
                ("BACKUP_VMS", vms.clone()),
                ("DATASTORE_ID", datastore.map(|d| d.to_string())),
                ("MODE", mode.clone()),
                ("KEEP_LAST", keep.map(|k| k.to_string())),
                ("EXECUTION", execution.clone()),
                ("PRIORITY", priority.map(|p| p.to_string())),
            ];
            if flags.iter().any(|(_, v)| v.is_some()) {
                let mut t = Template::parse(&text).map_err(|x| format!("{what}: template: {x}"))?;
                for (attr, value) in flags {
                    if let Some(v) = value {
                        t.attributes.retain(|a| a.name != attr);
                        t.push(attr, v);
                    }
                }
                text = t.render().map_err(|x| format!("{what}: {x}"))?;
            }
            let file = std::path::Path::new(&what);
            let job = JobTemplate::parse(&text).map_err(|x| format!("{}: {x}", file.display()))?;
            let stored = model::without_sched_actions(&text).map_err(|x| x.to_string())?;
            let id = st
                .create_job_with(
                    &job.name,
                    job.priority,
                    &stored,
                    &job.vms,
                    &job.sched_actions,
                )
                .map_err(e)?;
            print(&format!("ID: {id}"))?;
        }
        Command::List { json } => {
            let jobs = st.jobs().map_err(e)?;
            let mut rows = Vec::new();
            for (id, name, prio, _) in jobs {
                let vms: Vec<String> = st
                    .job_vms(id)
                    .map_err(e)?
                    .iter()
                    .map(|v| v.vm_id.to_string())
                    .collect();
                let (locked, last, _) = st.job_status(id).map_err(e)?;
                rows.push((id, name, prio, vms.join(","), locked, last));
            }
            if *json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, name, prio, vms, locked, last)| {
                        serde_json::json!({"id": id, "name": name, "priority": prio,
                            "vms": vms, "locked": locked, "last_backup_time": last})
                    })
                    .collect();
                print(&serde_json::Value::Array(v).to_string())?;
            } else {
                print(&format!(
                    "{:>4} {:>4} {:<20} {:<16} VMS",
                    "ID", "PRIO", "NAME", "LAST"
                ))?;
                for (id, name, prio, mut list, _, last) in rows {
                    if list.len() > 15 {
                        list.truncate(12);
                        list.push_str("...");
                    }
                    print(&format!(
                        "{id:>4} {prio:>4} {name:<20} {:<16} {list}",
                        last.map_or("-".into(), local_time)
                    ))?;
                }
            }
        }
        Command::Show { id, json } => {
            let (_, name, prio, template) = st
                .jobs()
                .map_err(e)?
                .into_iter()
                .find(|j| j.0 == *id)
                .ok_or_else(|| format!("there is no backup job {id}"))?;
            let rows = st.job_vms(*id).map_err(e)?;
            let set = |s: VmState| -> Vec<u64> {
                rows.iter()
                    .filter(|r| r.state == Some(s))
                    .map(|r| r.vm_id)
                    .collect()
            };
            if *json {
                let vms: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.vm_id,
                            "state": r.state.map(VmState::as_str),
                            "reason": r.reason,
                            "failures": r.failures,
                            "started_at": r.started_at,
                            "ended_at": r.ended_at,
                        })
                    })
                    .collect();
                let (locked, last, duration) = st.job_status(*id).map_err(e)?;
                let sas: Vec<_> = st
                    .sched_actions(*id)
                    .map_err(e)?
                    .into_iter()
                    .map(|(sid, sa, msg)| {
                        let (end_type, end_value) = sa.end.codes();
                        serde_json::json!({
                            "id": sid, "time": sa.time, "repeat": format!("{:?}", sa.repeat),
                            "days": sa.days, "end_type": end_type, "end_value": end_value,
                            "done": sa.done, "message": msg,
                        })
                    })
                    .collect();
                print(
                    &serde_json::json!({"id": id, "name": name, "priority": prio, "vms": vms,
                        "locked": locked, "last_backup_time": last,
                        "last_backup_duration": duration, "sched_actions": sas})
                    .to_string(),
                )?;
            } else {
                let ids = |v: Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                let (locked, last, duration) = st.job_status(*id).map_err(e)?;
                print(&format!(
                    "BACKUP JOB {id} INFORMATION\nID       : {id}\nNAME     : {name}\nPRIORITY : {prio}\n\
                     LOCK     : {}\n",
                    if locked { "Locked" } else { "None" }
                ))?;
                print(&format!(
                    "LAST BACKUP JOB EXECUTION INFORMATION\nTIME     : {}\nDURATION : {}\n",
                    last.map_or("-".into(), local_time),
                    duration.map_or("-".into(), |d| format!(
                        "{:02}h{:02}m{:02}s",
                        d / 3600,
                        d / 60 % 60,
                        d % 60
                    ))
                ))?;
                print(&format!(
                    "VIRTUAL MACHINE BACKUP STATUS\nUPDATED  : {}\nOUTDATED : {}\nONGOING  : {}\nERROR    : {}\n",
                    ids(set(VmState::Updated)),
                    ids(set(VmState::Outdated)),
                    ids(set(VmState::Ongoing)),
                    ids(set(VmState::Error)),
                ))?;
                for r in rows.iter().filter(|r| r.reason.is_some()) {
                    print(&format!(
                        "VM {} : {}",
                        r.vm_id,
                        r.reason.as_deref().unwrap_or_default()
                    ))?;
                }
                let sas = st.sched_actions(*id).map_err(e)?;
                if !sas.is_empty() {
                    print("SCHEDULED ACTIONS")?;
                    print(&format!(
                        "{:>3} {:<7} {:<5} {:<16} {:<16} {:<16} STATUS",
                        "ID", "ACTION", "ARGS", "SCHEDULED", "REPEAT", "END"
                    ))?;
                    for (sid, sa, msg) in sas {
                        let repeat = match sa.repeat {
                            crate::schedule::Repeat::None => "-".to_string(),
                            crate::schedule::Repeat::Weekly => format!("Weekly {:?}", sa.days),
                            crate::schedule::Repeat::Monthly => format!("Monthly {:?}", sa.days),
                            crate::schedule::Repeat::Yearly => format!("Yearly {:?}", sa.days),
                            crate::schedule::Repeat::Hourly => {
                                format!("Each {} hours", sa.days.first().copied().unwrap_or(0))
                            }
                        };
                        let end = match sa.end {
                            crate::schedule::End::None | crate::schedule::End::Never => {
                                "None".to_string()
                            }
                            crate::schedule::End::Times(n) => format!("After {n} times"),
                            crate::schedule::End::Until(t) => format!("On {}", local_time(t)),
                        };
                        let status = match msg {
                            Some(m) => format!("Error! {m}"),
                            None if sa.done > 0 => format!("Done on {}", local_time(sa.done)),
                            None => "Pending".into(),
                        };
                        print(&format!(
                            "{sid:>3} {:<7} {:<5} {:<16} {repeat:<16} {end:<16} {status}",
                            "backup",
                            "-",
                            local_time(sa.time)
                        ))?;
                    }
                    print("")?;
                }
                print(&format!("\nTEMPLATE CONTENTS\n{}", template.trim_end()))?;
            }
        }
        Command::Backup { id } => {
            let env = Env {
                remotes: args.remotes.clone(),
                datastore_location: args.datastore_location.clone(),
            };
            let limits = Limits {
                max_backups: args.max_backups,
                max_backups_host: args.max_backups_host,
                ..Limits::default()
            };
            let mut reporter = Reporter::new(args.progress_every);
            let (updated, failed) = engine::run_now(&env, &mut st, *id, &limits, |ev| {
                reporter.event("", ev);
            })?;
            print(&format!(
                "backup job {id}: {updated} VMs backed up, {failed} in ERROR"
            ))?;
            if failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::SchedAdd {
            id,
            time,
            repeat,
            days,
            end_type,
            end_value,
        } => {
            if !st.jobs().map_err(e)?.iter().any(|j| j.0 == *id) {
                return Err(format!("there is no backup job {id}"));
            }
            let epoch = parse_time(time)?;
            let repeat = parse_repeat(repeat)?;
            let sa = crate::schedule::SchedAction::new(epoch, repeat, days, *end_type, *end_value)
                .map_err(|x| x.to_string())?;
            let sid = st.add_sched_action(*id, &sa).map_err(e)?;
            print(&format!("ID: {sid}"))?;
        }
        Command::Scheduler { forever, interval } => {
            let env = Env {
                remotes: args.remotes.clone(),
                datastore_location: args.datastore_location.clone(),
            };
            let limits = Limits {
                max_backups: args.max_backups,
                max_backups_host: args.max_backups_host,
                ..Limits::default()
            };
            let tz = jiff::tz::TimeZone::system();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone());
            let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
            let mut reporter = Reporter::new(args.progress_every);
            loop {
                let ran = engine::scheduler_pass(&env, &mut st, &limits, &tz, |job, ev| {
                    reporter.event(&format!("job {job}: "), ev);
                })?;
                if !ran.is_empty() {
                    let list: Vec<String> = ran.iter().map(u64::to_string).collect();
                    print(&format!("scheduler: ran backup jobs {}", list.join(", ")))?;
                }
                if !*forever {
                    break;
                }
                // Sleep in small steps so SIGTERM is honoured quickly (between jobs, never
                // in the middle of one).
                let until = std::time::Instant::now() + std::time::Duration::from_secs(*interval);
                while std::time::Instant::now() < until
                    && !stop.load(std::sync::atomic::Ordering::SeqCst)
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    print("scheduler: stopped")?;
                    break;
                }
            }
        }
        Command::Cancel { id } => {
            let (_, _, _, template) = st
                .jobs()
                .map_err(e)?
                .into_iter()
                .find(|j| j.0 == *id)
                .ok_or_else(|| format!("there is no backup job {id}"))?;
            let job = JobTemplate::parse(&template).map_err(|x| format!("backup job {id}: {x}"))?;
            let ds_mad = datastore_of(&st, args, job.datastore_id)
                .map_or_else(|_| "backstop".to_string(), |(_, _, ds)| ds.ds_mad);
            let docs = st.vms().map_err(e)?;
            let now = jiff::Timestamp::now().as_millisecond();
            let (mut dropped, mut stopped) = (0, 0);
            // The waiting VMs go first: once a running one is stopped, the runner would
            // otherwise start the next.
            let rows = st.job_vms(*id).map_err(e)?;
            for r in rows.iter().filter(|r| r.state == Some(VmState::Outdated)) {
                dropped += usize::from(st.clear_vm(*id, r.vm_id, VmState::Outdated).map_err(e)?);
            }
            for r in rows.iter().filter(|r| r.state == Some(VmState::Ongoing)) {
                st.cancel_vm(*id, r.vm_id, now).map_err(e)?;
                let Some((_, _, _, doc)) = docs.iter().find(|d| d.0 == r.vm_id) else {
                    continue;
                };
                let root =
                    backstop_protocol::xml::Element::parse(doc).map_err(|x| x.to_string())?;
                let vm =
                    backstop_protocol::message::Vm::from_xml(&root).map_err(|x| x.to_string())?;
                let Some(place) = vm.placement.clone() else {
                    continue;
                };
                let vm_dir = format!(
                    "{}/{}/{}",
                    args.datastore_location.trim_end_matches('/'),
                    place.system_ds_id.unwrap_or(0),
                    vm.id
                );
                let action = args
                    .remotes
                    .join(format!("datastore/{ds_mad}/backup_cancel"));
                let mut child = std::process::Command::new(&action)
                    .arg(format!("{}:{vm_dir}", place.hostname))
                    .arg(
                        vm.deploy_id
                            .clone()
                            .unwrap_or_else(|| format!("one-{}", vm.id)),
                    )
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|x| format!("cannot run {}: {x}", action.display()))?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(doc.as_bytes());
                }
                let out = child.wait_with_output().map_err(|x| x.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "backup_cancel of VM {}: {}",
                        vm.id,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                stopped += 1;
            }
            print(&format!(
                "backup job {id}: {dropped} VMs dropped from the run, {stopped} running backups stopped"
            ))?;
        }
        Command::Priority { id, priority } => {
            st.set_priority(*id, *priority).map_err(e)?;
        }
        Command::Update { id, file, append } => {
            use backstop_protocol::template::Template;
            let (_, name, _, old) = st
                .jobs()
                .map_err(e)?
                .into_iter()
                .find(|j| j.0 == *id)
                .ok_or_else(|| format!("there is no backup job {id}"))?;
            let old = Template::parse(&old).map_err(|x| format!("backup job {id}: {x}"))?;
            let new = Template::parse(&read(file)?)
                .map_err(|x| format!("{}: template: {x}", file.display()))?;
            let fixed = ["NAME", "PRIORITY", "SCHED_ACTION"];
            if new.attributes.iter().any(|a| a.name == "SCHED_ACTION") {
                let _ = writeln!(
                    std::io::stderr(),
                    "backupjob: {}: SCHED_ACTION is not changed by update; use sched-add, sched-update or sched-delete",
                    file.display()
                );
            }
            let mut merged = if *append {
                old.clone()
            } else {
                Template::default()
            };
            for a in new
                .attributes
                .iter()
                .filter(|a| !fixed.contains(&a.name.as_str()))
            {
                merged.attributes.retain(|b| b.name != a.name);
                merged.attributes.push(a.clone());
            }
            // What update cannot change stays as it was.
            for a in old
                .attributes
                .iter()
                .filter(|a| fixed.contains(&a.name.as_str()))
            {
                merged.attributes.retain(|b| b.name != a.name);
                merged.attributes.insert(0, a.clone());
            }
            // The job's current name (rename changes it outside the template).
            merged.attributes.retain(|b| b.name != "NAME");
            merged.attributes.insert(
                0,
                backstop_protocol::template::Attribute {
                    name: "NAME".into(),
                    value: backstop_protocol::template::Value::Single(name),
                },
            );
            let text = merged
                .render()
                .map_err(|x| format!("{}: {x}", file.display()))?;
            let job = JobTemplate::parse(&text).map_err(|x| format!("{}: {x}", file.display()))?;
            st.set_job_template(*id, &text, &job.vms).map_err(e)?;
        }
        Command::Rename { id, name } => {
            st.rename_job(*id, name).map_err(e)?;
        }
        Command::Lock { id } => st.set_locked(*id, true).map_err(e)?,
        Command::Unlock { id } => st.set_locked(*id, false).map_err(e)?,
        Command::Delete { id } => st.delete_job(*id).map_err(e)?,
        Command::SchedDelete { id, sched_id } => {
            st.delete_sched_action(*id, *sched_id).map_err(e)?;
        }
        Command::Image {
            command: ImageCommand::List { json },
        } => {
            let images = st.all_images().map_err(e)?;
            if *json {
                let v: Vec<_> = images
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id,
                            "vm": i.vm_id,
                            "job": i.job_id,
                            "datastore": i.datastore_id,
                            "increments": i.increments.iter().map(|n| serde_json::json!({
                                "id": n.id, "source": n.source, "size_mb": n.size_mb, "type": n.kind,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                print(&serde_json::Value::Array(v).to_string())?;
            } else {
                print(&format!(
                    "{:>4} {:>5} {:>4} {:>4} INCREMENTS",
                    "ID", "VM", "JOB", "DS"
                ))?;
                for i in images {
                    let incs: Vec<String> = i
                        .increments
                        .iter()
                        .map(|n| format!("{}:{}", n.id, n.source))
                        .collect();
                    print(&format!(
                        "{:>4} {:>5} {:>4} {:>4} {}",
                        i.id,
                        i.vm_id,
                        i.job_id.map_or("-".into(), |j| j.to_string()),
                        i.datastore_id,
                        incs.join(",")
                    ))?;
                }
            }
        }
        Command::Datastore {
            command: DatastoreCommand::Show { id, json },
        } => datastore_show(&st, args, *id, *json)?,
        Command::Datastore {
            command: DatastoreCommand::Delete { id },
        } => {
            let using: Vec<u64> = st
                .jobs()
                .map_err(e)?
                .into_iter()
                .filter(|(_, _, _, t)| JobTemplate::parse(t).is_ok_and(|j| j.datastore_id == *id))
                .map(|j| j.0)
                .collect();
            st.delete_datastore(*id, &using).map_err(e)?;
        }
        Command::Vm {
            command: VmCommand::Show { id, json },
        } => vm_show(&st, *id, *json)?,
        Command::Vm {
            command: VmCommand::Unregister { id },
        } => st.unregister_vm(*id).map_err(e)?,
        Command::Image {
            command: ImageCommand::Show { id, json },
        } => image_show(&st, *id, *json)?,
        Command::Image {
            command:
                ImageCommand::Restore {
                    id,
                    to,
                    increment,
                    disk_id,
                },
        } => {
            let files = image_restore(&st, args, *id, *increment, *disk_id, to)?;
            for f in files {
                print(&f.display().to_string())?;
            }
        }
        Command::SchedUpdate {
            id,
            sched_id,
            file,
            time,
            repeat,
            days,
            end_type,
            end_value,
        } => {
            // A file's SCHED_ACTION gives the values the flags do not.
            let (mut time, mut repeat, mut days, mut end_type, mut end_value) = (
                time.clone(),
                repeat.clone(),
                days.clone(),
                *end_type,
                *end_value,
            );
            if let Some(f) = file {
                use backstop_protocol::template::{Template, Value, vector_get};
                let t = Template::parse(&read(f)?)
                    .map_err(|x| format!("{}: template: {x}", f.display()))?;
                let pairs = t
                    .attributes
                    .iter()
                    .find_map(|a| match &a.value {
                        Value::Vector(p) if a.name == "SCHED_ACTION" => Some(p.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| format!("{}: no SCHED_ACTION = [...] in it", f.display()))?;
                let get = |k: &str| vector_get(&pairs, k).map(str::to_string);
                let num = |k: &str| -> Result<Option<i64>, String> {
                    get(k)
                        .map(|v| {
                            v.trim().parse().map_err(|_| {
                                format!("{}: SCHED_ACTION: {k} is {v:?}, not a number", f.display())
                            })
                        })
                        .transpose()
                };
                time = time.or(get("TIME"));
                repeat = repeat.or(get("REPEAT"));
                days = days.or(get("DAYS"));
                end_type = end_type.or(num("END_TYPE")?);
                end_value = end_value.or(num("END_VALUE")?);
            }
            let (time, repeat, days, end_type, end_value) =
                (&time, &repeat, &days, &end_type, &end_value);
            let (_, old, _) = st
                .sched_actions(*id)
                .map_err(e)?
                .into_iter()
                .find(|s| s.0 == *sched_id)
                .ok_or_else(|| format!("backup job {id} has no scheduled action {sched_id}"))?;
            let (old_type, old_value) = old.end.codes();
            let old_repeat = old.repeat.code();
            let old_days: Vec<String> = old.days.iter().map(u32::to_string).collect();
            let time = match time {
                Some(t) => parse_time(t)?,
                None => old.time,
            };
            let repeat = match repeat {
                Some(r) => parse_repeat(r)?,
                None => old_repeat,
            };
            let mut sa = crate::schedule::SchedAction::new(
                time,
                repeat,
                days.as_deref().unwrap_or(&old_days.join(",")),
                end_type.unwrap_or(old_type),
                end_value.or(old_value),
            )
            .map_err(|x| x.to_string())?;
            // A new time starts afresh; otherwise when it last ran stays.
            if sa.time == old.time {
                sa.done = old.done;
            }
            st.update_sched_action(*sched_id, &sa, None).map_err(e)?;
        }
        Command::Retry { id } => {
            let mut moved = 0;
            for r in st.job_vms(*id).map_err(e)? {
                if r.state == Some(VmState::Error)
                    && st
                        .move_vm(
                            *id,
                            r.vm_id,
                            Some(VmState::Error),
                            VmState::Outdated,
                            None,
                            jiff::Timestamp::now().as_millisecond(),
                        )
                        .map_err(e)?
                {
                    moved += 1;
                }
            }
            print(&format!("backup job {id}: {moved} VMs back to OUTDATED"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--time`: an epoch, or a local date and time.
fn parse_time(time: &str) -> Result<i64, String> {
    if let Ok(t) = time.parse::<i64>() {
        return Ok(t);
    }
    time.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::system()).ok())
        .map(|z| z.timestamp().as_second())
        .ok_or_else(|| format!("--time {time:?} is neither an epoch nor a local date and time"))
}

/// `--repeat`: -1..3 or its name.
fn parse_repeat(repeat: &str) -> Result<i64, String> {
    match repeat {
        "weekly" => Ok(0),
        "monthly" => Ok(1),
        "yearly" => Ok(2),
        "hourly" => Ok(3),
        "none" => Ok(-1),
        n => n
            .parse()
            .map_err(|_| format!("--repeat {n:?}: use -1..3 or weekly, monthly, yearly, hourly")),
    }
}

/// A datastore of the state as the actions see it.
fn datastore_of(
    st: &State,
    args: &Args,
    id: u64,
) -> Result<(String, String, backstop_protocol::message::Datastore), String> {
    let (_, name, text) = st
        .datastores()
        .map_err(|x| x.to_string())?
        .into_iter()
        .find(|d| d.0 == id)
        .ok_or_else(|| format!("there is no datastore {id}"))?;
    let (_, ds) = model::datastore(id, &text, &args.datastore_location)
        .map_err(|x| format!("datastore {id}: {x}"))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| format!("datastore {id}: {x}"))?;
    let parsed = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|x| format!("datastore {id}: {x}"))?;
    Ok((name, text, parsed))
}

fn datastore_show(st: &State, args: &Args, id: u64, json: bool) -> Result<(), String> {
    use backstop_protocol::template::{Template, Value};
    let (name, text, ds) = datastore_of(st, args, id)?;
    let template = Template::parse(&text)
        .map_err(|x| format!("datastore {id}: {x}"))?
        .redacted();
    let jobs: Vec<u64> = st
        .jobs()
        .map_err(|x| x.to_string())?
        .into_iter()
        .filter(|(_, _, _, t)| JobTemplate::parse(t).is_ok_and(|j| j.datastore_id == id))
        .map(|j| j.0)
        .collect();
    let images: Vec<u64> = st
        .all_images()
        .map_err(|x| x.to_string())?
        .into_iter()
        .filter(|i| i.datastore_id == id)
        .map(|i| i.id)
        .collect();
    if json {
        let attrs: serde_json::Map<String, serde_json::Value> = template
            .attributes
            .iter()
            .filter_map(|a| match &a.value {
                Value::Single(v) => Some((a.name.clone(), serde_json::json!(v))),
                Value::Vector(_) => None,
            })
            .collect();
        return print(
            &serde_json::json!({
                "id": id, "name": name, "ds_mad": ds.ds_mad, "base_path": ds.base_path,
                "jobs": jobs, "images": images, "template": attrs,
            })
            .to_string(),
        );
    }
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    print(&format!(
        "DATASTORE {id} INFORMATION\nID        : {id}\nNAME      : {name}\nDS_MAD    : {}\n\
         BASE_PATH : {}\nJOBS      : {}\nIMAGES    : {}\n\nDATASTORE TEMPLATE\n{}",
        ds.ds_mad,
        ds.base_path,
        list(&jobs),
        list(&images),
        template.to_string().trim_end()
    ))
}

fn vm_show(st: &State, id: u64, json: bool) -> Result<(), String> {
    let (_, name, host, doc) = st
        .vms()
        .map_err(|x| x.to_string())?
        .into_iter()
        .find(|v| v.0 == id)
        .ok_or_else(|| format!("there is no registered VM {id}"))?;
    let root = backstop_protocol::xml::Element::parse(&doc).map_err(|x| format!("VM {id}: {x}"))?;
    let vm =
        backstop_protocol::message::Vm::from_xml(&root).map_err(|x| format!("VM {id}: {x}"))?;
    let mut job = None;
    for (jid, jname, _, _) in st.jobs().map_err(|x| x.to_string())? {
        if let Some(r) = st
            .job_vms(jid)
            .map_err(|x| x.to_string())?
            .into_iter()
            .find(|r| r.vm_id == id)
        {
            job = Some((jid, jname, r));
            break;
        }
    }
    let images: Vec<_> = st
        .all_images()
        .map_err(|x| x.to_string())?
        .into_iter()
        .filter(|i| i.vm_id == id)
        .collect();
    let disks: Vec<_> = vm
        .disks
        .iter()
        .map(|d| (d.disk_id, d.format.clone(), d.size_mb, d.source.clone()))
        .collect();
    if json {
        return print(
            &serde_json::json!({
                "id": id, "name": name, "host": host,
                "disks": disks.iter().map(|(i, f, s, src)| serde_json::json!({
                    "id": i, "format": f, "size_mb": s, "source": src,
                })).collect::<Vec<_>>(),
                "job": job.as_ref().map(|(j, n, r)| serde_json::json!({
                    "id": j, "name": n, "state": r.state.map(VmState::as_str), "reason": r.reason,
                })),
                "images": images.iter().map(|i| i.id).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    let mut out = format!(
        "VIRTUAL MACHINE {id} INFORMATION\nID    : {id}\nNAME  : {name}\nHOST  : {}\n",
        host.as_deref().unwrap_or("-")
    );
    match &job {
        Some((j, n, r)) => out.push_str(&format!(
            "JOB   : {j} ({n}), {}{}\n",
            r.state.map_or("not in a run", VmState::as_str),
            r.reason
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        )),
        None => out.push_str("JOB   : -\n"),
    }
    out.push_str(&format!(
        "\nDISKS\n{:>3} {:<7} {:>9} SOURCE\n",
        "ID", "FORMAT", "SIZE_MB"
    ));
    for (i, f, s, src) in &disks {
        out.push_str(&format!(
            "{i:>3} {:<7} {:>9} {}\n",
            f.as_deref().unwrap_or("-"),
            s.map_or("-".into(), |n| n.to_string()),
            src.as_deref().unwrap_or("-")
        ));
    }
    let ids: Vec<String> = images.iter().map(|i| i.id.to_string()).collect();
    out.push_str(&format!("\nBACKUP IMAGES : {}", ids.join(",")));
    print(&out)
}

fn image_show(st: &State, id: u64, json: bool) -> Result<(), String> {
    let img = st.image(id).map_err(|x| x.to_string())?;
    if json {
        return print(
            &serde_json::json!({
                "id": img.id, "vm": img.vm_id, "job": img.job_id, "datastore": img.datastore_id,
                "increments": img.increments.iter().map(|n| serde_json::json!({
                    "id": n.id, "type": n.kind, "source": n.source, "size_mb": n.size_mb,
                    "date": n.created_at,
                })).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    let mut out = format!(
        "BACKUP IMAGE {id} INFORMATION\nID        : {id}\nVM        : {}\nJOB       : {}\n\
         DATASTORE : {}\n\nBACKUP INCREMENTS\n{:>3} {:<9} {:>8} {:<20} SOURCE\n",
        img.vm_id,
        img.job_id.map_or("-".into(), |j| j.to_string()),
        img.datastore_id,
        "ID",
        "TYPE",
        "SIZE_MB",
        "DATE"
    );
    for n in &img.increments {
        let date = jiff::Timestamp::from_second(n.created_at)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| n.created_at.to_string());
        out.push_str(&format!(
            "{:>3} {:<9} {:>8} {date:<20} {}\n",
            n.id, n.kind, n.size_mb, n.source
        ));
    }
    print(out.trim_end())
}

fn image_restore(
    st: &State,
    args: &Args,
    id: u64,
    increment: Option<u64>,
    disk_id: Option<u32>,
    to: &std::path::Path,
) -> Result<Vec<PathBuf>, String> {
    let doc = crate::runner::image_document(st, id).map_err(|x| x.to_string())?;
    let root = backstop_protocol::xml::Element::parse(&doc).map_err(|x| x.to_string())?;
    let image = backstop_protocol::message::Image::from_xml(&root)
        .map_err(|x| format!("image {id}: {x}"))?;
    let ds_id = st.image(id).map_err(|x| x.to_string())?.datastore_id;
    let (_, _, ds) = datastore_of(st, args, ds_id)?;
    let cfg =
        backstop_datastore::config::DriverConfig::load(&args.remotes).map_err(|x| x.to_string())?;
    backstop_datastore::backup_image::to_directory(&image, &ds, increment, disk_id, to, &cfg)
        .map_err(|x| format!("image {id}: {x}"))
}

/// An epoch as a local date and time (`2026-11-22 03:00`), as onebackupjob shows times.
fn local_time(epoch: i64) -> String {
    jiff::Timestamp::from_second(epoch)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|_| epoch.to_string())
}
