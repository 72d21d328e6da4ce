//! `stat`: the virtual size in MB of the disk a backup URL names (driver contract §5.5), from the VM
//! template saved in the URL's last snapshot. It becomes the restored image's SIZE.

use crate::config::DriverConfig;
use crate::settings::lock_wait;
use crate::target::open_repo;
use crate::target::repo_id;
use crate::vm_snapshots::saved_vm;
use crate::{Error, ErrorKind, vm_snapshots};
use backstop_protocol::message::StatRequest;

pub fn run(request: &StatRequest, cfg: &DriverConfig) -> Result<u64, Error> {
    let url = &request.url;
    let vm_id = url.vm_id().ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("backup URL {url}: no VM id in its path (.../<vm_id>/backup/<file>)"),
        )
    })?;
    let disk_id = url.disk_id().ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("backup URL {url}: the file is not a disk (disk.<id>.<increment>)"),
        )
    })?;
    vm_snapshots::check_url(url)?;
    let job = request.backup_job_id.or(url.job_id);
    let ds = &request.datastore;
    let repo = open_repo(ds, repo_id(job, vm_id), cfg)?;
    let source = url.last_source();
    let (_, snap) = vm_snapshots::find(&repo, source, vm_id)?;
    let vm = saved_vm(&repo, source, &snap, lock_wait(ds))?;
    vm.disk(disk_id).and_then(|d| d.size_mb).ok_or_else(|| {
        Error::new(
            ErrorKind::Repository,
            format!("backup {source}: the saved VM {vm_id} has no SIZE for disk {disk_id}"),
        )
    })
}
