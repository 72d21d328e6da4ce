//! A VM's snapshots as backup URLs and backup images name them, authorised by what the
//! repository holds rather than by trust in the name (see `docs/security.md`).
//!
//! oned does not check `PATH` when a user allocates an image, so anyone who may create an
//! image can hand the downloader (or `stat`) a backup URL of their choosing. A URL therefore
//! names a snapshot only by a full id or a prefix of at least [`MIN_PREFIX`] hex characters
//! that is unique in the repository, and the snapshot must carry the tag `one-<vm_id>` of the
//! VM the URL (or the image) names. `latest` and short prefixes are refused; the repository
//! itself is chosen by the URL's backup job or VM, as the stock driver chooses it.

use crate::config::DriverConfig;
use crate::layout::base_name;
pub use crate::layout::vm_tag;
use crate::repo::Repo;
use crate::repo::format::{RepoId, Snapshot};
use crate::target::{RepoTarget, open_repo, repo_id};
use crate::{Error, ErrorKind};
use backstop_protocol::message::Image;
use backstop_protocol::message::{Datastore, Vm};
use backstop_protocol::url::{BackupUrl, ChainLink};

/// The shortest snapshot id prefix a URL may use (oned keeps the 8 characters the backup
/// action printed).
pub const MIN_PREFIX: usize = 8;

/// Whether `source` may name a snapshot: 8 to 64 hex characters.
pub fn check_source(source: &str) -> Result<(), Error> {
    let ok =
        (MIN_PREFIX..=64).contains(&source.len()) && source.chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Input,
        format!(
            "backup id {source:?} is not a snapshot id: a backup is named by at least {MIN_PREFIX} hex characters of its id (never \"latest\")"
        ),
    ))
}

/// The full ids of the repository's snapshots that start with `source`.
fn matching(repo: &Repo, source: &str) -> Result<Vec<RepoId>, Error> {
    check_source(source)?;
    let prefix = source.to_ascii_lowercase();
    Ok(repo
        .list(crate::repo::FileType::Snapshot)?
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&prefix))
        .collect())
}

fn ambiguous(source: &str, repo: &Repo) -> Error {
    Error::new(
        ErrorKind::Repository,
        format!(
            "backup id {source} is ambiguous in {}: give more of the snapshot id",
            repo.location()
        ),
    )
}

/// The VM a backup image belongs to (`VMS/ID`, else its PATH); its snapshots must carry that
/// VM's tag.
pub fn image_vm_id(image: &Image) -> Result<u64, Error> {
    image.vm_id().ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!(
                "image {}: no VM id (VMS/ID or a PATH naming .../<vm_id>/backup/...), so its backups cannot be told apart from other VMs'",
                image.id
            ),
        )
    })
}

/// Checks every link of a backup URL names a snapshot the only way allowed.
pub fn check_url(url: &BackupUrl) -> Result<(), Error> {
    url.chain.iter().try_for_each(|l| check_source(&l.source))
}

/// Checks that a loaded snapshot belongs to VM `vm_id`.
fn owned(source: &str, snap: &Snapshot, vm_id: u64) -> Result<(), Error> {
    if snap.tags.contains(&vm_tag(vm_id)) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Input,
        format!("backup {source} is not a backup of VM {vm_id}"),
    ))
}

/// The snapshot `source` names, which must be unique and belong to VM `vm_id`.
pub fn find(repo: &Repo, source: &str, vm_id: u64) -> Result<(RepoId, Snapshot), Error> {
    let id = match matching(repo, source)?.as_slice() {
        [id] => *id,
        [] => {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("no snapshot {source} in {}", repo.location()),
            ));
        }
        _ => return Err(ambiguous(source, repo)),
    };
    let snap: Snapshot = repo.load_file(crate::repo::FileType::Snapshot, &id)?;
    owned(source, &snap, vm_id)?;
    Ok((id, snap))
}

/// The full ids of the snapshots chain links name that still exist, for rm and flatten to
/// forget: a link whose snapshot is gone is skipped (both actions are idempotent), but a link
/// that is not a snapshot id, that is ambiguous, or whose snapshot belongs to another VM
/// fails the whole call before anything is forgotten.
pub fn present(repo: &Repo, links: &[ChainLink], vm_id: u64) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for link in links {
        match matching(repo, &link.source)?.as_slice() {
            [] => {}
            [id] => {
                let snap: Snapshot = repo.load_file(crate::repo::FileType::Snapshot, id)?;
                owned(&link.source, &snap, vm_id)?;
                out.push(id.to_hex().to_string());
            }
            _ => return Err(ambiguous(&link.source, repo)),
        }
    }
    Ok(out)
}

/// A backup that is in the repository but not in the caller's records: what a backup action
/// left when the process that ran it (the job runner) was killed before it read the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecorded {
    /// The snapshot id.
    pub id: String,
    /// Its disks' sizes, summed (the image's size, not what was read).
    pub size_bytes: u64,
}

/// The newest snapshot of VM `vm_id` in the repository of `job_id` taken at or after `since`
/// whose id does not start with any of `recorded`; None when there is none or the repository
/// does not exist yet.
pub fn unrecorded_backup(
    ds: &Datastore,
    job_id: Option<u64>,
    vm_id: u64,
    since: jiff::Timestamp,
    recorded: &[String],
    cfg: &DriverConfig,
) -> Result<Option<Unrecorded>, Error> {
    let target = RepoTarget::new(ds, repo_id(job_id, vm_id))?;
    if !target.exists(&target.storage(ds, cfg)?)? {
        return Ok(None);
    }
    let repo = open_repo(ds, repo_id(job_id, vm_id), cfg)?;
    let tag = format!("one-{vm_id}");
    let Some((id, snap, _)) = repo.all_snapshots()?.into_iter().rfind(|(id, snap, time)| {
        let hex = id.to_hex();
        *time >= since
            && snap.tags.contains(&tag)
            && !recorded
                .iter()
                .any(|r| !r.is_empty() && hex.starts_with(r.as_str()))
    }) else {
        return Ok(None);
    };
    let known = repo.index()?;
    let mut size_bytes = 0;
    for path in crate::layout::snapshot_disks(&snap.paths).values() {
        if let Some(node) = repo.file_node(&snap, path, &known)? {
            size_bytes += node.size;
        }
    }
    Ok(Some(Unrecorded {
        id: id.to_hex().to_string(),
        size_bytes,
    }))
}

/// The newest backstop snapshot of the VM that holds `disk.<id>.<increment>` for every disk.
pub fn find_parent(
    snapshots: &[(RepoId, Snapshot, jiff::Timestamp)],
    vm_id: u64,
    disks: &[u32],
    increment: u64,
) -> Option<(RepoId, Snapshot)> {
    let tag = format!("one-{vm_id}");
    snapshots
        .iter()
        .rev()
        .find(|(_, s, _)| {
            s.tags.contains(&tag)
                && disks.iter().all(|d| {
                    s.paths.iter().any(|p| {
                        crate::layout::stored_increment(base_name(p)) == Some((*d, increment))
                    })
                })
        })
        .map(|(id, s, _)| (*id, s.clone()))
}

/// A VM backup found in a repository (what `backupjob discover` records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundBackup {
    /// The snapshot id (hex).
    pub snapshot: String,
    pub vm_id: u64,
    /// The increment its disk files are named for (`disk.<id>.<increment>`).
    pub increment: u64,
    pub time: i64,
    /// What the backup read (its summary), else the sum of its disks' sizes (a snapshot
    /// without a summary: the stock driver's, or an older backstop's).
    pub size_bytes: u64,
    /// The VM document saved with it (`<VM>...</VM>`), and what it says of the backup.
    pub vm: Option<(String, Vm)>,
}

/// Every VM backup in repository `repo_id` of a datastore (snapshots with a `one-<vm>` tag and
/// disk files), oldest first.
pub fn found_backups(
    ds: &Datastore,
    repo_id: &str,
    cfg: &DriverConfig,
) -> Result<Vec<FoundBackup>, Error> {
    let repo = open_repo(ds, repo_id.to_string(), cfg)?;
    let wait = crate::settings::lock_wait(ds);
    let mut known = None;
    let mut out = Vec::new();
    for (id, snap, time) in repo.all_snapshots()? {
        let Some(vm_id) = snap
            .tags
            .iter()
            .find_map(|t| t.strip_prefix("one-")?.parse::<u64>().ok())
        else {
            continue;
        };
        let disks = crate::layout::snapshot_disks(&snap.paths);
        let Some(increment) = disks
            .values()
            .find_map(|p| crate::layout::stored_increment(base_name(p)))
            .map(|(_, n)| n)
        else {
            continue;
        };
        let size_bytes = match &snap.summary {
            Some(s) => s.total_bytes_processed,
            None => {
                let known = match &known {
                    Some(k) => k,
                    None => known.insert(repo.index()?),
                };
                let mut sum = 0;
                for path in disks.values() {
                    sum += repo.file_node(&snap, path, known)?.map_or(0, |n| n.size);
                }
                sum
            }
        };
        let hex = id.to_hex().to_string();
        let vm = match snap.paths.iter().find(|p| base_name(p) == "vm.xml") {
            None => None,
            Some(path) => {
                let mut bytes = Vec::new();
                repo.dump(&hex, path, &mut bytes, wait)?;
                backstop_protocol::input::decode_siblings(
                    &bytes,
                    backstop_protocol::input::Encoding::Base64,
                )
                .ok()
                .and_then(|roots| {
                    let vm = backstop_protocol::message::vm_from_siblings(&roots).ok()?;
                    Some((roots.first()?.to_xml(), vm))
                })
            }
        };
        out.push(FoundBackup {
            snapshot: hex,
            vm_id,
            increment,
            time: time.as_second(),
            size_bytes,
            vm,
        });
    }
    Ok(out)
}

/// The VM saved in a snapshot's `vm.xml` (base64 of the VM XML, as prebackup writes it).
pub fn saved_vm(
    repo: &Repo,
    source: &str,
    snap: &Snapshot,
    wait: crate::repo::lock::RetryLock,
) -> Result<Vm, Error> {
    let path = snap
        .paths
        .iter()
        .find(|p| p.rsplit('/').next() == Some("vm.xml"))
        .ok_or_else(|| {
            Error::new(
                crate::ErrorKind::Repository,
                format!("backup {source} holds no vm.xml"),
            )
        })?;
    let mut bytes = Vec::new();
    repo.dump(source, path, &mut bytes, wait)?;
    crate::layout::decode_vm_xml(&bytes).map_err(|e| {
        Error::new(
            crate::ErrorKind::Repository,
            format!("the vm.xml of backup {source}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ids_of_eight_hex_or_more() {
        for ok in ["1f2e3d4c", "1F2E3D4C", &"a".repeat(64)] {
            assert!(check_source(ok).is_ok(), "{ok}");
        }
        for bad in [
            "latest",
            "1",
            "1f2e3d4",
            "1f2e3d4g",
            "../../x",
            "",
            &"a".repeat(65),
        ] {
            let e = check_source(bad).expect_err(bad);
            assert!(e.to_string().contains("at least 8 hex"), "{e}");
        }
    }
}
