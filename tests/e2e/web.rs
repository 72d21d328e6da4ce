//! `backstop serve` (docs/web.md) over a state made by a real job run: VM 22 backed up, VM 23
//! failed (its host does not answer). The JSON API, the metrics and the pages say so; with
//! credentials set, pages need a login (argon2 password, session cookie, CSRF token on every
//! form) and the API a token; a non-loopback address without credentials is refused. HTTP is
//! spoken by hand here (one request per connection), as a monitoring system would.

use crate::jobs::{cli_prefix, cloud_with_tm, datastore_template};
use crate::support::BACKSTOP;
use serde_json::json;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

pub struct Served {
    child: Child,
    pub addr: String,
}

impl Served {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `backstop serve` on a free loopback port with `env`.
pub fn serve(state: &std::path::Path, env: &[(&str, &str)]) -> Served {
    serve_with(state, env, &[])
}

/// [`serve`] with more arguments.
pub fn serve_with(state: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(BACKSTOP)
        .args(["serve", "--listen", &addr, "--state"])
        .arg(state)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let served = Served { child, addr };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while TcpStream::connect(&served.addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    served
}

/// One request; (status, head, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Bodies come whole or chunked; a chunked one is joined.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The actions: only by POST with the admin token; retry moves the failed VM back to
/// OUTDATED; run starts the job in its own process (it goes on with VM 23, which fails
/// again); a retention plan with nothing to remove removes nothing.
fn actions(web: &Served, bearer: &str, admin: &str) {
    let status = || -> serde_json::Value {
        let (_, _, body) = http(&web.addr, "GET", "/api/status", &[bearer], "");
        serde_json::from_str(&body).expect("status")
    };
    let as_admin = format!("Authorization: Bearer {admin}");
    assert_eq!(http(&web.addr, "POST", "/api/jobs/1/retry", &[], "").0, 403);
    assert_eq!(
        http(&web.addr, "POST", "/api/jobs/1/retry", &[bearer], "").0,
        403
    );
    assert_eq!(
        http(&web.addr, "GET", "/api/jobs/1/retry", &[&as_admin], "").0,
        405
    );
    assert_eq!(
        http(&web.addr, "POST", "/api/jobs/1/reboot", &[&as_admin], "").0,
        404
    );
    let (code, _, body) = http(&web.addr, "POST", "/api/jobs/1/retry", &[&as_admin], "");
    assert_eq!(code, 200, "{body}");
    let s = status();
    assert_eq!(
        (
            s["vms"]["by_state"]["OUTDATED"].as_u64(),
            s["vms"]["by_state"]["ERROR"].as_u64()
        ),
        (Some(1), Some(0)),
        "{s}"
    );
    let (code, _, body) = http(&web.addr, "POST", "/api/jobs/1/run", &[&as_admin], "");
    assert_eq!(code, 202, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let s = status();
        let n = |state: &str| s["vms"]["by_state"][state].as_u64();
        if n("ERROR") == Some(1) && n("ONGOING") == Some(0) && n("OUTDATED") == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not end: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The run went on with what the retry put back (as oned's backup jobs do): VM 23 failed
    // a second time.
    let (_, _, vms) = http(&web.addr, "GET", "/api/vms", &[bearer], "");
    let vms: serde_json::Value = serde_json::from_str(&vms).expect("vms");
    let vm23 = vms
        .as_array()
        .and_then(|a| a.iter().find(|v| v["id"] == 23))
        .expect("VM 23");
    assert_eq!(vm23["failures"], 2, "{vms}");
    let (code, _, body) = http(
        &web.addr,
        "POST",
        "/api/jobs/1/retention?max_delete=0",
        &[&as_admin],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        code == 200
            && v["output"]
                .as_str()
                .is_some_and(|o| o.contains("0 points removed")),
        "{body}"
    );
}

/// A state with VM 22 backed up and VM 23 in ERROR, from a real run of job 1.
pub fn state_with_a_failure(cloud: &crate::cloud::Cloud) -> std::path::PathBuf {
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    fs::write(work.join("ds.tmpl"), datastore_template(cloud, "")).expect("ds");
    let doc = cloud.vm_xml(-1, -1);
    fs::write(work.join("vm22.xml"), &doc).expect("vm");
    fs::write(
        work.join("vm23.xml"),
        doc.replace("<ID>22</ID>", "<ID>23</ID>")
            .replace("<HOSTNAME>hv1</HOSTNAME>", "<HOSTNAME>down</HOSTNAME>"),
    )
    .expect("vm");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"nightly\"\nBACKUP_VMS = \"22,23\"\nDATASTORE_ID = 1\nMODE = INCREMENT\nKEEP_LAST = 3\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(cloud, &state, &[]);
    let bj = |args: &[&str]| crate::jobs::run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    for args in [
        vec!["datastore", "create", &file("ds.tmpl")],
        vec!["vm", "register", &file("vm22.xml")],
        vec!["vm", "register", &file("vm23.xml")],
        vec!["create", &file("job.tmpl")],
    ] {
        let out = bj(&args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
    }
    let out = bj(&["backup", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    state
}

#[test]
fn serve_shows_real_runs_and_guards_what_it_shows() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let state = state_with_a_failure(&cloud);
    // A verify job over the datastore, run once: clean.
    let common = cli_prefix(&cloud, &state, &[]);
    let verify = cloud.dir.path().join("jobs/verify.tmpl");
    fs::write(&verify, "NAME = \"weekly-check\"\nDATASTORE_ID = 1\n").expect("verify");
    let out = crate::jobs::run_cli(
        &common,
        &["verify-job", "create", verify.to_str().expect("utf-8")],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = crate::jobs::run_cli(&common, &["verify-job", "run", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let web = serve(&state, &[]);
    let get = |path: &str| http(&web.addr, "GET", path, &[], "");

    let (code, _, body) = get("/api/status");
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(s["vms"]["by_state"]["ERROR"], 1, "{s}");
    assert_eq!(s["vms"]["by_state"]["UPDATED"], 1, "{s}");
    assert_eq!(s["vms"]["never_backed_up"], 1, "{s}");
    assert_eq!(s["failing"][0]["vm"], 23, "{s}");
    assert!(
        s["failing"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("down")),
        "{s}"
    );
    assert_eq!(s["oldest_backup"]["vm"], 22, "{s}");
    let age = s["oldest_backup"]["age_seconds"].as_i64().expect("age");
    assert!((0..600).contains(&age), "{s}");
    assert!(s["running"].as_array().is_some_and(Vec::is_empty));

    let (code, _, metrics) = get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("backstop_vms{state=\"ERROR\"} 1")
            && metrics.contains("backstop_vms{state=\"UPDATED\"} 1")
            && metrics.contains("backstop_vm_last_backup_timestamp_seconds{vm=\"22\"} ")
            && !metrics.contains("backstop_vm_last_backup_timestamp_seconds{vm=\"23\"}")
            && metrics.contains("backstop_vm_backup_failures{vm=\"23\"} 1"),
        "{metrics}"
    );
    let (_, _, images) = get("/api/images");
    let images: serde_json::Value = serde_json::from_str(&images).expect("images");
    assert_eq!(images[0]["vm"], 22, "{images}");
    assert_eq!(images[0]["increments"][0]["type"], "FULL", "{images}");
    let (_, _, jobs) = get("/api/jobs");
    let jobs: serde_json::Value = serde_json::from_str(&jobs).expect("jobs");
    assert_eq!(jobs[0]["name"], "nightly");
    assert_eq!(jobs[0]["vms"], serde_json::json!([22, 23]));
    let (_, _, runs) = get("/api/runs");
    let runs: serde_json::Value = serde_json::from_str(&runs).expect("runs");
    assert!(
        runs.as_array()
            .is_some_and(|r| r.iter().any(|x| x["ok"] == false && x["what"] == "VM 23")),
        "{runs}"
    );
    // The jobs' own runs, read from the one run table: the backup job's run (one VM failed)
    // and the verify job's clean run.
    let run_of = |what: &str| {
        runs.as_array()
            .and_then(|r| r.iter().find(|x| x["what"] == what))
            .cloned()
            .unwrap_or_else(|| panic!("no run of {what}: {runs}"))
    };
    let backup = run_of("backup job 1 (nightly)");
    assert_eq!(
        (&backup["kind"], &backup["ok"], &backup["detail"]),
        (&json!("backup"), &json!(false), &json!("1 VMs failed")),
        "{runs}"
    );
    assert!(backup["ended"].is_i64(), "{runs}");
    let verify = run_of("verify job 1 (weekly-check)");
    assert_eq!(
        (&verify["kind"], &verify["ok"]),
        (&json!("verify"), &json!(true)),
        "{runs}"
    );
    let (_, _, jobs) = get("/api/jobs");
    let jobs: serde_json::Value = serde_json::from_str(&jobs).expect("jobs");
    assert_eq!(jobs[0]["last_run"], backup["started"], "{jobs} {runs}");

    let (code, _, page) = get("/");
    assert_eq!(code, 200);
    assert!(
        page.contains("<tr class=\"failing\" data-vm=\"23\">") && page.contains("down"),
        "{page}"
    );
    assert!(
        page.contains("verify job 1 weekly-check") && page.contains("<span class=\"ok\">ok</span>"),
        "{page}"
    );
    assert!(
        s["failing_copies"].as_array().is_some_and(Vec::is_empty),
        "{s}"
    );
    let (code, _, page) = get("/vms/22");
    assert!(
        code == 200 && page.contains("Retention plan") && page.contains("FULL"),
        "{page}"
    );
    assert_eq!(get("/vms/99").0, 404);
    assert_eq!(get("/jobs/1").0, 200);
    assert_eq!(get("/datastores/1").0, 200);
    assert_eq!(get("/runs").0, 200);
    // A page elsewhere whose name points at 127.0.0.1 (DNS rebinding) reads nothing.
    let (code, _, _) = http(&web.addr, "GET", "/api/status", &["Host: evil.example"], "");
    assert_eq!(code, 421);
    drop(web);

    // With credentials: a login for pages, a token for the API, CSRF tokens on forms.
    let hash = hash_password("correct horse battery");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let token = "t0ken-for-monitoring-0123456789";
    let admin = "admin-t0ken-0123456789-abcdef";
    let web = serve_with(
        &state,
        &[
            ("BACKSTOP_API_TOKEN", token),
            ("BACKSTOP_WEB_PASSWORD_HASH", hash.as_str()),
            ("BACKSTOP_ADMIN_TOKEN", admin),
        ],
        &common[3..].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (code, head, _) = http(&web.addr, "GET", "/", &[], "");
    assert_eq!((code, header(&head, "location")), (303, Some("/login")));
    assert_eq!(http(&web.addr, "GET", "/api/status", &[], "").0, 401);
    assert_eq!(http(&web.addr, "GET", "/metrics", &[], "").0, 401);
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(http(&web.addr, "GET", "/api/status", &[&bearer], "").0, 200);
    let wrong = "Authorization: Bearer t0ken-for-monitoring-0123456780";
    assert_eq!(http(&web.addr, "GET", "/api/status", &[wrong], "").0, 401);
    // A form without its CSRF token is refused.
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[],
        "password=correct+horse+battery",
    );
    assert_eq!(code, 403);
    let (code, head, form) = http(&web.addr, "GET", "/login", &[], "");
    assert_eq!(code, 200);
    let login_cookie = header(&head, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("login cookie")
        .to_string();
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf in the form")
        .to_string();
    let cookie = format!("Cookie: {login_cookie}");
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password=wrong"),
    );
    assert_eq!(code, 401);
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf=not-{csrf}&password=correct+horse+battery"),
    );
    assert_eq!(code, 403);
    let (code, head, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password=correct+horse+battery"),
    );
    assert_eq!(code, 303, "{head}");
    let session = header(&head, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_string();
    assert!(
        header(&head, "set-cookie")
            .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict"))
    );
    let with_session = format!("Cookie: {session}");
    let (code, _, page) = http(&web.addr, "GET", "/", &[&with_session], "");
    assert!(
        code == 200 && page.contains("Log out") && page.contains("data-vm=\"23\""),
        "{page}"
    );
    let (code, _, _) = http(&web.addr, "POST", "/logout", &[&with_session], "csrf=");
    assert_eq!(code, 403);
    actions(&web, &bearer, admin);
    // Guessing is slowed: after five failed logins in a minute, logins are refused, the right
    // password too.
    let mut codes = Vec::new();
    for _ in 0..5 {
        let (code, _, _) = http(
            &web.addr,
            "POST",
            "/login",
            &[&cookie],
            &format!("csrf={csrf}&password=guess"),
        );
        codes.push(code);
    }
    assert_eq!(codes, [401, 401, 401, 401, 429], "one failure came before");
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password=correct+horse+battery"),
    );
    assert_eq!(code, 429);
    drop(web);

    // Not on a loopback address without credentials.
    let out = Command::new(BACKSTOP)
        .args(["serve", "--listen", "0.0.0.0:1", "--state"])
        .arg(&state)
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("refusing to listen on 0.0.0.0:1, which is not a loopback address"),
        "{out:?}"
    );
}

/// A job whose backup of VM 22 is slow (160 MiB of data, more than a backup reads ahead while
/// the repository opens, through a 10 MiB/s upload): the state, and the runner's command line.
pub fn slow_backup(cloud: &crate::cloud::Cloud) -> (std::path::PathBuf, Vec<String>) {
    cloud.create_disks();
    let noise = cloud.dir.path().join("noise.raw");
    fs::write(&noise, crate::support::noise(160 << 20, 91)).expect("noise");
    let disk = cloud.disk(0);
    let disk = disk.to_str().expect("utf-8");
    crate::cloud::sh_ok("qemu-img", &["resize", "-q", "-f", "qcow2", disk, "200M"]);
    crate::cloud::sh_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 160M", noise.display()),
            disk,
        ],
    );
    let work = cloud.dir.path().join("jobs");
    fs::create_dir_all(&work).expect("work");
    fs::write(work.join("vm22.xml"), cloud.vm_xml(-1, -1)).expect("vm");
    fs::write(
        work.join("ds.tmpl"),
        datastore_template(cloud, "RESTIC_BWLIMIT = 10240\n"),
    )
    .expect("ds");
    fs::write(
        work.join("job.tmpl"),
        "NAME = \"slow\"\nBACKUP_VMS = \"22\"\nDATASTORE_ID = 1\n",
    )
    .expect("job");
    let state = work.join("state.db");
    let common = cli_prefix(cloud, &state, &[]);
    let bj = |args: &[&str]| crate::jobs::run_cli(&common, args);
    let file = |n: &str| work.join(n).display().to_string();
    bj(&["datastore", "create", &file("ds.tmpl")]);
    bj(&["vm", "register", &file("vm22.xml")]);
    assert_eq!(bj(&["create", &file("job.tmpl")]).stdout, "ID: 1\n");
    (state, common)
}

/// An argon2 hash made as an operator makes it: `backstop serve --hash-password`, the password
/// on stdin.
pub fn hash_password(password: &str) -> String {
    let mut c = Command::new(BACKSTOP)
        .args(["serve", "--hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hash");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write");
    let out = c.wait_with_output().expect("hash");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// The most memory a process has held (VmHWM of /proc/PID/status), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A login form's cookie header and CSRF token.
fn login_form(addr: &str) -> (String, String) {
    let (code, head, form) = http(addr, "GET", "/login", &[], "");
    assert_eq!(code, 200, "{form}");
    let cookie = header(&head, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("login cookie");
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf in the form");
    (format!("Cookie: {cookie}"), csrf.to_string())
}

/// A burst of 40 concurrent wrong logins, with a valid form each: each attempt counts before
/// its password is checked, so exactly five (the limit a minute) get a password check and a
/// 401, the other 35 a 429 at once; the checks run a few at a time, so the server's memory
/// stays far below what 40 argon2 verifications at once hold (19 MiB each). An overlong
/// password is refused unchecked, an oversized form unread, and `--hash-password` refuses
/// to hash a password no login would read.
#[test]
fn a_burst_of_wrong_logins_gets_five_password_checks_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let hash = hash_password("correct horse battery");
    let web = serve(
        &dir.path().join("state.db"),
        &[("BACKSTOP_WEB_PASSWORD_HASH", hash.as_str())],
    );
    let (cookie, csrf) = login_form(&web.addr);
    let before = peak_kib(web.pid());
    let start = std::sync::Arc::new(std::sync::Barrier::new(40));
    let burst: Vec<_> = (0..40)
        .map(|k| {
            let (addr, cookie, csrf, start) = (
                web.addr.clone(),
                cookie.clone(),
                csrf.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                http(
                    &addr,
                    "POST",
                    "/login",
                    &[&cookie],
                    &format!("csrf={csrf}&password=guess-{k}"),
                )
                .0
            })
        })
        .collect();
    let mut codes: Vec<u16> = burst
        .into_iter()
        .map(|t| t.join().expect("login"))
        .collect();
    codes.sort_unstable();
    let peak = peak_kib(web.pid());
    eprintln!("serve's peak memory: {before} KiB before the burst, {peak} KiB after");
    let count = |c: u16| codes.iter().filter(|x| **x == c).count();
    assert_eq!((count(401), count(429)), (5, 35), "{codes:?}");
    assert!(
        peak < 200 << 10,
        "serve held {peak} KiB at its peak (before the burst: {before} KiB)"
    );
    // The five failures fill the minute: the right password is refused too.
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password=correct+horse+battery"),
    );
    assert_eq!(code, 429);
    // Overlong passwords are refused before they count or are checked, throttled or not.
    let long = "x".repeat(1025);
    let (code, _, body) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password={long}"),
    );
    assert_eq!(
        (code, body.as_str()),
        (400, "refused: the password is longer than 1024 bytes\n")
    );
    let huge = "x".repeat(64 << 10);
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password={huge}"),
    );
    assert_eq!(code, 413);
    let mut c = Command::new(BACKSTOP)
        .args(["serve", "--hash-password"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hash");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{long}\n").as_bytes())
        .expect("write");
    let out = c.wait_with_output().expect("hash");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (
            Some(1),
            "backstop serve: the password is longer than 1024 bytes\n"
        )
    );
}

/// With only an API token (no page password) the pages are served to whoever reaches them,
/// so the Host check against DNS rebinding stays on: a request for another name gets 421,
/// pages and JSON alike, the token notwithstanding.
#[test]
fn with_only_an_api_token_serve_answers_loopback_names_only() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let state = state_with_a_failure(&cloud);
    let token = "t0ken-for-monitoring-0123456789";
    let web = serve(&state, &[("BACKSTOP_API_TOKEN", token)]);
    let bearer = format!("Authorization: Bearer {token}");
    let (code, _, page) = http(&web.addr, "GET", "/", &[], "");
    assert!(code == 200 && page.contains("data-vm=\"23\""), "{page}");
    for path in ["/", "/vms/22", "/runs"] {
        let (code, _, body) = http(&web.addr, "GET", path, &["Host: evil.example:8421"], "");
        assert_eq!(
            (code, body.as_str()),
            (
                421,
                "without a page password, backstop serve answers requests for a loopback address only\n"
            ),
            "{path}"
        );
    }
    let (code, _, _) = http(
        &web.addr,
        "GET",
        "/api/status",
        &["Host: evil.example", &bearer],
        "",
    );
    assert_eq!(code, 421);
    assert_eq!(http(&web.addr, "GET", "/api/status", &[&bearer], "").0, 200);
}

/// The id of VM 22's backup (the snapshot its increment 0 names, as the state records it), and
/// a failure reason for VM 23 that names it, as the driver's errors name snapshots ("no snapshot
/// ... in ...": a backup whose parent is gone).
fn a_reason_naming_a_snapshot(state: &std::path::Path) -> String {
    let db = rusqlite::Connection::open(state).expect("state");
    let id: String = db
        .query_row(
            "SELECT source FROM increments WHERE image_id = 1 AND id = 0",
            [],
            |r| r.get(0),
        )
        .expect("the backup's snapshot");
    assert!(
        id.len() >= 8 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    db.execute(
        "UPDATE job_vms SET reason = ?1 WHERE vm_id = 23",
        [format!(
            "disk 0: no snapshot {id} in sftp:backup:/var/backups/job_1"
        )],
    )
    .expect("reason");
    // A run's error may name one too (a verify run names damaged snapshots).
    db.execute(
        "UPDATE job_runs SET error = ?1 WHERE kind = 'backup'",
        [format!("VM 23: no snapshot {id}")],
    )
    .expect("run error");
    id
}

/// Snapshot ids are capabilities (8 hex characters of one authorise a restore through a backup
/// URL): a caller who showed no token or session sees none, in the JSON or the pages (the
/// increments' sources are null, ids in failure texts read "[hidden]"); the API token (or a
/// page session) shows them.
#[test]
fn snapshot_ids_are_shown_only_to_callers_with_a_token() {
    let cloud = cloud_with_tm();
    cloud.create_disks();
    let state = state_with_a_failure(&cloud);
    let id = a_reason_naming_a_snapshot(&state);
    let prefix = &id[..8];
    let hidden = "disk 0: no snapshot [hidden] in sftp:backup:/var/backups/job_1";
    let everything = [
        "/api/images",
        "/",
        "/vms/22",
        "/vms/23",
        "/jobs/1",
        "/datastores/1",
        "/runs",
        "/api/status",
        "/api/jobs",
        "/api/vms",
        "/api/runs",
        "/metrics",
    ];
    let no_id = |addr: &str, extra: &[&str]| {
        for path in everything {
            let (code, _, body) = http(addr, "GET", path, extra, "");
            assert!(
                code == 200 && !body.contains(prefix),
                "{path} shows {prefix}: {code} {body}"
            );
        }
        let (_, _, images) = http(addr, "GET", "/api/images", extra, "");
        let images: serde_json::Value = serde_json::from_str(&images).expect("images");
        assert_eq!(images[0]["increments"][0]["type"], "FULL", "{images}");
        assert!(images[0]["increments"][0]["source"].is_null(), "{images}");
        let (_, _, page) = http(addr, "GET", "/", extra, "");
        assert!(page.contains(hidden), "{page}");
    };

    // No credentials at all: nobody showed a token.
    let web = serve(&state, &[]);
    no_id(&web.addr, &[]);
    let (_, _, s) = http(&web.addr, "GET", "/api/status", &[], "");
    let s: serde_json::Value = serde_json::from_str(&s).expect("status");
    assert_eq!(s["failing"][0]["reason"], hidden, "{s}");
    drop(web);

    // Only an API token: the pages, served without a password, show no id; the token does.
    let token = "t0ken-for-monitoring-0123456789";
    let web = serve(&state, &[("BACKSTOP_API_TOKEN", token)]);
    for path in ["/", "/vms/22", "/vms/23", "/runs"] {
        let (code, _, page) = http(&web.addr, "GET", path, &[], "");
        assert!(code == 200 && !page.contains(prefix), "{path}: {page}");
    }
    let (_, _, page) = http(&web.addr, "GET", "/", &[], "");
    assert!(page.contains(hidden), "{page}");
    let bearer = format!("Authorization: Bearer {token}");
    let (_, _, images) = http(&web.addr, "GET", "/api/images", &[&bearer], "");
    let images: serde_json::Value = serde_json::from_str(&images).expect("images");
    assert_eq!(
        images[0]["increments"][0]["source"],
        id.as_str(),
        "{images}"
    );
    let (_, _, s) = http(&web.addr, "GET", "/api/status", &[&bearer], "");
    let s: serde_json::Value = serde_json::from_str(&s).expect("status");
    let named = format!("disk 0: no snapshot {id} in sftp:backup:/var/backups/job_1");
    assert_eq!(s["failing"][0]["reason"], named.as_str(), "{s}");
    let (_, _, page) = http(&web.addr, "GET", "/", &[&bearer], "");
    assert!(page.contains(&named), "{page}");
    drop(web);

    // A page session shows them too.
    let hash = hash_password("correct horse battery");
    let web = serve(&state, &[("BACKSTOP_WEB_PASSWORD_HASH", hash.as_str())]);
    let (cookie, csrf) = login_form(&web.addr);
    let (code, head, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&password=correct+horse+battery"),
    );
    assert_eq!(code, 303, "{head}");
    let session = header(&head, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("session cookie");
    let with_session = format!("Cookie: {session}");
    let (_, _, page) = http(&web.addr, "GET", "/", &[&with_session], "");
    assert!(page.contains(&named), "{page}");
    let (_, _, images) = http(&web.addr, "GET", "/api/images", &[&with_session], "");
    assert!(images.contains(&id), "{images}");
}

/// The actions run in the server's own process (no `backstop backupjob` child): a run's 202
/// names the server's PID; cancelling that run, which stops its running backup through the
/// datastore's backup_cancel, leaves the server answering, and answers with the text
/// `backupjob cancel` prints; a refused action says what the command line says.
#[test]
fn a_run_the_api_started_is_cancelled_in_process_and_the_server_lives_on() {
    let cloud = cloud_with_tm();
    let (state, common) = slow_backup(&cloud);
    let admin = "admin-t0ken-0123456789-abcdef";
    let web = serve_with(
        &state,
        &[("BACKSTOP_ADMIN_TOKEN", admin)],
        &common[3..].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let as_admin = format!("Authorization: Bearer {admin}");
    let status = || -> serde_json::Value {
        let (code, _, body) = http(&web.addr, "GET", "/api/status", &[], "");
        assert_eq!(code, 200, "the server no longer answers: {body}");
        serde_json::from_str(&body).expect("status")
    };
    let (code, _, body) = http(&web.addr, "POST", "/api/jobs/1/run", &[&as_admin], "");
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (&v["job"], &v["action"], &v["pid"]),
        (
            &serde_json::json!(1),
            &serde_json::json!("run"),
            &serde_json::json!(web.pid())
        ),
        "{body}"
    );
    // Cancelled once the backup action reads the disk (its progress shows), so that there is
    // a backup process for backup_cancel to stop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let s = status();
        if s["running"][0]["progress"].is_object() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backup did not start: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, _, body) = http(&web.addr, "POST", "/api/jobs/1/cancel", &[&as_admin], "");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (v["ok"].as_bool(), v["output"].as_str(), v["error"].as_str()),
        (
            Some(true),
            Some("backup job 1: 0 VMs dropped from the run, 1 running backups stopped\n"),
            Some("")
        ),
        "{body}"
    );
    loop {
        let s = status();
        let n = |state: &str| s["vms"]["by_state"][state].as_u64();
        if n("ONGOING") == Some(0) {
            assert_eq!((n("ERROR"), n("UPDATED")), (Some(1), Some(0)), "{s}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled backup did not end: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, _, body) = http(&web.addr, "POST", "/api/jobs/7/cancel", &[&as_admin], "");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        (v["ok"].as_bool(), v["output"].as_str(), v["error"].as_str()),
        (
            Some(false),
            Some(""),
            Some("backupjob: there is no backup job 7\n")
        ),
        "{body}"
    );
    // The server lives on after it all.
    status();
}

/// A state with datastore 1, VM 22 (host hv1) and backup job 1 ("nightly") that has never run,
/// and a way to run `backstop backupjob` on it.
pub struct SmallState {
    pub dir: tempfile::TempDir,
    pub state: std::path::PathBuf,
}

impl SmallState {
    pub fn new() -> SmallState {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.db");
        let s = SmallState { dir, state };
        let ds = s.dir.path().join("ds.tmpl");
        fs::write(
            &ds,
            format!(
                "NAME = \"local\"\nDS_MAD = \"backstop\"\nBASE_PATH = \"{}\"\nRESTIC_PASSWORD = \"pw\"\n",
                s.dir.path().join("repos").display()
            ),
        )
        .expect("ds");
        let vm = s.dir.path().join("vm22.xml");
        fs::write(
            &vm,
            "<VM><ID>22</ID><NAME>web-22</NAME><TEMPLATE/><HISTORY_RECORDS><HISTORY>\
             <HOSTNAME>hv1</HOSTNAME></HISTORY></HISTORY_RECORDS></VM>",
        )
        .expect("vm");
        for args in [
            vec!["datastore", "create", ds.to_str().expect("utf-8")],
            vec!["vm", "register", vm.to_str().expect("utf-8")],
            vec![
                "create",
                "--name",
                "nightly",
                "--datastore",
                "1",
                "--vms",
                "22",
            ],
        ] {
            let out = s.bj(&args);
            assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        }
        s
    }

    pub fn bj(&self, args: &[&str]) -> crate::support::Outcome {
        let st = self.state.display().to_string();
        let remotes = self.dir.path().join("remotes").display().to_string();
        let mut all = vec!["backupjob", "--state", &st, "--remotes", &remotes];
        all.extend_from_slice(args);
        crate::support::run(BACKSTOP, &all, b"")
    }

    /// `backupjob scheduler --loop --interval 1`, started; stopped by its PID when dropped.
    pub fn scheduler(&self) -> Served {
        let child = Command::new(BACKSTOP)
            .args(["backupjob", "--state"])
            .arg(&self.state)
            .arg("--remotes")
            .arg(self.dir.path().join("remotes"))
            .args(["scheduler", "--loop", "--interval", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scheduler");
        Served {
            child,
            addr: String::new(),
        }
    }
}

/// Polls `/api/status` until `ok` holds of it (20 s at most).
pub fn status_until(addr: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, _, body) = http(addr, "GET", "/api/status", &[], "");
        assert_eq!(code, 200, "{body}");
        let s: serde_json::Value = serde_json::from_str(&body).expect("status json");
        if ok(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "never: {s}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A job two hours past its scheduled time is overdue, with the reason that holds: the
/// scheduler never ran; then, running, the job is locked; then the scheduler was stopped. The
/// scheduler's health is in `/api/status`, `/metrics` and on every page; the list pages search;
/// an unknown address and a missing state get pages of their own.
#[test]
fn overdue_jobs_and_the_schedulers_health_are_shown_with_their_reason() {
    let s = SmallState::new();
    let web = serve(&s.state, &[]);
    let st = status_until(&web.addr, |_| true);
    assert_eq!(st["scheduler"]["state"], "never-ran", "{st}");
    assert_eq!(st["overdue"], json!([]), "nothing is due yet: {st}");

    let two_hours_ago = (jiff::Timestamp::now().as_second() - 7200).to_string();
    let out = s.bj(&[
        "sched-add",
        "1",
        "--time",
        &two_hours_ago,
        "--repeat",
        "daily",
    ]);
    assert_eq!(out.code, Some(1), "daily is not a REPEAT: {out:?}");
    let out = s.bj(&[
        "sched-add",
        "1",
        "--time",
        &two_hours_ago,
        "--repeat",
        "weekly",
        "--days",
        "0,1,2,3,4,5,6",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let st = status_until(&web.addr, |s| {
        s["overdue"].as_array().is_some_and(|o| !o.is_empty())
    });
    let o = &st["overdue"][0];
    assert_eq!(
        (o["kind"].as_str(), o["id"].as_u64()),
        (Some("backup"), Some(1)),
        "{st}"
    );
    assert!(
        o["late_seconds"]
            .as_i64()
            .is_some_and(|l| (7200..7300).contains(&l)),
        "{st}"
    );
    assert!(
        o["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("the scheduler has never run")),
        "{st}"
    );
    let (_, _, metrics) = http(&web.addr, "GET", "/metrics", &[], "");
    assert!(metrics.contains("\nbackstop_scheduler_up 0\n"), "{metrics}");
    assert!(
        metrics.contains("backstop_job_overdue_seconds{kind=\"backup\",job=\"1\"} 72"),
        "{metrics}"
    );
    let (code, _, page) = http(&web.addr, "GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(
        page.contains("data-job=\"backup-1\"") && page.contains("OVERDUE by 2 h"),
        "{page}"
    );
    assert!(
        page.contains("id=\"scheduler\" class=\"bad\" data-state=\"never-ran\""),
        "{page}"
    );

    // Locked, the scheduler passing: the job stays due and says why.
    assert_eq!(s.bj(&["lock", "1"]).code, Some(0));
    let daemon = s.scheduler();
    let st = status_until(&web.addr, |s| s["scheduler"]["state"] == "up");
    assert_eq!(st["scheduler"]["pid"], daemon.pid(), "{st}");
    assert_eq!(st["scheduler"]["interval_seconds"], 1, "{st}");
    assert_eq!(
        st["overdue"][0]["why"], "the job is locked (backstop backupjob unlock 1)",
        "{st}"
    );
    let (_, _, metrics) = http(&web.addr, "GET", "/metrics", &[], "");
    assert!(metrics.contains("\nbackstop_scheduler_up 1\n"), "{metrics}");

    // Stopped (SIGTERM, by its PID): not running, said on every page.
    crate::cloud::sh_ok("kill", &["-TERM", &daemon.pid().to_string()]);
    let st = status_until(&web.addr, |s| s["scheduler"]["state"] == "stopped");
    assert!(
        st["overdue"][0]["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("the scheduler is not running: it was stopped")),
        "{st}"
    );
    drop(daemon);
    for path in [
        "/",
        "/jobs",
        "/vms",
        "/datastores",
        "/sync-jobs",
        "/verify-jobs",
        "/runs",
        "/jobs/1",
        "/vms/22",
    ] {
        let (code, _, page) = http(&web.addr, "GET", path, &[], "");
        assert_eq!(code, 200, "{path}");
        assert!(
            page.contains("data-state=\"stopped\"")
                && page.contains("the scheduler is not running"),
            "{path}: {page}"
        );
    }

    // The list pages search: every word, in the id, name, host, state or job.
    for (path, shown, count) in [
        ("/jobs?q=nightly", true, "1 of 1"),
        ("/jobs?q=NIGHT", true, "1 of 1"),
        ("/jobs?q=weekly", false, "0 of 1"),
        ("/vms?q=hv1", true, "1 of 1"),
        ("/vms?q=web+job+1", true, "1 of 1"),
        ("/vms?q=hv2", false, "0 of 1"),
        ("/datastores?q=loc", true, "1 of 1"),
        ("/vms?q=%3Cscript%3E", false, "0 of 1"),
    ] {
        let (code, _, page) = http(&web.addr, "GET", path, &[], "");
        assert_eq!(code, 200, "{path}");
        assert_eq!(page.contains("<tr data-id="), shown, "{path}: {page}");
        assert!(
            page.contains(&format!("<p class=\"count\">{count}</p>")),
            "{path}: {page}"
        );
        assert!(
            !page.contains("<script>\""),
            "{path}: the search is escaped"
        );
    }
    let (_, _, page) = http(&web.addr, "GET", "/vms?q=%3Cscript%3E", &[], "");
    assert!(page.contains("value=\"&lt;script&gt;\""), "{page}");

    // An unknown address, and a job that does not exist: a page saying so, 404.
    for path in ["/nothing-here", "/jobs/99"] {
        let (code, head, page) = http(&web.addr, "GET", path, &[], "");
        assert_eq!(code, 404, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{head}"
        );
        assert!(
            page.contains("<title>Not found · backstop</title>"),
            "{page}"
        );
    }
    drop(web);

    // No state at the path given: a page that says so and what makes one.
    let web = serve(&s.dir.path().join("nothing.db"), &[]);
    let (code, _, page) = http(&web.addr, "GET", "/", &[], "");
    assert_eq!(code, 503);
    assert!(
        page.contains("id=\"no-state\"") && page.contains("there is no state database at"),
        "{page}"
    );
    let (code, _, body) = http(&web.addr, "GET", "/api/status", &[], "");
    assert_eq!(code, 503, "{body}");
}

/// A pass that runs a backup for a while (160 MiB at RESTIC_BWLIMIT 10 MiB/s): the daemon's
/// heartbeat thread keeps saying it is alive during the pass, so a long pass reads as "in a
/// pass since", never as a scheduler that stopped answering.
#[test]
fn the_scheduler_says_it_is_alive_during_a_long_pass() {
    let cloud = cloud_with_tm();
    let (state, common) = slow_backup(&cloud);
    let a_minute_ago = (jiff::Timestamp::now().as_second() - 60).to_string();
    let out = crate::jobs::run_cli(
        &common,
        &[
            "sched-add",
            "1",
            "--time",
            &a_minute_ago,
            "--repeat",
            "hourly",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend(["scheduler", "--loop", "--interval", "1"]);
    let daemon = Served {
        child: Command::new(BACKSTOP)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scheduler"),
        addr: String::new(),
    };
    let web = serve(&state, &[]);
    let first = status_until(&web.addr, |s| !s["scheduler"]["in_pass_since"].is_null());
    let since = first["scheduler"]["in_pass_since"].clone();
    let alive = first["scheduler"]["alive_at"].as_i64().expect("alive_at");
    // Two beats later, the same pass still runs, and the daemon has said it is alive since.
    let later = status_until(&web.addr, |s| {
        s["scheduler"]["alive_at"]
            .as_i64()
            .is_some_and(|a| a >= alive + 2)
            || s["scheduler"]["in_pass_since"] != since
    });
    assert_eq!(
        later["scheduler"]["in_pass_since"], since,
        "the pass ended before two beats: {later}"
    );
    assert_eq!(later["scheduler"]["state"], "up", "{later}");
    assert!(
        later["scheduler"]["says"]
            .as_str()
            .is_some_and(|s| s.starts_with("the scheduler is running: in a pass since")),
        "{later}"
    );
    drop(daemon);
}

/// `backstop serve` on a free port over `state` with `env`, run to its end (for settings it
/// refuses before listening).
fn serve_once(state: &std::path::Path, env: &[(&str, &str)]) -> crate::support::Outcome {
    crate::support::run_env(
        BACKSTOP,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().expect("utf-8"),
        ],
        b"",
        env,
    )
}

/// A value of BACKSTOP_WEB_ACTIONS that is neither yes nor no stops `serve` with one line
/// naming it, before it listens.
#[test]
fn a_bad_web_actions_value_is_refused_before_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let out = serve_once(&state, &[("BACKSTOP_WEB_ACTIONS", "maybe")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "backstop serve: BACKSTOP_WEB_ACTIONS is \"maybe\": yes or no\n"
    );
    assert!(!state.exists(), "nothing was written");
}

/// OpenNebula logins without a reachable oned: `BACKSTOP_WEB_TENANTS=yes` without a page
/// password stops `serve` with one line; with one, a user's login says oned cannot be asked
/// (503, neither their password nor oned's address in the answer) and counts as no failed
/// guess, a user name
/// that cannot be OpenNebula's is a failed login, and the admin's login (no user name) works
/// without oned. Without tenants, a user name is a failed login. (A real oned's logins are
/// in browser.rs.)
#[test]
fn tenant_logins_without_oned_say_so_and_leave_the_admin_s_login_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let out = serve_once(&state, &[("BACKSTOP_WEB_TENANTS", "yes")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with(
            "backstop serve: BACKSTOP_WEB_TENANTS=yes needs BACKSTOP_WEB_PASSWORD_HASH"
        ) && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );
    let hash = hash_password("the admin password");
    let web = serve(
        &state,
        &[
            ("BACKSTOP_WEB_PASSWORD_HASH", hash.as_str()),
            ("BACKSTOP_WEB_TENANTS", "yes"),
            ("ONE_XMLRPC", "http://127.0.0.1:9/RPC2"),
        ],
    );
    let (cookie, csrf) = login_form(&web.addr);
    let (_, _, form) = http(&web.addr, "GET", "/login", &[], "");
    assert!(form.contains("name=\"user\""), "{form}");
    // More than the five failures a minute allows: an unreachable oned is no wrong guess.
    for _ in 0..6 {
        let (code, _, body) = http(
            &web.addr,
            "POST",
            "/login",
            &[&cookie],
            &format!("csrf={csrf}&user=alice&password=alices-secret"),
        );
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("cannot check your login"), "{body}");
        // Why (the endpoint, the connection's error) is the server log's, not the visitor's.
        assert!(
            !body.contains("alices-secret") && !body.contains("127.0.0.1:9"),
            "{body}"
        );
    }
    let (code, _, body) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&user=a%3Ab&password=x"),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Wrong user name or password"), "{body}");
    // A password XML-RPC cannot carry (a control character) is a wrong one, oned not asked.
    let (code, _, body) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&user=alice&password=a%01b"),
    );
    assert_eq!(code, 401, "{body}");
    let (code, head, body) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&user=&password=the+admin+password"),
    );
    assert_eq!(code, 303, "{body}");
    assert!(header(&head, "set-cookie").is_some_and(|c| c.starts_with("backstop_session=")));
    drop(web);

    let web = serve(&state, &[("BACKSTOP_WEB_PASSWORD_HASH", hash.as_str())]);
    let (cookie, csrf) = login_form(&web.addr);
    let (_, _, form) = http(&web.addr, "GET", "/login", &[], "");
    assert!(!form.contains("name=\"user\""), "{form}");
    let (code, _, _) = http(
        &web.addr,
        "POST",
        "/login",
        &[&cookie],
        &format!("csrf={csrf}&user=admin&password=the+admin+password"),
    );
    assert_eq!(
        code, 401,
        "a user name where there are no OpenNebula logins"
    );
}
