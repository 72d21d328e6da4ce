//! One SFTP session over the system's OpenSSH client: `ssh [-F <config>] ... -s -- <host> sftp`
//! as a child process, the SFTP protocol spoken on its stdin and stdout, its stderr kept for
//! the reason when it fails. OpenSSH decides everything about the connection (the operator's
//! configuration with Include and Match, ProxyJump, host keys and certificates,
//! StrictHostKeyChecking, the agent and identities); this module never prompts (BatchMode) and
//! never chooses a host of its own. Why and how: docs/sftp.md.
//!
//! A session is used by one operation at a time; within it, reads and writes are pipelined
//! (up to [`WINDOW`] requests in flight, each as large as the server allows).

use super::wire::{self, Attrs, Limits, Reply, Statvfs};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests in flight at once in a pipelined read or write.
pub const WINDOW: usize = 64;
/// Piece size when the server does not say its limits: the size every SFTP server takes.
const DEFAULT_PIECE: u32 = 32 * 1024;
/// The largest piece asked for even when a server allows more (OpenSSH allows 255 KiB).
const MAX_PIECE: u32 = 255 * 1024;
/// Lines of ssh's stderr kept for an error.
const STDERR_LINES: usize = 40;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The session broke (ssh exited, a pipe closed, a reply did not parse): a new session
    /// may succeed.
    Lost(String),
    /// The server answered with an error status: final for this request.
    Status { code: u32, message: String },
}

impl Failure {
    pub fn is_missing(&self) -> bool {
        matches!(self, Failure::Status { code, .. } if *code == wire::FX_NO_SUCH_FILE)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Lost(m) => f.write_str(m),
            Failure::Status { code, message } => {
                let what = match *code {
                    wire::FX_EOF => "end of file",
                    wire::FX_NO_SUCH_FILE => "no such file",
                    wire::FX_PERMISSION_DENIED => "permission denied",
                    wire::FX_FAILURE => "failure",
                    wire::FX_OP_UNSUPPORTED => "operation not supported",
                    _ => "error",
                };
                if message.is_empty() || message.eq_ignore_ascii_case(what) {
                    write!(f, "{what} (SFTP status {code})")
                } else {
                    write!(f, "{message} (SFTP status {code})")
                }
            }
        }
    }
}

impl From<wire::Malformed> for Failure {
    fn from(m: wire::Malformed) -> Failure {
        Failure::Lost(m.to_string())
    }
}

/// How to start ssh: the arguments before the host, and the host.
#[derive(Debug, Clone)]
pub struct SshCommand {
    /// `ssh`, or another client for tests of this module.
    pub program: OsString,
    pub args: Vec<OsString>,
    pub host: String,
    /// How the host is named in messages.
    pub who: String,
}

impl SshCommand {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg("-s")
            .arg("--")
            .arg(&self.host)
            .arg("sftp");
        cmd
    }
}

/// The last lines ssh wrote to its stderr, read by a thread of their own.
#[derive(Debug, Default)]
struct Stderr {
    lines: VecDeque<String>,
}

/// One SFTP session.
#[derive(Debug)]
pub struct Session {
    child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Stderr>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    who: String,
    next_id: u32,
    /// Bytes asked for in one READ and sent in one WRITE.
    read_piece: u32,
    write_piece: u32,
    has_fsync: bool,
    has_statvfs: bool,
    /// The body of the last reply read.
    buf: Vec<u8>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // By its PID; closing stdin alone would leave it to ssh when to go.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
    }
}

impl Session {
    /// Starts ssh and says hello in SFTP. A failure to connect is one line: the host and
    /// OpenSSH's own reason, read as [`explain`] says.
    pub fn start(ssh: &SshCommand) -> Result<Session, String> {
        let mut child = ssh
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run ssh to reach {}: {e}", ssh.who))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot run ssh to reach {}: no pipes", ssh.who));
        };
        let tail = Arc::new(Mutex::new(Stderr::default()));
        let reader = {
            let tail = tail.clone();
            std::thread::Builder::new()
                .name("ssh-stderr".into())
                .spawn(move || read_stderr(stderr, &tail))
                .ok()
        };
        let mut s = Session {
            child,
            to: BufWriter::with_capacity(512 * 1024, stdin),
            from: BufReader::with_capacity(512 * 1024, stdout),
            stderr: tail,
            stderr_reader: reader,
            who: ssh.who.clone(),
            next_id: 1,
            read_piece: DEFAULT_PIECE,
            write_piece: DEFAULT_PIECE,
            has_fsync: false,
            has_statvfs: false,
            buf: Vec::new(),
        };
        match s.hello() {
            Ok(()) => Ok(s),
            Err(e) => Err(s.why_it_ended(&e)),
        }
    }

    fn hello(&mut self) -> Result<(), Failure> {
        self.send(&wire::init())?;
        self.flush()?;
        self.recv()?;
        let (version, extensions) = wire::parse_version(&self.buf)?;
        if version < 3 {
            return Err(Failure::Lost(format!(
                "the SFTP server speaks version {version}, not 3"
            )));
        }
        let has = |name: &str| extensions.iter().any(|(n, _)| n == name);
        self.has_fsync = has("fsync@openssh.com");
        self.has_statvfs = has("statvfs@openssh.com");
        if has("limits@openssh.com") {
            let id = self.id();
            self.send(&wire::limits(id))?;
            self.flush()?;
            self.recv_for(id)?;
            let body = std::mem::take(&mut self.buf);
            if let (_, Reply::Extended(mut f)) = wire::parse_reply(&body)? {
                let l = Limits::parse(&mut f)?;
                let piece = |limit: u64| {
                    if limit == 0 {
                        MAX_PIECE
                    } else {
                        u32::try_from(limit).unwrap_or(MAX_PIECE).min(MAX_PIECE)
                    }
                };
                // A write packet carries its header and handle besides the data.
                let by_packet = if l.max_packet == 0 {
                    MAX_PIECE
                } else {
                    piece(l.max_packet.saturating_sub(1024))
                };
                self.read_piece = piece(l.max_read).min(by_packet).max(1024);
                self.write_piece = piece(l.max_write).min(by_packet).max(1024);
            }
            self.buf = body;
        }
        Ok(())
    }

    /// The one line said when the session could not start or broke: OpenSSH's reason from
    /// its stderr when it gave one.
    pub fn why_it_ended(&mut self, failure: &Failure) -> String {
        // ssh has exited or is about to: give it a moment, so that its last words are read.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        let lines: Vec<String> = self
            .stderr
            .lock()
            .map(|s| s.lines.iter().cloned().collect())
            .unwrap_or_default();
        explain(&self.who, &lines).unwrap_or_else(|| format!("{}: {failure}", self.who))
    }

    pub fn has_statvfs(&self) -> bool {
        self.has_statvfs
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn lost(&self, what: &str, e: std::io::Error) -> Failure {
        Failure::Lost(format!("the session with {} broke ({what}: {e})", self.who))
    }

    fn send(&mut self, packet: &[u8]) -> Result<(), Failure> {
        self.to
            .write_all(packet)
            .map_err(|e| self.lost("sending", e))
    }

    fn flush(&mut self) -> Result<(), Failure> {
        self.to.flush().map_err(|e| self.lost("sending", e))
    }

    /// Reads one reply into `self.buf` (without its length).
    fn recv(&mut self) -> Result<(), Failure> {
        let mut len = [0u8; 4];
        self.from
            .read_exact(&mut len)
            .map_err(|e| self.lost("receiving", e))?;
        let len = u32::from_be_bytes(len);
        if len == 0 || len > wire::MAX_PACKET {
            return Err(Failure::Lost(format!(
                "{} sent an SFTP packet of {len} bytes (at most {} are allowed)",
                self.who,
                wire::MAX_PACKET
            )));
        }
        self.buf.resize(len as usize, 0);
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.from.read_exact(&mut buf);
        self.buf = buf;
        r.map_err(|e| self.lost("receiving", e))
    }

    /// Reads replies until the one to `id`; with nothing else in flight, any other id is a
    /// broken server.
    fn recv_for(&mut self, id: u32) -> Result<(), Failure> {
        self.recv()?;
        let got = wire::Fields::new(self.buf.get(1..).unwrap_or_default()).u32()?;
        if got != id {
            return Err(Failure::Lost(format!(
                "{} answered request {got}, not {id}",
                self.who
            )));
        }
        Ok(())
    }

    /// One request, one reply: the reply's body.
    fn call(&mut self, packet: impl FnOnce(u32) -> Vec<u8>) -> Result<Vec<u8>, Failure> {
        let id = self.id();
        self.send(&packet(id))?;
        self.flush()?;
        self.recv_for(id)?;
        Ok(std::mem::take(&mut self.buf))
    }

    /// A request answered by a status: OK or the error.
    fn call_status(&mut self, packet: impl FnOnce(u32) -> Vec<u8>) -> Result<(), Failure> {
        let body = self.call(packet)?;
        match wire::parse_reply(&body)?.1 {
            Reply::Status {
                code: wire::FX_OK, ..
            } => Ok(()),
            Reply::Status { code, message } => Err(Failure::Status { code, message }),
            _ => Err(Failure::Lost(format!(
                "{} answered with something other than a status",
                self.who
            ))),
        }
    }

    fn status_or<T>(&self, reply: Reply<'_>, what: &str) -> Result<T, Failure> {
        match reply {
            Reply::Status { code, message } => Err(Failure::Status { code, message }),
            _ => Err(Failure::Lost(format!(
                "{} answered {what} with the wrong kind of reply",
                self.who
            ))),
        }
    }

    pub fn stat(&mut self, path: &str) -> Result<Attrs, Failure> {
        let body = self.call(|id| wire::stat(id, path))?;
        match wire::parse_reply(&body)?.1 {
            Reply::Attrs(a) => Ok(a),
            r => self.status_or(r, "STAT"),
        }
    }

    pub fn open(&mut self, path: &str, flags: u32, mode: Option<u32>) -> Result<Handle, Failure> {
        let body = self.call(|id| wire::open(id, path, flags, mode))?;
        match wire::parse_reply(&body)?.1 {
            Reply::Handle(h) => Ok(Handle(h.to_vec())),
            r => self.status_or(r, "OPEN"),
        }
    }

    pub fn close(&mut self, handle: Handle) -> Result<(), Failure> {
        self.call_status(|id| wire::close(id, &handle.0))
    }

    pub fn fstat(&mut self, handle: &Handle) -> Result<Attrs, Failure> {
        let body = self.call(|id| wire::fstat(id, &handle.0))?;
        match wire::parse_reply(&body)?.1 {
            Reply::Attrs(a) => Ok(a),
            r => self.status_or(r, "FSTAT"),
        }
    }

    /// `fsync@openssh.com` where the server offers it; nothing where it does not.
    pub fn fsync(&mut self, handle: &Handle) -> Result<(), Failure> {
        if !self.has_fsync {
            return Ok(());
        }
        let body = self.call(|id| wire::fsync(id, &handle.0))?;
        match wire::parse_reply(&body)?.1 {
            Reply::Status {
                code: wire::FX_OK, ..
            }
            | Reply::Extended(_) => Ok(()),
            r => self.status_or(r, "fsync"),
        }
    }

    pub fn statvfs(&mut self, path: &str) -> Result<Statvfs, Failure> {
        let body = self.call(|id| wire::statvfs(id, path))?;
        match wire::parse_reply(&body)?.1 {
            Reply::Extended(mut f) => Ok(Statvfs::parse(&mut f)?),
            r => self.status_or(r, "statvfs"),
        }
    }

    pub fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), Failure> {
        self.call_status(|id| wire::mkdir(id, path, mode))
    }

    pub fn remove(&mut self, path: &str) -> Result<(), Failure> {
        self.call_status(|id| wire::remove(id, path))
    }

    /// Refused by OpenSSH's server when `to` exists.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), Failure> {
        self.call_status(|id| wire::rename(id, from, to))
    }

    /// The entries of a directory (without `.` and `..`).
    pub fn read_dir(&mut self, path: &str) -> Result<Vec<(String, Attrs)>, Failure> {
        let body = self.call(|id| wire::opendir(id, path))?;
        let handle = match wire::parse_reply(&body)?.1 {
            Reply::Handle(h) => Handle(h.to_vec()),
            r => return self.status_or(r, "OPENDIR"),
        };
        let mut out = Vec::new();
        let result = loop {
            let body = match self.call(|id| wire::readdir(id, &handle.0)) {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            match wire::parse_reply(&body)?.1 {
                Reply::Name(names) => {
                    out.extend(names.into_iter().filter(|(n, _)| n != "." && n != ".."))
                }
                Reply::Status {
                    code: wire::FX_EOF, ..
                } => break Ok(()),
                r => break self.status_or(r, "READDIR"),
            }
        };
        let closed = self.close(handle);
        result?;
        closed?;
        Ok(out)
    }

    /// Writes `parts` one after the other from offset 0, [`WINDOW`] pieces in flight;
    /// `before` is called with each piece's length before it is sent (the bandwidth limit).
    /// On an error status, what is in flight is answered before the error returns, so the
    /// session can go on.
    pub fn write_pieces(
        &mut self,
        handle: &Handle,
        parts: &[bytes::Bytes],
        before: &dyn Fn(usize),
    ) -> Result<(), Failure> {
        let piece = self.write_piece as usize;
        let mut in_flight: VecDeque<u32> = VecDeque::new();
        let mut first_error: Option<Failure> = None;
        let mut offset = 0u64;
        let pieces = parts.iter().flat_map(|p| p.chunks(piece));
        for data in pieces {
            if in_flight.len() >= WINDOW {
                self.flush()?;
                match self.await_status(&mut in_flight) {
                    Ok(()) => {}
                    Err(e @ Failure::Lost(_)) => return Err(e),
                    Err(e) => {
                        first_error = Some(e);
                        break;
                    }
                }
            }
            before(data.len());
            let id = self.id();
            self.send(&wire::write(id, &handle.0, offset, data))?;
            in_flight.push_back(id);
            offset += data.len() as u64;
        }
        self.flush()?;
        while !in_flight.is_empty() {
            if let Err(e) = self.await_status(&mut in_flight) {
                if matches!(e, Failure::Lost(_)) {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads one reply, which must answer one of `in_flight` with a status; removes it.
    fn await_status(&mut self, in_flight: &mut VecDeque<u32>) -> Result<(), Failure> {
        self.recv()?;
        let body = std::mem::take(&mut self.buf);
        let (id, reply) = wire::parse_reply(&body)?;
        let Some(at) = in_flight.iter().position(|i| *i == id) else {
            return Err(Failure::Lost(format!(
                "{} answered request {id}, which was not asked",
                self.who
            )));
        };
        in_flight.remove(at);
        let r = match reply {
            Reply::Status {
                code: wire::FX_OK, ..
            } => Ok(()),
            r => self.status_or(r, "WRITE"),
        };
        self.buf = body;
        r
    }

    /// Reads `len` bytes at `offset`, [`WINDOW`] pieces in flight. A short answer is asked
    /// again for the rest; the end of the file before `len` bytes is an error status
    /// (`FX_EOF`).
    pub fn read_exact_at(
        &mut self,
        handle: &Handle,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, Failure> {
        let mut out = vec![0u8; len];
        let piece = self.read_piece as usize;
        // Ranges (relative to `offset`) still to ask for, and those asked for by id.
        let mut to_ask: VecDeque<(usize, usize)> = (0..len)
            .step_by(piece.max(1))
            .map(|start| (start, piece.min(len - start)))
            .collect();
        let mut asked: HashMap<u32, (usize, usize)> = HashMap::new();
        let mut first_error: Option<Failure> = None;
        loop {
            while first_error.is_none() && asked.len() < WINDOW {
                let Some((start, n)) = to_ask.pop_front() else {
                    break;
                };
                let id = self.id();
                let n32 = u32::try_from(n).unwrap_or(u32::MAX);
                self.send(&wire::read(id, &handle.0, offset + start as u64, n32))?;
                asked.insert(id, (start, n));
            }
            if asked.is_empty() {
                break;
            }
            self.flush()?;
            self.recv()?;
            let body = std::mem::take(&mut self.buf);
            let (id, reply) = wire::parse_reply(&body)?;
            let Some((start, n)) = asked.remove(&id) else {
                return Err(Failure::Lost(format!(
                    "{} answered request {id}, which was not asked",
                    self.who
                )));
            };
            match reply {
                Reply::Data(d) if d.len() <= n && !d.is_empty() => {
                    out[start..start + d.len()].copy_from_slice(d);
                    if d.len() < n {
                        to_ask.push_back((start + d.len(), n - d.len()));
                    }
                }
                Reply::Data(d) => {
                    return Err(Failure::Lost(format!(
                        "{} sent {} bytes for a read of {n}",
                        self.who,
                        d.len()
                    )));
                }
                r => match self.status_or::<()>(r, "READ") {
                    Err(e @ Failure::Lost(_)) => return Err(e),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                    Ok(()) => {}
                },
            }
            self.buf = body;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// An open file or directory on the server.
#[derive(Debug)]
pub struct Handle(Vec<u8>);

fn read_stderr(stderr: std::process::ChildStderr, tail: &Mutex<Stderr>) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if text.is_empty() {
                    continue;
                }
                let text: String = text.chars().take(400).collect();
                if let Ok(mut t) = tail.lock() {
                    if t.lines.len() == STDERR_LINES {
                        t.lines.pop_front();
                    }
                    t.lines.push_back(text);
                }
            }
        }
    }
}

/// One line from what ssh printed before it gave up: the host, what OpenSSH decided, and
/// what to do about it. `None` when ssh said nothing.
pub fn explain(who: &str, stderr: &[String]) -> Option<String> {
    let last = stderr.iter().rev().find(|l| !l.trim().is_empty())?.trim();
    let all = stderr.join("\n");
    // OpenSSH prints a key's fingerprint on the line after this one.
    let fingerprint = stderr.iter().find_map(|l| {
        l.trim()
            .strip_prefix("SHA256:")
            .map(|f| format!("SHA256:{}", f.trim_end_matches('.')))
    });
    let fp = fingerprint
        .map(|f| format!(" (it now offers {f})"))
        .unwrap_or_default();
    if all.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return Some(format!(
            "the host key of {who} has CHANGED{fp}, so OpenSSH refused to connect: if the server's key was replaced on purpose, remove the old one (ssh-keygen -R <host>) and add the new one after checking it"
        ));
    }
    if all.contains("backstop: host key is not the pinned one") {
        let seen = stderr
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("backstop: host key is not the pinned one: ")
            })
            .unwrap_or("");
        return Some(format!(
            "the host key of {who} is not the pinned one: {seen}; refusing to connect"
        ));
    }
    if all.contains("host key is known for") || last.contains("Host key verification failed") {
        return Some(format!(
            "unknown host key for {who}: OpenSSH refused it ({last}); add the server's key to known_hosts after checking its fingerprint (or use StrictHostKeyChecking accept-new, or pin it with BACKSTOP_SFTP_HOST_FINGERPRINT)"
        ));
    }
    if last.contains("Permission denied") {
        return Some(format!(
            "cannot log in to {who}: {last} (the key must be in the server's authorized_keys, and the agent or an IdentityFile must hold it)"
        ));
    }
    if last.contains("subsystem request failed") {
        return Some(format!("{who} offers no SFTP subsystem: {last}"));
    }
    Some(format!("cannot connect to {who}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn ssh_reasons_become_one_line_naming_the_host() {
        let changed = lines(
            "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             The fingerprint for the ED25519 key sent by the remote host is\n\
             SHA256:abcDEF123\nPlease contact your system administrator.\nHost key verification failed.",
        );
        let m = explain("backup1", &changed).expect("said");
        assert!(
            m.starts_with("the host key of backup1 has CHANGED (it now offers SHA256:abcDEF123)"),
            "{m}"
        );
        let unknown = lines(
            "No ED25519 host key is known for [127.0.0.2]:2222 and you have requested strict checking.\nHost key verification failed.",
        );
        assert!(explain("backup1", &unknown).expect("said").starts_with(
            "unknown host key for backup1: OpenSSH refused it (Host key verification failed.)"
        ));
        let denied = lines("root@127.0.0.2: Permission denied (publickey).");
        assert!(
            explain("b", &denied)
                .expect("said")
                .starts_with("cannot log in to b: root@127.0.0.2: Permission denied (publickey).")
        );
        let refused = lines("ssh: connect to host 127.0.0.9 port 22: Connection refused\n");
        assert_eq!(
            explain("b", &refused).as_deref(),
            Some("cannot connect to b: ssh: connect to host 127.0.0.9 port 22: Connection refused")
        );
        assert_eq!(explain("b", &[]), None);
    }
}
