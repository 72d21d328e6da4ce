//! The SFTP backend, on libssh2 (the ssh2 crate): restic's layout on a remote file system.
//!
//! - **Where**: `sftp:[user@]host:/path` as restic writes it. `host` may be an alias of the
//!   operator's `~/.ssh/config`, whose HostName, Port, User, IdentityFile and
//!   UserKnownHostsFile are honoured ([`super::sshconfig`]).
//! - **Host keys** are verified: against a pinned SHA256 fingerprint when one is given, else
//!   against OpenSSH known_hosts files (hashed entries too). An unknown or changed key is
//!   refused with the host's name and the key's fingerprint.
//! - **Authentication**: ssh-agent, then the configured or default identity files.
//! - **Connections**: a pool of `connections` sessions; each write goes to
//!   `<name>-restic-temp-<random>` and is renamed into place (files are named by content, so a
//!   rename onto an existing name means the same content is already there).
//! - **Retries**: an operation that fails on the wire reconnects and is retried with backoff.
//! - **Bandwidth**: an optional limit in KiB/s (restic's unit), one token bucket for all
//!   connections.

use crate::RepoId;
use crate::bandwidth::Bandwidth;
use crate::sshconfig::{self, HostConfig};
use crate::{LockEntry, Storage, dir_name, file_path, is_temp_name, max_file_size, too_large};
use base64::Engine;
use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use ssh2::{CheckResult, HashType, KnownHostFileKind, OpenFlags, OpenType, Session, Sftp};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod session;

pub use session::fingerprint;
use session::{Endpoint, connect, resolve};

/// `sftp:[user@]host:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpLocation {
    pub user: Option<String>,
    pub host: String,
    pub path: String,
}

impl SftpLocation {
    pub fn parse(text: &str) -> Result<SftpLocation, crate::Error> {
        let rest = text
            .strip_prefix("sftp:")
            .ok_or_else(|| crate::Error::new(format!("{text:?} is not an sftp: repository")))?;
        let (userhost, path) = rest.split_once(':').ok_or_else(|| {
            crate::Error::new(format!(
                "{text:?} has no path (expected sftp:[user@]host:/path)"
            ))
        })?;
        let (user, host) = match userhost.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h.to_string()),
            None => (None, userhost.to_string()),
        };
        if host.is_empty() || path.is_empty() {
            return Err(crate::Error::new(format!(
                "{text:?} is not sftp:[user@]host:/path"
            )));
        }
        Ok(SftpLocation {
            user,
            host,
            path: path.to_string(),
        })
    }
}

/// How to reach and verify the server.
#[derive(Debug, Clone, Default)]
pub struct SftpOptions {
    /// Sessions in the pool (RESTIC_CONNECTIONS); 5 when 0.
    pub connections: usize,
    /// KiB/s for reads and writes together (RESTIC_BWLIMIT).
    pub bwlimit_kib: Option<u64>,
    /// The OpenSSH client configuration; `~/.ssh/config` when `None`.
    pub ssh_config: Option<PathBuf>,
    /// A pinned host key fingerprint, `SHA256:<base64>` as `ssh-keygen -l` prints it.
    pub host_fingerprint: Option<String>,
}

/// A connection failure, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

struct Conn {
    _session: Session,
    sftp: Sftp,
}

/// A place in the pool: at most `connections` sessions exist, idle or busy.
enum Slot {
    Idle(Conn),
    /// Not connected (yet, or any more).
    Empty,
    /// Checked out by an operation.
    Busy,
}

/// A repository over SFTP.
pub struct SftpBackend {
    endpoint: Endpoint,
    root: PathBuf,
    location: String,
    pool: Mutex<Vec<Slot>>,
    available: Condvar,
    bandwidth: Option<Bandwidth>,
    /// Bytes of repository files read from the server (lock files included).
    read: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SftpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpBackend")
            .field("location", &self.location)
            .finish()
    }
}

const PIECE: usize = 256 * 1024;

fn remote(what: &str, path: &Path, e: impl std::fmt::Display) -> Box<RusticError> {
    RusticError::new(
        ErrorKind::Backend,
        format!("{what} {}: {e}", path.display()),
    )
}

impl SftpBackend {
    /// Connects one session now (so a bad host key or login fails at once); the others as
    /// they are needed.
    pub fn connect(loc: &SftpLocation, options: &SftpOptions) -> Result<SftpBackend, ConnectError> {
        let endpoint = resolve(loc, options);
        let first = connect(&endpoint)?;
        let n = if options.connections == 0 {
            5
        } else {
            options.connections
        };
        let mut pool: Vec<Slot> = (0..n).map(|_| Slot::Empty).collect();
        pool[0] = Slot::Idle(Conn {
            _session: first.0,
            sftp: first.1,
        });
        Ok(SftpBackend {
            location: format!("sftp:{}@{}:{}", endpoint.user, loc.host, loc.path),
            root: PathBuf::from(&loc.path),
            endpoint,
            pool: Mutex::new(pool),
            available: Condvar::new(),
            bandwidth: options.bwlimit_kib.and_then(Bandwidth::kib_per_sec),
            read: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Bytes of repository files read from the server so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The directories right under the root whose name `accept`s and that hold a repository
    /// (a `config` file): a datastore's `<vm_id>` and `job_<bj>` repositories when the root is
    /// its BASE_PATH; none when the root does not exist. Sorted.
    pub fn repositories(&self, accept: &dyn Fn(&str) -> bool) -> Result<Vec<String>, crate::Error> {
        let mut out = Vec::new();
        for (name, st) in self.list_dir_stat(&self.root)? {
            if !st.is_dir() || !accept(&name) {
                continue;
            }
            let config = self.root.join(&name).join("config");
            let there = self.with_conn(|sftp| match sftp.stat(&config) {
                Ok(st) => Ok(st.is_file()),
                Err(e) if e.code() == ssh2::ErrorCode::SFTP(2) => Ok(false),
                Err(e) => Err(classify(e, "cannot read", &config)),
            })?;
            if there {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn connections(&self) -> usize {
        self.pool.lock().map(|p| p.len()).unwrap_or(1)
    }

    fn throttle(&self, bytes: usize) {
        if let Some(b) = &self.bandwidth {
            b.take(bytes);
        }
    }

    /// Runs `op` on a pooled session; on failure reconnects and retries (3 attempts, backoff
    /// 0.5 s, 1 s).
    fn with_conn<T>(&self, op: impl Fn(&Sftp) -> Result<T, Retry>) -> Result<T, crate::Error> {
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << (attempt - 1)));
            }
            let (slot, conn) = self.checkout();
            let conn = match conn {
                Some(c) => c,
                None => match connect(&self.endpoint) {
                    Ok((s, f)) => Conn {
                        _session: s,
                        sftp: f,
                    },
                    Err(e) => {
                        self.checkin(slot, None);
                        last = e.0;
                        continue;
                    }
                },
            };
            match op(&conn.sftp) {
                Ok(v) => {
                    self.checkin(slot, Some(conn));
                    return Ok(v);
                }
                // The server answered: the connection is fine and retrying will not help.
                Err(Retry::No(e)) => {
                    self.checkin(slot, Some(conn));
                    return Err(crate::Error::new(e));
                }
                Err(Retry::Yes(e)) => {
                    self.checkin(slot, None);
                    last = e;
                }
            }
        }
        Err(crate::Error::new(last))
    }

    /// Takes an idle session, or the right to open one in an empty slot; waits while every
    /// slot is busy.
    fn checkout(&self) -> (usize, Option<Conn>) {
        let Ok(mut pool) = self.pool.lock() else {
            return (usize::MAX, None);
        };
        loop {
            if let Some(i) = pool.iter().position(|s| matches!(s, Slot::Idle(_)))
                && let Slot::Idle(c) = std::mem::replace(&mut pool[i], Slot::Busy)
            {
                return (i, Some(c));
            }
            if let Some(i) = pool.iter().position(|s| matches!(s, Slot::Empty)) {
                pool[i] = Slot::Busy;
                return (i, None);
            }
            pool = match self.available.wait(pool) {
                Ok(p) => p,
                Err(_) => return (usize::MAX, None),
            };
        }
    }

    fn checkin(&self, slot: usize, conn: Option<Conn>) {
        if let Ok(mut pool) = self.pool.lock()
            && let Some(s) = pool.get_mut(slot)
        {
            *s = match conn {
                Some(c) => Slot::Idle(c),
                None => Slot::Empty,
            };
        }
        self.available.notify_one();
    }

    fn path(&self, tpe: FileType, id: &Id) -> PathBuf {
        file_path(&self.root, tpe, id)
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<(String, u64)>, crate::Error> {
        Ok(self
            .list_dir_stat(dir)?
            .into_iter()
            .map(|(n, st)| (n, st.size.unwrap_or(0)))
            .collect())
    }

    /// The entries of `dir` with what the server says of them (size, modification time).
    fn list_dir_stat(&self, dir: &Path) -> Result<Vec<(String, ssh2::FileStat)>, crate::Error> {
        self.with_conn(|sftp| match sftp.readdir(dir) {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter_map(|(p, st)| Some((p.file_name()?.to_string_lossy().into_owned(), st)))
                .collect()),
            Err(e) if e.code() == ssh2::ErrorCode::SFTP(2) => Ok(Vec::new()), // no such file
            Err(e) => Err(classify(e, "cannot list", dir)),
        })
    }

    /// Reads a whole file, refusing one larger than `cap` without reading it.
    fn read_whole(&self, path: &Path, cap: u64) -> Result<Vec<u8>, crate::Error> {
        let data = self.with_conn(|sftp| {
            let mut f = sftp
                .open(path)
                .map_err(|e| classify(e, "cannot open", path))?;
            let size = f
                .stat()
                .map_err(|e| classify(e, "cannot stat", path))?
                .size
                .unwrap_or(0);
            if size > cap {
                return Err(Retry::No(
                    too_large(&path.display().to_string(), size, cap).to_string(),
                ));
            }
            let mut buf = Vec::with_capacity(size as usize);
            (&mut f)
                .take(cap + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Retry::Yes(format!("cannot read {}: {e}", path.display())))?;
            if buf.len() as u64 > cap {
                return Err(Retry::No(
                    too_large(&path.display().to_string(), buf.len() as u64, cap).to_string(),
                ));
            }
            Ok(buf)
        })?;
        self.throttle(data.len());
        self.read
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(data)
    }

    fn read_range(
        &self,
        path: &Path,
        offset: u64,
        length: Option<usize>,
    ) -> Result<Vec<u8>, crate::Error> {
        let data = self.with_conn(|sftp| {
            let mut f = sftp
                .open(path)
                .map_err(|e| classify(e, "cannot open", path))?;
            let mut buf = Vec::new();
            match length {
                Some(n) => {
                    f.seek(SeekFrom::Start(offset)).map_err(|e| {
                        Retry::Yes(format!("cannot seek in {}: {e}", path.display()))
                    })?;
                    buf.resize(n, 0);
                    f.read_exact(&mut buf)
                        .map_err(|e| Retry::Yes(format!("cannot read {}: {e}", path.display())))?;
                }
                None => {
                    f.read_to_end(&mut buf)
                        .map_err(|e| Retry::Yes(format!("cannot read {}: {e}", path.display())))?;
                }
            }
            Ok(buf)
        })?;
        self.throttle(data.len());
        self.read
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(data)
    }

    fn write_file(&self, path: &Path, parts: &[Bytes]) -> Result<(), crate::Error> {
        let total: usize = parts.iter().map(Bytes::len).sum();
        self.with_conn(|sftp| {
            let mut random = [0u8; 6];
            getrandom::fill(&mut random).map_err(|e| Retry::No(e.to_string()))?;
            let tmp = PathBuf::from(format!(
                "{}-restic-temp-{}",
                path.display(),
                hex::encode(random)
            ));
            let result = (|| {
                let mut f = sftp
                    .open_mode(
                        &tmp,
                        OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                        0o600,
                        OpenType::File,
                    )
                    .map_err(|e| classify(e, "cannot create", &tmp))?;
                let mut written = 0usize;
                for part in parts {
                    for piece in part.chunks(PIECE) {
                        self.throttle(piece.len());
                        if let Err(e) = f.write_all(piece) {
                            // SFTP says only "failure"; the server's free space says why.
                            let left = (total - written) as u64;
                            return Err(match f.statvfs() {
                                Ok(v) if v.f_bavail.saturating_mul(v.f_frsize) < left => {
                                    Retry::No(format!(
                                        "No space left on device on the backup server: {} bytes free under {}, {} more needed",
                                        v.f_bavail.saturating_mul(v.f_frsize),
                                        path.parent().unwrap_or(path).display(),
                                        left
                                    ))
                                }
                                _ => Retry::Yes(format!("cannot write {}: {e}", tmp.display())),
                            });
                        }
                        written += piece.len();
                    }
                }
                // fsync@openssh.com where the server offers it.
                let _ = f.fsync();
                drop(f);
                match sftp.rename(&tmp, path, None) {
                    Ok(()) => Ok(()),
                    // Named by content: if it is already there with the same size, it is the same.
                    Err(e) => match sftp.stat(path) {
                        Ok(st) if st.size == Some(total as u64) => {
                            let _ = sftp.unlink(&tmp);
                            Ok(())
                        }
                        _ => Err(classify(e, "cannot rename into", path)),
                    },
                }
            })();
            if result.is_err() {
                let _ = sftp.unlink(&tmp);
            }
            result
        })
    }

    fn mkdir_all(&self, dir: &Path) -> Result<(), crate::Error> {
        self.with_conn(|sftp| {
            let mut cur = PathBuf::new();
            for c in dir.components() {
                cur.push(c);
                if sftp.stat(&cur).is_ok() {
                    continue;
                }
                if let Err(e) = sftp.mkdir(&cur, 0o700)
                    && sftp.stat(&cur).is_err()
                {
                    return Err(classify(e, "cannot create", &cur));
                }
            }
            Ok(())
        })
    }

    fn unlink(&self, path: &Path) -> Result<(), crate::Error> {
        self.with_conn(|sftp| match sftp.unlink(path) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ssh2::ErrorCode::SFTP(2) => Ok(()),
            Err(e) => Err(classify(e, "cannot remove", path)),
        })
    }
}

enum Retry {
    /// The connection failed: reconnect and try again.
    Yes(String),
    /// The server refused: final.
    No(String),
}

fn classify(e: ssh2::Error, what: &str, path: &Path) -> Retry {
    let message = format!("{what} {}: {e}", path.display());
    match e.code() {
        ssh2::ErrorCode::SFTP(_) => Retry::No(message),
        ssh2::ErrorCode::Session(_) => Retry::Yes(message),
    }
}

impl ReadBackend for SftpBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        let to_err = |e: crate::Error| RusticError::new(ErrorKind::Backend, e.to_string());
        if tpe == FileType::Config {
            let entries = self.list_dir(&self.root).map_err(to_err)?;
            return Ok(entries
                .into_iter()
                .filter(|(n, _)| n == "config")
                .map(|(_, s)| (Id::default(), u32::try_from(s).unwrap_or(u32::MAX)))
                .collect());
        }
        let base = self.root.join(dir_name(tpe));
        let dirs: Vec<PathBuf> = if tpe == FileType::Pack {
            self.list_dir(&base)
                .map_err(to_err)?
                .into_iter()
                .filter(|(n, _)| n.len() == 2)
                .map(|(n, _)| base.join(n))
                .collect()
        } else {
            vec![base]
        };
        let mut out = Vec::new();
        for d in dirs {
            for (name, size) in self.list_dir(&d).map_err(to_err)? {
                if let Ok(id) = name.parse::<Id>() {
                    out.push((id, u32::try_from(size).unwrap_or(u32::MAX)));
                }
            }
        }
        Ok(out)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let path = self.path(tpe, id);
        self.read_whole(&path, max_file_size(tpe))
            .map(Bytes::from)
            .map_err(|e| remote("cannot read", &path, e))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let path = self.path(tpe, id);
        self.read_range(&path, u64::from(offset), Some(length as usize))
            .map(Bytes::from)
            .map_err(|e| remote("cannot read", &path, e))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.path(tpe, id).display().to_string()
    }
}

impl WriteBackend for SftpBackend {
    fn create(&self) -> RusticResult<()> {
        for d in ["index", "keys", "snapshots", "locks"] {
            let p = self.root.join(d);
            self.mkdir_all(&p)
                .map_err(|e| remote("cannot create", &p, e))?;
        }
        let data = self.root.join("data");
        self.mkdir_all(&data)
            .map_err(|e| remote("cannot create", &data, e))?;
        // Their parent is there: one mkdir each, not a walk from the root (256 of them).
        let subdirs: Vec<PathBuf> = (0..=255u8).map(|i| data.join(format!("{i:02x}"))).collect();
        self.with_conn(|sftp| {
            for p in &subdirs {
                if let Err(e) = sftp.mkdir(p, 0o700)
                    && sftp.stat(p).is_err()
                {
                    return Err(classify(e, "cannot create", p));
                }
            }
            Ok(())
        })
        .map_err(|e| remote("cannot create", &data, e))?;
        Ok(())
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let path = self.path(tpe, id);
        if (tpe == FileType::Config || tpe == FileType::Key)
            && let Some(dir) = path.parent()
        {
            self.mkdir_all(dir)
                .map_err(|e| remote("cannot create", dir, e))?;
        }
        self.write_file(&path, content.slice())
            .map_err(|e| remote("cannot write", &path, e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let path = self.path(tpe, id);
        self.unlink(&path)
            .map_err(|e| remote("cannot remove", &path, e))
    }
}

impl Storage for SftpBackend {
    fn list_locks(&self) -> Result<Vec<LockEntry>, crate::Error> {
        Ok(self
            .list_dir_stat(&self.root.join("locks"))?
            .into_iter()
            .filter_map(|(n, st)| {
                Some(LockEntry {
                    id: RepoId::parse(&n)?,
                    size: st.size.unwrap_or(0),
                    modified: st.mtime.map(|t| UNIX_EPOCH + Duration::from_secs(t)),
                })
            })
            .collect())
    }

    fn read_lock(&self, id: &RepoId, cap: u64) -> Result<Vec<u8>, crate::Error> {
        self.read_whole(&self.root.join("locks").join(id.to_hex()), cap)
    }

    fn file_size(&self, tpe: FileType, id: &RepoId) -> Result<u64, crate::Error> {
        let path = self.path(tpe, &id.to_rustic());
        let st = self.with_conn(|sftp| {
            sftp.stat(&path)
                .map_err(|e| classify(e, "cannot stat", &path))
        })?;
        st.size.ok_or_else(|| {
            crate::Error::new(format!("the server gives no size for {}", path.display()))
        })
    }

    fn write_lock(&self, id: &RepoId, sealed: &[u8]) -> Result<Option<SystemTime>, crate::Error> {
        let dir = self.root.join("locks");
        let path = dir.join(id.to_hex());
        self.mkdir_all(&dir)?;
        self.write_file(&path, &[Bytes::copy_from_slice(sealed)])?;
        // The server's clock dates the file: the "now" other locks' ages are measured against.
        let mtime = self
            .with_conn(|sftp| {
                sftp.stat(&path)
                    .map_err(|e| classify(e, "cannot stat", &path))
            })?
            .mtime;
        Ok(mtime.map(|t| UNIX_EPOCH + Duration::from_secs(t)))
    }

    fn remove_lock(&self, id: &RepoId) -> Result<(), crate::Error> {
        self.unlink(&self.root.join("locks").join(id.to_hex()))
    }

    fn lock_settle(&self) -> Duration {
        Duration::ZERO
    }

    fn remove_temp_files(&self) -> Result<usize, crate::Error> {
        let mut dirs: Vec<PathBuf> = ["index", "keys", "snapshots", "locks"]
            .iter()
            .map(|d| self.root.join(d))
            .collect();
        dirs.push(self.root.clone());
        let data = self.root.join("data");
        dirs.extend(
            self.list_dir(&data)?
                .into_iter()
                .filter(|(n, _)| n.len() == 2)
                .map(|(n, _)| data.join(n)),
        );
        let mut removed = 0;
        for dir in dirs {
            for (name, _) in self.list_dir(&dir)? {
                if is_temp_name(&name) {
                    self.unlink(&dir.join(&name))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn write_concurrency(&self) -> usize {
        self.connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_sftp_locations() {
        assert_eq!(
            SftpLocation::parse("sftp:oneadmin@10.0.0.8:/var/lib/one/datastores/100/22")
                .expect("ok"),
            SftpLocation {
                user: Some("oneadmin".into()),
                host: "10.0.0.8".into(),
                path: "/var/lib/one/datastores/100/22".into()
            }
        );
        assert_eq!(
            SftpLocation::parse("sftp:backup1:/srv/repo").expect("ok"),
            SftpLocation {
                user: None,
                host: "backup1".into(),
                path: "/srv/repo".into()
            }
        );
        for bad in [
            "sftp:",
            "sftp:host",
            "/local/path",
            "sftp::/x",
            "sftp:u@:/x",
        ] {
            assert!(SftpLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
