//! rustic (the Rust reimplementation of restic) as a second reader: what backstop writes, the
//! `rustic` binary checks clean with `check --read-data` and dumps byte-exact. The binary comes
//! from `BACKSTOP_RUSTIC` or PATH; CI installs it (`cargo install rustic-rs --locked`). Without
//! it this test fails, naming what is missing: it never passes without having run.

use backstop_image::image::{Extent, RawImage};
use backstop_repo::format::RepoId;
use backstop_repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_repo::{Compression, Repo};
use backstop_storage::local::LocalBackend;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

mod common;
use common::*;

fn rustic_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BACKSTOP_RUSTIC") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("rustic"))
                .find(|p| p.is_file())
        })
        .expect(
            "no rustic binary: set BACKSTOP_RUSTIC or put rustic on PATH \
             (cargo install rustic-rs --locked --version 0.11.4; .ci/run does)",
        )
}

fn rustic(repo: &Path, args: &[&str]) -> Output {
    Command::new(rustic_binary())
        .args(["--no-cache", "--no-progress", "-r"])
        .arg(repo)
        .args(args)
        .env("RUSTIC_PASSWORD", PASSWORD)
        .output()
        .expect("run rustic")
}

fn backup(repo: &Repo, image: &Path, changed: Option<&[Extent]>, parent: Option<RepoId>) -> RepoId {
    let source = RawImage::open(image).expect("open image");
    let files = [
        FileSpec {
            path: DISK.into(),
            content: Content::Image {
                source: &source,
                changed,
                parent_path: Some(DISK.into()),
            },
        },
        FileSpec {
            path: "/var/lib/one/datastores/0/22/backup/vm.xml".into(),
            content: Content::Bytes(b"<VM><ID>22</ID></VM>"),
        },
    ];
    let options = BackupOptions {
        compression: Compression::Auto,
        parent,
        ..BackupOptions::default()
    };
    writer::backup(repo, &files, &options)
        .expect("backup")
        .snapshot_id
}

#[test]
fn rustic_checks_and_dumps_what_backstop_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Repo::init(Arc::new(LocalBackend::new(&repo_path)), PASSWORD).expect("init");
    let image = dir.path().join("disk.raw");
    make_image(&image, 24, 9);
    let mut snapshots = Vec::new();
    let mut parent = backup(&repo, &image, None, None);
    snapshots.push((parent, fs::read(&image).expect("read")));
    for generation in 0..2 {
        let changed = scribble(&image, 6, 90 + generation);
        parent = backup(&repo, &image, Some(&changed), Some(parent));
        snapshots.push((parent, fs::read(&image).expect("read")));
    }
    let check = rustic(&repo_path, &["check", "--read-data"]);
    let log = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && !log.contains("[ERROR]") && !log.contains("[WARN]"),
        "rustic check --read-data:\n{log}"
    );
    for (id, bytes) in &snapshots {
        let path = "/var/lib/one/datastores/0/22/backup/disk.0.0";
        let out = rustic(&repo_path, &["dump", &format!("{}:{path}", id.to_hex())]);
        assert!(
            out.status.success(),
            "rustic dump {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == *bytes,
            "rustic dump of {id} differs from the image"
        );
    }
}
