//! restic-compatible repository locks (`locks/<id>`), so backstop and restic never step on
//! each other: an exclusive lock (check, forget, prune) excludes every other lock; any number
//! of non-exclusive locks (backup, restore, dump) may coexist.
//!
//! The lock file is an encrypted unpacked file holding
//! `{time, exclusive, hostname, username, pid, uid, gid}`, as restic writes it
//! (restic `internal/restic/lock.go`), and, in backstop's own locks, `backstop_process` (PID,
//! start time and boot: [`ProcessId`]) and `backstop_pidns` (the PID namespace), which restic
//! ignores. A held lock is refreshed every 5 minutes: a new file, then the old one removed.
//!
//! When is a lock stale (see `docs/locking.md`)? Never by comparing clocks of different
//! machines:
//! - its file has not been renewed for 30 minutes, measured on the storage's own clock: the
//!   file's modification time against that of the lock this process has just written
//!   (a live holder renews its file every 5 minutes);
//! - or it is one of backstop's locks made in this very boot and PID namespace, and its
//!   process (PID and start time) no longer runs. A hostname says nothing: two machines may
//!   share one, so restic's own "same hostname, dead PID" rule is not used.
//!
//! Stale locks met while locking are removed (restic 0.14 refuses to lock while any lock file
//! exists, stale or not).
//!
//! A lock can be lost: its file removed by someone else (`restic unlock --remove-all`), or a
//! refresh failing. The refresher notices within one refresh; [`Lock::check`] looks at the
//! storage itself, and the writer calls it right before the index and the snapshot, so a
//! backup whose lock was lost writes no snapshot.

use crate::Repo;
use crate::format::RepoId;
use crate::{Error, ErrorKind};
use backstop_image::process::{ProcessId, pid_namespace};
use backstop_storage::LockEntry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// The largest lock file read (restic's are a few hundred bytes); a bigger one is refused
/// unread, as damaged.
pub const MAX_LOCK_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub time: String,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: i64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// backstop's locks: the holder's [`ProcessId`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backstop_process: Option<String>,
    /// backstop's locks: the holder's PID namespace (`/proc/self/ns/pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backstop_pidns: Option<u64>,
}

impl LockFile {
    fn new(exclusive: bool) -> LockFile {
        let me = ProcessId::current();
        LockFile {
            time: jiff::Timestamp::now().to_string(),
            exclusive,
            hostname: backstop_image::process::hostname(),
            username: std::env::var("USER").unwrap_or_default(),
            pid: i64::from(me.pid),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            backstop_process: Some(me.to_string()),
            backstop_pidns: Some(pid_namespace()),
        }
    }

    /// Whether this lock no longer counts. `age` is how long its file has gone unrenewed on
    /// the storage's clock (None when the storage keeps no times: then the lock's own time
    /// against this machine's clock is all there is).
    pub fn is_stale(&self, age: Option<Duration>, now: jiff::Timestamp) -> bool {
        let too_old = match age {
            Some(age) => age > STALE_AFTER,
            None => match self.time.parse::<jiff::Timestamp>() {
                Ok(time) => {
                    now.duration_since(time)
                        > jiff::SignedDuration::try_from(STALE_AFTER)
                            .unwrap_or(jiff::SignedDuration::MAX)
                }
                Err(_) => true,
            },
        };
        too_old || self.holder_is_gone()
    }

    /// Whether the lock is backstop's, from this boot and PID namespace, and its process no
    /// longer runs. Anything else (restic's locks, other machines, other containers) cannot be
    /// told from here and only goes stale with age.
    fn holder_is_gone(&self) -> bool {
        let Some(holder) = self.backstop_process.as_deref().and_then(ProcessId::parse) else {
            return false;
        };
        holder.boot == backstop_image::process::boot_id()
            && self.backstop_pidns == Some(pid_namespace())
            && !holder.is_running()
    }

    /// Stands for a lock file that cannot be read: it might be exclusive, so it conflicts.
    fn unreadable(id: &RepoId, size: u64) -> LockFile {
        let what = if size > MAX_LOCK_FILE {
            format!(
                "a lock file {} of {size} bytes, too large to be a lock",
                &id.to_hex()[..8]
            )
        } else {
            format!("an unreadable lock file {}", &id.to_hex()[..8])
        };
        LockFile {
            time: String::new(),
            exclusive: true,
            hostname: format!(
                "{what} (remove it with `backstop repo unlock` if nothing uses the repository)"
            ),
            username: String::new(),
            pid: 0,
            uid: 0,
            gid: 0,
            backstop_process: None,
            backstop_pidns: None,
        }
    }

    fn describe(&self) -> String {
        if self.pid == 0 && self.time.is_empty() {
            return format!("repository locked by {}", self.hostname);
        }
        format!(
            "repository locked by {} pid {} since {}{}",
            self.hostname,
            self.pid,
            self.time,
            if self.exclusive { " (exclusive)" } else { "" }
        )
    }
}

/// How long to keep trying when the repository is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLock(pub Duration);

/// What a held lock knows about itself, shared with its refresher.
#[derive(Debug)]
struct Held {
    /// The lock file that stands for this lock now.
    current: Mutex<RepoId>,
    lost: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Held {
    fn lose(&self, why: String) {
        if let Ok(mut w) = self.why.lock() {
            w.get_or_insert(why);
        }
        self.lost.store(true, Ordering::SeqCst);
    }

    fn current(&self) -> Option<RepoId> {
        self.current.lock().ok().map(|c| *c)
    }
}

/// A lock this process holds; refreshed in the background, removed on drop.
#[derive(Debug)]
pub struct Lock {
    repo: Repo,
    held: Arc<Held>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Dropping the sender wakes the refresher, which removes the lock file and ends.
        self.stop.take();
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
    }
}

impl Lock {
    /// Whether the refresher found the lock lost (cheap: for loops).
    pub fn is_lost(&self) -> bool {
        self.held.lost.load(Ordering::SeqCst)
    }

    /// Checks on the storage that this lock still stands: not lost, its file still there. Call
    /// it right before a step that must not happen without the lock (an index, a snapshot, a
    /// deletion).
    pub fn check(&self) -> Result<(), Error> {
        if !self.is_lost() {
            // The refresher writes the new lock file, makes it current, then removes the old
            // one; a listing that raced it misses the id read before it but holds the one
            // current after it. Either in the listing means the lock stands.
            let present = match self.held.current() {
                Some(before) => {
                    let listed = self.repo.backend().list_locks()?;
                    let after = self.held.current();
                    listed.iter().any(|e| e.id == before || Some(e.id) == after)
                }
                None => false,
            };
            if !present {
                self.held
                    .lose("its lock file was removed by someone else".into());
            }
        }
        if self.is_lost() {
            let why = self
                .held
                .why
                .lock()
                .ok()
                .and_then(|w| w.clone())
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "the repository lock of {} was lost ({why}); nothing more was written",
                    self.repo.location()
                ),
            ));
        }
        Ok(())
    }
}

/// The first live lock that conflicts with taking one (`exclusive` or not), other than
/// `ours`, whose file the storage dated `our_time` (the storage's clock, "now").
fn conflict(
    repo: &Repo,
    exclusive: bool,
    ours: &RepoId,
    our_time: Option<SystemTime>,
) -> Result<Option<LockFile>, Error> {
    let now = jiff::Timestamp::now();
    for entry in repo.backend().list_locks()? {
        if entry.id == *ours {
            continue;
        }
        let lock = match repo.load_lock(&entry) {
            Ok(l) => l,
            // Removed while we looked: no conflict.
            Err(_)
                if !repo
                    .backend()
                    .list_locks()?
                    .iter()
                    .any(|e| e.id == entry.id) =>
            {
                continue;
            }
            // Unreadable: maybe still being written (restic writes lock files in place), maybe
            // damaged or planted. It may be exclusive, so it conflicts; `unlock` removes it.
            Err(_) => return Ok(Some(LockFile::unreadable(&entry.id, entry.size))),
        };
        if lock.is_stale(age(&entry, our_time), now) {
            // Left by a killed process: remove it, so restic (which does not skip stale locks
            // on its own) is not blocked by it either.
            let _ = repo.backend().remove_lock(&entry.id);
            continue;
        }
        if exclusive || lock.exclusive {
            return Ok(Some(lock));
        }
    }
    Ok(None)
}

/// How long a lock file has gone unrenewed, on the storage's clock.
fn age(entry: &LockEntry, now: Option<SystemTime>) -> Option<Duration> {
    let (now, modified) = (now?, entry.modified?);
    Some(now.duration_since(modified).unwrap_or(Duration::ZERO))
}

impl Repo {
    fn load_lock(&self, entry: &LockEntry) -> Result<LockFile, Error> {
        if entry.size > MAX_LOCK_FILE {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("lock {} is {} bytes", entry.id, entry.size),
            ));
        }
        let sealed = self.backend().read_lock(&entry.id, MAX_LOCK_FILE)?;
        self.decode_unpacked(&sealed, MAX_LOCK_FILE, &format!("lock {}", entry.id))
    }

    /// Writes a lock file; its id and the time the storage gave it.
    fn write_lock(&self, lock: &LockFile) -> Result<(RepoId, Option<SystemTime>), Error> {
        let json = serde_json::to_vec(lock)
            .map_err(|e| Error::new(ErrorKind::Repository, format!("cannot encode a lock: {e}")))?;
        let sealed = self.seal(&json)?;
        let id = RepoId::of(&sealed);
        let time = self.backend().write_lock(&id, &sealed)?;
        Ok((id, time))
    }

    /// Takes a lock, waiting with backoff (5 s, doubling to 60 s) up to `retry` while another
    /// holder conflicts; then fails naming the holder.
    pub fn lock(&self, exclusive: bool, retry: RetryLock) -> Result<Lock, Error> {
        self.lock_refreshed(exclusive, retry, REFRESH_EVERY)
    }

    /// [`Repo::lock`], renewed every `refresh` (tests shorten it).
    pub fn lock_refreshed(
        &self,
        exclusive: bool,
        retry: RetryLock,
        refresh: Duration,
    ) -> Result<Lock, Error> {
        let deadline = Instant::now() + retry.0;
        let mut pause = Duration::from_secs(5);
        loop {
            match self.try_lock(exclusive, refresh)? {
                Ok(lock) => return Ok(lock),
                Err(holder) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::new(ErrorKind::Locked, holder.describe()));
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    fn try_lock(
        &self,
        exclusive: bool,
        refresh: Duration,
    ) -> Result<Result<Lock, LockFile>, Error> {
        // Ours is written first: its time on the storage is the "now" other locks' ages are
        // measured against, and a holder that looks after us sees ours.
        let (id, our_time) = self.write_lock(&LockFile::new(exclusive))?;
        std::thread::sleep(self.backend().lock_settle());
        match conflict(self, exclusive, &id, our_time) {
            Ok(None) => {}
            Ok(Some(holder)) => {
                let _ = self.backend().remove_lock(&id);
                return Ok(Err(holder));
            }
            Err(e) => {
                let _ = self.backend().remove_lock(&id);
                return Err(e);
            }
        }
        let held = Arc::new(Held {
            current: Mutex::new(id),
            lost: AtomicBool::new(false),
            why: Mutex::new(None),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let repo = self.clone();
        let shared = held.clone();
        let refresher = std::thread::spawn(move || {
            refresh_until_stopped(&repo, &shared, exclusive, refresh, &stopped)
        });
        Ok(Ok(Lock {
            repo: self.clone(),
            held,
            stop: Some(stop),
            refresher: Some(refresher),
        }))
    }

    /// Removes stale locks (all locks with `all`); returns how many.
    pub fn unlock(&self, all: bool) -> Result<usize, Error> {
        let now = jiff::Timestamp::now();
        // The storage's "now": the time it gives a lock file written this instant.
        let (probe, storage_now) = self.write_lock(&LockFile::new(false))?;
        let _ = self.backend().remove_lock(&probe);
        let mut removed = 0;
        for entry in self.backend().list_locks()? {
            if entry.id == probe {
                continue;
            }
            let stale = self
                .load_lock(&entry)
                .map(|l| l.is_stale(age(&entry, storage_now), now))
                .unwrap_or(true);
            if all || stale {
                self.backend().remove_lock(&entry.id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The refresher of a held lock: every `every`, checks its file is still there and writes a
/// new one in its place; marks the lock lost when either fails, or when it could not renew it
/// for longer than others wait before they call it stale. Removes the lock file when stopped.
fn refresh_until_stopped(
    repo: &Repo,
    held: &Held,
    exclusive: bool,
    every: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    loop {
        match stopped.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => {
                if let Some(id) = held.current() {
                    let _ = repo.backend().remove_lock(&id);
                }
                return;
            }
        }
        if held.lost.load(Ordering::SeqCst) {
            continue;
        }
        let Some(current) = held.current() else {
            continue;
        };
        match repo.backend().list_locks() {
            Ok(l) if l.iter().any(|e| e.id == current) => {}
            Ok(_) => {
                held.lose("its lock file was removed by someone else".into());
                continue;
            }
            Err(e) => {
                held.lose(format!("its lock file could not be listed: {e}"));
                continue;
            }
        }
        match repo.write_lock(&LockFile::new(exclusive)) {
            Ok((new, _)) => {
                if let Ok(mut c) = held.current.lock() {
                    *c = new;
                }
                let _ = repo.backend().remove_lock(&current);
            }
            Err(e) => held.lose(format!("renewing it failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(time: &str, process: Option<ProcessId>, pidns: u64) -> LockFile {
        LockFile {
            time: time.into(),
            exclusive: false,
            hostname: backstop_image::process::hostname(),
            username: String::new(),
            pid: process.map_or(4242, |p| i64::from(p.pid)),
            uid: 0,
            gid: 0,
            backstop_process: process.map(|p| p.to_string()),
            backstop_pidns: process.map(|_| pidns),
        }
    }

    #[test]
    fn staleness_from_a_table() {
        let now: jiff::Timestamp = "2026-11-21T12:00:00Z".parse().expect("time");
        let me = ProcessId::current();
        let ns = pid_namespace();
        let dead = ProcessId {
            start: me.start + 1,
            ..me
        };
        let other_boot = ProcessId {
            boot: me.boot ^ 1,
            ..dead
        };
        let min = |m: u64| Some(Duration::from_secs(m * 60));
        let cases = [
            (
                lock("2026-11-21T11:59:00Z", Some(me), ns),
                min(1),
                false,
                "fresh, live process",
            ),
            (
                lock("2026-11-21T11:59:00Z", Some(me), ns),
                min(31),
                true,
                "file not renewed for 31 minutes",
            ),
            // The lock's own time says nothing when the storage dates the file: another
            // machine's clock may be hours off.
            (
                lock("2026-11-21T01:00:00Z", Some(me), ns),
                min(2),
                false,
                "a skewed clock, renewed file",
            ),
            (
                lock("2026-11-21T11:59:00Z", Some(dead), ns),
                min(1),
                true,
                "this boot and namespace, process gone",
            ),
            (
                lock("2026-11-21T11:59:00Z", Some(dead), ns + 1),
                min(1),
                false,
                "another PID namespace: unknowable",
            ),
            (
                lock("2026-11-21T11:59:00Z", Some(other_boot), ns),
                min(1),
                false,
                "another boot or machine: unknowable",
            ),
            // restic's locks carry no process identity: a hostname collision must not make a
            // live lock on another machine look stale, so only age counts.
            (
                lock("2026-11-21T11:59:00Z", None, ns),
                min(1),
                false,
                "restic's lock, same hostname, any PID",
            ),
            (
                lock("2026-11-21T11:59:00Z", None, ns),
                min(45),
                true,
                "restic's lock, not renewed",
            ),
            // A storage without file times: the lock's time on this clock is all there is.
            (
                lock("2026-11-21T11:29:00Z", None, ns),
                None,
                true,
                "no file time, old lock",
            ),
            (
                lock("2026-11-21T11:59:00Z", None, ns),
                None,
                false,
                "no file time, fresh lock",
            ),
            (lock("garbage", None, ns), None, true, "unreadable time"),
        ];
        for (l, age, stale, why) in cases {
            assert_eq!(l.is_stale(age, now), stale, "{why}");
        }
    }
}
