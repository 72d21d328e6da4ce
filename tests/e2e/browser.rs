//! The dashboard in a real browser: a headless Chromium driven through WebDriver (Debian's
//! `chromium` and `chromium-driver`; the WebDriver calls are plain HTTP+JSON here) against
//! `backstop serve` on loopback, over a state made by a real job run. The overview shows the
//! failing VM with its reason; with credentials the pages ask for a login; a form whose CSRF
//! token was taken out is refused; screenshots of the overview and of a VM page are saved
//! (`target/screenshots/`, kept by CI and shown in the README).

use crate::cloud::Cloud;
use crate::web::{http, serve, slow_backup, state_with_a_failure};
use base64::Engine;
use serde_json::{Value, json};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Driver {
    child: Child,
    addr: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = call(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver command; its `value`.
fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut s = TcpStream::connect(addr).expect("chromedriver");
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("timeout");
    // The head, then exactly Content-Length bytes: chromedriver may keep the connection open.
    let mut reader = std::io::BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        if n == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("read the body");
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&body)));
    v["value"].clone()
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt install chromium-driver)");
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let profile = dir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = call(&addr, "POST", "/session", Some(&caps));
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Driver {
            child,
            addr,
            session,
        }
    }

    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        call(
            &self.addr,
            method,
            &format!("/session/{}{what}", self.session),
            body.as_ref(),
        )
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    fn title(&self) -> String {
        self.cmd("GET", "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.cmd("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn body_text(&self) -> String {
        self.text("body")
    }

    /// Waits (20 s at most) until the page's text holds `what`, as a click's navigation ends
    /// after the click returns; the text then.
    fn wait_text(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = self.script("return document.body ? document.body.innerText : ''");
            let text = text.as_str().unwrap_or_default().to_string();
            if text.contains(what) || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn script(&self, js: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    fn screenshot(&self, to: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("png"))
            .expect("base64");
        fs::write(to, png).expect("screenshot");
    }
}

/// `target/screenshots` of the workspace.
fn screenshots() -> PathBuf {
    let dir = crate::support::repo_root().join("target/screenshots");
    fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

#[test]
fn the_dashboard_in_a_headless_chromium() {
    let cloud: Cloud = crate::jobs::cloud_with_tm();
    cloud.create_disks();
    let state = state_with_a_failure(&cloud);
    let web = serve(&state, &[]);
    let driver = Driver::start(cloud.dir.path());
    let base = format!("http://{}", web.addr);

    driver.go(&format!("{base}/"));
    assert_eq!(driver.title(), "Overview · backstop");
    let failing = driver.text("tr.failing[data-vm='23']");
    assert!(
        failing.contains("ERROR") && failing.contains("down"),
        "the failing VM and its reason: {failing}"
    );
    // The times are the viewer's: the script replaced the UTC text.
    let shown = driver.script(
        "return document.querySelector('time') ? document.querySelector('time').textContent : ''",
    );
    assert!(
        shown
            .as_str()
            .is_some_and(|t| !t.is_empty() && !t.ends_with("UTC")),
        "{shown}"
    );
    let shots = screenshots();
    driver.screenshot(&shots.join("overview.png"));
    driver.go(&format!("{base}/vms/22"));
    assert!(driver.title().starts_with("VM 22"), "{}", driver.title());
    assert!(driver.body_text().contains("Retention plan"));
    // Its 30-day grid: today backed up, the rest without a run.
    let count = |css: &str| {
        driver.script(&format!(
            "return document.querySelectorAll(\"{css}\").length"
        ))
    };
    assert_eq!(count("#day-grid rect"), 30);
    assert_eq!(count("#day-grid rect.day-backed-up"), 1);
    assert_eq!(count("#day-grid rect.day-no-run"), 29);
    driver.screenshot(&shots.join("vm.png"));
    // VM 23's host did not answer: its job ran today and took no point of it.
    driver.go(&format!("{base}/vms/23"));
    assert_eq!(count("#day-grid rect.day-failed"), 1);
    // The job's runs, a bar each (one run); the datastore's size, a vertex a day (90 and today).
    driver.go(&format!("{base}/jobs/1"));
    assert_eq!(count("#durations-chart rect"), 1);
    driver.go(&format!("{base}/datastores/1"));
    let vertices = driver.script(
        "return document.querySelector('#stored-chart polyline').getAttribute('points').trim().split(/ +/).length",
    );
    assert_eq!(vertices, 91);
    let last_y = driver.script(
        "var p = document.querySelector('#stored-chart polyline').getAttribute('points').trim().split(/ +/); \
         return [parseFloat(p[0].split(',')[1]), parseFloat(p[p.length - 1].split(',')[1])]",
    );
    assert!(
        last_y[1].as_f64() < last_y[0].as_f64(),
        "today's size is above the first day's (nothing then): {last_y}"
    );
    driver.screenshot(&shots.join("datastore.png"));
    drop(web);

    // With credentials: the pages ask for a login; a form without its CSRF token is refused.
    let hash = crate::web::hash_password("a good long password");
    let token = "a-token-for-the-monitoring-1234";
    let web = serve(
        &state,
        &[
            ("BACKSTOP_API_TOKEN", token),
            ("BACKSTOP_WEB_PASSWORD_HASH", &hash),
        ],
    );
    let base = format!("http://{}", web.addr);
    driver.go(&format!("{base}/"));
    assert_eq!(driver.title(), "Log in · backstop", "{}", driver.url());
    assert!(driver.url().ends_with("/login"));
    driver.script("document.querySelector('input[name=csrf]').remove()");
    let field = driver.find("input[name=password]");
    driver.cmd(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({"text": "a good long password"})),
    );
    let button = driver.find("button");
    driver.cmd("POST", &format!("/element/{button}/click"), Some(json!({})));
    let refused = "refused: the form's CSRF token is missing or wrong";
    assert!(
        driver.wait_text(refused).contains(refused),
        "{}",
        driver.body_text()
    );
    // With the token the form carries, the login works.
    driver.go(&format!("{base}/login"));
    let field = driver.find("input[name=password]");
    driver.cmd(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({"text": "a good long password"})),
    );
    let button = driver.find("button");
    driver.cmd("POST", &format!("/element/{button}/click"), Some(json!({})));
    let after = driver.wait_text("Log out");
    assert!(after.contains("Log out"), "{after}");
    assert_eq!(driver.title(), "Overview · backstop");
    assert!(driver.text("tr.failing[data-vm='23']").contains("down"));
}

/// A running backup's progress, as the runner writes it to the state, moves on the overview
/// in the browser (reloaded as a viewer would) and on `/api/status`; once done, the VM is
/// UPDATED and nothing runs.
#[test]
fn a_running_backup_s_progress_moves_in_the_browser() {
    let cloud: Cloud = crate::jobs::cloud_with_tm();
    let (state, common) = slow_backup(&cloud);
    let web = serve(&state, &[]);
    let driver = Driver::start(cloud.dir.path());
    let mut runner = Command::new(crate::support::BACKSTOP)
        .args(&common)
        .args(["backup", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner");
    let (mut shown, mut api): (Vec<String>, Vec<u64>) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while runner.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup did not end"
        );
        driver.go(&format!("http://{}/", web.addr));
        let text = driver.script(
            "var p = document.querySelector('tr.running[data-vm=\"22\"] .progress'); return p ? p.textContent : '';",
        );
        if let Some(t) = text.as_str().filter(|t| !t.is_empty())
            && shown.last().map(String::as_str) != Some(t)
        {
            shown.push(t.to_string());
        }
        let (_, _, body) = http(&web.addr, "GET", "/api/status", &[], "");
        if let Ok(s) = serde_json::from_str::<Value>(&body)
            && let Some(done) = s["running"][0]["progress"]["done"].as_u64()
            && api.last() != Some(&done)
        {
            api.push(done);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(
        shown.len() >= 2,
        "the page's progress did not move: {shown:?}"
    );
    assert!(
        api.len() >= 2 && api.windows(2).all(|w| w[0] < w[1]),
        "the API's progress did not move: {api:?}"
    );
    let (_, _, body) = http(&web.addr, "GET", "/api/status", &[], "");
    let s: Value = serde_json::from_str(&body).expect("status");
    assert_eq!(s["vms"]["by_state"]["UPDATED"], 1, "{s}");
    assert!(s["running"].as_array().is_some_and(Vec::is_empty), "{s}");
}

/// In the browser: a job two hours overdue, with the stopped scheduler as its reason, on the
/// overview and on top of every page; the list pages' search, typed into the page's field.
#[test]
fn overdue_work_a_stopped_scheduler_and_list_search_in_the_browser() {
    let s = crate::web::SmallState::new();
    let two_hours_ago = (jiff::Timestamp::now().as_second() - 7200).to_string();
    assert_eq!(s.bj(&["lock", "1"]).code, Some(0));
    let out = s.bj(&[
        "sched-add",
        "1",
        "--time",
        &two_hours_ago,
        "--repeat",
        "hourly",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let daemon = s.scheduler();
    let web = serve(&s.state, &[]);
    crate::web::status_until(&web.addr, |st| st["scheduler"]["state"] == "up");
    crate::cloud::sh_ok("kill", &["-TERM", &daemon.pid().to_string()]);
    crate::web::status_until(&web.addr, |st| st["scheduler"]["state"] == "stopped");
    drop(daemon);

    let driver = Driver::start(s.dir.path());
    let base = format!("http://{}", web.addr);
    driver.go(&format!("{base}/"));
    let row = driver.text("#overdue tr[data-job='backup-1']");
    assert!(
        row.contains("OVERDUE by 2 h")
            && row.contains("the scheduler is not running: it was stopped"),
        "{row}"
    );
    let line = driver.text("#scheduler");
    assert!(line.starts_with("the scheduler is not running"), "{line}");
    driver.screenshot(&screenshots().join("overdue.png"));

    // The VMs list, searched from its own field.
    driver.go(&format!("{base}/vms"));
    assert_eq!(driver.title(), "VMs · backstop");
    assert!(
        driver
            .text("#scheduler")
            .starts_with("the scheduler is not running")
    );
    for (words, count) in [("hv1 web", "1 of 1"), ("nowhere", "0 of 1")] {
        let field = driver.find("input[name=q]");
        driver.cmd("POST", &format!("/element/{field}/clear"), Some(json!({})));
        driver.cmd(
            "POST",
            &format!("/element/{field}/value"),
            Some(json!({"text": words})),
        );
        let button = driver.find("form.search button");
        driver.cmd("POST", &format!("/element/{button}/click"), Some(json!({})));
        // The search's own page: its address carries the words, and it has loaded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let first = words.split(' ').next().unwrap_or_default();
        while !driver
            .script(&format!(
                "return document.readyState === 'complete' && location.search.includes('q={first}')"
            ))
            .as_bool()
            .unwrap_or(false)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{words}: {}",
                driver.url()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let text = driver.wait_text(count);
        assert!(text.contains(count), "{words}: {text}");
        assert_eq!(
            text.contains("web-22"),
            count == "1 of 1",
            "{words}: {text}"
        );
    }
    // Not found, as a page with the way back.
    driver.go(&format!("{base}/jobs/99"));
    assert_eq!(driver.title(), "Not found · backstop");
    assert!(driver.body_text().contains("Back to the overview"));
}

impl Driver {
    /// Logs in on the login page the browser is at, with `password`.
    fn log_in(&self, password: &str) {
        let field = self.find("input[name=password]");
        self.cmd(
            "POST",
            &format!("/element/{field}/value"),
            Some(json!({"text": password})),
        );
        let button = self.find("button");
        self.cmd("POST", &format!("/element/{button}/click"), Some(json!({})));
        let after = self.wait_text("Log out");
        assert!(after.contains("Log out"), "{after}");
    }

    /// Types `text` into the field `css` finds.
    fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{field}/value"),
            Some(json!({"text": text})),
        );
    }

    /// The login form at `base`, filled with `user` (left empty when empty) and `password`,
    /// sent; the page's text once it holds `what`.
    fn log_in_as(&self, base: &str, user: &str, password: &str, what: &str) -> String {
        self.go(&format!("{base}/login"));
        if !user.is_empty() {
            self.type_into("input[name=user]", user);
        }
        self.type_into("input[name=password]", password);
        self.click_until("form[action='/login'] button", what)
    }

    /// Clicks what `css` finds and waits until the page's text holds `what`; that text.
    fn click_until(&self, css: &str, what: &str) -> String {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
        let text = self.wait_text(what);
        assert!(text.contains(what), "after {css}: {text}");
        text
    }
}

/// The buttons of a job's page, for the admin (a page password and BACKSTOP_ADMIN_TOKEN): a
/// form without its CSRF token is refused; retry moves the VM in ERROR back; the retention
/// plan's confirmation names the points it deletes and deletes exactly those; confirming the
/// same plan again is refused, as it changed; run starts a run that the page then shows.
#[test]
fn the_admin_runs_retries_and_applies_a_retention_plan_from_the_pages() {
    let cloud: Cloud = crate::jobs::cloud_with_tm();
    cloud.create_disks();
    let state = state_with_a_failure(&cloud);
    let common = crate::jobs::cli_prefix(&cloud, &state, &[]);
    // Two more runs: VM 22 has a chain of three points; VM 23's host still does not answer.
    for _ in 0..2 {
        let out = crate::jobs::run_cli(&common, &["backup", "1"]);
        assert_eq!(out.code, Some(1), "{out:?}");
    }
    let keep = cloud.dir.path().join("keep1.tmpl");
    fs::write(&keep, "KEEP_LAST = 1\n").expect("keep");
    let out = crate::jobs::run_cli(
        &common,
        &["update", "1", keep.to_str().expect("utf-8"), "--append"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");

    let password = "a good long password";
    let hash = crate::web::hash_password(password);
    let server_args: Vec<&str> = common[3..].iter().map(String::as_str).collect();
    // Without BACKSTOP_WEB_ACTIONS the page password stays a viewer's: no buttons.
    let viewer = crate::web::serve_with(
        &state,
        &[
            ("BACKSTOP_API_TOKEN", "a-token-for-the-monitoring-1234"),
            ("BACKSTOP_WEB_PASSWORD_HASH", &hash),
            ("BACKSTOP_ADMIN_TOKEN", "the-admin-token-of-this-test-5678"),
        ],
        &server_args,
    );
    {
        let profile = cloud.dir.path().join("viewer");
        fs::create_dir_all(&profile).expect("profile dir");
        let driver = Driver::start(&profile);
        driver.go(&format!("http://{}/login", viewer.addr));
        driver.log_in(password);
        driver.go(&format!("http://{}/jobs/1", viewer.addr));
        assert_eq!(
            driver.script("return document.querySelectorAll('#actions').length"),
            0,
            "a viewer's page offers no action"
        );
    }
    drop(viewer);
    let web = crate::web::serve_with(
        &state,
        &[
            ("BACKSTOP_API_TOKEN", "a-token-for-the-monitoring-1234"),
            ("BACKSTOP_WEB_PASSWORD_HASH", &hash),
            ("BACKSTOP_ADMIN_TOKEN", "the-admin-token-of-this-test-5678"),
            ("BACKSTOP_WEB_ACTIONS", "yes"),
        ],
        &server_args,
    );
    let base = format!("http://{}", web.addr);
    // Without a session, a button's POST is refused whatever it carries.
    let (code, _, body) = http(&web.addr, "POST", "/jobs/1/retry", &[], "csrf=x");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("needs the admin's login"), "{body}");

    let driver = Driver::start(cloud.dir.path());
    driver.go(&format!("{base}/login"));
    driver.log_in(password);
    driver.go(&format!("{base}/jobs/1"));
    let actions = driver.text("#actions");
    for label in [
        "Run now",
        "Retry VMs in ERROR",
        "Cancel the run",
        "Apply the retention plan",
    ] {
        assert!(actions.contains(label), "{actions}");
    }
    // A form whose CSRF token was taken out is refused, and nothing happens.
    driver.script(
        "document.querySelector('form.action[action$=\"/retry\"] input[name=csrf]').remove()",
    );
    driver.click_until(
        "form.action[action$='/retry'] button",
        "refused: the form's CSRF token is missing or wrong",
    );
    driver.go(&format!("{base}/jobs/1"));
    assert!(
        driver.text("#vms").contains("ERROR"),
        "VM 23 is still in ERROR"
    );
    let text = driver.click_until("form.action[action$='/retry'] button", "back to OUTDATED");
    assert!(
        text.contains("backup job 1: 1 VMs back to OUTDATED"),
        "{text}"
    );

    // The plan's confirmation names the two points that go, and deletes exactly those.
    driver.go(&format!("{base}/jobs/1/retention"));
    let going = driver.text("#going");
    assert_eq!(going.lines().count(), 2, "{going}");
    assert!(
        going.contains("VM 22: image 1 increment 0")
            && going.contains("VM 22: image 1 increment 1"),
        "{going}"
    );
    driver.screenshot(&screenshots().join("retention-confirm.png"));
    let confirmed = driver.script("return document.querySelector('input[name=plan]').value");
    let confirmed = confirmed.as_str().expect("the plan field").to_string();
    driver.click_until("#confirm", "Back to backup job 1");
    let result = driver.text("#result");
    assert_eq!(
        driver.script("return document.querySelector('#result').className"),
        "ok",
        "{result}"
    );
    let img: Value = serde_json::from_str(
        &crate::jobs::run_cli(&common, &["image", "show", "1", "--json"]).stdout,
    )
    .expect("image json");
    let left: Vec<u64> = img["increments"]
        .as_array()
        .expect("increments")
        .iter()
        .filter_map(|i| i["id"].as_u64())
        .collect();
    assert_eq!(left.len(), 1, "one point stays: {img}");
    // The same confirmation sent again (a second tab, a resent form): the plan it named is not
    // the plan now, so nothing more is deleted.
    driver.go(&format!("{base}/jobs/1"));
    driver.script(&format!(
        "var f = document.createElement('form'); f.method = 'post'; f.action = '/jobs/1/retention';\
         for (const [k, v] of [['csrf', document.querySelector('form[action=\"/logout\"] input[name=csrf]').value], ['plan', {confirmed:?}]]) {{\
           var i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }}\
         document.body.appendChild(f); f.submit(); return true;"
    ));
    let again = driver.wait_text("the plan changed since it was confirmed");
    assert!(
        again.contains("the plan changed since it was confirmed"),
        "{again}"
    );
    driver.go(&format!("{base}/jobs/1/retention"));
    assert!(driver.text("#nothing").contains("deletes nothing now"));

    // Run now: the run starts in the server; the job's page shows it finish.
    driver.go(&format!("{base}/jobs/1"));
    driver.click_until("form.action[action$='/run'] button", "a run started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        driver.go(&format!("{base}/jobs/1"));
        let vms = driver.text("#vms");
        if !vms.contains("OUTDATED") && !vms.contains("ONGOING") {
            assert!(vms.contains("UPDATED") && vms.contains("ERROR"), "{vms}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not end: {vms}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Tenants against a REAL oned 7.4.0 (see oned_real.rs; not run without
/// `BACKSTOP_ONED_REFERENCE`): two VMs backed up by the runner in OpenNebula mode, one given to
/// the OpenNebula user alice and one to bob. Each logs in to the dashboard with the password
/// oned knows and sees their own VM and its backup only: the other's page is a 404, the JSON
/// API lists theirs alone, there are no runs and no action buttons, and an action posted by
/// hand is refused. A wrong password is refused by oned; the admin's login (no user name)
/// still sees both; logging out revokes the user's login token in oned; a user's failed logins
/// lock that user out, not the admin; a VM given to a user in oned shows on their session
/// within the minute after which oned is asked again.
#[test]
fn real_oned_tenants_see_only_their_vms_in_a_headless_chromium() {
    use crate::oned_mode::runner_ok;
    use crate::oned_real::{RealOned, first, make_image, values};
    let Some(o) = RealOned::start(true) else {
        return;
    };
    let ds = o.datastore("backstop-local");
    let (image_a, image_b) = (
        o.images.path().join("alice.qcow2"),
        o.images.path().join("bob.qcow2"),
    );
    make_image(&image_a);
    make_image(&image_b);
    let a = o.stopped_vm("tenant-a", &image_a);
    let b = o.stopped_vm("tenant-b", &image_b);
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("state.db");
    runner_ok(&o, &state, &["datastore", "import", &ds]);
    let job = work.path().join("job.tmpl");
    fs::write(
        &job,
        format!(
            "NAME = \"nightly\"\nDATASTORE_ID = {ds}\nBACKUP_VMS = \"{a},{b}\"\nMODE = \"FULL\"\n"
        ),
    )
    .expect("job template");
    runner_ok(&o, &state, &["create", job.to_str().expect("utf-8")]);
    let out = runner_ok(&o, &state, &["backup", "1"]);
    assert!(
        out.contains(&format!("VM {a}: backup ")) && out.contains(&format!("VM {b}: backup ")),
        "{out}"
    );
    for (user, vm) in [("alice", a), ("bob", b)] {
        o.cli_ok("oneuser", &["create", user, &format!("{user}-password")]);
        o.cli_ok("onevm", &["chown", &vm.to_string(), user]);
    }

    let hash = crate::web::hash_password("the admin's long password");
    let admin_token = "an-admin-token-of-the-tests-123";
    let mut env: Vec<(&str, &str)> = o
        .env()
        .iter()
        .filter(|(k, _)| k == "ONE_XMLRPC")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env.len(), 1, "the endpoint");
    env.extend([
        ("BACKSTOP_WEB_PASSWORD_HASH", hash.as_str()),
        ("BACKSTOP_WEB_TENANTS", "yes"),
        ("BACKSTOP_ADMIN_TOKEN", admin_token),
        ("BACKSTOP_WEB_ACTIONS", "yes"),
    ]);
    let web = serve(&state, &env);
    let base = format!("http://{}", web.addr);
    let driver = Driver::start(work.path());
    let count = |css: &str| {
        driver.script(&format!(
            "return document.querySelectorAll(\"{css}\").length"
        ))
    };
    let api = |path: &str| -> Value {
        let body = driver.script(&format!(
            "var x = new XMLHttpRequest(); x.open('GET', '{path}', false); x.send(); \
             return x.status + ' ' + x.responseText;"
        ));
        let body = body.as_str().unwrap_or_default().to_string();
        let (status, json) = body.split_once(' ').unwrap_or_default();
        assert_eq!(status, "200", "{path}: {body}");
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: {e}: {json}"))
    };
    let api_vms = |path: &str| -> Vec<u64> {
        let v = api(path);
        let list = v.as_array().cloned().unwrap_or_default();
        let mut ids: Vec<u64> = list.iter().filter_map(|x| x["id"].as_u64()).collect();
        ids.sort_unstable();
        ids
    };

    // A wrong password: oned refuses it, and the form says so.
    let refused = driver.log_in_as(
        &base,
        "alice",
        "not-alices-password",
        "Wrong user name or password",
    );
    assert!(!refused.contains("Log out"), "{refused}");

    for (user, mine, theirs) in [("alice", a, b), ("bob", b, a)] {
        let shown = driver.log_in_as(&base, user, &format!("{user}-password"), "Log out");
        assert!(shown.contains(&format!("Logged in as {user}")), "{shown}");
        driver.go(&format!("{base}/vms"));
        let vms = driver.text("main");
        assert!(
            vms.contains(&format!("tenant-{}", if mine == a { "a" } else { "b" })),
            "{vms}"
        );
        assert!(
            !vms.contains(&format!("tenant-{}", if theirs == a { "a" } else { "b" })),
            "{vms}"
        );
        driver.go(&format!("{base}/vms/{mine}"));
        assert!(
            driver.title().starts_with(&format!("VM {mine}")),
            "{}",
            driver.title()
        );
        if user == "alice" {
            driver.screenshot(&screenshots().join("tenant.png"));
        }
        driver.go(&format!("{base}/vms/{theirs}"));
        assert_eq!(
            driver.title(),
            "Not found · backstop",
            "{user} sees VM {theirs}"
        );
        assert_eq!(api_vms("/api/vms"), vec![mine], "{user}'s /api/vms");
        let images = api("/api/images");
        let owners: Vec<u64> = images
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["vm"].as_u64())
            .collect();
        assert_eq!(owners, vec![mine], "{user}'s /api/images: {images}");
        // The job holds both VMs: a tenant sees it with theirs alone, and no buttons.
        driver.go(&format!("{base}/jobs/1"));
        let page = driver.text("main");
        assert!(
            !page.contains(&format!("tenant-{}", if theirs == a { "a" } else { "b" })),
            "{page}"
        );
        assert_eq!(count("form.action"), 0, "{user} has no action buttons");
        driver.go(&format!("{base}/runs"));
        assert!(
            !driver.text("main").contains(&format!("VM {theirs}")),
            "no runs of others"
        );
        // An action posted by hand with the session's own CSRF token: refused.
        let posted = driver.script(
            "var f = new FormData(); f.append('csrf', document.querySelector('form[action=\"/logout\"] input[name=csrf]').value); \
             var x = new XMLHttpRequest(); x.open('POST', '/jobs/1/run', false); \
             x.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded'); \
             x.send(new URLSearchParams(f).toString()); return x.status;",
        );
        assert_eq!(posted, json!(403), "{user} cannot run the job");
        // oned holds the session's login token until the logout revokes it.
        let tokens = |u: &str| values(&o.xml("oneuser", u), "LOGIN_TOKEN").len();
        assert_eq!(tokens(user), 1, "{}", o.xml("oneuser", user));
        driver.click_until("form[action='/logout'] button", "Log in");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while tokens(user) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{user}'s token was not revoked: {}",
                o.xml("oneuser", user)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    // The admin's login, without a user name, sees both VMs and the buttons.
    driver.log_in_as(&base, "", "the admin's long password", "Log out");
    assert_eq!(api_vms("/api/vms"), {
        let mut v = vec![a, b];
        v.sort_unstable();
        v
    });
    driver.go(&format!("{base}/jobs/1"));
    assert!(
        count("form.action").as_u64().is_some_and(|n| n > 0),
        "the admin's buttons"
    );
    // A user's failed logins lock that user out for the minute, not the administrator.
    driver.click_until("form[action='/logout'] button", "Log in");
    for _ in 0..5 {
        driver.log_in_as(
            &base,
            "bob",
            "not-bobs-password",
            "Wrong user name or password",
        );
    }
    let locked = driver.log_in_as(&base, "bob", "bob-password", "too many failed logins");
    assert!(!locked.contains("Log out"), "{locked}");
    driver.log_in_as(&base, "", "the admin's long password", "Log out");
    assert!(first(&o.xml("onevm", &a.to_string()), "UNAME") == "alice");

    // oned is asked again within a minute: bob's VM given to alice shows on her session.
    driver.click_until("form[action='/logout'] button", "Log in");
    driver.log_in_as(&base, "alice", "alice-password", "Log out");
    assert_eq!(api_vms("/api/vms"), vec![a]);
    o.cli_ok("onevm", &["chown", &b.to_string(), "alice"]);
    let both = {
        let mut v = vec![a, b];
        v.sort_unstable();
        v
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while api_vms("/api/vms") != both {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's session never saw VM {b}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
