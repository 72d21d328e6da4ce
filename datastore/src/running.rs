//! Backups running on this machine: each backup action leaves `<RUN_DIR>/backup-<vm_id>.pid`
//! while it runs (`<pid> <deploy_id> <process id>`), for `backup_cancel` and for the job
//! runner's question "is that backup still running?". A process is named by PID, start time
//! and boot ([`ProcessId`]), never by its PID alone.

use crate::Error;
use crate::config::DriverConfig;
use backstop_image::process::ProcessId;
use std::path::PathBuf;

/// Removes the PID file when the backup ends, however it ends.
pub(crate) struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The PID file of a VM's running backup.
pub fn pid_file(cfg: &DriverConfig, vm_id: u64) -> PathBuf {
    cfg.run_dir.join(format!("backup-{vm_id}.pid"))
}

/// What a backup's PID file says: `<pid> <deploy_id> <process id>` (see
/// [`backstop_image::process::ProcessId`]).
pub fn read_pid_file(cfg: &DriverConfig, vm_id: u64) -> Option<(String, ProcessId)> {
    let text = std::fs::read_to_string(pid_file(cfg, vm_id)).ok()?;
    let mut words = text.split_whitespace();
    let _pid = words.next()?;
    let deploy_id = words.next()?.to_string();
    let process = ProcessId::parse(words.next()?)?;
    Some((deploy_id, process))
}

/// Whether a backup action of the VM is still running on this machine: its PID file names a
/// process that still runs, the very one (PID, start time, boot), not one that got its PID.
/// For the job runner's reconciliation after it was killed.
pub fn backup_running(cfg: &DriverConfig, vm_id: u64) -> bool {
    read_pid_file(cfg, vm_id).is_some_and(|(_, p)| p.is_running())
}

pub(crate) fn write_pid_file(
    cfg: &DriverConfig,
    vm_id: u64,
    deploy_id: &str,
) -> Result<PidFile, Error> {
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(|e| Error::io(format!("cannot create {}", cfg.run_dir.display()), e))?;
    let path = pid_file(cfg, vm_id);
    let tmp = path.with_extension("pid.tmp");
    let me = ProcessId::current();
    std::fs::write(&tmp, format!("{} {deploy_id} {me}\n", me.pid))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    Ok(PidFile(path))
}
