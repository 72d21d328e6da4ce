//! A loopback sshd for the SFTP rows.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An sshd on 127.0.0.1 for the SFTP row, with its own keys; stopped by PID on drop.
pub struct Sshd {
    child: std::process::Child,
    pub config: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_sshd(work: &Path) -> Option<Sshd> {
    if !Path::new("/usr/sbin/sshd").exists() {
        return None;
    }
    let dir = work.join("sshd");
    fs::create_dir_all(&dir).ok()?;
    fs::create_dir_all("/run/sshd").ok()?;
    for key in ["host", "client"] {
        let path = dir.join(key);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    fs::copy(dir.join("client.pub"), dir.join("authorized_keys")).ok()?;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let cfg = dir.join("sshd_config");
    fs::write(&cfg, format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n",
        d = dir.display()
    )).ok()?;
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let host_key = fs::read_to_string(dir.join("host.pub")).ok()?;
    fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{port} {host_key}"),
    )
    .ok()?;
    let config = dir.join("ssh_config");
    fs::write(&config, format!(
        "Host benchhost\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d}/client\n  UserKnownHostsFile {d}/known_hosts\n",
        d = dir.display()
    )).ok()?;
    Some(Sshd { child, config })
}
