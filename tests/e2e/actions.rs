//! The installed actions called as oned calls them: argv, stdin, exit code, stdout, stderr.

use crate::support::*;
use std::path::{Path, PathBuf};

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    remotes: PathBuf,
}

fn installed() -> Tree {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let remotes = root.join("remotes");
    let out = install_sh(&remotes, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    Tree {
        _dir: dir,
        root,
        remotes,
    }
}

impl Tree {
    fn action(&self, name: &str) -> PathBuf {
        self.remotes.join("datastore/backstop").join(name)
    }
}

fn df_total_mb(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1M", "--output=size"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df size")
}

#[test]
fn monitor_reports_a_local_datastore_and_creates_base_path() {
    let t = installed();
    let base = t.root.join("datastores/100");
    let data = action_data(&[&datastore_xml(base.to_str().expect("utf-8"), "")]);
    // OpenNebula >= 6.8: the id in argv, base64 on stdin with no trailing newline.
    let out = run(t.action("monitor"), &["100"], b64(&data).as_bytes());
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr, "");
    assert!(base.is_dir(), "BASE_PATH was not created");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    let value = |i: usize, key: &str| -> u64 {
        lines[i]
            .strip_prefix(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("line {i} is {:?}, expected {key}<integer>", lines[i]))
    };
    let (used, total, free) = (
        value(0, "USED_MB="),
        value(1, "TOTAL_MB="),
        value(2, "FREE_MB="),
    );
    // df rounds up where backstop rounds down: they agree within 1 MiB.
    assert!(
        df_total_mb(&base).abs_diff(total) <= 1,
        "total {total} vs df"
    );
    assert!(used <= total && free <= total);

    // OpenNebula 6.6.0/6.6.1: `monitor <base64> <id>`, nothing on stdin.
    let old = run(t.action("monitor"), &[&b64(&data), "100"], b"");
    assert_eq!(old.code, Some(0), "{old:?}");
    assert_eq!(old.stdout.lines().count(), 3);
}

#[test]
fn monitor_of_an_unreachable_backup_server_fails_with_one_line() {
    let t = installed();
    // Nothing listens on 127.0.0.9:22: ssh is refused at once (loopback only, by design).
    let data = action_data(&[&datastore_xml(
        "/var/lib/one//datastores/100",
        "<RESTIC_SFTP_SERVER>127.0.0.9</RESTIC_SFTP_SERVER>",
    )]);
    let out = run(t.action("monitor"), &["100"], b64(&data).as_bytes());
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "monitor: cannot read the capacity of /var/lib/one//datastores/100 on 127.0.0.9: "
        ) && out.stderr.contains("127.0.0.9"),
        "{}",
        out.stderr
    );
}

/// Each bad-input class gets exactly one stderr line, naming what was wrong; exit 1; no stdout.
#[test]
fn bad_input_gets_one_exact_error_line() {
    let t = installed();
    let ds = datastore_xml("/tmp/x", "");
    let no_base = ds.replace("<BASE_PATH><![CDATA[/tmp/x]]></BASE_PATH>", "");
    let bad_id = ds.replace("<ID>100</ID>", "<ID>1e2</ID>");
    let stat_no_chain = action_data(&[
        "<IMAGE><PATH>backstop://100///var/lib/one//datastores/0/22/backup/disk.0.0</PATH></IMAGE>",
        &ds,
    ]);
    let cases: Vec<(&str, Vec<&str>, Vec<u8>, String)> = vec![
        ("monitor", vec!["100"], b"%%% not base64".to_vec(), "monitor: stdin is not base64: invalid character '%' at offset 0".into()),
        ("monitor", vec!["100"], b64("this is not xml").into_bytes(), "monitor: stdin is not XML: text before the root element (at byte 0)".into()),
        ("rm", vec!["31"], b64("<DS_DRIVER_ACTION_DATA><IMAGE>").into_bytes(), "rm: stdin is not XML: element <IMAGE> is not closed (at byte 30)".into()),
        ("monitor", vec!["100"], b64("<VM><ID>1</ID></VM>").into_bytes(), "monitor: expected XML root element DS_DRIVER_ACTION_DATA, found VM".into()),
        ("monitor", vec!["100"], b64(&action_data(&[])).into_bytes(), "monitor: DS_DRIVER_ACTION_DATA/DATASTORE is missing".into()),
        ("monitor", vec!["100"], b64(&action_data(&[&no_base])).into_bytes(), "monitor: DS_DRIVER_ACTION_DATA/DATASTORE/BASE_PATH is missing".into()),
        ("monitor", vec!["100"], b64(&action_data(&[&bad_id])).into_bytes(), "monitor: DS_DRIVER_ACTION_DATA/DATASTORE/ID is not a number: \"1e2\"".into()),
        ("monitor", vec!["one"], b64(&action_data(&[&ds])).into_bytes(), "monitor: the request id is not a number: \"one\"".into()),
        ("stat", vec!["7"], b64(&stat_no_chain).into_bytes(), "stat: DS_DRIVER_ACTION_DATA/IMAGE/PATH has no increment chain (expected <proto>://<datastore id>/<job id or empty>/<id:source,...>/<absolute path>)".into()),
        ("monitor", vec!["100"], Vec::new(), "monitor: stdin is empty: expected base64 of the DS_DRIVER_ACTION_DATA document".into()),
        ("backup", vec!["node1:/var/lib/one//datastores/0/22", "0", "one-22", "-", "22", "0"], Vec::new(), "backup: stdin is empty: expected an XML document".into()),
        ("backup", vec!["node1:/var/lib/one//datastores/0/22", "0:x", "one-22", "-", "22", "0"], Vec::new(), "backup: a disk id is not a number: \"x\"".into()),
        ("backup_cancel", vec!["node1:/d/22", "one-22"], b"<DATASTORE/>".to_vec(), "backup_cancel: expected XML root element VM, found DATASTORE".into()),
        ("ls", vec!["-i", "two"], Vec::new(), "ls: the increment id is not a number: \"two\"".into()),
    ];
    for (action, args, stdin, expected) in cases {
        let out = run(t.action(action), &args, &stdin);
        assert_eq!(out.code, Some(1), "{action} {args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{action}: stdout must be empty on failure");
        assert_eq!(out.stderr, format!("{expected}\n"), "{action} {args:?}");
    }
}

#[test]
fn the_password_never_reaches_stdout_or_stderr() {
    let t = installed();
    let data = action_data(&[&datastore_xml("/nonexistent\u{0}", "")]);
    for action in ["monitor", "rm", "stat", "increment_flatten", "restore"] {
        let out = run(t.action(action), &["1"], b64(&data).as_bytes());
        assert!(
            !out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"),
            "{action}: {out:?}"
        );
    }
    let decoded = run(
        BACKSTOP,
        &["decode", "datastore/backstop/monitor", "1"],
        b64(&action_data(&[&datastore_xml("/x", "")])).as_bytes(),
    );
    assert_eq!(decoded.code, Some(0), "{decoded:?}");
    assert!(
        decoded.stdout.contains("\"base_path\": \"/x\""),
        "{}",
        decoded.stdout
    );
    assert!(decoded.stdout.contains("RESTIC_PASSWORD") && !decoded.stdout.contains("hunter2"));
}

/// An S3 datastore is decoded and its attributes checked before anything is reached: a
/// missing one is named; the secret key never shows, in decode output nor in an error.
#[test]
fn an_s3_datastore_is_checked_and_its_secret_never_shows() {
    let t = installed();
    let base = t.root.join("datastores/100");
    let secret =
        "<RESTIC_S3_SECRET_ACCESS_KEY><![CDATA[sk-never-shown-42]]></RESTIC_S3_SECRET_ACCESS_KEY>";
    let data = action_data(&[&datastore_xml(
        base.to_str().expect("utf-8"),
        &format!("<RESTIC_BACKEND><![CDATA[S3]]></RESTIC_BACKEND>{secret}"),
    )]);
    let out = run(t.action("monitor"), &["100"], b64(&data).as_bytes());
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "monitor: datastore 100: RESTIC_S3_BUCKET is missing (RESTIC_BACKEND is S3)\n"
    );
    let data = action_data(&[&datastore_xml(
        base.to_str().expect("utf-8"),
        &format!(
            "<RESTIC_BACKEND><![CDATA[S3]]></RESTIC_BACKEND><RESTIC_S3_BUCKET>b-1</RESTIC_S3_BUCKET>{secret}"
        ),
    )]);
    let out = run(t.action("monitor"), &["100"], b64(&data).as_bytes());
    assert_eq!(
        out.stderr,
        "monitor: datastore 100: RESTIC_S3_ACCESS_KEY_ID is missing (RESTIC_BACKEND is S3)\n"
    );
    let decoded = run(
        BACKSTOP,
        &["decode", "datastore/backstop/monitor", "100"],
        b64(&data).as_bytes(),
    );
    assert_eq!(decoded.code, Some(0), "{decoded:?}");
    assert!(
        decoded.stdout.contains("RESTIC_S3_SECRET_ACCESS_KEY")
            && !decoded.stdout.contains("sk-never-shown-42"),
        "{}",
        decoded.stdout
    );
    // Malformed input is named as such.
    let out = run(t.action("monitor"), &["100"], b"%%%");
    assert_eq!(out.code, Some(1));
    assert!(!out.stderr.contains("not implemented"), "{}", out.stderr);
}

#[test]
fn a_symlink_named_after_the_action_runs_it() {
    let t = installed();
    let link = t.root.join("other/datastore/backstop/snap_revert");
    std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(BACKSTOP, &link).expect("symlink");
    let out = run(&link, &["3"], b"");
    assert_eq!(out.stderr, "snap_revert: Operation not supported\n");
    assert_eq!(out.code, Some(1));
}

#[test]
fn the_command_line_answers_version_and_help() {
    let v = run(BACKSTOP, &["--version"], b"");
    assert_eq!(v.code, Some(0));
    assert_eq!(
        v.stdout,
        format!("backstop {}\n", env!("CARGO_PKG_VERSION"))
    );
    let h = run(BACKSTOP, &["--help"], b"");
    assert_eq!(h.code, Some(0));
    assert!(h.stdout.contains("install") && h.stdout.contains("action"));
    let bad = run(
        BACKSTOP,
        &["action", "/x/datastore/backstop/frobnicate"],
        b"",
    );
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr
            .starts_with("frobnicate: /x/datastore/backstop/frobnicate is not a backstop action"),
        "{}",
        bad.stderr
    );
}
