//! The real restic binary, the compatibility oracle, on a repository at a local path.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `restic --repo <repo> --no-cache <args>` with `password`; its output, whatever the
/// exit status.
pub fn local(repo: &Path, password: &str, args: &[&str]) -> Output {
    Command::new("restic")
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", password)
        .output()
        .expect("the restic binary must be installed (apt install restic)")
}
