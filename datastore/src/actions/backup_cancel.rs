//! `backup_cancel`: stops the running `backup` of a VM (spec §3.5, §5.3).
//!
//! The backup action leaves `<RUN_DIR>/backup-<vm_id>.pid` (its PID and the deploy id) while it
//! runs. Cancel reads it, checks that the process is still that backup (its command line holds
//! the deploy id, so a reused PID is never signalled), sends SIGTERM and waits for it to end.
//! The backup then closes the host step's stdin; the host stops, writes no snapshot and the
//! backup exits 1. No backup running is not an error.

use crate::actions::backup::pid_file;
use crate::config::DriverConfig;
use crate::{Error, ErrorKind};
use backstop_protocol::args::CancelArgs;
use backstop_protocol::message::Vm;
use std::time::{Duration, Instant};

/// How long to wait for the backup to end after SIGTERM.
const WAIT: Duration = Duration::from_secs(150);

/// Returns whether a backup was running and was stopped.
pub fn run(args: &CancelArgs, vm: &Vm, cfg: &DriverConfig) -> Result<bool, Error> {
    let path = pid_file(cfg, vm.id);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    let mut words = text.split_whitespace();
    let pid: i32 = words
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::Input, format!("{} holds no PID", path.display())))?;
    if words.next() != Some(args.deploy_id.as_str()) {
        return Ok(false);
    }
    let is_that_backup = || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg == args.deploy_id.as_bytes())
            })
            .unwrap_or(false)
    };
    if !is_that_backup() {
        return Ok(false);
    }
    let Some(target) = rustix::process::Pid::from_raw(pid) else {
        return Ok(false);
    };
    rustix::process::kill_process(target, rustix::process::Signal::TERM).map_err(|e| {
        Error::io(
            format!("cannot signal the backup of VM {} (pid {pid})", vm.id),
            e.into(),
        )
    })?;
    let deadline = Instant::now() + WAIT;
    while is_that_backup() {
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "the backup of VM {} (pid {pid}) did not stop within {} s",
                    vm.id,
                    WAIT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(true)
}
