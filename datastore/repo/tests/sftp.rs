//! The SFTP backend against a real sshd: what we write over SFTP, restic reads and checks;
//! host keys are verified (known_hosts plain and hashed, or a pinned fingerprint); a wrong
//! password writes nothing.

mod common;
use common::sshd::{ADDR, Sshd};
use common::*;

use backstop_image::image::{Extent, ImageSource, RawImage};
use backstop_repo::Repo;
use backstop_repo::format::RepoId;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_storage::Storage;
use backstop_storage::cache::CachedStorage;
use backstop_storage::sftp::{SftpBackend, SftpLocation, SftpOptions};
use std::fs;
use std::path::Path;
use std::sync::Arc;

fn options(config: &Path) -> SftpOptions {
    SftpOptions {
        connections: 3,
        ssh_config: Some(config.to_path_buf()),
        ..SftpOptions::default()
    }
}

fn connect(repo_dir: &Path, opts: &SftpOptions) -> Result<SftpBackend, String> {
    let loc =
        SftpLocation::parse(&format!("sftp:backup1:{}", repo_dir.display())).expect("location");
    SftpBackend::connect(&loc, opts).map_err(|e| e.to_string())
}

fn backup(repo: &Repo, image: &Path, changed: Option<&[Extent]>, parent: Option<RepoId>) -> RepoId {
    let source = RawImage::open(image).expect("image");
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source: &source,
            changed,
            parent_path: Some(DISK.into()),
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
    .snapshot_id
}

#[test]
fn an_unknown_host_key_is_refused_with_host_and_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let empty = sshd.dir.join("empty_known_hosts");
    fs::write(&empty, "").expect("empty");
    let config = sshd.config_with_known_hosts("ssh_config_unknown", &empty);
    let repo_dir = dir.path().join("remote/repo");
    let err = connect(&repo_dir, &options(&config)).expect_err("unknown key");
    let expected = format!(
        "unknown host key for backup1 ({ADDR}:{}) (fingerprint {}); it is in none of {}: add it (ssh-keyscan -p {} {ADDR} >> ~/.ssh/known_hosts) after checking the fingerprint, or pin it",
        sshd.port,
        sshd.fingerprint(),
        empty.display(),
        sshd.port
    );
    assert_eq!(err, expected);
    assert!(
        !repo_dir.exists(),
        "something was written to an unverified server"
    );
}

#[test]
fn a_changed_host_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let other = sshd.dir.join("other_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            other.to_str().expect("utf-8"),
        ])
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let wrong = sshd.dir.join("wrong_known_hosts");
    fs::write(
        &wrong,
        format!(
            "[{ADDR}]:{} {}",
            sshd.port,
            fs::read_to_string(other.with_extension("pub")).expect("pub")
        ),
    )
    .expect("write");
    let config = sshd.config_with_known_hosts("ssh_config_changed", &wrong);
    let err = connect(&dir.path().join("r"), &options(&config)).expect_err("changed key");
    assert!(
        err.starts_with(&format!(
            "host key of backup1 ({ADDR}:{}) has CHANGED: it now has fingerprint {}",
            sshd.port,
            sshd.fingerprint()
        )),
        "{err}"
    );
}

#[test]
fn hashed_known_hosts_and_pinned_fingerprints_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let hashed = sshd.dir.join("hashed_known_hosts");
    fs::copy(&sshd.known_hosts, &hashed).expect("copy");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-H", "-f"])
        .arg(&hashed)
        .output()
        .expect("ssh-keygen -H");
    assert!(out.status.success());
    assert!(
        fs::read_to_string(&hashed)
            .expect("read")
            .starts_with("|1|"),
        "not hashed"
    );
    let config = sshd.config_with_known_hosts("ssh_config_hashed", &hashed);
    connect(&dir.path().join("r1"), &options(&config)).expect("hashed known_hosts entry");

    let empty = sshd.dir.join("none");
    fs::write(&empty, "").expect("empty");
    let config = sshd.config_with_known_hosts("ssh_config_pinned", &empty);
    let pinned = SftpOptions {
        host_fingerprint: Some(sshd.fingerprint()),
        ..options(&config)
    };
    connect(&dir.path().join("r2"), &pinned).expect("pinned fingerprint");
    let wrong = SftpOptions {
        host_fingerprint: Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        ..options(&config)
    };
    let err = connect(&dir.path().join("r3"), &wrong).expect_err("wrong pin");
    assert!(err.contains("not the pinned SHA256:AAAA"), "{err}");
}

#[test]
fn a_wrong_password_over_sftp_is_one_error_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("remote/repo");
    let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
    Repo::init(Arc::new(be), PASSWORD).expect("init");
    let before = walk(&repo_dir);
    let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
    let err = Repo::open(Arc::new(be), "wrong").expect_err("wrong password");
    assert_eq!(
        err.to_string(),
        format!(
            "wrong password for the repository at sftp:root@backup1:{} (no key file opens with it)",
            repo_dir.display()
        )
    );
    assert_eq!(walk(&repo_dir), before);
}

/// Regression: when writing a pack failed (here the pack directories were replaced by files),
/// the backup reported "N of M chunks were backed up" or "the backup was stopped" instead of
/// the failure itself.
#[test]
fn a_failed_pack_write_is_reported_as_itself() {
    // Slow reads, so the failing pack write lands while the image is still being read (a pack
    // write first opens its SSH session, ~150 ms).
    struct Slow(RawImage);
    impl ImageSource for Slow {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.0.read_at(buf, offset)
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("remote/repo");
    let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
    let repo = Repo::init(Arc::new(be), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 160, 8);
    for i in 0..=255u8 {
        let d = repo_dir.join("data").join(format!("{i:02x}"));
        fs::remove_dir(&d).expect("rmdir");
        fs::write(&d, b"").expect("a file where the directory was");
    }
    let source = Slow(RawImage::open(&image).expect("image"));
    let files = [FileSpec {
        path: DISK.into(),
        content: Content::Image {
            source: &source,
            changed: None,
            parent_path: None,
        },
    }];
    let err =
        writer::backup(&repo, &files, &BackupOptions::default()).expect_err("cannot write packs");
    let message = err.to_string();
    assert!(message.starts_with("cannot write pack "), "{message}");
    assert!(message.contains("no such file"), "{message}");
    assert!(
        !message.contains('\n') && !message.contains("rustic_core` experienced"),
        "not one clear line: {message}"
    );
    assert!(
        !message.contains("chunks were backed up") && !message.contains("was stopped"),
        "{message}"
    );
}

#[test]
fn prune_over_sftp_removes_interrupted_writes() {
    use backstop_repo::lock::RetryLock;
    use backstop_repo::maintenance::PruneLimits;
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("remote/repo");
    let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
    let repo = Repo::init(Arc::new(be), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 4, 51);
    backup(&repo, &image, None, None);
    let real = walk(&repo_dir);
    let planted = repo_dir.join("data/7a/7a7a-restic-temp-001122334455");
    fs::write(&planted, b"half").expect("plant");
    repo.prune(
        &PruneLimits::default(),
        RetryLock(std::time::Duration::ZERO),
    )
    .expect("prune");
    assert_eq!(walk(&repo_dir), real);
}

/// What a read-only command does with a repository: open it, read every index and snapshot,
/// and walk each snapshot's trees to the disk's chunk list. Returns the chunk lists and the
/// bytes the server sent.
fn read_everything(
    repo_dir: &Path,
    config: &Path,
    cache: Option<&Path>,
) -> (Vec<Vec<RepoId>>, u64, Option<Arc<CachedStorage>>) {
    let be = Arc::new(connect(repo_dir, &options(config)).expect("connect"));
    let cached = cache.map(|dir| Arc::new(CachedStorage::new(be.clone(), dir).expect("cache")));
    let storage: Arc<dyn Storage> = match &cached {
        Some(c) => c.clone(),
        None => be.clone(),
    };
    let repo = Repo::open(storage, PASSWORD).expect("open");
    let known = repo.index().expect("index");
    let lists = repo
        .all_snapshots()
        .expect("snapshots")
        .iter()
        .map(|(_, snap, _)| {
            repo.file_node(snap, DISK, &known)
                .expect("tree")
                .and_then(|n| n.content)
                .expect("the disk")
        })
        .collect();
    (lists, be.bytes_read(), cached)
}

/// The metadata cache: a second command against the same SFTP repository takes its index,
/// snapshot and tree files from the local cache (fewer bytes from the server, counted by the
/// backend); a damaged entry is noticed by its hash, removed, fetched again and repaired.
#[test]
fn the_metadata_cache_saves_reads_and_survives_damage() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("remote/repo");
    let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
    let repo = Repo::init(Arc::new(be), PASSWORD).expect("init over sftp");
    let image = dir.path().join("disk.raw");
    make_image(&image, 16, 5);
    let mut parent = backup(&repo, &image, None, None);
    for generation in 0..3 {
        let changed = scribble(&image, 4, 40 + generation);
        parent = backup(&repo, &image, Some(&changed), Some(parent));
    }
    drop(repo);
    let cache = dir.path().join("cache");

    let (plain, uncached_bytes, _) = read_everything(&repo_dir, &sshd.ssh_config, None);
    assert_eq!(plain.len(), 4);
    let (cold, cold_bytes, c) = read_everything(&repo_dir, &sshd.ssh_config, Some(&cache));
    let c = c.expect("cache");
    assert_eq!(cold, plain);
    // Every file is fetched once (a file read twice in one command is a hit the second time).
    assert!(c.stats.misses.load(Relaxed) > 0, "{:?}", c.stats);
    assert!(
        cold_bytes >= uncached_bytes,
        "{cold_bytes} < {uncached_bytes}"
    );

    let (warm, warm_bytes, c) = read_everything(&repo_dir, &sshd.ssh_config, Some(&cache));
    let c = c.expect("cache");
    assert_eq!(warm, plain);
    assert_eq!(c.stats.misses.load(Relaxed), 0, "{:?}", c.stats);
    assert!(c.stats.hits.load(Relaxed) > 0);
    // What is left is the key and config files, and listings' worth of nothing.
    assert!(
        warm_bytes * 2 < uncached_bytes,
        "the warm cache still read {warm_bytes} of {uncached_bytes} bytes from the server"
    );

    eprintln!(
        "bytes from the server: no cache {uncached_bytes}, cold cache {cold_bytes}, warm cache {warm_bytes}"
    );
    // Damage one cached index file and one cached snapshot file.
    let mut damaged = Vec::new();
    for sub in ["index", "snapshots"] {
        let root = c.dir().join(sub);
        let first = fs::read_dir(&root)
            .expect("cache dir")
            .flatten()
            .flat_map(|d| fs::read_dir(d.path()).expect("sub").flatten())
            .map(|e| e.path())
            .find(|p| p.is_file())
            .expect("a cached file");
        let mut bytes = fs::read(&first).expect("read");
        bytes[10] ^= 0xff;
        fs::write(&first, bytes).expect("damage");
        damaged.push(first);
    }
    let (again, again_bytes, c) = read_everything(&repo_dir, &sshd.ssh_config, Some(&cache));
    let c = c.expect("cache");
    assert_eq!(again, plain, "a damaged cache changed what was read");
    assert_eq!(c.stats.damaged.load(Relaxed), 2, "{:?}", c.stats);
    assert!(
        again_bytes > warm_bytes,
        "the damaged entries were not fetched again"
    );
    for path in damaged {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let bytes = fs::read(&path).expect("repaired entry");
        assert_eq!(
            RepoId::of(&bytes).to_hex(),
            name,
            "{} not repaired",
            path.display()
        );
    }
}

/// The tree blobs of the repository at `repo_dir` moved into one new pack behind `padding`
/// bytes of junk (a blob no tree names), as a hostile writer could store them; with `honest`
/// false the pack is stored under a name that is not its hash. The index names only the new
/// pack for them. Returns the new pack's size.
fn pad_the_trees(repo_dir: &Path, padding: usize, honest: bool) -> usize {
    use backstop_repo::FileType;
    use backstop_repo::format::{BlobKind, IndexFile};
    use backstop_repo::pack::{PackBuilder, SealedBlob};
    use backstop_storage::local::LocalBackend;
    let local = Repo::open(Arc::new(LocalBackend::new(repo_dir)), PASSWORD).expect("open");
    let known = local.index().expect("index");
    let mut builder = PackBuilder::default();
    builder.add(SealedBlob {
        id: RepoId([0xee; 32]),
        kind: BlobKind::Tree,
        sealed: vec![0x5a; padding],
        uncompressed_length: None,
    });
    for id in known.ids(BlobKind::Tree) {
        let at = known.tree(id).expect("a tree the index names");
        let sealed = local
            .backend()
            .read_partial(
                FileType::Pack,
                &at.pack.to_rustic(),
                false,
                at.offset,
                at.length,
            )
            .expect("tree");
        builder.add(SealedBlob {
            id: *id,
            kind: BlobKind::Tree,
            sealed: sealed.to_vec(),
            uncompressed_length: at.uncompressed_length,
        });
    }
    let mut pack = builder.finish(local.crypto()).expect("pack");
    if !honest {
        pack.id = RepoId([0xab; 32]);
        pack.index.id = pack.id;
    }
    let size = pack.bytes.len();
    local
        .backend()
        .write_bytes(
            FileType::Pack,
            &pack.id.to_rustic(),
            true,
            pack.bytes.into(),
        )
        .expect("write the pack");
    for id in local.list(FileType::Index).expect("list") {
        let mut index: IndexFile = local.load_file(FileType::Index, &id).expect("index");
        for p in &mut index.packs {
            p.blobs.retain(|b| b.kind != BlobKind::Tree);
        }
        index.packs.retain(|p| !p.blobs.is_empty());
        local.save_file(FileType::Index, &index).expect("save");
        local
            .backend()
            .remove(FileType::Index, &id.to_rustic(), true)
            .expect("remove");
    }
    local
        .save_file(
            FileType::Index,
            &IndexFile {
                packs: vec![pack.index],
                ..IndexFile::default()
            },
        )
        .expect("save");
    size
}

/// A tree pack the cache will not keep (one padded past the 64 MiB it keeps, or one that does
/// not match its name) is read by the ranges asked for: reading every snapshot's trees moves
/// what they hold, never the whole pack once per tree blob.
#[test]
fn a_tree_pack_the_cache_does_not_keep_is_read_by_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    for (padding, honest) in [(65 << 20, true), (24 << 20, false)] {
        let repo_dir = dir.path().join(format!("remote/repo-{padding}"));
        let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
        let repo = Repo::init(Arc::new(be), PASSWORD).expect("init over sftp");
        let image = dir.path().join("disk.raw");
        make_image(&image, 4, 9);
        let first = backup(&repo, &image, None, None);
        let changed = scribble(&image, 2, 77);
        backup(&repo, &image, Some(&changed), Some(first));
        drop(repo);
        let (plain, _, _) = read_everything(&repo_dir, &sshd.ssh_config, None);
        let pack = pad_the_trees(&repo_dir, padding, honest);
        let cache = dir.path().join(format!("cache-{padding}"));
        for round in 0..2 {
            let (lists, bytes, c) = read_everything(&repo_dir, &sshd.ssh_config, Some(&cache));
            assert_eq!(lists, plain, "round {round}");
            // A pack that fails its check is fetched whole once per command (that is how it
            // is found out), never again; a pack too large to keep never.
            let allowed = if honest { 0 } else { pack };
            assert!(
                (bytes as usize) < allowed + (1 << 20),
                "round {round}: {bytes} bytes read from the server for a {pack} byte tree pack"
            );
            let c = c.expect("cache");
            let kept = fs::read_dir(c.dir().join("data")).map_or(0, |d| d.count());
            assert_eq!(kept, 0, "round {round}: the pack was kept");
        }
    }
}
