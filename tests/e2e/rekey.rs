//! `backupjob datastore update` with a new RESTIC_PASSWORD (issue 27, docs/rekey.md): every
//! repository under the datastore is re-keyed, a key for the new password added before the
//! old one's is removed, so that at no moment does the template's password fail to open one;
//! a change killed midway is completed by the next run. Plain restic is the judge.

use crate::support::{self, BACKSTOP};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OLD: &str = "old-password-1";
const NEW: &str = "new-password-2";

/// Whether plain restic opens the repository with `password`.
fn restic_opens(repo: &Path, password: &str) -> bool {
    backstop_testkit::restic::local(repo, password, &["cat", "config"])
        .status
        .success()
}

/// The key files of a repository (not the temporary files a write goes through).
fn key_files(repo: &Path) -> usize {
    fs::read_dir(repo.join("keys")).map_or(0, |d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

struct Site {
    dir: tempfile::TempDir,
    base: PathBuf,
    repos: Vec<PathBuf>,
}

impl Site {
    /// A datastore directory with `n` repositories restic made with the old password, each
    /// holding one snapshot.
    fn new(n: usize) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("repos");
        let data = dir.path().join("data.txt");
        fs::write(&data, "some data\n").expect("data");
        let repos: Vec<PathBuf> = (1..=n).map(|i| base.join(i.to_string())).collect();
        for repo in &repos {
            for args in [vec!["init"], vec!["backup", data.to_str().expect("utf-8")]] {
                let out = backstop_testkit::restic::local(repo, OLD, &args);
                assert!(out.status.success(), "restic {args:?}: {out:?}");
            }
        }
        Site { dir, base, repos }
    }

    fn template(&self, password: &str, extra: &str) -> PathBuf {
        let p = self.dir.path().join(format!("ds-{password}.tmpl"));
        fs::write(
            &p,
            format!(
                "NAME = \"local\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{}\"\nRESTIC_PASSWORD = \"{password}\"\n{extra}",
                self.base.display()
            ),
        )
        .expect("template");
        p
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = vec![
            "backupjob".into(),
            "--state".into(),
            self.dir.path().join("state.db").display().to_string(),
            "--remotes".into(),
            self.dir.path().join("remotes").display().to_string(),
        ];
        all.extend(rest.iter().map(|s| s.to_string()));
        all
    }

    fn bj(&self, rest: &[&str]) -> support::Outcome {
        let all = self.args(rest);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        support::run(BACKSTOP, &all, b"")
    }

    /// `datastore update 1` to `password`, killed as soon as the first repository has its
    /// second key (before every repository has one).
    fn change_killed_midway(&self, password: &str) {
        let new = self.template(password, "");
        let args = self.args(&["datastore", "update", "1", new.to_str().expect("utf-8")]);
        let mut child = std::process::Command::new(BACKSTOP)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        while key_files(&self.repos[0]) < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no key was added"
            );
            assert!(
                child.try_wait().expect("wait").is_none(),
                "it ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    fn all_open_with(&self, password: &str) -> bool {
        self.repos.iter().all(|r| restic_opens(r, password))
    }
}

/// A new password re-keys every repository; the template changes with it; a change of the
/// password and of where the repositories are at once is refused; a change of another
/// attribute re-keys nothing.
#[test]
fn a_new_password_rekeys_every_repository() {
    let site = Site::new(3);
    let ds = site.template(OLD, "");
    let out = site.bj(&["datastore", "create", ds.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let moved = site.dir.path().join("moved.tmpl");
    fs::write(
        &moved,
        format!(
            "NAME = \"local\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{}/elsewhere\"\nRESTIC_PASSWORD = \"{NEW}\"\n",
            site.dir.path().display()
        ),
    )
    .expect("template");
    let out = site.bj(&["datastore", "update", "1", moved.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("BASE_PATH both change"),
        "{}",
        out.stderr
    );
    assert!(site.all_open_with(OLD), "a refused change touches nothing");

    let other = site.template(OLD, "RESTIC_CONNECTIONS = 3\n");
    let out = site.bj(&["datastore", "update", "1", other.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "datastore updated");

    let new = site.template(NEW, "RESTIC_CONNECTIONS = 3\n");
    let out = site.bj(&["datastore", "update", "1", new.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("3 repositories re-keyed (3 keys added, 3 removed)"),
        "{}",
        out.stdout
    );
    for repo in &site.repos {
        assert!(restic_opens(repo, NEW), "{}", repo.display());
        assert!(!restic_opens(repo, OLD), "{}", repo.display());
        assert_eq!(key_files(repo), 1);
    }
    assert!(!out.stdout.contains(NEW) && !out.stderr.contains(NEW));
    // The state's template has the new password: `datastore show` masks it, and the
    // datastore's repositories open with it (a backstop repo command through the state would;
    // here: the update again with the same template changes nothing).
    let out = site.bj(&["datastore", "update", "1", new.to_str().expect("utf-8")]);
    assert_eq!(out.stdout.trim(), "datastore updated", "{out:?}");
}

/// Killed midway (some repositories have the new key, none lost the old one): every
/// repository still opens with the password of the state's template; the next run (a
/// scheduler pass) completes the change; then every repository opens with the new password
/// and not the old one, as plain restic says.
#[test]
fn a_password_change_killed_midway_is_completed_by_the_next_run() {
    let site = Site::new(4);
    let ds = site.template(OLD, "");
    let out = site.bj(&["datastore", "create", ds.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    site.change_killed_midway(NEW);
    assert!(
        site.all_open_with(OLD),
        "the state's template still has the old password, which opens every repository"
    );
    assert!(
        site.repos.iter().any(|r| key_files(r) == 1),
        "killed before every repository had its new key"
    );

    let out = site.bj(&["scheduler"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("datastore 1: the password change left unfinished is complete"),
        "{}",
        out.stdout
    );
    for repo in &site.repos {
        assert!(restic_opens(repo, NEW), "{}", repo.display());
        assert!(!restic_opens(repo, OLD), "{}", repo.display());
    }
    // Nothing is left to complete.
    let out = site.bj(&["scheduler"]);
    assert!(!out.stdout.contains("password change"), "{}", out.stdout);
}

/// A change killed before it switched the template can be given up: the template keeps the
/// old password, which still opens every repository; another change then works.
#[test]
fn an_unfinished_password_change_can_be_given_up() {
    let site = Site::new(3);
    let ds = site.template(OLD, "");
    assert_eq!(
        site.bj(&["datastore", "create", ds.to_str().expect("utf-8")])
            .code,
        Some(0)
    );
    site.change_killed_midway(NEW);
    // `datastore show` says so.
    let out = site.bj(&["datastore", "show", "1"]);
    assert!(
        out.stdout
            .contains("PASSWORD  : a change is unfinished (ADDING"),
        "{}",
        out.stdout
    );
    // Another change is refused while this one is unfinished.
    let third = site.template("third-password-3", "");
    let out = site.bj(&["datastore", "update", "1", third.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("abort-rekey"), "{}", out.stderr);
    let out = site.bj(&["datastore", "abort-rekey", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("keys for the abandoned password removed")
            && !out.stdout.contains("given up (0 keys"),
        "{}",
        out.stdout
    );
    assert!(site.all_open_with(OLD));
    assert!(
        !site.repos.iter().any(|r| restic_opens(r, NEW)),
        "the abandoned password opens nothing"
    );
    let out = site.bj(&["datastore", "abort-rekey", "1"]);
    assert_eq!(out.code, Some(1), "nothing left to give up: {out:?}");
    let out = site.bj(&["datastore", "update", "1", third.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(site.all_open_with("third-password-3"));
    assert!(!site.repos.iter().any(|r| restic_opens(r, OLD)));
}
