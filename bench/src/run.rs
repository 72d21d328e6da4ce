//! Running the measured commands.

use std::path::Path;

pub const PASSWORD: &str = "benchmark only";
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug)]
pub struct Measure {
    pub seconds: f64,
    pub rss_mib: f64,
}

/// Runs `sh -c script` under GNU time; fails on a non-zero exit.
pub fn timed(label: &str, script: &str) -> Measure {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "BENCH %e %M", "sh", "-c", script])
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_FROM_PASSWORD", PASSWORD)
        .env("RUSTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", crate::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", crate::s3::SECRET_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run /usr/bin/time (apt install time): {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{label} failed:\n{err}");
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("BENCH "))
        .unwrap_or_else(|| panic!("{label}: no timing in\n{err}"));
    let mut parts = line.split_whitespace().skip(1);
    let seconds: f64 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let kib: f64 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Measure {
        seconds,
        rss_mib: kib / 1024.0,
    }
}

pub fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Runs `sh -c script`; its stdout. Fails on a non-zero exit.
pub fn capture(label: &str, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RUSTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(
        out.status.success(),
        "{label} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Before every measured step: flushes what earlier steps left dirty (no step pays for
/// another's writes) and, where allowed (root), empties the page cache, so every tool reads the
/// image and its repository from the disk, as a backup at 3 a.m. or a restore weeks later does.
pub fn settle() {
    let _ = Command::new("sh")
        .args([
            "-c",
            "sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true",
        ])
        .status();
}
