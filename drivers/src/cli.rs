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
    /// set; BACKSTOP_WEB_TENANTS=yes lets OpenNebula users log in, checked by oned at
    /// ONE_XMLRPC, and see their own VMs (docs/web.md).
    Serve {
        /// Where to listen.
        #[arg(long, env = "BACKSTOP_LISTEN", default_value = "127.0.0.1:8421")]
        listen: std::net::SocketAddr,
        /// The state database (default: $BACKSTOP_STATE, else <data dir>/backstop/state.db).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The OpenNebula remotes tree (for the actions, which run the job runner).
        #[arg(long, env = "BACKSTOP_REMOTES", default_value = "/var/lib/one/remotes")]
        remotes: PathBuf,
        /// oned's DATASTORE_LOCATION (for the actions).
        #[arg(
            long,
            env = "BACKSTOP_DATASTORE_LOCATION",
            default_value = "/var/lib/one//datastores"
        )]
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
    /// Work with a repository directly, as restic does (init, backup, snapshots, restore, dump,
    /// check, copy, verify, forget, prune, ...): every snapshot backstop writes is restic's.
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
    /// The host side of a backup in pull mode (BACKUP_PULL): serves the disks read-only over
    /// NBD until stdin closes; the front-end reads them and writes the repository.
    /// It is sent no secret.
    #[command(hide = true)]
    HostExport {
        /// The staging directory prebackup filled (direct mode).
        #[arg(long)]
        staging: PathBuf,
        /// The backup action's six arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The backup proxy's side of a backup in pull mode (BACKUP_PROXY): the front-end runs it
    /// over ssh on the proxy and sends the action's XML on stdin; it pulls the disks from the
    /// host's `host-export` and writes the repository.
    #[command(hide = true)]
    HostPull {
        /// The staging directory prebackup filled on the host.
        #[arg(long)]
        staging: PathBuf,
        /// OpenNebula client configuration for ssh to the host and the SFTP connection.
        #[arg(long)]
        ssh_config: Option<PathBuf>,
        /// Where backstop is installed on the hosts (SCRIPTS_REMOTE_DIR).
        #[arg(long)]
        scripts_remote_dir: String,
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
    // Usage lines name the program as it is called: `backstop backupjob sync-job ...`.
    let command = <crate::backupjob_cli::Args as clap::CommandFactory>::command()
        .bin_name("backstop backupjob");
    let parsed = command.try_get_matches_from(all).and_then(|mut m| {
        <crate::backupjob_cli::Args as clap::FromArgMatches>::from_arg_matches_mut(&mut m)
    });
    match parsed {
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
        Command::HostExport { staging, args } => run::host_export(&staging, &args),
        Command::HostPull {
            staging,
            ssh_config,
            scripts_remote_dir,
            progress,
            args,
        } => run::host_pull(&staging, (ssh_config, scripts_remote_dir), progress, &args),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command the operator sees, with its path of names (`backstop backupjob list`).
    fn commands(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), c.clone()));
        for sub in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            commands(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    fn all() -> Vec<(String, clap::Command)> {
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        commands(&root, "backstop".into(), &mut out);
        out
    }

    #[test]
    fn every_command_and_every_argument_is_described() {
        let mut missing = Vec::new();
        for (path, c) in all() {
            if c.get_about().is_none() {
                missing.push(format!("{path}: the command"));
            }
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = a.get_id().as_str();
                // clap's own, and the pass-through argv of the shortcut commands (their help is
                // the command they stand for).
                if id == "help"
                    || id == "version"
                    || (id == "args" && !c.is_disable_help_flag_set())
                {
                    continue;
                }
                if c.is_disable_help_flag_set() && id == "args" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "without a description:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn every_usage_names_the_program_as_it_is_called() {
        for (path, mut c) in all() {
            let usage = c.render_usage().to_string();
            assert!(
                usage.starts_with(&format!("Usage: {path}")),
                "{path}: {usage}"
            );
        }
        // The shortcuts (`backstop sync-job ...`) parse as `backstop backupjob sync-job ...`
        // and say so.
        let c = <crate::backupjob_cli::Args as CommandFactory>::command()
            .bin_name("backstop backupjob");
        let e = c
            .try_get_matches_from(["backupjob", "sync-job", "show"])
            .expect_err("no id");
        assert!(
            e.to_string()
                .contains("Usage: backstop backupjob sync-job show"),
            "{e}"
        );
    }

    #[test]
    fn global_options_are_taken_anywhere_on_the_line() {
        for line in [
            &["backstop", "repo", "snapshots", "-r", "/x"][..],
            &["backstop", "repo", "-r", "/x", "snapshots"],
            &["backstop", "backupjob", "list", "--json", "--state", "/s"],
            &["backstop", "backupjob", "--json", "--state", "/s", "list"],
            &[
                "backstop",
                "backupjob",
                "image",
                "show",
                "3",
                "--state",
                "/s",
                "--json",
            ],
        ] {
            Cli::try_parse_from(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
    }
}
