//! Escrow keys against whoever can write the storage (docs/escrow.md): a key file planted
//! with an escrow member (claiming the operator's public key) does not stop the real escrow
//! key being added, and is shown as planted; another repository's genuine escrow key copied
//! in does not stop recovery, which tries every escrow key the identity opens until one
//! opens the repository.

use backstop_repo::Repo;
use backstop_repo::escrow::{Identities, Recipients, keygen};
use backstop_storage::local::LocalBackend;
use std::fs;
use std::sync::Arc;

mod common;
use common::PASSWORD;

fn key_files(repo: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(repo.join("keys"))
        .expect("keys")
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[test]
fn planted_escrow_members_neither_stop_the_real_key_nor_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (identity, public) = keygen();
    let identity_file = dir.path().join("identity.txt");
    fs::write(&identity_file, identity).expect("identity");
    let recipients = Recipients::parse(&public).expect("recipients");
    let a_path = dir.path().join("a");
    let b_path = dir.path().join("b");
    let a = Repo::init(Arc::new(LocalBackend::new(&a_path)), PASSWORD).expect("init a");
    let b = Repo::init(Arc::new(LocalBackend::new(&b_path)), PASSWORD).expect("init b");

    // Planted in a: a member naming the operator's key, sealing nothing.
    let planted = serde_json::json!({
        "kdf": "scrypt", "N": 16384, "r": 8, "p": 1, "salt": "AAAA", "data": "AAAA",
        "backstop_escrow": {"recipients": [public], "sealed": "junk"}
    });
    let bytes = serde_json::to_vec(&planted).expect("json");
    let id = backstop_repo::format::RepoId::of(&bytes).to_hex();
    fs::write(a_path.join("keys").join(&id), &bytes).expect("plant");
    // b's genuine escrow key, copied into a.
    assert!(b.add_escrow(&recipients).expect("escrow b").is_some());
    let before: Vec<_> = key_files(&b_path);
    let b_escrow = before
        .iter()
        .find(|p| {
            fs::read_to_string(p)
                .unwrap_or_default()
                .contains("backstop_escrow")
        })
        .expect("b's escrow key");
    fs::copy(
        b_escrow,
        a_path
            .join("keys")
            .join(b_escrow.file_name().expect("name")),
    )
    .expect("copy");

    // Recovery before a has its own escrow key: b's key unseals but does not open a.
    let ids = Identities::read(&identity_file).expect("identity");
    let e = Repo::open_by_escrow(Arc::new(LocalBackend::new(&a_path)), &ids)
        .expect_err("no escrow key of a's own");
    assert!(
        e.message.contains("opens the repository at"),
        "{}",
        e.message
    );

    // The planted and the copied members do not count: a gets its own.
    assert!(
        a.add_escrow(&recipients).expect("escrow a").is_some(),
        "a planted member stopped the real escrow key"
    );
    assert!(a.add_escrow(&recipients).expect("again").is_none());
    let listed = a.keys(PASSWORD).expect("keys");
    let genuine: Vec<_> = listed.iter().filter(|k| k.escrow.is_some()).collect();
    assert_eq!(genuine.len(), 1, "{listed:?}");
    let flagged = listed
        .iter()
        .filter(|k| {
            k.unreadable
                .as_deref()
                .is_some_and(|u| u.contains("claims to be an escrow key"))
        })
        .count();
    assert_eq!(flagged, 2, "the planted and the copied one: {listed:?}");

    // Recovery now passes over b's key (which unseals too) and opens a.
    let (opened, _) = Repo::open_by_escrow(Arc::new(LocalBackend::new(&a_path)), &ids)
        .unwrap_or_else(|e| panic!("recover: {e}"));
    assert_eq!(opened.location(), a.location());
}
