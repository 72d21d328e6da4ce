//! The repository's index: where every blob is, read once from all index files.
//!
//! Data blobs and tree blobs are kept apart, as restic keys blobs by (type, id): a data blob
//! whose bytes happen to be a tree's JSON is a different blob from that tree. An entry names
//! its pack by number (the pack ids are kept once), so a large repository's index costs about
//! 52 bytes a blob in memory.
//!
//! Index files are written here too ([`write`]), in files of at most
//! [`BLOBS_PER_FILE`] blobs; when they are written is the write session's business
//! ([`crate::session`]).

use crate::format::{BlobKind, IndexBlob, IndexFile, IndexPack, RepoId};
use crate::{BlobLocation, Error, Repo};
use rustic_core::FileType;
use std::collections::HashMap;

/// Where a blob is, with its pack by number.
#[derive(Debug, Clone, Copy)]
struct Entry {
    pack: u32,
    offset: u32,
    length: u32,
    uncompressed_length: Option<u32>,
}

/// Which packs of the index files count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packs {
    /// Every pack an index file names, those rustic's prune marked for deletion too (their
    /// blobs are still there until it deletes them).
    All,
    /// Only the packs in use: not those marked for deletion (what restic itself reads).
    Live,
}

/// Every blob the index files name, and where it is.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<RepoId>,
    data: HashMap<RepoId, Entry>,
    trees: HashMap<RepoId, Entry>,
}

impl Index {
    /// Reads every index file of `repo`.
    pub fn read(repo: &Repo, which: Packs) -> Result<Index, Error> {
        let mut index = Index::default();
        let mut numbers: HashMap<RepoId, u32> = HashMap::new();
        for id in repo.list(FileType::Index)? {
            let file: IndexFile = repo.load_file(FileType::Index, &id)?;
            let doomed = match which {
                Packs::All => file.packs_to_delete.as_slice(),
                Packs::Live => &[],
            };
            for pack in file.packs.iter().chain(doomed) {
                let number = *numbers.entry(pack.id).or_insert_with(|| {
                    index.packs.push(pack.id);
                    u32::try_from(index.packs.len() - 1).unwrap_or(u32::MAX)
                });
                for blob in &pack.blobs {
                    index.add(number, blob);
                }
            }
        }
        Ok(index)
    }

    fn add(&mut self, pack: u32, blob: &IndexBlob) {
        let entry = Entry {
            pack,
            offset: blob.offset,
            length: blob.length,
            uncompressed_length: blob.uncompressed_length,
        };
        match blob.kind {
            BlobKind::Data => self.data.insert(blob.id, entry),
            BlobKind::Tree => self.trees.insert(blob.id, entry),
        };
    }

    fn location(&self, entry: &Entry) -> BlobLocation {
        BlobLocation {
            pack: self.packs[entry.pack as usize],
            offset: entry.offset,
            length: entry.length,
            uncompressed_length: entry.uncompressed_length,
        }
    }

    /// Where the blob of that kind is.
    pub fn blob(&self, kind: BlobKind, id: &RepoId) -> Option<BlobLocation> {
        let map = match kind {
            BlobKind::Data => &self.data,
            BlobKind::Tree => &self.trees,
        };
        map.get(id).map(|e| self.location(e))
    }

    /// Where the data blob is.
    pub fn data(&self, id: &RepoId) -> Option<BlobLocation> {
        self.blob(BlobKind::Data, id)
    }

    /// Where the tree blob is.
    pub fn tree(&self, id: &RepoId) -> Option<BlobLocation> {
        self.blob(BlobKind::Tree, id)
    }

    /// Whether the repository holds the blob of that kind.
    pub fn has(&self, kind: BlobKind, id: &RepoId) -> bool {
        match kind {
            BlobKind::Data => self.data.contains_key(id),
            BlobKind::Tree => self.trees.contains_key(id),
        }
    }

    /// The plain length of a data blob (its length before compression and encryption).
    pub fn data_len(&self, id: &RepoId) -> Option<u32> {
        self.data.get(id).map(|e| {
            e.uncompressed_length
                .unwrap_or(e.length.saturating_sub(crate::crypto::OVERHEAD as u32))
        })
    }

    /// The ids of every blob of that kind.
    pub fn ids(&self, kind: BlobKind) -> impl Iterator<Item = &RepoId> {
        match kind {
            BlobKind::Data => self.data.keys(),
            BlobKind::Tree => self.trees.keys(),
        }
    }
}

/// Index entries per index file, as restic splits them: a reader never has to take in one
/// huge file (and a file past the size readers accept is never written).
pub const BLOBS_PER_FILE: usize = 50_000;

/// Writes the index entries of `packs`, in files of at most [`BLOBS_PER_FILE`] blobs. Only a
/// write session calls it, when the packs are durable ([`crate::session::Session::index`]).
pub(crate) fn write(repo: &Repo, packs: Vec<IndexPack>) -> Result<(), Error> {
    let mut file = Vec::new();
    let mut blobs = 0;
    for pack in packs {
        blobs += pack.blobs.len();
        file.push(pack);
        if blobs >= BLOBS_PER_FILE {
            repo.save_file(
                FileType::Index,
                &IndexFile {
                    packs: std::mem::take(&mut file),
                    ..IndexFile::default()
                },
            )?;
            blobs = 0;
        }
    }
    if !file.is_empty() {
        repo.save_file(
            FileType::Index,
            &IndexFile {
                packs: file,
                ..IndexFile::default()
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: u8, kind: BlobKind, offset: u32, uncompressed: Option<u32>) -> IndexBlob {
        IndexBlob {
            id: RepoId([id; 32]),
            kind,
            offset,
            length: 100,
            uncompressed_length: uncompressed,
        }
    }

    #[test]
    fn a_data_blob_and_a_tree_with_one_id_are_two_blobs() {
        let mut index = Index {
            packs: vec![RepoId([1; 32]), RepoId([2; 32])],
            ..Index::default()
        };
        index.add(0, &blob(7, BlobKind::Data, 10, None));
        index.add(1, &blob(7, BlobKind::Tree, 20, Some(300)));
        let id = RepoId([7; 32]);
        let data = index.data(&id).expect("the data blob");
        let tree = index.tree(&id).expect("the tree");
        assert_eq!((data.pack, data.offset), (RepoId([1; 32]), 10));
        assert_eq!((tree.pack, tree.offset), (RepoId([2; 32]), 20));
        assert_eq!(index.ids(BlobKind::Data).count(), 1);
        assert_eq!(index.ids(BlobKind::Tree).count(), 1);
        assert!(index.has(BlobKind::Tree, &id) && index.has(BlobKind::Data, &id));
        assert!(!index.has(BlobKind::Data, &RepoId([8; 32])));
    }

    #[test]
    fn a_data_blobs_plain_length_is_its_uncompressed_one_or_its_sealed_one_less_the_envelope() {
        let mut index = Index {
            packs: vec![RepoId([1; 32])],
            ..Index::default()
        };
        index.add(0, &blob(1, BlobKind::Data, 0, None));
        index.add(0, &blob(2, BlobKind::Data, 100, Some(4096)));
        index.add(0, &blob(3, BlobKind::Tree, 200, None));
        let overhead = crate::crypto::OVERHEAD as u32;
        assert_eq!(index.data_len(&RepoId([1; 32])), Some(100 - overhead));
        assert_eq!(index.data_len(&RepoId([2; 32])), Some(4096));
        // A tree has no data length: it is not a data blob.
        assert_eq!(index.data_len(&RepoId([3; 32])), None);
    }
}
