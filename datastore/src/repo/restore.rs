//! Restoring one file of a snapshot (a disk image) to a local file, in parallel and sparse:
//! blobs are read, opened and verified by worker threads and written at their offset; all-zero
//! content is not written (the target is pre-sized, so it reads as zeros). Memory stays at a
//! few blobs per thread whatever the disk size.
//!
//! The target is written as `<target>.backstop-tmp`, synced, and renamed over the target only
//! when every blob was verified; on failure the temporary file is removed.

use crate::repo::format::RepoId;
use crate::repo::image::is_zero;
use crate::repo::lock::RetryLock;
use crate::repo::{BlobLocation, Repo};
use crate::{Error, ErrorKind};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
        let (_, snap) = self.find_snapshot(snapshot)?;
        let known = self.known_blobs()?;
        let node = self.file_node(&snap, path, &known)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!("no file {path} in snapshot {snapshot}"),
            )
        })?;
        let content = node.content.unwrap_or_default();
        let wanted: Vec<RepoId> = content
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let locations = self.locate_data(&wanted)?;
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
                                    .map(|()| (false, data.len() as u64))
                                    .map_err(|e| io("cannot write the restored file".into(), e))
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

fn plain_len(at: &BlobLocation) -> Result<u32, Error> {
    Ok(at.uncompressed_length.unwrap_or(
        at.length
            .saturating_sub(crate::repo::crypto::OVERHEAD as u32),
    ))
}
