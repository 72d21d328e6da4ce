//! restic-compatible repository locks (`locks/<id>`), so backstop and restic never step on
//! each other: an exclusive lock (check, forget, prune) excludes every other lock; any number
//! of non-exclusive locks (backup, restore, dump) may coexist.
//!
//! The lock file is an encrypted unpacked file holding
//! `{time, exclusive, hostname, username, pid, uid, gid}`, as restic writes it
//! (restic `internal/restic/lock.go`). A lock is stale, and ignored, when it is older than
//! 30 minutes, or when it was made on this host by a process that no longer exists. A held lock
//! is refreshed every 5 minutes (a new file, then the old one removed). Stale locks met while
//! locking are removed: restic 0.14 refuses to lock while any lock file exists, stale or not.

use crate::repo::Repo;
use crate::repo::format::RepoId;
use crate::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

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
}

impl LockFile {
    fn new(exclusive: bool) -> LockFile {
        LockFile {
            time: jiff::Timestamp::now().to_string(),
            exclusive,
            hostname: crate::repo::writer::hostname(),
            username: std::env::var("USER").unwrap_or_default(),
            pid: i64::from(rustix::process::getpid().as_raw_nonzero().get()),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    /// Whether this lock no longer counts.
    pub fn is_stale(&self, now: jiff::Timestamp, this_host: &str) -> bool {
        let Ok(time) = self.time.parse::<jiff::Timestamp>() else {
            return true;
        };
        let age = now.duration_since(time);
        if age > jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or(jiff::SignedDuration::MAX) {
            return true;
        }
        self.hostname == this_host && !process_exists(self.pid)
    }

    /// Stands for a lock file that cannot be read: it might be exclusive, so it conflicts.
    fn unreadable(id: &RepoId) -> LockFile {
        LockFile {
            time: String::new(),
            exclusive: true,
            hostname: format!(
                "an unreadable lock file {} (remove it with `backstop repo unlock` if nothing uses the repository)",
                &id.to_hex()[..8]
            ),
            username: String::new(),
            pid: 0,
            uid: 0,
            gid: 0,
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

fn process_exists(pid: i64) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(rustix::io::Errno::SRCH) => false,
        // EPERM: it exists, under another user.
        Err(_) => true,
    }
}

/// How long to keep trying when the repository is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLock(pub Duration);

/// A lock this process holds; refreshed in the background, removed on drop.
#[derive(Debug)]
pub struct Lock {
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

/// The first live lock that conflicts with taking one (`exclusive` or not), other than `ours`.
fn conflict(
    repo: &Repo,
    exclusive: bool,
    ours: Option<&RepoId>,
) -> Result<Option<LockFile>, Error> {
    let now = jiff::Timestamp::now();
    let host = crate::repo::writer::hostname();
    for id in repo.backend().list_locks()? {
        if Some(&id) == ours {
            continue;
        }
        let lock: LockFile = match repo.load_lock(&id) {
            Ok(l) => l,
            // Removed while we looked: no conflict.
            Err(_) if !repo.backend().list_locks()?.contains(&id) => continue,
            // Unreadable: maybe still being written (restic writes lock files in place), maybe
            // damaged. It may be exclusive, so it conflicts; `unlock` removes a damaged one.
            Err(_) => return Ok(Some(LockFile::unreadable(&id))),
        };
        if lock.is_stale(now, &host) {
            // Left by a killed process: remove it, so restic (which does not skip stale locks
            // on its own) is not blocked by it either.
            let _ = repo.backend().remove_lock(&id);
            continue;
        }
        if exclusive || lock.exclusive {
            return Ok(Some(lock));
        }
    }
    Ok(None)
}

impl Repo {
    fn load_lock(&self, id: &RepoId) -> Result<LockFile, Error> {
        let sealed = self.backend().read_lock(id)?;
        self.decode_unpacked(&sealed, &format!("lock {id}"))
    }

    fn write_lock(&self, lock: &LockFile) -> Result<RepoId, Error> {
        let json = serde_json::to_vec(lock)
            .map_err(|e| Error::new(ErrorKind::Repository, format!("cannot encode a lock: {e}")))?;
        let sealed = self.seal(&json)?;
        let id = RepoId::of(&sealed);
        self.backend().write_lock(&id, &sealed)?;
        Ok(id)
    }

    /// Takes a lock, waiting with backoff (5 s, doubling to 60 s) up to `retry` while another
    /// holder conflicts; then fails naming the holder.
    pub fn lock(&self, exclusive: bool, retry: RetryLock) -> Result<Lock, Error> {
        let deadline = Instant::now() + retry.0;
        let mut pause = Duration::from_secs(5);
        loop {
            match self.try_lock(exclusive)? {
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

    fn try_lock(&self, exclusive: bool) -> Result<Result<Lock, LockFile>, Error> {
        if let Some(holder) = conflict(self, exclusive, None)? {
            return Ok(Err(holder));
        }
        let id = self.write_lock(&LockFile::new(exclusive))?;
        std::thread::sleep(self.backend().lock_settle());
        if let Some(holder) = conflict(self, exclusive, Some(&id))? {
            let _ = self.backend().remove_lock(&id);
            return Ok(Err(holder));
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let repo = self.clone();
        let refresher = std::thread::spawn(move || {
            let mut current = id;
            loop {
                match stopped.recv_timeout(REFRESH_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Ok(new) = repo.write_lock(&LockFile::new(exclusive)) {
                            let _ = repo.backend().remove_lock(&current);
                            current = new;
                        }
                    }
                    _ => {
                        let _ = repo.backend().remove_lock(&current);
                        return;
                    }
                }
            }
        });
        Ok(Ok(Lock {
            stop: Some(stop),
            refresher: Some(refresher),
        }))
    }

    /// Removes stale locks (all locks with `all`); returns how many.
    pub fn unlock(&self, all: bool) -> Result<usize, Error> {
        let now = jiff::Timestamp::now();
        let host = crate::repo::writer::hostname();
        let mut removed = 0;
        for id in self.backend().list_locks()? {
            let stale = self
                .load_lock(&id)
                .map(|l| l.is_stale(now, &host))
                .unwrap_or(true);
            if all || stale {
                self.backend().remove_lock(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(time: &str, host: &str, pid: i64) -> LockFile {
        LockFile {
            time: time.into(),
            exclusive: false,
            hostname: host.into(),
            username: String::new(),
            pid,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn staleness_from_a_table() {
        let now: jiff::Timestamp = "2026-11-21T12:00:00Z".parse().expect("time");
        let me = i64::from(rustix::process::getpid().as_raw_nonzero().get());
        let cases = [
            (
                lock("2026-11-21T11:59:00Z", "here", me),
                false,
                "fresh, live process",
            ),
            (
                lock("2026-11-21T11:29:00Z", "here", me),
                true,
                "older than 30 minutes",
            ),
            (
                lock("2026-11-21T11:59:00Z", "here", 999_999_999),
                true,
                "this host, dead pid",
            ),
            (
                lock("2026-11-21T11:59:00Z", "elsewhere", 999_999_999),
                false,
                "other host: pid unknowable",
            ),
            (lock("garbage", "here", me), true, "unreadable time"),
        ];
        for (l, stale, why) in cases {
            assert_eq!(l.is_stale(now, "here"), stale, "{why}");
        }
    }
}
