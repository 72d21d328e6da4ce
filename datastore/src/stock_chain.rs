//! Chains of increments the stock restic driver stored (qcow2 deltas, each needing the one
//! before it), rebuilt on this machine as the stock driver rebuilds them on the backup server:
//! every file fetched into a private directory under RESTIC_TMP_DIR (default `/var/tmp`), then
//! rebased onto the one before. A chain may start from a backstop image (the complete base a
//! flatten leaves), which is fetched as a qcow2.
//!
//! The downloader converts the top to one standalone qcow2; increment_flatten reads it (with
//! its backing files) as a complete disk and stores that as a backstop image. Whoever can
//! write the repository wrote these files, so each is checked before qemu opens it for
//! anything but `info`: a data file is refused, and whatever backing file it names (a stock
//! increment names the qemu-nbd export it was staged through) is replaced unread
//! (`rebase -u`).
//!
//! A chain of the stock driver's rbd-format files (`disk.<id>.rbd2`, then
//! `disk.<id>.<n>.rbdiff`) is rebuilt into one sparse raw image instead ([`fetch_raw`]): each
//! file streams out of the repository straight into
//! [`backstop_image::rbd_stream`], which applies it; nothing but the image is written.

use crate::layout::IMAGE_TAG;
use crate::layout::disk_path;
use crate::remote::shell_safe;
use crate::repo::Repo;
use crate::settings::lock_wait;
use crate::{Error, ErrorKind};
use backstop_image::disk_image::{self, qemu_img};
use backstop_protocol::message::Datastore;
use backstop_protocol::url::ChainLink;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// One file of a chain to rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    pub increment: u64,
    pub snapshot: String,
    pub path: String,
    /// A backstop image (complete; fetched as qcow2) rather than a stock qcow2 file.
    pub backstop: bool,
}

/// The files disk `disk_id` needs from `chain`: from its last backstop image (or its first
/// link) to its end.
pub fn links(
    repo: &Repo,
    chain: &[ChainLink],
    wanted_path: &str,
    disk_id: u32,
    vm_id: u64,
) -> Result<Vec<ChainFile>, Error> {
    let mut links = Vec::new();
    for link in chain.iter().rev() {
        let (id, snap) = crate::vm_snapshots::find(repo, &link.source, vm_id)?;
        let path = disk_path(&snap, wanted_path, disk_id).ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!("backup {} holds no disk {disk_id}", link.source),
            )
        })?;
        let backstop = snap.tags.iter().any(|t| t == IMAGE_TAG);
        links.push(ChainFile {
            increment: link.increment_id,
            snapshot: id.to_hex(),
            path,
            backstop,
        });
        if backstop {
            break;
        }
    }
    links.reverse();
    Ok(links)
}

/// A private work directory under RESTIC_TMP_DIR, removed on drop unless kept.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub fn new(ds: &Datastore) -> Result<WorkDir, Error> {
        let root = crate::settings::Settings::of(ds)?.tmp_dir;
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| Error::config(e.to_string()))?;
        let path = root.join(format!("backstop-chain-{}", hex::encode(random)));
        shell_safe(&path.display().to_string())?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| {
                Error::io(
                    format!("cannot create a work directory under {}", root.display()),
                    e,
                )
            })?;
        Ok(WorkDir { path, keep: false })
    }

    /// Keeps the directory (the downloader's clean_command removes it later).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Whether the chain is made of the stock driver's rbd-format files (on a base of its own or a
/// backstop image).
pub fn is_rbd(links: &[ChainFile]) -> bool {
    links
        .iter()
        .any(|l| !l.backstop && crate::layout::is_rbd_file(crate::layout::base_name(&l.path)))
}

/// Fetches the files of `links` into `dir` and rebases each onto the one before; returns the
/// top file (a qcow2 whose backing chain is complete). An rbd-format chain is rebuilt as one
/// raw image instead ([`fetch_raw`]).
pub fn fetch(
    repo: &Repo,
    ds: &Datastore,
    links: &[ChainFile],
    disk_id: u32,
    dir: &Path,
) -> Result<PathBuf, Error> {
    if is_rbd(links) {
        return fetch_raw(repo, ds, links, disk_id, dir);
    }
    let wait = lock_wait(ds);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut files = Vec::new();
    for link in links {
        let file = dir.join(format!("disk.{disk_id}.{}", link.increment));
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&file)
                .map_err(|e| Error::io(format!("cannot create {}", file.display()), e))?,
        );
        if link.backstop {
            repo.stream_qcow2(&link.snapshot, &link.path, &mut out, threads, wait)?;
        } else {
            repo.dump(&link.snapshot, &link.path, &mut out, wait)?;
        }
        out.flush()
            .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
        drop(out);
        // Whoever can write the repository wrote this file: nothing but `info` opens it
        // before it is checked ([`disk_image::check_foreign`]).
        disk_image::check_foreign(&file, disk_image::ForeignBacking::AnyName).map_err(|e| {
            let e = Error::from(e);
            Error::new(
                e.kind,
                format!(
                    "disk {disk_id} of backup {} ({}): {}",
                    link.snapshot, link.path, e.message
                ),
            )
        })?;
        files.push(file);
    }
    // The first file stands alone whatever its header says; each later one sits on the one
    // before it.
    if let Some(first) = files.first() {
        rebase(first, None)?;
    }
    for pair in files.windows(2) {
        rebase(&pair[1], Some(&pair[0]))?;
    }
    files
        .pop()
        .ok_or_else(|| Error::new(ErrorKind::Input, "an empty chain"))
}

/// The chain as one standalone qcow2 in a kept work directory: (directory, image).
pub fn standalone(
    repo: &Repo,
    ds: &Datastore,
    links: &[ChainFile],
    disk_id: u32,
) -> Result<(PathBuf, PathBuf), Error> {
    let dir = WorkDir::new(ds)?;
    let top = fetch(repo, ds, links, disk_id, &dir.path)?;
    let standalone = dir.path.join("standalone.qcow2");
    let format = if is_rbd(links) { "raw" } else { "qcow2" };
    qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        format.as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        top.as_os_str(),
        standalone.as_os_str(),
    ])?;
    // Only the result stays.
    for l in links {
        let _ = std::fs::remove_file(dir.path.join(format!("disk.{disk_id}.{}", l.increment)));
    }
    let _ = std::fs::remove_file(dir.path.join(format!("disk.{disk_id}.raw")));
    std::fs::rename(&standalone, &top)
        .map_err(|e| Error::io(format!("cannot rename into {}", top.display()), e))?;
    Ok((dir.keep(), top))
}

/// Rebuilds an rbd-format chain as one sparse raw image `disk.<id>.raw` in `dir`: the base (a
/// backstop image restored, or the `rbd2` export applied up to its `one_backup_<n>` snapshot),
/// then every `rbdiff` in order. Each diff must start from the snapshot the image is at, so a
/// file out of order or from another image is refused rather than applied.
pub fn fetch_raw(
    repo: &Repo,
    ds: &Datastore,
    links: &[ChainFile],
    disk_id: u32,
    dir: &Path,
) -> Result<PathBuf, Error> {
    use crate::layout::{base_name, is_rbd_file};
    let wait = lock_wait(ds);
    let raw = dir.join(format!("disk.{disk_id}.raw"));
    let bad = |m: String| Error::new(ErrorKind::Repository, m);
    let mut at: Option<String> = None;
    for (n, link) in links.iter().enumerate() {
        let name = base_name(&link.path);
        if link.backstop {
            if n > 0 {
                return Err(bad(format!(
                    "backup {} is a complete image inside an rbd chain",
                    link.snapshot
                )));
            }
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            repo.restore_file(&link.snapshot, &link.path, &raw, threads, wait)?;
            // The flatten that made it kept the last merged increment's id.
            at = Some(format!("one_backup_{}", link.increment));
            continue;
        }
        if !is_rbd_file(name) {
            return Err(bad(format!(
                "disk {disk_id} mixes rbd-format files with {name} (backup {})",
                link.snapshot
            )));
        }
        let image = name.ends_with(".rbd2");
        if image != (n == 0) {
            return Err(bad(format!(
                "{name} (backup {}) is out of place in disk {disk_id}'s rbd chain",
                link.snapshot
            )));
        }
        let target = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(image)
            .open(&raw)
            .map_err(|e| Error::io(format!("cannot open {}", raw.display()), e))?;
        let until = format!("one_backup_{}", link.increment);
        let applied = apply_dumped(repo, link, wait, |input| {
            Ok(backstop_image::rbd_stream::apply_until(
                input,
                &target,
                name,
                Some(&until),
            )?)
        })?;
        if !image && applied.from_snap != at {
            return Err(bad(format!(
                "{name} (backup {}) starts from snapshot {}, but the image rebuilt so far is at {}",
                link.snapshot,
                applied.from_snap.as_deref().unwrap_or("(none)"),
                at.as_deref().unwrap_or("its head")
            )));
        }
        at = applied.to_snap;
    }
    Ok(raw)
}

/// Streams a file of the repository into `apply` through a pipe: nothing lands on disk. When
/// the stream breaks off because reading the repository failed, that failure is what is said.
fn apply_dumped<T>(
    repo: &Repo,
    link: &ChainFile,
    wait: crate::repo::lock::RetryLock,
    apply: impl FnOnce(&mut std::io::PipeReader) -> Result<T, Error>,
) -> Result<T, Error> {
    let (mut reader, writer) =
        std::io::pipe().map_err(|e| Error::io("cannot make a pipe".to_string(), e))?;
    std::thread::scope(|scope| {
        let dump = scope.spawn(move || {
            let mut writer = writer;
            repo.dump(&link.snapshot, &link.path, &mut writer, wait)
                .map_err(Error::from)
        });
        let applied = apply(&mut reader);
        drop(reader);
        let dumped = dump.join().unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Repository,
                "reading the repository failed unexpectedly (its thread panicked)",
            ))
        });
        match (applied, dumped) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Err(d)) if e.to_string().contains("ends early") => Err(d),
            (Err(e), _) => Err(e),
        }
    })
}

/// Points the qcow2 `file`'s backing file at the qcow2 `backing` (None: no backing file),
/// without reading either (`rebase -u`). Every format is named: nothing is probed.
pub fn rebase(file: &Path, backing: Option<&Path>) -> Result<(), Error> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "rebase".as_ref(),
        "-u".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
    ];
    match backing {
        Some(b) => args.extend::<[&std::ffi::OsStr; 4]>([
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            b.as_os_str(),
        ]),
        None => args.extend::<[&std::ffi::OsStr; 2]>(["-b".as_ref(), "".as_ref()]),
    }
    args.push(file.as_os_str());
    qemu_img(&args)?;
    Ok(())
}
