//! A local cache of a remote repository's metadata, as restic keeps one: index and snapshot
//! files, and the packs that hold tree blobs, stored by id under a local directory (one per
//! repository location). Every file in a repository is named by the SHA-256 of its content, so
//! an entry is checked against its name before it is used; one that does not match is removed
//! and fetched again. Data blobs are never cached. A stale or damaged cache costs time, never
//! correctness. Layout and rules: docs/repository-layout.md ("Metadata cache").

use crate::RepoId;
use crate::{LockEntry, Storage, dir_name};
use bytes::Bytes;
use rustic_core::{BytesList, FileType, Id, ReadBackend, RusticResult, WriteBackend};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Packs larger than this are not cached (tree packs are a few MiB at most); only the ranges
/// asked for are read from them.
const MAX_CACHED_PACK: usize = 64 << 20;

/// What the cache did, for tests and reports.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries whose content did not match their name: removed and fetched again.
    pub damaged: AtomicU64,
}

/// A [`Storage`] that keeps index, snapshot and tree-pack files of `inner` in a local
/// directory.
pub struct CachedStorage {
    inner: std::sync::Arc<dyn Storage>,
    dir: PathBuf,
    /// Packs whose cached copy was checked against its name in this process.
    checked_packs: Mutex<HashSet<Id>>,
    /// Packs this process will not keep (larger than [`MAX_CACHED_PACK`], or not matching
    /// their name when fetched): only the ranges asked for are read from them.
    range_only: Mutex<HashSet<Id>>,
    pub stats: CacheStats,
}

impl std::fmt::Debug for CachedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStorage")
            .field("location", &self.inner.location())
            .field("dir", &self.dir)
            .finish()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn matches_name(id: &Id, data: &[u8]) -> bool {
    RepoId::from_rustic(id).0 == sha256(data)
}

impl CachedStorage {
    /// The cache of `inner` under `base`, in a directory named for the repository's location.
    pub fn new(inner: std::sync::Arc<dyn Storage>, base: &Path) -> std::io::Result<Self> {
        let name = hex::encode(&sha256(inner.location().as_bytes())[..16]);
        let dir = base.join(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(CachedStorage {
            inner,
            dir,
            checked_packs: Mutex::new(HashSet::new()),
            range_only: Mutex::new(HashSet::new()),
            stats: CacheStats::default(),
        })
    }

    /// Where this repository's entries are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, tpe: FileType, id: &Id) -> PathBuf {
        let hex = id.to_hex();
        let hex = hex.as_str();
        self.dir.join(dir_name(tpe)).join(&hex[..2]).join(hex)
    }

    fn cached(tpe: FileType, cacheable: bool) -> bool {
        matches!(tpe, FileType::Index | FileType::Snapshot) || (tpe == FileType::Pack && cacheable)
    }

    /// Stores an entry: a temporary file renamed into place. Failures are ignored (the cache
    /// is only ever a shortcut).
    fn store(&self, tpe: FileType, id: &Id, data: &[u8]) {
        let path = self.path(tpe, id);
        let Some(dir) = path.parent() else { return };
        if fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .is_err()
        {
            return;
        }
        let mut random = [0u8; 6];
        if getrandom::fill(&mut random).is_err() {
            return;
        }
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            id.to_hex().as_str(),
            hex::encode(random)
        ));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    fn forget(&self, tpe: FileType, id: &Id) {
        let _ = fs::remove_file(self.path(tpe, id));
    }

    /// A whole cached file that matches its name; a damaged one is removed.
    fn load(&self, tpe: FileType, id: &Id) -> Option<Bytes> {
        let data = fs::read(self.path(tpe, id)).ok()?;
        if matches_name(id, &data) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            Some(Bytes::from(data))
        } else {
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            self.forget(tpe, id);
            None
        }
    }

    /// A range of a cached pack, the whole of which was checked against its name once.
    fn load_range(&self, id: &Id, offset: u32, length: u32) -> Option<Bytes> {
        let checked = self.checked_packs.lock().ok()?.contains(id);
        if !checked {
            let whole = self.load(FileType::Pack, id)?;
            self.checked_packs.lock().ok()?.insert(*id);
            let range = offset as usize..offset as usize + length as usize;
            return whole.get(range).map(Bytes::copy_from_slice);
        }
        let mut f = fs::File::open(self.path(FileType::Pack, id)).ok()?;
        let mut buf = vec![0u8; length as usize];
        f.seek(SeekFrom::Start(u64::from(offset))).ok()?;
        f.read_exact(&mut buf).ok()?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(Bytes::from(buf))
    }

    fn is_range_only(&self, id: &Id) -> bool {
        self.range_only.lock().is_ok_and(|r| r.contains(id))
    }

    /// Fetches a pack whole to keep it, when the storage says it is small enough; stores it
    /// when it matches its name. None (and the pack is read by ranges from then on) for a
    /// pack too large to keep, one that does not match its name, or a read that failed.
    fn fetch_pack(&self, id: &Id) -> Option<Bytes> {
        let whole = (|| {
            let size = self
                .inner
                .file_size(FileType::Pack, &RepoId::from_rustic(id))
                .ok()?;
            if size > MAX_CACHED_PACK as u64 {
                return None;
            }
            // Exactly the size just given: a storage that answers with more is not believed.
            let whole = self
                .inner
                .read_partial(FileType::Pack, id, true, 0, u32::try_from(size).ok()?)
                .ok()?;
            matches_name(id, &whole).then_some(whole)
        })();
        match &whole {
            Some(data) => {
                self.store(FileType::Pack, id, data);
                if let Ok(mut c) = self.checked_packs.lock() {
                    c.insert(*id);
                }
            }
            None => {
                if let Ok(mut r) = self.range_only.lock() {
                    r.insert(*id);
                }
            }
        }
        whole
    }

    /// Removes entries of `tpe` the repository no longer lists (forgotten snapshots, indexes
    /// replaced by a prune).
    fn prune(&self, tpe: FileType, listed: &[(Id, u32)]) {
        let keep: HashSet<String> = listed
            .iter()
            .map(|(id, _)| id.to_hex().to_string())
            .collect();
        let Ok(subdirs) = fs::read_dir(self.dir.join(dir_name(tpe))) else {
            return;
        };
        for sub in subdirs.flatten() {
            let Ok(entries) = fs::read_dir(sub.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

impl ReadBackend for CachedStorage {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        let listed = self.inner.list_with_size(tpe)?;
        if matches!(tpe, FileType::Index | FileType::Snapshot | FileType::Pack) {
            self.prune(tpe, &listed);
        }
        Ok(listed)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        if !Self::cached(tpe, false) {
            return self.inner.read_full(tpe, id);
        }
        if let Some(data) = self.load(tpe, id) {
            return Ok(data);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.inner.read_full(tpe, id)?;
        if matches_name(id, &data) {
            self.store(tpe, id, &data);
        }
        Ok(data)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        if !Self::cached(tpe, cacheable) {
            return self.inner.read_partial(tpe, id, cacheable, offset, length);
        }
        if tpe != FileType::Pack {
            let whole = self.read_full(tpe, id)?;
            let range = offset as usize..offset as usize + length as usize;
            if let Some(part) = whole.get(range) {
                return Ok(Bytes::copy_from_slice(part));
            }
            return self.inner.read_partial(tpe, id, cacheable, offset, length);
        }
        if let Some(part) = self.load_range(id, offset, length) {
            return Ok(part);
        }
        if self.is_range_only(id) {
            return self.inner.read_partial(tpe, id, cacheable, offset, length);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let range = offset as usize..offset as usize + length as usize;
        match self.fetch_pack(id).as_ref().and_then(|w| w.get(range)) {
            Some(part) => Ok(Bytes::copy_from_slice(part)),
            // Not kept, or out of range (the storage says so in its own words).
            None => self.inner.read_partial(tpe, id, cacheable, offset, length),
        }
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }

    fn needs_warm_up(&self) -> bool {
        self.inner.needs_warm_up()
    }

    fn warm_up(&self, tpe: FileType, id: &Id) -> RusticResult<()> {
        self.inner.warm_up(tpe, id)
    }
}

impl WriteBackend for CachedStorage {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        buf: BytesList,
    ) -> RusticResult<()> {
        let keep = Self::cached(tpe, cacheable) && buf.size() <= MAX_CACHED_PACK;
        // Cheap copies: the parts are reference-counted.
        let parts = keep.then(|| buf.slice().to_vec());
        self.inner.write_bytes(tpe, id, cacheable, buf)?;
        if let Some(parts) = parts {
            self.store(tpe, id, &parts.concat());
        }
        Ok(())
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.forget(tpe, id);
        self.inner.remove(tpe, id, cacheable)
    }
}

impl Storage for CachedStorage {
    fn list_locks(&self) -> Result<Vec<LockEntry>, crate::Error> {
        self.inner.list_locks()
    }

    fn read_lock(&self, id: &RepoId, cap: u64) -> Result<Vec<u8>, crate::Error> {
        self.inner.read_lock(id, cap)
    }

    fn write_lock(&self, id: &RepoId, sealed: &[u8]) -> Result<Option<SystemTime>, crate::Error> {
        self.inner.write_lock(id, sealed)
    }

    fn remove_lock(&self, id: &RepoId) -> Result<(), crate::Error> {
        self.inner.remove_lock(id)
    }

    fn file_size(&self, tpe: FileType, id: &RepoId) -> Result<u64, crate::Error> {
        self.inner.file_size(tpe, id)
    }

    fn sync(&self) -> Result<(), crate::Error> {
        self.inner.sync()
    }

    fn lock_settle(&self) -> std::time::Duration {
        self.inner.lock_settle()
    }

    fn remove_temp_files(&self) -> Result<usize, crate::Error> {
        self.inner.remove_temp_files()
    }

    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }

    fn refresh_retention(&self) -> Result<usize, crate::Error> {
        self.inner.refresh_retention()
    }
}

/// The cache directory a command uses when none is configured: `$XDG_CACHE_HOME/backstop`,
/// else `$HOME/.cache/backstop`; None when neither is set to an absolute path.
pub fn default_dir() -> Option<PathBuf> {
    let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(abs)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(abs)
                .map(|h| h.join(".cache"))
        })
        .map(|d| d.join("backstop"))
}
