//! `backup_cancel`: stops the running `backup` of a VM (driver contract §3.5, §5.3).
//!
//! The backup action leaves `<RUN_DIR>/backup-<vm_id>.pid` (its PID, the deploy id and its
//! process identity: PID, start time, boot) while it runs. Cancel reads it, and signals SIGTERM
//! through a pidfd only if the process with that PID is still that very backup (a reused PID
//! is never signalled), then waits for it to end.
//! The backup then closes the host step's stdin; the host stops, writes no snapshot and the
//! backup exits 1. No backup running is not an error.

use crate::config::DriverConfig;
use crate::running::{pid_file, read_pid_file};
use crate::{Error, ErrorKind};
use backstop_protocol::args::CancelArgs;
use backstop_protocol::message::Vm;
use std::time::Duration;

/// How long to wait for the backup to end after SIGTERM.
const WAIT: Duration = Duration::from_secs(150);

/// Returns whether a backup was running and was stopped.
pub fn run(args: &CancelArgs, vm: &Vm, cfg: &DriverConfig) -> Result<bool, Error> {
    let path = pid_file(cfg, vm.id);
    if !path.exists() {
        return Ok(false);
    }
    let (deploy_id, process) = read_pid_file(cfg, vm.id).ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("{} is not a backup's PID file", path.display()),
        )
    })?;
    if deploy_id != args.deploy_id {
        return Ok(false);
    }
    // The PID, start time and boot must all match: a PID reused by another process since the
    // backup ended is never signalled (the signal goes through a pidfd).
    let signalled = process.signal(rustix::process::Signal::TERM).map_err(|e| {
        Error::io(
            format!(
                "cannot signal the backup of VM {} (pid {})",
                vm.id, process.pid
            ),
            e,
        )
    })?;
    if !signalled {
        return Ok(false);
    }
    if !process.wait_gone(WAIT) {
        return Err(Error::new(
            ErrorKind::Repository,
            format!(
                "the backup of VM {} (pid {}) did not stop within {} s",
                vm.id,
                process.pid,
                WAIT.as_secs()
            ),
        ));
    }
    Ok(true)
}
