//! Copying snapshots between repositories by blob id: a VM's chain (FULL and 5 increments)
//! copied into a repository with another password; every copy dumps byte-exact with plain
//! restic there and `restic check --read-data` is clean; a second copy moves nothing; one more
//! increment moves little more than what it stored; restic's own snapshots copy too; a blob
//! damaged at the source stops the copy, naming it, before any snapshot names it.

mod common;
use common::*;

use backstop_repo::Repo;
use backstop_repo::copy::{CopyOptions, copy};
use backstop_repo::format::RepoId;
use backstop_storage::local::LocalBackend;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const OTHER: &str = "the destination's own password";

fn restic_with(repo: &Path, password: &str, args: &[&str]) -> Vec<u8> {
    ok(
        backstop_testkit::restic::local(repo, password, args),
        &format!("restic {args:?}"),
    )
}

#[test]
fn a_chain_copies_by_blob_and_a_second_copy_moves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    make_image(&image, 48, 7);
    let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
    let src = Repo::init(Arc::new(LocalBackend::new(&src_path)), PASSWORD).expect("init");
    let dst = Repo::init(Arc::new(LocalBackend::new(&dst_path)), OTHER).expect("init");

    // FULL and five increments, the image saved at each point.
    let mut ids = Vec::new();
    let mut points = Vec::new();
    let mut parent = None;
    for k in 0..6u64 {
        let changed = (k > 0).then(|| scribble(&image, 12, 100 + k));
        let r = backup_disk(&src, &image, changed.as_deref(), parent);
        parent = Some(r.snapshot_id);
        ids.push(r.snapshot_id);
        points.push(fs::read(&image).expect("image"));
    }

    let (copied, stats) = copy(&src, &dst, &ids, &CopyOptions::default()).expect("copy");
    assert_eq!((copied.len(), stats.snapshots, stats.skipped), (6, 6, 0));
    assert!(stats.bytes_written > 0 && stats.data_blobs > 0, "{stats:?}");
    restic_with(&dst_path, OTHER, &["check", "--read-data"]);
    for (c, want) in copied.iter().zip(&points) {
        let data = restic_with(&dst_path, OTHER, &["dump", &c.copy.to_hex(), DISK]);
        assert!(data == *want, "copy {} of {} differs", c.copy, c.source);
    }
    // The copies name their originals.
    let listed: serde_json::Value =
        serde_json::from_slice(&restic_with(&dst_path, OTHER, &["snapshots", "--json"]))
            .expect("json");
    for c in &copied {
        assert!(
            listed
                .as_array()
                .expect("array")
                .iter()
                .any(|s| s["original"] == c.source.to_hex()),
            "no copy names {} as its original: {listed}",
            c.source
        );
    }

    // Again: nothing to read, nothing to write.
    let (again, stats) = copy(&src, &dst, &ids, &CopyOptions::default()).expect("copy again");
    assert!(again.is_empty());
    assert_eq!(
        (stats.skipped, stats.bytes_read, stats.bytes_written),
        (6, 0, 0)
    );

    // One more increment: the copy moves its new blobs and its trees, little more.
    let changed = scribble(&image, 12, 999);
    let r = backup_disk(&src, &image, Some(&changed), parent);
    let stored = r.total.added_bytes;
    let (one, stats) = copy(&src, &dst, &[r.snapshot_id], &CopyOptions::default()).expect("copy");
    assert_eq!(one.len(), 1);
    assert!(
        stats.bytes_written * 10 <= stored * 11,
        "the increment stored {stored} bytes, its copy wrote {}",
        stats.bytes_written
    );
    let data = restic_with(&dst_path, OTHER, &["dump", &one[0].copy.to_hex(), DISK]);
    assert!(data == fs::read(&image).expect("image"));
}

#[test]
fn restics_snapshots_copy_and_a_damaged_blob_stops_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
    ok(restic(&src_path, &["init"]), "restic init");
    let files = dir.path().join("files");
    fs::create_dir_all(files.join("sub")).expect("files");
    let mut g = Gen(5);
    let mut big = vec![0u8; 3 << 20];
    g.fill(&mut big);
    fs::write(files.join("big.bin"), &big).expect("big");
    fs::write(files.join("sub/note.txt"), b"kept by restic").expect("note");
    ok(
        restic(&src_path, &["backup", files.to_str().expect("utf-8")]),
        "restic backup",
    );
    let src = Repo::open(Arc::new(LocalBackend::new(&src_path)), PASSWORD).expect("open");
    let dst = Repo::init(Arc::new(LocalBackend::new(&dst_path)), OTHER).expect("init");
    let ids: Vec<RepoId> = src
        .all_snapshots()
        .expect("snapshots")
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let (copied, _) = copy(&src, &dst, &ids, &CopyOptions::default()).expect("copy");
    let path = format!("{}/sub/note.txt", files.display());
    let note = restic_with(&dst_path, OTHER, &["dump", &copied[0].copy.to_hex(), &path]);
    assert_eq!(note, b"kept by restic");
    let path = format!("{}/big.bin", files.display());
    assert!(restic_with(&dst_path, OTHER, &["dump", &copied[0].copy.to_hex(), &path]) == big);

    // A flipped byte in a data pack at the source: the copy into a fresh destination fails,
    // naming the blob, and leaves no snapshot there.
    let fresh_path = dir.path().join("fresh");
    let fresh = Repo::init(Arc::new(LocalBackend::new(&fresh_path)), OTHER).expect("init");
    let mut largest = None;
    for entry in walk(&src_path.join("data")) {
        let len = fs::metadata(&entry).expect("meta").len();
        if largest.as_ref().is_none_or(|(_, l)| len > *l) {
            largest = Some((entry, len));
        }
    }
    let (pack, _) = largest.expect("a pack");
    let mut bytes = fs::read(&pack).expect("pack");
    bytes[100] ^= 0x40;
    fs::write(&pack, bytes).expect("damage");
    let e = copy(&src, &fresh, &ids, &CopyOptions::default()).expect_err("a damaged blob");
    assert!(e.to_string().contains("blob"), "{e}");
    assert!(
        fresh
            .list(backstop_repo::FileType::Snapshot)
            .expect("list")
            .is_empty(),
        "a snapshot was written over a failed copy"
    );
}

/// The repository id restic reads from a repository's config.
fn config_id(repo: &Path, password: &str) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&restic_with(repo, password, &["cat", "config"])).expect("json");
    config["id"].as_str().expect("id").to_string()
}

/// The tags restic shows for each snapshot of a repository, oldest first.
fn restic_tags(repo: &Path, password: &str) -> Vec<(String, Vec<String>)> {
    let listed: serde_json::Value =
        serde_json::from_slice(&restic_with(repo, password, &["snapshots", "--json"]))
            .expect("json");
    listed
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            let tags = s["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .map(|t| t.as_str().expect("tag").to_string())
                        .collect()
                })
                .unwrap_or_default();
            (s["id"].as_str().expect("id").to_string(), tags)
        })
        .collect()
}

/// Each copy records the repository it came from in a tag restic shows and copies: copies from
/// two sources in one destination name each its own source (by the id `restic cat config`
/// prints), a tag the source's snapshot claimed is replaced, a copy of a copy names the
/// repository it was copied from last, and restic's own `copy` keeps the tag; every copy
/// dumps byte-exact with restic.
#[test]
fn copies_record_the_repository_they_came_from() {
    use backstop_repo::copy::{copied_from, source_tag};
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 21);
    let path = |name: &str| dir.path().join(name);
    let a = Repo::init(Arc::new(LocalBackend::new(path("a"))), PASSWORD).expect("init");
    let dst = Repo::init(Arc::new(LocalBackend::new(path("dst"))), OTHER).expect("init");
    let a_snap = backup_disk(&a, &image, None, None).snapshot_id;
    let a_image = fs::read(&image).expect("image");

    // B is restic's, and its snapshot claims to be a copy from A already.
    ok(restic(&path("b"), &["init"]), "restic init");
    let claimed = format!("copied-from:{}", config_id(&path("a"), PASSWORD));
    ok(
        restic(
            &path("b"),
            &[
                "backup",
                "--tag",
                &format!("one-22,{claimed}"),
                image.to_str().expect("utf-8"),
            ],
        ),
        "restic backup",
    );
    let b = Repo::open(Arc::new(LocalBackend::new(path("b"))), PASSWORD).expect("open");
    let b_snaps: Vec<RepoId> = b
        .all_snapshots()
        .expect("snapshots")
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();

    let (from_a, _) = copy(&a, &dst, &[a_snap], &CopyOptions::default()).expect("copy a");
    let (from_b, _) = copy(&b, &dst, &b_snaps, &CopyOptions::default()).expect("copy b");
    let (a_id, b_id) = (
        config_id(&path("a"), PASSWORD),
        config_id(&path("b"), PASSWORD),
    );
    assert_eq!(
        (a.id().to_hex(), b.id().to_hex()),
        (a_id.clone(), b_id.clone())
    );
    let tags = restic_tags(&path("dst"), OTHER);
    let of = |id: RepoId| -> Vec<String> {
        tags.iter()
            .find(|(s, _)| *s == id.to_hex())
            .map(|(_, t)| t.clone())
            .expect("listed")
    };
    assert_eq!(
        of(from_a[0].copy),
        ["one-22".to_string(), format!("copied-from:{a_id}")]
    );
    assert_eq!(
        of(from_b[0].copy),
        ["one-22".to_string(), format!("copied-from:{b_id}")],
        "the claim B's snapshot made was kept"
    );
    let recorded = |repo: &Repo, id: RepoId| {
        let snap: backstop_repo::format::Snapshot = repo
            .load_file(backstop_repo::FileType::Snapshot, &id)
            .expect("snapshot");
        copied_from(&snap)
    };
    assert_eq!(recorded(&dst, from_a[0].copy), Some(a.id()));
    assert_eq!(recorded(&dst, from_b[0].copy), Some(b.id()));
    assert_eq!(recorded(&a, a_snap), None, "a backup is no copy");
    let dumped = restic_with(
        &path("dst"),
        OTHER,
        &["dump", &from_a[0].copy.to_hex(), DISK],
    );
    assert!(dumped == a_image, "the copy from A differs");

    // A copy of the copy names the repository it came from last.
    let e = Repo::init(Arc::new(LocalBackend::new(path("e"))), OTHER).expect("init");
    let (again, _) = copy(&dst, &e, &[from_a[0].copy], &CopyOptions::default()).expect("copy");
    assert_eq!(recorded(&e, again[0].copy), Some(dst.id()));
    assert_eq!(
        restic_tags(&path("e"), OTHER)[0].1,
        ["one-22".to_string(), source_tag(dst.id())]
    );

    // restic's own copy keeps the tag (and the copy still dumps).
    let f = path("f");
    restic_with(&f, OTHER, &["init"]);
    ok(
        Command::new("restic")
            .arg("--repo")
            .arg(&f)
            .args(["--no-cache", "copy", "--from-repo"])
            .arg(path("dst"))
            .arg(from_a[0].copy.to_hex())
            .env("RESTIC_PASSWORD", OTHER)
            .env("RESTIC_FROM_PASSWORD", OTHER)
            .output()
            .expect("restic"),
        "restic copy",
    );
    let in_f = restic_tags(&f, OTHER);
    assert_eq!(in_f.len(), 1);
    assert_eq!(
        in_f[0].1,
        ["one-22".to_string(), format!("copied-from:{a_id}")]
    );
    assert!(restic_with(&f, OTHER, &["dump", &in_f[0].0, DISK]) == a_image);
}

/// A copy made for a sync job also names the job (`copied-by:<its id>`), in place of any such
/// tag the source's snapshot claims; a copy made by no job (`backstop repo copy`) drops the
/// claim and names none. restic shows the tags, the copies dump byte-exact and the destination
/// checks clean; a malformed or doubled tag names no job.
#[test]
fn copies_record_the_job_that_made_them() {
    use backstop_repo::copy::{CopierId, copied_by};
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    make_image(&image, 8, 23);
    let image_bytes = fs::read(&image).expect("image");
    let path = |name: &str| dir.path().join(name);
    let a = Repo::init(Arc::new(LocalBackend::new(path("a"))), PASSWORD).expect("init");
    let a_snap = backup_disk(&a, &image, None, None).snapshot_id;
    let (job, other) = (
        CopierId::random().expect("random"),
        CopierId::random().expect("random"),
    );
    assert_eq!(job.as_str().len(), 32);
    assert_ne!(job, other);

    // B is restic's, and its snapshot claims to have been copied by `job` already.
    ok(restic(&path("b"), &["init"]), "restic init");
    ok(
        restic(
            &path("b"),
            &[
                "backup",
                "--tag",
                &format!("one-22,{}", job.tag()),
                image.to_str().expect("utf-8"),
            ],
        ),
        "restic backup",
    );
    let b = Repo::open(Arc::new(LocalBackend::new(path("b"))), PASSWORD).expect("open");
    let b_snaps: Vec<RepoId> = b
        .all_snapshots()
        .expect("snapshots")
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();

    let dst = Repo::init(Arc::new(LocalBackend::new(path("dst"))), OTHER).expect("init");
    let by = |job: Option<&CopierId>| CopyOptions {
        copied_by: job.cloned(),
        ..CopyOptions::default()
    };
    let (from_a, _) = copy(&a, &dst, &[a_snap], &by(Some(&job))).expect("copy a");
    let (from_b, _) = copy(&b, &dst, &b_snaps, &by(None)).expect("copy b");
    let tags = restic_tags(&path("dst"), OTHER);
    let of = |id: RepoId| -> Vec<String> {
        tags.iter()
            .find(|(s, _)| *s == id.to_hex())
            .map(|(_, t)| t.clone())
            .expect("listed")
    };
    let (a_from, b_from) = (
        format!("copied-from:{}", a.id().to_hex()),
        format!("copied-from:{}", b.id().to_hex()),
    );
    assert_eq!(
        of(from_a[0].copy),
        [
            "one-22".to_string(),
            a_from.clone(),
            format!("copied-by:{job}")
        ]
    );
    assert_eq!(
        of(from_b[0].copy),
        ["one-22".to_string(), b_from.clone()],
        "a copy by no job kept the job B's snapshot claimed"
    );
    let recorded = |repo: &Repo, id: RepoId| {
        let snap: backstop_repo::format::Snapshot = repo
            .load_file(backstop_repo::FileType::Snapshot, &id)
            .expect("snapshot");
        copied_by(&snap)
    };
    assert_eq!(recorded(&dst, from_a[0].copy), Some(job.clone()));
    assert_eq!(recorded(&dst, from_b[0].copy), None);
    assert_eq!(
        recorded(&b, b_snaps[0]),
        Some(job.clone()),
        "B's claim as read"
    );

    // Another job copying B: its own id replaces the one B's snapshot claimed.
    let e = Repo::init(Arc::new(LocalBackend::new(path("e"))), OTHER).expect("init");
    let (again, _) = copy(&b, &e, &b_snaps, &by(Some(&other))).expect("copy");
    assert_eq!(recorded(&e, again[0].copy), Some(other.clone()));
    assert_eq!(
        restic_tags(&path("e"), OTHER)[0].1,
        ["one-22".to_string(), b_from, other.tag()]
    );

    let b_file = image.to_str().expect("utf-8");
    for (repo, id, file) in [
        (&path("dst"), from_a[0].copy, DISK),
        (&path("e"), again[0].copy, b_file),
    ] {
        assert!(
            restic_with(repo, OTHER, &["dump", &id.to_hex(), file]) == image_bytes,
            "{id}"
        );
        restic_with(repo, OTHER, &["check", "--read-data"]);
    }

    // What names no job: two tags, or one that is not an id.
    let claim = |tags: &[&str]| {
        copied_by(&backstop_repo::format::Snapshot {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..dst
                .load_file(backstop_repo::FileType::Snapshot, &from_a[0].copy)
                .expect("snapshot")
        })
    };
    assert_eq!(claim(&[&job.tag()]), Some(job.clone()));
    assert_eq!(claim(&[&job.tag(), &other.tag()]), None);
    assert_eq!(claim(&["copied-by:0123"]), None, "too short");
    assert_eq!(claim(&[&job.tag().to_uppercase()]), None);
    assert_eq!(
        claim(&[&format!("copied-by:{}x", &job.as_str()[1..])]),
        None
    );
    assert_eq!(CopierId::parse(&"f".repeat(65)), None, "too long");
}

/// A tree and a data blob with the same bytes have the same id; restic keys blobs by type and
/// id, so a destination holding the bytes of a source's tree as DATA still lacks that tree. The
/// copy must send the tree (a guest's disk could hold such bytes): the copied snapshot then
/// checks clean and dumps with plain restic.
#[test]
fn a_data_blob_with_a_trees_bytes_does_not_stand_for_the_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
    ok(restic(&src_path, &["init"]), "restic init");
    let files = dir.path().join("files");
    fs::create_dir_all(&files).expect("files");
    fs::write(files.join("note.txt"), b"the source's file").expect("note");
    ok(
        restic(&src_path, &["backup", files.to_str().expect("utf-8")]),
        "restic backup",
    );
    let snaps: serde_json::Value = serde_json::from_slice(&ok(
        restic(&src_path, &["snapshots", "--json"]),
        "snapshots",
    ))
    .expect("json");
    let tree = snaps[0]["tree"]
        .as_str()
        .expect("the snapshot's tree")
        .to_string();
    let tree_bytes = ok(restic(&src_path, &["cat", "blob", &tree]), "cat blob");

    // The destination holds those bytes as a data blob (a file smaller than restic's smallest
    // chunk is one blob).
    let dst = Repo::init(Arc::new(LocalBackend::new(&dst_path)), OTHER).expect("init");
    let lookalike = dir.path().join("lookalike");
    fs::create_dir_all(&lookalike).expect("dir");
    fs::write(lookalike.join("tree.json"), &tree_bytes).expect("lookalike");
    restic_with(
        &dst_path,
        OTHER,
        &["backup", lookalike.to_str().expect("utf-8")],
    );
    let as_data = restic_with(&dst_path, OTHER, &["cat", "blob", &tree]);
    assert!(
        as_data == tree_bytes,
        "the destination holds the tree's bytes as data"
    );

    let src = Repo::open(Arc::new(LocalBackend::new(&src_path)), PASSWORD).expect("open");
    let ids: Vec<RepoId> = src
        .all_snapshots()
        .expect("snapshots")
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let (copied, _) = copy(&src, &dst, &ids, &CopyOptions::default()).expect("copy");
    restic_with(&dst_path, OTHER, &["check", "--read-data"]);
    let path = format!("{}/note.txt", files.display());
    let note = restic_with(&dst_path, OTHER, &["dump", &copied[0].copy.to_hex(), &path]);
    assert_eq!(note, b"the source's file");
}

/// A heal at the destination takes a damaged data blob out of its index and leaves the trees
/// that name it. A later copy of a snapshot sharing such a tree (an unchanged directory) must
/// still send the blob: the new copy dumps byte-exact with plain restic.
#[test]
fn a_copy_after_a_heal_at_the_destination_sends_what_the_heal_took_out() {
    use backstop_repo::verify::heal;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
    ok(restic(&src_path, &["init"]), "restic init");
    let files = dir.path().join("files");
    fs::create_dir_all(files.join("sub")).expect("files");
    fs::write(files.join("sub/note.txt"), b"under an unchanged directory").expect("note");
    let target = files.to_str().expect("utf-8");
    ok(restic(&src_path, &["backup", target]), "restic backup 1");
    fs::write(files.join("new.txt"), b"only in the second snapshot").expect("new");
    ok(restic(&src_path, &["backup", target]), "restic backup 2");
    let src = Repo::open(Arc::new(LocalBackend::new(&src_path)), PASSWORD).expect("open");
    let mut snaps = src.all_snapshots().expect("snapshots");
    snaps.sort_by_key(|(_, s, _)| s.time.clone());
    let (first, second) = (snaps[0].0, snaps[1].0);

    let dst = Repo::init(Arc::new(LocalBackend::new(&dst_path)), OTHER).expect("init");
    let (copied, _) = copy(&src, &dst, &[first], &CopyOptions::default()).expect("copy 1");
    // The note's blob at the destination: one flipped byte, then healed out of the index.
    let note = format!("{}/sub/note.txt", files.display());
    let (_, snap) = dst
        .find_snapshot(&copied[0].copy.to_hex())
        .expect("the copy");
    let known = dst.index().expect("index");
    let blob = dst
        .file_node(&snap, &note, &known)
        .expect("node")
        .expect("file")
        .content
        .expect("content")[0];
    let at = known.data(&blob).expect("locate");
    let hex = at.pack.to_hex();
    let pack = dst_path.join("data").join(&hex[..2]).join(&hex);
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
    drop(f);
    let healed = heal(
        &dst,
        &[blob],
        backstop_repo::lock::RetryLock(std::time::Duration::ZERO),
    )
    .expect("heal");
    assert_eq!(healed.removed, 1, "{healed:?}");
    assert!(
        !dst.index()
            .expect("index")
            .has(backstop_repo::format::BlobKind::Data, &blob)
    );

    // The second snapshot shares the tree of sub/ with the first.
    let (again, _) = copy(&src, &dst, &[second], &CopyOptions::default()).expect("copy 2");
    assert_eq!(again.len(), 1);
    let dumped = restic_with(&dst_path, OTHER, &["dump", &again[0].copy.to_hex(), &note]);
    assert_eq!(dumped, b"under an unchanged directory");
}
