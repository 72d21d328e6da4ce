//! The TPM state a backup carries, unpacked for the in-place restore.
//!
//! prebackup writes it as `tar czf disk.tpm.0 -C <vm_dir> tpm` ([`crate::host`]): a directory
//! `tpm` with swtpm's state files under it. What comes back is a repository's file, and
//! whoever can write the repository (a PULL sync job's source, a compromised backup server,
//! anyone with its password) chose every member's name and type. `tar xzf` into the VM's
//! directory would follow them: an absolute name or `..` writes outside it, a symbolic link
//! followed by a file of the same name writes through it, a hard link makes any file oneadmin
//! can reach part of the VM's TPM state, a device or FIFO is created on the host.
//!
//! So the archive is read here, member by member, into a fresh directory that stands for
//! `tpm` (the caller swaps it in once the rest of the restore is ready):
//!
//! - a member is a directory or a regular file named `tpm` or `tpm/<name>/...`, each name a
//!   plain one (no `..`, no empty name, no absolute path; `.` is skipped); anything else
//!   refuses the whole archive, in one line naming the member, and removes the directory;
//! - files are created new (never through an existing name: only this code writes in the
//!   fresh directory, and it makes nothing but directories and regular files);
//! - permission bits are kept as the archive has them without setuid, setgid, sticky or a
//!   write bit for group and others (what `tar` does under the usual umask 022), and the owner
//!   can always read and write what is restored (and remove it at the next restore);
//! - at most [`MAX_MEMBERS`] members and [`MAX_BYTES`] bytes of files: swtpm's state is a few
//!   KiB, and a small archive must not fill the host's disk.
//!
//! The in-place restore runs `backstop` on the host for this (the binary every host step
//! uses), so no `tar` is run on the archive at all.

use crate::{Error, ErrorKind};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The most members an archive may have.
pub const MAX_MEMBERS: usize = 4096;
/// The most bytes its files may hold together.
pub const MAX_BYTES: u64 = 64 << 20;

/// What was unpacked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub directories: usize,
    pub bytes: u64,
}

/// Unpacks `archive` into `into`, which must not exist (its parent must), as the `tpm`
/// directory. On any error `into` is removed again.
pub fn unpack(archive: &Path, into: &Path) -> Result<Unpacked, Error> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(into)
        .map_err(|e| Error::io(format!("cannot create {}", into.display()), e))?;
    let result = unpack_into(archive, into);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(into);
    }
    result
}

fn refuse(archive: &Path, message: String) -> Error {
    Error::new(
        ErrorKind::Input,
        format!("the TPM archive {}: {message}", archive.display()),
    )
}

/// Where a member goes under the directory standing for `tpm`: the relative path, empty for
/// `tpm` itself. None for a name outside `tpm/` or one that is not plain.
fn destination(name: &[u8]) -> Option<PathBuf> {
    let name = std::str::from_utf8(name).ok()?;
    let mut parts = name.split('/').filter(|p| *p != ".");
    if parts.next()? != "tpm" {
        return None;
    }
    let mut rel = PathBuf::new();
    let rest: Vec<&str> = parts.collect();
    // A directory's name ends in '/': one empty part at the end only.
    let rest = match rest.split_last() {
        Some((&"", before)) => before,
        _ => &rest[..],
    };
    for part in rest {
        if part.is_empty() || *part == ".." || part.contains('\0') {
            return None;
        }
        rel.push(part);
    }
    Some(rel)
}

fn unpack_into(archive: &Path, into: &Path) -> Result<Unpacked, Error> {
    let file = std::fs::File::open(archive)
        .map_err(|e| Error::io(format!("cannot open {}", archive.display()), e))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut tar = tar::Archive::new(gz);
    let bad = |m: String| refuse(archive, m);
    let unreadable = |e: std::io::Error| bad(format!("cannot be read: {e}"));
    let mut done = Unpacked::default();
    // Directory modes are set last, deepest first, so a read-only one does not stop the
    // files that go into it.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut members = 0usize;
    for entry in tar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        members += 1;
        if members > MAX_MEMBERS {
            return Err(bad(format!("it has more than {MAX_MEMBERS} members")));
        }
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Settings for the members after it (this reader applies none): no file.
            continue;
        }
        let Some(rel) = destination(&raw_name) else {
            return Err(bad(format!(
                "member {shown:?} is not under tpm/ with plain names; nothing is restored"
            )));
        };
        let target = into.join(&rel);
        let mode = entry.header().mode().map_err(unreadable)?;
        if kind.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&target)
                .map_err(|e| Error::io(format!("cannot create {}", target.display()), e))?;
            dir_modes.push((target, (mode & 0o755) | 0o700));
            done.directories += 1;
            continue;
        }
        if rel.as_os_str().is_empty() {
            return Err(bad(format!(
                "member {shown:?} is {}, not the directory tpm; nothing is restored",
                describe(kind)
            )));
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(bad(format!(
                "member {shown:?} is {}, not a regular file or a directory; nothing is restored",
                describe(kind)
            )));
        }
        let size = entry.header().size().map_err(unreadable)?;
        if size > MAX_BYTES - done.bytes {
            return Err(bad(format!(
                "its files hold more than {MAX_BYTES} bytes (member {shown:?}); nothing is restored"
            )));
        }
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        // O_CREAT|O_EXCL: never through an existing name, a link included.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => bad(format!(
                    "member {shown:?} appears twice; nothing is restored"
                )),
                _ => Error::io(format!("cannot create {}", target.display()), e),
            })?;
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(unreadable)?;
        if copied != size {
            return Err(bad(format!("member {shown:?} ends early")));
        }
        out.set_permissions(std::fs::Permissions::from_mode((mode & 0o755) | 0o600))
            .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
        out.sync_all()
            .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
        done.files += 1;
        done.bytes += size;
    }
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (dir, mode) in dir_modes {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("cannot set the mode of {}", dir.display()), e))?;
    }
    Ok(done)
}

fn describe(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Fifo => "a FIFO",
        tar::EntryType::GNUSparse => "a sparse file",
        tar::EntryType::Regular | tar::EntryType::Continuous => "a regular file",
        _ => "of another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_tpm_only() {
        for (name, want) in [
            ("tpm", Some("")),
            ("tpm/", Some("")),
            ("./tpm/tpm2/", Some("tpm2")),
            ("tpm/tpm2/tpm2-00.permall", Some("tpm2/tpm2-00.permall")),
            ("tpm/./a", Some("a")),
            ("/tpm/a", None),
            ("/etc/passwd", None),
            ("tpm/../disk.0", None),
            ("tpm/a/../../x", None),
            ("tpm//a", None),
            ("other/a", None),
            ("tpmx/a", None),
            ("", None),
            ("..", None),
        ] {
            assert_eq!(
                destination(name.as_bytes()),
                want.map(PathBuf::from),
                "{name:?}"
            );
        }
        assert_eq!(destination(b"tpm/\xff"), None);
    }
}

#[cfg(test)]
mod archive_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A member as a hostile writer makes it: any name, any type, written into the header
    /// as is (the tar crate's own checks are for honest writers).
    struct Member<'a> {
        name: &'a [u8],
        kind: tar::EntryType,
        link: &'a [u8],
        data: &'a [u8],
        mode: u32,
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Member<'a> {
        Member {
            name: name.as_bytes(),
            kind: tar::EntryType::Regular,
            link: b"",
            data,
            mode: 0o644,
        }
    }

    fn dir(name: &str) -> Member<'_> {
        Member {
            name: name.as_bytes(),
            kind: tar::EntryType::Directory,
            link: b"",
            data: b"",
            mode: 0o755,
        }
    }

    fn archive(path: &Path, members: &[Member<'_>]) {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(path).expect("create"),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        for m in members {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..m.name.len()].copy_from_slice(m.name);
            h.as_old_mut().linkname[..m.link.len()].copy_from_slice(m.link);
            h.set_entry_type(m.kind);
            h.set_size(m.data.len() as u64);
            h.set_mode(m.mode);
            h.set_cksum();
            b.append(&h, m.data).expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz");
    }

    #[test]
    fn the_state_unpacks_under_its_own_names() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = d.path().join("disk.tpm.backup");
        archive(
            &a,
            &[
                dir("tpm/"),
                dir("tpm/tpm2/"),
                file("tpm/tpm2/tpm2-00.permall", b"state"),
                Member {
                    mode: 0o4777,
                    ..file("tpm/tpm2/.lock", b"")
                },
            ],
        );
        let into = d.path().join("tpm.restored");
        let done = unpack(&a, &into).expect("unpack");
        assert_eq!(
            done,
            Unpacked {
                files: 2,
                directories: 2,
                bytes: 5
            }
        );
        assert_eq!(
            std::fs::read(into.join("tpm2/tpm2-00.permall")).expect("state"),
            b"state"
        );
        // No setuid, no write for group and others.
        let mode = std::fs::metadata(into.join("tpm2/.lock"))
            .expect("lock")
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755);
        let mode = std::fs::metadata(&into).expect("dir").mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn anything_else_refuses_the_whole_archive() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = d.path().join("outside");
        let o = outside.to_str().expect("utf-8").to_string();
        let cases: Vec<(Vec<Member<'_>>, String)> = vec![
            (
                vec![dir("tpm/"), file(&o[1..], b"x")],
                format!("member {:?} is not under tpm/ with plain names", &o[1..]),
            ),
            (
                vec![Member {
                    name: o.as_bytes(),
                    ..file("", b"x")
                }],
                format!("member {o:?} is not under tpm/ with plain names"),
            ),
            (
                vec![dir("tpm/"), file("tpm/../outside", b"x")],
                "member \"tpm/../outside\" is not under tpm/ with plain names".into(),
            ),
            (
                vec![
                    dir("tpm/"),
                    Member {
                        kind: tar::EntryType::Symlink,
                        link: o.as_bytes(),
                        ..file("tpm/tpm2-00.permall", b"")
                    },
                ],
                "member \"tpm/tpm2-00.permall\" is a symbolic link, not a regular file or a directory".into(),
            ),
            (
                vec![
                    dir("tpm/"),
                    Member {
                        kind: tar::EntryType::Link,
                        link: o.as_bytes(),
                        ..file("tpm/tpm2-00.permall", b"")
                    },
                ],
                "member \"tpm/tpm2-00.permall\" is a hard link".into(),
            ),
            (
                vec![
                    dir("tpm/"),
                    Member {
                        kind: tar::EntryType::Fifo,
                        ..file("tpm/fifo", b"")
                    },
                ],
                "member \"tpm/fifo\" is a FIFO".into(),
            ),
            (
                vec![
                    dir("tpm/"),
                    Member {
                        kind: tar::EntryType::Char,
                        ..file("tpm/null", b"")
                    },
                ],
                "member \"tpm/null\" is a character device".into(),
            ),
            (
                vec![dir("tpm/"), file("tpm/a", b"1"), file("tpm/a", b"2")],
                "member \"tpm/a\" appears twice".into(),
            ),
            (vec![file("tpm", b"x")], "member \"tpm\" is a regular file, not the directory tpm".into()),
        ];
        std::fs::write(&outside, b"untouched").expect("outside");
        for (members, want) in cases {
            let a = d.path().join("disk.tpm.backup");
            archive(&a, &members);
            let into = d.path().join("tpm.restored");
            let e = unpack(&a, &into).expect_err(&want);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("the TPM archive {}: ", a.display()))
                    && text.contains(&want)
                    && !text.contains('\n'),
                "{text} (wanted {want})"
            );
            assert!(!into.exists(), "{want}: the directory was left");
            assert_eq!(std::fs::read(&outside).expect("outside"), b"untouched");
        }
    }

    #[test]
    fn a_large_state_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = d.path().join("disk.tpm.backup");
        let big = vec![0u8; (MAX_BYTES / 2 + 1) as usize];
        archive(&a, &[dir("tpm/"), file("tpm/a", &big), file("tpm/b", &big)]);
        let e = unpack(&a, &d.path().join("t")).expect_err("too large");
        assert!(
            e.to_string()
                .contains("its files hold more than 67108864 bytes (member \"tpm/b\")"),
            "{e}"
        );
    }
}
