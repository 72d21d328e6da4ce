//! Running one action: argv and stdin decoded into a typed request, the action run, the answer
//! written under oned's output discipline.

use backstop_datastore::actions::{
    backup, backup_cancel, downloader, increment_flatten, ls, monitor, restore, rm, stat,
};
use backstop_datastore::config::DriverConfig;
use backstop_protocol::action::{DatastoreAction, Invocation, TmAction};
use backstop_protocol::args::{
    ArgsError, BackupArgs, CancelArgs, DataSource, DatastoreArgs, LsArgs, TmRestoreArgs,
};
use backstop_protocol::input::{self, Encoding, InputError};
use backstop_protocol::message::{
    self, BackupRequest, FlattenRequest, LsRequest, MessageError, MonitorRequest, RestoreRequest,
    RmRequest, StatRequest, Vm,
};
use backstop_protocol::output::{self, Answer};
use backstop_protocol::url::{BackupUrl, UrlError};
use serde::Serialize;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// oned's largest messages (a VM with many disks and a long history) are well under a MiB.
const MAX_STDIN: u64 = 64 * 1024 * 1024;

static CURRENT_ACTION: Mutex<String> = Mutex::new(String::new());

/// The action being run, for the panic hook's error line.
pub fn current_action() -> String {
    let name = CURRENT_ACTION.lock().map(|g| g.clone()).unwrap_or_default();
    if name.is_empty() {
        "backstop".into()
    } else {
        name
    }
}

fn set_current_action(name: &str) {
    if let Ok(mut g) = CURRENT_ACTION.lock() {
        *g = name.to_string();
    }
}

/// Everything that makes an action fail. Its Display is the one error line (after `<action>: `).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Args(#[from] ArgsError),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{0}")]
    Message(#[from] MessageError),
    #[error("{0}")]
    Url(#[from] UrlError),
    #[error("{0}")]
    Datastore(#[from] backstop_datastore::Error),
    #[error("{0}")]
    Tm(#[from] backstop_tm::Error),
    #[error("{0}")]
    Protocol(#[from] backstop_protocol::Error),
    #[error("Operation not supported")]
    Unsupported,
    #[error("not implemented in this version of backstop")]
    NotImplemented,
    #[error("{0}")]
    Other(String),
}

pub fn utf8_args(args: &[OsString]) -> Result<Vec<String>, DriverError> {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| DriverError::Other(format!("argument {} is not UTF-8", i + 1)))
        })
        .collect()
}

pub fn fail(action: &str, error: &DriverError) -> ExitCode {
    let _ = output::write_failure(&mut std::io::stderr().lock(), action, &error.to_string());
    ExitCode::FAILURE
}

/// The datastore driver's check of a backup datastore's attributes, for prebackup
/// ([`backstop_tm::fe::CheckDatastore`]).
fn check_backup_datastore(
    ds: &backstop_protocol::message::Datastore,
) -> Result<(), backstop_tm::Error> {
    backstop_datastore::settings::Settings::of(ds)
        .map(|_| ())
        .map_err(|e| backstop_tm::Error::new(backstop_tm::ErrorKind::Config, e.to_string()))
}

/// Runs the action a remotes path names.
pub fn run_path(path: &Path, args: &[String]) -> ExitCode {
    let path = &backstop_protocol::action::lexical(path);
    let invocation = match Invocation::from_path(path) {
        Ok(i) => i,
        Err(e) => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "backstop".into());
            return fail(&name, &DriverError::Other(e.to_string()));
        }
    };
    let name = invocation.name();
    set_current_action(&name);
    let ctx = Context {
        remotes: remotes_root(path, &invocation),
        invoked: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        cancel: cancel_on_sigterm(),
    };
    let result =
        decode(&invocation, args, &mut std::io::stdin().lock()).and_then(|r| execute(r, &ctx));
    match result {
        Ok(answer) => match output::write_answer(&mut std::io::stdout().lock(), &answer) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(
                &name,
                &DriverError::Other(format!("cannot write the answer: {e}")),
            ),
        },
        Err(e) => fail(&name, &e),
    }
}

/// What an action knows besides its request.
pub struct Context {
    /// The remotes tree the action was run from (`/var/lib/one/remotes`).
    pub remotes: PathBuf,
    /// The action's own path, absolute (the downloader names itself in `command=`).
    pub invoked: PathBuf,
    /// Set by SIGTERM (oned's cancel, one_vmm_exec's timeout): long actions stop cleanly.
    pub cancel: Arc<AtomicBool>,
}

impl Context {
    fn config(&self) -> Result<DriverConfig, DriverError> {
        Ok(DriverConfig::load(&self.remotes)?)
    }
}

/// A flag SIGTERM sets (instead of killing the process).
pub fn cancel_on_sigterm() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone());
    flag
}

/// `<remotes>` from `<remotes>/datastore/<mad>/<action>`, `<remotes>/tm/<tm>/<action>` or
/// `<remotes>/datastore/<scheme>_downloader`.
fn remotes_root(path: &Path, invocation: &Invocation) -> PathBuf {
    let up = match invocation {
        Invocation::Downloader { .. } => 2,
        _ => 3,
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute
        .ancestors()
        .nth(up)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/var/lib/one/remotes"))
}

/// A decoded request: everything an action needs, typed.
#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Request {
    Monitor {
        mad: String,
        request: MonitorRequest,
    },
    Rm {
        mad: String,
        request: RmRequest,
    },
    Stat {
        mad: String,
        request: StatRequest,
    },
    Restore {
        mad: String,
        request: RestoreRequest,
    },
    IncrementFlatten {
        mad: String,
        request: FlattenRequest,
    },
    Backup {
        mad: String,
        args: BackupArgs,
        request: BackupRequest,
        /// stdin as received, forwarded to the host step (it holds the password: never printed).
        #[serde(skip)]
        raw: Vec<u8>,
    },
    BackupCancel {
        mad: String,
        args: CancelArgs,
        vm: Vm,
    },
    Ls {
        mad: String,
        args: LsArgs,
        request: LsRequest,
    },
    Unsupported {
        mad: String,
        name: String,
    },
    TmBackupStep {
        tm_mad: String,
        name: String,
        args: BackupArgs,
        vm: Vm,
        #[serde(skip)]
        raw: Vec<u8>,
    },
    TmRestore {
        tm_mad: String,
        args: TmRestoreArgs,
        vm: Option<Vm>,
    },
    /// A backup step backstop leaves to the stock script it replaced
    /// ([`backstop_tm::hand_over`]): run with this argv and stdin, byte for byte.
    HandOver {
        tm_mad: String,
        name: String,
        args: Vec<String>,
        #[serde(skip)]
        raw: Vec<u8>,
        reason: String,
    },
    /// `<scheme>_downloader <url>` prints command=/clean_command=; with `--stream` first it is
    /// that command and writes the image to stdout.
    Downloader {
        scheme: String,
        url: BackupUrl,
        stream: bool,
    },
}

fn read_all(stdin: &mut impl Read) -> Result<Vec<u8>, DriverError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| DriverError::Other(format!("cannot read stdin: {e}")))?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(DriverError::Other(format!(
            "stdin is larger than {} MiB",
            MAX_STDIN / 1024 / 1024
        )));
    }
    Ok(buf)
}

/// Decodes argv and stdin for an invocation. Reads stdin only when the action takes it.
pub fn decode(
    invocation: &Invocation,
    args: &[String],
    stdin: &mut impl Read,
) -> Result<Request, DriverError> {
    match invocation {
        Invocation::Datastore { mad, action } => {
            let mad = mad.clone();
            match action {
                DatastoreAction::Unsupported(u) => Ok(Request::Unsupported {
                    mad,
                    name: u.name().to_string(),
                }),
                DatastoreAction::Backup => {
                    let args = BackupArgs::parse(args)?;
                    let raw = read_all(stdin)?;
                    let root = input::decode(&raw, Encoding::RawXml)?;
                    let request = BackupRequest::from_xml(&root)?;
                    Ok(Request::Backup {
                        mad,
                        args,
                        request,
                        raw,
                    })
                }
                DatastoreAction::BackupCancel => {
                    let args = CancelArgs::parse(args)?;
                    let roots = input::decode_siblings(&read_all(stdin)?, Encoding::RawXml)?;
                    let vm = message::vm_from_siblings(&roots)?;
                    Ok(Request::BackupCancel { mad, args, vm })
                }
                DatastoreAction::Ls => {
                    let args = LsArgs::parse(args)?;
                    let root = input::decode(&read_all(stdin)?, Encoding::RawXml)?;
                    let request = LsRequest::from_xml(&root)?;
                    Ok(Request::Ls { mad, args, request })
                }
                DatastoreAction::Monitor
                | DatastoreAction::Rm
                | DatastoreAction::Stat
                | DatastoreAction::Restore
                | DatastoreAction::IncrementFlatten => {
                    let a = DatastoreArgs::parse(args)?;
                    let raw = match a.data {
                        DataSource::Stdin => read_all(stdin)?,
                        DataSource::Argument(data) => data.into_bytes(),
                    };
                    let root = input::decode(&raw, Encoding::Base64)?;
                    Ok(match action {
                        DatastoreAction::Monitor => Request::Monitor {
                            mad,
                            request: MonitorRequest::from_xml(&root)?,
                        },
                        DatastoreAction::Rm => Request::Rm {
                            mad,
                            request: RmRequest::from_xml(&root)?,
                        },
                        DatastoreAction::Stat => Request::Stat {
                            mad,
                            request: StatRequest::from_xml(&root)?,
                        },
                        DatastoreAction::Restore => Request::Restore {
                            mad,
                            request: RestoreRequest::from_xml(&root)?,
                        },
                        _ => Request::IncrementFlatten {
                            mad,
                            request: FlattenRequest::from_xml(&root)?,
                        },
                    })
                }
            }
        }
        Invocation::Tm { tm_mad, action } => {
            let tm_mad = tm_mad.clone();
            if *action == TmAction::Restore {
                let args = TmRestoreArgs::parse(args)?;
                // oned's one_tm gives restore no document; accept one if a caller pipes it.
                return Ok(Request::TmRestore {
                    tm_mad,
                    args,
                    vm: None,
                });
            }
            let argv = args.to_vec();
            let args = BackupArgs::parse(args)?;
            let raw = read_all(stdin)?;
            let roots = input::decode_siblings(&raw, Encoding::RawXml)?;
            let vm = message::vm_from_siblings(&roots)?;
            if let Some(reason) = backstop_tm::hand_over::reason(&vm) {
                return Ok(Request::HandOver {
                    tm_mad,
                    name: action.name().to_string(),
                    args: argv,
                    raw,
                    reason,
                });
            }
            Ok(Request::TmBackupStep {
                tm_mad,
                name: action.name().to_string(),
                args,
                vm,
                raw,
            })
        }
        Invocation::Downloader { scheme } => match args {
            [url] => Ok(Request::Downloader {
                scheme: scheme.clone(),
                url: BackupUrl::parse(url)?,
                stream: false,
            }),
            [flag, url] if flag == "--stream" => Ok(Request::Downloader {
                scheme: scheme.clone(),
                url: BackupUrl::parse(url)?,
                stream: true,
            }),
            _ => Err(DriverError::Other(format!(
                "expected 1 argument (the backup URL), got {}",
                args.len()
            ))),
        },
    }
}

/// Runs a decoded request.
pub fn execute(request: Request, ctx: &Context) -> Result<Answer, DriverError> {
    match request {
        Request::Monitor { request, .. } => Ok(Answer::Lines(
            monitor::run(&request, &ctx.config()?)?.lines(),
        )),
        Request::Stat { request, .. } => Ok(Answer::Line(
            stat::run(&request, &ctx.config()?)?.to_string(),
        )),
        Request::Ls { args, request, .. } => {
            Ok(Answer::Line(ls::run(&args, &request, &ctx.config()?)?))
        }
        Request::Rm { request, .. } => {
            rm::run(&request, &ctx.config()?)?;
            Ok(Answer::Nothing)
        }
        Request::IncrementFlatten { request, .. } => {
            Ok(match increment_flatten::run(&request, &ctx.config()?)? {
                Some(line) => Answer::Line(line),
                None => Answer::Nothing,
            })
        }
        Request::BackupCancel { args, vm, .. } => {
            backup_cancel::run(&args, &vm, &ctx.config()?)?;
            Ok(Answer::Nothing)
        }
        Request::Unsupported { .. } => Err(DriverError::Unsupported),
        Request::Backup {
            args, request, raw, ..
        } => {
            let outcome = backup::run(&args, &request, &raw, &ctx.config()?, &ctx.cancel)?;
            Ok(Answer::Line(outcome.line()))
        }
        Request::Downloader {
            url, stream: false, ..
        } => Ok(Answer::Lines(downloader::plan(
            &url,
            &ctx.invoked,
            &ctx.config()?,
        )?)),
        Request::Downloader {
            url, stream: true, ..
        } => {
            downloader::stream(&url, &ctx.config()?, &mut std::io::stdout().lock())?;
            Ok(Answer::Nothing)
        }
        Request::Restore { request, .. } => {
            Ok(Answer::Line(restore::run(&request, &ctx.config()?)?))
        }
        Request::TmBackupStep {
            name,
            args,
            vm,
            raw,
            ..
        } if name == "prebackup" || name == "prebackup_live" => {
            let check = &check_backup_datastore;
            backstop_tm::fe::run(
                &name,
                (&args, &vm, &raw),
                &ctx.config()?,
                check,
                &ctx.cancel,
            )?;
            Ok(Answer::Nothing)
        }
        Request::TmBackupStep {
            name,
            args,
            vm,
            raw,
            ..
        } if name == "postbackup" || name == "postbackup_live" => {
            // As the stock script: problems are logged, the step succeeds.
            if let Err(e) = ctx.config().map_err(|e| e.to_string()).and_then(|cfg| {
                let check = &check_backup_datastore;
                backstop_tm::fe::run(&name, (&args, &vm, &raw), &cfg, check, &ctx.cancel)
                    .map_err(|e| e.to_string())
            }) {
                output::log(output::Level::Error, &e);
            }
            Ok(Answer::Nothing)
        }
        Request::TmRestore { args, .. } => {
            backstop_tm::restore::run(&args, &ctx.config()?)
                .map_err(|e| DriverError::Other(format!("Error restoring VM disks: {e}")))?;
            Ok(Answer::Nothing)
        }
        Request::HandOver {
            name,
            args,
            raw,
            reason,
            ..
        } => {
            // oned's cancel before the stock script could take it over.
            if ctx.cancel.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(DriverError::Other(format!(
                    "{name} was cancelled before the stock script ran"
                )));
            }
            Err(hand_over(&ctx.invoked, &name, &args, &raw, &reason))
        }
        // Decoded and validated above; the work itself is not written yet.
        Request::TmBackupStep { .. } => Err(DriverError::NotImplemented),
    }
}

/// Replaces this process with the stock script installed beside `invoked`
/// (`<action>.backstop-stock`), its argv `args` and its stdin `raw` as oned gave them to this
/// action, the environment as it is: the script's output, exit status and signals are then
/// the action's own. Returns only when it cannot be run.
fn hand_over(invoked: &Path, name: &str, args: &[String], raw: &[u8], reason: &str) -> DriverError {
    use std::io::{Seek, Write};
    use std::os::unix::process::CommandExt;
    let mut stock = invoked.as_os_str().to_os_string();
    stock.push(backstop_tm::hand_over::STOCK_SUFFIX);
    let stock = PathBuf::from(stock);
    if !stock.is_file() {
        return DriverError::Other(format!(
            "{reason}; but there is no stock {name} at {} (the install found none to keep, or is older than the hand-over: `install.sh --check` says which; installing again with --with-tm puts one there when OpenNebula's is in backstop/replaced/)",
            stock.display()
        ));
    }
    output::log(
        output::Level::Info,
        &format!("{reason}: running the stock {name}"),
    );
    // The stdin the action read, for the script to read again: an unnamed file, rewound.
    let stdin = rustix::fs::memfd_create("backstop-stdin", rustix::fs::MemfdFlags::CLOEXEC)
        .map(std::fs::File::from)
        .map_err(std::io::Error::from)
        .and_then(|mut f| {
            f.write_all(raw)?;
            f.rewind()?;
            Ok(f)
        });
    let stdin = match stdin {
        Ok(f) => f,
        Err(e) => {
            return DriverError::Other(format!(
                "cannot hand {name} to the stock script: cannot keep its stdin: {e}"
            ));
        }
    };
    let e = std::process::Command::new(&stock)
        .args(args)
        .stdin(stdin)
        .exec();
    DriverError::Other(format!(
        "cannot run the stock {name} at {}: {e}",
        stock.display()
    ))
}

/// What a stock restic datastore may use that backstop cannot serve yet (install refuses to
/// replace the stock driver while this is not empty). Nothing today: local, SFTP and S3
/// repositories (docs/s3.md), and the rbd-format backups of Ceph disks (docs/ceph.md).
pub fn unimplemented_datastore_actions() -> Vec<&'static str> {
    Vec::new()
}

pub fn unimplemented_tm_actions() -> Vec<&'static str> {
    backstop_protocol::action::TM_ACTIONS
        .iter()
        .map(|a| a.name())
        .filter(|n| {
            !matches!(
                *n,
                "prebackup" | "postbackup" | "prebackup_live" | "postbackup_live" | "restore"
            )
        })
        .collect()
}

/// Reaps the qemu-nbd exports that killed steps left; a record that failed a check is named
/// on stderr (one line each) and left alone.
fn reap_stale_exports(action: &str) {
    for line in backstop_image::nbd::reap_stale_exports().left {
        let _ = writeln!(std::io::stderr(), "{action}: warning: {line}");
    }
}

/// `backstop host-tm <prebackup|postbackup>`: the host step of the transfer manager's backup
/// actions (see backstop_tm::host). Prints nothing on stdout.
pub fn host_tm(action: &str, staging: &Path, direct: bool, args: &[String]) -> ExitCode {
    const NAME: &str = "host-tm";
    set_current_action(NAME);
    reap_stale_exports(NAME);
    let cancel = cancel_on_sigterm();
    let result = (|| -> Result<(), DriverError> {
        let args = BackupArgs::parse(args)?;
        let raw = backstop_datastore::remote::read_request(std::io::stdin(), &cancel)?;
        let roots = input::decode_siblings(&raw, Encoding::RawXml)?;
        let vm = message::vm_from_siblings(&roots)?;
        // vm.xml holds the VM document alone, written from the parsed element (a value of the
        // VM's may hold "</VM>"; the text is never cut at it).
        let vm_xml = roots
            .iter()
            .find(|r| r.name == "VM")
            .map(|vm| vm.to_xml().into_bytes())
            .unwrap_or_default();
        let step = backstop_tm::host::Step {
            args: &args,
            vm: &vm,
            vm_xml: &vm_xml,
            staging: staging.to_path_buf(),
            direct,
            cancel: &cancel,
        };
        match action {
            "prebackup" => {
                let s = backstop_tm::host::prebackup(&step)?;
                output::log(
                    output::Level::Info,
                    &format!(
                        "VM {}: increment {} prepared ({} bytes read, {} bytes staged)",
                        vm.id, s.increment, s.bytes_read, s.staged_bytes
                    ),
                );
                Ok(())
            }
            "postbackup" => {
                backstop_tm::host::postbackup(&step);
                Ok(())
            }
            "prebackup_live" => {
                let s = backstop_tm::live::prebackup_live(
                    &step,
                    &backstop_tm::live::Virsh::for_host(),
                )?;
                output::log(
                    output::Level::Info,
                    &format!(
                        "VM {}: increment {} of the running VM prepared ({} bytes read, {} bytes staged)",
                        vm.id, s.increment, s.bytes_read, s.staged_bytes
                    ),
                );
                Ok(())
            }
            "postbackup_live" => {
                backstop_tm::live::postbackup_live(&step, &backstop_tm::live::Virsh::for_host());
                Ok(())
            }
            other => Err(DriverError::Other(format!("no host step {other:?}"))),
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(NAME, &e),
    }
}

/// `backstop host-restore <disk|tpm> ...`: the host step of the in-place restore (see
/// backstop_tm::restore_host).
pub fn host_restore(step: &str, args: &[String]) -> ExitCode {
    const NAME: &str = "host-restore";
    set_current_action(NAME);
    match backstop_tm::restore_host::run(step, args) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return fail(NAME, &DriverError::Other("cannot write the answer".into()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(NAME, &DriverError::Tm(e)),
    }
}

/// `host-export`: the host step of a backup in pull mode (see
/// backstop_datastore::actions::backup::host_export). Its request is empty; it prints one
/// JSON line and serves until stdin closes or SIGTERM comes.
pub fn host_export(staging: &Path, args: &[String]) -> ExitCode {
    const NAME: &str = "host-export";
    set_current_action(NAME);
    reap_stale_exports(NAME);
    let stop = cancel_on_sigterm();
    let result = (|| -> Result<(), DriverError> {
        let args = BackupArgs::parse(args)?;
        let raw = backstop_datastore::remote::read_request(std::io::stdin(), &stop)?;
        if !raw.is_empty() {
            return Err(DriverError::Other(
                "host-export takes an empty request (pull mode sends the host nothing)".into(),
            ));
        }
        backup::host_export(&args, staging, &stop, &mut std::io::stdout().lock())?;
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(NAME, &e),
    }
}

/// `host-backup`: the datastore backup's host step. With `progress`, a line
/// `backstop-progress <done> <total> <read>` goes to stderr every second while it runs (the
/// front-end's backup action passes them on to the job runner and keeps them out of its own
/// stderr).
pub fn host_backup(
    staging: &Path,
    ssh_config: Option<PathBuf>,
    progress: bool,
    args: &[String],
) -> ExitCode {
    host_writer(
        "host-backup",
        progress,
        args,
        |args, request, _raw, cancel, counters| {
            let cfg = remote_step_config(ssh_config, String::new());
            Ok(backup::host_run(
                args, request, staging, &cfg, cancel, counters,
            )?)
        },
    )
}

/// `host-pull`: a backup proxy's side of a pull-mode backup (BACKUP_PROXY). The same request,
/// answer and progress lines as `host-backup`; the disks come from `host-export` on the host
/// the backup's arguments name, reached with `ssh_config`.
pub fn host_pull(
    staging: &Path,
    (ssh_config, scripts_remote_dir): (Option<PathBuf>, String),
    progress: bool,
    args: &[String],
) -> ExitCode {
    host_writer(
        "host-pull",
        progress,
        args,
        |args, request, raw, cancel, counters| {
            let cfg = remote_step_config(ssh_config, scripts_remote_dir);
            let host = backstop_datastore::remote::target_host(args, request.vm.as_ref());
            let staging = staging.to_string_lossy();
            Ok(backup::pull(
                args,
                (request, raw),
                (&cfg, &staging),
                cancel,
                &host,
                counters,
            )?)
        },
    )
}

/// The configuration of a step the front-end runs on another machine: only what it was given
/// on its command line.
fn remote_step_config(ssh_config: Option<PathBuf>, scripts_remote_dir: String) -> DriverConfig {
    DriverConfig {
        remotes: PathBuf::new(),
        scripts_remote_dir,
        ssh_config,
        backup_base_path: None,
        run_dir: PathBuf::new(),
        tm_delivery: Default::default(),
    }
}

/// A step on another machine that writes the repository (`host-backup`, `host-pull`): reads
/// the framed request (the rest of stdin is watched: its end cancels, as SIGTERM does),
/// reports progress lines on stderr with `progress`, and prints the outcome as one JSON line.
fn host_writer(
    name: &'static str,
    progress: bool,
    args: &[String],
    write: impl FnOnce(
        &BackupArgs,
        &BackupRequest,
        &[u8],
        &Arc<AtomicBool>,
        &Arc<backstop_datastore::repo::writer::Progress>,
    ) -> Result<backup::HostOutcome, DriverError>,
) -> ExitCode {
    set_current_action(name);
    reap_stale_exports(name);
    let cancel = cancel_on_sigterm();
    let result = (|| -> Result<String, DriverError> {
        let args = BackupArgs::parse(args)?;
        let raw = backstop_datastore::remote::read_request(std::io::stdin(), &cancel)?;
        let root = input::decode(&raw, Encoding::RawXml)?;
        let request = BackupRequest::from_xml(&root)?;
        let counters = Arc::new(backstop_datastore::repo::writer::Progress::default());
        let finished = Arc::new(AtomicBool::new(false));
        let reporter = progress.then(|| {
            let (counters, finished) = (counters.clone(), finished.clone());
            std::thread::spawn(move || {
                let mut last = None;
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    let now = counters.get();
                    if last != Some(now) && now.1 > 0 {
                        let (done, total, read) = now;
                        let _ = writeln!(
                            std::io::stderr(),
                            "{} {done} {total} {read}",
                            backstop_datastore::remote::PROGRESS_PREFIX
                        );
                        last = Some(now);
                        std::thread::sleep(std::time::Duration::from_millis(750));
                    }
                }
            })
        });
        let outcome = write(&args, &request, &raw, &cancel, &counters);
        finished.store(true, Ordering::SeqCst);
        if let Some(r) = reporter {
            let _ = r.join();
        }
        serde_json::to_string(&outcome?).map_err(|e| DriverError::Other(e.to_string()))
    })();
    match result {
        Ok(line) => {
            match output::write_answer(&mut std::io::stdout().lock(), &Answer::Line(line)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(
                    name,
                    &DriverError::Other(format!("cannot write the answer: {e}")),
                ),
            }
        }
        Err(e) => fail(name, &e),
    }
}
