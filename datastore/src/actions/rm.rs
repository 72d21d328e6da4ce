//! `rm`: forget the snapshot of every increment of a backup image, then prune (driver contract §5.6).
//!
//! Idempotent: sources already gone (or a repository that no longer exists) are not errors.
//! Waits for conflicting locks up to `BACKSTOP_LOCK_WAIT` seconds (default 600). The prune
//! honours RESTIC_PRUNE_MAX_UNUSED (default 0, as the stock driver) and
//! RESTIC_PRUNE_MAX_REPACK.

use crate::Error;
use crate::config::DriverConfig;
use crate::settings::Settings;
use crate::settings::lock_wait;
use crate::target::{RepoTarget, image_repo_id};
use crate::vm_snapshots;
use backstop_protocol::message::RmRequest;

pub fn run(request: &RmRequest, cfg: &DriverConfig) -> Result<(), Error> {
    let ds = &request.datastore;
    let target = RepoTarget::new(ds, image_repo_id(&request.image)?)?;
    let storage = target.storage(ds, cfg)?;
    if !target.exists(&storage)? {
        return Ok(());
    }
    let repo = crate::repo::Repo::open(storage, &crate::target::password(ds)?)?;
    let wait = lock_wait(ds);
    let forget = vm_snapshots::present(
        &repo,
        &request.image.chain(),
        vm_snapshots::image_vm_id(&request.image)?,
    )?;
    if forget.is_empty() {
        return Ok(());
    }
    repo.forget(&forget, wait)?;
    repo.prune(&Settings::of(ds)?.prune, wait)?;
    Ok(())
}
