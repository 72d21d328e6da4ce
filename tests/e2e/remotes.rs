//! `backstop remote ...` (and `backstop backupjob remote ...`): remotes in the runner's SQLite
//! state, written as backup datastores' templates: created, listed and shown with their
//! location and no secret (text and JSON), the state file holding no password in clear,
//! updated, refused as a job's DATASTORE_ID, removed; bad input gets one line and exit 1.

use crate::support::{BACKSTOP, Outcome, run};
use std::fs;

const SECRET: &str = "remote-password-never-printed";

#[test]
fn remotes_are_kept_sealed_shown_masked_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let st = state.to_str().expect("utf-8");
    let cli = |args: &[&str]| -> Outcome {
        let mut all = vec!["remote", "--state", st];
        all.extend_from_slice(args);
        run(BACKSTOP, &all, b"")
    };
    let ok = |args: &[&str]| -> Outcome {
        let out = cli(args);
        assert_eq!(out.code, Some(0), "remote {args:?}: {out:?}");
        assert!(
            !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
            "{out:?}"
        );
        out
    };
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        fs::write(&p, text).expect("template");
        p.display().to_string()
    };
    let sftp = file(
        "offsite.tmpl",
        &format!(
            "NAME = \"offsite\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"/srv/backups\"\n\
             RESTIC_SFTP_SERVER = \"backup2\"\nRESTIC_SFTP_USER = \"oneadmin\"\n\
             RESTIC_PASSWORD = \"{SECRET}\"\n"
        ),
    );
    assert_eq!(ok(&["create", &sftp]).stdout, "ID: 1\n");
    let s3 = file(
        "bucket.tmpl",
        &format!(
            "NAME = \"bucket\"\nDS_MAD = \"backstop\"\nRESTIC_BACKEND = \"S3\"\n\
             RESTIC_S3_BUCKET = \"copies\"\nRESTIC_S3_ENDPOINT = \"http://127.0.0.1:9\"\n\
             RESTIC_S3_ACCESS_KEY_ID = \"AKID\"\nRESTIC_S3_SECRET_ACCESS_KEY = \"{SECRET}-s3\"\n\
             RESTIC_PASSWORD = \"{SECRET}\"\n"
        ),
    );
    assert_eq!(ok(&["create", &s3]).stdout, "ID: 2\n");

    let list = ok(&["list"]).stdout;
    assert!(
        list.contains("offsite") && list.contains("sftp:oneadmin@backup2:/srv/backups"),
        "{list}"
    );
    assert!(
        list.contains("bucket") && list.contains("s3:http://127.0.0.1:9/copies"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["list", "--json"]).stdout).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");
    let show = ok(&["show", "2"]).stdout;
    assert!(
        show.contains("RESTIC_S3_SECRET_ACCESS_KEY") && show.contains("********"),
        "{show}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["show", "1", "--json"]).stdout).expect("json");
    assert_eq!(shown["template"]["RESTIC_PASSWORD"], "********", "{shown}");
    assert_eq!(shown["location"], "sftp:oneadmin@backup2:/srv/backups");

    // Nothing of the secrets in the state database (or its WAL) in clear.
    for f in fs::read_dir(dir.path()).expect("dir").flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("state.db") {
            let bytes = fs::read(f.path()).expect("read");
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{name} holds a secret in clear"
            );
        }
    }

    // A remote is not a backup datastore: a job cannot name it, `datastore list` omits it.
    let ds = run(
        BACKSTOP,
        &["backupjob", "--state", st, "datastore", "list", "--json"],
        b"",
    );
    assert_eq!((ds.code, ds.stdout.trim()), (Some(0), "[]"), "{ds:?}");
    let job = run(
        BACKSTOP,
        &[
            "backupjob",
            "--state",
            st,
            "create",
            "--name",
            "j",
            "--datastore",
            "1",
            "--vms",
            "5",
        ],
        b"",
    );
    assert_eq!(job.code, Some(1), "{job:?}");
    assert!(job.stderr.contains("DATASTORE_ID 1 is a remote"), "{job:?}");

    // Updated (renamed), then removed; a second removal and bad templates say why.
    let renamed = file(
        "renamed.tmpl",
        &fs::read_to_string(&sftp)
            .expect("t")
            .replace("offsite", "far"),
    );
    ok(&["update", "1", &renamed]);
    assert!(ok(&["list"]).stdout.contains("far"));
    let dup = cli(&["create", &renamed]);
    assert_eq!(dup.code, Some(1), "{dup:?}");
    assert!(
        dup.stderr.contains("named \"far\" already exists"),
        "{dup:?}"
    );
    let bad = file("bad.tmpl", "NAME = \"x\"\nDS_MAD = \"backstop\"\n");
    let out = cli(&["create", &bad]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    ok(&["remove", "1"]);
    let again = cli(&["remove", "1"]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("there is no remote 1"), "{again:?}");
    assert!(!ok(&["list"]).stdout.contains("far"));
}
