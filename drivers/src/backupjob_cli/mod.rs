//! `backstop backupjob ...`: the onebackupjob-style command line over the state database.
//!
//! Jobs: `create`, `list`, `show`, `update`, `delete`, `rename`, `lock`/`unlock`, `priority`,
//! `backup` (one run now, in the foreground, with a line per VM event), `cancel`, `retry`,
//! `sched-add|update|delete`; `datastore create|list|show|delete`; `vm
//! register|list|show|unregister`; `image list|show|restore`; `scheduler`. Every command that
//! reads takes `--json`. Exit codes: 0 done, 1 a failure (a VM in ERROR after `backup`, bad
//! input, a refused change), 2 bad usage.
//!
//! This is the binary's part: flags, files read, terminals and exit codes. What a command does
//! is an operation of the runner's library ([`backstop_backupjob::ops`]), which the web server
//! calls too; the text printed for a result is its `Display`, so both say the same.

mod datastores;
mod flags;
mod images;
mod jobs;
mod remotes;
mod retention;
mod schedules;
mod sync_jobs;
mod verify_jobs;
mod vms;

use backstop_backupjob::Error;
use backstop_backupjob::engine::Event;
pub(crate) use backstop_backupjob::error::input;
use backstop_backupjob::ops;
use backstop_backupjob::state::{self, State};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The heading the options every `backstop backupjob` command takes are listed under, after
/// the command's own.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "backupjob",
    about = "Backup jobs: define datastores, VMs and jobs, and run them."
)]
pub struct Args {
    /// The state database (default: $BACKSTOP_STATE, else <data dir>/backstop/state.db).
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    state: Option<PathBuf>,
    /// Print JSON instead of text (commands that show something; docs/json.md).
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,
    /// The OpenNebula remotes tree the actions are run from.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "BACKSTOP_REMOTES",
        default_value = "/var/lib/one/remotes",
        help_heading = GLOBAL
    )]
    remotes: PathBuf,
    /// oned's DATASTORE_LOCATION (VM directories are <location>/<system ds>/<vm id>).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "BACKSTOP_DATASTORE_LOCATION",
        default_value = "/var/lib/one//datastores",
        help_heading = GLOBAL
    )]
    datastore_location: String,
    /// Running backups at most, overall (0: unlimited).
    #[arg(long, global = true, value_name = "N", default_value_t = 5, help_heading = GLOBAL)]
    max_backups: u32,
    /// Running backups at most per host (0: unlimited).
    #[arg(long, global = true, value_name = "N", default_value_t = 2, help_heading = GLOBAL)]
    max_backups_host: u32,
    /// Seconds between progress log lines of a running backup when stdout is not a terminal
    /// (on a terminal, a live line is redrawn every second).
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value_t = 30,
        help_heading = GLOBAL
    )]
    progress_every: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Backup datastores.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// Remotes: the other site of a sync, written as a backup datastore's template.
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// Sync jobs: copies of repositories between a backup datastore and a remote.
    SyncJob {
        #[command(subcommand)]
        command: SyncJobCommand,
    },
    /// Verify jobs: the snapshots of a datastore read back, damage healed.
    VerifyJob {
        #[command(subcommand)]
        command: VerifyJobCommand,
    },
    /// VMs, registered from their `onevm show -x` document.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Create a job from a template file, from flags, or both (the flags win).
    Create(CreateArgs),
    /// List the jobs.
    List,
    /// Show a job and where each of its VMs stands.
    Show {
        /// The job's id.
        id: u64,
    },
    /// Run a job now, in the foreground.
    Backup {
        /// The job's id.
        id: u64,
    },
    /// Move the job's VMs in ERROR back to OUTDATED.
    Retry {
        /// The job's id.
        id: u64,
    },
    /// Stop a job's run: OUTDATED VMs are dropped from it, running backups are stopped with
    /// the datastore's backup_cancel and end in ERROR.
    Cancel {
        /// The job's id.
        id: u64,
    },
    /// Replace a job's template with a file's (or merge it in with --append). NAME, PRIORITY
    /// and SCHED_ACTION are not changed this way (rename, priority, sched-*).
    Update {
        /// The job's id.
        id: u64,
        /// The template file.
        file: PathBuf,
        /// Merge the file's attributes into the template instead of replacing it.
        #[arg(long)]
        append: bool,
    },
    /// Set a job's priority (0–99; higher runs first).
    Priority {
        /// The job's id.
        id: u64,
        /// 0–99; higher runs first.
        priority: u8,
    },
    /// Rename a job.
    Rename {
        /// The job's id.
        id: u64,
        /// The new name.
        name: String,
    },
    /// A locked job is not run.
    Lock {
        /// The job's id.
        id: u64,
    },
    /// Unlock a job: it is run again.
    Unlock {
        /// The job's id.
        id: u64,
    },
    /// Delete a job and its scheduled actions (its backup images stay).
    Delete {
        /// The job's id.
        id: u64,
    },
    /// Change a scheduled action of a job, from a file holding `SCHED_ACTION = [...]` or from
    /// flags; what is not given stays as it was.
    SchedUpdate(SchedUpdateArgs),
    /// Delete a scheduled action of a job.
    SchedDelete {
        /// The job's id.
        id: u64,
        /// The scheduled action's id (`show` lists them).
        sched_id: u64,
    },
    /// Backup images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Add a scheduled action to a job (SCHED_ACTION: TIME, REPEAT, DAYS, END_TYPE, END_VALUE).
    SchedAdd(SchedAddArgs),
    /// A job's retention plan per VM: which backup points its keep rules (KEEP_LAST,
    /// KEEP_HOURLY, KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY, KEEP_YEARLY) keep and why, and which
    /// go; protected images always stay. Read-only.
    Retention {
        /// The job's id.
        id: u64,
        /// Only this VM of the job.
        #[arg(long)]
        vm: Option<u64>,
        /// Carry the plan out (with --yes): `rm` for images that go whole, `increment_flatten`
        /// for chains that lose points.
        #[arg(long)]
        apply: bool,
        /// With --apply: do it without asking.
        #[arg(long)]
        yes: bool,
        /// With --apply: refuse a plan that removes more points than this (nothing is removed).
        #[arg(long, default_value_t = 10)]
        max_delete: usize,
    },
    /// Make one of OpenNebula's backup jobs a job of this runner (OpenNebula mode): its
    /// template, priority and scheduled actions; its datastore is imported when needed.
    Import {
        /// oned's backup job id.
        id: u64,
        /// Empty the oned job's BACKUP_VMS once the runner's job exists (oned refuses other
        /// backups of a VM its job holds; it starts their INCREMENT chains anew).
        #[arg(long)]
        take_over: bool,
        /// oned's XML-RPC endpoint (else ONE_XMLRPC, as for the one* commands).
        #[arg(long)]
        endpoint: Option<String>,
        /// A file holding user:password for oned (else ONE_AUTH, ~/.one/one_auth).
        #[arg(long)]
        auth: Option<PathBuf>,
    },
    /// Record in the state the backups already in a datastore's repositories (images,
    /// increments, VMs, jobs), so that a lost state is rebuilt from the repositories; what the
    /// state holds is left as it is.
    Discover {
        /// The backup datastore's id.
        datastore: u64,
    },
    /// Run the jobs whose scheduled actions are due (one pass, or --loop as a daemon that
    /// stops cleanly on SIGTERM).
    Scheduler {
        /// Keep running: a pass every --interval seconds until SIGTERM or SIGINT.
        #[arg(long = "loop")]
        forever: bool,
        /// Seconds between passes with --loop; without it (a pass from cron), the period cron
        /// runs it at, which the dashboard uses to tell a scheduler that is down.
        #[arg(long, default_value_t = 15)]
        interval: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DatastoreCommand {
    /// Create a backup datastore from a template file (NAME, DS_MAD, BASE_PATH, RESTIC_...).
    Create {
        /// The template file.
        file: PathBuf,
    },
    /// Every backup datastore: id, name, driver and where its repositories are.
    List,
    /// A datastore's template (secrets hidden) and the jobs and images that use it.
    Show {
        /// The datastore's id.
        id: u64,
    },
    /// Delete a datastore no job names and no backup image lives in (the repository stays).
    Delete {
        /// The datastore's id.
        id: u64,
    },
    /// Replace a datastore's template with a file's (or merge it in with --append), checked
    /// as at create. A new RESTIC_PASSWORD re-keys every repository under it: a key for the
    /// new password is added to each before the old one's is removed.
    Update {
        /// The datastore's id.
        id: u64,
        /// The template file.
        file: PathBuf,
        /// Merge the file's attributes into the template instead of replacing it.
        #[arg(long)]
        append: bool,
    },
    /// Give up a datastore's unfinished password change (one that has not switched its
    /// template yet): the keys it added for the new password are removed again.
    AbortRekey {
        /// The datastore's id.
        id: u64,
    },
    /// Give every repository of the datastore an escrow key sealed to its
    /// BACKSTOP_ESCROW_RECIPIENTS, unless it has one (docs/escrow.md). New repositories get
    /// theirs when a backup makes them, and `datastore update` giving new recipients runs this.
    Escrow {
        /// The datastore's id.
        id: u64,
    },
    /// Use OpenNebula's backup datastore ID (OpenNebula mode): jobs backing up into it take
    /// their VMs from oned at each run and back them up through oned. oned is found as
    /// OpenNebula's tools find it (ONE_XMLRPC, ONE_AUTH, ~/.one/one_auth) unless given here.
    Import {
        /// oned's id of the backup datastore (this runner records it under the same id).
        id: u64,
        /// oned's XML-RPC endpoint (http:// or https://), kept with the datastore.
        #[arg(long)]
        endpoint: Option<String>,
        /// A file holding user:password for oned, kept (as its path) with the datastore.
        #[arg(long)]
        auth: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RemoteCommand {
    /// Add a remote from a template file (NAME, DS_MAD, BASE_PATH or RESTIC_SFTP_SERVER, or
    /// RESTIC_BACKEND=S3 and RESTIC_S3_*, and its own RESTIC_PASSWORD).
    Create {
        /// The template file.
        file: PathBuf,
    },
    /// Every remote: id, name and where its repositories are.
    List,
    /// A remote: where its repositories are, and its template (secrets hidden).
    Show {
        /// The remote's id.
        id: u64,
    },
    /// Replace a remote's template.
    Update {
        /// The remote's id.
        id: u64,
        /// The template file.
        file: PathBuf,
    },
    /// Forget a remote (its repositories stay).
    Remove {
        /// The remote's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SyncJobCommand {
    /// Add a sync job from a template file and/or flags (NAME, DIRECTION, DATASTORE_ID,
    /// REMOTE_ID, VMS, BACKUP_JOBS, TAGS, TRANSFER_LAST, ...; docs/sync.md).
    Create(flags::SyncJobArgs),
    /// Every sync job: id, name, direction and its last run.
    List,
    /// A sync job's template and its last runs.
    Show {
        /// The sync job's id.
        id: u64,
    },
    /// Replace a sync job's template by a file's, and/or change attributes by flags (its run
    /// records stay).
    Update {
        /// The sync job's id.
        id: u64,
        #[command(flatten)]
        args: flags::SyncJobArgs,
    },
    /// Forget a sync job and its run records (what it copied stays).
    Remove {
        /// The sync job's id.
        id: u64,
    },
    /// Run a sync job now, in the foreground.
    Run {
        /// The sync job's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VerifyJobCommand {
    /// Add a verify job from a template file and/or flags (NAME, DATASTORE_ID, VMS,
    /// BACKUP_JOBS, OUTDATED_AFTER, IGNORE_VERIFIED, SHARES, HEAL, ...; docs/sync.md).
    Create(flags::VerifyJobArgs),
    /// Every verify job: id, name, datastore and its last run.
    List,
    /// A verify job's template and the verdict on each snapshot it read.
    Show {
        /// The verify job's id.
        id: u64,
    },
    /// Replace a verify job's template by a file's, and/or change attributes by flags (its
    /// verdicts stay).
    Update {
        /// The verify job's id.
        id: u64,
        #[command(flatten)]
        args: flags::VerifyJobArgs,
    },
    /// Forget a verify job (the verdicts stay).
    Remove {
        /// The verify job's id.
        id: u64,
    },
    /// Run a verify job now, in the foreground.
    Run {
        /// The verify job's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Every backup image with its increments.
    List,
    /// A backup image and its increments.
    Show {
        /// The backup image's id.
        id: u64,
    },
    /// Restore a backup image into a directory: disk.<id>.qcow2 per disk (standalone qcow2),
    /// vm.xml, and disk.tpm.0 when the VM had a TPM.
    Restore(RestoreArgs),
    /// Protect an image: no retention rule removes it (its points stay).
    Protect {
        /// The backup image's id.
        id: u64,
    },
    /// Unprotect an image: retention rules apply to it again.
    Unprotect {
        /// The backup image's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VmCommand {
    /// Register a VM from its XML document.
    Register {
        /// The VM's XML document (`onevm show -x ID > vm.xml`).
        file: PathBuf,
    },
    /// Every registered VM: id, name, host and its job.
    List,
    /// A VM: its host, disks, job and backup images.
    Show {
        /// The VM's id.
        id: u64,
    },
    /// Forget a VM that is in no job (its backup images stay).
    Unregister {
        /// The VM's id.
        id: u64,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// A template file (NAME, BACKUP_VMS, DATASTORE_ID, MODE, KEEP_*, ...); flags override it.
    pub(crate) file: Option<PathBuf>,
    /// NAME.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// BACKUP_VMS: VM ids, in backup order (1,2,3).
    #[arg(long)]
    pub(crate) vms: Option<String>,
    /// DATASTORE_ID.
    #[arg(long)]
    pub(crate) datastore: Option<u64>,
    /// MODE: FULL or INCREMENT.
    #[arg(long)]
    pub(crate) mode: Option<String>,
    /// KEEP_LAST.
    #[arg(long)]
    pub(crate) keep: Option<u32>,
    /// EXECUTION: SEQUENTIAL or PARALLEL.
    #[arg(long)]
    pub(crate) execution: Option<String>,
    /// PRIORITY (0–99).
    #[arg(long)]
    pub(crate) priority: Option<u8>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SchedUpdateArgs {
    /// The job's id.
    pub(crate) id: u64,
    /// The scheduled action's id (`show` lists them).
    pub(crate) sched_id: u64,
    /// A file holding `SCHED_ACTION = [ ... ]`; flags override it.
    pub(crate) file: Option<PathBuf>,
    /// TIME: a date and time (2026-11-22T03:00, local; or RFC 3339, or an epoch), or a
    /// calendar form that says when it repeats (mon..fri 02:30, daily, hourly, */6:00).
    #[arg(long)]
    pub(crate) time: Option<String>,
    /// REPEAT: none, weekly, monthly, yearly or hourly (or -1, 0, 1, 2, 3).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) repeat: Option<String>,
    /// DAYS: weekdays (0 = Sunday), days of the month or of the year, or every N hours.
    #[arg(long)]
    pub(crate) days: Option<String>,
    /// END_TYPE: -1 none, 0 never, 1 after END_VALUE runs, 2 until the epoch END_VALUE.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) end_type: Option<i64>,
    /// END_VALUE: a number of runs, or an epoch (see --end-type).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) end_value: Option<i64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SchedAddArgs {
    /// The job's id.
    pub(crate) id: u64,
    /// TIME: a date and time (2026-11-22T03:00, local; or RFC 3339, or an epoch), or a
    /// calendar form that says when it repeats (mon..fri 02:30, daily, hourly, */6:00), as
    /// sync and verify jobs' SCHEDULE.
    #[arg(long)]
    pub(crate) time: String,
    /// REPEAT, with a date and time: none, weekly, monthly, yearly or hourly (or -1, 0, 1,
    /// 2, 3).
    #[arg(long, default_value = "-1", allow_hyphen_values = true)]
    pub(crate) repeat: String,
    /// DAYS: weekdays (0 = Sunday), days of the month or of the year, or every N hours
    /// (hourly: 1 when not given).
    #[arg(long, default_value = "")]
    pub(crate) days: String,
    /// -1 none, 0 never, 1 after END_VALUE runs, 2 until the epoch END_VALUE.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) end_type: i64,
    /// END_VALUE: a number of runs, or an epoch (see --end-type).
    #[arg(long)]
    pub(crate) end_value: Option<i64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup image's id.
    pub(crate) id: u64,
    /// The directory to write (created if missing).
    #[arg(long)]
    pub(crate) to: PathBuf,
    /// The increment to restore (default: the latest).
    #[arg(long)]
    pub(crate) increment: Option<u64>,
    /// Only this disk.
    #[arg(long)]
    pub(crate) disk_id: Option<u32>,
}

fn read(path: &std::path::Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| input(format!("cannot read {}: {e}", path.display())))
}

/// A template's single-valued attributes as a JSON object (for `show --json`).
fn attributes_json(
    t: &backstop_protocol::template::Template,
) -> serde_json::Map<String, serde_json::Value> {
    use backstop_protocol::template::Value;
    t.attributes
        .iter()
        .filter_map(|a| match &a.value {
            Value::Single(v) => Some((a.name.clone(), serde_json::json!(v))),
            Value::Vector(_) => None,
        })
        .collect()
}

/// A stored job template as `show` prints it: secret values hidden, a webhook's URL cut to its
/// host, every other URL's password and query hidden ([`Template::redacted`]).
///
/// [`Template::redacted`]: backstop_protocol::template::Template::redacted
fn shown_template(text: &str) -> String {
    match backstop_protocol::template::Template::parse(text) {
        Ok(t) => t.redacted().to_string().trim_end().to_string(),
        // Stored templates were checked when written; this is only said, never the text.
        Err(e) => format!("# the stored template does not parse: {e}"),
    }
}

fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| input(format!("cannot write: {e}")))
}

pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "backupjob: {}", ops::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The installation the operations play oned for, from the global flags.
fn env(args: &Args) -> backstop_backupjob::runner::Env {
    backstop_backupjob::runner::Env {
        remotes: args.remotes.clone(),
        datastore_location: args.datastore_location.clone(),
    }
}

/// The limits of a backup run, from the global flags.
fn limits(args: &Args) -> backstop_backupjob::scheduler::Limits {
    backstop_backupjob::scheduler::Limits {
        max_backups: args.max_backups,
        max_backups_host: args.max_backups_host,
        ..backstop_backupjob::scheduler::Limits::default()
    }
}

/// A file the user named, read, and named in errors as the user wrote it.
fn file_text(path: &std::path::Path) -> Result<ops::definitions::FileText, Error> {
    Ok(ops::definitions::FileText {
        text: read(path)?,
        name: path.display().to_string(),
    })
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
        Event::Done { vm, line } | Event::Note { vm, line } => format!("VM {vm}: {line}"),
        Event::Settled { vm, line } => format!("VM {vm}: {line}"),
        Event::Failed { vm, reason } => format!("VM {vm}: ERROR: {reason}"),
        Event::Datastore { datastore, line } => format!("datastore {datastore}: {line}"),
    }
}

/// The global notification settings from the environment; none (and a line on stderr) when
/// they are wrong.
pub(crate) fn notify_settings() -> backstop_backupjob::notify::Settings {
    let (settings, warning) = ops::notify_settings();
    if let Some(w) = warning {
        eprintln!("backupjob: {w}");
    }
    settings
}

/// Progress of a sync run, whose progress lines come from another thread: on a terminal one
/// live line, redrawn; else a line every `every` (the first after `every`). The lines that end
/// a step are always printed.
pub(crate) struct Ticker {
    tty: bool,
    every: std::time::Duration,
    /// When a progress line was last logged; whether a live line is drawn.
    state: std::sync::Mutex<(std::time::Instant, bool)>,
}

impl Ticker {
    pub(crate) fn new(every: u64) -> Ticker {
        use std::io::IsTerminal;
        Ticker {
            tty: std::io::stdout().is_terminal(),
            every: std::time::Duration::from_secs(every.max(1)),
            state: std::sync::Mutex::new((std::time::Instant::now(), false)),
        }
    }

    pub(crate) fn progress(&self, line: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[K{line}");
            let _ = out.flush();
            st.1 = true;
        } else if st.0.elapsed() >= self.every {
            st.0 = std::time::Instant::now();
            let _ = writeln!(out, "{line}");
        }
    }

    pub(crate) fn line(&self, line: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut out = std::io::stdout().lock();
        if st.1 {
            let _ = write!(out, "\r\x1b[K");
            st.1 = false;
        }
        let _ = writeln!(out, "{line}");
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
            | Event::Note { vm, .. }
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
            Event::Datastore { .. } => {
                if self.drawn {
                    let _ = write!(out, "\r\x1b[K");
                    self.drawn = false;
                }
                let _ = writeln!(out, "{line}");
            }
        }
    }
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

/// When the scheduler daemon will next run a sync or verify job (epoch), if it runs it.
fn next_run(when: Option<&backstop_backupjob::calendar::When>, last: Option<i64>) -> Option<i64> {
    let now = jiff::Timestamp::now().as_second();
    when.and_then(|w| w.next(now, last, &jiff::tz::TimeZone::system()))
}

/// The state database the command line works on.
fn state_path(args: &Args) -> Result<PathBuf, Error> {
    match &args.state {
        Some(p) => Ok(p.clone()),
        None => state::default_path()
            .ok_or_else(|| input("no state database: give --state or set BACKSTOP_STATE or HOME")),
    }
}

fn run(args: &Args) -> Result<ExitCode, Error> {
    let path = state_path(args)?;
    let mut st = State::open(&path)?;
    let st = &mut st;
    match &args.command {
        Command::Datastore { command } => match command {
            DatastoreCommand::Create { file } => print(
                &ops::definitions::create_datastore(
                    st,
                    &args.datastore_location,
                    &file_text(file)?,
                )?
                .to_string(),
            )?,
            DatastoreCommand::List => datastores::list(st, &args.json)?,
            DatastoreCommand::Show { id } => datastores::show(st, args, *id, args.json)?,
            DatastoreCommand::Delete { id } => ops::definitions::delete_datastore(st, *id)?,
            DatastoreCommand::Update { id, file, append } => print(
                &ops::definitions::update_datastore(
                    &env(args),
                    st,
                    *id,
                    &file_text(file)?,
                    *append,
                )?
                .to_string(),
            )?,
            DatastoreCommand::Escrow { id } => {
                print(&backstop_backupjob::escrow::datastore(&env(args), st, *id)?.to_string())?
            }
            DatastoreCommand::AbortRekey { id } => {
                print(&ops::definitions::abort_rekey(&env(args), st, *id)?.to_string())?
            }
            DatastoreCommand::Import { id, endpoint, auth } => print(
                &ops::definitions::import_datastore(st, *id, endpoint.as_deref(), auth.as_deref())?
                    .to_string(),
            )?,
        },
        Command::Remote { command } => match command {
            RemoteCommand::Create { file } => print(
                &ops::definitions::create_remote(st, &args.datastore_location, &file_text(file)?)?
                    .to_string(),
            )?,
            RemoteCommand::List => remotes::list(st, args, args.json)?,
            RemoteCommand::Show { id } => remotes::show(st, args, *id, args.json)?,
            RemoteCommand::Update { id, file } => ops::definitions::update_remote(
                st,
                &args.datastore_location,
                *id,
                &file_text(file)?,
            )?,
            RemoteCommand::Remove { id } => st.delete_remote(*id)?,
        },
        Command::SyncJob { command } => match command {
            SyncJobCommand::Create(a) => sync_jobs::create(st, a)?,
            SyncJobCommand::List => sync_jobs::list(st, args.json)?,
            SyncJobCommand::Show { id } => sync_jobs::show(st, *id, args.json)?,
            SyncJobCommand::Update { id, args } => sync_jobs::update(st, *id, args)?,
            SyncJobCommand::Remove { id } => st.delete_sync_job(*id)?,
            SyncJobCommand::Run { id } => return sync_jobs::run(st, args, *id),
        },
        Command::VerifyJob { command } => match command {
            VerifyJobCommand::Create(a) => verify_jobs::create(st, a)?,
            VerifyJobCommand::List => verify_jobs::list(st, args.json)?,
            VerifyJobCommand::Show { id } => verify_jobs::show(st, *id, args.json)?,
            VerifyJobCommand::Update { id, args } => verify_jobs::update(st, *id, args)?,
            VerifyJobCommand::Remove { id } => st.delete_verify_job(*id)?,
            VerifyJobCommand::Run { id } => return verify_jobs::run(st, args, *id),
        },
        Command::Vm { command } => match command {
            VmCommand::Register { file } => {
                print(&ops::definitions::register_vm(st, &file_text(file)?)?.to_string())?
            }
            VmCommand::List => vms::list(st, &args.json)?,
            VmCommand::Show { id } => vms::show(st, *id, args.json)?,
            VmCommand::Unregister { id } => st.unregister_vm(*id)?,
        },
        Command::Image { command } => match command {
            ImageCommand::List => images::list(st, &args.json)?,
            ImageCommand::Show { id } => images::show(st, *id, args.json)?,
            ImageCommand::Restore(r) => images::restore_cmd(st, args, r)?,
            ImageCommand::Protect { id } => st.set_protected(*id, true)?,
            ImageCommand::Unprotect { id } => st.set_protected(*id, false)?,
        },
        Command::Retention {
            id,
            vm,
            apply,
            yes,
            max_delete,
        } => {
            if *apply {
                retention::apply(st, args, (*id, *vm), *yes, *max_delete)?
            } else {
                retention::show(st, *id, *vm, args.json)?
            }
        }
        Command::Create(c) => jobs::create(st, c)?,
        Command::List => jobs::list(st, &args.json)?,
        Command::Show { id } => jobs::show(st, id, &args.json)?,
        Command::Backup { id } => return jobs::backup(st, args, id),
        Command::Cancel { id } => print(
            &ops::backup::cancel(&env(args), st, &ops::backup::CancelOptions { job: *id })?
                .to_string(),
        )?,
        Command::Retry { id } => {
            print(&ops::backup::retry(st, &ops::backup::RetryOptions { job: *id })?.to_string())?
        }
        Command::Update { id, file, append } => jobs::update(st, id, file, append)?,
        Command::Priority { id, priority } => st.set_priority(*id, *priority)?,
        Command::Rename { id, name } => st.rename_job(*id, name)?,
        Command::Lock { id } => st.set_locked(*id, true)?,
        Command::Unlock { id } => st.set_locked(*id, false)?,
        Command::Delete { id } => st.delete_job(*id)?,
        Command::SchedAdd(a) => schedules::add(st, a)?,
        Command::SchedUpdate(u) => schedules::update(st, u)?,
        Command::SchedDelete { id, sched_id } => st.delete_sched_action(*id, *sched_id)?,
        Command::Import {
            id,
            take_over,
            endpoint,
            auth,
        } => {
            let client = backstop_protocol::oned::OnedClient::configured(
                endpoint.as_deref(),
                auth.as_deref(),
            )?;
            print(
                &backstop_backupjob::ops::import::import_job(
                    st,
                    &client,
                    *id,
                    *take_over,
                    (endpoint.as_deref(), auth.as_deref()),
                )?
                .to_string(),
            )?
        }
        Command::Discover { datastore } => {
            print(&ops::runs::discover(&env(args), st, *datastore)?.to_string())?
        }
        Command::Scheduler { forever, interval } => schedules::daemon(st, args, forever, interval)?,
    }
    Ok(ExitCode::SUCCESS)
}
