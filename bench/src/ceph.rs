//! The Ceph rows: the benchmark's image in an RBD image of a single-node Ceph on this machine
//! (the tests' own cluster helper, tests/kit/src/ceph.rs; when ceph-mon is on
//! PATH), backed up from its snapshots by backstop (librbd through qemu-nbd, an increment only
//! where `rbd diff` says) and by the stock Ceph TM's recipes with restic:
//! - FULL: `rbd export` of the snapshot to a staging file, `qemu-img convert` to qcow2,
//!   `restic backup` of the qcow2 (what the stock TM does for every FULL and for a chain's
//!   first increment);
//! - increment: the same recipe again, and the stock rbd-format increment (`rbd export-diff
//!   --from-snap` to a staging file, `restic backup` of it), the cheapest the stock offers.
//!
//! The host disk space each recipe stages is measured (`du` of the staging directory at its
//! peak); backstop stages nothing.

use backstop_testkit::ceph as cluster;

use crate::data::sha256_file;
use crate::run::{Measure, capture, q, settle, timed};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

const FILE: &str = "/var/lib/one/datastores/0/7/backup/disk.0.0";
const IMAGE: &str = "one/bench";

pub struct CephRows {
    pub size_mib: u64,
    pub full: Measure,
    pub stock_full: Measure,
    /// Staged by the stock FULL recipe at its peak, MiB.
    pub stock_full_staged_mib: f64,
    pub inc: Measure,
    pub stock_inc_convert: Measure,
    pub stock_inc_diff: Measure,
    pub stock_inc_diff_staged_mib: f64,
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
}

/// Writes the changed extents (`rewrite`'s JSON) of `image` into the RBD image as an rbd diff
/// v1 stream through `rbd import-diff`, so the RBD image equals the file again.
fn push_changes(conf: &Path, image: &Path, extents_json: &str) {
    let extents: Vec<serde_json::Value> = serde_json::from_str(extents_json).expect("extents");
    let size = fs::metadata(image).expect("image").len();
    let file = fs::File::open(image).expect("image");
    let mut child = Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(["import-diff", "--no-progress", "-", IMAGE])
        .stdin(Stdio::piped())
        .spawn()
        .expect("rbd import-diff");
    {
        let mut w = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
        w.write_all(b"rbd diff v1\ns").expect("diff");
        w.write_all(&size.to_le_bytes()).expect("diff");
        for e in &extents {
            let (off, len) = (
                e["offset"].as_u64().expect("offset"),
                e["length"].as_u64().expect("length"),
            );
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, off).expect("read");
            w.write_all(b"w").expect("diff");
            w.write_all(&off.to_le_bytes()).expect("diff");
            w.write_all(&len.to_le_bytes()).expect("diff");
            w.write_all(&buf).expect("diff");
        }
        w.write_all(b"e").expect("diff");
        w.flush().expect("diff");
    }
    assert!(
        child.wait().expect("rbd").success(),
        "rbd import-diff failed"
    );
}

/// The rows, or None when Ceph is not installed. `image` is the benchmark's image; `rewrite`
/// changes 5 % of it and returns the changed extents.
pub fn rows(
    work: &Path,
    backstop: &Path,
    image: &Path,
    rewrite: impl FnOnce() -> String,
) -> Option<CephRows> {
    if !on_path("ceph-mon") || !on_path("rbd") {
        println!("ceph-mon or rbd not found: no Ceph rows");
        return None;
    }
    let size = fs::metadata(image).expect("image").len();
    let dir = work.join("ceph-bench");
    fs::create_dir_all(&dir).expect("dir");
    println!("starting a single-node Ceph and importing the image ...");
    let ceph = cluster::Ceph::start_sized(&dir, 3 * (size >> 30) + 4);
    let conf = ceph.conf.clone();
    let rbd = |rest: &str| format!("rbd -c {} {rest}", q(&conf));
    capture(
        "rbd import",
        &rbd(&format!("import --no-progress {} {IMAGE}", q(image))),
    );
    let snap = |n: u32| {
        capture("snap", &rbd(&format!("snap create {IMAGE}@one_backup_{n}")));
        capture(
            "protect",
            &rbd(&format!("snap protect {IMAGE}@one_backup_{n}")),
        );
    };
    snap(0);
    let repo = dir.join("backstop-repo");
    let bs = |rest: &str| format!("{} repo -r {} {rest}", q(backstop), q(&repo));
    let check = |label: &str| {
        let out = dir.join("dump.raw");
        capture(
            label,
            &format!("{} > {}", bs(&format!("dump latest {FILE}")), q(&out)),
        );
        let same = sha256_file(&out).expect("hash") == sha256_file(image).expect("hash");
        let _ = fs::remove_file(&out);
        assert!(same, "{label}: backstop's dump differs from the RBD image");
    };
    timed("backstop ceph init", &bs("init"));
    let restic_repo = dir.join("restic-repo");
    let restic = |rest: &str| format!("restic -r {} --no-cache -q {rest}", q(&restic_repo));
    timed("restic ceph init", &restic("init"));
    let stage = dir.join("stage");
    let conf_opt = format!("--ceph-conf {}", q(&conf));

    settle();
    let full = timed(
        "backstop ceph full",
        &bs(&format!(
            "backup --rbd {IMAGE}@one_backup_0 --path {FILE} {conf_opt}"
        )),
    );
    check("verify ceph full");
    // The stock recipe; the staging directory is measured before its cleanup.
    let recipe = |n: u32| {
        format!(
            "mkdir -p {s} && {export} && qemu-img convert -m 4 -f raw -O qcow2 {s}/disk.0.raw {s}/disk.0.{n} && {backup} && du -sk {s} > {s}.du && rm -rf {s}",
            s = q(&stage),
            export = rbd(&format!(
                "export --no-progress {IMAGE}@one_backup_{n} {}/disk.0.raw",
                q(&stage)
            )),
            backup = restic(&format!("backup {}/disk.0.{n}", q(&stage))),
        )
    };
    settle();
    let stock_full = timed("stock ceph full", &recipe(0));
    let du = |s: &Path| {
        let text = fs::read_to_string(s.with_extension("du")).expect("du");
        text.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    let stock_full_staged_mib = du(&stage);

    println!("rewriting 5 % of the RBD image ...");
    let extents = rewrite();
    push_changes(&conf, image, &extents);
    snap(1);
    settle();
    let inc = timed(
        "backstop ceph incremental",
        &bs(&format!(
            "backup --rbd {IMAGE}@one_backup_1 --rbd-from-snap one_backup_0 --parent latest --path {FILE} {conf_opt}"
        )),
    );
    check("verify ceph incremental");
    settle();
    let stock_inc_convert = timed("stock ceph incremental (convert)", &recipe(1));
    settle();
    let stock_inc_diff = timed(
        "stock ceph incremental (export-diff)",
        &format!(
            "mkdir -p {s} && {diff} && {backup} && du -sk {s} > {s}.du && rm -rf {s}",
            s = q(&stage),
            diff = rbd(&format!(
                "export-diff --no-progress --from-snap one_backup_0 {IMAGE}@one_backup_1 {}/disk.0.1.rbdiff",
                q(&stage)
            )),
            backup = restic(&format!("backup {}/disk.0.1.rbdiff", q(&stage))),
        ),
    );
    let stock_inc_diff_staged_mib = du(&stage);
    drop(ceph);
    let _ = fs::remove_dir_all(&dir);
    Some(CephRows {
        size_mib: size >> 20,
        full,
        stock_full,
        stock_full_staged_mib,
        inc,
        stock_inc_convert,
        stock_inc_diff,
        stock_inc_diff_staged_mib,
    })
}

impl CephRows {
    pub fn print(&self) {
        let row = |name: &str, ours: &Measure, theirs: &Measure, what: &str| {
            println!(
                "  {name:<14} backstop {:>7.2} s ({:>5.0} MiB RSS)   {what} {:>7.2} s ({:>5.0} MiB RSS)   {:.1}x",
                ours.seconds,
                ours.rss_mib,
                theirs.seconds,
                theirs.rss_mib,
                theirs.seconds / ours.seconds
            );
        };
        println!(
            "Ceph RBD, a {} MiB image on a single-node Ceph on this machine (stock = the stock Ceph TM's recipe + restic 0.14):",
            self.size_mib
        );
        row(
            "full",
            &self.full,
            &self.stock_full,
            "stock export+convert+restic",
        );
        row(
            "increment 5 %",
            &self.inc,
            &self.stock_inc_convert,
            "stock export+convert+restic",
        );
        row(
            "increment 5 %",
            &self.inc,
            &self.stock_inc_diff,
            "stock export-diff+restic   ",
        );
        println!(
            "  host disk space staged: backstop 0 MiB (reads the snapshot through librbd), stock full {:.0} MiB, stock export-diff increment {:.0} MiB",
            self.stock_full_staged_mib, self.stock_inc_diff_staged_mib
        );
        let ratio = self.stock_inc_convert.seconds / self.inc.seconds;
        println!(
            "  goal: increment 10x faster than the stock recipe: {:.1}x, {}; against the stock rbd-format increment: {:.1}x",
            ratio,
            if ratio >= 10.0 { "met" } else { "NOT met" },
            self.stock_inc_diff.seconds / self.inc.seconds
        );
    }
}
