//! Restoring one file of a snapshot (a disk image) to a local file, in parallel and sparse:
//! blobs are read, opened and verified by worker threads and written at their offset; all-zero
//! content is not written (the target is pre-sized, so it reads as zeros). Memory stays at a
//! few blobs per thread whatever the disk size.
//!
//! The target is written as `<target>.backstop-tmp`, synced, and renamed over the target only
//! when every blob was verified; on failure the temporary file is removed.
//!
//! [`Repo::stream_qcow2`] writes the same file as a standalone qcow2 to a pipe (the
//! downloader): the layout comes from the blob list alone (see [`backstop_image::qcow2`]), blobs
//! are read ahead in parallel and written in order, and all-zero blobs are never read.

use crate::format::RepoId;
use crate::lock::RetryLock;
use crate::{BlobLocation, Repo};
use crate::{Error, ErrorKind};
use backstop_image::image::is_zero;
use backstop_image::qcow2;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub size: u64,
    pub blobs: usize,
    /// Blobs whose content is all zero and was left as a hole.
    pub zero_blobs: usize,
    pub bytes_written: u64,
}

fn io(what: String, e: std::io::Error) -> Error {
    Error {
        kind: ErrorKind::Io,
        message: what,
        source: Some(e),
    }
}

impl Repo {
    /// Restores the file at `path` of `snapshot` (id, prefix or `latest`) to `target`.
    pub fn restore_file(
        &self,
        snapshot: &str,
        path: &str,
        target: &Path,
        threads: usize,
        retry_lock: RetryLock,
    ) -> Result<RestoreStats, Error> {
        let _lock = self.lock(false, retry_lock)?;
        let (node, index) = self.image_node(snapshot, path)?;
        let content = node.content.unwrap_or_default();
        let locations = locate(&index, content.iter());
        drop(index);
        // Offsets from the plain blob lengths.
        let mut offsets = Vec::with_capacity(content.len());
        let mut pos = 0u64;
        for id in &content {
            let at = locations.get(id).ok_or_else(|| {
                Error::new(
                    ErrorKind::Repository,
                    format!("blob {id} of {path} is not in any index"),
                )
            })?;
            offsets.push(pos);
            pos += u64::from(plain_len(at)?);
        }
        if pos != node.size {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "{path}: the blobs hold {pos} bytes but the file is {} bytes",
                    node.size
                ),
            ));
        }

        let tmp = PathBuf::from(format!("{}.backstop-tmp", target.display()));
        let file =
            File::create(&tmp).map_err(|e| io(format!("cannot create {}", tmp.display()), e))?;
        let result = self.fill(
            &file,
            &content,
            &offsets,
            &locations,
            node.size,
            threads.max(1),
        );
        let finish = result.and_then(|stats| {
            file.sync_all()
                .and_then(|()| std::fs::rename(&tmp, target))
                .map_err(|e| io(format!("cannot finish {}", target.display()), e))?;
            Ok(stats)
        });
        if finish.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        finish
    }

    fn fill(
        &self,
        file: &File,
        content: &[RepoId],
        offsets: &[u64],
        locations: &HashMap<RepoId, BlobLocation>,
        size: u64,
        threads: usize,
    ) -> Result<RestoreStats, Error> {
        file.set_len(size)
            .map_err(|e| io("cannot size the restored file".into(), e))?;
        // A blob whose id is the hash of zeros of its length is zeros: it is neither read nor
        // written (the pre-sized file reads as zeros there, a hole).
        let mut zero_ids: HashMap<u32, RepoId> = HashMap::new();
        let zero: Vec<bool> = content
            .iter()
            .map(|id| {
                locations
                    .get(id)
                    .and_then(|at| plain_len(at).ok())
                    .is_some_and(|len| is_zero_blob(&mut zero_ids, id, len))
            })
            .collect();
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let stats = Mutex::new(RestoreStats {
            size,
            blobs: content.len(),
            ..RestoreStats::default()
        });
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= content.len() || failed.load(Ordering::SeqCst) {
                            return;
                        }
                        let id = &content[i];
                        if zero[i] {
                            if let Ok(mut st) = stats.lock() {
                                st.zero_blobs += 1;
                            }
                            continue;
                        }
                        let step = locations
                            .get(id)
                            .ok_or_else(|| {
                                Error::new(
                                    ErrorKind::Repository,
                                    format!("blob {id} is not in any index"),
                                )
                            })
                            .and_then(|at| self.read_blob(id, at))
                            .and_then(|data| {
                                if is_zero(&data) {
                                    return Ok((true, 0));
                                }
                                file.write_all_at(&data, offsets[i])
                                    .map_err(|e| io("cannot write the restored file".into(), e))?;
                                write_back(file, offsets[i], data.len());
                                Ok((false, data.len() as u64))
                            });
                        match step {
                            Ok((zero, written)) => {
                                if let Ok(mut st) = stats.lock() {
                                    st.zero_blobs += usize::from(zero);
                                    st.bytes_written += written;
                                }
                            }
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().ok().flatten() {
            return Err(e);
        }
        stats
            .into_inner()
            .map_err(|_| Error::new(ErrorKind::Repository, "a restore thread panicked"))
    }
}

/// Starts writing a just-written range to the disk now, without waiting for it, and lets its
/// pages go once written. The file is synced before it is renamed into place; without this,
/// nothing reaches the disk until that sync (the kernel holds gigabytes of dirty pages), so
/// the whole restore would be written back at the end, serially. Measured on a 1 GiB image:
/// see docs/performance.md. (`POSIX_FADV_DONTNEED` on dirty pages starts their
/// write-back on Linux; it never drops data.)
fn write_back(file: &File, offset: u64, len: usize) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len as u64),
        rustix::fs::Advice::DontNeed,
    );
}

/// What [`Repo::stream_qcow2`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// The disk's size.
    pub size: u64,
    pub blobs: usize,
    /// Blobs read from the repository (the others are all zero).
    pub blobs_read: usize,
    /// Bytes of the qcow2 file.
    pub qcow2_bytes: u64,
}

impl Repo {
    /// Writes the file at `path` of `snapshot` to `out` as a standalone qcow2 image.
    pub fn stream_qcow2(
        &self,
        snapshot: &str,
        path: &str,
        out: &mut impl std::io::Write,
        threads: usize,
        retry_lock: RetryLock,
    ) -> Result<StreamStats, Error> {
        let _lock = self.lock(false, retry_lock)?;
        let (node, index) = self.image_node(snapshot, path)?;
        let content = node.content.unwrap_or_default();
        // Lengths from the index; a blob whose id is the hash of zeros is zeros.
        let mut zero_ids: HashMap<u32, RepoId> = HashMap::new();
        let mut pieces = Vec::with_capacity(content.len());
        let mut pos = 0u64;
        for id in &content {
            let len = index.data_len(id).ok_or_else(|| {
                Error::new(
                    ErrorKind::Repository,
                    format!("blob {id} of {path} is not in any index"),
                )
            })?;
            let zero = is_zero_blob(&mut zero_ids, id, len);
            pieces.push((pos, len, zero));
            pos += u64::from(len);
        }
        if pos != node.size {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "{path}: the blobs hold {pos} bytes but the file is {} bytes",
                    node.size
                ),
            ));
        }
        backstop_image::image::check_size(path, node.size)?;
        let mut alloc = qcow2::Allocation::new(node.size);
        let mut to_read = Vec::new();
        for (i, &(at, len, zero)) in pieces.iter().enumerate() {
            if !zero {
                alloc.mark(at, u64::from(len));
                to_read.push(i);
            }
        }
        let locations = locate(&index, to_read.iter().map(|&i| &content[i]));
        drop(index);
        let layout = qcow2::Layout::new(&alloc);
        let write_err = |e: std::io::Error| io("cannot write the qcow2 image".into(), e);
        layout.write_metadata(&alloc, out).map_err(write_err)?;
        let mut writer = qcow2::DataWriter::new(&alloc, &mut *out);
        let mut next_piece = 0usize;
        for_each_ordered(
            to_read.len(),
            threads.max(1),
            |n| {
                let id = &content[to_read[n]];
                let at = locations.get(id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Repository,
                        format!("blob {id} is not in any index"),
                    )
                })?;
                self.read_blob(id, at)
            },
            |n, data| {
                let i = to_read[n];
                // The zero blobs before this one.
                while next_piece < i {
                    writer
                        .zeros(u64::from(pieces[next_piece].1))
                        .map_err(write_err)?;
                    next_piece += 1;
                }
                writer.data(&data).map_err(write_err)?;
                next_piece += 1;
                Ok(())
            },
        )?;
        while next_piece < pieces.len() {
            writer
                .zeros(u64::from(pieces[next_piece].1))
                .map_err(write_err)?;
            next_piece += 1;
        }
        let data = writer.finish().map_err(write_err)?;
        debug_assert_eq!(data, layout.data_clusters * qcow2::CLUSTER);
        Ok(StreamStats {
            size: node.size,
            blobs: content.len(),
            blobs_read: to_read.len(),
            qcow2_bytes: layout.file_size(),
        })
    }
}

/// Runs `fetch(0..n)` on `threads` workers, at most a few items ahead of the consumer, and
/// hands the results to `consume` in order, on the calling thread. The first error stops all.
pub(crate) fn for_each_ordered<T: Send>(
    n: usize,
    threads: usize,
    fetch: impl Fn(usize) -> Result<T, Error> + Sync,
    mut consume: impl FnMut(usize, T) -> Result<(), Error>,
) -> Result<(), Error> {
    struct State<T> {
        ready: HashMap<usize, Result<T, Error>>,
        consumed: usize,
        stop: bool,
    }
    let window = threads * 2 + 2;
    let next = AtomicUsize::new(0);
    let state = Mutex::new(State {
        ready: HashMap::new(),
        consumed: 0,
        stop: false,
    });
    let changed = Condvar::new();
    let poisoned = || Error::new(ErrorKind::Repository, "a reader thread panicked");
    std::thread::scope(|s| {
        for _ in 0..threads.min(n) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    // Wait until the consumer is close enough.
                    {
                        let Ok(mut st) = state.lock() else { return };
                        while !st.stop && i >= st.consumed + window {
                            st = match changed.wait(st) {
                                Ok(g) => g,
                                Err(_) => return,
                            };
                        }
                        if st.stop {
                            return;
                        }
                    }
                    // A panic becomes this item's error, so the consumer never waits forever.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch(i)))
                        .unwrap_or_else(|_| Err(poisoned()));
                    let Ok(mut st) = state.lock() else { return };
                    st.ready.insert(i, r);
                    changed.notify_all();
                }
            });
        }
        let result = (|| {
            for i in 0..n {
                let item = {
                    let mut st = state.lock().map_err(|_| poisoned())?;
                    loop {
                        if let Some(r) = st.ready.remove(&i) {
                            break r;
                        }
                        st = changed.wait(st).map_err(|_| poisoned())?;
                    }
                };
                consume(i, item?)?;
                let mut st = state.lock().map_err(|_| poisoned())?;
                st.consumed = i + 1;
                changed.notify_all();
            }
            Ok(())
        })();
        if let Ok(mut st) = state.lock() {
            st.stop = true;
        }
        changed.notify_all();
        result
    })
}

impl Repo {
    /// The file node at `path` of `snapshot`, and the index it was read with.
    pub(crate) fn image_node(
        &self,
        snapshot: &str,
        path: &str,
    ) -> Result<(crate::format::Node, crate::Index), Error> {
        let (_, snap) = self.find_snapshot(snapshot)?;
        let index = self.index()?;
        let node = self.file_node(&snap, path, &index)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!("no file {path} in snapshot {snapshot}"),
            )
        })?;
        Ok((node, index))
    }
}

/// Where each of `ids` is (those the index names).
fn locate<'a>(
    index: &crate::Index,
    ids: impl Iterator<Item = &'a RepoId>,
) -> HashMap<RepoId, BlobLocation> {
    ids.filter_map(|id| index.data(id).map(|at| (*id, at)))
        .collect()
}

/// Whether blob `id` of plain length `len` is zeros: its id is the hash of that many zeros.
/// The hashes are kept per length; a length past the largest blob is never zeros (the index
/// states it, and a hostile one must not make this allocate gigabytes).
pub(crate) fn is_zero_blob(known: &mut HashMap<u32, RepoId>, id: &RepoId, len: u32) -> bool {
    if u64::from(len) > crate::decompress::MAX_BLOB_SIZE {
        return false;
    }
    *known
        .entry(len)
        .or_insert_with(|| RepoId::of(&vec![0u8; len as usize]))
        == *id
}

fn plain_len(at: &BlobLocation) -> Result<u32, Error> {
    Ok(at
        .uncompressed_length
        .unwrap_or(at.length.saturating_sub(crate::crypto::OVERHEAD as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blobs_are_known_by_id_and_a_hostile_length_allocates_nothing() {
        let mut known = HashMap::new();
        let zeros = RepoId::of(&[0u8; 4096]);
        assert!(is_zero_blob(&mut known, &zeros, 4096));
        assert!(!is_zero_blob(&mut known, &zeros, 4095));
        assert!(!is_zero_blob(&mut known, &RepoId::of(b"data"), 4096));
        // Past the largest blob: no hash of gigabytes of zeros is made or kept.
        assert!(!is_zero_blob(&mut known, &zeros, u32::MAX));
        assert_eq!(known.len(), 2);
    }
}
