//! The scheduler's tick.

use backstop_backupjob::scheduler::{Execution, JobView, Limits, VmView, tick};
use std::collections::HashMap;

/// One scheduling tick over `jobs * per_job` VMs spread over `hosts` hosts, every job of one
/// priority, under no global limit and MAX_BACKUPS_HOST=2 with two backups already running on
/// every host: every other VM is OUTDATED and each one is looked at and skipped (no
/// head-of-line blocking means walking them all: the worst case). The median and the largest
/// of `runs` ticks on the same state, in ms.
pub fn tick_ms(jobs: u64, per_job: u64, hosts: u64, runs: usize) -> (f64, f64) {
    let mut vms = HashMap::new();
    let mut views = Vec::new();
    for j in 0..jobs {
        let ids: Vec<u64> = (0..per_job).map(|k| j * per_job + k).collect();
        let mut job = JobView::new(
            j,
            50,
            if j % 2 == 0 {
                Execution::Parallel
            } else {
                Execution::Sequential
            },
            &ids,
        );
        // Two running on every host: VM ids below 2 * hosts (id % hosts is the host).
        job.backing_up = ids.iter().copied().filter(|i| *i < 2 * hosts).collect();
        job.outdated = ids.iter().copied().filter(|i| *i >= 2 * hosts).collect();
        views.push(job);
        for id in ids {
            vms.insert(
                id,
                VmView {
                    id,
                    host: Some(format!("host{}", id % hosts)),
                    done: false,
                    consecutive_failures: 0,
                },
            );
        }
    }
    let limits = Limits {
        max_backups: 0,
        max_backups_host: 2,
        ..Limits::default()
    };
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            let d = tick(&views, &vms, &limits);
            std::hint::black_box(d);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    (times[runs / 2], times[runs - 1])
}

/// The tick rows: 1,000 VMs in 50 jobs on 20 hosts, and 100,000 VMs in 500 jobs on 1,000
/// hosts (target < 50 ms each).
pub fn tick_benchmark() {
    let (median, max) = tick_ms(50, 20, 20, 101);
    println!(
        "scheduler tick over 1000 VMs in 50 jobs on 20 hosts: median {median:.3} ms, max {max:.3} ms (target < 50 ms)"
    );
    let (median, max) = tick_ms(500, 200, 1000, 21);
    println!(
        "scheduler tick over 100000 VMs in 500 jobs on 1000 hosts: median {median:.3} ms, max {max:.3} ms (target < 50 ms)"
    );
}
