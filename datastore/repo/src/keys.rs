//! Opening a repository's master key from a password, as restic does: each key file holds
//! scrypt parameters, a salt and the master key sealed with the key scrypt derives from the
//! password; the first key file whose seal opens gives the master key.
//!
//! The derivation is OpenSSL's scrypt (OpenSSL is linked for SSH already): on the project's
//! machine it takes 0.29 s for rustic's default parameters (N = 2^17, r = 8, p = 1) where the
//! pure-Rust one rustic_core calls takes 0.38 s, and every command pays it once. The
//! parameters stay whatever the key file says: nothing is weakened and nothing is cached.
//!
//! A key file is data anyone with write access to the storage can change, so its parameters
//! are bounded (memory and time) before anything is derived.

use crate::crypto::Crypto;
use crate::{Error, ErrorKind};
use backstop_storage::Storage;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustic_core::FileType;
use rustic_core::repofile::{KeyFile, MasterKey};

/// The scrypt memory of a key rustic_core makes with its default parameters (N = 2^17, r = 8),
/// as `Repo::init` does.
pub(crate) const NEW_KEY_MEMORY: u64 = 128 * (1 << 17) * 8;

/// At most 1 GiB of scrypt memory (128 * N * r bytes) ...
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
/// ... and at most this many sequential passes over it.
const MAX_SCRYPT_P: u32 = 64;

/// A key file that cannot be tried, and why.
fn unusable(why: String) -> Error {
    Error::new(ErrorKind::Repository, why)
}

/// Why a key file cannot be tried.
fn check_params(key: &KeyFile) -> Result<(), Error> {
    if key.kdf != "scrypt" {
        return Err(unusable(format!("unknown key derivation {:?}", key.kdf)));
    }
    let memory = 128 * u64::from(key.n) * u64::from(key.r);
    if !key.n.is_power_of_two()
        || key.n < 2
        || key.r == 0
        || key.p == 0
        || key.p > MAX_SCRYPT_P
        || memory > MAX_SCRYPT_MEMORY
    {
        return Err(unusable(format!(
            "scrypt parameters out of range (N={}, r={}, p={}; at most {} MiB and p <= {MAX_SCRYPT_P})",
            key.n,
            key.r,
            key.p,
            MAX_SCRYPT_MEMORY >> 20
        )));
    }
    Ok(())
}

/// The key the password derives for this key file.
pub(crate) fn derive(key: &KeyFile, password: &str) -> Result<MasterKey, Error> {
    check_params(key)?;
    let mut derived = [0u8; 64];
    let memory = 128 * u64::from(key.n) * u64::from(key.r);
    // OpenSSL counts its own overhead against the limit: leave room.
    let limit = memory + (64 << 20);
    gate::hold(memory, || {
        openssl::pkcs5::scrypt(
            password.as_bytes(),
            &key.salt,
            u64::from(key.n),
            u64::from(key.r),
            u64::from(key.p),
            limit,
            &mut derived,
        )
    })
    .map_err(|e| unusable(format!("scrypt failed: {e}")))?;
    // rustic_core's MasterKey is built from its JSON form (its parts' type is not public).
    let json = serde_json::json!({
        "encrypt": STANDARD.encode(&derived[..32]),
        "mac": {"k": STANDARD.encode(&derived[32..48]), "r": STANDARD.encode(&derived[48..])},
    });
    derived.fill(0);
    serde_json::from_value(json).map_err(|e| unusable(format!("cannot hold the derived key: {e}")))
}

/// The outcome of trying one key file.
pub(crate) enum Tried {
    Opened(MasterKey),
    /// The seal did not open: another password's key.
    NotThisOne,
    /// Unusable (unreadable, malformed, out of range): why.
    Unusable(String),
}

pub(crate) fn try_key(storage: &dyn Storage, id: &rustic_core::Id, password: &str) -> Tried {
    let bytes = match storage.read_full(FileType::Key, id) {
        Ok(b) => b,
        Err(e) => return Tried::Unusable(format!("cannot be read: {e}")),
    };
    let file: KeyFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => return Tried::Unusable(format!("is not a key file: {e}")),
    };
    let derived = match derive(&file, password) {
        Ok(k) => k,
        Err(e) => return Tried::Unusable(e.message),
    };
    let plain = match Crypto::new(&derived).map(|c| c.decrypt(&file.data)) {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Tried::NotThisOne,
        Err(e) => return Tried::Unusable(e.to_string()),
    };
    match serde_json::from_slice::<MasterKey>(&plain) {
        Ok(master) if Crypto::new(&master).is_ok() => Tried::Opened(master),
        Ok(_) => Tried::Unusable("holds a master key of the wrong length".into()),
        Err(e) => Tried::Unusable(format!("holds no master key: {e}")),
    }
}

/// The ids of the repository's key files.
pub(crate) fn key_ids(storage: &dyn Storage) -> Result<Vec<rustic_core::Id>, Error> {
    storage.list(FileType::Key).map_err(|e| {
        Error::new(
            ErrorKind::Repository,
            format!(
                "cannot list the key files of the repository at {}: {e}",
                storage.location()
            ),
        )
    })
}

/// The key file's member that holds an escrow key's sealed password (docs/escrow.md).
pub const ESCROW_FIELD: &str = "backstop_escrow";

/// An escrow key is sealed to at most this many recipients.
pub(crate) const MAX_RECIPIENTS: usize = 16;

/// A sealed text larger than this is not one of ours.
const MAX_SEALED: usize = 64 << 10;

/// What a key file's escrow member says (docs/escrow.md), when it has one. Anyone who can
/// write `keys/` can write such a member; only `auth` (made with the master key) tells one
/// backstop made from a planted one ([`escrow_verified`]).
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Sealed {
    pub(crate) recipients: Vec<String>,
    pub(crate) sealed: String,
    #[serde(default)]
    pub(crate) auth: Option<String>,
}

/// The escrow member of a key file's bytes, if it has a well-formed one.
pub(crate) fn sealed_in(bytes: &[u8]) -> Option<Sealed> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let sealed: Sealed = serde_json::from_value(value.get(ESCROW_FIELD)?.clone()).ok()?;
    (sealed.sealed.len() <= MAX_SEALED
        && sealed.recipients.len() <= MAX_RECIPIENTS
        && sealed.auth.as_ref().is_none_or(|a| a.len() <= 1024))
    .then_some(sealed)
}

/// What an escrow key's `auth` seals with the master key: the SHA-256 of its salt, its
/// sealed master key, its recipients and its sealed password, each length-prefixed.
pub(crate) fn escrow_digest(
    salt: &[u8],
    data: &[u8],
    recipients: &[String],
    sealed: &str,
) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(salt);
    part(data);
    for r in recipients {
        part(r.as_bytes());
    }
    part(sealed.as_bytes());
    h.finalize().to_vec()
}

/// The recipients of a key file's escrow member when the master key made it (its `auth`
/// opens with the master key and holds the digest of the file's own parts); None for a key
/// file without one, or with one anybody else wrote.
pub(crate) fn escrow_verified(bytes: &[u8], master: &MasterKey) -> Option<Vec<String>> {
    let s = sealed_in(bytes)?;
    let file: KeyFile = serde_json::from_slice(bytes).ok()?;
    let auth = STANDARD.decode(s.auth.as_deref()?).ok()?;
    let plain = Crypto::new(master).ok()?.decrypt(&auth).ok()?;
    (plain == escrow_digest(&file.salt, &file.data, &s.recipients, &s.sealed))
        .then_some(s.recipients)
}

/// The key files `password` opens, and the master key each gives.
pub(crate) fn keys_opened_by(
    storage: &dyn Storage,
    password: &str,
) -> Result<Vec<(rustic_core::Id, MasterKey)>, Error> {
    let ids = key_ids(storage)?;
    Ok(ids
        .into_iter()
        .filter_map(|id| match try_key(storage, &id, password) {
            Tried::Opened(master) => Some((id, master)),
            _ => None,
        })
        .collect())
}

/// The master key that `password` opens, from the first key file it opens.
pub(crate) fn master_key(storage: &dyn Storage, password: &str) -> Result<MasterKey, Error> {
    let location = storage.location();
    let ids = key_ids(storage)?;
    if ids.is_empty() {
        return Err(Error::new(
            ErrorKind::Repository,
            format!("the repository at {location} has no key files"),
        ));
    }
    let mut unusable = Vec::new();
    for id in &ids {
        match try_key(storage, id, password) {
            Tried::Opened(master) => return Ok(master),
            Tried::NotThisOne => {}
            Tried::Unusable(why) => unusable.push(format!("key {} {why}", &id.to_hex()[..8])),
        }
    }
    let mut message =
        format!("wrong password for the repository at {location} (no key file opens with it)");
    if !unusable.is_empty() {
        message.push_str(&format!("; skipped: {}", unusable.join("; ")));
    }
    Err(Error::new(ErrorKind::Repository, message))
}

/// Key derivations share one gate per process. Each takes 128 MiB (rustic's default
/// parameters) for about 0.3 s of one core, and a sync job with PARALLEL repositories opens a
/// source and a destination for each at once: unbounded, four repositories at once held eight
/// derivations' memory together while only as many ran as there are cores. The gate lets a
/// derivation start while fewer than the cores are running and their memory stays within
/// `MEMORY`; one always runs, whatever it needs (its parameters are bounded above).
pub(crate) mod gate {
    use std::sync::{Condvar, Mutex, MutexGuard};

    /// The scrypt memory in use at once, at most (unless one derivation needs more).
    pub(crate) const MEMORY: u64 = 512 << 20;

    #[derive(Default)]
    struct Use {
        running: usize,
        memory: u64,
        /// The most that ran at once (read by the tests).
        most: usize,
    }

    struct Gate {
        state: Mutex<Use>,
        freed: Condvar,
    }

    static GATE: Gate = Gate {
        state: Mutex::new(Use {
            running: 0,
            memory: 0,
            most: 0,
        }),
        freed: Condvar::new(),
    };

    fn lock() -> MutexGuard<'static, Use> {
        // A panic elsewhere cannot leave the counts wrong (the slot's drop runs on unwind).
        GATE.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    struct Slot(u64);

    impl Drop for Slot {
        fn drop(&mut self) {
            let mut state = lock();
            state.running -= 1;
            state.memory -= self.0;
            drop(state);
            GATE.freed.notify_all();
        }
    }

    /// Runs `derive`, which needs `memory` bytes, once the gate lets it.
    pub(crate) fn hold<T>(memory: u64, derive: impl FnOnce() -> T) -> T {
        let cores = cores();
        let mut state = lock();
        while state.running > 0 && (state.running >= cores || state.memory + memory > MEMORY) {
            state = GATE.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.running += 1;
        state.memory += memory;
        state.most = state.most.max(state.running);
        drop(state);
        let _slot = Slot(memory);
        derive()
    }

    /// The most derivations that ran at once so far.
    #[cfg(test)]
    pub(crate) fn most() -> usize {
        lock().most
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        /// Twelve derivations of 128 MiB asked for at once: never more than the cores and
        /// the memory allow run together, and all of them run.
        #[test]
        fn derivations_wait_for_cores_and_memory() {
            let now = AtomicUsize::new(0);
            let seen = AtomicUsize::new(0);
            let done = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..12 {
                    s.spawn(|| {
                        hold(128 << 20, || {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.fetch_max(n, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            now.fetch_sub(1, Ordering::SeqCst);
                            done.fetch_add(1, Ordering::SeqCst);
                        })
                    });
                }
            });
            let limit = cores().min((MEMORY / (128 << 20)) as usize);
            assert_eq!(done.load(Ordering::SeqCst), 12);
            let seen = seen.load(Ordering::SeqCst);
            assert!(seen <= limit, "{seen} ran at once; at most {limit} may");
            assert!(most() <= limit);
            // One derivation bigger than the whole budget still runs.
            assert_eq!(hold(MEMORY * 2, || 7), 7);
        }
    }
}

/// How backstop's new key files are made: as restic's, they say when they were made, on
/// which host and by which user (`$USER`), for `key list` to show.
pub(crate) fn new_key_options() -> rustic_core::KeyOptions {
    let options = rustic_core::KeyOptions::default()
        .with_created(true)
        .hostname(backstop_image::process::hostname());
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => options.username(user),
        _ => options,
    }
}

/// A key file as `key list` shows it: its metadata, which is not encrypted (anyone who can
/// read the storage sees it), and whether the password given opens it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// The key file's id (its name in `keys/`), 64 hex digits.
    pub id: String,
    pub user: Option<String>,
    pub host: Option<String>,
    /// When it was made (RFC 3339), if it says.
    pub created: Option<String>,
    /// The password given opens it.
    pub current: bool,
    /// Why it cannot be read as a key file, if it cannot (it is listed all the same).
    pub unreadable: Option<String>,
    /// An escrow key (docs/escrow.md): the public keys its password is sealed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escrow: Option<Vec<String>>,
}

/// `text` as a terminal may show it: a key file's user and host are whatever its writer put
/// there, so control characters (a newline forging a line of `key list`) read `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The key files of `storage`, oldest first where they say when they were made;
/// `current` for those `password` opens.
pub(crate) fn list(
    storage: &dyn Storage,
    password: &str,
    master: &MasterKey,
) -> Result<Vec<KeyInfo>, Error> {
    let ids = key_ids(storage)?;
    let opened: Vec<rustic_core::Id> = keys_opened_by(storage, password)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut keys: Vec<(Option<jiff::Timestamp>, KeyInfo)> = ids
        .iter()
        .map(|id| {
            let bytes = storage
                .read_full(FileType::Key, id)
                .map_err(|e| format!("cannot be read: {e}"));
            // Only an escrow member the master key made is shown as one; a planted one is
            // said to be planted.
            let claimed = bytes.as_ref().ok().and_then(|b| sealed_in(b)).is_some();
            let escrow = bytes
                .as_ref()
                .ok()
                .and_then(|b| escrow_verified(b, master))
                .map(|r| r.iter().map(|r| printable(r)).collect::<Vec<_>>());
            let forged = claimed && escrow.is_none();
            let read = bytes.and_then(|b| {
                serde_json::from_slice::<KeyFile>(&b).map_err(|e| format!("is not a key file: {e}"))
            });
            let (user, host, created, unreadable) = match read {
                Ok(f) => (
                    f.username.as_deref().map(printable),
                    f.hostname.as_deref().map(printable),
                    f.created.map(|t| t.timestamp()),
                    None,
                ),
                Err(why) => (None, None, None, Some(printable(&why))),
            };
            let unreadable = unreadable.or_else(|| {
                forged.then(|| {
                    "claims to be an escrow key, but this repository's master key did not make it"
                        .to_string()
                })
            });
            (
                created,
                KeyInfo {
                    id: id.to_hex().to_string(),
                    user,
                    host,
                    created: created.map(|t| t.to_string()),
                    current: opened.contains(id),
                    unreadable,
                    escrow,
                },
            )
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

/// Whether a key file may be removed while `password` is the one in use: only when its seal
/// clearly does not open with `password`. One that opens, or that cannot be tried now (a
/// read that failed, a derivation that failed), is kept: the key in use is never removed on
/// a guess.
pub(crate) fn removable(
    storage: &dyn Storage,
    id: &rustic_core::Id,
    password: &str,
) -> Result<(), Error> {
    let short = &id.to_hex()[..8];
    match try_key(storage, id, password) {
        Tried::NotThisOne => Ok(()),
        Tried::Opened(_) => Err(unusable(format!(
            "key {short} is the one the password opens: refusing to remove it (change the password with key passwd)"
        ))),
        Tried::Unusable(why) => Err(unusable(format!(
            "key {short} cannot be tried ({why}), so it may be the one in use: not removed"
        ))),
    }
}

/// The one key file whose id starts with `prefix` (at least 8 hex digits, as `key list`
/// shows them).
pub(crate) fn find(storage: &dyn Storage, prefix: &str) -> Result<rustic_core::Id, Error> {
    let location = storage.location();
    let bad = |why: String| Error::new(ErrorKind::Repository, why);
    if prefix.len() < 8 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "{prefix:?} is not a key id: give at least its first 8 hex digits, as key list shows them"
        )));
    }
    let prefix = prefix.to_ascii_lowercase();
    let ids = key_ids(storage)?;
    let found: Vec<rustic_core::Id> = ids
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&prefix))
        .collect();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => Err(bad(format!(
            "the repository at {location} has no key {prefix}"
        ))),
        _ => Err(bad(format!(
            "{prefix} names {} keys of the repository at {location}: give more of the id",
            found.len()
        ))),
    }
}
