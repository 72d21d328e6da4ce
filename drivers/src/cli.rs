//! The `backstop` command line.

use crate::{install, repo_cli, run};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "backstop",
    version,
    about = "OpenNebula backup drivers: restic-format repositories with fixed-chunk, changed-block disk images",
    long_about = "OpenNebula backup drivers: restic-format repositories with fixed-chunk, changed-block disk images.\n\n\
oned runs backstop through the files install.sh puts in its remotes tree \
(datastore/<mad>/<action>, tm/<tm>/<action>, datastore/<scheme>_downloader); each is a shim that \
calls `backstop action <its own path> <args>`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backup jobs: datastores, VMs and jobs in a state database, and running them.
    Backupjob(Box<crate::backupjob_cli::Args>),
    /// Remotes, the other site of a sync: `backstop backupjob remote ...` by a shorter name.
    #[command(disable_help_flag = true)]
    Remote {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Sync jobs: `backstop backupjob sync-job ...` by a shorter name.
    #[command(disable_help_flag = true)]
    SyncJob {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Verify jobs: `backstop backupjob verify-job ...` by a shorter name.
    #[command(disable_help_flag = true)]
    VerifyJob {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A dashboard, a JSON API and Prometheus metrics over the job runner's state, read-only.
    /// Loopback addresses only, unless BACKSTOP_API_TOKEN and BACKSTOP_WEB_PASSWORD_HASH are
    /// set (docs/web.md).
    Serve {
        /// Where to listen.
        #[arg(long, env = "BACKSTOP_LISTEN", default_value = "127.0.0.1:8421")]
        listen: std::net::SocketAddr,
        /// The state database (default: $BACKSTOP_STATE, else <data dir>/backstop/state.db).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The OpenNebula remotes tree (for the actions, which run the job runner).
        #[arg(long, default_value = "/var/lib/one/remotes")]
        remotes: PathBuf,
        /// oned's DATASTORE_LOCATION (for the actions).
        #[arg(long, default_value = "/var/lib/one//datastores")]
        datastore_location: String,
        /// Read a password on stdin, print its argon2 hash for BACKSTOP_WEB_PASSWORD_HASH, and
        /// exit.
        #[arg(long)]
        hash_password: bool,
    },
    /// Run the driver action a remotes path names, with oned's arguments (what the shims call).
    Action {
        /// e.g. /var/lib/one/remotes/datastore/backstop/monitor
        path: PathBuf,
        /// The action's own arguments, passed through unchanged.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Decode an action's argv and stdin as the action would and print the typed request as
    /// JSON (secrets hidden); nothing is run. For checking what oned sends.
    Decode {
        /// e.g. datastore/backstop/monitor or tm/ssh/prebackup
        path: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install into (or uninstall from) an OpenNebula remotes tree. install.sh calls this.
    Install(install::Options),
    /// Work with a repository directly: init, backup, snapshots, dump.
    Repo(Box<repo_cli::Args>),
    /// The host side of the datastore `backup` action: the front-end runs it over ssh on the
    /// hypervisor (or bridge) and sends the action's XML on stdin.
    #[command(hide = true)]
    HostBackup {
        /// The staging directory prebackup filled.
        #[arg(long)]
        staging: PathBuf,
        /// OpenNebula client configuration for the SFTP connection.
        #[arg(long)]
        ssh_config: Option<PathBuf>,
        /// Report progress lines on stderr every second.
        #[arg(long)]
        progress: bool,
        /// The backup action's six arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The host step of the transfer manager's prebackup or postbackup; the front-end runs it
    /// on the hypervisor and sends the VM document on stdin.
    #[command(hide = true)]
    HostTm {
        /// prebackup or postbackup.
        action: String,
        /// The staging directory.
        #[arg(long)]
        staging: PathBuf,
        /// direct (no disk copies; backstop's datastore reads the disks) or staging.
        #[arg(long, default_value = "staging")]
        delivery: String,
        /// The action's six arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The host step of the transfer manager's in-place restore: checks a downloaded disk and
    /// makes it what the disk is declared to be (`disk <download> <raw|qcow2>`, prints its
    /// virtual size), or unpacks the TPM archive (`tpm <download> <vm_dir>`).
    #[command(hide = true)]
    HostRestore {
        /// disk or tpm.
        step: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn serve(
    listen: std::net::SocketAddr,
    state: Option<PathBuf>,
    (remotes, datastore_location): (PathBuf, String),
    hash_password: bool,
) -> ExitCode {
    let fail = |e: String| {
        eprintln!("backstop serve: {e}");
        ExitCode::FAILURE
    };
    if hash_password {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            return fail(format!("cannot read the password: {e}"));
        }
        let password = line.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return fail("the password on stdin is empty".into());
        }
        return match backstop_web::auth::hash_password(password) {
            Ok(h) => {
                let _ = writeln!(std::io::stdout(), "{h}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    }
    let Some(state) = state.or_else(backstop_backupjob::state::default_path) else {
        return fail("no state database: give --state or set BACKSTOP_STATE or HOME".into());
    };
    crate::install::warn_if_overwritten(&remotes, "backstop serve");
    let credentials = match backstop_web::auth::Credentials::from_env() {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    match backstop_web::serve(backstop_web::Options {
        listen,
        state,
        credentials,
        remotes,
        datastore_location,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

/// `backstop <group> ...` as `backstop backupjob <group> ...`.
fn backupjob_group(group: &str, args: Vec<OsString>) -> ExitCode {
    let mut all: Vec<OsString> = vec!["backupjob".into(), group.into()];
    all.extend(args);
    match <crate::backupjob_cli::Args as clap::Parser>::try_parse_from(all) {
        Ok(args) => crate::backupjob_cli::main(&args),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Action { path, args } => run::run_path(&path, &args),
        Command::Decode { path, args } => decode(&path, &args),
        Command::Install(options) => install::main(&options),
        Command::Backupjob(args) => crate::backupjob_cli::main(&args),
        Command::Remote { args } => backupjob_group("remote", args),
        Command::SyncJob { args } => backupjob_group("sync-job", args),
        Command::VerifyJob { args } => backupjob_group("verify-job", args),

        Command::Repo(args) => repo_cli::main(&args),
        Command::Serve {
            listen,
            state,
            remotes,
            datastore_location,
            hash_password,
        } => serve(listen, state, (remotes, datastore_location), hash_password),
        Command::HostBackup {
            staging,
            ssh_config,
            progress,
            args,
        } => run::host_backup(&staging, ssh_config, progress, &args),
        Command::HostTm {
            action,
            staging,
            delivery,
            args,
        } => run::host_tm(&action, &staging, delivery == "direct", &args),
        Command::HostRestore { step, args } => run::host_restore(&step, &args),
    }
}

fn decode(path: &std::path::Path, args: &[String]) -> ExitCode {
    let invocation = match backstop_protocol::action::Invocation::from_path(path) {
        Ok(i) => i,
        Err(e) => return run::fail("decode", &run::DriverError::Other(e.to_string())),
    };
    match run::decode(&invocation, args, &mut std::io::stdin().lock()) {
        Ok(request) => match serde_json::to_string_pretty(&request) {
            Ok(json) => {
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{json}").is_err() {
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => run::fail("decode", &run::DriverError::Other(e.to_string())),
        },
        Err(e) => run::fail(&invocation.name(), &e),
    }
}
