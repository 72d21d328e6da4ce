//! Secrets at rest: the datastore attributes that are secrets (RESTIC_PASSWORD, the S3 keys:
//! `backstop_protocol::template::SECRET_ATTRIBUTES`) are kept in the state database sealed
//! with AES-256-GCM under a key of its own, `<state file>.key` (32 random bytes, owner only),
//! so a copy of the database alone (a backup of it, an `sqlite3 .dump`) holds no secret in
//! clear. Sealed values read `backstop-sealed:v1:<base64 of nonce, ciphertext, tag>`; a value
//! without that prefix (a state written before sealing) is sealed when the state is opened.

use backstop_protocol::template::{Template, Value, is_secret};
use base64::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};

const PREFIX: &str = "backstop-sealed:v1:";

/// Why a secret could not be sealed or opened, or the key not read, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SealError(pub String);

/// The key that seals a state's secrets.
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(***)")
    }
}

/// Where the key of the state at `state` lives.
pub fn key_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

impl SealKey {
    /// Reads the key, or makes it (owner only, written whole before it is used) when the
    /// state has none yet.
    pub fn load_or_create(path: &Path) -> Result<SealKey, SealError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    SealError(format!(
                        "{} is {} bytes, not the 32 of a state key",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(SealKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| SealError(format!("no randomness: {e}")))?;
                let tmp = PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()));
                let write = || -> std::io::Result<()> {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&key)?;
                    f.sync_all()?;
                    // Another process may have made one meanwhile: theirs wins (hard link
                    // fails on an existing name), and we read it back.
                    let linked = std::fs::hard_link(&tmp, path);
                    std::fs::remove_file(&tmp)?;
                    match linked {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                        Err(e) => Err(e),
                    }
                };
                write().map_err(|e| SealError(format!("cannot create {}: {e}", path.display())))?;
                let _ = std::fs::remove_file(&tmp);
                SealKey::load_or_create(path)
            }
            Err(e) => Err(SealError(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn seal(&self, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| SealError(format!("no randomness: {e}")))?;
        let mut tag = [0u8; 16];
        let ct = openssl::symm::encrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            PREFIX.as_bytes(),
            plain.as_bytes(),
            &mut tag,
        )
        .map_err(|e| SealError(format!("cannot seal a secret: {e}")))?;
        let mut all = nonce.to_vec();
        all.extend_from_slice(&ct);
        all.extend_from_slice(&tag);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(all)
        ))
    }

    fn open(&self, sealed: &str) -> Result<String, SealError> {
        let bad = || {
            SealError(
                "a sealed secret does not open with this state's key (was the key file replaced?)"
                    .to_string(),
            )
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| bad())?;
        if raw.len() < 28 {
            return Err(bad());
        }
        let (nonce, rest) = raw.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let plain = openssl::symm::decrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &self.0,
            Some(nonce),
            PREFIX.as_bytes(),
            ct,
            tag,
        )
        .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }

    /// The template text with every secret sealed (sealed ones stay as they are).
    pub fn seal_template(&self, text: &str) -> Result<String, SealError> {
        self.map_secrets(text, |v| {
            if v.starts_with(PREFIX) {
                Ok(v.to_string())
            } else {
                self.seal(v)
            }
        })
    }

    /// The template text with every sealed secret opened.
    pub fn open_template(&self, text: &str) -> Result<String, SealError> {
        if !text.contains(PREFIX) {
            return Ok(text.to_string());
        }
        self.map_secrets(text, |v| match v.strip_prefix(PREFIX) {
            Some(s) => self.open(s),
            None => Ok(v.to_string()),
        })
    }

    fn map_secrets(
        &self,
        text: &str,
        f: impl Fn(&str) -> Result<String, SealError>,
    ) -> Result<String, SealError> {
        let mut t =
            Template::parse(text).map_err(|e| SealError(format!("a stored template: {e}")))?;
        if !t
            .attributes
            .iter()
            .any(|a| touches_secret(&a.value, &a.name))
        {
            return Ok(text.to_string());
        }
        for a in &mut t.attributes {
            match &mut a.value {
                Value::Single(v) if is_secret(&a.name) => *v = f(v)?,
                Value::Single(_) => {}
                Value::Vector(pairs) => {
                    for (k, v) in pairs.iter_mut() {
                        if is_secret(k) {
                            *v = f(v)?;
                        }
                    }
                }
            }
        }
        Ok(t.to_string())
    }
}

fn touches_secret(v: &Value, name: &str) -> bool {
    match v {
        Value::Single(_) => is_secret(name),
        Value::Vector(pairs) => pairs.iter().any(|(k, _)| is_secret(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_and_open_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db.key");
        let key = SealKey::load_or_create(&path).expect("key");
        let text = "NAME = \"s3\"\nRESTIC_PASSWORD = \"pw with \\\"quotes\\\" and ]=#\"\nRESTIC_S3_SECRET_ACCESS_KEY = \"sk/+=\"\nRESTIC_S3_BUCKET = \"b-1\"\n";
        let sealed = key.seal_template(text).expect("seal");
        assert!(
            !sealed.contains("sk/+=") && !sealed.contains("pw with"),
            "{sealed}"
        );
        assert!(sealed.contains("b-1"));
        assert_eq!(
            key.seal_template(&sealed).expect("again"),
            sealed,
            "sealed twice"
        );
        let opened = key.open_template(&sealed).expect("open");
        let t = Template::parse(&opened).expect("parse");
        assert_eq!(t.get("RESTIC_PASSWORD"), Some("pw with \"quotes\" and ]=#"));
        assert_eq!(t.get("RESTIC_S3_SECRET_ACCESS_KEY"), Some("sk/+="));
        // The same key is read back; a different key cannot open.
        let again = SealKey::load_or_create(&path).expect("key");
        assert!(again.open_template(&sealed).is_ok());
        std::fs::remove_file(&path).expect("rm");
        let other = SealKey::load_or_create(&path).expect("new key");
        let e = other.open_template(&sealed).expect_err("another key");
        assert!(e.to_string().contains("does not open"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"short").expect("write");
        assert!(SealKey::load_or_create(&path).is_err());
    }
}
