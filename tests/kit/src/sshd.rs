//! A real OpenSSH server for tests, on a loopback address (127.0.0.2 unless told) with its own
//! keys, stopped by its PID.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Sshd {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
    /// A client configuration with the alias `backup1` for this server.
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub host_pub: PathBuf,
    pub client_key: PathBuf,
    pub addr: String,
    pub alias: String,
}

pub const ADDR: &str = "127.0.0.2";

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new ed25519 key pair without a passphrase: `path` and `path.pub`.
pub fn keygen(path: &Path) {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().expect("utf-8"),
        ],
    );
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        Sshd::start_on(dir, ADDR, "backup1")
    }

    /// A server on `addr` (127.0.0.0/8), reached as `alias` through `ssh_config`.
    pub fn start_on(dir: &Path, addr: &str, alias: &str) -> Sshd {
        Sshd::start_with(dir, addr, alias, None)
    }

    /// A server whose host key is also certified by the CA whose private key is `ca`
    /// (principals: the address and the alias); it offers the certificate to clients that
    /// know the CA.
    pub fn start_certified(dir: &Path, addr: &str, alias: &str, ca: &Path) -> Sshd {
        Sshd::start_with(dir, addr, alias, Some(ca))
    }

    fn start_with(dir: &Path, addr: &str, alias: &str, ca: Option<&Path>) -> Sshd {
        let dir = dir.join(format!("sshd-{alias}"));
        fs::create_dir_all(&dir).expect("dir");
        fs::create_dir_all("/run/sshd").expect("/run/sshd (privilege separation)");
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        for key in [&host_key, &client_key] {
            keygen(key);
        }
        fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        let certificate = ca.map(|ca| {
            run(
                "ssh-keygen",
                &[
                    "-q",
                    "-s",
                    ca.to_str().expect("utf-8"),
                    "-I",
                    alias,
                    "-h",
                    "-n",
                    &format!("{addr},{alias}"),
                    dir.join("host_ed25519.pub").to_str().expect("utf-8"),
                ],
            );
            format!(
                "HostCertificate {}\n",
                dir.join("host_ed25519-cert.pub").display()
            )
        });
        let port = TcpListener::bind((addr, 0))
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress {addr}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\n\
                 LogLevel DEBUG1\n{}",
                host_key.display(),
                dir.join("sshd.pid").display(),
                dir.join("authorized_keys").display(),
                certificate.unwrap_or_default()
            ),
        )
        .expect("sshd_config");
        let log = fs::File::create(dir.join("sshd.log")).expect("log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the openssh-server package must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((addr, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let host_pub = dir.join("host_ed25519.pub");
        let known_hosts = dir.join("known_hosts");
        let key = fs::read_to_string(&host_pub).expect("host key");
        fs::write(&known_hosts, format!("[{addr}]:{port} {key}")).expect("known_hosts");
        let ssh_config = dir.join("ssh_config");
        fs::write(
            &ssh_config,
            format!(
                "Host {alias}\n  HostName {addr}\n  Port {port}\n  User root\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
                client_key.display(),
                known_hosts.display()
            ),
        )
        .expect("ssh_config");
        Sshd {
            child,
            dir,
            port,
            ssh_config,
            known_hosts,
            host_pub,
            client_key,
            addr: addr.to_string(),
            alias: alias.to_string(),
        }
    }

    /// How many sessions asked this server to forward an ssh agent (its debug log records
    /// every `auth-agent-req@openssh.com` request a client makes).
    pub fn agent_requests(&self) -> usize {
        fs::read_to_string(self.dir.join("sshd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("session_input_channel_req") && l.contains("auth-agent-req@openssh.com")
            })
            .count()
    }

    /// This server's `Host` block for a shared client configuration.
    pub fn host_block(&self) -> String {
        self.block_with(&self.known_hosts)
    }

    pub fn block_with(&self, known_hosts: &Path) -> String {
        format!(
            "Host {}\n  HostName {}\n  Port {}\n  User root\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            self.alias,
            self.addr,
            self.port,
            self.client_key.display(),
            known_hosts.display()
        )
    }

    /// What this server's log says (its debug level records each session's requests).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The host key's fingerprint as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        run(
            "ssh-keygen",
            &["-l", "-f", self.host_pub.to_str().expect("utf-8")],
        )
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
    }

    /// A client config like `ssh_config` but with another known_hosts file.
    pub fn config_with_known_hosts(&self, name: &str, known_hosts: &Path) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, self.block_with(known_hosts)).expect("ssh_config");
        path
    }

    /// restic's `-o sftp.command=...` for this server.
    pub fn restic_sftp_command(&self) -> String {
        format!(
            "sftp.command=ssh -F {} {} -s sftp",
            self.ssh_config.display(),
            self.alias
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
