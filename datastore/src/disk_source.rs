//! A backup URL's disk as one standalone qcow2 stream, wherever it comes from: a backstop
//! snapshot (a complete raw image, converted while streaming), or a stock FULL or chain of
//! qcow2 deltas (rebuilt under RESTIC_TMP_DIR first, see [`crate::stock_chain`]). The
//! downloader and the job runner's `image restore` both write disks this way. The URL's
//! snapshot is authorised by content ([`crate::vm_snapshots`]).
//!
//! A stock qcow2 file is never streamed as stored: whoever can write the repository wrote its
//! header, which may name a data file or a backing file on the machine that opens it. It is
//! checked and converted into a new qcow2 that qemu writes, as a chain of one link.

use crate::config::DriverConfig;
use crate::layout::{IMAGE_TAG, disk_path};
use crate::repo::Repo;
use crate::settings::lock_wait;
use crate::stock_chain::{self as chain, ChainFile};
use crate::target::{open_repo, repo_id};
use crate::{Error, ErrorKind};
use backstop_protocol::message::Datastore;
use backstop_protocol::url::BackupUrl;
use std::io::Write;

pub(crate) fn input(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

/// How the URL's disk is turned into a qcow2 stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A backstop snapshot: a complete raw image, converted while streaming.
    Image { snapshot: String, path: String },
    /// The TPM state (a tar.gz), streamed as stored; the in-place restore unpacks it with
    /// care (`backstop_tm::tpm_archive`).
    AsStored { snapshot: String, path: String },
    /// A stock FULL, or stock increments (qcow2 deltas) on a base: rebuilt into one qcow2
    /// first, as the stock downloader does. The base is a stock FULL, or a backstop image (the
    /// base a flatten of a stock chain leaves). Also the stock rbd-format files (an `rbd2` and
    /// its `rbdiff`s, even alone), rebuilt as one raw image and converted.
    Chain { links: Vec<ChainFile>, disk_id: u32 },
}

/// The repository, the datastore and the source of the URL's disk.
pub(crate) fn resolve(
    url: &BackupUrl,
    datastore: &dyn Fn(u64) -> Result<Datastore, Error>,
    cfg: &DriverConfig,
) -> Result<(Repo, Datastore, Source), Error> {
    let vm_id = url.vm_id().ok_or_else(|| {
        input(format!(
            "backup URL {url}: no VM id in its path (.../<vm_id>/backup/<file>)"
        ))
    })?;
    crate::vm_snapshots::check_url(url)?;
    if url.file_name() == "disk.tpm.0" {
        // The TPM state (a tar.gz), as stored in the URL's last snapshot.
        let ds = datastore(url.datastore_id)?;
        let repo = open_repo(&ds, repo_id(url.job_id, vm_id), cfg)?;
        let (id, snap) = crate::vm_snapshots::find(&repo, url.last_source(), vm_id)?;
        let path = snap
            .paths
            .iter()
            .find(|p| p.rsplit('/').next() == Some("disk.tpm.0"))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Repository,
                    format!("backup {} holds no TPM state", url.last_source()),
                )
            })?;
        let snapshot = id.to_hex();
        return Ok((repo, ds, Source::AsStored { snapshot, path }));
    }
    let disk_id = url.disk_id().ok_or_else(|| {
        input(format!(
            "backup URL {url}: the file is not a disk (disk.<id>.<increment>) or the TPM state"
        ))
    })?;
    let ds = datastore(url.datastore_id)?;
    let repo = open_repo(&ds, repo_id(url.job_id, vm_id), cfg)?;
    let source = url.last_source();
    let (id, snap) = crate::vm_snapshots::find(&repo, source, vm_id)?;
    let snapshot = id.to_hex();
    let path = disk_path(&snap, &url.path, disk_id).ok_or_else(|| {
        Error::new(
            ErrorKind::Repository,
            format!(
                "backup {source} holds no disk {disk_id} (looked for {})",
                url.path
            ),
        )
    })?;
    let found = if snap.tags.iter().any(|t| t == IMAGE_TAG) {
        Source::Image { snapshot, path }
    } else {
        let links = chain::links(&repo, &url.chain, &url.path, disk_id, vm_id)?;
        Source::Chain { links, disk_id }
    };
    Ok((repo, ds, found))
}

/// The URL's disk as a standalone qcow2 on `out`, with the datastore given rather than read
/// from oned (the backup-job runner keeps its own datastores). A stock chain is rebuilt under
/// RESTIC_TMP_DIR first and that directory removed afterwards, whatever happens.
pub fn write_image(
    url: &BackupUrl,
    ds: &Datastore,
    cfg: &DriverConfig,
    out: &mut impl Write,
) -> Result<(), Error> {
    let wanted = ds.id;
    let (repo, ds, source) = resolve(
        url,
        &|id| {
            if id == wanted {
                Ok(ds.clone())
            } else {
                Err(input(format!(
                    "backup URL {url} names datastore {id}, not {wanted}"
                )))
            }
        },
        cfg,
    )?;
    write_source(&repo, &ds, source, out)
}

pub(crate) fn write_source(
    repo: &Repo,
    ds: &Datastore,
    source: Source,
    out: &mut impl Write,
) -> Result<(), Error> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    match source {
        Source::Image { snapshot, path } => {
            repo.stream_qcow2(&snapshot, &path, &mut out, threads, lock_wait(ds))?;
        }
        Source::AsStored { snapshot, path } => {
            repo.dump(&snapshot, &path, &mut out, lock_wait(ds))?;
        }
        Source::Chain { links, disk_id } => {
            let (dir, file) = chain::standalone(repo, ds, &links, disk_id)?;
            let copied = std::fs::File::open(&file)
                .and_then(|mut f| std::io::copy(&mut f, &mut out))
                .map_err(|e| Error::io(format!("cannot read {}", file.display()), e));
            let _ = std::fs::remove_dir_all(&dir);
            copied?;
        }
    }
    out.flush()
        .map_err(|e| Error::io("cannot write the image", e))
}
