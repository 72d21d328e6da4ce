//! Escrow keys (docs/escrow.md): a way back into a repository whose password is lost, that
//! nothing on the front-end or the hosts can use.
//!
//! An escrow key is an ordinary restic key file (restic and backstop open the repository
//! with its password) for a password of 256 random bits that nobody is shown. That password
//! is sealed with age to one or more X25519 public keys (`age1...`, the operator's; the
//! private keys are kept offline), and the sealed text rides in the key file itself, in one
//! more JSON member (`backstop_escrow`) that restic and rustic_core ignore. Recovery unseals
//! it with a private key: `backstop repo escrow recover`, or by hand with `jq` and `age -d`
//! followed by plain restic.
//!
//! The key file's scrypt parameters are small (N = 2^14): its password is random, so the
//! derivation adds nothing to its strength, and every open that tries it pays less.

use crate::crypto::Crypto;
use crate::format::RepoId;
pub use crate::keys::ESCROW_FIELD as FIELD;
use crate::keys::{self, MAX_RECIPIENTS, sealed_in};
use crate::{Error, ErrorKind};
use age::secrecy::ExposeSecret;
use backstop_storage::Storage;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustic_core::FileType;
use rustic_core::repofile::{KeyFile, MasterKey};
use std::io::{Read, Write};

/// The user name an escrow key file records (restic's `key list` shows it).
pub const USER: &str = "backstop-escrow";

/// scrypt's N for escrow key files (r = 8, p = 1): 16 MiB.
const ESCROW_N: u32 = 1 << 14;
const ESCROW_R: u32 = 8;

/// An identity file larger than this is not one.
const MAX_IDENTITY_FILE: u64 = 1 << 20;

fn bad(why: String) -> Error {
    Error::new(ErrorKind::Repository, why)
}

/// The public keys an escrow key is sealed to, sorted and without repeats (so that the same
/// set written in another order or with other separators is the same set).
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
    names: Vec<String>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl PartialEq for Recipients {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for Recipients {}

impl Recipients {
    /// age X25519 recipients (`age1...`), separated by white space or commas.
    pub fn parse(text: &str) -> Result<Recipients, String> {
        let mut names: Vec<String> = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err("no escrow recipient given (age public keys, age1...)".into());
        }
        if names.len() > MAX_RECIPIENTS {
            return Err(format!(
                "{} escrow recipients: at most {MAX_RECIPIENTS}",
                names.len()
            ));
        }
        let mut keys = Vec::with_capacity(names.len());
        for name in &names {
            // A private key pasted by mistake is never shown, not even in part.
            if name.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                return Err("a private key (AGE-SECRET-KEY-...) was given where its public key belongs: give the public key (age1...), and keep the private key offline".into());
            }
            let shown: String = name
                .chars()
                .take(12)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            let key = name.parse::<age::x25519::Recipient>().map_err(|_| {
                format!(
                    "{shown:?}{} is not an age X25519 public key (age1..., as age-keygen or backstop repo escrow keygen print it)",
                    if name.chars().count() > 12 { "..." } else { "" }
                )
            })?;
            keys.push(key);
        }
        // age's own spelling (it lower-cases), so the set compares as written by age.
        let names = keys.iter().map(|k| k.to_string()).collect();
        Ok(Recipients { keys, names })
    }

    /// The public keys, as age writes them, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `plain` sealed to every recipient, ASCII-armored (`age -d` reads it).
    fn seal(&self, plain: &[u8]) -> Result<String, Error> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| bad(format!("cannot seal to the escrow recipients: {e}")))?;
        let mut out = Vec::new();
        let armored =
            age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
                .map_err(|e| bad(format!("cannot seal: {e}")))?;
        let mut writer = encryptor
            .wrap_output(armored)
            .map_err(|e| bad(format!("cannot seal: {e}")))?;
        writer
            .write_all(plain)
            .and_then(|()| writer.finish())
            .and_then(|armored| armored.finish())
            .map_err(|e| bad(format!("cannot seal: {e}")))?;
        String::from_utf8(out).map_err(|e| bad(format!("cannot seal: {e}")))
    }
}

/// Private keys (age identities) read from a file.
pub struct Identities(Vec<Box<dyn age::Identity>>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.0.len())
    }
}

impl Identities {
    /// An age identity file (`AGE-SECRET-KEY-1...` lines, `#` comments), as age-keygen or
    /// `escrow keygen` writes it. One that is itself age-encrypted is refused with how to
    /// read it (`age -d`), since a passphrase is never asked for here.
    pub fn read(path: &std::path::Path) -> Result<Identities, String> {
        let shown = path.display();
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read the identity file {shown}: {e}"))?;
        let mut text = Vec::new();
        file.take(MAX_IDENTITY_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read the identity file {shown}: {e}"))?;
        if text.len() as u64 > MAX_IDENTITY_FILE {
            return Err(format!("{shown} is too large to be an age identity file"));
        }
        if text.starts_with(b"age-encryption.org/") || text.starts_with(b"-----BEGIN AGE") {
            return Err(format!(
                "{shown} is itself age-encrypted: give it decrypted, e.g. --identity <(age -d {shown})"
            ));
        }
        let file = age::IdentityFile::from_buffer(&text[..])
            .map_err(|_| format!("{shown} is not an age identity file"))?;
        let ids = file
            .into_identities()
            .map_err(|_| format!("{shown} is not an age identity file"))?;
        if ids.is_empty() {
            return Err(format!("{shown} holds no age identity"));
        }
        Ok(Identities(ids))
    }

    /// The plain text `sealed` holds, if one of these identities opens it.
    fn unseal(&self, sealed: &str) -> Option<Vec<u8>> {
        let reader = age::armor::ArmoredReader::new(sealed.as_bytes());
        let decryptor = age::Decryptor::new_buffered(reader).ok()?;
        let mut plain = decryptor
            .decrypt(self.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .ok()?;
        let mut out = Vec::new();
        (&mut plain).take(1024).read_to_end(&mut out).ok()?;
        Some(out)
    }
}

/// A new identity: its file's text (with the public key in a comment, as age-keygen writes
/// it) and its public key.
pub fn keygen() -> (String, String) {
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let created = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default();
    let text = format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        identity.to_string().expose_secret()
    );
    (text, public)
}

/// The escrow key files of `storage` that `master` made: id, and the recipients each is
/// sealed to.
fn escrow_keys(
    storage: &dyn Storage,
    master: &MasterKey,
) -> Result<Vec<(rustic_core::Id, Vec<String>)>, Error> {
    let mut found = Vec::new();
    for id in keys::key_ids(storage)? {
        // A key file that cannot be read now is not counted: at worst a second escrow key
        // is added.
        if let Ok(bytes) = storage.read_full(FileType::Key, &id)
            && let Some(r) = keys::escrow_verified(&bytes, master)
        {
            found.push((id, r));
        }
    }
    Ok(found)
}

/// Whether `storage` has an escrow key, made with `master`, sealed to exactly `recipients`.
pub fn has_escrow(
    storage: &dyn Storage,
    master: &MasterKey,
    recipients: &Recipients,
) -> Result<bool, Error> {
    Ok(escrow_keys(storage, master)?.iter().any(|(_, r)| {
        let mut names = r.clone();
        names.sort();
        names == recipients.names
    }))
}

/// Adds an escrow key for `master` sealed to `recipients`; its id. The key file is read back
/// and its password, unsealed from it by nobody but checked here before it is sealed, must
/// give `master`.
pub(crate) fn add(
    storage: &dyn Storage,
    master: &MasterKey,
    recipients: &Recipients,
) -> Result<String, Error> {
    let location = storage.location();
    let random = |n: usize| -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; n];
        getrandom::fill(&mut b).map_err(|e| bad(format!("no random bytes: {e}")))?;
        Ok(b)
    };
    let password = hex::encode(random(32)?);
    let mut file = KeyFile {
        hostname: Some(backstop_image::process::hostname()),
        username: Some(USER.to_string()),
        created: Some(jiff::Zoned::now()),
        kdf: "scrypt".to_string(),
        n: ESCROW_N,
        r: ESCROW_R,
        p: 1,
        data: Vec::new(),
        salt: random(64)?,
    };
    let derived = keys::derive(&file, &password)?;
    let plain = serde_json::to_vec(master).map_err(|e| bad(format!("cannot encode: {e}")))?;
    file.data = Crypto::new(&derived)
        .and_then(|c| c.encrypt(&plain))
        .map_err(|e| bad(format!("cannot seal the master key: {e}")))?;
    let sealed = recipients.seal(password.as_bytes())?;
    let digest = keys::escrow_digest(&file.salt, &file.data, &recipients.names, &sealed);
    let auth = Crypto::new(master)
        .and_then(|c| c.encrypt(&digest))
        .map_err(|e| bad(format!("cannot seal the escrow key's check: {e}")))?;
    let mut json = serde_json::to_value(&file).map_err(|e| bad(format!("cannot encode: {e}")))?;
    if let Some(object) = json.as_object_mut() {
        object.insert(
            FIELD.to_string(),
            serde_json::json!({
                "recipients": recipients.names,
                "sealed": sealed,
                "auth": STANDARD.encode(auth),
            }),
        );
    }
    let bytes = serde_json::to_vec(&json).map_err(|e| bad(format!("cannot encode: {e}")))?;
    let id = RepoId::of(&bytes).to_rustic();
    storage
        .write_bytes(FileType::Key, &id, false, bytes.into())
        .map_err(|e| bad(format!("cannot write an escrow key to {location}: {e}")))?;
    match keys::try_key(storage, &id, &password) {
        keys::Tried::Opened(m) if same(&m, master) => Ok(id.to_hex().to_string()),
        _ => {
            let _ = storage.remove(FileType::Key, &id, false);
            Err(bad(format!(
                "the escrow key written to {location} does not read back; it was removed"
            )))
        }
    }
}

fn same(a: &MasterKey, b: &MasterKey) -> bool {
    let a = serde_json::to_vec(a).unwrap_or_default();
    !a.is_empty() && a == serde_json::to_vec(b).unwrap_or_default()
}

/// The passwords of the escrow keys of `storage` that `identities` unseal and that open
/// their own key file, with each key's id: the candidates to open the repository with
/// ([`crate::Repo::open_by_escrow`] tries each). Unverified (no master key yet): whether one
/// opens the repository is what tells.
pub fn unseal(
    storage: &dyn Storage,
    identities: &Identities,
) -> Result<Vec<(String, String)>, Error> {
    let location = storage.location();
    let mut found = Vec::new();
    for id in keys::key_ids(storage)? {
        if let Ok(bytes) = storage.read_full(FileType::Key, &id)
            && let Some(s) = sealed_in(&bytes)
        {
            found.push((id, s));
        }
    }
    if found.is_empty() {
        return Err(bad(format!(
            "the repository at {location} has no escrow key"
        )));
    }
    let mut opened = Vec::new();
    for (id, s) in &found {
        let Some(plain) = identities.unseal(&s.sealed) else {
            continue;
        };
        let Ok(password) = String::from_utf8(plain) else {
            continue;
        };
        if let keys::Tried::Opened(_) = keys::try_key(storage, id, &password) {
            opened.push((password, id.to_hex().to_string()));
        }
    }
    if opened.is_empty() {
        return Err(bad(format!(
            "none of the {} escrow key(s) of the repository at {location} opens with that identity",
            found.len()
        )));
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_parse_sorted_and_refuse_what_is_not_one() {
        let (_, a) = keygen();
        let (_, b) = keygen();
        let r = Recipients::parse(&format!(" {b}, {a}\n{b} ")).expect("parse");
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(r.names(), want.as_slice());
        assert!(Recipients::parse("").is_err());
        assert!(Recipients::parse(" , ").is_err());
        let e = Recipients::parse(&format!("{a} age1nope")).expect_err("bad");
        assert!(
            e.contains("\"age1nope\" is not an age X25519 public key"),
            "{e}"
        );
        let (identity, _) = keygen();
        let secret = identity
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .expect("secret line");
        for given in [secret.to_string(), secret.to_ascii_lowercase()] {
            let e = Recipients::parse(&format!("{a}, {given}")).expect_err("secret");
            assert!(
                e.contains("a private key (AGE-SECRET-KEY-...) was given"),
                "{e}"
            );
            assert!(!e.contains(&given[15..]), "the private key shows: {e}");
        }
    }

    #[test]
    fn sealed_text_opens_with_its_identity_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (text, public) = keygen();
        let (other, _) = keygen();
        let mine = dir.path().join("mine");
        let theirs = dir.path().join("theirs");
        std::fs::write(&mine, text).expect("write");
        std::fs::write(&theirs, other).expect("write");
        let sealed = Recipients::parse(&public)
            .expect("parse")
            .seal(b"secret")
            .expect("seal");
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        let ids = Identities::read(&mine).expect("read");
        assert_eq!(ids.unseal(&sealed).as_deref(), Some(&b"secret"[..]));
        let ids = Identities::read(&theirs).expect("read");
        assert_eq!(ids.unseal(&sealed), None);
        assert_eq!(ids.unseal("not age at all"), None);
    }

    #[test]
    fn identity_files_that_are_not_are_refused_in_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        for (content, want) in [
            (&b"hello\n"[..], "is not an age identity file"),
            (b"# only a comment\n", "holds no age identity"),
            (
                b"age-encryption.org/v1\n-> scrypt",
                "is itself age-encrypted",
            ),
            (&[0xff, 0xfe, 0x00][..], "is not an age identity file"),
        ] {
            std::fs::write(&p, content).expect("write");
            let e = Identities::read(&p).expect_err("refused");
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = Identities::read(&dir.path().join("none")).expect_err("refused");
        assert!(e.contains("cannot read the identity file"), "{e}");
    }

    #[test]
    fn a_key_file_s_escrow_member_is_read_only_when_well_formed() {
        assert!(sealed_in(b"{}").is_none());
        assert!(sealed_in(b"not json").is_none());
        assert!(sealed_in(br#"{"backstop_escrow": 3}"#).is_none());
        let s = sealed_in(br#"{"backstop_escrow": {"recipients": ["age1x"], "sealed": "s"}}"#)
            .expect("read");
        assert_eq!(s.recipients, vec!["age1x".to_string()]);
    }
}
