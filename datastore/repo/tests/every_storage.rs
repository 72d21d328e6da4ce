//! One repository scenario run over every storage (a local path, SFTP to a real sshd, S3 on a
//! real S3 server), with the real restic binary reading what was written through its own
//! backend for that storage: a repository made by us, a full backup and three increments, each
//! dumped byte-exact by restic, `restic check --read-data` clean, and our own restore of the
//! last one. The storage layer's own checks are its conformance suite
//! (datastore/storage/tests/conformance.rs); this is the same scenario for each transport
//! instead of a copy per transport.

use backstop_image::image::Extent;
use backstop_repo::Repo;
use backstop_repo::format::RepoId;
use backstop_repo::lock::RetryLock;
use backstop_storage::s3::Secret;
use backstop_storage::{S3Keys, StorageSpec, Transport, Where};
use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

mod common;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use common::sshd::Sshd;
use common::*;

fn backup(repo: &Repo, image: &Path, changed: Option<&[Extent]>, parent: Option<RepoId>) -> RepoId {
    backup_disk(repo, image, changed, parent).snapshot_id
}

/// The scenario on the storage `spec` names; `restic` runs the restic binary on the same
/// repository with the given arguments.
fn chain(spec: &StorageSpec, dir: &Path, what: &str, restic: &dyn Fn(&[&str]) -> Output) {
    let storage = backstop_storage::open(spec, &mut |line| panic!("{line}")).expect("open");
    let repo = Repo::init(storage, PASSWORD).unwrap_or_else(|e| panic!("{what}: init: {e}"));
    let image = dir.join("disk.raw");
    make_image(&image, 24, 21);
    let mut parent = backup(&repo, &image, None, None);
    let mut expected = vec![(parent, fs::read(&image).expect("read"))];
    for generation in 0..3 {
        let changed = scribble(&image, 5, 300 + generation);
        parent = backup(&repo, &image, Some(&changed), Some(parent));
        expected.push((parent, fs::read(&image).expect("read")));
    }
    for (id, bytes) in &expected {
        let dumped = ok(
            restic(&["dump", &id.to_hex(), DISK]),
            &format!("{what}: restic dump"),
        );
        assert!(
            dumped == *bytes,
            "{what}: snapshot {id} differs when restic reads it"
        );
    }
    // An escrow key (docs/escrow.md) is one more key file restic lists and reads past; one
    // per set of recipients.
    let (identity, recipient) = backstop_repo::escrow::keygen();
    let identity_file = dir.join("escrow-identity.txt");
    fs::write(&identity_file, identity).expect("identity");
    let recipients = backstop_repo::escrow::Recipients::parse(&recipient).expect("recipient");
    let added = repo.add_escrow(&recipients);
    assert!(matches!(added, Ok(Some(_))), "{what}: escrow: {added:?}");
    assert!(
        matches!(repo.add_escrow(&recipients), Ok(None)),
        "{what}: a second escrow key for the same recipients"
    );
    let keys = ok(
        restic(&["key", "list"]),
        &format!("{what}: restic key list"),
    );
    assert!(
        String::from_utf8_lossy(&keys).contains(backstop_repo::escrow::USER),
        "{what}: restic does not list the escrow key"
    );
    ok(
        restic(&["check", "--read-data"]),
        &format!("{what}: restic check --read-data"),
    );
    // The identity alone opens it.
    let storage = backstop_storage::open(spec, &mut |line| panic!("{line}")).expect("open");
    let identities =
        backstop_repo::escrow::Identities::read(&identity_file).expect("identity file");
    let (by_escrow, _) = Repo::open_by_escrow(storage, &identities)
        .unwrap_or_else(|e| panic!("{what}: open by escrow: {e}"));
    assert_eq!(
        by_escrow.snapshots().expect("snapshots").len(),
        expected.len(),
        "{what}: opened by escrow"
    );
    // A second opening of ours reads the last one back.
    let storage = backstop_storage::open(spec, &mut |line| panic!("{line}")).expect("open");
    let repo = Repo::open(storage, PASSWORD).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let target = dir.join("restored.raw");
    repo.restore_file(
        &parent.to_hex(),
        DISK,
        &target,
        2,
        RetryLock(Duration::ZERO),
    )
    .unwrap_or_else(|e| panic!("{what}: restore: {e}"));
    assert!(
        fs::read(&target).expect("read") == expected[3].1,
        "{what}: our restore differs"
    );
}

#[test]
fn restic_reads_a_chain_written_to_a_local_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let spec = StorageSpec {
        at: Where::Local(repo.clone()),
        transport: Transport::default(),
        cache_dir: None,
    };
    chain(&spec, dir.path(), "a local path", &|args| {
        common::restic(&repo, args)
    });
}

#[test]
fn restic_reads_a_chain_written_over_sftp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(dir.path());
    let url = format!("sftp:backup1:{}", dir.path().join("remote/repo").display());
    let spec = StorageSpec {
        at: Where::parse(&url).expect("location"),
        transport: Transport {
            connections: 3,
            ssh_config: Some(sshd.ssh_config.clone()),
            ..Transport::default()
        },
        // Behind the metadata cache, as a datastore opens it.
        cache_dir: Some(dir.path().join("cache")),
    };
    let sftp_command = sshd.restic_sftp_command();
    chain(&spec, dir.path(), "SFTP", &|args| {
        std::process::Command::new("restic")
            .args(["--no-cache", "-r", &url, "-o", &sftp_command])
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .expect("restic")
    });
}

#[test]
fn restic_reads_a_chain_written_to_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    // The bucket does not exist yet: init makes it, as restic does.
    let url = server.repo("made-by-init", "22");
    let spec = StorageSpec {
        at: Where::parse(&url).expect("location"),
        transport: Transport {
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
        },
        cache_dir: Some(dir.path().join("cache")),
    };
    chain(&spec, dir.path(), "S3", &|args| {
        server.restic(&url, PASSWORD, args)
    });
}
