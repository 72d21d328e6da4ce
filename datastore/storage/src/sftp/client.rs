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
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Requests in flight at once in a pipelined read or write.
pub const WINDOW: usize = 64;
/// Piece size when the server does not say its limits: the size every SFTP server takes.
const DEFAULT_PIECE: u32 = 32 * 1024;
/// The largest piece asked for even when a server allows more (OpenSSH allows 255 KiB).
const MAX_PIECE: u32 = 255 * 1024;
/// Lines of ssh's stderr kept for an error.
const STDERR_LINES: usize = 40;
/// How long an operation may go without a packet sent or received before its ssh is ended
/// (a server whose sftp-server hangs still answers ssh's keepalives).
pub const STALL: Duration = Duration::from_secs(300);
/// The most directory entries read from one listing.
const MAX_ENTRIES: usize = 2_000_000;

/// The only variables ssh (and the proxies and `Match exec` commands it runs) inherits: what
/// OpenSSH and a ProxyCommand need to find the user's files, agent and Kerberos ticket. The
/// rest of backstop's environment (repository passwords, S3 keys, the notification and API
/// secrets of a daemon) never reaches them.
const PASSED_ENV: [&str; 12] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "SSH_AUTH_SOCK",
    "KRB5CCNAME",
    "TMPDIR",
    "TZ",
    "XDG_RUNTIME_DIR",
    "LANG",
    "LC_ALL",
];

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
    /// How long an operation may go without a packet moving ([`STALL`]).
    pub stall: Duration,
}

impl SshCommand {
    /// ssh with this session's arguments and only the environment of [`PASSED_ENV`].
    pub fn base(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear();
        for (name, value) in std::env::vars_os() {
            let passed = name.to_str().is_some_and(|n| {
                PASSED_ENV.contains(&n) || (n.starts_with("LC_") && n != "LC_ALL")
            });
            if passed {
                cmd.env(name, value);
            }
        }
        cmd.args(&self.args);
        cmd
    }

    fn command(&self) -> Command {
        let mut cmd = self.base();
        cmd.arg("-s").arg("--").arg(&self.host).arg("sftp");
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
    /// Set when the session broke: it is never used again.
    broken: bool,
    watch: Arc<Watch>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

/// What the watchdog of a session sees: whether an operation is under way, when a packet last
/// moved, and whether the session is ending.
#[derive(Debug)]
struct Watch {
    state: Mutex<WatchState>,
    wake: Condvar,
    stall: Duration,
}

#[derive(Debug)]
struct WatchState {
    busy: bool,
    last: Instant,
    stop: bool,
    /// The watchdog ended ssh for a stall.
    fired: bool,
}

impl Watch {
    fn update(&self, f: impl FnOnce(&mut WatchState)) {
        if let Ok(mut st) = self.state.lock() {
            f(&mut st);
        }
        self.wake.notify_all();
    }

    /// Ends ssh (`pid`) when an operation goes [`STALL`] without a packet moving; returns when
    /// the session ends.
    fn run(&self, pid: u32) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        loop {
            if st.stop {
                return;
            }
            let wait = if st.busy {
                match self.stall.checked_sub(st.last.elapsed()) {
                    Some(left) => left,
                    None => {
                        st.fired = true;
                        terminate(pid);
                        return;
                    }
                }
            } else {
                self.stall
            };
            st = match self.wake.wait_timeout(st, wait) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    }
}

/// SIGTERM to ssh (which then ends a ProxyJump or ProxyCommand child of its own). The PID is
/// still ssh's: the child is not reaped before its session's watchdog has stopped.
fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Ends `sessions` together: each ssh is told to end before any is waited for.
pub fn close_all(mut sessions: Vec<Session>) {
    for s in &mut sessions {
        s.stop_watchdog();
        // Only a child not reaped yet is signalled: a reaped one's PID may be another's.
        if let Ok(None) = s.child.try_wait() {
            terminate(s.child.id());
        }
    }
    drop(sessions);
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_watchdog();
        self.end_ssh();
        // The stderr reader ends when the last holder of the pipe goes; a proxy child that
        // outlives ssh is not waited for.
        if let Some(t) = self.stderr_reader.take()
            && t.is_finished()
        {
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
        let watch = Arc::new(Watch {
            state: Mutex::new(WatchState {
                busy: true,
                last: Instant::now(),
                stop: false,
                fired: false,
            }),
            wake: Condvar::new(),
            stall: ssh.stall,
        });
        let watchdog = {
            let (watch, pid) = (watch.clone(), child.id());
            std::thread::Builder::new()
                .name("ssh-watchdog".into())
                .spawn(move || watch.run(pid))
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
            broken: false,
            watch,
            watchdog,
        };
        match s.hello() {
            Ok(()) => {
                s.idle();
                // What ssh said while connecting (a first key recorded, a banner) is no
                // reason for a later failure, except a first key it could not record: under
                // accept-new with a known_hosts it cannot write, ssh would take any key, every
                // time.
                let unrecorded = s.stderr.lock().ok().and_then(|mut t| {
                    let found = t
                        .lines
                        .iter()
                        .find(|l| l.contains("Failed to add the host to the list of known hosts"))
                        .cloned();
                    t.lines.clear();
                    found
                });
                match unrecorded {
                    Some(line) => Err(format!(
                        "{}: OpenSSH accepted a first host key but could not record it ({}), so no later key would be checked: make the known_hosts file writable by this user, or add the server's key to it",
                        s.who,
                        line.trim()
                    )),
                    None => Ok(s),
                }
            }
            Err(e) => Err(s.why_it_ended(&e)),
        }
    }

    /// An operation begins: the watchdog ends ssh if it then stalls.
    pub fn busy(&self) {
        self.watch.update(|st| {
            st.busy = true;
            st.last = Instant::now();
        });
    }

    /// The operation is over.
    pub fn idle(&self) {
        self.watch.update(|st| st.busy = false);
    }

    fn moved(&self) {
        if let Ok(mut st) = self.watch.state.lock() {
            st.last = Instant::now();
        }
    }

    /// Stops the watchdog and waits for it; whether it had ended ssh for a stall.
    fn stop_watchdog(&mut self) -> bool {
        self.watch.update(|st| st.stop = true);
        if let Some(t) = self.watchdog.take() {
            let _ = t.join();
        }
        self.watch.state.lock().map(|st| st.fired).unwrap_or(false)
    }

    /// Whether the session broke (a pipe closed, a malformed reply, ssh gone): it must not
    /// be used again.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether ssh still runs and the session never broke (an idle session's ssh ends when
    /// the server goes away: ServerAliveInterval).
    pub fn is_alive(&mut self) -> bool {
        !self.broken && matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends ssh: SIGTERM, so that it ends its own proxy child, then SIGKILL if it has not
    /// gone within a second; reaped either way.
    fn end_ssh(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        terminate(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) | Err(_) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn hello(&mut self) -> Result<(), Failure> {
        self.send(&wire::init())?;
        self.flush()?;
        self.recv()?;
        let (version, extensions) = wire::parse_version(&self.buf)?;
        if version < 3 {
            return Err(self.broke(format!("the SFTP server speaks version {version}, not 3")));
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
            if let (_, Reply::Extended(mut f)) = self.parse(&body)? {
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
                    piece(l.max_packet.saturating_sub(1024).max(1024))
                };
                self.read_piece = piece(l.max_read).min(by_packet).max(1024);
                self.write_piece = piece(l.max_write).min(by_packet).max(1024);
            }
            self.buf = body;
        }
        Ok(())
    }

    /// The one line said when the session could not start or broke: OpenSSH's reason when
    /// ssh gave up (exit status 255), else what went wrong with ssh's last words beside it.
    pub fn why_it_ended(&mut self, failure: &Failure) -> String {
        self.broken = true;
        // Stopped before ssh is reaped below, so that it never signals a PID reused since.
        let stalled = self.stop_watchdog();
        // ssh has exited or is about to: give it a moment, so that its last words are read.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = None;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    break;
                }
                Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if status.is_none() {
            self.end_ssh();
        }
        // The stderr reader ends with ssh unless a proxy child still holds the pipe.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self
            .stderr_reader
            .as_ref()
            .is_some_and(|t| !t.is_finished())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines: Vec<String> = self
            .stderr
            .lock()
            .map(|s| s.lines.iter().cloned().collect())
            .unwrap_or_default();
        if stalled {
            return format!(
                "{}: no progress for {} s, ssh was ended",
                self.who,
                self.watch.stall.as_secs()
            );
        }
        if status.is_some_and(|s| s.code() == Some(255))
            && let Some(line) = explain(&self.who, &lines)
        {
            return line;
        }
        match lines.iter().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => format!("{}: {failure}; ssh said: {}", self.who, last.trim()),
            None => format!("{}: {failure}", self.who),
        }
    }

    pub fn has_statvfs(&self) -> bool {
        self.has_statvfs
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn lost(&mut self, what: &str, e: std::io::Error) -> Failure {
        self.broken = true;
        Failure::Lost(format!("the session broke ({what}: {e})"))
    }

    /// A failure that ends the session.
    fn broke(&mut self, message: String) -> Failure {
        self.broken = true;
        Failure::Lost(message)
    }

    fn send(&mut self, packet: &[u8]) -> Result<(), Failure> {
        match self.to.write_all(packet) {
            Ok(()) => {
                self.moved();
                Ok(())
            }
            Err(e) => Err(self.lost("sending", e)),
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        match self.to.flush() {
            Ok(()) => {
                self.moved();
                Ok(())
            }
            Err(e) => Err(self.lost("sending", e)),
        }
    }

    /// Reads one reply into `self.buf` (without its length).
    fn recv(&mut self) -> Result<(), Failure> {
        let mut len = [0u8; 4];
        if let Err(e) = self.from.read_exact(&mut len) {
            return Err(self.lost("receiving", e));
        }
        let len = u32::from_be_bytes(len);
        if len == 0 || len > wire::MAX_PACKET {
            let hint = if self.next_id <= 1 {
                " (text before SFTP started: the server's shell must print nothing for a non-interactive session)"
            } else {
                ""
            };
            return Err(self.broke(format!(
                "the server sent an SFTP packet of {len} bytes (at most {} are allowed){hint}",
                wire::MAX_PACKET
            )));
        }
        self.buf.resize(len as usize, 0);
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.from.read_exact(&mut buf);
        self.buf = buf;
        match r {
            Ok(()) => {
                self.moved();
                Ok(())
            }
            Err(e) => Err(self.lost("receiving", e)),
        }
    }

    /// Parses the reply in `body`; a malformed one ends the session.
    fn parse<'b>(&mut self, body: &'b [u8]) -> Result<(u32, Reply<'b>), Failure> {
        wire::parse_reply(body).map_err(|m| self.broke(m.to_string()))
    }

    /// Reads replies until the one to `id`; with nothing else in flight, any other id is a
    /// broken server.
    fn recv_for(&mut self, id: u32) -> Result<(), Failure> {
        self.recv()?;
        let got = wire::Fields::new(self.buf.get(1..).unwrap_or_default())
            .u32()
            .map_err(|m| self.broke(m.to_string()))?;
        if got != id {
            return Err(self.broke(format!("{} answered request {got}, not {id}", self.who)));
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
        match self.parse(&body)?.1 {
            Reply::Status {
                code: wire::FX_OK, ..
            } => Ok(()),
            Reply::Status { code, message } => Err(Failure::Status { code, message }),
            _ => Err(self.broke(format!(
                "{} answered with something other than a status",
                self.who
            ))),
        }
    }

    fn status_or<T>(&mut self, reply: Reply<'_>, what: &str) -> Result<T, Failure> {
        match reply {
            Reply::Status { code, message } => Err(Failure::Status { code, message }),
            _ => Err(self.broke(format!(
                "{} answered {what} with the wrong kind of reply",
                self.who
            ))),
        }
    }

    pub fn stat(&mut self, path: &str) -> Result<Attrs, Failure> {
        let body = self.call(|id| wire::stat(id, path))?;
        match self.parse(&body)?.1 {
            Reply::Attrs(a) => Ok(a),
            r => self.status_or(r, "STAT"),
        }
    }

    pub fn open(&mut self, path: &str, flags: u32, mode: Option<u32>) -> Result<Handle, Failure> {
        let body = self.call(|id| wire::open(id, path, flags, mode))?;
        match self.parse(&body)?.1 {
            Reply::Handle(h) => Ok(Handle(h.to_vec())),
            r => self.status_or(r, "OPEN"),
        }
    }

    pub fn close(&mut self, handle: Handle) -> Result<(), Failure> {
        self.call_status(|id| wire::close(id, &handle.0))
    }

    pub fn fstat(&mut self, handle: &Handle) -> Result<Attrs, Failure> {
        let body = self.call(|id| wire::fstat(id, &handle.0))?;
        match self.parse(&body)?.1 {
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
        match self.parse(&body)?.1 {
            Reply::Status {
                code: wire::FX_OK, ..
            }
            | Reply::Extended(_) => Ok(()),
            r => self.status_or(r, "fsync"),
        }
    }

    pub fn statvfs(&mut self, path: &str) -> Result<Statvfs, Failure> {
        let body = self.call(|id| wire::statvfs(id, path))?;
        match self.parse(&body)?.1 {
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
        let handle = match self.parse(&body)?.1 {
            Reply::Handle(h) => Handle(h.to_vec()),
            r => return self.status_or(r, "OPENDIR"),
        };
        let mut out = Vec::new();
        let mut seen = 0usize;
        let result = loop {
            let body = match self.call(|id| wire::readdir(id, &handle.0)) {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            match self.parse(&body)?.1 {
                Reply::Name(names) if names.is_empty() => {
                    break Err(
                        self.broke("the server listed a directory with an empty reply".into())
                    );
                }
                Reply::Name(names) => {
                    // Counted before `.` and `..` are dropped: a server that answers every
                    // READDIR with `.` alone is stopped too.
                    seen += names.len();
                    if let Some((bad, _)) = names.iter().find(|(n, _)| n.contains(['/', '\0'])) {
                        break Err(self.broke(format!(
                            "the server listed {path} with an entry that is not a name: {:?}",
                            bad.chars().take(80).collect::<String>()
                        )));
                    }
                    out.extend(names.into_iter().filter(|(n, _)| n != "." && n != ".."));
                    if seen > MAX_ENTRIES {
                        break Err(Failure::Status {
                            code: wire::FX_FAILURE,
                            message: format!("{path} lists more than {MAX_ENTRIES} entries"),
                        });
                    }
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
        let (id, reply) = self.parse(&body)?;
        let Some(at) = in_flight.iter().position(|i| *i == id) else {
            return Err(self.broke(format!(
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
            let (id, reply) = self.parse(&body)?;
            let Some((start, n)) = asked.remove(&id) else {
                return Err(self.broke(format!(
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
                    return Err(self.broke(format!(
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
    use std::io::Read;
    let mut r = std::io::BufReader::new(stderr);
    // One line at a time, at most LINE bytes of it kept: what the server sends on the
    // channel's stderr comes here, and a line without an end must not grow without bound.
    const LINE: usize = 400;
    let mut line = Vec::with_capacity(LINE);
    let mut byte = [0u8; 4096];
    loop {
        let n = match r.read(&mut byte) {
            Ok(0) | Err(_) => {
                keep_line(&line, tail);
                return;
            }
            Ok(n) => n,
        };
        for &b in &byte[..n] {
            if b == b'\n' {
                keep_line(&line, tail);
                line.clear();
            } else if line.len() < LINE {
                line.push(b);
            }
        }
    }
}

/// Keeps one line of ssh's stderr, its control characters (a server's terminal escapes)
/// shown as `?`.
fn keep_line(line: &[u8], tail: &Mutex<Stderr>) {
    let text: String = String::from_utf8_lossy(line)
        .chars()
        .filter(|&c| c != '\r')
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    if let Ok(mut t) = tail.lock() {
        if t.lines.len() == STDERR_LINES {
            t.lines.pop_front();
        }
        t.lines.push_back(text.to_string());
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
        // "Host key for <host> has changed and you have requested strict checking."
        let said = stderr
            .iter()
            .find(|l| l.contains("has changed and you have requested strict checking"))
            .map(|l| format!(" ({})", l.trim()))
            .unwrap_or_default();
        return Some(format!(
            "the host key of {who} has CHANGED{fp}, so OpenSSH refused to connect{said}: if the server's key was replaced on purpose, remove the old one (ssh-keygen -R <host>) and add the new one after checking it"
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
        // OpenSSH's own line names the host it refused (a ProxyJump hop is not the target).
        let said = stderr
            .iter()
            .find(|l| l.contains("host key is known for"))
            .map_or(last, |l| l.trim());
        return Some(format!(
            "unknown host key for {who}: OpenSSH refused it ({said}); add the server's key to known_hosts after checking its fingerprint (ssh-keyscan -p <port> <host> | ssh-keygen -lf - shows it), or use StrictHostKeyChecking accept-new, or pin it with BACKSTOP_SFTP_HOST_FINGERPRINT"
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
            "unknown host key for backup1: OpenSSH refused it (No ED25519 host key is known for [127.0.0.2]:2222 and you have requested strict checking.)"
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

    /// A server that never answers: the watchdog ends "ssh" (here a shell that sleeps) and the
    /// session fails naming the stall, instead of waiting for ever.
    #[test]
    fn a_session_that_stalls_is_ended() {
        let ssh = SshCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "exec sleep 60".into()],
            host: "stuck".into(),
            who: "stuck".into(),
            stall: Duration::from_secs(1),
        };
        let started = Instant::now();
        let err = Session::start(&ssh).expect_err("no answer");
        assert_eq!(err, "stuck: no progress for 1 s, ssh was ended");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    fn fake(program: &str, args: &[&str]) -> SshCommand {
        SshCommand {
            program: program.into(),
            args: args.iter().map(|a| a.into()).collect(),
            host: "fake".into(),
            who: "fake".into(),
            stall: Duration::from_secs(30),
        }
    }

    #[test]
    fn ssh_inherits_only_the_variables_it_needs() {
        let out = fake("/usr/bin/env", &[]).base().output().expect("run env");
        let text = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, _)| n)
            .collect();
        for n in &names {
            assert!(
                PASSED_ENV.contains(n) || n.starts_with("LC_"),
                "ssh would inherit {n}"
            );
        }
        // What it needs is there (this test runs under cargo, whose variables are not).
        if std::env::var_os("PATH").is_some() {
            assert!(names.contains(&"PATH"), "{names:?}");
        }
    }

    #[test]
    fn a_flood_on_stderr_is_kept_to_a_line_of_bounded_length() {
        let err = Session::start(&fake(
            "/bin/sh",
            &["-c", "head -c 8000000 /dev/zero | tr '\\0' x >&2; printf '\\n\\033[31mred\\n' >&2; exit 255"],
        ))
        .expect_err("no session");
        assert!(err.len() < 600, "{} bytes", err.len());
        assert!(err.ends_with("?[31mred"), "{err}");
    }

    /// An SFTP server in Python that answers every READDIR with entries named `.`.
    const DOTS: &str = r#"
import struct, sys
i, o = sys.stdin.buffer, sys.stdout.buffer
def send(t, body):
    o.write(struct.pack(">IB", len(body) + 1, t) + body); o.flush()
def s(b): return struct.pack(">I", len(b)) + b
while True:
    head = i.read(5)
    if len(head) < 5: break
    n, t = struct.unpack(">IB", head)
    body = i.read(n - 1)
    if t == 1: send(2, struct.pack(">I", 3)); continue
    rid = body[:4]
    if t == 11: send(102, rid + s(b"h"))
    elif t == 12: send(104, rid + struct.pack(">I", 1000) + (s(b".") + s(b".") + struct.pack(">I", 0)) * 1000)
    else: send(101, rid + struct.pack(">I", 0) + s(b"") + s(b""))
"#;

    #[test]
    fn a_listing_of_only_dots_ends() {
        let mut session = Session::start(&fake("python3", &["-c", DOTS])).expect("fake server");
        let err = session.read_dir("/repo").expect_err("endless listing");
        assert!(
            matches!(&err, Failure::Status { message, .. } if message.contains("more than 2000000 entries")),
            "{err:?}"
        );
    }
}
