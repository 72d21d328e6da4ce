//! RESTIC_BWLIMIT: one token bucket shared by every connection of a backend (local, SFTP, S3), in
//! restic's unit (KiB/s), for reads and writes together.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_sec: f64,
    /// Tokens (bytes; negative while in debt) and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Bandwidth {
    /// A limit of `kib` KiB/s; none for 0.
    pub fn kib_per_sec(kib: u64) -> Option<Bandwidth> {
        (kib > 0).then(|| Bandwidth {
            bytes_per_sec: kib as f64 * 1024.0,
            state: Mutex::new((0.0, Instant::now())),
        })
    }

    /// Waits until `bytes` may pass. The bucket holds at most one second of tokens.
    pub fn take(&self, bytes: usize) {
        let burst = self.bytes_per_sec;
        let wait = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let (tokens, last) = *st;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.bytes_per_sec)
                .min(burst)
                - bytes as f64;
            *st = (tokens, now);
            if tokens < 0.0 {
                Duration::from_secs_f64(-tokens / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bandwidth_limit_paces() {
        let b = Bandwidth::kib_per_sec(1024).expect("a limit");
        let started = Instant::now();
        for _ in 0..4 {
            b.take(256 * 1024);
        }
        // 1 MiB at 1 MiB/s from an empty bucket takes about a second; never much less.
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert!(Bandwidth::kib_per_sec(0).is_none());
    }
}
