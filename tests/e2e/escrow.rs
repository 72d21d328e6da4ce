//! Escrow keys (issue 29, docs/escrow.md): with BACKSTOP_ESCROW_RECIPIENTS, every repository
//! of a datastore gets a key whose random password is sealed with age to the operator's
//! public key, whether a backup makes it or it was there before. With nothing but the private
//! key, each repository opens again: by hand with the real `age` and `restic` binaries, or
//! with `backstop repo escrow recover`. Real sshd (the datastore is on the SFTP test server),
//! real restic, real age.

use crate::cloud::PASSWORD;
use crate::jobs::{cli_prefix, cloud_with_tm, datastore_template, run_cli};
use crate::support::{self, BACKSTOP};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The escrow key files of a repository at a local path: (file, its JSON).
fn escrow_keys(repo: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(repo.join("keys")).expect("keys").flatten() {
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(entry.path()).expect("read")).expect("json");
        if json.get("backstop_escrow").is_some() {
            found.push((entry.path(), json));
        }
    }
    found
}

/// What an operator types: `jq -r .backstop_escrow.sealed KEYFILE | age -d -i IDENTITY`.
fn unseal_by_hand(key_file: &Path, identity: &Path) -> Option<String> {
    let jq = Command::new("jq")
        .args(["-r", ".backstop_escrow.sealed"])
        .arg(key_file)
        .output()
        .expect("jq must be installed (apt install jq)");
    assert!(jq.status.success(), "{jq:?}");
    let mut age = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("age must be installed (apt install age)");
    use std::io::Write;
    age.stdin
        .take()
        .expect("stdin")
        .write_all(&jq.stdout)
        .expect("write");
    let out = age.wait_with_output().expect("age");
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).expect("utf-8"))
}

/// The by-hand loop of docs/escrow.md, with `repo` and `identity` in place of its examples.
fn doc_loop(repo: &Path, identity: &Path) -> String {
    let doc = fs::read_to_string(support::repo_root().join("docs/escrow.md")).expect("doc");
    let start = doc
        .find("REPO=/var/lib/one")
        .expect("the loop in docs/escrow.md");
    let end = start + doc[start..].find("```").expect("its end");
    let block = &doc[start..end];
    let first = block.lines().next().expect("REPO line");
    block
        .replacen(first, &format!("REPO={}", repo.display()), 1)
        .replace(
            "-i escrow-identity.txt",
            &format!("-i {}", identity.display()),
        )
}

fn restic_opens(repo: &Path, password: &str) -> bool {
    backstop_testkit::restic::local(repo, password, &["snapshots"])
        .status
        .success()
}

fn repo_cmd(repo: &Path, args: &[&str]) -> support::Outcome {
    let mut all = vec!["repo", "-r", repo.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    support::run(BACKSTOP, &all, b"")
}

/// A datastore's repositories, one restic made before escrow was asked for and one a job's
/// backup makes after, each get an escrow key; with the private key alone each opens again,
/// by hand (jq, age, restic) and with `escrow recover`; a wrong identity opens none; the
/// datastore's template refuses what is not a public key.
#[test]
fn an_escrow_key_opens_every_repository_of_a_datastore() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = cloud.dir.path().join("escrow");
    fs::create_dir_all(&work).expect("work");
    let path = |n: &str| work.join(n);
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();

    // The operator's identity, and another one.
    let out = support::run(
        BACKSTOP,
        &["repo", "escrow", "keygen", "--output", &s(&path("id.txt"))],
        b"",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let recipient = out.stdout.trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let mode = fs::metadata(path("id.txt"))
        .expect("id")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let identity = fs::read_to_string(path("id.txt")).expect("id");
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("a secret key line")
        .to_string();
    assert!(identity.contains(&format!("# public key: {recipient}")));
    let again = support::run(
        BACKSTOP,
        &["repo", "escrow", "keygen", "--output", &s(&path("id.txt"))],
        b"",
    );
    assert_eq!(
        again.code,
        Some(1),
        "never over an existing file: {again:?}"
    );
    assert_eq!(again.stderr.lines().count(), 1, "{again:?}");
    assert_eq!(fs::read_to_string(path("id.txt")).expect("id"), identity);
    let other = support::run(
        BACKSTOP,
        &[
            "repo",
            "escrow",
            "keygen",
            "--output",
            &s(&path("other.txt")),
        ],
        b"",
    );
    assert_eq!(other.code, Some(0), "{other:?}");

    // Repository 7 is older than the escrow: restic made it.
    let old_repo = cloud.base_path.join("7");
    let data = path("data.txt");
    fs::write(&data, "a file restic backed up\n").expect("data");
    for args in [vec!["init"], vec!["backup", data.to_str().expect("utf-8")]] {
        let out = backstop_testkit::restic::local(&old_repo, PASSWORD, &args);
        assert!(out.status.success(), "restic {args:?}: {out:?}");
    }

    fs::write(path("vm22.xml"), cloud.vm_xml(-1, -1)).expect("vm doc");
    fs::write(path("ds.tmpl"), datastore_template(&cloud, "")).expect("ds");
    fs::write(
        path("job.tmpl"),
        "NAME = \"nightly\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\nMODE = FULL\n",
    )
    .expect("job");
    let state = path("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let bj = |args: &[&str]| run_cli(&common, args);
    assert_eq!(
        bj(&["datastore", "create", &s(&path("ds.tmpl"))]).stdout,
        "ID: 1\n"
    );
    assert_eq!(
        bj(&["vm", "register", &s(&path("vm22.xml"))]).stdout,
        "ID: 22\n"
    );
    assert_eq!(bj(&["create", &s(&path("job.tmpl"))]).stdout, "ID: 1\n");

    // Asked for without recipients, or with what is not a public key: refused, in one line.
    let out = bj(&["datastore", "escrow", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("has no BACKSTOP_ESCROW_RECIPIENTS"),
        "{out:?}"
    );
    fs::write(
        path("bad.tmpl"),
        format!("BACKSTOP_ESCROW_RECIPIENTS = \"{secret}\"\n"),
    )
    .expect("bad");
    let out = bj(&[
        "datastore",
        "update",
        "1",
        &s(&path("bad.tmpl")),
        "--append",
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("BACKSTOP_ESCROW_RECIPIENTS")
            && out
                .stderr
                .contains("a private key (AGE-SECRET-KEY-...) was given")
            && !out.stderr.contains(&secret[16..]),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        escrow_keys(&old_repo).is_empty(),
        "a refused update adds nothing"
    );

    // Recipients given: the repository there already gets its escrow key at once.
    fs::write(
        path("escrow.tmpl"),
        format!("BACKSTOP_ESCROW_RECIPIENTS = \"{recipient}\"\n"),
    )
    .expect("escrow");
    let out = bj(&[
        "datastore",
        "update",
        "1",
        &s(&path("escrow.tmpl")),
        "--append",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "datastore updated; escrow keys added to 1 of 1 repositories (the others had one)"
    );
    assert_eq!(escrow_keys(&old_repo).len(), 1);

    // The job's backup makes its repository with one.
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let job_repo = cloud.base_path.join("job_1");
    assert_eq!(escrow_keys(&job_repo).len(), 1);
    // Asked again: nothing to add; a second backup adds none either.
    let out = bj(&["datastore", "escrow", "1"]);
    assert_eq!(
        out.stdout.trim(),
        "escrow keys added to 0 of 2 repositories (the others had one)",
        "{out:?}"
    );
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(escrow_keys(&job_repo).len(), 1);

    for repo in [&old_repo, &job_repo] {
        let shown = repo.display();
        // Plain restic reads the repository with its escrow key in it, and restic's own key
        // list shows the escrow key's user.
        let check = backstop_testkit::restic::local(repo, PASSWORD, &["check"]);
        assert!(check.status.success(), "{shown}: {check:?}");
        let keys = backstop_testkit::restic::local(repo, PASSWORD, &["key", "list"]);
        assert!(
            String::from_utf8_lossy(&keys.stdout).contains("backstop-escrow"),
            "{shown}: {keys:?}"
        );
        let (key_file, json) = escrow_keys(repo).remove(0);
        assert_eq!(
            json["backstop_escrow"]["recipients"],
            serde_json::json!([recipient])
        );
        let listed = repo_cmd(
            repo,
            &[
                "key",
                "list",
                "--password-file",
                &s(&write_pw(&work, PASSWORD)),
            ],
        );
        assert!(
            listed
                .stdout
                .contains(&format!("escrow, sealed to {recipient}")),
            "{listed:?}"
        );

        // By hand: the private key unseals a password plain restic opens the repository with.
        let escrow_pw = unseal_by_hand(&key_file, &path("id.txt")).expect("age -d");
        assert_eq!(escrow_pw.len(), 64, "256 random bits, in hex");
        assert!(restic_opens(repo, &escrow_pw), "{shown}");
        assert!(
            unseal_by_hand(&key_file, &path("other.txt")).is_none(),
            "another identity unseals nothing"
        );
        // docs/escrow.md's loop, as written (its repository and identity file put in):
        // plain restic lists the snapshots with the password age unseals, no password given.
        for (identity_file, opens) in [("id.txt", true), ("other.txt", false)] {
            let out = Command::new("bash")
                .arg("-c")
                .arg(doc_loop(repo, &path(identity_file)))
                .env_remove("RESTIC_PASSWORD")
                .env_remove("RESTIC_PASSWORD_FILE")
                .stdin(Stdio::null())
                .output()
                .expect("bash");
            assert_eq!(
                out.status.success(),
                opens,
                "{identity_file}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // With backstop: the datastore's password is lost; a new one is set with the private
        // key alone.
        let wrong = repo_cmd(
            repo,
            &[
                "escrow",
                "recover",
                "--identity",
                &s(&path("other.txt")),
                "--new-password-file",
                &s(&write_pw(&work, "never-set")),
            ],
        );
        assert_eq!(wrong.code, Some(1), "{wrong:?}");
        assert!(
            wrong.stderr.contains("opens with that identity"),
            "{wrong:?}"
        );
        assert_eq!(wrong.stderr.lines().count(), 1);
        assert!(!restic_opens(repo, "never-set"));

        let new_pw = format!(
            "recovered-{}",
            repo.file_name().expect("name").to_string_lossy()
        );
        // No password anywhere (the test's environment has none): the escrow key is the only
        // way in.
        let out = support::run(
            BACKSTOP,
            &[
                "repo",
                "-r",
                &s(repo),
                "escrow",
                "recover",
                "--identity",
                &s(&path("id.txt")),
                "--new-password-file",
                &s(&write_pw(&work, &new_pw)),
            ],
            b"",
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stdout
                .contains("opened with the escrow key; a key for the new password added"),
            "{out:?}"
        );
        for secret_text in [&escrow_pw, &new_pw, &secret] {
            assert!(
                !out.stdout.contains(secret_text.as_str())
                    && !out.stderr.contains(secret_text.as_str()),
                "a secret was printed: {out:?}"
            );
        }
        assert!(restic_opens(repo, &new_pw), "{shown}");
        assert!(
            restic_opens(repo, PASSWORD),
            "the old password still opens it"
        );
        assert_eq!(escrow_keys(repo).len(), 1, "the escrow key stays");
    }

    // A password change (docs/rekey.md) leaves the escrow keys: the old password opens none
    // of them, so none is removed, and each still opens its repository.
    fs::write(
        path("rotated.tmpl"),
        datastore_template(
            &cloud,
            &format!("BACKSTOP_ESCROW_RECIPIENTS = \"{recipient}\"\n"),
        )
        .replace(PASSWORD, "rotated-password-3"),
    )
    .expect("rotated");
    let out = bj(&["datastore", "update", "1", &s(&path("rotated.tmpl"))]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("2 repositories re-keyed"), "{out:?}");
    for repo in [&old_repo, &job_repo] {
        assert!(!restic_opens(repo, PASSWORD), "{}", repo.display());
        assert_eq!(escrow_keys(repo).len(), 1, "{}", repo.display());
        let out = Command::new("bash")
            .arg("-c")
            .arg(doc_loop(repo, &path("id.txt")))
            .env_remove("RESTIC_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The private key is in no file backstop wrote.
    for f in [state.clone(), path("state.db-wal")] {
        let bytes = fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the private key",
            f.display()
        );
    }
}

/// A password file under `dir` holding `password`; its path.
fn write_pw(dir: &Path, password: &str) -> PathBuf {
    let p = dir.join(format!("pw-{password}"));
    fs::write(&p, format!("{password}\n")).expect("password file");
    p
}
