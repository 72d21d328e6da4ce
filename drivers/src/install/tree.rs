//! A directory tree that the installer changes without following any link inside it
//! (docs/security.md, "The installer and a tree another account owns").
//!
//! OpenNebula's remotes tree belongs to oneadmin, and operators run install.sh as root. Whoever
//! owns the tree can plant a symbolic link where the installer is about to write, read or
//! rename, so every operation here is made relative to a directory file descriptor, one path
//! component at a time, with `O_NOFOLLOW`: a link in the tree is an entry like any other (it
//! can be moved aside or replaced), never a way out of the tree. Files are written to an
//! exclusive temporary name, synced, then renamed over their target, never with a set-id bit;
//! when root writes into a directory another account owns, what it creates is handed to that
//! account (`fchown` on the open descriptor), so the tree stays theirs. Files with other hard
//! links are not read.
//!
//! `--dry-run` opens trees with [`Open::Pretend`]: every change is kept in memory and read back
//! from there, so the installer runs its whole course and says what it would do, and nothing
//! on disk changes.
//!
//! Reaching the tree itself (`--remotes-dir /var/lib/one/remotes`) follows a link only where
//! the directory holding it cannot be changed by anyone but root or the user running the
//! installer; `/var/lib/one` belongs to oneadmin, so a link there is refused.

use super::InstallError;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Uid};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A path inside a tree: relative, every component a plain name (no `.`, `..`, or empty one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rel(String);

impl Rel {
    pub(crate) fn parse(text: &str) -> Option<Rel> {
        let ok = !text.is_empty()
            && !text.contains('\0')
            && text
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        ok.then(|| Rel(text.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The directories above the last component, and the last component.
    fn split(&self) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = self.0.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        (parts, name)
    }

    pub(crate) fn parent(&self) -> Option<Rel> {
        self.0.rsplit_once('/').map(|(p, _)| Rel(p.to_string()))
    }

    pub(crate) fn join(&self, more: &Rel) -> Rel {
        Rel(format!("{}/{}", self.0, more.0))
    }
}

impl std::fmt::Display for Rel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an entry of the tree is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Link,
    Other,
}

/// How a tree is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// It must exist.
    Existing,
    /// Made, with missing parents, when it does not exist.
    Create,
    /// Changes are only pretended (`--dry-run`): kept in memory, never written; a tree that
    /// does not exist is an empty one.
    Pretend,
}

/// What a pretended change left at a path.
#[derive(Debug, Clone)]
enum Virtual {
    /// A file with this content and mode.
    File(Vec<u8>, u32),
    /// Nothing (removed, or moved away).
    Gone,
    /// What the real tree holds at that other path (moved here).
    Moved(Rel),
}

/// Where a path's answer comes from, in a pretending tree.
enum Seen {
    Real(Rel),
    File(Vec<u8>, u32),
    Gone,
}

/// A tree opened at its root directory.
#[derive(Debug)]
pub(crate) struct Tree {
    /// `None` only for a pretending tree that does not exist.
    root: Option<OwnedFd>,
    path: PathBuf,
    /// The pretended changes (`Some` only when opened with [`Open::Pretend`]).
    pretend: Option<RefCell<BTreeMap<Rel, Virtual>>>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// How many links the way to a tree may take (as the kernel's own limit).
const MAX_LINKS: usize = 40;

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Link,
        _ => Kind::Other,
    }
}

/// What root creates in a directory another account owns is handed to that account
/// (`fchown` on the open descriptor), so that account's part of the tree stays its own; in a
/// directory of root's, or when not run as root, it stays the creator's.
fn hand_over(parent: &OwnedFd, made: &OwnedFd) -> io::Result<()> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(());
    }
    let st = rustix::fs::fstat(parent).map_err(errno)?;
    if st.st_uid != 0 {
        rustix::fs::fchown(
            made,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        )
        .map_err(errno)?;
    }
    Ok(())
}

/// Whether a link inside `dir` may be followed: only root, or the user running this, can
/// change what the directory holds.
fn trusted(dir: &OwnedFd) -> io::Result<bool> {
    let st = rustix::fs::fstat(dir).map_err(errno)?;
    let me = rustix::process::geteuid().as_raw();
    Ok((st.st_uid == 0 || st.st_uid == me) && st.st_mode & 0o022 == 0)
}

impl Tree {
    /// Opens the directory at `path`, making it (and missing parents) when `create`. A link on
    /// the way is followed only inside a directory that nobody but root or this user can change.
    pub(crate) fn open(path: &Path, how: Open) -> Result<Tree, InstallError> {
        let create = how == Open::Create;
        let pretend = (how == Open::Pretend).then(|| RefCell::new(BTreeMap::new()));
        let fail = |e: io::Error| {
            let what = if create {
                "cannot write to"
            } else {
                "cannot open"
            };
            InstallError(format!("{what} {}: {e}", path.display()))
        };
        let abs = std::path::absolute(path).map_err(fail)?;
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, &abs);
        let mut dir = rustix::fs::openat(rustix::fs::CWD, "/", DIR_FLAGS, Mode::empty())
            .map_err(|e| fail(errno(e)))?;
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                dir = rustix::fs::openat(&dir, "..", DIR_FLAGS, Mode::empty())
                    .map_err(|e| fail(errno(e)))?;
                continue;
            }
            let st = match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(st),
                Err(rustix::io::Errno::NOENT) if create => None,
                Err(rustix::io::Errno::NOENT) if pretend.is_some() => {
                    return Ok(Tree {
                        root: None,
                        path: path.to_path_buf(),
                        pretend,
                    });
                }
                Err(e) => return Err(fail(errno(e))),
            };
            match st.map(|s| kind_of(s.st_mode)) {
                None => {
                    rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755))
                        .or_else(|e| {
                            if e == rustix::io::Errno::EXIST {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| fail(errno(e)))?;
                }
                Some(Kind::Link) => {
                    if !trusted(&dir).map_err(fail)? {
                        let owner = rustix::fs::fstat(&dir).map(|s| s.st_uid).unwrap_or(0);
                        return Err(InstallError(format!(
                            "{}: {} is a symbolic link in a directory that uid {owner} (or its group, or everyone) can change; refusing to follow it (give the real path)",
                            path.display(),
                            name.to_string_lossy()
                        )));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(fail(io::Error::from_raw_os_error(
                            rustix::io::Errno::LOOP.raw_os_error(),
                        )));
                    }
                    let target = rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())
                        .map_err(|e| fail(errno(e)))?;
                    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    if target.is_absolute() {
                        dir = rustix::fs::openat(rustix::fs::CWD, "/", DIR_FLAGS, Mode::empty())
                            .map_err(|e| fail(errno(e)))?;
                    }
                    push_components(&mut todo, &target);
                    continue;
                }
                Some(Kind::Dir) => {}
                Some(_) => {
                    return Err(fail(io::Error::from_raw_os_error(
                        rustix::io::Errno::NOTDIR.raw_os_error(),
                    )));
                }
            }
            dir = rustix::fs::openat(&dir, name.as_os_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| fail(errno(e)))?;
        }
        Ok(Tree {
            root: Some(dir),
            path: path.to_path_buf(),
            pretend,
        })
    }

    /// Whether changes are only pretended ([`Open::Pretend`]).
    pub(crate) fn pretending(&self) -> bool {
        self.pretend.is_some()
    }

    /// Where the answer for `rel` comes from: a pretended change, or the real tree.
    fn seen(&self, rel: &Rel) -> Seen {
        match self
            .pretend
            .as_ref()
            .and_then(|p| p.borrow().get(rel).cloned())
        {
            Some(Virtual::File(c, m)) => Seen::File(c, m),
            Some(Virtual::Gone) => Seen::Gone,
            Some(Virtual::Moved(from)) => Seen::Real(from),
            None => Seen::Real(rel.clone()),
        }
    }

    /// Records a pretended change; `false` when the tree is a real one.
    fn pretend_that(&self, rel: &Rel, v: Virtual) -> bool {
        match &self.pretend {
            Some(p) => {
                p.borrow_mut().insert(rel.clone(), v);
                true
            }
            None => false,
        }
    }

    /// Whether only root can change what the tree's root directory holds.
    pub(crate) fn only_root_can_change(&self) -> bool {
        self.root.as_ref().is_some_and(|root| {
            rustix::fs::fstat(root).is_ok_and(|st| st.st_uid == 0 && st.st_mode & 0o022 == 0)
        })
    }

    /// The tree's path joined with `rel`, for messages.
    pub(crate) fn display(&self, rel: &Rel) -> String {
        self.path.join(rel.as_str()).display().to_string()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `parts` below the root (made when `create`); `None` when one is missing.
    fn dir(&self, parts: &[&str], create: bool) -> io::Result<Option<OwnedFd>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let mut dir = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(errno)?;
        for part in parts {
            let next = match rustix::fs::openat(&dir, *part, DIR_FLAGS, Mode::empty()) {
                Ok(d) => d,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(errno(e)),
                    }
                    let made =
                        rustix::fs::openat(&dir, *part, DIR_FLAGS, Mode::empty()).map_err(errno)?;
                    hand_over(&dir, &made)?;
                    made
                }
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                // O_DIRECTORY answers ENOTDIR for a link before O_NOFOLLOW's ELOOP.
                Err(e @ (rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
                    let link = rustix::fs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| kind_of(st.st_mode) == Kind::Link);
                    if link {
                        return Err(io::Error::other(format!(
                            "{part} is a symbolic link; the installer does not follow links inside the tree"
                        )));
                    }
                    return Err(errno(e));
                }
                Err(e) => return Err(errno(e)),
            };
            dir = next;
        }
        Ok(Some(dir))
    }

    /// What `rel` is, without following it; `None` when it does not exist.
    pub(crate) fn kind(&self, rel: &Rel) -> Option<Kind> {
        match self.seen(rel) {
            Seen::Real(r) => self.real_kind(&r),
            Seen::File(..) => Some(Kind::File),
            Seen::Gone => None,
        }
    }

    /// What `rel` is on disk, whatever was pretended.
    fn real_kind(&self, rel: &Rel) -> Option<Kind> {
        let (parts, name) = rel.split();
        let dir = self.dir(&parts, false).ok()??;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(kind_of(st.st_mode))
    }

    /// The identity (device, inode) of the directory `rel`, for telling two names of one
    /// directory apart; `None` when it is not a directory.
    pub(crate) fn dir_identity(&self, rel: &Rel) -> Option<(u64, u64)> {
        let (parts, name) = rel.split();
        let dir = self.dir(&parts, false).ok()??;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (kind_of(st.st_mode) == Kind::Dir).then_some((st.st_dev, st.st_ino))
    }

    /// The target of the link `rel`.
    pub(crate) fn link_target(&self, rel: &Rel) -> Option<PathBuf> {
        let Seen::Real(rel) = self.seen(rel) else {
            return None;
        };
        let (parts, name) = rel.split();
        let dir = self.dir(&parts, false).ok()??;
        let target = rustix::fs::readlinkat(&dir, name, Vec::new()).ok()?;
        Some(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// The content and mode of the regular file `rel` (at most `cap` bytes), `None` when it
    /// does not exist; an error when it is a link or anything but a regular file.
    pub(crate) fn read(&self, rel: &Rel, cap: u64) -> Result<Option<(Vec<u8>, u32)>, InstallError> {
        let rel = &match self.seen(rel) {
            Seen::Real(r) => r,
            Seen::File(c, m) => return Ok(Some((c, m))),
            Seen::Gone => return Ok(None),
        };
        let fail = |e: io::Error| InstallError(format!("cannot read {}: {e}", self.display(rel)));
        let (parts, name) = rel.split();
        let Some(dir) = self.dir(&parts, false).map_err(fail)? else {
            return Ok(None);
        };
        // NONBLOCK: a FIFO planted in the tree must not hang the installer on open.
        let fd = match rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(InstallError(format!(
                    "{} is a symbolic link; the installer does not follow links inside the tree",
                    self.display(rel)
                )));
            }
            Err(e) => return Err(fail(errno(e))),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| fail(errno(e)))?;
        if kind_of(st.st_mode) != Kind::File {
            return Err(InstallError(format!(
                "{} is not a regular file",
                self.display(rel)
            )));
        }
        // A hard link to a file elsewhere (where protected_hardlinks is off) is not the tree's
        // to show.
        if st.st_nlink > 1 {
            return Err(InstallError(format!(
                "{} has other hard links; the installer does not read it",
                self.display(rel)
            )));
        }
        if st.st_size as u64 > cap {
            return Err(InstallError(format!(
                "{} is larger than {cap} bytes",
                self.display(rel)
            )));
        }
        let mut content = Vec::new();
        std::fs::File::from(fd)
            .take(cap + 1)
            .read_to_end(&mut content)
            .map_err(fail)?;
        Ok(Some((content, st.st_mode & 0o777)))
    }

    /// Writes `content` at `rel` through an exclusive temporary file and a rename, unless a
    /// regular file with that content and mode is there. Returns whether anything changed.
    pub(crate) fn write_if_changed(
        &self,
        rel: &Rel,
        content: &[u8],
        mode: u32,
    ) -> Result<bool, InstallError> {
        if let Ok(Some((old, old_mode))) = self.read(rel, content.len() as u64)
            && old == content
            && old_mode == mode
        {
            return Ok(false);
        }
        self.write_new(rel, content, mode, false)?;
        Ok(true)
    }

    /// Writes `content` at `rel` only if nothing is there (a file that must never be
    /// overwritten). Returns whether it wrote.
    pub(crate) fn write_once(
        &self,
        rel: &Rel,
        content: &[u8],
        mode: u32,
    ) -> Result<bool, InstallError> {
        self.write_new(rel, content, mode, true)
    }

    fn write_new(
        &self,
        rel: &Rel,
        content: &[u8],
        mode: u32,
        once: bool,
    ) -> Result<bool, InstallError> {
        if self.pretending() {
            if once && self.kind(rel).is_some() {
                return Ok(false);
            }
            return Ok(self.pretend_that(rel, Virtual::File(content.to_vec(), mode & 0o777)));
        }
        let fail = |e: io::Error| InstallError(format!("cannot write {}: {e}", self.display(rel)));
        let (parts, name) = rel.split();
        let dir = self
            .dir(&parts, true)
            .map_err(fail)?
            .ok_or_else(|| fail(io::Error::from(io::ErrorKind::NotFound)))?;
        let (tmp, fd) = loop {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).map_err(|e| fail(io::Error::other(e.to_string())))?;
            let tmp = format!(".{name}.backstop-tmp-{}", hex::encode(random));
            match rustix::fs::openat(
                &dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(fail(errno(e))),
            }
        };
        let write = || -> io::Result<bool> {
            hand_over(&dir, &fd)?;
            // Never a set-id or sticky bit, whatever mode the tree's file had.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(errno)?;
            let mut file = std::fs::File::from(fd.try_clone()?);
            file.write_all(content)?;
            file.sync_all()?;
            if once {
                match rustix::fs::renameat_with(
                    &dir,
                    tmp.as_str(),
                    &dir,
                    name,
                    RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
                        return Ok(false);
                    }
                    Err(e) => return Err(errno(e)),
                }
            } else {
                rustix::fs::renameat(&dir, tmp.as_str(), &dir, name).map_err(errno)?;
            }
            rustix::fs::fsync(&dir).map_err(errno)?;
            Ok(true)
        };
        write().map_err(|e| {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            fail(e)
        })
    }

    /// Moves the entry at `from` (whatever it is; a link stays a link) to `to`, which must not
    /// exist; the directories above `to` are made.
    pub(crate) fn rename_new(&self, from: &Rel, to: &Rel) -> Result<(), InstallError> {
        let fail = |e: io::Error| {
            InstallError(format!(
                "cannot move {} to {}: {e}",
                self.display(from),
                self.display(to)
            ))
        };
        if self.pretending() {
            if self.kind(to).is_some() {
                return Err(fail(io::Error::from(io::ErrorKind::AlreadyExists)));
            }
            let moved = match self.seen(from) {
                Seen::Gone => return Err(fail(io::Error::from(io::ErrorKind::NotFound))),
                Seen::Real(r) if self.real_kind(&r).is_none() => {
                    return Err(fail(io::Error::from(io::ErrorKind::NotFound)));
                }
                Seen::Real(r) => Virtual::Moved(r),
                Seen::File(c, m) => Virtual::File(c, m),
            };
            self.pretend_that(to, moved);
            self.pretend_that(from, Virtual::Gone);
            return Ok(());
        }
        let (from_parts, from_name) = from.split();
        let (to_parts, to_name) = to.split();
        let from_dir = self
            .dir(&from_parts, false)
            .map_err(fail)?
            .ok_or_else(|| fail(io::Error::from(io::ErrorKind::NotFound)))?;
        let to_dir = self
            .dir(&to_parts, true)
            .map_err(fail)?
            .ok_or_else(|| fail(io::Error::from(io::ErrorKind::NotFound)))?;
        rustix::fs::renameat_with(
            &from_dir,
            from_name,
            &to_dir,
            to_name,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| fail(errno(e)))
    }

    /// Removes the entry `rel` (not a directory).
    pub(crate) fn remove_file(&self, rel: &Rel) -> Result<(), InstallError> {
        if self.pretend_that(rel, Virtual::Gone) {
            return Ok(());
        }
        let fail = |e: io::Error| InstallError(format!("cannot remove {}: {e}", self.display(rel)));
        let (parts, name) = rel.split();
        match self.dir(&parts, false).map_err(fail)? {
            Some(dir) => {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| fail(errno(e)))
            }
            None => Ok(()),
        }
    }

    /// Removes the directory `rel` if it is empty.
    pub(crate) fn remove_dir(&self, rel: &Rel) {
        if self.pretending() {
            return;
        }
        let (parts, name) = rel.split();
        if let Ok(Some(parent)) = self.dir(&parts, false) {
            let _ = rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR);
        }
    }

    /// Removes the directory `rel` and the directories below it that are empty, never a file
    /// and never through a link.
    pub(crate) fn remove_empty_dirs(&self, rel: &Rel) {
        if self.pretending() {
            return;
        }
        let (parts, name) = rel.split();
        let Ok(Some(parent)) = self.dir(&parts, false) else {
            return;
        };
        remove_empty_below(&parent, name, 0);
    }
}

fn remove_empty_below(parent: &OwnedFd, name: &str, depth: usize) {
    if depth > 32 {
        return;
    }
    if let Ok(dir) = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        let mut subdirs = Vec::new();
        if let Ok(mut entries) = rustix::fs::Dir::read_from(dir.as_fd()) {
            while let Some(Ok(entry)) = entries.next() {
                let n = entry.file_name().to_bytes();
                if n != b"." && n != b".." && entry.file_type() == FileType::Directory {
                    subdirs.push(String::from_utf8_lossy(n).into_owned());
                }
            }
        }
        for sub in subdirs {
            remove_empty_below(&dir, &sub, depth + 1);
        }
    }
    let _ = rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR);
}

/// Pushes the components of `path` onto `todo` so that the first is popped first.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_from_a_table() {
        for good in ["a", "datastore/backstop/rm", "tm/qcow2/prebackup", "a..b/c"] {
            assert!(Rel::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "./a",
            "..",
            "a\0b",
        ] {
            assert!(Rel::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_link_in_the_tree_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("victim"), b"keep").expect("write");
        let root = dir.path().join("tree");
        std::fs::create_dir(&root).expect("mkdir");
        std::os::unix::fs::symlink(outside.join("victim"), root.join("file")).expect("link");
        std::os::unix::fs::symlink(&outside, root.join("sub")).expect("link");
        let tree = Tree::open(&root, Open::Existing).expect("open");
        let file = Rel::parse("file").expect("rel");
        assert_eq!(tree.kind(&file), Some(Kind::Link));
        assert!(tree.read(&file, 100).is_err());
        // Writing replaces the link itself; the file it named is untouched.
        assert!(tree.write_if_changed(&file, b"new", 0o644).expect("write"));
        assert_eq!(
            std::fs::read(outside.join("victim")).expect("read"),
            b"keep"
        );
        assert_eq!(std::fs::read(root.join("file")).expect("read"), b"new");
        // A linked directory is not entered, for writing, reading or removing.
        let through = Rel::parse("sub/victim").expect("rel");
        assert!(tree.write_if_changed(&through, b"x", 0o644).is_err());
        assert!(tree.read(&through, 100).is_err());
        assert!(tree.remove_file(&through).is_err());
        assert_eq!(
            std::fs::read(outside.join("victim")).expect("read"),
            b"keep"
        );
        // write_once never replaces.
        assert!(!tree.write_once(&file, b"other", 0o600).expect("once"));
        assert_eq!(std::fs::read(root.join("file")).expect("read"), b"new");
    }

    #[test]
    fn a_pretending_tree_answers_from_its_changes_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("d")).expect("mkdir");
        std::fs::write(root.join("d/stock"), b"stock").expect("write");
        std::fs::set_permissions(
            root.join("d/stock"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("elsewhere", root.join("d/link")).expect("link");
        let tree = Tree::open(&root, Open::Pretend).expect("open");
        let at = |p: &str| Rel::parse(p).expect("rel");
        // Moved aside: gone from where it was, found (a link stays a link) where it went.
        tree.rename_new(&at("d/stock"), &at("kept/d/stock"))
            .expect("move");
        tree.rename_new(&at("d/link"), &at("kept/d/link"))
            .expect("move");
        assert_eq!(tree.kind(&at("d/stock")), None);
        assert_eq!(
            tree.read(&at("kept/d/stock"), 100).expect("read"),
            Some((b"stock".to_vec(), 0o644))
        );
        assert_eq!(tree.kind(&at("kept/d/link")), Some(Kind::Link));
        assert_eq!(
            tree.link_target(&at("kept/d/link")),
            Some(PathBuf::from("elsewhere"))
        );
        // Moving onto something that is there is refused, as on disk.
        assert!(
            tree.rename_new(&at("kept/d/stock"), &at("kept/d/link"))
                .is_err()
        );
        // Written, then the same again: the second write changes nothing.
        assert!(
            tree.write_if_changed(&at("d/stock"), b"shim", 0o755)
                .expect("write")
        );
        assert!(
            !tree
                .write_if_changed(&at("d/stock"), b"shim", 0o755)
                .expect("write")
        );
        assert!(
            !tree
                .write_once(&at("d/stock"), b"other", 0o600)
                .expect("once")
        );
        tree.remove_file(&at("kept/d/stock")).expect("remove");
        assert_eq!(tree.kind(&at("kept/d/stock")), None);
        // On disk, nothing moved.
        assert_eq!(std::fs::read(root.join("d/stock")).expect("read"), b"stock");
        assert!(std::fs::symlink_metadata(root.join("d/link")).is_ok());
        assert!(!root.join("kept").exists());
        // A tree that does not exist is an empty one, and stays missing.
        let none = Tree::open(&dir.path().join("missing/tree"), Open::Pretend).expect("open");
        assert_eq!(none.kind(&at("d/stock")), None);
        assert!(
            none.write_if_changed(&at("a/b"), b"x", 0o644)
                .expect("write")
        );
        assert_eq!(none.kind(&at("a/b")), Some(Kind::File));
        assert!(!dir.path().join("missing").exists());
    }
}
