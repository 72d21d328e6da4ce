//! S3 Object Lock (issue 29, docs/s3.md): a repository written with RESTIC_S3_OBJECT_LOCK on
//! the real SeaweedFS, which implements COMPLIANCE retention. Every object but a lock file
//! carries its retention date; a bucket without Object Lock is refused; an attacker holding
//! the write key who "deletes everything" only adds delete markers (a locked version cannot be
//! removed) and can plant a forged file; `backstop repo undelete --before` puts the repository
//! back, after which plain restic checks it clean and dumps every point as written.

use crate::s3server::{ACCESS_KEY, S3Server, SECRET_KEY, WRITE_ACCESS_KEY, WRITE_SECRET_KEY};
use crate::support::{BACKSTOP, Outcome};
use backstop_storage::s3::{LockMode, ObjectLock, S3Location, S3Options, Secret};
use std::fs;
use std::path::Path;
use std::process::Command;

const PASSWORD: &str = "object-lock-test-password";
const IN_SNAPSHOT: &str = "/var/lib/one/datastores/0/22/backup/disk.0";

/// `backstop repo -r <url> <args>` with a key pair and COMPLIANCE Object Lock for one day.
fn repo(server: &S3Server, url: &str, keys: (&str, &str), args: &[&str]) -> Outcome {
    repo_locked(server, url, keys, "COMPLIANCE", args)
}

/// `backstop repo -r <url> <args>` with a key pair and Object Lock `mode` for one day.
fn repo_locked(
    server: &S3Server,
    url: &str,
    keys: (&str, &str),
    mode: &str,
    args: &[&str],
) -> Outcome {
    let out = Command::new(BACKSTOP)
        .args([
            "repo",
            "-r",
            url,
            "--s3-object-lock",
            mode,
            "--s3-object-lock-days",
            "1",
        ])
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", keys.0)
        .env("AWS_SECRET_ACCESS_KEY", keys.1)
        .env("BACKSTOP_CACHE_DIR", "off")
        .args(
            server
                .ca
                .iter()
                .flat_map(|c| ["--cacert".into(), c.display().to_string()]),
        )
        .output()
        .expect("backstop");
    Outcome::from(out)
}

fn s3(server: &S3Server, url: &str, keys: (&str, &str)) -> backstop_storage::s3::S3Backend {
    let loc = S3Location::parse(url).expect("location");
    backstop_storage::s3::S3Backend::connect(
        &loc,
        &S3Options {
            access_key_id: keys.0.into(),
            secret_access_key: Secret::new(keys.1),
            ca_cert: server.ca.clone(),
            object_lock: Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 1,
            }),
            ..S3Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// A disk image of `mib` MiB whose content depends on `seed`.
fn write_image(path: &Path, mib: usize, seed: u64) {
    fs::write(path, crate::support::noise(mib << 20, seed)).expect("image");
}

#[test]
fn an_object_locked_repository_survives_a_stolen_write_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let admin = (ACCESS_KEY, SECRET_KEY);
    let writer = (WRITE_ACCESS_KEY, WRITE_SECRET_KEY);

    // A bucket without Object Lock is refused when a lock is asked for.
    let plain = server.repo("plainbucket", "22");
    let out = Command::new(BACKSTOP)
        .args(["repo", "-r", &plain, "init"])
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .expect("init");
    assert!(out.status.success(), "{out:?}");
    let out = repo(&server, &plain, admin, &["snapshots"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("has no Object Lock") && out.stderr.lines().count() == 1,
        "{out:?}"
    );

    // The repository: its bucket is made with Object Lock (the admin key), the backups are
    // written with the write key.
    let url = server.repo("lockedbucket", "22");
    let out = repo(&server, &url, admin, &["init"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let image = dir.path().join("disk.raw");
    write_image(&image, 24, 1);
    let mut points: Vec<(String, Vec<u8>)> = Vec::new();
    let backup = |round: u64, points: &mut Vec<(String, Vec<u8>)>| {
        if round > 0 {
            let mut bytes = fs::read(&image).expect("image");
            let at = (round as usize * 4) << 20;
            bytes[at..at + (1 << 20)].copy_from_slice(&crate::support::noise(1 << 20, 100 + round));
            fs::write(&image, bytes).expect("image");
        }
        let out = repo(
            &server,
            &url,
            writer,
            &[
                "backup",
                "--image",
                image.to_str().expect("utf-8"),
                "--path",
                IN_SNAPSHOT,
                "--json",
            ],
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
        let id = summary["snapshot_id"]
            .as_str()
            .expect("snapshot id")
            .to_string();
        points.push((id, fs::read(&image).expect("image")));
    };
    for round in 0..3u64 {
        backup(round, &mut points);
    }

    // What kept snapshots need stays locked: once the last retention pass is a quarter of the
    // period old, the next write session sets every object's date to the full period again
    // (here the first backup's config, which every later point needs).
    let store = s3(&server, &url, writer);
    let record = "22/backstop-retention";
    let config_until = |store: &backstop_storage::s3::S3Backend| {
        store
            .retention("22/config", None)
            .expect("retention")
            .expect("the config is locked")
            .1
    };
    let first = config_until(&store);
    std::thread::sleep(std::time::Duration::from_secs(2));
    backup(3, &mut points);
    assert_eq!(
        config_until(&store),
        first,
        "a pass ran again before its time"
    );
    store
        .put_object(record, br#"{"pass":"2026-01-01T00:00:00Z"}"#)
        .expect("an old pass");
    backup(4, &mut points);
    let extended = config_until(&store);
    assert!(
        extended.duration_since(first).as_secs() >= 2,
        "the config's date was not extended: {first} then {extended}"
    );

    // Every object carries a COMPLIANCE retention about a day away; no lock file is left.
    let objects = store.objects().expect("objects");
    assert!(objects.len() > 6, "{objects:?}");
    let now = jiff::Timestamp::now();
    for (key, _) in &objects {
        assert!(!key.contains("/locks/"), "{key} is left");
        let (mode, until) = store
            .retention(key, None)
            .expect("retention")
            .unwrap_or_else(|| panic!("{key} has no retention"));
        assert_eq!(mode, "COMPLIANCE", "{key}");
        let left = until.duration_since(now).as_secs();
        assert!(
            (86_400 - 600..=86_400 + 60).contains(&left),
            "{key}: retained until {until}"
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before_attack = jiff::Timestamp::now();
    std::thread::sleep(std::time::Duration::from_secs(2));

    // The attacker, with the write key: every object deleted, then a forged snapshot file.
    // Removing a locked version is refused; a plain delete only adds a marker.
    let forged = "22/snapshots/".to_string() + &"ab".repeat(32);
    for v in store.versions().expect("versions") {
        // Lock files carry no retention (they go when their holder ends).
        if v.key != forged && !v.delete_marker && !v.key.contains("/locks/") {
            let refused = store.delete_version(&v.key, &v.version_id);
            assert!(
                refused.is_err(),
                "locked version {} of {} removed",
                v.version_id,
                v.key
            );
        }
    }
    // The config is overwritten first (a new version over the locked one).
    store
        .put_object("22/config", b"garbage over the config")
        .expect("an overwrite is a new version");
    for (key, _) in store.objects().expect("objects") {
        store.remove_object(&key).expect("a delete marker");
    }
    assert!(
        store.objects().expect("objects").is_empty(),
        "everything looks gone"
    );
    store
        .put_object(&forged, b"not a snapshot")
        .expect("the write key may write");
    let gone = server.restic(&url, PASSWORD, &["snapshots"]);
    assert!(!gone.status.success(), "restic still opens it: {gone:?}");

    // Undelete is refused on more than one repository (the bucket's root), and while a lock
    // file is there (the attacker may leave one: unlock removes it).
    let root = url.trim_end_matches("/22").to_string();
    let out = repo(
        &server,
        &root,
        admin,
        &["undelete", "--before", &before_attack.to_string()],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("undelete works on one repository"),
        "{out:?}"
    );
    let lock = "22/locks/".to_string() + &"cd".repeat(32);
    store.put_object(&lock, b"a lock").expect("a lock file");
    let out = repo(
        &server,
        &url,
        admin,
        &["undelete", "--before", &before_attack.to_string()],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("1 lock file(s) are there"), "{out:?}");
    store.remove_object(&lock).expect("unlock");

    // Undelete, with the admin key: a dry run says what it would do and changes nothing.
    let before = before_attack.to_string();
    let dry = repo(
        &server,
        &url,
        admin,
        &["undelete", "--before", &before, "--dry-run"],
    );
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert!(dry.stdout.starts_with("would change"), "{dry:?}");
    assert!(dry.stdout.contains("1 made since hidden"), "{dry:?}");
    assert_eq!(
        store.objects().expect("objects").len(),
        1,
        "only the forged file"
    );
    // As docs/s3.md writes it: no lock options; the config's copy takes its old version's
    // retention.
    let out = Command::new(BACKSTOP)
        .args(["repo", "-r", &url, "undelete", "--before", &before])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("RESTIC_PASSWORD")
        .output()
        .expect("undelete");
    let out = Outcome::from(out);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "{} object(s) undeleted, 1 brought back from an overwrite, 1 made since hidden",
            objects.len() - 1
        )),
        "{out:?}"
    );
    let (mode, _) = store
        .retention("22/config", None)
        .expect("retention")
        .expect("the copied-back config is locked");
    assert_eq!(mode, "COMPLIANCE");
    let check = server.restic(&url, PASSWORD, &["check", "--read-data"]);
    assert!(check.status.success(), "{check:?}");
    for (id, bytes) in &points {
        let dump = server.restic(&url, PASSWORD, &["dump", id, IN_SNAPSHOT]);
        assert!(dump.status.success(), "{dump:?}");
        assert!(dump.stdout == *bytes, "point {id} dumps differently");
    }
    let listed = server.restic(&url, PASSWORD, &["snapshots", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.len(), points.len(), "the forged file stays hidden");
    // Undone again: nothing left to change.
    let out = repo(&server, &url, admin, &["undelete", "--before", &before]);
    assert!(
        out.stdout.contains(
            " 0 object(s) undeleted, 0 brought back from an overwrite, 0 made since hidden"
        ),
        "{out:?}"
    );

    // A time that is not one: one line.
    let out = repo(
        &server,
        &url,
        admin,
        &["undelete", "--before", "yesterday-ish"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("is not a time") && out.stderr.lines().count() == 1);
}

/// GOVERNANCE retention: every object a backup with the write key makes carries it; neither
/// the write key nor the admin key can remove a locked version by a plain delete (backstop
/// never asks to bypass), and only a key with the bypass right that asks for it
/// (`x-amz-bypass-governance-retention`, sent here with curl) can: the store holds the
/// objects in GOVERNANCE mode, not COMPLIANCE.
#[test]
fn governance_retention_yields_only_to_an_explicit_bypass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(dir.path());
    let admin = (ACCESS_KEY, SECRET_KEY);
    let writer = (WRITE_ACCESS_KEY, WRITE_SECRET_KEY);
    let url = server.repo("govbucket", "22");
    let out = repo_locked(&server, &url, admin, "GOVERNANCE", &["init"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let image = dir.path().join("disk.raw");
    write_image(&image, 8, 7);
    let out = repo_locked(
        &server,
        &url,
        writer,
        "GOVERNANCE",
        &[
            "backup",
            "--image",
            image.to_str().expect("utf-8"),
            "--path",
            IN_SNAPSHOT,
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");

    let store = s3(&server, &url, admin);
    let objects = store.objects().expect("objects");
    assert!(objects.len() > 4, "{objects:?}");
    for (key, _) in &objects {
        assert!(!key.contains("/locks/"), "{key} is left");
        let (mode, _) = store
            .retention(key, None)
            .expect("retention")
            .unwrap_or_else(|| panic!("{key} has no retention"));
        assert_eq!(mode, "GOVERNANCE", "{key}");
    }
    let versions: Vec<_> = store
        .versions()
        .expect("versions")
        .into_iter()
        .filter(|v| !v.delete_marker)
        .collect();
    let pack = versions
        .iter()
        .find(|v| v.key.contains("/data/"))
        .expect("a pack");
    for keys in [writer, admin] {
        let refused = s3(&server, &url, keys).delete_version(&pack.key, &pack.version_id);
        assert!(
            refused.is_err(),
            "{}: a GOVERNANCE-locked version removed without a bypass",
            keys.0
        );
    }
    let bypass_at = |keys: (&str, &str), bucket: &str, v: &backstop_storage::s3::ObjectVersion| {
        Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
            ])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{}:{}", keys.0, keys.1))
            .args(["-H", "x-amz-bypass-governance-retention: true"])
            .arg(format!(
                "{}/{bucket}/{}?versionId={}",
                server.endpoint, v.key, v.version_id
            ))
            .output()
            .expect("curl")
    };
    // The same bypass cannot lift COMPLIANCE retention, even for the admin.
    let compliant = server.repo("compbucket", "22");
    let out = repo(&server, &compliant, admin, &["init"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let config = s3(&server, &compliant, admin)
        .versions()
        .expect("versions")
        .into_iter()
        .find(|v| v.key == "22/config")
        .expect("the config");
    let out = bypass_at(admin, "compbucket", &config);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "COMPLIANCE was bypassed: {out:?}"
    );
    let bypass = |keys: (&str, &str)| bypass_at(keys, "govbucket", pack);
    let as_writer = bypass(writer);
    assert_eq!(
        String::from_utf8_lossy(&as_writer.stdout),
        "403",
        "the write key bypassed GOVERNANCE: {as_writer:?}"
    );
    let as_admin = bypass(admin);
    assert_eq!(
        String::from_utf8_lossy(&as_admin.stdout),
        "204",
        "the admin's bypass: {as_admin:?}"
    );
    assert!(
        !store
            .versions()
            .expect("versions")
            .iter()
            .any(|v| v.version_id == pack.version_id),
        "the bypassed version is still there"
    );
}
