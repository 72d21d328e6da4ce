//! The downloader (spec §5.10, §7): what `downloader.sh` runs for a backup URL. It prints two
//! shell assignments, `command=` and `clean_command=`; downloader.sh `eval`s them and pipes
//! `command`'s stdout into the image datastore (`cp`) or onto the host (in-place restore).
//!
//! For a backstop snapshot, `command` runs this same downloader with `--stream`: it writes the
//! disk of the URL's last snapshot, which is already a complete image, as a standalone qcow2 on
//! stdout while reading the repository ([`crate::repo::Repo::stream_qcow2`]). No chain is
//! rebuilt and no temporary space is used, so `clean_command` is empty. A FULL backup made by
//! the stock restic driver is one standalone qcow2 file and is streamed as stored. A chain of
//! stock increments (qcow2 deltas) is rebuilt as the stock downloader does: every file fetched
//! into a directory under RESTIC_TMP_DIR (on the machine that runs the downloader, where the
//! stock one uses the backup server), rebased and converted to one qcow2; `command` cats it and
//! `clean_command` removes the directory.
//!
//! Both steps read the datastore (and its decrypted password) from oned's API, as the stock
//! downloader does, so no secret appears in `command` or in any argv. The first step checks
//! everything it can (the API, the repository, the snapshot, the file) so that a bad URL fails
//! before downloader.sh starts a copy.

use crate::actions::backup::{IMAGE_TAG, sh_quote};
use crate::actions::chain::{self, ChainFile};
use crate::actions::{lock_wait, open};
use crate::config::DriverConfig;
use crate::oned::OnedClient;
use crate::repo::Repo;
use crate::repo::format::Snapshot;
use crate::target::repo_id;
use crate::{Error, ErrorKind};
use backstop_protocol::message::Datastore;
use backstop_protocol::url::BackupUrl;
use std::io::Write;
use std::path::Path;

/// How the URL's disk is turned into a qcow2 stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A backstop snapshot: a complete raw image, converted while streaming.
    Image { snapshot: String, path: String },
    /// A stock FULL backup: a standalone qcow2 file, streamed as stored.
    StockFull { snapshot: String, path: String },
    /// Stock increments (qcow2 deltas) on a base: rebuilt into one qcow2 first, as the stock
    /// downloader does. The base is a stock FULL, or a backstop image (the base a flatten of a
    /// stock chain leaves).
    Chain { links: Vec<ChainFile>, disk_id: u32 },
}

fn input(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

/// Characters that would change meaning inside downloader.sh's `eval "command=..."`.
pub(crate) fn shell_safe(url: &str) -> Result<(), Error> {
    match url
        .chars()
        .find(|c| matches!(c, '"' | '$' | '`' | '\\' | '\'') || c.is_control())
    {
        Some(c) => Err(input(format!(
            "backup URL {url:?} holds {c:?}, which downloader.sh cannot pass through eval"
        ))),
        None => Ok(()),
    }
}

/// The repository, the datastore and the source of the URL's disk.
fn resolve(
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
        let repo = open(&ds, repo_id(url.job_id, vm_id), cfg)?;
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
        return Ok((repo, ds, Source::StockFull { snapshot, path }));
    }
    let disk_id = url.disk_id().ok_or_else(|| {
        input(format!(
            "backup URL {url}: the file is not a disk (disk.<id>.<increment>) or the TPM state"
        ))
    })?;
    if url.rbd {
        return Err(Error::not_implemented(format!(
            "downloading rbd-format backups ({url})"
        )));
    }
    let ds = datastore(url.datastore_id)?;
    let repo = open(&ds, repo_id(url.job_id, vm_id), cfg)?;
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
    } else if url.chain.len() == 1 {
        Source::StockFull { snapshot, path }
    } else {
        let links = chain::links(&repo, &url.chain, &url.path, disk_id, vm_id)?;
        Source::Chain { links, disk_id }
    };
    Ok((repo, ds, found))
}

/// The URL's own path when the snapshot holds it, else the snapshot's file of the same disk
/// (`disk.<id>.<any increment>` in the same directory).
pub(crate) fn disk_path(snap: &Snapshot, wanted: &str, disk_id: u32) -> Option<String> {
    let want = norm(wanted);
    if snap.paths.iter().any(|p| norm(p) == want) {
        return Some(wanted.to_string());
    }
    let dir = &want[..want.len().saturating_sub(1)];
    let prefix = format!("disk.{disk_id}.");
    snap.paths
        .iter()
        .find(|p| {
            let parts = norm(p);
            parts.split_last().is_some_and(|(file, d)| {
                d == dir
                    && file
                        .strip_prefix(&prefix)
                        .is_some_and(|inc| inc.parse::<u64>().is_ok())
            })
        })
        .cloned()
}

fn norm(p: &str) -> Vec<&str> {
    p.split('/').filter(|s| !s.is_empty()).collect()
}

/// Step one: checks the URL end to end and returns the two lines for downloader.sh.
pub fn plan(url: &BackupUrl, downloader: &Path, cfg: &DriverConfig) -> Result<Vec<String>, Error> {
    let text = url.to_string();
    shell_safe(&text)?;
    let exe = downloader.to_str().ok_or_else(|| {
        input(format!(
            "the downloader's path {} is not UTF-8",
            downloader.display()
        ))
    })?;
    shell_safe(exe)?;
    let oned = OnedClient::from_env()?;
    let (repo, ds, source) = resolve(url, &|id| oned.datastore(id), cfg)?;
    if let Source::Chain { links, disk_id } = &source {
        let (dir, file) = chain::standalone(&repo, &ds, links, *disk_id)?;
        let (dir, file) = (dir.display().to_string(), file.display().to_string());
        return Ok(vec![
            format!("command=\"cat {}\"", sh_quote(&file)),
            format!("clean_command=\"rm -rf {}\"", sh_quote(&format!("{dir}/"))),
        ]);
    }
    // A conflicting lock (a prune, a check) is reported now, in one line, rather than by the
    // stream after downloader.sh has started the copy.
    drop(repo.lock(false, lock_wait(&ds))?);
    Ok(vec![
        format!("command=\"{} --stream {}\"", sh_quote(exe), sh_quote(&text)),
        "clean_command=\"\"".to_string(),
    ])
}

/// Step two (`--stream`): writes the qcow2 to `out`.
pub fn stream(url: &BackupUrl, cfg: &DriverConfig, out: &mut impl Write) -> Result<(), Error> {
    let oned = OnedClient::from_env()?;
    let (repo, ds, source) = resolve(url, &|id| oned.datastore(id), cfg)?;
    if let Source::Chain { .. } = source {
        return Err(input(format!(
            "backup URL {url} names a chain of qcow2 deltas: its command is `cat` of the rebuilt image, not --stream"
        )));
    }
    write_source(&repo, &ds, source, out)
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

fn write_source(
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
        Source::StockFull { snapshot, path } => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(paths: &[&str]) -> Snapshot {
        let mut s: Snapshot = serde_json::from_str(
            r#"{"time":"2026-01-01T00:00:00Z","tree":"0000000000000000000000000000000000000000000000000000000000000000","paths":[],"hostname":"h"}"#,
        )
        .expect("snapshot json");
        s.paths = paths.iter().map(|p| p.to_string()).collect();
        s
    }

    #[test]
    fn the_disk_is_found_by_path_or_by_disk_id() {
        let s = snap(&[
            "/var/lib/one//datastores/0/22/backup/disk.0.3",
            "/var/lib/one//datastores/0/22/backup/disk.1.3",
            "/var/lib/one//datastores/0/22/backup/vm.xml",
        ]);
        let dir = "/var/lib/one//datastores/0/22/backup";
        assert_eq!(
            disk_path(&s, &format!("{dir}/disk.1.3"), 1).as_deref(),
            Some("/var/lib/one//datastores/0/22/backup/disk.1.3")
        );
        // An URL naming an older increment's file still finds the disk in the last snapshot.
        assert_eq!(
            disk_path(&s, "/var/lib/one/datastores/0/22/backup/disk.1.0", 1).as_deref(),
            Some("/var/lib/one//datastores/0/22/backup/disk.1.3")
        );
        assert_eq!(disk_path(&s, &format!("{dir}/disk.2.3"), 2), None);
        assert_eq!(disk_path(&s, "/elsewhere/22/backup/disk.0.3", 0), None);
    }

    #[test]
    fn urls_that_eval_would_mangle_are_refused() {
        assert!(shell_safe("backstop://100//0:a1b2c3d4/var/lib/one/22/backup/disk.0.0").is_ok());
        for bad in ["x$(id)", "x`id`", "x\"y", "x\\y", "x'y", "x\ny"] {
            assert!(shell_safe(bad).is_err(), "{bad}");
        }
    }
}
