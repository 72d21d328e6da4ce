//! # backstop-storage: where a repository's files are kept
//!
//! The transports under the repository format: a local path ([`local`]), SFTP ([`sftp`]) and S3
//! ([`s3`]), the metadata cache in front of a remote one ([`cache`]) and the shared bandwidth
//! limit ([`bandwidth`]). Each stores restic's files by type and id (rustic_core's backend
//! traits) plus what backstop needs beyond them ([`Storage`]: the `locks/` directory, file
//! sizes, durability). It knows nothing of the files' content: no keys, no packs, no index.

pub mod bandwidth;
pub mod cache;
mod error;
pub mod local;
mod open;
pub mod s3;
pub mod sftp;

pub use error::Error;
pub use open::{Connected, S3Keys, StorageSpec, Transport, Where, connect, open};
/// The kinds of repository files, as rustic_core names them.
pub use rustic_core::FileType;

use rustic_core::{Id, WriteBackend};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

/// A repository object id: the SHA-256 of a blob's plain content, or of a file's stored bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RepoId(pub [u8; 32]);

impl RepoId {
    pub fn of(data: &[u8]) -> RepoId {
        use sha2::Digest;
        RepoId(sha2::Sha256::digest(data).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(text: &str) -> Option<RepoId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(RepoId(out))
    }

    /// rustic_core's id for the same object.
    pub fn to_rustic(self) -> rustic_core::Id {
        rustic_core::Id::new(self.0)
    }

    pub fn from_rustic(id: &rustic_core::Id) -> RepoId {
        // rustic_core exposes ids only as hex.
        RepoId::parse(id.to_hex().as_str()).unwrap_or_default()
    }
}

impl fmt::Debug for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for RepoId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for RepoId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RepoId::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("bad id {text:?}")))
    }
}

/// A lock file as the storage lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEntry {
    pub id: RepoId,
    pub size: u64,
    /// When it was written, on the storage's own clock (None where the storage keeps none).
    pub modified: Option<std::time::SystemTime>,
}

/// The largest file of each kind that is read whole into memory: a planted multi-gigabyte
/// file must be refused, not read. restic's own files stay far below (an index file holds at
/// most some 50,000 blobs, a few MiB; keys and the config are a few hundred bytes).
pub fn max_file_size(tpe: FileType) -> u64 {
    match tpe {
        FileType::Config | FileType::Key => 1 << 20,
        FileType::Snapshot | FileType::Index => 64 << 20,
        // Packs are read whole only by check --read-data; restic's largest are 128 MiB.
        FileType::Pack => 4 << 30,
    }
}

/// The error for a file larger than [`max_file_size`].
pub fn too_large(what: &str, size: u64, cap: u64) -> std::io::Error {
    std::io::Error::other(format!(
        "{what} is {size} bytes, more than the {cap} bytes such a file may have; it is not read"
    ))
}

/// What backstop needs of a repository's storage beyond rustic_core's backend traits: the
/// `locks/` directory, which rustic_core does not know, and durability.
pub trait Storage: WriteBackend {
    fn list_locks(&self) -> Result<Vec<LockEntry>, Error>;
    /// Reads a lock file; one larger than `cap` bytes is refused without being read.
    fn read_lock(&self, id: &RepoId, cap: u64) -> Result<Vec<u8>, Error>;
    /// Writes a lock file; returns the time the storage gave it (its "now").
    fn write_lock(
        &self,
        id: &RepoId,
        sealed: &[u8],
    ) -> Result<Option<std::time::SystemTime>, Error>;
    fn remove_lock(&self, id: &RepoId) -> Result<(), Error>;

    /// The size of one repository file, asked of the storage without reading the file (a
    /// stat, a HEAD request): the metadata cache asks before it fetches a pack whole.
    fn file_size(&self, tpe: FileType, id: &RepoId) -> Result<u64, Error>;

    /// Makes every file written so far durable, directory entries included, so a crash after
    /// this returns cannot lose them. Called before an index that names new packs, and before
    /// a snapshot id is reported.
    fn sync(&self) -> Result<(), Error> {
        Ok(())
    }

    /// How long a new lock file may take to show in listings. restic waits 200 ms everywhere,
    /// for object stores; on a POSIX file system a renamed file is listed at once, so the
    /// re-check right after writing is enough.
    fn lock_settle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(200)
    }

    /// Removes the temporary files interrupted writes left behind; returns how many. Only
    /// call it under an exclusive lock: then no writer is running, so every one is garbage.
    fn remove_temp_files(&self) -> Result<usize, Error>;

    /// With S3 Object Lock, extends the retention of every object the repository holds now
    /// (config, keys, index, snapshots, packs) to the full period again, when the last such
    /// pass is a quarter of the period old (docs/s3.md, "Object Lock"); how many objects it
    /// extended. Called when a write session, forget or prune begins, so that what kept
    /// snapshots need stays locked. Elsewhere nothing to do.
    fn refresh_retention(&self) -> Result<usize, Error> {
        Ok(0)
    }

    /// How many packs to write at once. Two on a local disk: hashing one pack and waiting for
    /// its fsync overlap with filling the next (measured on the 2 GiB benchmark: the full backup
    /// went from 1.77 s to 1.6 s of pipeline time).
    fn write_concurrency(&self) -> usize {
        2
    }
}

/// Names of interrupted writes: ours on a local path (`.<name>.tmp-<hex>`) and restic's
/// SFTP convention, which the SFTP backend uses (`<name>-restic-temp-<hex>`).
pub fn is_temp_name(name: &str) -> bool {
    (name.starts_with('.') && name.contains(".tmp-")) || name.contains("-restic-temp-")
}

/// The directory of a file type in restic's layout (the same on every backend).
pub fn dir_name(tpe: FileType) -> &'static str {
    match tpe {
        FileType::Config => "",
        FileType::Index => "index",
        FileType::Key => "keys",
        FileType::Snapshot => "snapshots",
        FileType::Pack => "data",
    }
}

/// Where a file lives below a repository's root: `config`, `data/<2 hex>/<id>`,
/// `index/<id>`, `keys/<id>`, `snapshots/<id>`.
pub fn file_path(root: &Path, tpe: FileType, id: &Id) -> PathBuf {
    let hex = id.to_hex();
    match tpe {
        FileType::Config => root.join("config"),
        FileType::Pack => root.join("data").join(&hex[0..2]).join(hex.as_str()),
        _ => root.join(dir_name(tpe)).join(hex.as_str()),
    }
}
