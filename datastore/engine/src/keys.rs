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

use crate::backend::Storage;
use crate::crypto::Crypto;
use crate::{Error, ErrorKind};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustic_core::FileType;
use rustic_core::repofile::{KeyFile, MasterKey};

/// At most 1 GiB of scrypt memory (128 * N * r bytes) ...
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
/// ... and at most this many sequential passes over it.
const MAX_SCRYPT_P: u32 = 64;

/// Why a key file cannot be tried.
fn check_params(key: &KeyFile) -> Result<(), String> {
    if key.kdf != "scrypt" {
        return Err(format!("unknown key derivation {:?}", key.kdf));
    }
    let memory = 128 * u64::from(key.n) * u64::from(key.r);
    if !key.n.is_power_of_two()
        || key.n < 2
        || key.r == 0
        || key.p == 0
        || key.p > MAX_SCRYPT_P
        || memory > MAX_SCRYPT_MEMORY
    {
        return Err(format!(
            "scrypt parameters out of range (N={}, r={}, p={}; at most {} MiB and p <= {MAX_SCRYPT_P})",
            key.n,
            key.r,
            key.p,
            MAX_SCRYPT_MEMORY >> 20
        ));
    }
    Ok(())
}

/// The key the password derives for this key file.
fn derive(key: &KeyFile, password: &str) -> Result<MasterKey, String> {
    check_params(key)?;
    let mut derived = [0u8; 64];
    // OpenSSL counts its own overhead against the limit: leave room.
    let limit = 128 * u64::from(key.n) * u64::from(key.r) + (64 << 20);
    openssl::pkcs5::scrypt(
        password.as_bytes(),
        &key.salt,
        u64::from(key.n),
        u64::from(key.r),
        u64::from(key.p),
        limit,
        &mut derived,
    )
    .map_err(|e| format!("scrypt failed: {e}"))?;
    // rustic_core's MasterKey is built from its JSON form (its parts' type is not public).
    let json = serde_json::json!({
        "encrypt": STANDARD.encode(&derived[..32]),
        "mac": {"k": STANDARD.encode(&derived[32..48]), "r": STANDARD.encode(&derived[48..])},
    });
    derived.fill(0);
    serde_json::from_value(json).map_err(|e| format!("cannot hold the derived key: {e}"))
}

/// The outcome of trying one key file.
enum Tried {
    Opened(MasterKey),
    /// The seal did not open: another password's key.
    NotThisOne,
    /// Unusable (unreadable, malformed, out of range): why.
    Unusable(String),
}

fn try_key(storage: &dyn Storage, id: &rustic_core::Id, password: &str) -> Tried {
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
        Err(e) => return Tried::Unusable(e),
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

/// The master key that `password` opens, from the first key file it opens.
pub(crate) fn master_key(storage: &dyn Storage, password: &str) -> Result<MasterKey, Error> {
    let location = storage.location();
    let ids = storage.list(FileType::Key).map_err(|e| {
        Error::new(
            ErrorKind::Repository,
            format!("cannot list the key files of the repository at {location}: {e}"),
        )
    })?;
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
