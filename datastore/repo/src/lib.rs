//! # backstop-repo: the restic repository format
//!
//! It knows nothing of OpenNebula: no actions, no protocol. backstop writes restic-format repositories (restic `doc/design.rst`, repository version 2)
//! that plain `restic` reads, checks, dumps and restores.
//!
//! Who does what:
//! - **rustic_core** (pinned `=0.13.0`) creates and opens repositories: key files (scrypt),
//!   the config file, the master key. Reading and maintenance (dump, restore, check, forget,
//!   prune) go through it as well, behind this crate.
//! - **this crate** writes disk images ([`image`]): fixed-size chunks, all-zero chunks known
//!   without hashing, zstd, the AES-256-CTR + Poly1305-AES envelope ([`crypto`]), packs
//!   ([`pack`]), index files, trees and snapshots ([`format`]). rustic_core exposes no packer
//!   or archiver that could write a file as a list of fixed chunks, and its index entry types
//!   cannot be built outside the crate, so the writer owns these formats.
//!
//! Ordering (what makes a crash at any point harmless) is kept by the write session every
//! writer goes through ([`session`]): packs first, then the index files that name them, then
//! the snapshot, each step only once the one before is durable and the lock still stands.
//! Every file is written under a temporary name and renamed
//! (`backstop_storage::local::LocalBackend`).

pub mod copy;
pub mod crypto;
pub mod decompress;
pub mod error;
pub mod escrow;
pub mod format;
pub mod index;
mod keys;
pub mod lock;
pub mod maintenance;
pub mod pack;
pub mod restore;
pub mod session;
pub mod verify;
pub mod writer;

pub use error::{Error, ErrorKind};
pub use index::{Index, Packs};
pub use keys::KeyInfo;
/// The kinds of repository files, as rustic_core names them.
pub use rustic_core::FileType;
pub use session::Session;

use crate::crypto::Crypto;
use crate::format::{Node, RepoId, Snapshot, Tree};
use backstop_storage::Storage;
use rustic_core::repofile::MasterKey;
use rustic_core::{
    ConfigOptions, Credentials, OpenStatus, Repository, RepositoryBackends, RepositoryOptions,
    WriteBackend,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// How data blobs are compressed (`RESTIC_COMPRESSION`), with restic 0.19's names. Every
/// level writes plain zstd frames, which any restic that reads repository version 2 (0.14 on)
/// decompresses; the level only changes how hard the writer tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Off,
    /// restic's "fastest": zstd's fastest level.
    Fastest,
    /// restic's default: zstd at its default speed.
    Auto,
    /// restic's "better": a better ratio than auto, at about half its speed.
    Better,
    /// restic's "max": zstd's best ratio at a speed still usable for disk images.
    Max,
}

impl Compression {
    pub fn parse(value: Option<&str>) -> Result<Compression, Error> {
        match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("auto") => Ok(Compression::Auto),
            Some("off") => Ok(Compression::Off),
            Some("fastest") => Ok(Compression::Fastest),
            Some("better") => Ok(Compression::Better),
            Some("max") => Ok(Compression::Max),
            Some(other) => Err(Error::invalid(format!(
                "RESTIC_COMPRESSION {other:?} is not one of off, fastest, auto, better, max"
            ))),
        }
    }

    /// The zstd level; `None` for no compression. restic's encoder (klauspost's zstd) names
    /// speeds rather than levels; these are the C library's levels its documentation gives
    /// for each: fastest 1, default 3, better 7, best 11.
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::Off => None,
            Compression::Fastest => Some(1),
            Compression::Auto => Some(3),
            Compression::Better => Some(7),
            Compression::Max => Some(11),
        }
    }
}

/// One line from a rustic_core error: its own message, without the multi-line report its
/// Display prints.
pub(crate) fn rustic_message(e: &rustic_core::RusticError) -> String {
    let log = e.display_log();
    let line = log.strip_prefix("Error: ").unwrap_or(&log);
    // rustic_core appends its error class ("(kind: related to the backend)"), which says
    // nothing an operator can act on.
    match line.rfind(" (kind: ") {
        Some(at) if line.ends_with(')') => line[..at].to_string(),
        _ => line.to_string(),
    }
}

pub(crate) fn rustic_error(what: &str, e: &rustic_core::RusticError) -> Error {
    Error::new(
        ErrorKind::Repository,
        format!("{what}: {}", rustic_message(e)),
    )
}

/// A snapshot as `backstop repo snapshots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub time: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    pub parent: Option<String>,
}

/// Where a blob lives in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: RepoId,
    pub offset: u32,
    pub length: u32,
    pub uncompressed_length: Option<u32>,
}

/// A repository being opened ([`Repo::open_in_background`]).
#[derive(Debug)]
pub struct Opening {
    thread: std::thread::JoinHandle<Result<Repo, Error>>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Opening {
    /// Runs `open` on a thread of its own (tests use it to decide when the repository is
    /// ready).
    pub fn spawn(open: impl FnOnce() -> Result<Repo, Error> + Send + 'static) -> Opening {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = ready.clone();
        let thread = std::thread::spawn(move || {
            let repo = open();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            repo
        });
        Opening { thread, ready }
    }

    /// Whether [`Opening::wait`] would return at once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The open repository, or why it could not be opened.
    pub fn wait(self) -> Result<Repo, Error> {
        self.thread.join().unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Repository,
                "opening the repository failed unexpectedly (its thread panicked)",
            ))
        })
    }
}

/// An open repository.
#[derive(Clone)]
pub struct Repo {
    backend: Arc<dyn Storage>,
    master: MasterKey,
    crypto: Crypto,
    version: u32,
    /// The repository's id from its config file (random at `init`; what a copy records as
    /// where it came from, see [`copy::copied_from`]).
    id: RepoId,
    location: String,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.location)
            .field("version", &self.version)
            .finish()
    }
}

/// rustic_core's view of `backend`; with the key, its index, snapshot and config files are
/// checked against their caps before rustic_core decompresses them ([`decompress::Checked`]).
fn rustic_repo(
    backend: &Arc<dyn Storage>,
    crypto: Option<&Crypto>,
) -> Result<Repository<()>, Error> {
    let write: Arc<dyn WriteBackend> = match crypto {
        Some(c) => Arc::new(decompress::Checked::new(backend.clone(), c.clone())),
        None => backend.clone(),
    };
    let backends = RepositoryBackends::new(write, None);
    // No cache: every action is a short-lived process, and a cache under $HOME would be a
    // second copy of metadata to keep consistent.
    Repository::new(&RepositoryOptions::default().no_cache(true), &backends)
        .map_err(|e| rustic_error("cannot set up the repository", &e))
}

impl Repo {
    /// Creates a repository (version 2, compression available) at the backend's location.
    pub fn init(backend: Arc<dyn Storage>, password: &str) -> Result<Repo, Error> {
        let location = backend.location();
        // rustic_core derives the new key with its default scrypt parameters.
        let unopened = rustic_repo(&backend, None)?;
        let repo = keys::gate::hold(keys::NEW_KEY_MEMORY, || {
            unopened.init(
                &Credentials::password(password),
                &keys::new_key_options(),
                &ConfigOptions::default(),
            )
        })
        .map_err(|e| rustic_error(&format!("cannot create a repository at {location}"), &e))?;
        // rustic's local backend makes the directory layout; ours does it here.
        backend
            .create()
            .map_err(|e| rustic_error("cannot create the repository layout", &e))?;
        Self::from_rustic(backend, location, &repo)
    }

    fn from_rustic(
        backend: Arc<dyn Storage>,
        location: String,
        repo: &Repository<OpenStatus>,
    ) -> Result<Repo, Error> {
        let master = repo.key();
        let crypto =
            Crypto::new(&master).map_err(|e| Error::new(ErrorKind::Repository, e.to_string()))?;
        Ok(Repo {
            backend,
            master,
            crypto,
            version: repo.config().version,
            id: RepoId::from_rustic(&repo.config().id),
            location,
        })
    }

    /// Opens an existing repository.
    pub fn open(backend: Arc<dyn Storage>, password: &str) -> Result<Repo, Error> {
        let location = backend.location();
        let master = keys::master_key(backend.as_ref(), password)?;
        let crypto =
            Crypto::new(&master).map_err(|e| Error::new(ErrorKind::Repository, e.to_string()))?;
        let repo = rustic_repo(&backend, Some(&crypto))?
            .open(&Credentials::Masterkey(master))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Repository,
                    format!(
                        "cannot open the repository at {location}: {}",
                        rustic_message(&e)
                    ),
                )
            })?;
        Self::from_rustic(backend, location, &repo)
    }

    /// Makes `password` open this repository too, as `restic key add` does (a key file
    /// sealing this repository's master key with a key scrypt derives from `password`), unless
    /// a key file opens with it already. Whether a key file was added. The new key is read
    /// back and must give this repository's master key.
    pub fn add_password(&self, password: &str) -> Result<bool, Error> {
        if self.opened_by(password)? {
            return Ok(false);
        }
        keys::gate::hold(keys::NEW_KEY_MEMORY, || {
            let options = keys::new_key_options();
            self.rustic()?
                .add_key(password, &options)
                .map_err(|e| rustic_error(&format!("cannot add a key to {}", self.location), &e))
        })?;
        if !self.opened_by(password)? {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "the key added to {} does not open it; nothing else was changed",
                    self.location
                ),
            ));
        }
        Ok(true)
    }

    /// With S3 Object Lock, keeps what the repository holds locked for the full period again
    /// when the last pass is a quarter of it old (docs/s3.md, "Object Lock"); a no-op on other
    /// storage. Write sessions, forget and prune call it once they hold their lock.
    pub fn refresh_retention(&self) -> Result<usize, Error> {
        self.backend.refresh_retention().map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("cannot keep {} locked: {e}", self.location),
            )
        })
    }

    /// Adds an escrow key sealed to `recipients` (docs/escrow.md) unless one sealed to
    /// exactly them is there; the new key's id, if one was added.
    pub fn add_escrow(&self, recipients: &escrow::Recipients) -> Result<Option<String>, Error> {
        if escrow::has_escrow(self.backend.as_ref(), &self.master, recipients)? {
            return Ok(None);
        }
        escrow::add(self.backend.as_ref(), &self.master, recipients).map(Some)
    }

    /// Opens an existing repository through an escrow key that `identities` unseal; the
    /// repository and that key's password (to give the repository a new one with
    /// [`Repo::add_password`]).
    pub fn open_by_escrow(
        backend: Arc<dyn Storage>,
        identities: &escrow::Identities,
    ) -> Result<(Repo, String), Error> {
        // Every escrow key the identities unseal is tried until one opens the repository: a
        // key file anyone planted (another repository's escrow key, say) is passed over.
        let candidates = escrow::unseal(backend.as_ref(), identities)?;
        let mut tried = Vec::new();
        for (password, id) in candidates {
            match Repo::open(backend.clone(), &password) {
                Ok(repo) => return Ok((repo, password)),
                Err(e) => tried.push(format!("key {}: {}", &id[..8], e.message)),
            }
        }
        Err(Error::new(
            ErrorKind::Repository,
            format!(
                "no escrow key that identity opens opens the repository at {} ({})",
                backend.location(),
                tried.join("; ")
            ),
        ))
    }

    /// The repository's key files, `current` for those `password` opens (`key list`).
    pub fn keys(&self, password: &str) -> Result<Vec<keys::KeyInfo>, Error> {
        keys::list(self.backend.as_ref(), password, &self.master)
    }

    /// Removes the key file whose id starts with `prefix` (`key remove`), unless `password`
    /// opens it: the key in use is changed with [`Repo::add_password`] and
    /// [`Repo::remove_password`] (`key passwd`), never removed alone. Its full id.
    pub fn remove_key(&self, prefix: &str, password: &str) -> Result<String, Error> {
        let id = keys::find(self.backend.as_ref(), prefix)?;
        keys::removable(self.backend.as_ref(), &id, password)?;
        self.backend
            .remove(FileType::Key, &id, false)
            .map_err(|e| rustic_error(&format!("cannot remove a key of {}", self.location), &e))?;
        Ok(id.to_hex().to_string())
    }

    /// Whether a key file opens with `password` and gives this repository's master key.
    pub fn opened_by(&self, password: &str) -> Result<bool, Error> {
        let mine = serde_json::to_vec(&self.master).unwrap_or_default();
        Ok(keys::keys_opened_by(self.backend.as_ref(), password)?
            .iter()
            .any(|(_, m)| serde_json::to_vec(m).unwrap_or_default() == mine))
    }

    /// Removes every key file `old` opens, as `restic key remove` does, once `keep` opens one
    /// that gives this repository's master key (so the repository never becomes unreadable);
    /// how many were removed.
    pub fn remove_password(&self, old: &str, keep: &str) -> Result<usize, Error> {
        if !self.opened_by(keep)? {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "the repository at {} does not open with the password to keep; no key was removed",
                    self.location
                ),
            ));
        }
        let kept: Vec<rustic_core::Id> = keys::keys_opened_by(self.backend.as_ref(), keep)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut removed = 0;
        for (id, _) in keys::keys_opened_by(self.backend.as_ref(), old)? {
            if kept.contains(&id) {
                continue;
            }
            self.backend
                .remove(FileType::Key, &id, false)
                .map_err(|e| {
                    rustic_error(&format!("cannot remove a key of {}", self.location), &e)
                })?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Starts opening an existing repository on a thread of its own. The key derivation is
    /// slow by design (scrypt); a backup reads, hashes and compresses meanwhile (see
    /// `writer::backup_opening`).
    pub fn open_in_background(backend: Arc<dyn Storage>, password: String) -> Opening {
        Opening::spawn(move || Repo::open(backend, &password))
    }

    /// rustic_core's view of this repository, opened with the master key (no second scrypt).
    pub(crate) fn rustic(&self) -> Result<Repository<OpenStatus>, Error> {
        rustic_repo(&self.backend, Some(&self.crypto))?
            .open(&Credentials::Masterkey(self.master.clone()))
            .map_err(|e| {
                rustic_error(
                    &format!("cannot open the repository at {}", self.location),
                    &e,
                )
            })
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let mut snaps = self
            .rustic()?
            .get_all_snapshots()
            .map_err(|e| rustic_error("cannot list snapshots", &e))?;
        snaps.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snaps
            .into_iter()
            .map(|s| SnapshotInfo {
                id: s.id.to_hex().to_string(),
                time: s.time.timestamp().to_string(),
                hostname: s.hostname,
                tags: s.tags.iter().cloned().collect(),
                paths: s.paths.iter().cloned().collect(),
                parent: s.parent.map(|p| p.to_hex().to_string()),
            })
            .collect())
    }

    /// Streams the file at `path` of a snapshot (an id or a unique prefix of one, or
    /// `latest`) to `out`. Read by this crate rather than rustic_core, so that every index
    /// file, tree and blob is read within its bounds ([`decompress`]): the stored files of the
    /// stock driver, a backup's `vm.xml` and TPM state are what whoever wrote the repository
    /// chose.
    pub fn dump(
        &self,
        snapshot: &str,
        path: &str,
        out: &mut impl std::io::Write,
        retry_lock: lock::RetryLock,
    ) -> Result<(), Error> {
        let _lock = self.lock(false, retry_lock)?;
        let (node, index) = self.image_node(snapshot, path)?;
        let content = node.content.unwrap_or_default();
        // Each blob's place and plain length; a blob whose id is the hash of zeros of its
        // length is zeros and is not read.
        let mut zero_ids: std::collections::HashMap<u32, RepoId> = Default::default();
        let mut pieces = Vec::with_capacity(content.len());
        for id in &content {
            let missing = || {
                Error::new(
                    ErrorKind::Repository,
                    format!(
                        "cannot dump {path} of snapshot {snapshot}: blob {id} is not in any index"
                    ),
                )
            };
            let at = index.data(id).ok_or_else(missing)?;
            let len = index.data_len(id).ok_or_else(missing)?;
            let zero = restore::is_zero_blob(&mut zero_ids, id, len);
            pieces.push((at, len, zero));
        }
        drop(index);
        // Blobs are read, opened and checked by several threads (a read from the storage
        // waits, opening is CPU) and written in order on this one.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let mut zeros: Vec<u8> = Vec::new();
        restore::for_each_ordered(
            pieces.len(),
            threads,
            |n| {
                let (at, _, zero) = &pieces[n];
                if *zero {
                    return Ok(None);
                }
                self.read_blob(&content[n], at).map(Some)
            },
            |n, data| {
                let bytes: &[u8] = match &data {
                    Some(d) => d,
                    None => {
                        zeros.resize(pieces[n].1 as usize, 0);
                        &zeros
                    }
                };
                out.write_all(bytes).map_err(|e| {
                    Error::io(format!("cannot write {path} of snapshot {snapshot}"), e)
                })
            },
        )
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The repository's id, as its config file holds it (`restic cat config`).
    pub fn id(&self) -> RepoId {
        self.id
    }

    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    pub fn backend(&self) -> &Arc<dyn Storage> {
        &self.backend
    }

    /// Seals and stores an unpacked file (index, snapshot); returns its id.
    pub fn save_file<T: Serialize>(&self, tpe: FileType, value: &T) -> Result<RepoId, Error> {
        let json = serde_json::to_vec(value).map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("cannot encode a {tpe:?} file: {e}"),
            )
        })?;
        let plain =
            if self.version >= 2 {
                let mut out = vec![2u8];
                out.extend(zstd::bulk::compress(&json, 3).map_err(|e| {
                    Error::new(ErrorKind::Repository, format!("cannot compress: {e}"))
                })?);
                out
            } else {
                json
            };
        let sealed = self.seal(&plain)?;
        let id = RepoId::of(&sealed);
        self.backend
            .write_bytes(tpe, &id.to_rustic(), true, sealed.into())
            .map_err(|e| rustic_error(&format!("cannot write {tpe:?} file {id}"), &e))?;
        Ok(id)
    }

    /// Reads, verifies and opens an unpacked file.
    pub fn load_file<T: DeserializeOwned>(&self, tpe: FileType, id: &RepoId) -> Result<T, Error> {
        let sealed = self
            .backend
            .read_full(tpe, &id.to_rustic())
            .map_err(|e| rustic_error(&format!("cannot read {tpe:?} file {id}"), &e))?;
        if RepoId::of(&sealed) != *id {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("{tpe:?} file {id} is damaged: its content does not match its name"),
            ));
        }
        self.decode_unpacked(
            &sealed,
            backstop_storage::max_file_size(tpe),
            &format!("{tpe:?} file {id}"),
        )
    }

    /// Opens a sealed unpacked file (index, snapshot, lock) and reads its JSON: in a version 2
    /// repository a leading byte 2 means zstd-compressed, `{` or `[` plain. The JSON is at
    /// most `cap` bytes however it was stored ([`decompress`]).
    pub(crate) fn decode_unpacked<T: DeserializeOwned>(
        &self,
        sealed: &[u8],
        cap: u64,
        what: &str,
    ) -> Result<T, Error> {
        let plain = self.open_sealed(sealed)?;
        let json = match plain.first() {
            Some(2) if self.version >= 2 => decompress::unpacked(&plain[1..], cap, what)?,
            _ => plain,
        };
        serde_json::from_slice(&json)
            .map_err(|e| Error::new(ErrorKind::Repository, format!("{what} is not valid: {e}")))
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, Error> {
        self.crypto
            .encrypt(plain)
            .map_err(|e| Error::new(ErrorKind::Repository, e.to_string()))
    }

    pub fn open_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        self.crypto
            .decrypt(sealed)
            .map_err(|e| Error::new(ErrorKind::Repository, e.to_string()))
    }

    /// Ids of every file of a type.
    pub fn list(&self, tpe: FileType) -> Result<Vec<RepoId>, Error> {
        Ok(self
            .backend
            .list(tpe)
            .map_err(|e| rustic_error(&format!("cannot list {tpe:?} files"), &e))?
            .iter()
            .map(RepoId::from_rustic)
            .collect())
    }

    /// Reads every index file (the packs marked for deletion count: their blobs are there
    /// until they are deleted).
    pub fn index(&self) -> Result<Index, Error> {
        Index::read(self, Packs::All)
    }

    /// Reads and opens one blob.
    pub fn read_blob(&self, id: &RepoId, at: &BlobLocation) -> Result<Vec<u8>, Error> {
        self.read_blob_from(id, at, false)
    }

    /// Reads and opens one blob; `tree`: a tree blob, which a metadata cache keeps.
    fn read_blob_from(&self, id: &RepoId, at: &BlobLocation, tree: bool) -> Result<Vec<u8>, Error> {
        decompress::check_blob(id, at)?;
        let sealed = self
            .backend
            .read_partial(
                FileType::Pack,
                &at.pack.to_rustic(),
                tree,
                at.offset,
                at.length,
            )
            .map_err(|e| rustic_error(&format!("cannot read blob {id}"), &e))?;
        let plain = self.open_sealed(&sealed)?;
        let content = decompress::blob(id, plain, at.uncompressed_length)?;
        if RepoId::of(&content) != *id {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("blob {id} is damaged: its content does not match its id"),
            ));
        }
        Ok(content)
    }

    pub fn load_tree(&self, id: &RepoId, index: &Index) -> Result<Tree, Error> {
        let at = index.tree(id).ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!("tree {id} is not in any index"),
            )
        })?;
        serde_json::from_slice(&self.read_blob_from(id, &at, true)?).map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("tree {id} is not valid: {e}"),
            )
        })
    }

    /// Every snapshot with its parsed time, oldest first (ties by id, so the order is stable).
    pub fn all_snapshots(&self) -> Result<Vec<(RepoId, Snapshot, jiff::Timestamp)>, Error> {
        let mut all = Vec::new();
        for id in self.list(FileType::Snapshot)? {
            let snap: Snapshot = self.load_file(FileType::Snapshot, &id)?;
            let time: jiff::Timestamp = snap.time.parse().map_err(|e| {
                Error::new(
                    ErrorKind::Repository,
                    format!("snapshot {id} has a bad time: {e}"),
                )
            })?;
            all.push((id, snap, time));
        }
        all.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0)));
        Ok(all)
    }

    /// The snapshot whose id starts with `prefix` (at least 8 hex characters, or the full id).
    pub fn find_snapshot(&self, prefix: &str) -> Result<(RepoId, Snapshot), Error> {
        if prefix == "latest" {
            return self
                .all_snapshots()?
                .pop()
                .map(|(id, snap, _)| (id, snap))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Repository,
                        format!("no snapshot in {}", self.location),
                    )
                });
        }
        let matches: Vec<RepoId> = self
            .list(FileType::Snapshot)?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&prefix.to_ascii_lowercase()))
            .collect();
        match matches.as_slice() {
            [id] => Ok((*id, self.load_file(FileType::Snapshot, id)?)),
            [] => Err(Error::new(
                ErrorKind::Repository,
                format!("no snapshot {prefix} in {}", self.location),
            )),
            _ => Err(Error::new(
                ErrorKind::Repository,
                format!("snapshot id {prefix} is ambiguous in {}", self.location),
            )),
        }
    }

    /// The file node at an absolute path inside a snapshot.
    pub fn file_node(
        &self,
        snapshot: &Snapshot,
        path: &str,
        index: &Index,
    ) -> Result<Option<Node>, Error> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some((file, dirs)) = parts.split_last() else {
            return Ok(None);
        };
        let mut tree = self.load_tree(&snapshot.tree, index)?;
        for dir in dirs {
            let Some(sub) = tree
                .nodes
                .iter()
                .find(|n| n.name == *dir && n.kind == "dir")
                .and_then(|n| n.subtree)
            else {
                return Ok(None);
            };
            tree = self.load_tree(&sub, index)?;
        }
        Ok(tree
            .nodes
            .into_iter()
            .find(|n| n.name == *file && n.kind == "file"))
    }
}
