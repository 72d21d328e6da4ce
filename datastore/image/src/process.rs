//! Processes named so that a reused PID is never taken for them: the PID, the process's
//! start time (`/proc/<pid>/stat`, clock ticks since boot) and the boot it ran in. A PID file,
//! a lock or a state row records a [`ProcessId`]; "is it still running?" compares all three,
//! and a signal goes through a pidfd opened before the identity is checked, so it reaches that
//! very process or nobody (see `docs/security.md`).

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

/// A process, as long as it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start: u64,
    /// The first 64 bits of the kernel's boot id.
    pub boot: u64,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), first 64 bits; 0 when unreadable.
pub fn boot_id() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|t| u64::from_str_radix(t.trim().replace('-', "").get(..16)?, 16).ok())
        .unwrap_or(0)
}

/// This machine's host name, as restic records it in locks and snapshots.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A name for this machine that stays the same across boots: `/etc/machine-id` (or dbus's
/// copy), else the host name; only `[0-9A-Za-z._-]`, at most 64 characters. Records kept in a
/// home directory that several machines share (an NFS-mounted /var/lib/one) are told apart by
/// it.
pub fn machine_name() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let name = read("/etc/machine-id")
        .or_else(|| read("/var/lib/dbus/machine-id"))
        .or_else(|| read("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|| "unknown".into());
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect()
}

/// This process's PID namespace (the inode of `/proc/self/ns/pid`); 0 when unreadable. Two
/// containers on one machine share a boot but not a PID namespace.
pub fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

/// The start time of `pid` from `/proc/<pid>/stat` (field 22), if it runs: a zombie (it
/// ended, its parent has not reaped it yet) does not.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl ProcessId {
    /// This process.
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            pid,
            start: start_time(pid).unwrap_or(0),
            boot: boot_id(),
        }
    }

    /// The process that has `pid` now, if one does.
    pub fn of(pid: u32) -> Option<ProcessId> {
        Some(ProcessId {
            pid,
            start: start_time(pid)?,
            boot: boot_id(),
        })
    }

    /// Whether this very process still runs (not another one that got its PID).
    pub fn is_running(&self) -> bool {
        ProcessId::of(self.pid) == Some(*self)
    }

    /// Sends `signal` to this process, and to no other: the pidfd is opened first, then the
    /// identity checked, so a PID reused in between is refused. Ok(false) when it is gone.
    pub fn signal(&self, signal: rustix::process::Signal) -> io::Result<bool> {
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(false);
        };
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if !self.is_running() {
            return Ok(false);
        }
        match rustix::process::pidfd_send_signal(&fd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout` for the process to end; whether it did.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Parses what [`fmt::Display`] writes: `<pid>.<start>.<boot hex>`.
    pub fn parse(text: &str) -> Option<ProcessId> {
        let mut parts = text.trim().split('.');
        let id = ProcessId {
            pid: parts.next()?.parse().ok()?,
            start: parts.next()?.parse().ok()?,
            boot: u64::from_str_radix(parts.next()?, 16).ok()?,
        };
        parts.next().is_none().then_some(id)
    }
}

/// What [`output_bounded`] gives back: the exit status, stdout, and stderr cut at 64 KiB.
#[derive(Debug)]
pub struct BoundedOutput {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with stdin closed, as `Command::output` does, but for a program whose answer
/// comes from someone not trusted (a server it asks): more than `max_stdout` bytes on stdout,
/// or no end within `timeout` (of the program and of its output), kills it and is an error
/// saying which. stderr is kept up to 64 KiB. On every way out the program is killed if it
/// still runs, and reaped.
pub fn output_bounded(
    cmd: &mut std::process::Command,
    what: &str,
    max_stdout: u64,
    timeout: Duration,
) -> io::Result<BoundedOutput> {
    use std::io::Read;
    use std::process::Stdio;
    /// Kills and reaps the program when dropped before it was waited for.
    struct Reaped(Option<std::process::Child>);
    impl Drop for Reaped {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {what}: {e}")))?;
    let mut child = Reaped(Some(child));
    let running = child.0.as_mut().expect("just spawned");
    let (Some(out), Some(err)) = (running.stdout.take(), running.stderr.take()) else {
        return Err(io::Error::other(format!("{what}: no pipes")));
    };
    let stdout = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.take(max_stdout + 1).read_to_end(&mut buf).map(|_| buf)
    });
    let stderr = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut err = err;
        let _ = (&mut err).take(64 << 10).read_to_end(&mut buf);
        // Whatever comes past the cut is read and dropped, so the program never blocks on it.
        let _ = io::copy(&mut err, &mut io::sink());
        buf
    });
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} gave no answer within {} s", timeout.as_secs()),
        )
    };
    // Until stdout ends (at its end, or at the cap): a program that exits while something it
    // started holds the pipe is waited for no longer than the deadline either.
    while !stdout.is_finished() {
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = match stdout.join() {
        Ok(Ok(bytes)) if bytes.len() as u64 <= max_stdout => bytes,
        Ok(Ok(_)) => {
            return Err(io::Error::other(format!(
                "{what} printed more than {} MiB",
                max_stdout >> 20
            )));
        }
        Ok(Err(e)) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read what {what} printed: {e}"),
            ));
        }
        Err(_) => return Err(io::Error::other(format!("{what}: the reader failed"))),
    };
    let status = loop {
        let running = child.0.as_mut().expect("not yet reaped");
        if let Some(status) = running.try_wait()? {
            child.0 = None;
            break status;
        }
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // stderr ends with the program unless something it started holds it: then it is not
    // waited for past the deadline.
    while !stderr.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = if stderr.is_finished() {
        stderr.join().unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(BoundedOutput {
        status,
        stdout,
        stderr,
    })
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{:016x}", self.pid, self.start, self.boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An untrusted program's answer: kept when it is small and on time; too much output or
    /// no end in time kills the program and says which, at once.
    #[test]
    fn bounded_output_is_cut_in_size_and_time() {
        use std::process::Command;
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        let out = output_bounded(
            &mut sh("echo hi; echo oops >&2"),
            "sh",
            1 << 20,
            Duration::from_secs(30),
        )
        .expect("runs");
        assert!(out.status.success());
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice()),
            (&b"hi\n"[..], &b"oops\n"[..])
        );

        let started = Instant::now();
        let e = output_bounded(
            &mut Command::new("yes"),
            "yes",
            1 << 20,
            Duration::from_secs(60),
        )
        .expect_err("too much");
        assert_eq!(e.to_string(), "yes printed more than 1 MiB");
        assert!(started.elapsed() < Duration::from_secs(30));

        // A program that never ends, one that closes stdout and runs on, and one that ends
        // while what it started (here for 2 s) holds its stdout.
        for script in ["sleep 30", "exec >&-; sleep 30", "sleep 2 & echo hi"] {
            let started = Instant::now();
            let e = output_bounded(&mut sh(script), "sh", 1 << 20, Duration::from_millis(300))
                .expect_err(script);
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{script}: {e}");
            assert_eq!(e.to_string(), "sh gave no answer within 0 s");
            assert!(started.elapsed() < Duration::from_secs(10), "{script}");
        }
    }

    #[test]
    fn this_process_runs_and_its_identity_round_trips() {
        let me = ProcessId::current();
        assert!(me.start > 0 && me.is_running());
        assert_eq!(ProcessId::parse(&me.to_string()), Some(me));
        for bad in ["", "1", "1.2", "x.2.3", "1.2.zz", "1.2.3.4"] {
            assert_eq!(ProcessId::parse(bad), None, "{bad}");
        }
    }

    /// A PID that now belongs to another process (another start time) is neither running
    /// as far as the record goes, nor signalled.
    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let real = ProcessId::of(child.id()).expect("runs");
        let stale = ProcessId {
            start: real.start.wrapping_sub(1),
            ..real
        };
        assert!(!stale.is_running());
        assert!(!stale.signal(rustix::process::Signal::TERM).expect("signal"));
        assert!(
            child.try_wait().expect("wait").is_none(),
            "it was signalled"
        );
        let other_boot = ProcessId {
            boot: real.boot ^ 1,
            ..real
        };
        assert!(!other_boot.is_running());
        assert!(real.signal(rustix::process::Signal::TERM).expect("signal"));
        let _ = child.wait();
        assert!(!real.is_running());
        assert!(!real.signal(rustix::process::Signal::TERM).expect("gone"));
    }
}
