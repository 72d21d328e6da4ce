//! Work done while the repository is still being opened (its key derived, which takes a
//! large fraction of a second by design): the chunks a backup will read whatever the parent
//! and the index say (every allocated chunk of a full backup, every changed chunk of an
//! incremental) are read, recognised as zeros or hashed, and compressed, and kept in memory, up
//! to a budget, for the backup to seal once the key is there. Nothing here needs the key.
//!
//! Best effort: a failure (an unreadable range, say) only stops it; the backup then reads
//! those chunks itself and reports the failure. Sources that hold only changed clusters (a
//! stock increment) are left alone: their chunks are completed from the parent's blobs.

use super::{Content, FileSpec, Progress};
use crate::format::RepoId;
use backstop_image::image::{self, ChunkPlan};
use crossbeam_channel::bounded;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How much compressed data may wait for the key (about what one core turns out while the
/// other derives it).
pub const BUDGET: u64 = 96 << 20;

/// A chunk read and made ready before the key was known.
pub(super) struct PreparedChunk {
    /// The chunk's length.
    pub len: usize,
    pub content: Ready,
}

pub(super) enum Ready {
    Zero,
    Data {
        id: RepoId,
        /// The compressed bytes when compression made them smaller, else the chunk itself.
        stored: Vec<u8>,
        compressed: bool,
    },
}

/// Prepared chunks by (file index, chunk index).
#[derive(Default)]
pub(super) struct Prepared(Mutex<HashMap<(usize, usize), PreparedChunk>>);

impl Prepared {
    pub(super) fn take(&self, file: usize, chunk: usize) -> Option<PreparedChunk> {
        self.0.lock().ok()?.remove(&(file, chunk))
    }

    /// Drops what was compressed: the repository turned out to be one without compression
    /// (version 1).
    pub(super) fn drop_compressed(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, c| {
                !matches!(
                    c.content,
                    Ready::Data {
                        compressed: true,
                        ..
                    }
                )
            });
        }
    }

    fn insert(&self, file: usize, chunk: usize, c: PreparedChunk) {
        if let Ok(mut m) = self.0.lock() {
            m.insert((file, chunk), c);
        }
    }
}

/// The chunks of each image that the backup will read in any case, in file and chunk order.
fn certain_reads(files: &[FileSpec<'_>]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (f, spec) in files.iter().enumerate() {
        let Content::Image {
            source, changed, ..
        } = &spec.content
        else {
            continue;
        };
        let size = source.size();
        if !source.complete() || image::check_size(&spec.path, size).is_err() {
            continue;
        }
        let Ok(data) = source.data_extents() else {
            continue;
        };
        // With every parent chunk taken as reusable, what is still read is what is read in
        // any case.
        let plan = image::plan(size, data.as_deref(), *changed, |_| true);
        out.extend(
            plan.iter()
                .enumerate()
                .filter(|(_, p)| **p == ChunkPlan::Read)
                .map(|(i, _)| (f, i)),
        );
    }
    out
}

/// `reads` (file, chunk) in order, grouped by file.
fn group_by_file(reads: &[(usize, usize)]) -> Vec<(usize, Vec<usize>)> {
    let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
    for &(f, i) in reads {
        match out.last_mut() {
            Some((last, list)) if *last == f => list.push(i),
            _ => out.push((f, vec![i])),
        }
    }
    out
}

/// Prepares chunks until `stop()` says the repository is open, the budget is spent, or every
/// certain read is done. `level`: the zstd level (None: no compression).
pub(super) fn prefetch(
    files: &[FileSpec<'_>],
    threads: usize,
    level: Option<i32>,
    budget: u64,
    stop: &(dyn Fn() -> bool + Sync),
    progress: &Progress,
) -> Prepared {
    let prepared = Prepared::default();
    let reads = certain_reads(files);
    if reads.is_empty() || budget == 0 || stop() {
        return prepared;
    }
    let used = AtomicU64::new(0);
    let threads = threads.max(1);
    let (work_tx, work_rx) = bounded::<(usize, usize, Vec<u8>)>(threads * 2);
    std::thread::scope(|s| {
        let used = &used;
        s.spawn(move || {
            // Per file: its chunk list, for the read-ahead hints.
            let chunks: Vec<(usize, Vec<usize>)> = group_by_file(&reads);
            for (f, list) in &chunks {
                let Content::Image { source, .. } = &files[*f].content else {
                    continue;
                };
                for (k, &i) in list.iter().enumerate() {
                    if stop() || used.load(Ordering::Relaxed) >= budget {
                        return;
                    }
                    image::read_ahead(*source, list, k);
                    let r = image::chunk_range(i, source.size());
                    let mut buf = vec![0u8; r.length as usize];
                    if source.read_at(&mut buf, r.offset).is_err() {
                        return;
                    }
                    // Read from the source: counted now, not again when the backup takes it.
                    progress.read.fetch_add(r.length, Ordering::Relaxed);
                    if work_tx.send((*f, i, buf)).is_err() {
                        return;
                    }
                }
            }
        });
        for _ in 0..threads {
            let work_rx = work_rx.clone();
            let prepared = &prepared;
            s.spawn(move || {
                let mut zstd = match level.map(zstd::bulk::Compressor::new).transpose() {
                    Ok(z) => z,
                    Err(_) => return,
                };
                for (f, i, buf) in work_rx {
                    let len = buf.len();
                    let content = if image::is_zero(&buf) {
                        Ready::Zero
                    } else {
                        let id = RepoId::of(&buf);
                        let packed = zstd.as_mut().and_then(|z| z.compress(&buf).ok());
                        match packed {
                            Some(c) if c.len() < len => Ready::Data {
                                id,
                                stored: c,
                                compressed: true,
                            },
                            _ => Ready::Data {
                                id,
                                stored: buf,
                                compressed: false,
                            },
                        }
                    };
                    if let Ready::Data { stored, .. } = &content {
                        used.fetch_add(stored.len() as u64, Ordering::Relaxed);
                    }
                    prepared.insert(f, i, PreparedChunk { len, content });
                }
            });
        }
    });
    prepared
}
