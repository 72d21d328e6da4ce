//! The runner's state at cloud scale (issue 27): a generated state of 10,000 VMs in 500 jobs
//! on 1,000 hosts with 500,000 increments (20,000 backup images of 25 points), and the time
//! `backstop serve` takes to answer its pages and `/api/status` over it (target < 200 ms).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VMS: u64 = 10_000;
pub const JOBS: u64 = 500;
pub const HOSTS: u64 = 1_000;
const IMAGES_PER_VM: u64 = 2;
const POINTS_PER_IMAGE: u64 = 25;

/// Writes the generated state at `path`: the schema from the runner's own State, the rows in
/// one transaction.
pub fn generate(path: &Path) {
    use backstop_backupjob::state::State;
    let mut st = State::open(path).expect("state");
    let ds = st
        .add_datastore(
            "backups",
            "NAME=\"backups\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"/nonexistent\"\nRESTIC_PASSWORD=\"x\"\n",
        )
        .expect("datastore");
    drop(st);
    let mut conn = rusqlite::Connection::open(path).expect("sqlite");
    let tx = conn.transaction().expect("tx");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    let per_job = VMS / JOBS;
    for j in 1..=JOBS {
        tx.execute(
            "INSERT INTO jobs (id, name, priority, template) VALUES (?1, ?2, 50, ?3)",
            rusqlite::params![
                j as i64,
                format!("job-{j}"),
                format!("NAME=\"job-{j}\"\nDATASTORE_ID={ds}\nMODE=\"INCREMENT\"\nKEEP_DAILY=7\nKEEP_WEEKLY=4\n")
            ],
        )
        .expect("job");
        // Every job two hours past a weekly scheduled action, and no scheduler: the dashboard
        // shows all of them overdue, its dearest case.
        tx.execute(
            "INSERT INTO sched_actions (job_id, time, repeat, days, end_type) VALUES (?1, ?2, 0, '0,1,2,3,4,5,6', 0)",
            rusqlite::params![j as i64, now - 7200],
        )
        .expect("sched action");
        for run in 0..10i64 {
            let start = now - (10 - run) * 86_400;
            tx.execute(
                "INSERT INTO job_runs (kind, job_id, started_at, ended_at, snapshots) VALUES ('backup', ?1, ?2, ?3, ?4)",
                rusqlite::params![j as i64, start, start + 600, per_job as i64],
            )
            .expect("run");
        }
    }
    let mut image = 0i64;
    for vm in 0..VMS {
        let job = vm / per_job + 1;
        let host = format!("host{}", vm % HOSTS);
        let doc = format!(
            "<VM><ID>{vm}</ID><NAME>vm-{vm}</NAME><STATE>3</STATE><LCM_STATE>3</LCM_STATE><TEMPLATE>\
             <DISK><DISK_ID>0</DISK_ID><FORMAT>qcow2</FORMAT><SIZE>20480</SIZE></DISK></TEMPLATE>\
             <HISTORY_RECORDS><HISTORY><HOSTNAME>{host}</HOSTNAME><DS_ID>0</DS_ID></HISTORY></HISTORY_RECORDS></VM>"
        );
        tx.execute(
            "INSERT INTO vms (id, name, host, document) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![vm as i64, format!("vm-{vm}"), host, doc],
        )
        .expect("vm");
        let (state, reason) = if vm % 97 == 0 {
            ("ERROR", Some("prebackup: cannot reach the host"))
        } else {
            ("UPDATED", None)
        };
        tx.execute(
            "INSERT INTO job_vms (job_id, vm_id, position, state, reason, started_at, ended_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                job as i64,
                vm as i64,
                (vm % per_job) as i64,
                state,
                reason,
                (now - 3600) * 1000,
                (now - 3000) * 1000
            ],
        )
        .expect("job vm");
        for i in 0..IMAGES_PER_VM {
            image += 1;
            let chain_start = now - ((IMAGES_PER_VM - i) * POINTS_PER_IMAGE) as i64 * 86_400;
            tx.execute(
                "INSERT INTO images (id, vm_id, job_id, datastore_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![image, vm as i64, job as i64, ds as i64, chain_start],
            )
            .expect("image");
            for p in 0..POINTS_PER_IMAGE {
                tx.execute(
                    "INSERT INTO increments (image_id, id, source, size_mb, kind, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![
                        image,
                        p as i64,
                        format!("{:016x}{:016x}", image as u64 * 1_000 + p, vm),
                        if p == 0 { 20480i64 } else { 120 },
                        if p == 0 { "FULL" } else { "INCREMENT" },
                        chain_start + p as i64 * 86_400
                    ],
                )
                .expect("increment");
            }
        }
    }
    tx.commit().expect("commit");
}

/// `backstop serve` over the state at `state`, on a free loopback port; stopped (by PID)
/// when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(backstop: &Path, state: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(backstop)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--state"])
        .arg(state)
        .env_remove("BACKSTOP_API_TOKEN")
        .env_remove("BACKSTOP_WEB_PASSWORD_HASH")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("backstop serve");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port }
}

/// One GET; its status line and the time to the last byte.
fn get(port: u16, path: &str) -> (String, Duration, usize) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("response");
    let status = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (status, t.elapsed(), body.len())
}

/// The dashboard rows: each page's median of 5 answers over the generated state.
pub fn dashboard_rows(work: &Path, backstop: &Path) {
    let state = work.join("scale-state.db");
    let _ = std::fs::remove_file(&state);
    let t = Instant::now();
    generate(&state);
    let generated = t.elapsed();
    let server = serve(backstop, &state);
    println!(
        "state of {VMS} VMs in {JOBS} jobs on {HOSTS} hosts, {} increments (generated in {:.1} s, {} MiB):",
        VMS * IMAGES_PER_VM * POINTS_PER_IMAGE,
        generated.as_secs_f64(),
        std::fs::metadata(&state).map_or(0, |m| m.len() >> 20)
    );
    for path in [
        "/api/status",
        "/",
        "/jobs/7",
        "/vms/4242",
        "/datastores/1",
        "/runs",
        "/jobs?q=job-4",
        "/vms?q=host7",
        "/api/vms",
        "/metrics",
    ] {
        let mut times = Vec::new();
        let mut last = (String::new(), 0);
        for _ in 0..5 {
            let (status, took, len) = get(server.port, path);
            times.push(took.as_secs_f64() * 1000.0);
            last = (status, len);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  GET {path:<12} {:>8.1} ms median of 5 (max {:.1}), {} KiB, {} (target < 200 ms)",
            times[2],
            times[4],
            last.1 >> 10,
            last.0.trim()
        );
    }
    drop(server);
}
