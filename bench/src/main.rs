//! `cargo build --release && ./target/release/backstop-bench [--size-mib 2048]`
//!
//! Generates one deterministic disk image (30 % zeros, 25 % random, 27 % text-like, 18 %
//! repeated regions), then, in one run and on the same data, times backstop, restic (the
//! Debian binary, `backup --stdin`) and, when one is found, rustic, each as a separate process
//! under GNU time:
//! 1. full backup, and the machine's CPU limit for that work (`cpu.rs`);
//! 2. incremental after rewriting 5 % of the image in 50 places (backstop is given the changed
//!    extents, as a dirty bitmap would; the others must read the whole image);
//! 3. opening the repository (key derivation and listing: every command pays it);
//! 4. dump of the latest snapshot to /dev/null;
//! 5. restore of the latest snapshot to a file, followed by `sync`, and `cp --sparse=always`
//!    of the image plus `sync` as the floor;
//! 6. the full backup into a repository over SFTP (a loopback sshd), backstop and restic;
//!    the same into an S3 bucket (SeaweedFS's `weed mini` on loopback, when `weed` is on PATH);
//! 7. from an RBD image of a single-node Ceph (when ceph-mon is on PATH): backstop's FULL and
//!    5 % increment against the stock Ceph TM's recipes with restic (`ceph.rs`);
//! 8. a verify of the repository against `restic check --read-data`, and a chain (1 GiB, a
//!    FULL and 10 increments of 5 %) copied to SFTP by `backstop repo copy` and `restic copy`,
//!    then one more increment (`sync.rs`);
//! 9. increment_flatten against the stock driver's recipe, and one scheduler tick.
//!
//! `--only-pull` compares pull mode with push on one disk (`pull.rs`).
//!
//! Every step starts with the page cache emptied (when run as root): each tool reads the image
//! and its repository from the disk.
//!
//! Every backstop snapshot is checked: its dump must hash like the image. Prints seconds, MB/s,
//! peak RSS and the ratio peer/backstop for each step, then each goal and whether it was met.
#![allow(clippy::print_stdout)] // a benchmark prints its table

mod ceph;
mod compare;
mod cpu;
mod data;
mod flatten;
mod oned_scale;
mod peers;
mod pull;
mod report;
mod run;
mod s3;
mod scale;
mod sshd;
mod sync;
mod tick;

use clap::Parser;
use std::fs;
use std::path::PathBuf;

#[derive(Debug, Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Work directory (default: a new one under the temporary directory, removed at the end).
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
    /// Skip the flatten comparison.
    #[arg(long)]
    no_flatten: bool,
    /// Run only the Ceph rows.
    #[arg(long)]
    only_ceph: bool,
    /// Run only the sync rows (a chain of --flatten-mib MiB, --flatten-links increments).
    #[arg(long)]
    only_sync: bool,
    /// Run only the SFTP row: a full backup to a local path, over SFTP, and restic's over SFTP.
    #[arg(long)]
    only_sftp: bool,
    /// Run only pull mode against push: a FULL and a 5 % increment of a --size-mib qcow2 disk
    /// of a stopped VM, through the datastore's backup action over loopback ssh.
    #[arg(long)]
    only_pull: bool,
    /// Run only the scheduler tick measurement.
    #[arg(long)]
    only_tick: bool,
    /// Run only the cloud-scale rows: the scheduler tick over 100,000 VMs, the dashboard over
    /// a generated state of 10,000 VMs and 500,000 increments, and (with
    /// BACKSTOP_ONED_REFERENCE) one inventory pass over 10,000 VMs of a real oned.
    #[arg(long)]
    only_scale: bool,
    /// The rustic binary to time beside restic (default: `rustic` on PATH, if any).
    #[arg(long)]
    rustic: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if args.only_tick {
        tick::tick_benchmark();
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
    if args.only_scale {
        tick::tick_benchmark();
        scale::dashboard_rows(&work, &backstop);
        oned_scale::inventory_row(&work);
        if !args.keep && args.work.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        return;
    }
    if args.only_sync {
        if let Some(rows) = sync::rows(&work, &backstop, args.flatten_mib, args.flatten_links) {
            rows.print();
        }
        if !args.keep && args.work.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        return;
    }
    if args.only_pull {
        pull::rows(&work, &backstop, args.size_mib);
        if !args.keep && args.work.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        return;
    }
    if args.only_sftp {
        compare::sftp_only(&work, &backstop, args.size_mib);
        if !args.keep && args.work.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        return;
    }
    if args.only_ceph {
        compare::ceph_only(&work, &backstop, args.size_mib);
        if !args.keep && args.work.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        return;
    }
    let flatten = (!args.no_flatten).then(|| {
        flatten::flatten_comparison(&work, &backstop, args.flatten_links, args.flatten_mib)
    });
    if !args.only_flatten {
        let rustic = args.rustic.clone().or_else(peers::Peer::find_rustic);
        let report = compare::run(&work, &backstop, args.size_mib, rustic);
        report.print();
    }
    if let Some((r, b)) = flatten {
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
    }
    if !args.only_flatten {
        tick::tick_benchmark();
    }
    if !args.keep && args.work.is_none() {
        let _ = fs::remove_dir_all(&work);
    }
}
