//! What a hostile repository's files make backstop decompress and allocate: whoever can write
//! a repository (a PULL sync job's source, a compromised backup server, anyone with its
//! password) writes index and snapshot files that expand past any size, and index entries that
//! state any blob length. Each is refused in one error naming the file or blob, before the
//! memory is taken; a restore, a verify and a copy all hold.

mod common;
use common::*;

use backstop_repo::copy::{CopyOptions, copy};
use backstop_repo::format::{BlobKind, IndexFile, RepoId};
use backstop_repo::lock::RetryLock;
use backstop_repo::{FileType, Repo};
use backstop_storage::local::LocalBackend;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const NOW: RetryLock = RetryLock(Duration::ZERO);

fn repo_with_a_backup(dir: &Path) -> (Repo, RepoId) {
    let image = dir.join("disk.raw");
    make_image(&image, 8, 3);
    let repo = Repo::init(Arc::new(LocalBackend::new(dir.join("repo"))), PASSWORD).expect("init");
    let snap = backup_disk(&repo, &image, None, None).snapshot_id;
    (repo, snap)
}

/// A JSON document of `padding` bytes and more that zstd packs into a few KiB.
fn padded(padding: usize) -> serde_json::Value {
    serde_json::json!({ "packs": [], "padding": "a".repeat(padding) })
}

#[test]
fn index_and_snapshot_files_that_decompress_past_their_cap_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, _) = repo_with_a_backup(dir.path());
    // 65 MiB of JSON, past the 64 MiB an index or snapshot file may hold, stored in a few KiB.
    let bomb = repo
        .save_file(FileType::Index, &padded(65 << 20))
        .expect("save");
    let stored = std::fs::metadata(dir.path().join("repo/index").join(bomb.to_hex()))
        .expect("stored")
        .len();
    assert!(stored < 1 << 20, "the index file is {stored} bytes");
    let e = repo.index().expect_err("the index file is refused");
    assert_eq!(
        e.to_string(),
        format!(
            "Index file {bomb} decompresses to more than the 67108864 bytes such a file may have; it is not read"
        )
    );
    std::fs::remove_file(dir.path().join("repo/index").join(bomb.to_hex())).expect("remove");
    repo.index().expect("the index without it");

    let bomb = repo
        .save_file(FileType::Snapshot, &padded(65 << 20))
        .expect("save");
    let e = repo
        .all_snapshots()
        .expect_err("the snapshot file is refused");
    let said = format!(
        "Snapshot file {bomb} decompresses to more than the 67108864 bytes such a file may have; it is not read"
    );
    assert_eq!(e.to_string(), said);
    // rustic_core, which decompresses whole, is refused the file before it reads it.
    let e = repo
        .snapshots()
        .expect_err("rustic_core is refused the file");
    assert!(e.to_string().contains(&said), "{e}");
}

/// The index files of `repo` rewritten so that data blob `victim` states `stated` bytes
/// uncompressed.
fn restate(repo: &Repo, victim: &RepoId, stated: u32) {
    for id in repo.list(FileType::Index).expect("list") {
        let mut index: IndexFile = repo.load_file(FileType::Index, &id).expect("index");
        let mut hit = false;
        for b in index.packs.iter_mut().flat_map(|p| p.blobs.iter_mut()) {
            if b.id == *victim {
                b.uncompressed_length = Some(stated);
                hit = true;
            }
        }
        if hit {
            repo.save_file(FileType::Index, &index).expect("save");
            repo.backend()
                .remove(FileType::Index, &id.to_rustic(), true)
                .expect("remove the old index");
        }
    }
}

#[test]
fn a_blob_length_the_index_states_past_the_cap_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, snap) = repo_with_a_backup(dir.path());
    // A compressed data blob of the disk (the text-like chunk).
    let victim = {
        let mut found = None;
        for id in repo.list(FileType::Index).expect("list") {
            let index: IndexFile = repo.load_file(FileType::Index, &id).expect("index");
            found = found.or(index
                .packs
                .iter()
                .flat_map(|p| p.blobs.iter())
                .find(|b| b.kind == BlobKind::Data && b.uncompressed_length.is_some())
                .map(|b| b.id));
        }
        found.expect("a compressed data blob")
    };
    restate(&repo, &victim, u32::MAX);
    let stated = format!(
        "blob {victim}: its index entry gives it 4294967295 bytes uncompressed, more than the 67108864 bytes a blob may have; it is not read"
    );

    // A dump (what the downloader streams a stored file with) stops at it.
    let mut out = Vec::new();
    let e = repo
        .dump(&snap.to_hex(), DISK, &mut out, NOW)
        .expect_err("dump");
    assert!(e.to_string().contains(&stated), "{e}");

    // A verify counts it as damage, without reading it.
    let report = backstop_repo::verify::verify(&repo, &[snap], None, NOW).expect("verify");
    assert_eq!(report.verdicts.len(), 1);
    assert_eq!(report.verdicts[0].bad, vec![victim]);

    // A copy (a sync from this repository) stops at it, naming the source.
    let dst = Repo::init(
        Arc::new(LocalBackend::new(dir.path().join("dst"))),
        PASSWORD,
    )
    .expect("init");
    let e = copy(&repo, &dst, &[snap], &CopyOptions::default()).expect_err("copy");
    assert_eq!(e.to_string(), format!("the source's {stated}"));
    assert!(dst.list(FileType::Snapshot).expect("list").is_empty());

    // A stated length a little off is damage too (restic writes it exactly).
    restate(&repo, &victim, (1 << 20) + 1);
    let e = repo
        .dump(&snap.to_hex(), DISK, &mut Vec::new(), NOW)
        .expect_err("dump");
    assert!(
        e.to_string().contains(&format!(
            "blob {victim} decompresses to 1048576 bytes, not the 1048577 its index entry gives"
        )),
        "{e}"
    );
}
