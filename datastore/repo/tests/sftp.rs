//! The SFTP backend against a real sshd, through the system's OpenSSH client: what we write
//! over SFTP, restic reads and checks; host keys are OpenSSH's decision under the test's
//! configuration (known_hosts plain and hashed, a CA's certificate, accept-new, or a pinned
//! fingerprint); Include and ProxyJump work as for ssh itself; a killed ssh mid-backup leaves a
//! repository restic checks clean; a wrong password writes nothing.

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
fn an_unknown_host_key_is_refused_naming_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let empty = sshd.dir.join("empty_known_hosts");
    fs::write(&empty, "").expect("empty");
    let config = sshd.config_with_known_hosts("ssh_config_unknown", &empty);
    let repo_dir = dir.path().join("remote/repo");
    let err = connect(&repo_dir, &options(&config)).expect_err("unknown key");
    assert!(
        err.starts_with(&format!(
            "unknown host key for backup1 ({ADDR}:{}): OpenSSH refused it (Host key verification failed.); add the server's key to known_hosts",
            sshd.port
        )),
        "{err}"
    );
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
    common::sshd::keygen(&other);
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
            "the host key of backup1 ({ADDR}:{}) has CHANGED (it now offers {}), so OpenSSH refused to connect",
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
    assert_eq!(
        err,
        format!(
            "the host key of backup1 ({ADDR}:{}) is not the pinned one: it offers {}, not SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; refusing to connect",
            sshd.port,
            sshd.fingerprint()
        )
    );
    let malformed = SftpOptions {
        host_fingerprint: Some("SHA256:x' ; touch /tmp/pwned".into()),
        ..options(&config)
    };
    let err = connect(&dir.path().join("r4"), &malformed).expect_err("malformed pin");
    assert!(err.starts_with("the pinned host key fingerprint"), "{err}");
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

/// A backup over `config` to `repo_dir`, then restic (on the server's directory) checks the
/// repository and restores the disk byte for byte.
fn backup_and_let_restic_check(dir: &Path, config: &Path, repo_dir: &Path) {
    let be = connect(repo_dir, &options(config)).expect("connect");
    let repo = Repo::init(Arc::new(be), PASSWORD).expect("init");
    let image = dir.join("disk.raw");
    make_image(&image, 6, 71);
    backup(&repo, &image, None, None);
    drop(repo);
    ok(restic(repo_dir, &["check", "--read-data"]), "restic check");
    let dumped = ok(restic(repo_dir, &["dump", "latest", DISK]), "restic dump");
    assert!(
        dumped == fs::read(&image).expect("image"),
        "restic's dump differs"
    );
}

#[test]
fn host_blocks_in_an_included_file_are_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let conf_d = dir.path().join("conf.d");
    fs::create_dir_all(&conf_d).expect("conf.d");
    fs::write(conf_d.join("backup.conf"), sshd.host_block()).expect("included");
    let config = dir.path().join("ssh_config_include");
    fs::write(&config, format!("Include {}/*.conf\n", conf_d.display())).expect("config");
    backup_and_let_restic_check(dir.path(), &config, &dir.path().join("remote/repo"));
}

#[test]
fn a_server_known_only_by_its_certificate_authority_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("host_ca");
    common::sshd::keygen(&ca);
    let sshd = Sshd::start_certified(dir.path(), ADDR, "backup1", &ca);
    let ca_pub = fs::read_to_string(ca.with_extension("pub")).expect("ca pub");
    let known = dir.path().join("known_hosts_ca");
    fs::write(
        &known,
        format!("@cert-authority [{ADDR}]:{} {ca_pub}", sshd.port),
    )
    .expect("kh");
    let config = sshd.config_with_known_hosts("ssh_config_ca", &known);
    // Strict checking as the operator sets it: the host's own key is in no file.
    let strict = dir.path().join("ssh_config_ca_strict");
    fs::write(
        &strict,
        format!(
            "{}  StrictHostKeyChecking yes\n",
            fs::read_to_string(&config).expect("config")
        ),
    )
    .expect("strict");
    backup_and_let_restic_check(dir.path(), &strict, &dir.path().join("remote/repo"));
    assert!(
        sshd.log()
            .contains("kex: host key algorithm: ssh-ed25519-cert-v01@openssh.com"),
        "the server offered no certificate"
    );
    // Another CA in known_hosts: the same server is refused.
    let other = dir.path().join("other_ca");
    common::sshd::keygen(&other);
    fs::write(
        &known,
        format!(
            "@cert-authority [{ADDR}]:{} {}",
            sshd.port,
            fs::read_to_string(other.with_extension("pub")).expect("pub")
        ),
    )
    .expect("kh");
    let err = connect(&dir.path().join("r2"), &options(&strict)).expect_err("unknown CA");
    assert!(err.starts_with("unknown host key for backup1"), "{err}");
}

/// A client config `name` for `sshd` with `StrictHostKeyChecking accept-new` and `known` as
/// its known_hosts file.
fn accept_new_config(sshd: &Sshd, known: &Path, name: &str) -> std::path::PathBuf {
    let config = sshd.dir.join(name);
    fs::write(
        &config,
        format!(
            "{}  StrictHostKeyChecking accept-new\n",
            sshd.block_with(known)
        ),
    )
    .expect("config");
    config
}

#[test]
fn accept_new_records_a_first_key_and_refuses_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let known = dir.path().join("known_hosts_new");
    fs::write(&known, "").expect("empty");
    let config = accept_new_config(&sshd, &known, "ssh_config_accept_new");
    connect(&dir.path().join("r1"), &options(&config)).expect("first contact");
    let recorded = fs::read_to_string(&known).expect("known_hosts");
    let key = fs::read_to_string(&sshd.host_pub).expect("host key");
    let key_text = key.split_whitespace().nth(1).expect("key");
    assert!(
        recorded.contains(&format!("[{ADDR}]:{}", sshd.port)) && recorded.contains(key_text),
        "the first key was not recorded: {recorded:?}"
    );
    // The server's key changes (a line with another key for it): refused, and not replaced.
    let other = dir.path().join("other_ed25519");
    common::sshd::keygen(&other);
    let changed = format!(
        "[{ADDR}]:{} {}",
        sshd.port,
        fs::read_to_string(other.with_extension("pub")).expect("pub")
    );
    fs::write(&known, &changed).expect("changed");
    let err = connect(&dir.path().join("r2"), &options(&config)).expect_err("changed key");
    assert!(
        err.starts_with(&format!(
            "the host key of backup1 ({ADDR}:{}) has CHANGED (it now offers {})",
            sshd.port,
            sshd.fingerprint()
        )),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&known).expect("kh"), changed);
    assert!(!dir.path().join("r2").exists());
}

#[test]
fn accept_new_that_cannot_record_the_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    // A known_hosts in a directory that does not exist: ssh says it failed to add the key and
    // would connect anyway, every time, whatever key the server shows.
    let known = dir.path().join("missing-dir/known_hosts");
    let config = accept_new_config(&sshd, &known, "ssh_config_unrecorded");
    let err = connect(&dir.path().join("r"), &options(&config)).expect_err("unrecorded key");
    assert!(
        err.contains("OpenSSH accepted a first host key but could not record it")
            && err.contains("make the known_hosts file writable"),
        "{err}"
    );
    assert!(!dir.path().join("r").exists());
}

#[test]
fn a_server_behind_a_proxy_jump_is_reached_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Sshd::start(dir.path());
    let jump = Sshd::start_on(dir.path(), "127.0.0.3", "jump1");
    let config = dir.path().join("ssh_config_jump");
    fs::write(
        &config,
        format!(
            "{}  ProxyJump jump1\n{}",
            target.host_block(),
            jump.host_block()
        ),
    )
    .expect("config");
    backup_and_let_restic_check(dir.path(), &config, &dir.path().join("remote/repo"));
    // The jump host forwarded the connections to the target.
    let forwarded = jump
        .log()
        .lines()
        .filter(|l| l.contains("direct-tcpip") || l.contains("server_request_direct_tcpip"))
        .filter(|l| l.contains(&format!("{ADDR} port {}", target.port)))
        .count();
    assert!(
        forwarded > 0,
        "the jump host forwarded nothing to the target:\n{}",
        jump.log()
    );
}

/// The PIDs of this process's children that run `ssh`.
fn ssh_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        if comm.ends_with("(ssh") && ppid == me {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_killed_ssh_mid_backup_leaves_the_repository_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("remote/repo");
    // Slow enough (4 MiB/s) that the ssh processes are killed while packs are being sent.
    let slow = SftpOptions {
        bwlimit_kib: Some(4096),
        ..options(&sshd.ssh_config)
    };
    let loc = SftpLocation::parse(&format!("sftp:backup1:{}", repo_dir.display())).expect("loc");
    let repo = Repo::init(
        Arc::new(SftpBackend::connect(&loc, &slow).expect("connect")),
        PASSWORD,
    )
    .expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 24, 72);
    let killed = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let pids = ssh_children();
            for pid in &pids {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            pids.len()
        });
        let source = RawImage::open(&image).expect("image");
        let files = [FileSpec {
            path: DISK.into(),
            content: Content::Image {
                source: &source,
                changed: None,
                parent_path: Some(DISK.into()),
            },
        }];
        // The sessions killed are started again: the backup may complete or fail, but it
        // must not leave what restic calls damage.
        let first = writer::backup(&repo, &files, &BackupOptions::default());
        eprintln!(
            "the backup during the kill: {:?}",
            first.as_ref().map(|r| r.snapshot_id)
        );
        killer.join().expect("killer")
    });
    assert!(killed > 0, "no ssh was running to be killed");
    drop(repo);
    ok(restic(&repo_dir, &["check"]), "restic check after the kill");
    let be = connect(&repo_dir, &options(&sshd.ssh_config)).expect("connect");
    let repo = Repo::open(Arc::new(be), PASSWORD).expect("open");
    backup(&repo, &image, None, None);
    drop(repo);
    ok(restic(&repo_dir, &["check", "--read-data"]), "restic check");
    let dumped = ok(restic(&repo_dir, &["dump", "latest", DISK]), "restic dump");
    assert!(
        dumped == fs::read(&image).expect("image"),
        "restic's dump differs"
    );
}

#[test]
fn a_configuration_that_turns_host_key_checking_off_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    for (name, extra) in [
        ("off", "  StrictHostKeyChecking no\n"),
        (
            "forgetful",
            "  StrictHostKeyChecking accept-new\n  UserKnownHostsFile /dev/null\n",
        ),
    ] {
        let config = dir.path().join(format!("ssh_config_{name}"));
        // The option lines go before the block's own UserKnownHostsFile: OpenSSH takes the
        // first value it reads.
        let block = sshd.host_block().replacen("\n", &format!("\n{extra}"), 1);
        fs::write(&config, block).expect("config");
        let repo_dir = dir.path().join(format!("r-{name}"));
        let err = connect(&repo_dir, &options(&config)).expect_err(name);
        assert!(
            err.starts_with("the ssh configuration for backup1 turns host key checking off"),
            "{name}: {err}"
        );
        assert!(!repo_dir.exists(), "{name}: something was written");
    }
}
