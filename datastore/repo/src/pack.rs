//! Packs: `EncBlob1 … EncBlobN || EncHeader || u32le(len(EncHeader))`.
//!
//! Header entries are `type(1) || u32le enc_len || [u32le plain_len] || id(32)` with type
//! 0 data, 1 tree, 2 zstd data, 3 zstd tree. Data and tree blobs never share a pack.

use crate::crypto::{Crypto, CryptoError};
use crate::format::{BlobKind, IndexBlob, IndexPack, RepoId};

/// A blob ready for a pack: encrypted, with what the index needs to know.
#[derive(Debug)]
pub struct SealedBlob {
    pub id: RepoId,
    pub kind: BlobKind,
    pub sealed: Vec<u8>,
    /// Set when the sealed content is zstd-compressed.
    pub uncompressed_length: Option<u32>,
}

/// A pack being filled.
#[derive(Debug, Default)]
pub struct PackBuilder {
    data: Vec<u8>,
    blobs: Vec<IndexBlob>,
}

/// A finished pack: its bytes and its index entry.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: RepoId,
    pub bytes: Vec<u8>,
    pub index: IndexPack,
}

impl PackBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        PackBuilder {
            data: Vec::with_capacity(bytes),
            blobs: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Whether it holds tree blobs (it then holds only those).
    pub fn has_trees(&self) -> bool {
        self.blobs.iter().any(|b| b.kind == BlobKind::Tree)
    }

    pub fn add(&mut self, blob: SealedBlob) {
        let offset = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        let length = u32::try_from(blob.sealed.len()).unwrap_or(u32::MAX);
        self.data.extend_from_slice(&blob.sealed);
        self.blobs.push(IndexBlob {
            id: blob.id,
            kind: blob.kind,
            offset,
            length,
            uncompressed_length: blob.uncompressed_length,
        });
    }

    /// Appends the encrypted header and its length; names the pack by its hash.
    pub fn finish(mut self, crypto: &Crypto) -> Result<FinishedPack, CryptoError> {
        let mut header = Vec::with_capacity(self.blobs.len() * 41);
        for b in &self.blobs {
            let code = match (b.kind, b.uncompressed_length.is_some()) {
                (BlobKind::Data, false) => 0u8,
                (BlobKind::Tree, false) => 1,
                (BlobKind::Data, true) => 2,
                (BlobKind::Tree, true) => 3,
            };
            header.push(code);
            header.extend_from_slice(&b.length.to_le_bytes());
            if let Some(plain) = b.uncompressed_length {
                header.extend_from_slice(&plain.to_le_bytes());
            }
            header.extend_from_slice(&b.id.0);
        }
        let sealed = crypto.encrypt(&header)?;
        self.data.extend_from_slice(&sealed);
        self.data.extend_from_slice(
            &u32::try_from(sealed.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        let id = RepoId::of(&self.data);
        Ok(FinishedPack {
            id,
            bytes: self.data,
            index: IndexPack {
                id,
                blobs: self.blobs,
            },
        })
    }
}
