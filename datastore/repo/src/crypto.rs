//! restic's envelope: `nonce(16) || AES-256-CTR(ciphertext) || Poly1305-AES(16)`, one random
//! nonce per file or blob, under the repository's master key.

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::AeadInPlace;
use rustic_core::repofile::MasterKey;

/// The master key, ready to seal and open.
#[derive(Clone)]
pub struct Crypto {
    cipher: Aes256CtrPoly1305Aes,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(<master key>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the master key has the wrong length")]
    KeyLength,
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("encryption failed")]
    Encrypt,
    #[error("data is too short to be encrypted content")]
    TooShort,
    #[error("MAC check failed: the data is damaged or belongs to another repository")]
    Mac,
}

pub const OVERHEAD: usize = 32;

impl Crypto {
    pub fn new(key: &MasterKey) -> Result<Crypto, CryptoError> {
        if key.encrypt.len() != 32 || key.mac.k.len() != 16 || key.mac.r.len() != 16 {
            return Err(CryptoError::KeyLength);
        }
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&key.encrypt);
        bytes[32..48].copy_from_slice(&key.mac.k);
        bytes[48..].copy_from_slice(&key.mac.r);
        let cipher = Aes256CtrPoly1305Aes::new(aes256ctr_poly1305aes::Key::from_slice(&bytes));
        Ok(Crypto { cipher })
    }

    /// Seals `plain` into a new buffer.
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_in_place_detached((&nonce).into(), &[], &mut out[16..])
            .map_err(|_| CryptoError::Encrypt)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a sealed buffer.
    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::TooShort);
        }
        let (nonce, rest) = sealed.split_at(16);
        let (body, tag) = rest.split_at(rest.len() - 16);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(nonce.into(), &[], &mut plain, tag.into())
            .map_err(|_| CryptoError::Mac)?;
        Ok(plain)
    }
}
