//! The storage conformance suite: one set of checks that every implementation of [`Storage`]
//! must pass, run over each of them (a local path, SFTP to a real sshd, S3 on a real S3
//! server, and the metadata cache in front of another storage), as restic runs one backend
//! test suite over each of its backends. A new transport gets its own `#[test]` that calls
//! [`conforms`]; it does not get copies of these checks.

use backstop_storage::cache::CachedStorage;
use backstop_storage::s3::Secret;
use backstop_storage::sftp::SftpLocation;
use backstop_storage::{
    Connected, FileType, RepoId, S3Keys, Storage, StorageSpec, Transport, Where, connect, open,
};
use backstop_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use backstop_testkit::sshd::Sshd;
use bytes::Bytes;
use rustic_core::{BytesList, Id};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Deterministic bytes (xorshift64*), so a failure is repeatable.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file's content written in two parts, as the writer hands a pack over (header and body).
fn in_two_parts(content: &[u8]) -> BytesList {
    let (a, b) = content.split_at(content.len() / 3);
    let mut list = BytesList::from(Bytes::copy_from_slice(a));
    list.add(Bytes::copy_from_slice(b));
    list
}

fn id_of(content: &[u8]) -> Id {
    RepoId::of(content).to_rustic()
}

/// Every check of the suite, on an empty location. `what` names the storage in failures.
fn conforms(storage: &dyn Storage, what: &str) {
    storage
        .create()
        .unwrap_or_else(|e| panic!("{what}: create: {e}"));
    storage
        .create()
        .unwrap_or_else(|e| panic!("{what}: a second create must succeed: {e}"));

    // An empty repository lists nothing, and that is not an error.
    for tpe in [
        FileType::Config,
        FileType::Key,
        FileType::Snapshot,
        FileType::Index,
        FileType::Pack,
    ] {
        let listed = storage
            .list(tpe)
            .unwrap_or_else(|e| panic!("{what}: listing an empty {tpe:?}: {e}"));
        assert!(
            listed.is_empty(),
            "{what}: an empty {tpe:?} lists {listed:?}"
        );
    }
    assert!(
        storage.list_locks().expect("list no locks").is_empty(),
        "{what}: locks in an empty repository"
    );

    // Files of every kind; the packs fall into different `data/<xx>` directories, one is
    // larger than a single request or read buffer.
    let mut written: BTreeMap<(String, Id), Vec<u8>> = BTreeMap::new();
    let files: Vec<(FileType, Vec<u8>)> = vec![
        (FileType::Config, bytes(180, 1)),
        (FileType::Key, bytes(450, 2)),
        (FileType::Snapshot, bytes(700, 3)),
        (FileType::Index, bytes(20_000, 4)),
        (FileType::Pack, bytes(5 << 20, 5)),
        (FileType::Pack, bytes(70_000, 6)),
        (FileType::Pack, bytes(1, 7)),
    ];
    let kind = |tpe: FileType| format!("{tpe:?}");
    for (tpe, content) in &files {
        let id = if *tpe == FileType::Config {
            Id::default()
        } else {
            id_of(content)
        };
        storage
            .write_bytes(*tpe, &id, false, in_two_parts(content))
            .unwrap_or_else(|e| panic!("{what}: writing a {tpe:?} file: {e}"));
        written.insert((kind(*tpe), id), content.clone());
    }
    // Writing the same content under the same id again is harmless (names are content hashes).
    let (tpe, again) = &files[5];
    storage
        .write_bytes(*tpe, &id_of(again), false, in_two_parts(again))
        .unwrap_or_else(|e| panic!("{what}: writing a pack again: {e}"));

    for (tpe, _) in &files {
        let mut expected: Vec<(Id, u32)> = written
            .iter()
            .filter(|((k, _), _)| *k == kind(*tpe))
            .map(|((_, id), c)| (*id, c.len() as u32))
            .collect();
        expected.sort();
        let mut listed = storage
            .list_with_size(*tpe)
            .unwrap_or_else(|e| panic!("{what}: listing {tpe:?}: {e}"));
        listed.sort();
        assert_eq!(listed, expected, "{what}: {tpe:?} listed with sizes");
        let mut ids = storage.list(*tpe).expect("list");
        ids.sort();
        let only: Vec<Id> = expected.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, only, "{what}: {tpe:?} listed");
    }

    for ((k, id), content) in &written {
        let tpe = files
            .iter()
            .map(|(t, _)| *t)
            .find(|t| kind(*t) == *k)
            .expect("a kind written");
        let whole = storage
            .read_full(tpe, id)
            .unwrap_or_else(|e| panic!("{what}: reading a {tpe:?} file: {e}"));
        assert!(
            whole[..] == content[..],
            "{what}: a {tpe:?} file reads back other bytes"
        );
        let size = storage
            .file_size(tpe, &RepoId::from_rustic(id))
            .unwrap_or_else(|e| panic!("{what}: the size of a {tpe:?} file: {e}"));
        assert_eq!(
            size,
            content.len() as u64,
            "{what}: the size of a {tpe:?} file"
        );
        let len = content.len() as u32;
        let ranges = [
            (0, len.min(10)),
            (len.saturating_sub(10), len.min(10)),
            (len / 2, (len - len / 2).min(1000)),
            (0, len),
        ];
        for (offset, length) in ranges {
            let part = storage
                .read_partial(tpe, id, false, offset, length)
                .unwrap_or_else(|e| panic!("{what}: reading {length} bytes at {offset}: {e}"));
            assert!(
                part[..] == content[offset as usize..(offset + length) as usize],
                "{what}: {length} bytes at {offset} of a {tpe:?} file differ"
            );
        }
    }

    // A file that is not there is an error to read or size, never empty content.
    let missing = id_of(b"never written");
    assert!(
        storage.read_full(FileType::Pack, &missing).is_err(),
        "{what}: reading a missing pack succeeded"
    );
    assert!(
        storage
            .read_partial(FileType::Snapshot, &missing, false, 0, 1)
            .is_err(),
        "{what}: reading part of a missing snapshot succeeded"
    );
    assert!(
        storage
            .file_size(FileType::Index, &RepoId::from_rustic(&missing))
            .is_err(),
        "{what}: a missing index has a size"
    );

    // Removed files are gone from listings and reads; the others stay.
    let (_, small) = &files[6];
    let gone = id_of(small);
    storage
        .remove(FileType::Pack, &gone, false)
        .unwrap_or_else(|e| panic!("{what}: removing a pack: {e}"));
    let packs = storage.list(FileType::Pack).expect("list packs");
    assert!(!packs.contains(&gone), "{what}: a removed pack is listed");
    assert_eq!(packs.len(), 2, "{what}: the other packs stay");
    assert!(
        storage.read_full(FileType::Pack, &gone).is_err(),
        "{what}: a removed pack reads"
    );

    // Locks: written, listed with their size, read within a cap, refused past it, removed;
    // removing one that is gone already is not an error (another process may have).
    let sealed = bytes(300, 8);
    let lock = RepoId::of(&sealed);
    storage
        .write_lock(&lock, &sealed)
        .unwrap_or_else(|e| panic!("{what}: writing a lock: {e}"));
    let locks = storage.list_locks().expect("list locks");
    assert_eq!(locks.len(), 1, "{what}: {locks:?}");
    assert_eq!(
        (locks[0].id, locks[0].size),
        (lock, 300u64),
        "{what}: the lock as listed"
    );
    assert_eq!(
        storage.read_lock(&lock, 1 << 20).expect("read the lock"),
        sealed,
        "{what}: the lock reads back other bytes"
    );
    assert!(
        storage.read_lock(&lock, 299).is_err(),
        "{what}: a lock larger than the cap was read"
    );
    storage.remove_lock(&lock).expect("remove the lock");
    assert!(
        storage.list_locks().expect("list locks").is_empty(),
        "{what}: a removed lock is listed"
    );
    storage
        .remove_lock(&lock)
        .unwrap_or_else(|e| panic!("{what}: removing a lock that is gone: {e}"));

    storage
        .sync()
        .unwrap_or_else(|e| panic!("{what}: sync: {e}"));
    assert_eq!(
        storage.remove_temp_files().expect("remove temporary files"),
        0,
        "{what}: temporary files left by complete writes"
    );
    assert!(
        storage.write_concurrency() >= 1,
        "{what}: write concurrency"
    );
}

#[test]
fn a_local_path_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = StorageSpec {
        at: Where::parse(&dir.path().join("repo").display().to_string()).expect("path"),
        transport: Transport::default(),
        cache_dir: Some(dir.path().join("cache")),
    };
    let storage = open(&spec, &mut |line| panic!("{line}")).expect("open");
    conforms(storage.as_ref(), "a local path");
    // A local path is never put behind the metadata cache.
    assert!(
        !dir.path().join("cache").exists(),
        "a local path was cached"
    );
}

#[test]
fn the_metadata_cache_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = connect(
        &Where::Local(dir.path().join("repo")),
        &Transport::default(),
    )
    .expect("local")
    .into_storage();
    let cached = CachedStorage::new(inner, &dir.path().join("cache")).expect("cache");
    conforms(&cached, "the metadata cache over a local path");
}

fn sftp_where(repo: &Path) -> Where {
    Where::Sftp(SftpLocation::parse(&format!("sftp:backup1:{}", repo.display())).expect("location"))
}

#[test]
fn sftp_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let transport = Transport {
        connections: 3,
        ssh_config: Some(sshd.ssh_config.clone()),
        ..Transport::default()
    };
    let spec = StorageSpec {
        at: sftp_where(&dir.path().join("remote/repo")),
        transport: transport.clone(),
        cache_dir: None,
    };
    let storage = open(&spec, &mut |line| panic!("{line}")).expect("connect over sftp");
    conforms(storage.as_ref(), "SFTP");
    // The base lists the repository once it has a config file.
    let base = connect(&sftp_where(&dir.path().join("remote")), &transport).expect("base");
    assert_eq!(
        base.repositories(&|name| name == "repo").expect("list"),
        vec!["repo".to_string()]
    );
}

#[test]
fn sftp_behind_the_metadata_cache_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let spec = StorageSpec {
        at: sftp_where(&dir.path().join("remote/repo")),
        transport: Transport {
            ssh_config: Some(sshd.ssh_config.clone()),
            ..Transport::default()
        },
        cache_dir: Some(dir.path().join("cache")),
    };
    let storage = open(&spec, &mut |line| panic!("{line}")).expect("connect over sftp");
    conforms(storage.as_ref(), "SFTP behind the metadata cache");
    assert!(dir.path().join("cache").is_dir(), "no cache was made");
}

#[test]
fn s3_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let transport = Transport {
        connections: 3,
        s3: Some(S3Keys {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: Secret::new(SECRET_KEY),
            region: "us-east-1".into(),
            path_style: None,
            ca_cert: server.ca.clone(),
            insecure_tls: false,
            object_lock: None,
        }),
        ..Transport::default()
    };
    // The bucket does not exist yet: create() makes it, as restic's init does.
    let spec = StorageSpec {
        at: Where::parse(&server.repo("conformance", "22")).expect("s3 location"),
        transport: transport.clone(),
        cache_dir: None,
    };
    let storage = open(&spec, &mut |line| panic!("{line}")).expect("connect to s3");
    conforms(storage.as_ref(), "S3");
    // The bucket from its root: the repository's objects are all there is, and it is listed.
    let bucket = Where::parse(&format!("s3:{}/conformance", server.endpoint)).expect("bucket");
    let Connected::S3(root) = connect(&bucket, &transport).expect("the bucket") else {
        panic!("an s3: location connected as something else");
    };
    let objects = root.objects().expect("list the bucket");
    assert!(
        !objects.is_empty() && objects.iter().all(|(k, _)| k.starts_with("22/")),
        "{objects:?}"
    );
    assert_eq!(
        Connected::S3(root)
            .repositories(&|name| name == "22")
            .expect("list"),
        vec!["22".to_string()]
    );
    let _keep: Arc<dyn Storage> = storage;
}
