//! Bounded zstd decompression of what a repository holds.
//!
//! Whoever can write a repository (a PULL sync job's source, a compromised backup server,
//! anyone with the password) writes its index, snapshot and lock files and its blobs, and with
//! them the sizes they decompress to. A few KiB of zstd expand to gigabytes, and a blob's plain
//! length is whatever its index entry says (up to 4 GiB, which `zstd::bulk` allocates before it
//! decodes a byte). So nothing is decompressed without a cap that does not come from the data:
//!
//! - an unpacked file (index, snapshot, lock) decompresses to at most the size such a file may
//!   have stored ([`backstop_storage::max_file_size`], the lock file cap): restic's own index files
//!   hold at most 150,000 blobs (about 20 MiB of JSON), snapshots a few KiB;
//! - a blob is at most [`MAX_BLOB_SIZE`] bytes, stored or plain, checked against its index
//!   entry before anything is read or allocated for it ([`check_blob`]), and its plain form must
//!   have exactly the length the entry states;
//! - rustic_core, which decompresses whole, reads index, snapshot and config files through
//!   [`Checked`], which refuses one past its cap before rustic_core decompresses it.

use crate::crypto::Crypto;
use crate::format::RepoId;
use crate::{BlobLocation, Error, ErrorKind};
use backstop_storage::{Storage, max_file_size};
use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind as RusticErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult,
    WriteBackend,
};
use std::io::Read;
use std::sync::Arc;

/// The largest blob backstop reads, stored or plain. Data blobs are chunks: restic's chunker
/// cuts at most 8 MiB, backstop 1 MiB ([`backstop_image::image::CHUNK_SIZE`]). A tree blob of 64 MiB
/// would describe some 200,000 files in one directory; a snapshot of VM disks holds a few.
pub const MAX_BLOB_SIZE: u64 = 64 << 20;

/// What sealing adds to a blob (IV and MAC); a compressed blob may also grow a little.
const SEAL_OVERHEAD: u64 = 1 << 16;

fn error(message: String) -> Error {
    Error::new(ErrorKind::Repository, message)
}

/// Refuses a blob whose index entry states lengths past [`MAX_BLOB_SIZE`], before it is read.
pub fn check_blob(id: &RepoId, at: &BlobLocation) -> Result<(), Error> {
    let cap = MAX_BLOB_SIZE;
    if u64::from(at.length) > cap + SEAL_OVERHEAD {
        return Err(error(format!(
            "blob {id}: its index entry gives it {} stored bytes, more than the {cap} bytes a blob may have; it is not read",
            at.length
        )));
    }
    if let Some(n) = at.uncompressed_length
        && u64::from(n) > cap
    {
        return Err(error(format!(
            "blob {id}: its index entry gives it {n} bytes uncompressed, more than the {cap} bytes a blob may have; it is not read"
        )));
    }
    Ok(())
}

/// A blob's plain bytes from its opened (decrypted) form: decompressed to exactly `stated`
/// bytes when the index says it is compressed, at most [`MAX_BLOB_SIZE`].
pub fn blob(id: &RepoId, stored: Vec<u8>, stated: Option<u32>) -> Result<Vec<u8>, Error> {
    let Some(n) = stated else {
        if stored.len() as u64 > MAX_BLOB_SIZE {
            return Err(error(format!(
                "blob {id} is {} bytes, more than the {MAX_BLOB_SIZE} bytes a blob may have",
                stored.len()
            )));
        }
        return Ok(stored);
    };
    if u64::from(n) > MAX_BLOB_SIZE {
        return Err(error(format!(
            "blob {id}: its index entry gives it {n} bytes uncompressed, more than the {MAX_BLOB_SIZE} bytes a blob may have; it is not read"
        )));
    }
    // `bulk::decompress` refuses output past its capacity, so `n` bounds it.
    let plain = zstd::bulk::decompress(&stored, n as usize)
        .map_err(|e| error(format!("blob {id} cannot be decompressed: {e}")))?;
    if plain.len() != n as usize {
        return Err(error(format!(
            "blob {id} decompresses to {} bytes, not the {n} its index entry gives",
            plain.len()
        )));
    }
    Ok(plain)
}

/// The JSON of an unpacked file (`what` names it) from its zstd stream, at most `cap` bytes.
pub fn unpacked(compressed: &[u8], cap: u64, what: &str) -> Result<Vec<u8>, Error> {
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| error(format!("{what} cannot be decompressed: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| error(format!("{what} cannot be decompressed: {e}")))?;
    if out.len() as u64 > cap {
        return Err(error(format!(
            "{what} decompresses to more than the {cap} bytes such a file may have; it is not read"
        )));
    }
    Ok(out)
}

/// The storage rustic_core reads through (listing snapshots, forget, prune, check). It
/// decompresses an index, snapshot or config file whole, without a bound, so each is opened and
/// decompressed here first, within its kind's cap ([`backstop_storage::max_file_size`]), and
/// refused before rustic_core sees it. A file that does not open with the key is passed on:
/// rustic_core reports it in its own words.
pub(crate) struct Checked {
    inner: Arc<dyn Storage>,
    crypto: Crypto,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("location", &self.inner.location())
            .finish()
    }
}

impl Checked {
    pub(crate) fn new(inner: Arc<dyn Storage>, crypto: Crypto) -> Checked {
        Checked { inner, crypto }
    }

    fn check(&self, tpe: FileType, id: &Id, sealed: &[u8]) -> Result<(), Error> {
        if !matches!(tpe, FileType::Index | FileType::Snapshot | FileType::Config) {
            return Ok(());
        }
        let Ok(plain) = self.crypto.decrypt(sealed) else {
            return Ok(());
        };
        if plain.first() == Some(&2) {
            let what = format!("{tpe:?} file {}", RepoId::from_rustic(id));
            unpacked(&plain[1..], max_file_size(tpe), &what)?;
        }
        Ok(())
    }
}

impl ReadBackend for Checked {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let data = self.inner.read_full(tpe, id)?;
        self.check(tpe, id, &data)
            .map_err(|e| RusticError::new(RusticErrorKind::Backend, e.message))?;
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
        self.inner.read_partial(tpe, id, cacheable, offset, length)
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

impl WriteBackend for Checked {
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
        self.inner.write_bytes(tpe, id, cacheable, buf)
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpacked_file_stops_at_its_cap() {
        let json = [b"{\"packs\":[]".as_slice(), &vec![b' '; 5000], b"}"].concat();
        let packed = zstd::bulk::compress(&json, 3).expect("compress");
        let exact = json.len() as u64;
        assert_eq!(
            unpacked(&packed, exact, "index file 00").expect("fits"),
            json
        );
        let e = unpacked(&packed, 4096, "index file 00").expect_err("too large");
        assert_eq!(
            e.to_string(),
            "index file 00 decompresses to more than the 4096 bytes such a file may have; it is not read"
        );
        assert!(unpacked(b"not zstd", 4096, "index file 00").is_err());
    }

    #[test]
    fn a_blob_has_exactly_its_stated_length_within_the_cap() {
        let id = RepoId([7; 32]);
        let plain = vec![3u8; 10_000];
        let packed = zstd::bulk::compress(&plain, 3).expect("compress");
        assert_eq!(blob(&id, packed.clone(), Some(10_000)).expect("ok"), plain);
        // Less room than the content: an error, not a truncation.
        assert!(blob(&id, packed.clone(), Some(9_999)).is_err());
        // More room than the content: the index lies.
        let e = blob(&id, packed.clone(), Some(20_000)).expect_err("longer");
        assert!(
            e.to_string()
                .contains("decompresses to 10000 bytes, not the 20000"),
            "{e}"
        );
        let e = blob(&id, packed, Some(u32::MAX)).expect_err("huge");
        assert_eq!(
            e.to_string(),
            format!(
                "blob {id}: its index entry gives it 4294967295 bytes uncompressed, more than the 67108864 bytes a blob may have; it is not read"
            )
        );
        let at = BlobLocation {
            pack: RepoId([1; 32]),
            offset: 0,
            length: u32::MAX,
            uncompressed_length: None,
        };
        assert!(check_blob(&id, &at).is_err());
        let ok = BlobLocation {
            length: 1 << 20,
            uncompressed_length: Some(1 << 20),
            ..at
        };
        assert!(check_blob(&id, &ok).is_ok());
    }
}
