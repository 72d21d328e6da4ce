//! Directories private to the user that runs backstop, for the records that decide what is
//! later signalled or removed: which qemu-nbd serves which export, where a run's progress is.
//!
//! Such records never live in the shared temporary directory: any local user can create a
//! `/tmp/backstop-nbd-*/owner` naming a live process of oneadmin (PIDs, start times and the
//! boot id are public in /proc), and the next host step would signal it. The directory is
//! `$HOME/.local/state/backstop/<purpose>` (or, without a home of this user's own,
//! `$XDG_RUNTIME_DIR/backstop/<purpose>`, else `<tmp>/backstop-<uid>/<purpose>`); it must be a real directory (not a link) owned by this
//! user with no access for anyone else, and it is refused, naming what is wrong, otherwise.
//! See docs/security.md.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes `dir` (0700) when missing, then checks that it is a directory of this user's that no
/// one else can enter; a looser mode on a directory of ours is tightened.
pub fn ensure_private(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot make {}: {e}", dir.display()),
            ));
        }
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a link or a file is there); refusing to keep process records in it",
            dir.display()
        )));
    }
    if meta.uid() != euid() {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to this user (uid {}); refusing to keep process records in it",
            dir.display(),
            meta.uid(),
            euid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether `dir` may hold this user's private state: a directory owned by this user that
/// nobody else can write.
fn usable(dir: &Path) -> bool {
    dir.is_absolute()
        && std::fs::metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == euid() && m.mode() & 0o022 == 0)
}

/// The base of this user's private directories (not made): under `$HOME` when it is this
/// user's own, else under `$XDG_RUNTIME_DIR`, else in the temporary directory (where another
/// user could take the name first; that is then refused, naming it).
pub fn base() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|d| usable(d))
    };
    if let Some(home) = from_env("HOME") {
        return home.join(".local/state/backstop");
    }
    if let Some(run) = from_env("XDG_RUNTIME_DIR") {
        return run.join("backstop");
    }
    std::env::temp_dir().join(format!("backstop-{}", euid()))
}

/// This user's private directory for `purpose` (made when missing, checked every time).
pub fn private_dir(purpose: &str) -> io::Result<PathBuf> {
    let base = base();
    if let Some(parent) = base.parent().filter(|p| p.ends_with(".local/state")) {
        // `.local/state` under the user's own home, made as XDG would.
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot make {}: {e}", parent.display()))
                })?;
        }
    }
    ensure_private(&base)?;
    let dir = base.join(purpose);
    ensure_private(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_ours_or_is_a_link_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mine = tmp.path().join("mine");
        ensure_private(&mine).expect("made");
        assert_eq!(
            std::fs::metadata(&mine).expect("meta").mode() & 0o777,
            0o700
        );
        // Loosened by someone: tightened again.
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private(&mine).expect("ours");
        assert_eq!(
            std::fs::metadata(&mine).expect("meta").mode() & 0o777,
            0o700
        );
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).expect("link");
        let e = ensure_private(&link).expect_err("a link");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        if euid() == 0 {
            let theirs = tmp.path().join("theirs");
            std::fs::create_dir(&theirs).expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).expect("chown");
            let e = ensure_private(&theirs).expect_err("not ours");
            assert!(e.to_string().contains("belongs to uid 4242"), "{e}");
        }
    }
}
