//! The JSON documents of a restic repository that the writer produces and reads back: index
//! files, trees and snapshots (restic `doc/design.rst`). Fields restic does not need are left
//! out; restic ignores what it does not know and zero-fills what is missing.

use serde::{Deserialize, Serialize};

pub use backstop_storage::RepoId;

/// Blob types as index files name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob {
    pub id: RepoId,
    #[serde(rename = "type")]
    pub kind: BlobKind,
    pub offset: u32,
    /// Encrypted length in the pack.
    pub length: u32,
    /// Plain length, for compressed blobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

impl IndexBlob {
    /// The plain, uncompressed length of the blob's content.
    pub fn plain_length(&self) -> u32 {
        self.uncompressed_length
            .unwrap_or(self.length.saturating_sub(crate::crypto::OVERHEAD as u32))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: RepoId,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<RepoId>,
    pub packs: Vec<IndexPack>,
    /// rustic's two-phase prune marks packs here; they are still readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs_to_delete: Vec<IndexPack>,
}

/// Go's `os.ModeDir`.
pub const MODE_DIR: u32 = 0x8000_0000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub mtime: String,
    #[serde(default)]
    pub atime: String,
    #[serde(default)]
    pub ctime: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub device_id: u64,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub links: u64,
    #[serde(default)]
    pub content: Option<Vec<RepoId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<RepoId>,
}

impl Node {
    fn new(name: &str, kind: &str, mode: u32, time: &str) -> Node {
        Node {
            name: name.to_string(),
            kind: kind.into(),
            mode,
            mtime: time.to_string(),
            atime: time.to_string(),
            ctime: time.to_string(),
            uid: 0,
            gid: 0,
            user: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 1,
            content: None,
            subtree: None,
        }
    }

    pub fn file(name: &str, size: u64, content: Vec<RepoId>, time: &str) -> Node {
        Node {
            size,
            content: Some(content),
            ..Node::new(name, "file", 0o600, time)
        }
    }

    pub fn dir(name: &str, subtree: RepoId, time: &str) -> Node {
        Node {
            links: 2,
            subtree: Some(subtree),
            ..Node::new(name, "dir", MODE_DIR | 0o755, time)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RepoId>,
    pub tree: RepoId,
    pub paths: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<String>,
    /// For a copy (restic `copy`, backstop's sync): the snapshot it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<RepoId>,
    /// What the backup did (restic 0.17's `summary`; older snapshots have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// restic's snapshot summary, every field written. backstop's `total_bytes_processed` is what
/// the backup read from its sources (of a disk image, only what it read: the changed extents of
/// an increment), which is the size oned records for the backup (docs/repository-layout.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub backup_start: String,
    pub backup_end: String,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub data_added: u64,
    pub data_added_packed: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
}
