//! The SFTP backend: restic's layout on a remote file system, reached through the system's
//! OpenSSH client as restic reaches it (`ssh ... -s -- <host> sftp`), the SFTP protocol spoken
//! by [`client`].
//!
//! - **Where**: `sftp:[user@]host:/path` as restic writes it. `host` is whatever OpenSSH
//!   makes of it under the operator's configuration (`SSH_CONFIG` when given, else OpenSSH's
//!   own lookup): Include, Match, HostName, Port, User, IdentityFile, ProxyJump, certificates.
//! - **Host keys** are OpenSSH's decision under that configuration (known_hosts,
//!   `@cert-authority`, StrictHostKeyChecking including accept-new); ssh never prompts
//!   (BatchMode). A pinned fingerprint replaces known_hosts for this server: ssh accepts only
//!   a key with that fingerprint.
//! - **Connections**: a pool of `connections` ssh processes, each its own TCP connection
//!   (no ControlMaster, as OpenNebula's own hops); each write goes to
//!   `<name>-restic-temp-<random>` and is renamed into place (files are named by content, so a
//!   rename onto an existing name means the same content is already there).
//! - **Retries**: an operation whose session broke reconnects and is retried with backoff.
//! - **Bandwidth**: an optional limit in KiB/s (restic's unit), one token bucket for all
//!   connections.
//!
//! The argv, the pin and the measurements behind the choices: docs/sftp.md.

use crate::RepoId;
use crate::bandwidth::Bandwidth;
use crate::{LockEntry, Storage, dir_name, file_path, is_temp_name, max_file_size, too_large};
use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod client;
pub mod pool;
mod wire;

use client::{Failure, Session, SshCommand};
pub use pool::KeepSessions;
use pool::Server;

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
        let loc = SftpLocation {
            user,
            host,
            path: path.to_string(),
        };
        loc.check()
            .map_err(|e| crate::Error::new(format!("{text:?}: {}", e.0)))?;
        Ok(loc)
    }
}

/// A host or user name ssh may be given: letters, digits, `.`, `_`, `-` (not first), and for
/// a host `:` and brackets (IPv6). OpenSSH puts both into commands it runs through a shell
/// (ProxyJump, ProxyCommand, `Match exec`), so nothing else is let through.
fn plain_word(word: &str, host: bool) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '_' | '-')
                || (host && matches!(c, ':' | '[' | ']'))
        })
}

impl SftpLocation {
    /// Refuses a host or user that is not a [`plain_word`].
    pub fn check(&self) -> Result<(), ConnectError> {
        if !plain_word(&self.host, true) {
            return Err(ConnectError(format!(
                "the SFTP host {:?} is not a plain host name or address (letters, digits, '.', '_', '-', not starting with '-')",
                self.host
            )));
        }
        if let Some(user) = &self.user
            && !plain_word(user, false)
        {
            return Err(ConnectError(format!(
                "the SFTP user {user:?} is not a plain user name (letters, digits, '.', '_', '-', not starting with '-')"
            )));
        }
        Ok(())
    }
}

/// How to reach and verify the server.
#[derive(Debug, Clone, Default)]
pub struct SftpOptions {
    /// Sessions in the pool (RESTIC_CONNECTIONS); 0 is [`default_sessions`].
    pub connections: usize,
    /// KiB/s for reads and writes together (RESTIC_BWLIMIT).
    pub bwlimit_kib: Option<u64>,
    /// The OpenSSH client configuration (`ssh -F`); OpenSSH's own lookup when `None`.
    pub ssh_config: Option<PathBuf>,
    /// A pinned host key fingerprint, `SHA256:<base64>` as `ssh-keygen -l` prints it.
    pub host_fingerprint: Option<String>,
}

/// A connection failure, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// A repository over SFTP.
pub struct SftpBackend {
    /// The server's shared sessions ([`pool`]), of which this backend uses up to `sessions`.
    server: Arc<Server>,
    sessions: usize,
    root: PathBuf,
    location: String,
    bandwidth: Option<Bandwidth>,
    /// Bytes of repository files read from the server (lock files included).
    read: std::sync::atomic::AtomicU64,
}

impl Drop for SftpBackend {
    fn drop(&mut self) {
        self.server.detach(self.sessions);
    }
}

impl std::fmt::Debug for SftpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpBackend")
            .field("location", &self.location)
            .finish()
    }
}

fn remote(what: &str, path: &Path, e: impl std::fmt::Display) -> Box<RusticError> {
    RusticError::new(
        ErrorKind::Backend,
        format!("{what} {}: {e}", path.display()),
    )
}

/// A path as SFTP names it (the root came from text, so nothing is lost).
fn text(path: &Path) -> std::borrow::Cow<'_, str> {
    path.to_string_lossy()
}

/// `SHA256:` and 43 characters of unpadded base64, as `ssh-keygen -l` prints a fingerprint.
pub fn is_fingerprint(text: &str) -> bool {
    text.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

/// The options every connection passes to ssh, before the host. Only what must hold for an
/// unattended backup is set on the command line (where it wins over the configuration);
/// everything else is the operator's configuration.
pub fn ssh_args(loc: &SftpLocation, options: &SftpOptions) -> Result<Vec<OsString>, ConnectError> {
    loc.check()?;
    let mut a: Vec<OsString> = Vec::new();
    let mut o = |opt: &str| {
        a.push("-o".into());
        a.push(opt.into());
    };
    // Never a prompt (a password, a passphrase, an unknown key's yes/no).
    o("BatchMode=yes");
    o("ConnectTimeout=30");
    // Nothing but the SFTP subsystem on the session's pipes.
    o("RemoteCommand=none");
    o("PermitLocalCommand=no");
    // Its own TCP connection: a shared master would put every session through one ssh
    // process, and a persisting one would outlive the action (OpenNebula's hops do the same).
    o("ControlMaster=no");
    o("ControlPath=none");
    // A dead server or network is noticed within about a minute, not never.
    o("ServerAliveInterval=15");
    o("ServerAliveCountMax=4");
    // The backup server gets no agent and no forwarded ports.
    o("ForwardAgent=no");
    o("ForwardX11=no");
    o("ClearAllForwardings=yes");
    o("RequestTTY=no");
    if let Some(pin) = &options.host_fingerprint {
        let pin = pin.trim();
        if !is_fingerprint(pin) {
            return Err(ConnectError(format!(
                "the pinned host key fingerprint {pin:?} is not SHA256:<43 characters of base64> (as ssh-keygen -l prints it)"
            )));
        }
        // ssh asks this command for the host's key lines (%f: the fingerprint of the key
        // the server offers, NONE while ssh only orders its algorithms); it answers only for
        // a key with the pinned fingerprint, and no known_hosts file is read for this server.
        o("StrictHostKeyChecking=yes");
        o("UserKnownHostsFile=/dev/null");
        o("GlobalKnownHostsFile=/dev/null");
        o("UpdateHostKeys=no");
        o("CheckHostIP=no");
        o("VerifyHostKeyDNS=no");
        o(&format!(
            "KnownHostsCommand=/bin/sh -c 'if [ \"$1\" = \"$2\" ]; then echo \"$3 $4 $5\"; elif [ \"$1\" != NONE ]; then echo \"backstop: host key is not the pinned one: it offers $1, not $2\" >&2; fi' sh %f {pin} %H %t %K"
        ));
    }
    if let Some(cfg) = &options.ssh_config {
        a.insert(0, cfg.clone().into_os_string());
        a.insert(0, "-F".into());
    }
    if let Some(user) = &loc.user {
        a.push("-l".into());
        a.push(user.into());
    }
    Ok(a)
}

/// `ssh -G` of `host` with `args` before it: the configuration OpenSSH would use, printed
/// without connecting.
fn ssh_g(ssh: &SshCommand, args: &[&str]) -> Result<std::process::Output, ConnectError> {
    ssh.base()
        .args(args)
        .arg("-G")
        .arg("--")
        .arg(&ssh.host)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ConnectError(format!("cannot run ssh to reach {}: {e}", ssh.host)))
}

/// The ciphers put first when the operator left OpenSSH's default list alone and this
/// machine has AES instructions: on such a machine AES-GCM costs ssh and sshd a quarter less
/// CPU than the default chacha20-poly1305 (docs/sftp.md). An operator's own `Ciphers` line is
/// kept as it is.
const FAST_CIPHERS: &str = "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com";

fn has_aes_instructions() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
            .any(|l| l.split_whitespace().any(|w| w == "aes"))
    })
}

/// The `ciphers` line of `ssh -G` output.
fn ciphers_of(out: &std::process::Output) -> Option<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ciphers ").map(str::to_string))
}

/// What OpenSSH makes of `host` under the configuration (`ssh -G`): the user, how to name the
/// server in messages (`alias (hostname:port)`), and whether to put AES-GCM first.
fn resolve(ssh: &SshCommand) -> Result<(String, String, bool), ConnectError> {
    let out = ssh_g(ssh, &[])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("ssh -G failed");
        return Err(ConnectError(format!(
            "cannot read the ssh configuration for {}: {}",
            ssh.host,
            last.trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_string))
    };
    // Under backstop a backup server's key is always checked: a configuration that turns
    // checking off (or accepts any key each time, with no file to remember it in) is refused.
    let strict = get("stricthostkeychecking").unwrap_or_default();
    let files = get("userknownhostsfile").unwrap_or_default();
    let forgetful = !files.is_empty() && files.split_whitespace().all(|f| f == "/dev/null");
    let has_command = get("knownhostscommand").is_some_and(|c| !c.is_empty() && c != "none");
    if strict == "false" || (strict == "accept-new" && forgetful && !has_command) {
        return Err(ConnectError(format!(
            "the ssh configuration for {} turns host key checking off (StrictHostKeyChecking {}{}): backstop sends backups only to a server whose key is checked; use known_hosts, accept-new with a known_hosts file, or pin the key",
            ssh.host,
            if strict == "false" {
                "no"
            } else {
                "accept-new"
            },
            if forgetful {
                ", UserKnownHostsFile /dev/null"
            } else {
                ""
            }
        )));
    }
    let fast = has_aes_instructions() && {
        // The default list: the same host under no configuration file at all.
        let bare = SshCommand {
            args: Vec::new(),
            ..ssh.clone()
        };
        let default = ssh_g(&bare, &["-F", "/dev/null"])
            .ok()
            .and_then(|o| ciphers_of(&o));
        default.is_some() && default == ciphers_of(&out)
    };
    let user = get("user").unwrap_or_else(|| "root".into());
    let hostname = get("hostname").unwrap_or_else(|| ssh.host.clone());
    let port = get("port").unwrap_or_else(|| "22".into());
    let who = if hostname == ssh.host && port == "22" {
        ssh.host.clone()
    } else {
        format!("{} ({hostname}:{port})", ssh.host)
    };
    Ok((user, who, fast))
}

/// Sessions when RESTIC_CONNECTIONS is not set: 5, as restic, but no more than this machine
/// has CPUs. Each session's ssh is one process encrypting on one core, and one session keeps
/// 16 MiB in flight, so sessions beyond the cores add only switching between them (docs/sftp.md
/// has the measurements).
pub fn default_sessions() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.clamp(1, 5)
}

impl SftpBackend {
    /// Connects one session now (so a bad host key or login fails at once) unless this
    /// process holds one to the server already; the others as they are needed.
    pub fn connect(loc: &SftpLocation, options: &SftpOptions) -> Result<SftpBackend, ConnectError> {
        SftpBackend::connect_with(OsString::from("ssh"), loc, options)
    }

    /// As [`SftpBackend::connect`], with another OpenSSH client binary.
    pub fn connect_with(
        program: OsString,
        loc: &SftpLocation,
        options: &SftpOptions,
    ) -> Result<SftpBackend, ConnectError> {
        let ssh = SshCommand {
            program,
            args: ssh_args(loc, options)?,
            host: loc.host.clone(),
            who: loc.host.clone(),
            stall: client::STALL,
        };
        let sessions = if options.connections == 0 {
            default_sessions()
        } else {
            options.connections
        };
        let server = Server::attach(ssh, sessions, |ssh| {
            let (user, who, fast) = resolve(ssh)?;
            let mut ssh = SshCommand { who, ..ssh.clone() };
            if fast {
                ssh.args.splice(0..0, ["-o".into(), FAST_CIPHERS.into()]);
            }
            Ok((ssh, user))
        })?;
        let backend = SftpBackend {
            location: format!("sftp:{}@{}:{}", server.user, loc.host, loc.path),
            root: PathBuf::from(&loc.path),
            server,
            sessions,
            bandwidth: options.bwlimit_kib.and_then(Bandwidth::kib_per_sec),
            read: std::sync::atomic::AtomicU64::new(0),
        };
        if !backend.server.has_sessions() {
            let first = Session::start(&backend.server.ssh).map_err(ConnectError)?;
            backend.server.add(first);
        }
        Ok(backend)
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
            let there = self.with_conn(|s| match s.stat(&text(&config)) {
                Ok(st) => Ok(st.is_file()),
                Err(e) if e.is_missing() => Ok(false),
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
        self.sessions
    }

    fn throttle(&self, bytes: usize) {
        if let Some(b) = &self.bandwidth {
            b.take(bytes);
        }
    }

    /// Runs `op` on a pooled session; when the session broke, starts another and retries
    /// (3 attempts, backoff 0.5 s, 1 s).
    fn with_conn<T>(
        &self,
        op: impl Fn(&mut Session) -> Result<T, Retry>,
    ) -> Result<T, crate::Error> {
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << (attempt - 1)));
            }
            let mut taken = match self.server.checkout() {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let conn = taken.session();
            conn.busy();
            let result = op(conn);
            conn.idle();
            match result {
                // A session that broke on the way is never used again, whatever the operation
                // made of it (a status may have come before the break): `taken` ends it.
                Ok(v) => {
                    taken.sound();
                    return Ok(v);
                }
                // The server answered: the session is fine and retrying will not help.
                Err(Retry::No(e)) if !conn.is_broken() => {
                    taken.sound();
                    return Err(crate::Error::new(e));
                }
                Err(Retry::No(e)) | Err(Retry::Yes(e)) => {
                    // ssh's own last words say more than a broken pipe.
                    last = format!(
                        "{e}: {}",
                        conn.why_it_ended(&Failure::Lost("the session broke".into()))
                    );
                }
            }
        }
        Err(crate::Error::new(last))
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
    fn list_dir_stat(&self, dir: &Path) -> Result<Vec<(String, wire::Attrs)>, crate::Error> {
        self.with_conn(|s| match s.read_dir(&text(dir)) {
            Ok(entries) => Ok(entries),
            Err(e) if e.is_missing() => Ok(Vec::new()),
            Err(e) => Err(classify(e, "cannot list", dir)),
        })
    }

    /// Reads a whole file, refusing one larger than `cap` without reading it.
    /// Opens `path`, reads from it with `body` and closes it; what was read is counted and
    /// paid for under the bandwidth limit.
    fn read_file(
        &self,
        path: &Path,
        body: impl Fn(&mut Session, &client::Handle) -> Result<Vec<u8>, Retry>,
    ) -> Result<Vec<u8>, crate::Error> {
        let data = self.with_conn(|s| {
            let h = s
                .open(&text(path), wire::OPEN_READ, None)
                .map_err(|e| classify(e, "cannot open", path))?;
            let data = body(s, &h);
            let closed = s.close(h).map_err(|e| classify(e, "cannot close", path));
            let data = data?;
            closed?;
            Ok(data)
        })?;
        self.throttle(data.len());
        self.read
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(data)
    }

    fn read_whole(&self, path: &Path, cap: u64) -> Result<Vec<u8>, crate::Error> {
        let too_large =
            |size| Retry::No(too_large(&path.display().to_string(), size, cap).to_string());
        self.read_file(path, |s, h| {
            let size = s
                .fstat(h)
                .map_err(|e| classify(e, "cannot stat", path))?
                .size
                .ok_or_else(|| {
                    Retry::No(format!("the server gives no size for {}", path.display()))
                })?;
            if size > cap {
                return Err(too_large(size));
            }
            let len = usize::try_from(size).map_err(|_| too_large(size))?;
            s.read_exact_at(h, 0, len)
                .map_err(|e| classify(e, "cannot read", path))
        })
    }

    fn read_range(&self, path: &Path, offset: u64, length: usize) -> Result<Vec<u8>, crate::Error> {
        self.read_file(path, |s, h| {
            s.read_exact_at(h, offset, length)
                .map_err(|e| classify(e, "cannot read", path))
        })
    }

    fn write_file(&self, path: &Path, parts: &[Bytes]) -> Result<(), crate::Error> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.with_conn(|s| {
            let mut random = [0u8; 6];
            getrandom::fill(&mut random).map_err(|e| Retry::No(e.to_string()))?;
            let tmp = PathBuf::from(format!(
                "{}-restic-temp-{}",
                path.display(),
                hex::encode(random)
            ));
            let result = (|| {
                let h = s
                    .open(
                        &text(&tmp),
                        wire::OPEN_WRITE | wire::OPEN_CREATE | wire::OPEN_EXCLUSIVE,
                        Some(0o600),
                    )
                    .map_err(|e| classify(e, "cannot create", &tmp))?;
                let written = s.write_pieces(&h, parts, &|n| self.throttle(n));
                let written = match written {
                    Err(e @ Failure::Status { .. }) => {
                        let _ = s.close(h);
                        // SFTP says only "failure"; the server's free space says why.
                        return Err(match s.has_statvfs().then(|| s.statvfs(&text(path.parent().unwrap_or(path)))) {
                            Some(Ok(v)) if v.free_bytes() < total => Retry::No(format!(
                                "No space left on device on the backup server: {} bytes free under {}, {total} needed",
                                v.free_bytes(),
                                path.parent().unwrap_or(path).display(),
                            )),
                            _ => classify(e, "cannot write", &tmp),
                        });
                    }
                    other => other.map_err(|e| classify(e, "cannot write", &tmp)),
                };
                written?;
                // fsync@openssh.com where the server offers it.
                let synced = s.fsync(&h).map_err(|e| classify(e, "cannot sync", &tmp));
                s.close(h).map_err(|e| classify(e, "cannot close", &tmp))?;
                synced?;
                match s.rename(&text(&tmp), &text(path)) {
                    Ok(()) => Ok(()),
                    // Named by content: if it is already there with the same size, it is the same.
                    Err(Failure::Status { code, message }) => match s.stat(&text(path)) {
                        Ok(st) if st.size == Some(total) => {
                            let _ = s.remove(&text(&tmp));
                            Ok(())
                        }
                        _ => Err(classify(
                            Failure::Status { code, message },
                            "cannot rename into",
                            path,
                        )),
                    },
                    Err(e) => Err(classify(e, "cannot rename into", path)),
                }
            })();
            if let Err(Retry::No(_)) = &result {
                let _ = s.remove(&text(&tmp));
            }
            result
        })
    }

    fn mkdir_all(&self, dir: &Path) -> Result<(), crate::Error> {
        self.with_conn(|s| {
            let mut cur = PathBuf::new();
            for c in dir.components() {
                cur.push(c);
                if s.stat(&text(&cur)).is_ok() {
                    continue;
                }
                if let Err(e) = s.mkdir(&text(&cur), 0o700)
                    && s.stat(&text(&cur)).is_err()
                {
                    return Err(classify(e, "cannot create", &cur));
                }
            }
            Ok(())
        })
    }

    fn unlink(&self, path: &Path) -> Result<(), crate::Error> {
        self.with_conn(|s| match s.remove(&text(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_missing() => Ok(()),
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

fn classify(e: Failure, what: &str, path: &Path) -> Retry {
    let message = format!("{what} {}: {e}", path.display());
    match e {
        Failure::Status { .. } => Retry::No(message),
        Failure::Lost(_) => Retry::Yes(message),
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
        self.read_range(&path, u64::from(offset), length as usize)
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
        self.with_conn(|s| {
            for p in &subdirs {
                if let Err(e) = s.mkdir(&text(p), 0o700)
                    && s.stat(&text(p)).is_err()
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
                    modified: st
                        .mtime
                        .map(|t| UNIX_EPOCH + Duration::from_secs(u64::from(t))),
                })
            })
            .collect())
    }

    fn read_lock(&self, id: &RepoId, cap: u64) -> Result<Vec<u8>, crate::Error> {
        self.read_whole(&self.root.join("locks").join(id.to_hex()), cap)
    }

    fn file_size(&self, tpe: FileType, id: &RepoId) -> Result<u64, crate::Error> {
        let path = self.path(tpe, &id.to_rustic());
        let st = self.with_conn(|s| {
            s.stat(&text(&path))
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
            .with_conn(|s| {
                s.stat(&text(&path))
                    .map_err(|e| classify(e, "cannot stat", &path))
            })?
            .mtime;
        Ok(mtime.map(|t| UNIX_EPOCH + Duration::from_secs(u64::from(t))))
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
            "sftp:-oProxyCommand=x:/r",
            "sftp:x';id;'@host:/r",
            "sftp:host$(id):/r",
            "sftp:-l@host:/r",
        ] {
            assert!(SftpLocation::parse(bad).is_err(), "{bad}");
        }
        // A location built by hand (the datastore driver does) is checked before ssh runs.
        let hand = SftpLocation {
            user: Some("oneadmin".into()),
            host: "x';touch /tmp/p;'".into(),
            path: "/r".into(),
        };
        let err = ssh_args(&hand, &SftpOptions::default()).expect_err("refused");
        assert!(err.0.starts_with("the SFTP host"), "{}", err.0);
        let pin = SftpOptions {
            host_fingerprint: Some("SHA256:x' ; touch /tmp/p".into()),
            ..SftpOptions::default()
        };
        assert!(ssh_args(&SftpLocation::parse("sftp:h:/r").expect("ok"), &pin).is_err());
    }

    /// AES-GCM goes first only when the configuration leaves `Ciphers` at OpenSSH's default
    /// (and the CPU has AES instructions); an operator's own list is kept.
    #[test]
    fn ciphers_are_preferred_only_when_the_operator_chose_none() {
        let dir = std::env::temp_dir().join(format!("backstop-ciphers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let resolve_with = |config: &str| {
            let path = dir.join("config");
            std::fs::write(&path, config).expect("config");
            let loc = SftpLocation::parse("sftp:backup9:/r").expect("loc");
            let options = SftpOptions {
                ssh_config: Some(path),
                ..SftpOptions::default()
            };
            let ssh = SshCommand {
                program: "ssh".into(),
                args: ssh_args(&loc, &options).expect("args"),
                host: loc.host.clone(),
                who: loc.host.clone(),
                stall: client::STALL,
            };
            resolve(&ssh).expect("ssh -G")
        };
        let (_, who, fast) = resolve_with("Host backup9\n  HostName 127.0.0.9\n  Port 2022\n");
        assert_eq!(who, "backup9 (127.0.0.9:2022)");
        assert_eq!(fast, has_aes_instructions());
        let (_, _, fast) = resolve_with("Host backup9\n  Ciphers aes256-ctr\n");
        assert!(!fast, "the operator's Ciphers were overridden");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
