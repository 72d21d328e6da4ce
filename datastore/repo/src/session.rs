//! A write session: what every writer of a repository (a backup, a copy, a heal) goes
//! through. It holds the repository lock, owns the pack pipeline, and is the one place the
//! commit order is kept (`docs/architecture.md`, "The commit order"):
//!
//! 1. packs are written ([`Session::pack`], [`Session::store_pack`]);
//! 2. they are durable and the lock still stands, then an index file names them
//!    ([`Session::index`]);
//! 3. the index is durable and the lock still stands, then the snapshot makes it all count,
//!    and it is durable before its id is handed back ([`Session::snapshot`]).
//!
//! A crash or a lost lock before a step leaves only files nothing references yet (packs no
//! index names, index entries no snapshot needs), which restic reports and prune removes;
//! every earlier snapshot stays whole. Replacing index files (a heal) follows the same rule:
//! the new files are durable before the old ones and their packs go ([`Session::replace`]).

use crate::format::{BlobKind, IndexFile, IndexPack, RepoId};
use crate::lock::{Lock, RetryLock};
use crate::pack::{PackBuilder, SealedBlob};
use crate::{Error, ErrorKind, Repo, rustic_error};
use backstop_storage::bandwidth::Bandwidth;
use crossbeam_channel::{Receiver, bounded};
use rustic_core::FileType;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Packs are closed once they reach this size (restic's default target).
pub const PACK_TARGET: usize = 16 << 20;

/// Room for one more blob past the target (a data blob is at most a chunk, 1 MiB, sealed).
const PACK_SLACK: usize = (1 << 20) + 4096;

/// How a pack pipeline runs beside whoever feeds it blobs.
pub struct PackFlow<'a> {
    /// Whether to stop: blobs still coming are then taken and dropped (so no feeder blocks),
    /// and no more packs are written.
    pub stopped: &'a (dyn Fn() -> bool + Sync),
    /// Set when a pack cannot be written, so the feeders stop too.
    pub abort: &'a AtomicBool,
    /// A limit on the bytes written, shared with whoever else holds it.
    pub rate: Option<&'a Bandwidth>,
    /// Counts the bytes of packs written, as they are written (for progress lines).
    pub written: Option<&'a AtomicU64>,
}

/// What a pack pipeline wrote.
#[derive(Debug, Default)]
pub struct Packed {
    /// The index entries of the packs written, for [`Session::index`].
    pub packs: Vec<IndexPack>,
    /// Bytes of packs written.
    pub bytes: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
}

impl std::fmt::Debug for PackFlow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackFlow")
            .field("rate", &self.rate.is_some())
            .finish()
    }
}

/// A writer's session with a repository, under its lock; see the module's text.
pub struct Session<'r> {
    repo: &'r Repo,
    lock: Lock,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("repo", &self.repo.location())
            .finish()
    }
}

impl Repo {
    /// Starts a write session: takes the lock (`exclusive` for a writer that deletes),
    /// waiting up to `retry` for a conflicting one to go, renewed every `refresh`.
    pub fn session(
        &self,
        exclusive: bool,
        retry: RetryLock,
        refresh: Duration,
    ) -> Result<Session<'_>, Error> {
        let lock = self.lock_refreshed(exclusive, retry, refresh)?;
        self.refresh_retention()?;
        Ok(Session { repo: self, lock })
    }
}

impl<'r> Session<'r> {
    pub fn repo(&self) -> &'r Repo {
        self.repo
    }

    /// The lock the session holds (a writer's threads stop when it is lost).
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Seals `pack` with the repository's key and writes it (`trees`: a pack of tree blobs,
    /// which a metadata cache keeps); its index entry and its size. The one place packs are
    /// written.
    pub fn store_pack(&self, pack: PackBuilder, trees: bool) -> Result<(IndexPack, u64), Error> {
        let finished = pack
            .finish(self.repo.crypto())
            .map_err(|e| Error::new(ErrorKind::Repository, e.to_string()))?;
        let size = finished.bytes.len() as u64;
        self.repo
            .backend()
            .write_bytes(
                FileType::Pack,
                &finished.id.to_rustic(),
                trees,
                finished.bytes.into(),
            )
            .map_err(|e| rustic_error(&format!("cannot write pack {}", finished.id), &e))?;
        Ok((finished.index, size))
    }

    /// The pack pipeline: takes the blobs `blobs` brings until every sender is gone, fills
    /// one pack per blob kind up to [`PACK_TARGET`], and writes full ones on as many threads
    /// as the storage takes at once (data and tree blobs never share a pack). Returns the
    /// packs' index entries, for [`Session::index`] once the caller has what it needs.
    pub fn pack(&self, blobs: Receiver<SealedBlob>, flow: &PackFlow<'_>) -> Result<Packed, Error> {
        let done: Mutex<(Packed, Option<Error>)> = Mutex::new((Packed::default(), None));
        let writers = self.repo.backend().write_concurrency().max(1);
        std::thread::scope(|s| {
            let (full_tx, full_rx) = bounded::<(PackBuilder, bool)>(1);
            for _ in 0..writers {
                let (full_rx, done) = (full_rx.clone(), &done);
                s.spawn(move || {
                    for (pack, trees) in full_rx {
                        if (flow.stopped)() {
                            continue;
                        }
                        if let Some(limit) = flow.rate {
                            limit.take(pack.len());
                        }
                        let stored = self.store_pack(pack, trees);
                        let Ok(mut d) = done.lock() else { return };
                        match stored {
                            Ok((index, size)) => {
                                if let Some(written) = flow.written {
                                    written.fetch_add(size, Ordering::Relaxed);
                                }
                                d.0.packs.push(index);
                                d.0.bytes += size;
                            }
                            Err(e) => {
                                flow.abort.store(true, Ordering::SeqCst);
                                d.1.get_or_insert(e);
                            }
                        }
                    }
                });
            }
            drop(full_rx);
            let (mut data, mut trees) = (PackBuilder::default(), PackBuilder::default());
            let (mut data_blobs, mut tree_blobs) = (0, 0);
            for blob in blobs {
                if (flow.stopped)() {
                    continue; // keep draining so no sender blocks
                }
                let is_tree = blob.kind == BlobKind::Tree;
                let pack = if is_tree {
                    tree_blobs += 1;
                    &mut trees
                } else {
                    data_blobs += 1;
                    if data.is_empty() {
                        data = PackBuilder::with_capacity(PACK_TARGET + PACK_SLACK);
                    }
                    &mut data
                };
                pack.add(blob);
                if pack.len() >= PACK_TARGET {
                    let full = std::mem::take(pack);
                    if full_tx.send((full, is_tree)).is_err() {
                        break;
                    }
                }
            }
            for (pack, is_tree) in [(data, false), (trees, true)] {
                if !pack.is_empty() && !(flow.stopped)() {
                    let _ = full_tx.send((pack, is_tree));
                }
            }
            if let Ok(mut d) = done.lock() {
                d.0.data_blobs = data_blobs;
                d.0.tree_blobs = tree_blobs;
            }
        });
        let (packed, error) = done
            .into_inner()
            .map_err(|_| Error::new(ErrorKind::Repository, "a pack writer panicked"))?;
        match error {
            Some(e) => Err(e),
            None => Ok(packed),
        }
    }

    /// Step 2 of the commit order: the packs written so far are durable and the lock still
    /// stands, then index files name `packs`.
    pub fn index(&self, packs: Vec<IndexPack>) -> Result<(), Error> {
        self.durable_under_lock()?;
        crate::index::write(self.repo, packs)
    }

    /// Step 3: the index is durable and the lock still stands, then the snapshot is written;
    /// it is durable before its id is returned.
    pub fn snapshot<T: Serialize>(&self, snapshot: &T) -> Result<RepoId, Error> {
        self.durable_under_lock()?;
        let id = self.repo.save_file(FileType::Snapshot, snapshot)?;
        self.repo.backend().sync()?;
        Ok(id)
    }

    /// Makes what was written durable: the end of a session that writes no snapshot (a
    /// copy that only brought back what a snapshot lacked).
    pub fn finish(&self) -> Result<(), Error> {
        Ok(self.repo.backend().sync()?)
    }

    /// Replaces index files: `new` written (once the packs they name are durable), then,
    /// once those are durable, the `old` index files removed and then `doomed` packs. Under
    /// an exclusive session (a heal): no reader may be between an old index and its packs.
    pub fn replace(
        &self,
        new: &[IndexFile],
        old: &[RepoId],
        doomed: &[RepoId],
    ) -> Result<(), Error> {
        self.durable_under_lock()?;
        for file in new {
            self.repo.save_file(FileType::Index, file)?;
        }
        self.durable_under_lock()?;
        let backend = self.repo.backend();
        for id in old {
            backend
                .remove(FileType::Index, &id.to_rustic(), true)
                .map_err(|e| rustic_error(&format!("cannot remove index {id}"), &e))?;
        }
        for id in doomed {
            backend
                .remove(FileType::Pack, &id.to_rustic(), false)
                .map_err(|e| rustic_error(&format!("cannot remove pack {id}"), &e))?;
        }
        Ok(backend.sync()?)
    }

    fn durable_under_lock(&self) -> Result<(), Error> {
        self.repo.backend().sync()?;
        self.lock.check()
    }
}
