//! `cargo run --release -p backstop-bench -- [--size-mib 2048]`
//!
//! Generates one deterministic disk image (30 % zeros, 25 % random, 27 % text-like, 18 %
//! repeated regions), then, in one run and on the same data, times backstop and restic (the
//! Debian restic binary, `backup --stdin`) as separate processes under GNU time:
//! 1. full backup;
//! 2. incremental after rewriting 5 % of the image in 50 places (backstop is given the changed
//!    extents, as a dirty bitmap would; restic must read the whole image);
//! 3. dump of the latest snapshot to /dev/null;
//! 4. restore of the latest snapshot to a file.
//!
//! Every backstop snapshot is checked: its dump must hash like the image. Prints seconds, MB/s,
//! peak RSS and the ratio restic/backstop for each step.
#![allow(clippy::print_stdout)] // a benchmark prints its table

use clap::Parser;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Work directory (default: a new one under /var/tmp, removed at the end).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// Increments in the flatten comparison (FULL included).
    #[arg(long, default_value_t = 10)]
    flatten_links: u64,
    /// Disk size in MiB for the flatten comparison.
    #[arg(long, default_value_t = 1024)]
    flatten_mib: u64,
    /// Run only the flatten comparison.
    #[arg(long)]
    only_flatten: bool,
    /// Run only the scheduler tick measurement.
    #[arg(long)]
    only_tick: bool,
}

/// One scheduling tick over 1,000 VMs in 50 jobs on 20 hosts (the target: < 50 ms);
/// the median of 101 runs, each on the same state.
fn tick_benchmark() {
    use backstop_backupjob::scheduler::{Execution, JobView, Limits, VmView, tick};
    use std::collections::HashMap;
    let mut vms = HashMap::new();
    let mut jobs = Vec::new();
    for j in 0..50u64 {
        let ids: Vec<u64> = (0..20).map(|k| j * 20 + k).collect();
        let mut job = JobView::new(
            j,
            50, // one priority: every job walks its VMs (the worst case)
            if j % 2 == 0 {
                Execution::Parallel
            } else {
                Execution::Sequential
            },
            &ids,
        );
        job.outdated = ids.iter().copied().collect();
        jobs.push(job);
        for id in ids {
            vms.insert(
                id,
                VmView {
                    id,
                    host: Some(format!("host{}", id % 20)),
                    done: false,
                    consecutive_failures: 0,
                },
            );
        }
    }
    let limits = Limits {
        max_backups: 0,
        max_backups_host: 0,
        ..Limits::default()
    };
    let mut times: Vec<f64> = (0..101)
        .map(|_| {
            let t = std::time::Instant::now();
            let d = tick(&jobs, &vms, &limits);
            std::hint::black_box(d);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "scheduler tick over 1000 VMs in 50 jobs on 20 hosts: median {:.3} ms, max {:.3} ms (target < 50 ms)",
        times[50], times[100]
    );
}

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "benchmark only";
const FILE: &str = "/var/lib/one/datastores/0/7/backup/disk.0.0";

struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The image: 1 MiB regions; the kind of each region is drawn so that the shares come out
/// as 30/25/27/18 %. Zeros are written as zero bytes (not holes): both tools read them.
fn generate(path: &Path, mib: u64) -> std::io::Result<()> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(mib * MIB)?;
    let mut g = Gen(0x5eed);
    let words: Vec<&[u8]> = [
        "the ",
        "backup ",
        "of ",
        "virtual ",
        "machine ",
        "disk ",
        "image ",
        "is ",
        "stored ",
        "in ",
        "chunks ",
        "\n",
        "0123 ",
        "INFO: ",
        "2026-11-21 ",
    ]
    .iter()
    .map(|w| w.as_bytes())
    .collect();
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..mib {
        let r = g.next() % 100;
        buf.fill(0);
        match r {
            0..30 => {}
            30..55 => g.fill(&mut buf),
            55..82 => {
                let mut pos = 0;
                while pos < buf.len() {
                    let w = words[(g.next() % words.len() as u64) as usize];
                    let n = w.len().min(buf.len() - pos);
                    buf[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
            _ => {
                // a repeat of an earlier region (or of a fixed pattern at the start)
                if i > 0 {
                    let from = g.next() % i;
                    f.read_exact_at(&mut buf, from * MIB)?;
                } else {
                    buf.iter_mut()
                        .enumerate()
                        .for_each(|(j, b)| *b = (j % 253) as u8);
                }
            }
        }
        f.write_all_at(&buf, i * MIB)?;
    }
    f.sync_all()
}

/// Rewrites 5 % of the image in 50 places (chosen by `seed`); returns the extents as nbdinfo
/// JSON.
fn rewrite(path: &Path, size: u64, seed: u64) -> std::io::Result<String> {
    let f = fs::OpenOptions::new().write(true).open(path)?;
    let mut g = Gen(seed);
    let len = size / 20 / 50;
    let mut entries = Vec::new();
    for k in 0..50u64 {
        // one change in each fiftieth of the disk, at a random place inside it
        let slot = size / 50;
        let off = k * slot + g.next() % (slot - len);
        let mut buf = vec![0u8; len as usize];
        g.fill(&mut buf);
        f.write_all_at(&buf, off)?;
        entries.push(
            serde_json::json!({"offset": off, "length": len, "type": 1, "description": "dirty"}),
        );
    }
    f.sync_all()?;
    Ok(serde_json::Value::Array(entries).to_string())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

struct Measure {
    seconds: f64,
    rss_mib: f64,
}

/// Runs `sh -c script` under GNU time; fails on a non-zero exit.
fn timed(label: &str, script: &str) -> Measure {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "BENCH %e %M", "sh", "-c", script])
        .env("RESTIC_PASSWORD", PASSWORD)
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

/// An sshd on 127.0.0.1 for the SFTP row, with its own keys; stopped by PID on drop.
struct Sshd {
    child: std::process::Child,
    config: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sshd(work: &Path) -> Option<Sshd> {
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

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Runs `sh -c script`; its stdout. Fails on a non-zero exit.
fn capture(label: &str, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(
        out.status.success(),
        "{label} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// increment_flatten of a chain of `links` increments of a `mib` disk (KEEP_LAST=1, so all of
/// them merge): backstop's action, as oned calls it, against the stock driver's recipe on the
/// same chain stored the stock way (qcow2 deltas in restic): dump every file, rebase, commit,
/// back up the merged image, forget and prune. Returns (stock, backstop).
fn flatten_comparison(work: &Path, backstop: &Path, links: u64, mib: u64) -> (Measure, Measure) {
    let dir = work.join("flatten");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("flatten dir");
    let size = mib * MIB;
    let image = dir.join("disk.raw");
    println!("flatten: building a chain of {links} increments of a {mib} MiB disk, both ways ...");
    generate(&image, mib).expect("generate");
    let base_path = dir.join("datastore");
    let b_repo = base_path.join("7");
    let bs = |rest: &str| format!("{} repo -r {} {rest}", q(backstop), q(&b_repo));
    let r_repo = dir.join("restic-repo");
    let restic = |rest: &str| format!("restic --no-cache -q -r {} {rest}", q(&r_repo));
    capture("backstop init", &bs("init"));
    capture("restic init", &restic("init"));
    let stock_dir = dir.join("var/lib/one/datastores/0/7/backup");
    fs::create_dir_all(&stock_dir).expect("stock dir");
    let file = |n: u64| format!("/var/lib/one/datastores/0/7/backup/disk.0.{n}");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for n in 0..links {
        let mut args = format!(
            "backup --image {} --format raw --path {} --tag one-7 --tag backstop-image --json",
            q(&image),
            file(n)
        );
        let stock_file = stock_dir.join(format!("disk.0.{n}"));
        if n > 0 {
            let extents = dir.join("changed.json");
            fs::write(&extents, rewrite(&image, size, 1000 + n).expect("rewrite"))
                .expect("extents");
            args.push_str(&format!(
                " --parent latest --parent-path {} --changed-extents {}",
                file(n - 1),
                q(&extents)
            ));
            // The stock increment: a qcow2 delta against the previous file.
            capture(
                "qemu-img convert -B",
                &format!(
                    "qemu-img convert -O qcow2 -F qcow2 -B {} {} {}",
                    q(&stock_dir.join(format!("disk.0.{}", n - 1))),
                    q(&image),
                    q(&stock_file)
                ),
            );
        } else {
            capture(
                "qemu-img convert",
                &format!("qemu-img convert -O qcow2 {} {}", q(&image), q(&stock_file)),
            );
        }
        let summary: serde_json::Value =
            serde_json::from_str(capture("backstop backup", &bs(&args)).trim())
                .expect("backup json");
        let id = summary["snapshot_id"]
            .as_str()
            .expect("snapshot_id")
            .to_string();
        ours.push(id[..8].to_string());
        let out = capture(
            "restic backup",
            &restic(&format!("backup --json --tag one-7 {}", q(&stock_file))),
        );
        let id = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["snapshot_id"].as_str().map(str::to_string))
            .expect("restic snapshot id");
        theirs.push(id[..8].to_string());
    }
    let last = links - 1;

    // backstop: the installed action, as oned calls it.
    let action = dir.join("remotes/datastore/backstop/increment_flatten");
    fs::create_dir_all(action.parent().expect("parent")).expect("remotes");
    std::os::unix::fs::symlink(backstop, &action).expect("symlink");
    let incs: String = ours
        .iter()
        .enumerate()
        .map(|(k, src)| {
            format!(
                "<INCREMENT><ID>{k}</ID><SOURCE>{src}</SOURCE><SIZE>{}</SIZE><TYPE>{}</TYPE></INCREMENT>",
                if k == 0 { mib } else { mib / 20 },
                if k == 0 { "FULL" } else { "INCREMENT" }
            )
        })
        .collect();
    let xml = format!(
        "<DS_DRIVER_ACTION_DATA><IMAGE><ID>40</ID><SOURCE>{}</SOURCE><FORMAT>raw</FORMAT>\
         <VMS><ID>7</ID></VMS><TEMPLATE/><BACKUP_INCREMENTS>{incs}</BACKUP_INCREMENTS></IMAGE>\
         <DATASTORE><ID>100</ID><DS_MAD>backstop</DS_MAD><BASE_PATH>{}</BASE_PATH>\
         <TEMPLATE><RESTIC_PASSWORD>{PASSWORD}</RESTIC_PASSWORD></TEMPLATE></DATASTORE>\
         <EXTRA_DATA><KEEP_LAST>1</KEEP_LAST></EXTRA_DATA></DS_DRIVER_ACTION_DATA>",
        ours[0],
        base_path.display()
    );
    use base64::Engine;
    let stdin = dir.join("flatten.b64");
    fs::write(
        &stdin,
        base64::engine::general_purpose::STANDARD.encode(xml),
    )
    .expect("stdin");
    let b = timed(
        "backstop increment_flatten",
        &format!("{} 40 < {}", q(&action), q(&stdin)),
    );
    let snaps = capture("backstop snapshots", &bs("snapshots --json"));
    let snaps: serde_json::Value = serde_json::from_str(&snaps).expect("snapshots json");
    assert_eq!(
        snaps.as_array().map(Vec::len),
        Some(1),
        "backstop's flatten left {snaps}"
    );
    let dumped = dir.join("ours.raw");
    capture(
        "backstop dump",
        &format!(
            "{} > {}",
            bs(&format!("dump {} {}", ours[last as usize], file(last))),
            q(&dumped)
        ),
    );
    assert_eq!(
        sha256_file(&dumped).expect("hash"),
        sha256_file(&image).expect("hash"),
        "backstop's flattened image differs from the disk"
    );
    let _ = fs::remove_file(&dumped);

    // The stock recipe (driver contract §5.7), on the same chain.
    let merge = dir.join("merge");
    let mut script = format!("set -e\nmkdir -p {}\n", q(&merge));
    for n in 0..links {
        script.push_str(&format!(
            "{} > {}\n",
            restic(&format!(
                "dump {} {}",
                theirs[n as usize],
                q(&stock_dir.join(format!("disk.0.{n}")))
            )),
            q(&merge.join(format!("disk.0.{n}")))
        ));
    }
    for n in 1..links {
        script.push_str(&format!(
            "qemu-img rebase -u -F qcow2 -b {} {}\n",
            q(&merge.join(format!("disk.0.{}", n - 1))),
            q(&merge.join(format!("disk.0.{n}")))
        ));
    }
    let merged = merge.join(format!("disk.0.{last}"));
    script.push_str(&format!(
        "qemu-img commit -q -f qcow2 -b {} {}\nmv {} {}\n",
        q(&merge.join("disk.0.0")),
        q(&merged),
        q(&merge.join("disk.0.0")),
        q(&merged)
    ));
    script.push_str(&format!(
        "{}\n{}\n",
        restic(&format!("backup --force --tag one-7 {}", q(&merged))),
        restic(&format!("forget --prune {}", theirs.join(" ")))
    ));
    let r = timed("stock-style flatten", &script);
    capture(
        "qemu-img compare",
        &format!(
            "qemu-img compare -q -f qcow2 -F raw {} {}",
            q(&merged),
            q(&image)
        ),
    );
    let _ = fs::remove_dir_all(&dir);
    (r, b)
}

fn main() {
    let args = Args::parse();
    if args.only_tick {
        tick_benchmark();
        return;
    }
    let work = args.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("backstop-bench-{}", std::process::id()))
    });
    fs::create_dir_all(&work).expect("work dir");
    let backstop = std::env::current_exe()
        .expect("exe")
        .with_file_name("backstop");
    assert!(
        backstop.exists(),
        "build backstop first: cargo build --release (looked for {})",
        backstop.display()
    );
    let flatten = flatten_comparison(&work, &backstop, args.flatten_links, args.flatten_mib);
    let report_flatten = |(r, b): &(Measure, Measure)| {
        println!(
            "increment_flatten of {} increments of a {} MiB disk (KEEP_LAST=1): backstop {:.2} s ({:.0} MiB RSS), stock-style merge {:.2} s ({:.0} MiB RSS): {:.1}x",
            args.flatten_links,
            args.flatten_mib,
            b.seconds,
            b.rss_mib,
            r.seconds,
            r.rss_mib,
            r.seconds / b.seconds
        );
    };
    if args.only_flatten {
        report_flatten(&flatten);
        if !args.keep && args.work.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        return;
    }
    let image = work.join("disk.raw");
    let size = args.size_mib * MIB;
    println!(
        "generating a {} MiB image in {} ...",
        args.size_mib,
        work.display()
    );
    generate(&image, args.size_mib).expect("generate");
    let r_repo = work.join("restic-repo");
    let b_repo = work.join("backstop-repo");
    let restic = |rest: &str| format!("restic --no-cache -q -r {} {rest}", q(&r_repo));
    let bs = |rest: &str| format!("{} repo -r {} {rest}", q(&backstop), q(&b_repo));
    timed("restic init", &restic("init"));
    timed("backstop init", &bs("init"));

    let mut rows = Vec::new();
    let sync = "sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; true";
    let _ = Command::new("sh").args(["-c", sync]).status();
    let r_full = timed(
        "restic full",
        &restic(&format!(
            "backup --stdin --stdin-filename disk.0.0 < {}",
            q(&image)
        )),
    );
    let b_full = timed(
        "backstop full",
        &bs(&format!(
            "backup --image {} --format raw --path {FILE}",
            q(&image)
        )),
    );
    rows.push(("full backup", r_full, b_full, size));
    let check = |label: &str| {
        let out = work.join("dump.raw");
        let script = format!("{} > {}", bs(&format!("dump latest {FILE}")), q(&out));
        timed(label, &script);
        let ok = sha256_file(&out).expect("hash") == sha256_file(&image).expect("hash");
        let _ = fs::remove_file(&out);
        assert!(ok, "{label}: backstop's dump differs from the image");
    };
    check("verify full");

    let extents = work.join("changed.json");
    fs::write(&extents, rewrite(&image, size, 0xc0ffee).expect("rewrite")).expect("extents");
    let r_inc = timed(
        "restic incremental",
        &restic(&format!(
            "backup --stdin --stdin-filename disk.0.0 < {}",
            q(&image)
        )),
    );
    let b_inc = timed(
        "backstop incremental",
        &bs(&format!(
            "backup --image {} --format raw --path {FILE} --parent latest --changed-extents {}",
            q(&image),
            q(&extents)
        )),
    );
    rows.push(("incremental (5 % in 50 places)", r_inc, b_inc, size));
    check("verify incremental");

    // What every command pays before any data moves: opening the repository (scrypt).
    let b_open = timed("backstop open", &bs("snapshots"));
    let r_open = timed("restic open", &restic("snapshots"));
    let r_dump = timed("restic dump", &restic("dump latest disk.0.0 > /dev/null"));
    let b_dump = timed(
        "backstop dump",
        &bs(&format!("dump latest {FILE} > /dev/null")),
    );
    rows.push(("dump latest", r_dump, b_dump, size));

    let r_target = work.join("restic-restore");
    let b_target = work.join("backstop-restore.raw");
    let r_restore = timed(
        "restic restore",
        &restic(&format!("restore latest --target {}", q(&r_target))),
    );
    let b_restore = timed(
        "backstop restore",
        &bs(&format!("restore latest {FILE} --target {}", q(&b_target))),
    );
    assert!(
        sha256_file(&b_target).expect("hash") == sha256_file(&image).expect("hash"),
        "backstop's restore differs from the image"
    );
    let _ = fs::remove_dir_all(&r_target);
    let _ = fs::remove_file(&b_target);
    rows.push(("restore latest", r_restore, b_restore, size));

    // The same full backup into a repository over SFTP (loopback sshd).
    let sftp_row = start_sshd(&work).map(|sshd| {
        let remote = format!("sftp:benchhost:{}", work.join("sftp-repo").display());
        let over = |rest: &str| {
            format!(
                "{} repo -r {} --ssh-config {} {rest}",
                q(&backstop),
                q(Path::new(&remote)),
                q(&sshd.config)
            )
        };
        timed("backstop sftp init", &over("init"));
        timed(
            "backstop sftp full",
            &over(&format!(
                "backup --image {} --format raw --path {FILE}",
                q(&image)
            )),
        )
    });

    println!();
    println!(
        "{} MiB image, {} cores; restic: {}",
        args.size_mib,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        String::from_utf8_lossy(
            &Command::new("restic")
                .arg("version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim()
    );
    println!(
        "{:<32} {:>10} {:>10} {:>9} {:>10} {:>10} {:>12} {:>12}",
        "step",
        "restic s",
        "backstop s",
        "ratio",
        "restic MB/s",
        "backstop MB/s",
        "restic RSS",
        "backstop RSS"
    );
    for (name, r, b, bytes) in &rows {
        let mbs = |s: f64| *bytes as f64 / 1e6 / s;
        println!(
            "{:<32} {:>10.2} {:>10.2} {:>8.2}x {:>10.0} {:>13.0} {:>9.0} MiB {:>9.0} MiB",
            name,
            r.seconds,
            b.seconds,
            r.seconds / b.seconds,
            mbs(r.seconds),
            mbs(b.seconds),
            r.rss_mib,
            b.rss_mib
        );
    }
    println!(
        "incremental / full (backstop): {:.1} %",
        100.0 * rows[1].2.seconds / rows[0].2.seconds
    );
    println!(
        "opening the repository (key derivation, listing): backstop {:.2} s, restic {:.2} s; without it the backstop incremental is {:.1} % of the full backup",
        b_open.seconds,
        r_open.seconds,
        100.0 * (rows[1].2.seconds - b_open.seconds) / (rows[0].2.seconds - b_open.seconds)
    );
    println!(
        "incremental / full (restic):   {:.1} %",
        100.0 * rows[1].1.seconds / rows[0].1.seconds
    );
    match sftp_row {
        Some(m) => println!(
            "full backup over SFTP (loopback sshd): {:.2} s, {:.0} MiB RSS; {:+.1} % against the local path ({:.2} s)",
            m.seconds,
            m.rss_mib,
            100.0 * (m.seconds - rows[0].2.seconds) / rows[0].2.seconds,
            rows[0].2.seconds
        ),
        None => println!("full backup over SFTP: not measured (no /usr/sbin/sshd)"),
    }
    report_flatten(&flatten);
    tick_benchmark();
    if !args.keep && args.work.is_none() {
        let _ = fs::remove_dir_all(&work);
    }
}
