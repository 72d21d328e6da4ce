//! Ceph RBD images as backup sources, read through librbd (qemu's rbd driver behind a
//! qemu-nbd export; this kernel has neither krbd nor rbd-nbd, and a mapped device would need
//! root on the host anyway), and their changed extents from `rbd diff`.
//!
//! - A snapshot is read as it was taken: the export names `pool/image@snapshot`, through a
//!   JSON spec (never a `rbd:` string, whose `:` and `@` parsing a hostile name could bend).
//! - An increment reads only what `rbd diff --from-snap <parent> <image>@<snapshot>` lists;
//!   extents reported as no longer existing (discarded, trimmed) read back as zeros and are
//!   stored as such.
//! - Holes are known from the export's allocation map (librbd reports it, fast-diff or not),
//!   so unallocated parts of a thin image are never read.

use crate::image::Extent;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where an RBD image is and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdImage {
    pub pool: String,
    pub image: String,
    /// The snapshot to read; the live image when `None`.
    pub snapshot: Option<String>,
    /// The cluster's configuration (CEPH_CONF); librbd's default when `None`.
    pub conf: Option<PathBuf>,
    /// The cephx user without `client.` (CEPH_USER); `admin` when `None`.
    pub user: Option<String>,
    /// A file holding the user's key (CEPH_KEY, rbd's `--keyfile`); the configuration's
    /// keyring when `None`.
    pub keyfile: Option<PathBuf>,
}

/// A name librbd and the rbd CLI both take literally: no `/`, `@` or `:` (which the CLI's
/// `pool/image@snap` spelling would split on), no control characters, not empty, not `-`.
fn plain(what: &str, name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.starts_with('-')
        || name.len() > 512
        || name
            .chars()
            .any(|c| c == '/' || c == '@' || c == ':' || c.is_control() || c.is_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the RBD {what} name {name:?} is not a plain name"),
        ));
    }
    Ok(())
}

/// Whether `path` may be handed to librados as a file of the cluster's (a configuration or a
/// key file): absolute, and without blanks or control characters. librados splits
/// `CEPH_ARGS` on whitespace, so a blank in a path put there would start an option of the
/// writer's choosing (another monitor, a log file written as oneadmin).
pub fn cluster_path(path: &Path) -> bool {
    // Component-wise `.` and `..` (Path::components drops a `.` in the middle).
    let plain = path
        .to_str()
        .is_some_and(|p| p.split('/').all(|c| c != "." && c != ".."));
    plain
        && path.to_str().is_some_and(|p| {
            p.starts_with('/')
                && p.len() <= 4096
                && !p.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

/// Whether `path` (absolute) is a regular file that only root can have put there and only root
/// can change: every directory on the way root's and not writable by others (a sticky
/// directory such as /tmp is fine, as no one else can replace root's entries in it), no link
/// on the way, the file itself root's and not writable by others. A VM owner who may set
/// CEPH_CONF or CEPH_KEY (where the datastore does not) can then only choose among root's
/// files, never one they or a guest wrote.
fn root_owned_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} {why}", path.display()),
        ))
    };
    let mut at = PathBuf::from("/");
    let parts: Vec<_> = path.components().skip(1).collect();
    for (k, part) in parts.iter().enumerate() {
        at.push(part);
        let last = k + 1 == parts.len();
        let m = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) => return refuse(&format!("cannot be read: {e}")),
        };
        if m.file_type().is_symlink() {
            return refuse("has a symbolic link on the way; name the file itself");
        }
        if m.uid() != 0 {
            return refuse(&format!(
                "is not root's ({} belongs to uid {})",
                at.display(),
                m.uid()
            ));
        }
        let writable_by_others = m.mode() & 0o022 != 0;
        let sticky = m.mode() & 0o1000 != 0;
        if last {
            if !m.file_type().is_file() {
                return refuse("is not a regular file");
            }
            if writable_by_others {
                return refuse("is writable by others than root");
            }
        } else if writable_by_others && !sticky {
            return refuse(&format!(
                "lies in {}, which others than root can change",
                at.display()
            ));
        }
    }
    Ok(())
}

/// Whether `text` is what rbd's `--keyfile` takes: one base64 key on one line.
fn is_bare_key(text: &[u8]) -> bool {
    let t = text.trim_ascii();
    !t.is_empty()
        && t.len() <= 1024
        && t.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// The cluster files of an image, checked on the host that runs the tools: each a file only
/// root can have written ([`root_owned_file`]), the key file one bare key (a file of another
/// kind would be echoed by librados in its error, to whoever reads it).
pub fn check_cluster_files(conf: Option<&Path>, keyfile: Option<&Path>) -> io::Result<()> {
    if let Some(conf) = conf {
        root_owned_file(conf)
            .map_err(|e| io::Error::new(e.kind(), format!("the Ceph configuration file {e}")))?;
    }
    if let Some(key) = keyfile {
        root_owned_file(key)
            .map_err(|e| io::Error::new(e.kind(), format!("the Ceph key file {e}")))?;
        let mut head = Vec::new();
        std::fs::File::open(key)
            .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 4096), &mut head))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("the Ceph key file {} cannot be read: {e}", key.display()),
                )
            })?;
        if !is_bare_key(&head) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the Ceph key file {} does not hold one bare key (rbd --keyfile takes only that)",
                    key.display()
                ),
            ));
        }
    }
    Ok(())
}

impl RbdImage {
    /// [`RbdImage::check`], and on the host that runs the tools, the cluster files
    /// ([`check_cluster_files`]). each a
    /// file only root can have written ([`root_owned_file`]), the key file one bare key (a
    /// file of another kind would be echoed by librados in its error, to whoever reads it).
    pub fn check_on_host(&self) -> io::Result<()> {
        self.check()?;
        check_cluster_files(self.conf.as_deref(), self.keyfile.as_deref())
    }

    /// Checks every name and path before anything is run with it.
    pub fn check(&self) -> io::Result<()> {
        for (what, path) in [("configuration", &self.conf), ("key", &self.keyfile)] {
            if let Some(p) = path.as_deref().filter(|p| !cluster_path(p)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the Ceph {what} file {:?} is not an absolute path without blanks or control characters",
                        p.display().to_string()
                    ),
                ));
            }
        }
        plain("pool", &self.pool)?;
        plain("image", &self.image)?;
        if let Some(s) = &self.snapshot {
            plain("snapshot", s)?;
        }
        if let Some(u) = &self.user {
            plain("user", u)?;
        }
        Ok(())
    }

    /// `pool/image[@snapshot]` as the rbd CLI writes it.
    pub fn spec(&self) -> String {
        match &self.snapshot {
            Some(s) => format!("{}/{}@{s}", self.pool, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }

    /// The same image at another snapshot.
    pub fn at(&self, snapshot: &str) -> RbdImage {
        RbdImage {
            snapshot: Some(snapshot.to_string()),
            ..self.clone()
        }
    }

    /// qemu's block spec: the raw format over the rbd protocol driver, every field named;
    /// read-only.
    pub fn json_spec(&self) -> String {
        self.json_spec_with(true)
    }

    /// The same spec, writable (a restore's target: the image, never a snapshot).
    pub fn json_target(&self) -> String {
        self.json_spec_with(false)
    }

    fn json_spec_with(&self, read_only: bool) -> String {
        let mut file = serde_json::json!({
            "driver": "rbd",
            "pool": self.pool,
            "image": self.image,
        });
        if let Some(s) = self.snapshot.as_ref().filter(|_| read_only) {
            file["snapshot"] = s.clone().into();
        }
        if let Some(c) = &self.conf {
            file["conf"] = c.display().to_string().into();
        }
        if let Some(u) = &self.user {
            file["user"] = u.clone().into();
        }
        format!(
            "json:{}",
            serde_json::json!({"driver": "raw", "read-only": read_only, "file": file})
        )
    }

    /// What librbd inside another process (qemu-nbd) needs beyond the JSON spec: the key
    /// file, through `CEPH_ARGS`, which librados reads.
    pub fn ceph_args(&self) -> Option<String> {
        self.keyfile
            .as_ref()
            .map(|k| format!("--keyfile {}", k.display()))
    }

    /// The rbd CLI with this image's cluster options.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("rbd");
        if let Some(c) = &self.conf {
            cmd.arg("--conf").arg(c);
        }
        if let Some(u) = &self.user {
            cmd.arg("--id").arg(u);
        }
        if let Some(k) = &self.keyfile {
            cmd.arg("--keyfile").arg(k);
        }
        cmd
    }

    /// The extents that differ between snapshot `from` and this image (at its snapshot), as
    /// `rbd diff` reports them.
    pub fn diff_from(&self, from: &str) -> io::Result<Vec<Extent>> {
        self.check_on_host()?;
        plain("snapshot", from)?;
        let out = self
            .command()
            .args(["diff", "--format", "json", "--from-snap", from, "--"])
            .arg(self.spec())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run rbd: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "rbd diff --from-snap {from} {}: {}",
                self.spec(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        parse_diff(&String::from_utf8_lossy(&out.stdout))
    }
}

/// A snapshot of an image, as `rbd snap ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSnapshot {
    pub name: String,
    pub protected: bool,
}

impl RbdImage {
    /// Runs `rbd <args> <this image's spec>`; its stdout, or one line naming what failed.
    fn run(&self, args: &[&str], spec: &str) -> io::Result<String> {
        self.check_on_host()?;
        let out = self
            .command()
            .args(args)
            .arg("--")
            .arg(spec)
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run rbd: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "rbd {} {spec}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("failed")
                    .trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn image_spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }

    /// The image's snapshots.
    pub fn snapshots(&self) -> io::Result<Vec<RbdSnapshot>> {
        let text = self.run(&["snap", "ls", "--format", "json"], &self.image_spec())?;
        parse_snapshots(&text)
    }

    /// Takes snapshot `name` of the image (now).
    pub fn snap_create(&self, name: &str) -> io::Result<()> {
        plain("snapshot", name)?;
        self.run(
            &["snap", "create"],
            &format!("{}@{name}", self.image_spec()),
        )
        .map(drop)
    }

    /// Protects snapshot `name` (it cannot be removed until unprotected, as the stock driver
    /// keeps the parent of the next increment).
    pub fn snap_protect(&self, name: &str) -> io::Result<()> {
        plain("snapshot", name)?;
        self.run(
            &["snap", "protect"],
            &format!("{}@{name}", self.image_spec()),
        )
        .map(drop)
    }

    /// Removes snapshot `name`, unprotecting it first when it is protected.
    pub fn snap_remove(&self, snapshot: &RbdSnapshot) -> io::Result<()> {
        plain("snapshot", &snapshot.name)?;
        let spec = format!("{}@{}", self.image_spec(), snapshot.name);
        if snapshot.protected {
            self.run(&["snap", "unprotect"], &spec)?;
        }
        self.run(&["snap", "rm", "--no-progress"], &spec).map(drop)
    }
}

/// `rbd snap ls --format json`: `[{"id":4,"name":"...","size":N,"protected":"true",...}]`
/// (`protected` is a string in the releases seen, a boolean is taken too).
pub fn parse_snapshots(text: &str) -> io::Result<Vec<RbdSnapshot>> {
    let list: Vec<serde_json::Value> = serde_json::from_str(text.trim()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("rbd snap ls printed something that is not its JSON list: {e}"),
        )
    })?;
    Ok(list
        .iter()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            let protected = match s.get("protected") {
                Some(serde_json::Value::Bool(b)) => *b,
                Some(serde_json::Value::String(t)) => t == "true",
                _ => false,
            };
            Some(RbdSnapshot { name, protected })
        })
        .collect())
}

/// `rbd diff --format json`: `[{"offset":N,"length":N,"exists":"true"|"false"}, ...]`
/// (`exists` is a string). Every listed extent changed; sorted and merged where they touch.
pub fn parse_diff(text: &str) -> io::Result<Vec<Extent>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        offset: u64,
        length: u64,
    }
    let entries: Vec<Entry> = serde_json::from_str(text.trim()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("rbd diff printed something that is not its JSON list: {e}"),
        )
    })?;
    let mut extents: Vec<Extent> = Vec::with_capacity(entries.len());
    for e in entries {
        let end = e.offset.checked_add(e.length).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "rbd diff: an extent past 2^64")
        })?;
        if e.length == 0 {
            continue;
        }
        extents.push(Extent {
            offset: e.offset,
            length: end - e.offset,
        });
    }
    extents.sort_by_key(|e| e.offset);
    let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match merged.last_mut() {
            Some(last) if last.offset + last.length >= e.offset => {
                let end = (last.offset + last.length).max(e.offset + e.length);
                last.length = end - last.offset;
            }
            _ => merged.push(e),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_files_must_be_roots_and_keys_bare() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "AQBbZ2dlAAAAABAAr4Sz0uLxwqXe3j6ZxP7mNA==\n").expect("key");
        let image = |k: &Path| RbdImage {
            pool: "one".into(),
            image: "one-5".into(),
            snapshot: None,
            conf: None,
            user: None,
            keyfile: Some(k.to_path_buf()),
        };
        let is_root = rustix::process::geteuid().as_raw() == 0;
        if is_root {
            image(&key).check_on_host().expect("root's bare key");
        }
        // Not a bare key: refused without a word of its content.
        let keyring = dir.path().join("keyring");
        std::fs::write(&keyring, "[client.admin]\n\tkey = SECRETSECRET\n").expect("keyring");
        let e = image(&keyring)
            .check_on_host()
            .expect_err("a keyring")
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
        // Writable by others, through a link, or someone else's: refused.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = image(&key)
            .check_on_host()
            .expect_err("writable")
            .to_string();
        assert!(e.contains("writable by others"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&key, &link).expect("link");
        let e = image(&link)
            .check_on_host()
            .expect_err("a link")
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        if is_root {
            std::os::unix::fs::chown(&key, Some(4242), None).expect("chown");
            let e = image(&key)
                .check_on_host()
                .expect_err("not root's")
                .to_string();
            assert!(e.contains("belongs to uid 4242"), "{e}");
        }
        assert!(!cluster_path(Path::new(
            "/etc/ceph/../../var/lib/one/.one/one_auth"
        )));
        assert!(!cluster_path(Path::new("/etc/ceph/./k")));
        assert!(cluster_path(Path::new("/etc/ceph/ceph.client.libvirt.key")));
    }

    #[test]
    fn reads_rbd_diff_json() {
        let text = r#"[{"offset":4194304,"length":1048576,"exists":"true"},
            {"offset":0,"length":4096,"exists":"false"},
            {"offset":5242880,"length":4096,"exists":"true"}]"#;
        assert_eq!(
            parse_diff(text).expect("diff"),
            vec![
                Extent {
                    offset: 0,
                    length: 4096
                },
                Extent {
                    offset: 4194304,
                    length: 1048576 + 4096
                }
            ]
        );
        assert!(parse_diff("[]").expect("empty").is_empty());
        assert!(parse_diff("not json").is_err());
        assert!(parse_diff(r#"[{"offset":18446744073709551615,"length":2}]"#).is_err());
    }

    #[test]
    fn reads_rbd_snap_ls_json() {
        let text = r#"[{"id":4,"name":"one_backup_0","size":67108864,"protected":"true","timestamp":"x"},
                       {"id":5,"name":"mine","size":1,"protected":false}]"#;
        assert_eq!(
            parse_snapshots(text).expect("ls"),
            vec![
                RbdSnapshot {
                    name: "one_backup_0".into(),
                    protected: true
                },
                RbdSnapshot {
                    name: "mine".into(),
                    protected: false
                }
            ]
        );
        assert!(parse_snapshots("{").is_err());
    }

    #[test]
    fn names_are_checked_and_specs_built_field_by_field() {
        let img = RbdImage {
            pool: "one".into(),
            image: "one-5-22-0".into(),
            snapshot: Some("one_backup_3".into()),
            conf: Some("/etc/ceph/ceph.conf".into()),
            user: Some("oneadmin".into()),
            keyfile: None,
        };
        img.check().expect("plain names");
        assert_eq!(img.spec(), "one/one-5-22-0@one_backup_3");
        let spec: serde_json::Value =
            serde_json::from_str(img.json_spec().strip_prefix("json:").expect("json:"))
                .expect("json");
        assert_eq!(spec["file"]["snapshot"], "one_backup_3");
        assert_eq!(spec["file"]["driver"], "rbd");
        assert_eq!(spec["driver"], "raw");
        for bad in ["a/b", "a@b", "x:conf=/etc/passwd", "", "-rf", "a b"] {
            let mut i = img.clone();
            i.image = bad.into();
            assert!(i.check().is_err(), "{bad:?}");
        }
    }
}
