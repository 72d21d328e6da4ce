//! A loopback S3 server (SeaweedFS's `weed mini`) for the S3 rows; stopped by PID on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The throwaway key pair of the benchmark's own server (handed to every tool through the
/// environment, never argv).
pub const ACCESS_KEY: &str = "benchaccess";
pub const SECRET_KEY: &str = "bench-secret-only";

pub struct S3 {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weed` on PATH, if any.
fn find_weed() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    })
}

/// A base port B with B..B+6 and B+10000.. free (weed mini's servers and their gRPC ports).
fn free_base() -> Option<u16> {
    (0..200u16).map(|i| 21000 + i * 37).find(|&base| {
        (0..7).all(|k| {
            std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + k + 10000)).is_ok()
        })
    })
}

pub fn start(work: &Path) -> Option<S3> {
    let weed = find_weed()?;
    let dir = work.join("s3");
    fs::create_dir_all(dir.join("data")).ok()?;
    fs::write(
        dir.join("s3.json"),
        format!(
            r#"{{"identities":[{{"name":"bench","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#
        ),
    )
    .ok()?;
    let base = free_base()?;
    let log = fs::File::create(dir.join("weed.log")).ok()?;
    let child = Command::new(weed)
        .arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
        ])
        .args([
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ])
        .arg(format!("-s3.port={base}"))
        .arg(format!("-master.port={}", base + 1))
        .arg(format!("-volume.port={}", base + 2))
        .arg(format!("-filer.port={}", base + 3))
        .arg(format!("-admin.port={}", base + 4))
        .arg(format!("-metricsPort={}", base + 5))
        .arg(format!(
            "-filer.localSocket={}",
            dir.join("filer.sock").display()
        ))
        .arg(format!("-s3.config={}", dir.join("s3.json").display()))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().ok()?)
        .stderr(log)
        .spawn()
        .ok()?;
    let server = S3 {
        child,
        endpoint: format!("http://127.0.0.1:{base}"),
    };
    // Ready when anonymous requests are refused (the keys are loaded).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let code = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
            ])
            .arg(format!("{}/", server.endpoint))
            .output()
            .ok()?;
        if code.stdout == b"403" {
            return Some(server);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
