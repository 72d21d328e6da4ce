//! Verify and heal: a blob damaged on disk (one flipped byte in a pack) is found by verify,
//! with every snapshot that needs it; heal takes it out (the pack rewritten with its good
//! blobs); the next backup of the disk writes that chunk again; then verify is clean, `restic
//! check --read-data` is clean, and every snapshot, the old ones included, dumps as it was.

mod common;
use common::*;

use backstop_image::image::{CHUNK_SIZE, Extent};
use backstop_repo::Repo;
use backstop_repo::lock::RetryLock;
use backstop_repo::verify::{Share, heal, verify};
use backstop_storage::local::LocalBackend;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const NOW: RetryLock = RetryLock(Duration::ZERO);

/// Rewrites chunk `chunk` of the image with new bytes; the changed extent.
fn rewrite_chunk(image: &Path, chunk: u64, seed: u64) -> Extent {
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    Gen(seed).fill(&mut buf);
    fs::OpenOptions::new()
        .write(true)
        .open(image)
        .expect("open")
        .write_all_at(&buf, chunk * CHUNK_SIZE)
        .expect("write");
    Extent {
        offset: chunk * CHUNK_SIZE,
        length: CHUNK_SIZE,
    }
}

#[test]
fn a_damaged_blob_is_found_healed_and_written_again_by_the_next_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    make_image(&image, 24, 3);
    let path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&path)), PASSWORD).expect("init");
    let mut ids = Vec::new();
    let mut points = Vec::new();
    let mut parent = None;
    for k in 0..3u64 {
        // Chunk 1 (random data) never changes; increments change chunks 12 and up.
        let changed = (k > 0).then(|| vec![rewrite_chunk(&image, 11 + k, 50 + k)]);
        let r = backup_disk(&repo, &image, changed.as_deref(), parent);
        parent = Some(r.snapshot_id);
        ids.push(r.snapshot_id);
        points.push(fs::read(&image).expect("image"));
    }
    let clean = verify(&repo, &ids, None, NOW).expect("verify");
    assert!(clean.verdicts.iter().all(|v| v.bad.is_empty()), "{clean:?}");
    assert!(clean.blobs_read > 0);

    // A blob named damaged that reads intact (a passing read error) stays: nothing is lost.
    let (_, latest) = repo.find_snapshot(&ids[2].to_hex()).expect("snapshot");
    let known = repo.index().expect("index");
    let good = repo
        .file_node(&latest, DISK, &known)
        .expect("node")
        .expect("file")
        .content
        .expect("content")[3];
    let kept = heal(&repo, &[good], NOW).expect("heal");
    assert_eq!(kept.removed, 0, "{kept:?}");
    let again = verify(&repo, &ids, None, NOW).expect("verify");
    assert!(again.verdicts.iter().all(|v| v.bad.is_empty()), "{again:?}");

    // One flipped byte inside the blob of chunk 1, in its pack.
    let (_, snap) = repo.find_snapshot(&ids[2].to_hex()).expect("snapshot");
    let known = repo.index().expect("index");
    let node = repo
        .file_node(&snap, DISK, &known)
        .expect("node")
        .expect("file");
    let blob = node.content.expect("content")[1];
    let at = known.data(&blob).expect("locate");
    let hex = at.pack.to_hex();
    let pack = path.join("data").join(&hex[..2]).join(&hex);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .expect("pack");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, u64::from(at.offset) + 20)
        .expect("read");
    f.write_all_at(&[b[0] ^ 0x01], u64::from(at.offset) + 20)
        .expect("flip");

    let found = verify(&repo, &ids, None, NOW).expect("verify");
    for v in &found.verdicts {
        assert_eq!(
            v.bad,
            [blob],
            "snapshot {} needs the damaged blob",
            v.snapshot
        );
    }
    // A share of the packs that does not hold it does not see it; the one that does, does.
    let share = |n| Share { n, m: 4 };
    let seen: Vec<bool> = (1..=4)
        .map(|n| {
            verify(&repo, &ids[..1], Some(share(n)), NOW)
                .expect("verify")
                .verdicts[0]
                .bad
                .contains(&blob)
        })
        .collect();
    assert_eq!(seen.iter().filter(|s| **s).count(), 1, "{seen:?}");

    let healed = heal(&repo, &[blob], NOW).expect("heal");
    assert_eq!((healed.packs, healed.removed), (1, 1), "{healed:?}");
    assert!(!pack.exists(), "the damaged pack stayed");
    // Now missing, not damaged: still bad until the disk is read again.
    let missing = verify(&repo, &ids, None, NOW).expect("verify");
    assert!(
        missing.verdicts.iter().all(|v| v.bad == [blob]),
        "{missing:?}"
    );

    // The next backup (an increment naming only chunk 20 as changed) reads chunk 1 again.
    let changed = [rewrite_chunk(&image, 20, 99)];
    let r = backup_disk(&repo, &image, Some(&changed), parent);
    assert!(r.total.new_blobs >= 2, "{:?}", r.total);
    ids.push(r.snapshot_id);
    points.push(fs::read(&image).expect("image"));
    let after = verify(&repo, &ids, None, NOW).expect("verify");
    assert!(after.verdicts.iter().all(|v| v.bad.is_empty()), "{after:?}");
    ok(
        restic(&path, &["check", "--read-data"]),
        "restic check --read-data",
    );
    for (id, want) in ids.iter().zip(&points) {
        let data = ok(restic(&path, &["dump", &id.to_hex(), DISK]), "restic dump");
        assert!(data == *want, "snapshot {id} after the heal");
    }
}

#[test]
fn shares_are_checked() {
    assert_eq!(Share::parse("2/5").expect("2/5"), Share { n: 2, m: 5 });
    for bad in ["0/5", "6/5", "1/0", "x", "1/x"] {
        assert!(Share::parse(bad).is_err(), "{bad}");
    }
}
