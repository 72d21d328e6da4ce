//! Ceph RBD images as backup sources, against a real single-node cluster: a snapshot read
//! through librbd (qemu's rbd driver) is stored whole, an increment reads only what `rbd diff`
//! reports, and plain restic dumps every point byte-exact as `rbd export` gives it.

mod common;
use common::ceph::{Ceph, POOL};
use common::*;

use backstop_image::image::{Extent, ImageSource};
use backstop_image::nbd::NbdImage;
use backstop_image::rbd::RbdImage;
use backstop_repo::Repo;
use backstop_repo::format::RepoId;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_storage::local::LocalBackend;
use std::process::Command;
use std::sync::Arc;

fn backup(
    repo: &Repo,
    source: &dyn ImageSource,
    changed: Option<&[Extent]>,
    parent: Option<RepoId>,
) -> writer::BackupResult {
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source,
            changed,
            parent_path: parent.map(|_| DISK.into()),
        },
    }];
    writer::backup(
        repo,
        &files,
        &BackupOptions {
            parent,
            ..BackupOptions::default()
        },
    )
    .expect("backup")
}

/// Writes `pattern` at `offset` MiB for `mib` MiB into the live image, through qemu's driver.
fn write(ceph: &Ceph, image: &str, pattern: u8, offset: u64, mib: u64) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -P {pattern:#x} {offset}M {mib}M"))
        .arg(ceph.qemu_name(image))
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_rbd_snapshot_and_its_increments_are_stored_whole_and_read_by_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ceph = Ceph::start(dir.path());
    ceph.rbd(&["create", "--size", "64M", &format!("{POOL}/disk0")]);
    write(&ceph, "disk0", 0x11, 0, 8);
    write(&ceph, "disk0", 0x22, 40, 4);
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let base = RbdImage {
        pool: POOL.into(),
        image: "disk0".into(),
        snapshot: None,
        conf: Some(ceph.conf.clone()),
        user: None,
        keyfile: None,
    };

    // FULL from snapshot one_backup_0; the image keeps changing after it.
    ceph.rbd(&["snap", "create", &format!("{POOL}/disk0@one_backup_0")]);
    write(&ceph, "disk0", 0x33, 2, 3);
    let snap0 = NbdImage::open_rbd(&base.at("one_backup_0")).expect("export the snapshot");
    let full = backup(&repo, &snap0, None, None);
    drop(snap0);
    let expected0 = ceph.rbd_bytes(&["export", &format!("{POOL}/disk0@one_backup_0"), "-"]);
    assert_eq!(expected0.len(), 64 << 20);
    // A thin image: only the written 12 MiB are read.
    assert!(
        full.total.bytes_read <= 14 << 20,
        "read {} bytes of a 12 MiB thin image",
        full.total.bytes_read
    );

    // Increments: what rbd diff reports, and nothing else, is read.
    let mut parent = (full.snapshot_id, "one_backup_0".to_string());
    let mut points = vec![(full.snapshot_id, expected0)];
    for n in 1..=2u64 {
        write(&ceph, "disk0", 0x40 + n as u8, 20 + n * 7, 2);
        let snap = format!("one_backup_{n}");
        ceph.rbd(&["snap", "create", &format!("{POOL}/disk0@{snap}")]);
        let at = base.at(&snap);
        let changed = at.diff_from(&parent.1).expect("rbd diff");
        let changed_bytes: u64 = changed.iter().map(|e| e.length).sum();
        assert!(changed_bytes >= 2 << 20, "{changed:?}");
        let source = NbdImage::open_rbd(&at).expect("export");
        let inc = backup(&repo, &source, Some(&changed), Some(parent.0));
        assert!(
            inc.total.bytes_read <= changed_bytes + (4 << 20),
            "increment {n} read {} bytes for {changed_bytes} changed",
            inc.total.bytes_read
        );
        points.push((
            inc.snapshot_id,
            ceph.rbd_bytes(&["export", &format!("{POOL}/disk0@{snap}"), "-"]),
        ));
        parent = (inc.snapshot_id, snap);
    }
    for (id, bytes) in &points {
        let dumped = ok(
            restic(&repo_path, &["dump", &id.to_hex(), DISK]),
            "restic dump",
        );
        assert!(dumped == *bytes, "snapshot {id} differs from rbd export");
    }
    ok(
        restic(&repo_path, &["check", "--read-data"]),
        "restic check --read-data",
    );

    // Snapshots: listed with their protection, a protected one is unprotected and removed.
    base.snap_protect("one_backup_2").expect("protect");
    let snaps = base.snapshots().expect("snap ls");
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one_backup_0", "one_backup_1", "one_backup_2"]);
    assert!(snaps[2].protected && !snaps[0].protected);
    for s in &snaps {
        base.snap_remove(s).expect("snap rm");
    }
    assert!(base.snapshots().expect("snap ls").is_empty());
    base.snap_create("one_backup_7").expect("create");
    assert!(
        base.snap_create("one_backup_7").is_err(),
        "a snapshot taken twice"
    );
    assert!(base.snap_create("x@y").is_err());

    // A hostile name never reaches a command.
    let mut bad = base.at("one_backup_0");
    bad.image = "disk0:conf=/etc/passwd".into();
    assert!(NbdImage::open_rbd(&bad).is_err());
}

/// The image as `rbd export` gives it (raw) at `snap`.
fn exported(ceph: &Ceph, image: &str, snap: &str) -> Vec<u8> {
    ceph.rbd_bytes(&[
        "export",
        "--no-progress",
        &format!("{POOL}/{image}@{snap}"),
        "-",
    ])
}

fn qemu_io(ceph: &Ceph, image: &str, command: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", command])
        .arg(ceph.qemu_name(image))
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "qemu-io {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rbd_export_v2_and_export_diff_streams_rebuild_the_image_as_rbd_exports_it() {
    use backstop_image::rbd_stream::{apply, apply_until};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ceph = Ceph::start(dir.path());
    let img = format!("{POOL}/streams");
    ceph.rbd(&["create", "--size", "32M", &img]);
    write(&ceph, "streams", 0x11, 0, 2);
    ceph.rbd(&["snap", "create", &format!("{img}@older")]);
    write(&ceph, "streams", 0x22, 20, 1);
    qemu_io(&ceph, "streams", "write -P 0x5a 123457 1000");
    ceph.rbd(&["snap", "create", &format!("{img}@one_backup_0")]);
    // Changes after the snapshot the v2 export ends at: they must not show.
    write(&ceph, "streams", 0x33, 1, 1);
    qemu_io(&ceph, "streams", "discard 20M 1M");
    ceph.rbd(&["resize", "--size", "40M", &img]);
    write(&ceph, "streams", 0x44, 36, 2);
    ceph.rbd(&["snap", "create", &format!("{img}@one_backup_1")]);

    // The stock driver's first file: `rbd export --export-format 2` of the snapshot (its older
    // snapshot travels inside it as a diff of its own).
    let rbd2 = ceph.rbd_bytes(&[
        "export",
        "--no-progress",
        "--export-format",
        "2",
        &format!("{img}@one_backup_0"),
        "-",
    ]);
    let raw = dir.path().join("disk.raw");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&raw)
        .expect("create");
    // The export holds the older snapshot, one_backup_0, one_backup_1 and the head, whatever
    // snapshot it was asked for: the backup's point is one_backup_0.
    let applied = apply_until(&mut &rbd2[..], &file, "disk.0.rbd2", Some("one_backup_0"))
        .expect("apply rbd2");
    assert_eq!(applied.size, 32 << 20);
    assert_eq!(applied.to_snap.as_deref(), Some("one_backup_0"));
    assert_eq!(applied.from_snap, None);
    assert!(
        std::fs::read(&raw).expect("read") == exported(&ceph, "streams", "one_backup_0"),
        "the rbd2 stream rebuilds the snapshot"
    );
    // Sparse: the 29 MiB never written stay holes.
    let allocated = std::fs::metadata(&raw).expect("stat").blocks() * 512;
    assert!(allocated < 8 << 20, "{allocated} bytes allocated");

    // Then an increment: `rbd export-diff --from-snap` (a diff v1), with a discard and a grow.
    let rbdiff = ceph.rbd_bytes(&[
        "export-diff",
        "--no-progress",
        "--from-snap",
        "one_backup_0",
        &format!("{img}@one_backup_1"),
        "-",
    ]);
    assert!(rbdiff.starts_with(b"rbd diff v1\n"));
    let applied = apply(&mut &rbdiff[..], &file, "disk.0.1.rbdiff").expect("apply rbdiff");
    assert_eq!(applied.size, 40 << 20);
    assert_eq!(applied.from_snap.as_deref(), Some("one_backup_0"));
    assert_eq!(applied.to_snap.as_deref(), Some("one_backup_1"));
    assert!(applied.data_bytes < 8 << 20, "{applied:?}");
    assert!(
        std::fs::read(&raw).expect("read") == exported(&ceph, "streams", "one_backup_1"),
        "rbd2 then rbdiff rebuild the increment"
    );

    // A cut stream is refused, naming where.
    let e = apply(&mut &rbdiff[..rbdiff.len() - 5], &file, "disk.0.1.rbdiff")
        .expect_err("a cut stream");
    assert!(e.to_string().contains("ends early"), "{e}");
}
