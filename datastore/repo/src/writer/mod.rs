//! Writing a snapshot: disk images as lists of fixed-size chunks, small files (vm.xml) as one
//! blob, then trees, the index and the snapshot, in that order.
//!
//! The pipeline for one image: a reader thread reads the chunks the plan marks `Read`, in order,
//! with positioned reads; worker threads (one per core) recognise all-zero chunks without
//! hashing, hash the others, and compress and encrypt the ones the repository does not hold
//! yet; a packer thread fills ~16 MiB packs and writes them. The main thread assembles the
//! content list in chunk order.

use crate::format::{BlobKind, IndexPack, Node, RepoId, Snapshot, Tree};
use crate::lock::RetryLock;
use crate::pack::{PackBuilder, SealedBlob};
use crate::session::{PackFlow, Session};
use crate::{BlobLocation, Compression, Index, Repo};
use crate::{Error, ErrorKind};
use backstop_image::image::{self, CHUNK_SIZE, ChunkPlan, Extent, ImageSource};
use crossbeam_channel::{Sender, bounded, unbounded};
use rustic_core::FileType;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod chunks;
pub mod prefetch;
mod tree;

use chunks::{ImageJob, ZeroIds, backup_image};
use prefetch::Prepared;
use tree::DirBuilder;

/// What a file in the snapshot is made from.
pub enum Content<'a> {
    /// A disk image. With `changed` and a parent snapshot holding `parent_path` at the same size,
    /// only chunks that touch a changed extent are read.
    Image {
        source: &'a dyn ImageSource,
        changed: Option<&'a [Extent]>,
        parent_path: Option<String>,
    },
    /// A small file held in memory (vm.xml).
    Bytes(&'a [u8]),
}

impl std::fmt::Debug for Content<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Image {
                changed,
                parent_path,
                ..
            } => f
                .debug_struct("Image")
                .field("changed", &changed.map(<[Extent]>::len))
                .field("parent_path", parent_path)
                .finish(),
            Content::Bytes(b) => write!(f, "Bytes({})", b.len()),
        }
    }
}

/// One file of the snapshot, at an absolute path.
#[derive(Debug)]
pub struct FileSpec<'a> {
    pub path: String,
    pub content: Content<'a>,
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub hostname: String,
    pub tags: Vec<String>,
    pub compression: Compression,
    pub parent: Option<RepoId>,
    pub threads: usize,
    /// How long to wait for a conflicting lock (an exclusive one) to go away.
    pub retry_lock: std::time::Duration,
    /// How often the lock is renewed (tests shorten it).
    pub lock_refresh: std::time::Duration,
    /// How many bytes of compressed chunks may wait for the key in [`backup_opening`] (0: read
    /// nothing before the repository is open).
    pub prefetch_budget: u64,
    /// Set it to stop the backup: reading stops, no snapshot is written, the packs already
    /// written stay unreferenced until a prune (the repository stays consistent).
    pub cancel: Arc<AtomicBool>,
    /// Filled in as the backup goes, for a progress display.
    pub progress: Arc<Progress>,
}

/// Where a backup is: image positions settled (reused, zero or read) out of the images' total
/// size, and the bytes actually read. Updated by the backup, read by anyone.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub read: AtomicU64,
}

impl Progress {
    /// (done, total, read).
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.read.load(Ordering::Relaxed),
        )
    }
}

/// A progress line: `1.2 GiB of 4.0 GiB (30 %), 85.3 MB/s, ETA 0:00:35`. The rate is of
/// positions settled (reused and zero chunks count as they are settled, which is at once).
pub fn progress_line(done: u64, total: u64, elapsed: std::time::Duration) -> String {
    let gib = |b: u64| {
        if b >= 1 << 30 {
            format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
        } else {
            format!("{:.0} MiB", b as f64 / f64::from(1u32 << 20))
        }
    };
    let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 && done < total {
        let left = ((total - done) as f64 / rate).round() as u64;
        format!("{}:{:02}:{:02}", left / 3600, left / 60 % 60, left % 60)
    } else {
        "-".to_string()
    };
    format!(
        "{} of {} ({pct} %), {:.1} MB/s, ETA {eta}",
        gib(done),
        gib(total),
        rate / 1e6
    )
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            hostname: backstop_image::process::hostname(),
            tags: Vec::new(),
            compression: Compression::Auto,
            parent: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            retry_lock: std::time::Duration::ZERO,
            lock_refresh: crate::lock::REFRESH_EVERY,
            prefetch_budget: prefetch::BUDGET,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Progress::default()),
        }
    }
}

/// What a backup did, per file and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Logical size.
    pub size: u64,
    pub chunks: usize,
    /// Chunks taken from the parent snapshot without reading.
    pub reused_chunks: usize,
    /// All-zero chunks (planned from the allocation map or found after reading): never hashed.
    pub zero_chunks: usize,
    /// Chunks whose content was hashed.
    pub hashed_chunks: usize,
    pub bytes_read: u64,
    /// Of the chunks read, those read and compressed while the repository was being opened.
    pub prepared_chunks: usize,
    /// Blobs this backup stored (the rest were already in the repository).
    pub new_blobs: usize,
    /// Bytes of those blobs after compression and encryption.
    pub added_bytes: u64,
    /// Bytes of those blobs as they were read (before compression).
    pub added_plain: u64,
    /// Why an incremental request became a full read, if it did.
    pub full_reason: Option<String>,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.size += o.size;
        self.chunks += o.chunks;
        self.reused_chunks += o.reused_chunks;
        self.zero_chunks += o.zero_chunks;
        self.hashed_chunks += o.hashed_chunks;
        self.bytes_read += o.bytes_read;
        self.prepared_chunks += o.prepared_chunks;
        self.new_blobs += o.new_blobs;
        self.added_bytes += o.added_bytes;
        self.added_plain += o.added_plain;
    }
}

#[derive(Debug)]
pub struct BackupResult {
    pub snapshot_id: RepoId,
    pub total: Stats,
    pub files: Vec<(String, Stats)>,
}

fn username() -> String {
    std::env::var("USER").unwrap_or_else(|_| {
        if rustix::process::getuid().is_root() {
            "root".into()
        } else {
            String::new()
        }
    })
}

/// Everything the threads of one backup share.
struct Shared<'a> {
    repo: &'a Repo,
    /// The backup's write session: its lock, when lost, stops the backup like a failure.
    session: &'a Session<'a>,
    index: &'a Index,
    claimed: Mutex<HashSet<RepoId>>,
    level: Option<i32>,
    /// Chunks read and compressed while the repository was being opened.
    prepared: Prepared,
    /// Set on a failure anywhere.
    abort: AtomicBool,
    /// Set from outside to stop (see [`BackupOptions::cancel`]).
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl Shared<'_> {
    fn stopped(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
            || self.cancel.load(Ordering::SeqCst)
            || self.session.lock().is_lost()
    }

    /// Whether this backup must store the blob: not in the repository, not stored by another
    /// thread of this backup already.
    fn claim(&self, id: RepoId) -> bool {
        !self.index.has(BlobKind::Data, &id)
            && self
                .claimed
                .lock()
                .map(|mut c| c.insert(id))
                .unwrap_or(false)
    }

    fn seal(
        &self,
        id: RepoId,
        kind: BlobKind,
        data: &[u8],
        compressor: &mut Option<zstd::bulk::Compressor<'static>>,
    ) -> Result<SealedBlob, Error> {
        let compressed =
            match (self.level, compressor.as_mut()) {
                (Some(_), Some(c)) => Some(c.compress(data).map_err(|e| {
                    Error::new(ErrorKind::Repository, format!("cannot compress: {e}"))
                })?),
                _ => None,
            };
        match compressed {
            Some(c) if c.len() < data.len() => self.seal_stored(id, kind, &c, Some(data.len())),
            _ => self.seal_stored(id, kind, data, None),
        }
    }

    /// Seals a blob's stored form: compressed bytes (with `uncompressed` the blob's length)
    /// or the blob itself.
    fn seal_stored(
        &self,
        id: RepoId,
        kind: BlobKind,
        stored: &[u8],
        uncompressed: Option<usize>,
    ) -> Result<SealedBlob, Error> {
        let uncompressed_length = uncompressed
            .map(u32::try_from)
            .transpose()
            .map_err(|_| Error::new(ErrorKind::Repository, "blob too large"))?;
        Ok(SealedBlob {
            id,
            kind,
            sealed: self.repo.seal(stored)?,
            uncompressed_length,
        })
    }

    fn compressor(&self) -> Result<Option<zstd::bulk::Compressor<'static>>, Error> {
        self.level
            .map(|l| {
                zstd::bulk::Compressor::new(l).map_err(|e| {
                    Error::new(ErrorKind::Repository, format!("cannot start zstd: {e}"))
                })
            })
            .transpose()
    }
}

fn send(blobs: &Sender<SealedBlob>, blob: SealedBlob) -> Result<(), Error> {
    blobs
        .send(blob)
        .map_err(|_| Error::new(ErrorKind::Repository, "the pack writer stopped"))
}

/// Stores one file of the snapshot: an image in chunks, or small bytes as one blob. Returns its
/// tree node and what it took.
fn store_file(
    shared: &Shared<'_>,
    blob_tx: &Sender<SealedBlob>,
    threads: usize,
    (file, f): (usize, &FileSpec<'_>),
    (parent, index): (Option<&Snapshot>, &Index),
    zero_ids: &mut ZeroIds,
    time: &str,
) -> Result<(Node, Stats), Error> {
    match &f.content {
        Content::Image {
            source,
            changed,
            parent_path,
        } => {
            let parent_node = match (&parent, parent_path) {
                (Some(p), Some(pp)) => shared.repo.file_node(p, pp, index)?,
                _ => None,
            };
            backup_image(
                shared,
                blob_tx,
                threads,
                ImageJob {
                    path: &f.path,
                    file,
                    prepared: &shared.prepared,
                    source: *source,
                    changed: *changed,
                    parent: parent_node.as_ref(),
                },
                zero_ids,
            )
            .map(|(content, stats)| (Node::file("", stats.size, content, time), stats))
        }
        Content::Bytes(bytes) => (|| {
            let mut stats = Stats {
                size: bytes.len() as u64,
                chunks: 1,
                ..Stats::default()
            };
            let mut content = Vec::new();
            if !bytes.is_empty() {
                let id = RepoId::of(bytes);
                stats.hashed_chunks = 1;
                if shared.claim(id) {
                    send(
                        blob_tx,
                        shared.seal(id, BlobKind::Data, bytes, &mut shared.compressor()?)?,
                    )?;
                    stats.new_blobs = 1;
                    stats.added_plain = bytes.len() as u64;
                }
                content.push(id);
            }
            Ok((Node::file("", stats.size, content, time), stats))
        })(),
    }
}

/// Writes a snapshot of `files`.
pub fn backup(
    repo: &Repo,
    files: &[FileSpec<'_>],
    options: &BackupOptions,
) -> Result<BackupResult, Error> {
    backup_prepared(repo, files, options, Prepared::default())
}

/// Writes a snapshot of `files` into a repository still being opened: while its key is
/// derived, the chunks the backup reads in any case are read, hashed and compressed (up to
/// [`prefetch::BUDGET`] of them kept in memory). Once it is open, `ready` completes the
/// options (the parent snapshot, typically) and the backup goes on as [`backup`] does.
/// Returns the open repository too, for whatever the caller does next.
pub fn backup_opening(
    opening: crate::Opening,
    files: &[FileSpec<'_>],
    mut options: BackupOptions,
    ready: impl FnOnce(&Repo, &mut BackupOptions) -> Result<(), Error>,
) -> Result<(Repo, BackupResult), Error> {
    let level = options.compression.level();
    let cancel = options.cancel.clone();
    let stop = || opening.is_ready() || cancel.load(Ordering::SeqCst);
    let prepared = prefetch::prefetch(
        files,
        options.threads,
        level,
        options.prefetch_budget,
        &stop,
        &options.progress,
    );
    let repo = opening.wait()?;
    if repo.version() < 2 {
        prepared.drop_compressed();
    }
    ready(&repo, &mut options)?;
    let result = backup_prepared(&repo, files, &options, prepared)?;
    Ok((repo, result))
}

fn backup_prepared(
    repo: &Repo,
    files: &[FileSpec<'_>],
    options: &BackupOptions,
    prepared: Prepared,
) -> Result<BackupResult, Error> {
    // Held until the snapshot is written: restic prune must not remove packs not yet indexed.
    // If it is lost on the way (removed by someone, or not renewed), nothing more is written.
    let session = repo.session(false, RetryLock(options.retry_lock), options.lock_refresh)?;
    let index = repo.index()?;
    let parent: Option<Snapshot> = options
        .parent
        .map(|p| repo.load_file(FileType::Snapshot, &p))
        .transpose()?;
    let level = if repo.version() >= 2 {
        options.compression.level()
    } else {
        None
    };
    let shared = Shared {
        repo,
        session: &session,
        index: &index,
        claimed: Mutex::new(HashSet::new()),
        level,
        prepared,
        abort: AtomicBool::new(false),
        cancel: options.cancel.clone(),
        progress: options.progress.clone(),
    };
    let total: u64 = files
        .iter()
        .map(|f| match &f.content {
            Content::Image { source, .. } => source.size(),
            Content::Bytes(_) => 0,
        })
        .sum();
    options.progress.total.store(total, Ordering::Relaxed);
    let time = jiff::Timestamp::now().to_string();
    let mut per_file = Vec::new();
    let mut root = DirBuilder::default();

    let stopped = || shared.stopped();
    let flow = PackFlow {
        stopped: &stopped,
        abort: &shared.abort,
        rate: None,
        written: None,
    };
    let (data_packs, mut total) =
        std::thread::scope(|s| -> Result<(Vec<IndexPack>, Stats), Error> {
            let (blob_tx, blob_rx) = bounded::<SealedBlob>(options.threads.max(1) * 2);
            let session = shared.session;
            let flow = &flow;
            let packer = s.spawn(move || session.pack(blob_rx, flow));
            let mut zero_ids = ZeroIds::default();
            let mut result: Result<(), Error> = Ok(());
            for (k, f) in files.iter().enumerate() {
                let outcome = store_file(
                    &shared,
                    &blob_tx,
                    options.threads,
                    (k, f),
                    (parent.as_ref(), &index),
                    &mut zero_ids,
                    &time,
                );
                match outcome.and_then(|(node, stats)| root.insert(&f.path, node).map(|()| stats)) {
                    Ok(stats) => per_file.push((f.path.clone(), stats)),
                    Err(e) => {
                        shared.abort.store(true, Ordering::SeqCst);
                        result = Err(e);
                        break;
                    }
                }
            }
            drop(blob_tx);
            let packed = packer
                .join()
                .map_err(|_| Error::new(ErrorKind::Repository, "the pack writer panicked"))?;
            // A pack that could not be written stops everything else; its error is the cause.
            let packed = packed?;
            result?;
            let mut total = Stats::default();
            for (_, s) in &per_file {
                total.add(s);
            }
            total.added_bytes = packed.bytes;
            Ok((packed.packs, total))
        })
        .map_err(|e| {
            if options.cancel.load(Ordering::SeqCst) {
                Error::new(ErrorKind::Cancelled, "the backup was cancelled")
            } else if let Err(lost) = session.lock().check() {
                lost
            } else {
                e
            }
        })?;

    if options.cancel.load(Ordering::SeqCst) {
        return Err(Error::new(ErrorKind::Cancelled, "the backup was cancelled"));
    }
    // Trees, in a pack of their own.
    let mut tree_pack = PackBuilder::with_capacity(64 * 1024);
    let mut compressor = shared.compressor()?;
    let root_id = root.save(
        &time,
        &shared,
        &mut tree_pack,
        &mut compressor,
        &mut HashSet::new(),
    )?;
    let mut packs = data_packs;
    if !tree_pack.is_empty() {
        let (entry, size) = session.store_pack(tree_pack, true)?;
        total.added_bytes += size;
        packs.push(entry);
    }
    session.index(packs)?;
    let summary = summary_of(files, &per_file, &total, (&time, options.parent.is_some()));
    let snapshot = Snapshot {
        time,
        parent: options.parent,
        tree: root_id,
        paths: files.iter().map(|f| f.path.clone()).collect(),
        hostname: options.hostname.clone(),
        username: username(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        tags: options.tags.clone(),
        program_version: Some(format!("backstop {}", env!("CARGO_PKG_VERSION"))),
        original: None,
        summary: Some(summary),
    };
    if options.cancel.load(Ordering::SeqCst) {
        return Err(Error::new(ErrorKind::Cancelled, "the backup was cancelled"));
    }
    let snapshot_id = session.snapshot(&snapshot)?;
    Ok(BackupResult {
        snapshot_id,
        total,
        files: per_file,
    })
}

/// restic's summary of this backup: the files as new (no parent) or changed (else), the
/// blobs and bytes it added, and what it read (`total_bytes_processed`: of an image, what was
/// read; of bytes given, their length).
fn summary_of(
    files: &[FileSpec<'_>],
    per_file: &[(String, Stats)],
    total: &Stats,
    (start, with_parent): (&str, bool),
) -> crate::format::Summary {
    let given: u64 = files
        .iter()
        .map(|f| match &f.content {
            Content::Bytes(b) => b.len() as u64,
            Content::Image { .. } => 0,
        })
        .sum();
    let n = per_file.len() as u64;
    crate::format::Summary {
        backup_start: start.to_string(),
        backup_end: jiff::Timestamp::now().to_string(),
        files_new: if with_parent { 0 } else { n },
        files_changed: if with_parent { n } else { 0 },
        data_blobs: total.new_blobs as u64,
        data_added: total.added_plain,
        data_added_packed: total.added_bytes,
        total_files_processed: n,
        total_bytes_processed: total.bytes_read + given,
        ..crate::format::Summary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::progress_line;
    use std::time::Duration;

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(1 << 30, 4 << 30, Duration::from_secs(10)),
            "1.0 GiB of 4.0 GiB (25 %), 107.4 MB/s, ETA 0:00:30"
        );
        assert_eq!(
            progress_line(0, 512 << 20, Duration::ZERO),
            "0 MiB of 512 MiB (0 %), 0.0 MB/s, ETA -"
        );
        assert_eq!(
            progress_line(3 << 30, 3 << 30, Duration::from_secs(3)),
            "3.0 GiB of 3.0 GiB (100 %), 1073.7 MB/s, ETA -"
        );
        // Hours.
        assert!(
            progress_line(1 << 20, 10 << 30, Duration::from_secs(1)).ends_with("ETA 2:50:39"),
            "{}",
            progress_line(1 << 20, 10 << 30, Duration::from_secs(1))
        );
        assert_eq!(
            progress_line(0, 0, Duration::ZERO),
            "0 MiB of 0 MiB (100 %), 0.0 MB/s, ETA -"
        );
    }
}
