//! One inventory pass of the runner's OpenNebula mode over 10,000 VMs of a REAL oned 7.4.0
//! (the reference of BACKSTOP_ONED_REFERENCE, started here on loopback and stopped by its own
//! script): the VMs are instantiated on hold (no host needed), a tenth of them labelled, then
//! the pass the runner makes at each run is timed: every page of `one.vmpool.info` read and
//! parsed, the job's VMs chosen by label.

use backstop_protocol::oned::OnedClient;
use backstop_protocol::xmlrpc::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const VMS: u64 = 10_000;

struct Oned {
    reference: PathBuf,
    env: Vec<(String, String)>,
}

impl Oned {
    fn script(&self, name: &str) {
        let out = Command::new(self.reference.join(name))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("reference script");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Oned {
    fn drop(&mut self) {
        self.script("stop-oned.sh");
    }
}

fn id_of(v: Value) -> i64 {
    match v {
        Value::Int(i) => i,
        other => panic!("not an id: {other:?}"),
    }
}

/// The row, or a line saying why it did not run.
pub fn inventory_row(work: &Path) {
    let Some(reference) = std::env::var_os("BACKSTOP_ONED_REFERENCE").map(PathBuf::from) else {
        println!("oned inventory pass: NOT RUN (BACKSTOP_ONED_REFERENCE is unset)");
        return;
    };
    let one = work.join("one");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let path = format!(
        "{}:{}",
        one.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = vec![
        ("ONE_LOCATION".to_string(), one.display().to_string()),
        ("ONE_PORT".into(), port.to_string()),
        (
            "ONE_AUTH".into(),
            one.join("etc/one_auth").display().to_string(),
        ),
        ("RUBYLIB".into(), one.join("lib/ruby").display().to_string()),
        ("PATH".into(), path),
    ];
    let oned = Oned { reference, env };
    oned.script("install-oned.sh");
    oned.script("start-oned.sh");
    let session = std::fs::read_to_string(one.join("etc/one_auth"))
        .expect("one_auth")
        .trim()
        .to_string();
    let endpoint = format!("http://127.0.0.1:{port}/RPC2");
    let client = OnedClient::new(&endpoint, session.clone()).expect("client");
    let template = id_of(
        client
            .call(
                "one.template.allocate",
                &[Value::Str("NAME=\"scale\"\nCPU=0.01\nMEMORY=16\n".into())],
            )
            .expect("template"),
    );
    let t = Instant::now();
    std::thread::scope(|s| {
        for part in 0..4u64 {
            let (endpoint, session) = (endpoint.clone(), session.clone());
            s.spawn(move || {
                let c = OnedClient::new(&endpoint, session).expect("client");
                for i in (part..VMS).step_by(4) {
                    let extra = if i % 10 == 0 {
                        "LABELS=\"bench/scale\"\n"
                    } else {
                        ""
                    };
                    c.call(
                        "one.template.instantiate",
                        &[
                            Value::Int(template),
                            Value::Str(format!("vm-{i}")),
                            Value::Bool(true),
                            Value::Str(extra.into()),
                            Value::Bool(false),
                        ],
                    )
                    .expect("instantiate");
                }
            });
        }
    });
    let made = t.elapsed();
    let mut times = Vec::new();
    let mut found = (0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let pool = backstop_backupjob::oned::inventory::read_pool(
            &client,
            backstop_backupjob::oned::inventory::PAGE,
        )
        .expect("pool");
        let (chosen, _) =
            backstop_backupjob::oned::inventory::select(&pool, &[], &["bench".to_string()]);
        times.push(t.elapsed().as_secs_f64());
        found = (pool.len(), chosen.len());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "oned inventory pass over {} VMs of a real oned 7.4.0 ({} pages of {}): median {:.2} s of 3 (max {:.2}); {} chosen by label (VMs made in {:.0} s)",
        found.0,
        found
            .0
            .div_ceil(backstop_backupjob::oned::inventory::PAGE as usize),
        backstop_backupjob::oned::inventory::PAGE,
        times[1],
        times[2],
        found.1,
        made.as_secs_f64()
    );
    drop(oned);
}
