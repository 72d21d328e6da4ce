//! The ssh sessions of this process, shared by every backend that reaches the same server
//! under the same ssh arguments: a sync job copying twelve repositories to one backup server
//! connects a few times, not twelve times five (each connection costs ssh and sshd a third
//! of a second of CPU).
//!
//! - A backend attaches with its number of sessions; the server's limit is the sum over the
//!   backends attached, so sharing never lowers what a backend may use.
//! - An operation takes an idle session. When none is idle it waits [`PATIENCE`] for one to
//!   come back (most operations take milliseconds), then a session is opened in the
//!   background; the operation takes whichever comes first, an opened one or one given back.
//! - When the last backend of a server goes, its idle sessions end, unless a
//!   [`KeepSessions`] guard is alive (a sync or verify run, which opens one repository after
//!   another): then they wait for the next backend and end with the guard.
//!
//! docs/sftp.md has the measurements.

use super::ConnectError;
use super::client::{Session, SshCommand, close_all};
use std::ffi::OsString;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an operation waits for a busy session to come back before one more is opened.
pub const PATIENCE: Duration = Duration::from_millis(25);

/// Every server this process holds sessions to.
static SERVERS: Mutex<Servers> = Mutex::new(Servers {
    keep: 0,
    list: Vec::new(),
});

struct Servers {
    /// [`KeepSessions`] guards alive.
    keep: usize,
    list: Vec<Arc<Server>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a pool was held leaves counts that are still the best there is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What makes two backends' sessions interchangeable: the same ssh, arguments and host.
type Key = (OsString, Vec<OsString>, String);

/// One server reached under one set of ssh arguments, and its sessions.
#[derive(Debug)]
pub struct Server {
    key: Key,
    /// The command every session runs (what [`super::resolve`] made of the configuration).
    pub ssh: SshCommand,
    /// The user OpenSSH logs in as.
    pub user: String,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<Session>,
    busy: usize,
    opening: usize,
    /// Operations that waited [`PATIENCE`] and still have no session.
    impatient: usize,
    /// The sum of the attached backends' sessions.
    limit: usize,
    backends: usize,
    /// Why sessions opened in the background failed, each for one impatient operation.
    failures: Vec<String>,
}

impl State {
    fn live(&self) -> usize {
        self.idle.len() + self.busy + self.opening
    }
}

impl Server {
    /// The server `ssh` reaches, with a backend of `n` sessions attached. The configuration is
    /// read (`resolve`) once per server, when no backend of this process reaches it yet.
    pub fn attach(
        ssh: SshCommand,
        n: usize,
        resolve: impl FnOnce(&SshCommand) -> Result<(SshCommand, String), ConnectError>,
    ) -> Result<Arc<Server>, ConnectError> {
        let key: Key = (ssh.program.clone(), ssh.args.clone(), ssh.host.clone());
        let found = |servers: &Servers| servers.list.iter().find(|s| s.key == key).cloned();
        if let Some(server) = found(&lock(&SERVERS)) {
            server.join(n);
            return Ok(server);
        }
        // Outside the lock: `ssh -G` runs a process.
        let (ssh, user) = resolve(&ssh)?;
        let mut servers = lock(&SERVERS);
        if let Some(server) = found(&servers) {
            server.join(n);
            return Ok(server);
        }
        let server = Arc::new(Server {
            key,
            ssh,
            user,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        server.join(n);
        servers.list.push(server.clone());
        Ok(server)
    }

    fn join(&self, n: usize) {
        let mut st = lock(&self.state);
        st.backends += 1;
        st.limit += n;
    }

    /// A backend of `n` sessions goes. The last one ends the idle sessions unless they are
    /// kept.
    pub fn detach(self: &Arc<Self>, n: usize) {
        let ended = {
            let mut servers = lock(&SERVERS);
            let mut st = lock(&self.state);
            st.backends = st.backends.saturating_sub(1);
            st.limit = st.limit.saturating_sub(n);
            if st.backends > 0 || servers.keep > 0 {
                return;
            }
            if st.busy == 0 && st.opening == 0 {
                servers.list.retain(|s| !Arc::ptr_eq(s, self));
            }
            std::mem::take(&mut st.idle)
        };
        close_all(ended);
    }

    /// Whether a session is idle, busy or being opened: a backend that finds one needs no
    /// connection of its own to know the server is reachable.
    pub fn has_sessions(&self) -> bool {
        let (dead, any) = {
            let mut st = lock(&self.state);
            let (alive, dead) = split_alive(std::mem::take(&mut st.idle));
            st.idle = alive;
            (dead, st.idle.len() + st.busy > 0)
        };
        close_all(dead);
        any
    }

    /// Adds a session opened by the caller to the idle ones.
    pub fn add(&self, session: Session) {
        lock(&self.state).idle.push(session);
        self.changed.notify_all();
    }

    /// An idle session, or one given back or opened while waiting; given back when the
    /// [`Taken`] goes. `Err` is why the session opened for this operation could not connect.
    pub fn checkout(self: &Arc<Self>) -> Result<Taken<'_>, String> {
        self.take().map(|session| Taken {
            server: self,
            session: Some(session),
            sound: false,
        })
    }

    fn take(self: &Arc<Self>) -> Result<Session, String> {
        let since = Instant::now();
        let mut impatient = false;
        let mut st = lock(&self.state);
        let outcome = loop {
            if let Some(mut s) = st.idle.pop() {
                if !s.is_alive() {
                    // Ended while idle (the server went away): not worth a retry.
                    drop(st);
                    close_all(vec![s]);
                    st = lock(&self.state);
                    continue;
                }
                st.busy += 1;
                break Ok(s);
            }
            if impatient && let Some(e) = st.failures.pop() {
                break Err(e);
            }
            let waited = since.elapsed();
            if !impatient && (waited >= PATIENCE || st.live() == 0) {
                impatient = true;
                st.impatient += 1;
            }
            if impatient && st.opening < st.impatient && st.live() < st.limit.max(1) {
                st.opening += 1;
                let server = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("ssh-connect".into())
                    .spawn(move || {
                        let opened = Session::start(&server.ssh);
                        server.opened(opened);
                    });
                if let Err(e) = spawned {
                    st.opening -= 1;
                    st.failures.push(format!(
                        "cannot start a thread to reach {}: {e}",
                        self.ssh.who
                    ));
                }
                continue;
            }
            st = if impatient {
                self.changed.wait(st).unwrap_or_else(|p| p.into_inner())
            } else {
                self.changed
                    .wait_timeout(st, PATIENCE - waited)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            };
        };
        if impatient {
            st.impatient -= 1;
            if st.impatient == 0 {
                // Nobody is left to tell; the next operation tries afresh.
                st.failures.clear();
            }
        }
        outcome
    }

    /// A session opened in the background (or why it could not be).
    fn opened(self: &Arc<Self>, opened: Result<Session, String>) {
        let unwanted = {
            let mut servers = lock(&SERVERS);
            let mut st = lock(&self.state);
            st.opening -= 1;
            let unused = st.backends == 0 && servers.keep == 0;
            if unused && st.busy == 0 && st.opening == 0 {
                servers.list.retain(|s| !Arc::ptr_eq(s, self));
            }
            match opened {
                Ok(s) if unused => Some(s),
                Ok(s) => {
                    st.idle.push(s);
                    None
                }
                // Said to an operation still waiting; with none, the next one tries afresh.
                Err(e) if st.impatient > 0 => {
                    st.failures.push(e);
                    None
                }
                Err(_) => None,
            }
        };
        self.changed.notify_all();
        if let Some(s) = unwanted {
            close_all(vec![s]);
        }
    }

    /// Gives back a session taken with [`Server::checkout`]; `None` when it broke (it is
    /// ended).
    fn checkin(&self, session: Option<Session>) {
        let extra = {
            let mut st = lock(&self.state);
            st.busy = st.busy.saturating_sub(1);
            match session {
                // More sessions than the backends now attached may use: this one ends.
                Some(s) if st.live() >= st.limit.max(1) => Some(s),
                Some(s) => {
                    st.idle.push(s);
                    None
                }
                None => None,
            }
        };
        self.changed.notify_all();
        if let Some(s) = extra {
            close_all(vec![s]);
        }
    }
}

/// A session taken from a server's pool for one operation. Dropped, it goes back to the
/// pool when the operation said it is sound ([`Taken::sound`]) and it never broke; otherwise
/// (a failure, a panic in the operation) it is ended and its place freed.
#[derive(Debug)]
pub struct Taken<'a> {
    server: &'a Arc<Server>,
    session: Option<Session>,
    sound: bool,
}

impl Taken<'_> {
    pub fn session(&mut self) -> &mut Session {
        // Present until dropped.
        self.session.as_mut().expect("a taken session")
    }

    /// The operation ended with the session in order: it may serve the next one.
    pub fn sound(&mut self) {
        self.sound = true;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let session = self.session.take();
        match session {
            Some(s) if self.sound && !s.is_broken() => self.server.checkin(Some(s)),
            other => {
                self.server.checkin(None);
                drop(other);
            }
        }
    }
}

/// While alive, the idle sessions of a server no backend uses stay open for the next one.
#[derive(Debug)]
#[must_use = "sessions are kept only while the guard lives"]
pub struct KeepSessions(());

impl KeepSessions {
    pub fn new() -> KeepSessions {
        lock(&SERVERS).keep += 1;
        KeepSessions(())
    }
}

impl Default for KeepSessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepSessions {
    fn drop(&mut self) {
        let mut ended = Vec::new();
        {
            let mut servers = lock(&SERVERS);
            servers.keep -= 1;
            if servers.keep > 0 {
                return;
            }
            servers.list.retain(|server| {
                let mut st = lock(&server.state);
                if st.backends > 0 {
                    return true;
                }
                ended.append(&mut st.idle);
                st.busy > 0 || st.opening > 0
            });
        }
        close_all(ended);
    }
}

/// The sessions whose ssh still runs, and the others.
fn split_alive(sessions: Vec<Session>) -> (Vec<Session>, Vec<Session>) {
    let (mut alive, mut dead) = (Vec::new(), Vec::new());
    for mut s in sessions {
        if s.is_alive() {
            alive.push(s);
        } else {
            dead.push(s);
        }
    }
    (alive, dead)
}

/// How many sessions this process holds to servers (idle, busy or opening), for tests.
pub fn sessions() -> usize {
    lock(&SERVERS)
        .list
        .iter()
        .map(|s| lock(&s.state).live())
        .sum()
}
