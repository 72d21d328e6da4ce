//! Notifications (docs/notifications.md): a backup job whose run leaves two of its three VMs in
//! ERROR (their host does not answer) sends one mail, over STARTTLS to a real SMTP server on
//! loopback (Python's aiosmtpd, which refuses mail before STARTTLS; its certificate from a
//! private CA), and one webhook (a JSON POST to a receiver on loopback): one message for the
//! run, naming both VMs and why they failed.

use crate::jobs::{cli_prefix, cloud_with_tm, datastore_template};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

/// The SMTP server: aiosmtpd with STARTTLS required; each message as `<n>.eml` with its
/// recipients and whether it came over TLS in `<n>.meta`.
const SMTP_SINK: &str = r#"
import os, ssl, sys, time
from aiosmtpd.controller import Controller
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
class Sink:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(out) if f.endswith(".eml")])
        with open(os.path.join(out, f"{n}.meta"), "w") as f:
            f.write("tls=%s rcpt=%s\n" % (session.ssl is not None, ",".join(envelope.rcpt_tos)))
        with open(os.path.join(out, f"{n}.eml.tmp"), "wb") as f:
            f.write(envelope.original_content)
        os.rename(os.path.join(out, f"{n}.eml.tmp"), os.path.join(out, f"{n}.eml"))
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True)
c.start()
open(os.path.join(out, "ready"), "w").close()
while True:
    time.sleep(1)
"#;

struct Smtp {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_smtp(dir: &Path, cert: &Path, key: &Path) -> Smtp {
    let script = dir.join("smtp_sink.py");
    fs::write(&script, SMTP_SINK).expect("script");
    let out = dir.join("mail");
    fs::create_dir_all(&out).expect("mail dir");
    let python = ["/opt/backstop-s3/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import aiosmtpd"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a python with aiosmtpd (.ci/run installs it)");
    let port = free_port();
    let child = Command::new(python)
        .arg(&script)
        .arg(port.to_string())
        .arg(cert)
        .arg(key)
        .arg(&out)
        .spawn()
        .expect("smtp sink");
    let smtp = Smtp { child, port, out };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !smtp.out.join("ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the SMTP server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    smtp
}

/// A receiver of webhooks on loopback: every request body it got.
/// Each request's first line and body.
type Received = Arc<Mutex<Vec<(String, String)>>>;

fn start_webhook() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let request = line.trim_end().to_string();
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            seen.lock()
                .expect("seen")
                .push((request, String::from_utf8_lossy(&body).into_owned()));
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn a_failing_job_sends_one_mail_over_starttls_and_one_webhook() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    let (_ca, cert, key) = crate::s3server::make_tls(&work);
    let ca = work.join("ca.pem");
    let smtp = start_smtp(&work, &cert, &key);
    let (hook, got) = start_webhook();
    fs::write(work.join("ds.tmpl"), datastore_template(&cloud, "")).expect("ds");
    let doc = cloud.vm_xml(-1, -1);
    for vm in [22u64, 23, 24] {
        let text = if vm == 22 {
            doc.clone()
        } else {
            doc.replace("<ID>22</ID>", &format!("<ID>{vm}</ID>"))
                .replace("<HOSTNAME>hv1</HOSTNAME>", "<HOSTNAME>down</HOSTNAME>")
        };
        fs::write(work.join(format!("vm{vm}.xml")), text).expect("vm doc");
    }
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"nightly\"\nBACKUP_VMS = \"22,23,24\"\nDATASTORE_ID = 1\nMODE = FULL\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(&cloud, &state, &[]);
    let port = smtp.port.to_string();
    let server = format!("127.0.0.1:{port}");
    let env = [
        ("BACKSTOP_NOTIFY_EMAIL", "ops@example.org"),
        ("BACKSTOP_SMTP_SERVER", server.as_str()),
        ("BACKSTOP_SMTP_FROM", "backstop@front-end.example.org"),
        ("BACKSTOP_NOTIFY_CA_FILE", ca.to_str().expect("utf-8")),
        ("BACKSTOP_NOTIFY_WEBHOOK", hook.as_str()),
    ];
    let bj = |args: &[&str]| {
        let mut all: Vec<&str> = common.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        crate::support::run_env(crate::support::BACKSTOP, &all, b"", &env)
    };
    let file = |n: &str| work.join(n).display().to_string();
    assert_eq!(bj(&["datastore", "create", &file("ds.tmpl")]).code, Some(0));
    for vm in [22, 23, 24] {
        let out = bj(&["vm", "register", &file(&format!("vm{vm}.xml"))]);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    assert_eq!(bj(&["create", &file("job.tmpl")]).code, Some(0));
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.contains("1 VMs backed up, 2 in ERROR") && !out.stderr.contains("not sent"),
        "{out:?}"
    );

    let mails: Vec<_> = fs::read_dir(&smtp.out)
        .expect("mail")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .collect();
    assert_eq!(mails.len(), 1, "one mail for the run");
    let meta = fs::read_to_string(smtp.out.join("0.meta")).expect("meta");
    assert_eq!(meta.trim(), "tls=True rcpt=ops@example.org");
    let mail = fs::read_to_string(smtp.out.join("0.eml")).expect("mail");
    assert!(
        mail.contains("Subject: backstop: backup job 1 (nightly): 2 of 3 VMs failed")
            && mail.contains("From: backstop@front-end.example.org"),
        "{mail}"
    );
    for vm in [23, 24] {
        let line = mail
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("VM {vm}: ")))
            .unwrap_or_else(|| panic!("VM {vm} is not named: {mail}"));
        assert!(line.contains("down"), "{line}");
    }
    assert!(!mail.contains("VM 22: "), "{mail}");

    let hooks = got.lock().expect("hooks").clone();
    assert_eq!(hooks.len(), 1, "one webhook for the run: {hooks:?}");
    assert_eq!(hooks[0].0, "POST /hook HTTP/1.1");
    let v: serde_json::Value = serde_json::from_str(&hooks[0].1).expect("json");
    assert_eq!(v["event"], "backup_job_failed", "{v}");
    assert_eq!(v["job"]["id"], 1);
    assert_eq!(v["job"]["name"], "nightly");
    let failed: Vec<&str> = v["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["what"].as_str().expect("what"))
        .collect();
    assert_eq!(failed, ["VM 23", "VM 24"], "{v}");
    assert!(
        v["failures"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("down")),
        "{v}"
    );

    // A scheduled run an hour overdue (the scheduler was not running): the pass runs it late
    // and says that the job missed its schedule; one message for that, one for the failures.
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        - 3600;
    let out = bj(&["sched-add", "1", "--time", &hour_ago.to_string()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(bj(&["retry", "1"]).code, Some(0));
    let out = bj(&["scheduler"]);
    assert!(
        out.stdout.contains(
            "scheduler: backup job 1 missed its schedule: its scheduled run started 60 minutes late"
        ),
        "{out:?}"
    );
    let hooks = got.lock().expect("hooks").clone();
    let events: Vec<String> = hooks
        .iter()
        .map(|h| {
            let v: serde_json::Value = serde_json::from_str(&h.1).expect("json");
            v["event"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        events,
        [
            "backup_job_failed",
            "backup_job_missed_schedule",
            "backup_job_failed"
        ],
        "{hooks:?}"
    );
    let missed = fs::read_to_string(smtp.out.join("1.eml")).expect("second mail");
    assert!(
        missed.contains("Subject: backstop: backup job 1 (nightly): missed its schedule")
            && missed.contains("60 minutes late"),
        "{missed}"
    );
}

/// A receiver on loopback that answers every request with 500; how many it got.
fn start_failing_webhook() -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(0));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            *seen.lock().expect("seen") += 1;
            let _ = conn.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (addr, got)
}

/// Issue 23: a webhook's URL is its token (in the path or the query), and it was printed
/// whole in the line saying the message was not sent, and by `show`. Two sync jobs whose runs
/// fail: one notifies a webhook that answers 500 (its template's NOTIFY_WEBHOOK), the other
/// the global BACKSTOP_NOTIFY_WEBHOOK on a closed loopback port. Each says its message was not
/// sent, naming the webhook by scheme, host and port only; `show` (text and JSON) of the sync,
/// verify and backup jobs shows the same; a global webhook that is not a URL is refused
/// without its token.
#[test]
fn a_webhook_that_fails_never_prints_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (addr, got) = start_failing_webhook();
    let failing = format!("http://{addr}/services/T0k3nInPath?token=T0k3nInQuery");
    let closed = free_port();
    let refused = format!("http://127.0.0.1:{closed}/hooks/Cl0s3dT0k3n?token=Cl0s3dT0k3n");
    let tokens = ["T0k3nInPath", "T0k3nInQuery", "Cl0s3dT0k3n"];
    let state = d.join("state.db");
    let remotes = d.join("remotes");
    fs::create_dir_all(&remotes).expect("remotes");
    let common = [
        "backupjob",
        "--state",
        state.to_str().expect("utf-8"),
        "--remotes",
        remotes.to_str().expect("utf-8"),
    ];
    let bj_env = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = common.to_vec();
        all.extend_from_slice(args);
        crate::support::run_env(crate::support::BACKSTOP, &all, b"", env)
    };
    let global = [("BACKSTOP_NOTIFY_WEBHOOK", refused.as_str())];
    let bj = |args: &[&str]| bj_env(args, &global);
    let ok = |args: &[&str]| {
        let out = bj(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        out
    };
    let file = |name: &str, text: String| {
        let p = d.join(name);
        fs::write(&p, text).expect("template");
        p.display().to_string()
    };
    for (kind, name) in [("datastore", "here"), ("remote", "there")] {
        ok(&[
            kind,
            "create",
            &file(
                &format!("{name}.tmpl"),
                format!(
                    "NAME=\"{name}\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"pw\"\n",
                    d.join(name).display()
                ),
            ),
        ]);
    }
    // VM 99 has no repository: each run fails, and notifies.
    ok(&[
        "sync-job",
        "create",
        &file(
            "own.tmpl",
            format!(
                "NAME=\"own\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"99\"\nNOTIFY_WEBHOOK=\"{failing}\"\n"
            ),
        ),
    ]);
    ok(&[
        "sync-job",
        "create",
        &file(
            "global.tmpl",
            "NAME=\"global\"\nDATASTORE_ID=1\nREMOTE_ID=2\nVMS=\"99\"\n".into(),
        ),
    ]);
    let no_token = |what: &str, text: &str| {
        for t in tokens {
            assert!(!text.contains(t), "{what} shows the token {t}: {text}");
        }
    };

    let out = bj(&["sync-job", "run", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    no_token("a failed notification", &out.stderr);
    assert!(
        out.stderr.lines().any(|l| l
            == format!(
                "backupjob: sync job 1: notification to the webhook http://{addr}/*** not sent: it answered HTTP 500"
            )),
        "{out:?}"
    );
    assert_eq!(*got.lock().expect("got"), 1, "the webhook got no request");

    let out = bj(&["sync-job", "run", "2"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    no_token("a refused notification", &out.stderr);
    let prefix = format!(
        "backupjob: sync job 2: notification to the webhook http://127.0.0.1:{closed}/*** not sent: "
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line saying the message was not sent: {out:?}"));
    assert!(line.contains("refused"), "{line}");

    // show, as text and JSON, of every kind of job that names a webhook.
    ok(&[
        "verify-job",
        "create",
        &file(
            "verify.tmpl",
            format!("NAME=\"v\"\nDATASTORE_ID=1\nVMS=\"99\"\nNOTIFY_WEBHOOK=\"{failing}\"\n"),
        ),
    ]);
    ok(&[
        "create",
        &file(
            "job.tmpl",
            format!(
                "NAME=\"nightly\"\nBACKUP_VMS=\"\"\nDATASTORE_ID=1\nMODE=FULL\nNOTIFY_WEBHOOK=\"{failing}\"\n"
            ),
        ),
    ]);
    let kept = format!("NOTIFY_WEBHOOK = \"http://{addr}/***\"");
    for args in [
        &["sync-job", "show", "1"][..],
        &["sync-job", "show", "1", "--json"],
        &["verify-job", "show", "1"],
        &["verify-job", "show", "1", "--json"],
        &["show", "1"],
    ] {
        let out = ok(args);
        no_token(&format!("{args:?}"), &out.stdout);
        let text = if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
            v["template"].as_str().expect("template").to_string()
        } else {
            out.stdout.clone()
        };
        assert!(text.contains(&kept), "{args:?}: {text}");
    }

    // A global webhook that is not a URL: notifications are off, said without the token.
    let out = bj_env(
        &["sync-job", "run", "2"],
        &[("BACKSTOP_NOTIFY_WEBHOOK", "hooks.example/T0k3nInPath")],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    no_token("a bad webhook", &out.stderr);
    assert!(
        out.stderr.lines().any(|l| l
            == "backupjob: notifications are off: the webhook hooks.example/*** is not an http:// or https:// URL"),
        "{out:?}"
    );
}
