//! One scheduling tick, as a pure function (driver contract §11.3, step 5): given the jobs, the VMs and
//! the limits, which VM backups to start now.
//!
//! The rules, as oned applies them:
//! - **strict priority**: only the jobs that have OUTDATED VMs *and* the highest PRIORITY among
//!   such jobs run; the others wait until no higher job has OUTDATED VMs;
//! - each job walks its `BACKUP_VMS` in order and takes only OUTDATED VMs;
//! - `SEQUENTIAL`: one VM at a time per job (nothing starts while one is BACKING_UP);
//! - `PARALLEL`: as many as the limits allow: `MAX_BACKUPS` running backups overall and
//!   `MAX_BACKUPS_HOST` per host (0 means unlimited); the overall limit stops the tick;
//! - a VM that no longer exists (or is DONE) leaves the job; a VM never deployed (no host) is
//!   skipped and stays OUTDATED.
//!
//! Two improvements over oned, both on by default:
//! - **no head-of-line blocking**: oned stops walking a job at the first VM whose host is
//!   saturated, so VMs on idle hosts wait too; here such a VM is only skipped;
//! - **failure cap**: [`execute`] does not put back into OUTDATED a VM that has failed
//!   `max_failures` times in a row; it stays in ERROR with its reason until `retry`.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    Sequential,
    Parallel,
}

/// A job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub id: u64,
    /// 0–99; higher runs first.
    pub priority: u8,
    pub execution: Execution,
    /// `BACKUP_VMS`, in backup order.
    pub vms: Vec<u64>,
    pub outdated: BTreeSet<u64>,
    pub backing_up: BTreeSet<u64>,
    pub updated: BTreeSet<u64>,
    pub error: BTreeSet<u64>,
}

impl JobView {
    pub fn new(id: u64, priority: u8, execution: Execution, vms: &[u64]) -> JobView {
        JobView {
            id,
            priority,
            execution,
            vms: vms.to_vec(),
            outdated: BTreeSet::new(),
            backing_up: BTreeSet::new(),
            updated: BTreeSet::new(),
            error: BTreeSet::new(),
        }
    }
}

/// A VM as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmView {
    pub id: u64,
    /// The host it runs on; `None` when it was never deployed.
    pub host: Option<String>,
    /// DONE (terminated) VMs leave their jobs.
    pub done: bool,
    /// Backups that failed in a row (reset by a success or a retry).
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Running backups overall; 0 is unlimited (oned's default is 5).
    pub max_backups: u32,
    /// Running backups per host; 0 is unlimited (oned's default is 2).
    pub max_backups_host: u32,
    /// Failures in a row after which a VM stays in ERROR; 0 never caps.
    pub max_failures: u32,
    /// oned's head-of-line blocking, for comparison; off by default.
    pub head_of_line_blocking: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_backups: 5,
            max_backups_host: 2,
            max_failures: 3,
            head_of_line_blocking: false,
        }
    }
}

/// What a tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the backup of `vm` for `job` (OUTDATED → BACKING_UP).
    Start { job: u64, vm: u64 },
    /// The VM is gone or DONE: it leaves the job's BACKUP_VMS and sets.
    Remove { job: u64, vm: u64 },
}

/// The backups to start now. `vms` without an entry count as gone.
pub fn tick(jobs: &[JobView], vms: &HashMap<u64, VmView>, limits: &Limits) -> Vec<Decision> {
    let mut decisions = Vec::new();
    // Counters of running backups, overall and per host.
    let mut active: u32 = 0;
    let mut per_host: HashMap<&str, u32> = HashMap::new();
    for job in jobs {
        for vm in &job.backing_up {
            active += 1;
            if let Some(h) = vms.get(vm).and_then(|v| v.host.as_deref()) {
                *per_host.entry(h).or_default() += 1;
            }
        }
    }
    let top = jobs
        .iter()
        .filter(|j| !j.outdated.is_empty())
        .map(|j| j.priority)
        .max();
    let Some(top) = top else {
        return decisions;
    };
    let mut running: Vec<&JobView> = jobs
        .iter()
        .filter(|j| !j.outdated.is_empty() && j.priority == top)
        .collect();
    running.sort_by_key(|j| j.id);
    for job in running {
        let mut started_here = job.backing_up.len();
        for vm_id in job.vms.iter().filter(|v| job.outdated.contains(v)) {
            if job.execution == Execution::Sequential && started_here >= 1 {
                break;
            }
            if limits.max_backups != 0 && active >= limits.max_backups {
                return decisions;
            }
            let Some(vm) = vms.get(vm_id).filter(|v| !v.done) else {
                decisions.push(Decision::Remove {
                    job: job.id,
                    vm: *vm_id,
                });
                continue;
            };
            let Some(host) = vm.host.as_deref() else {
                continue;
            };
            let on_host = per_host.get(host).copied().unwrap_or(0);
            if limits.max_backups_host != 0 && on_host >= limits.max_backups_host {
                if limits.head_of_line_blocking {
                    break;
                }
                continue;
            }
            decisions.push(Decision::Start {
                job: job.id,
                vm: *vm_id,
            });
            active += 1;
            started_here += 1;
            *per_host.entry(host).or_default() += 1;
        }
    }
    decisions
}

/// Why `execute` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecuteError {
    #[error("backup job {0} has pending backups in progress")]
    Pending(u64),
}

/// A run of the job (a due SCHED_ACTION or `backupjob backup`): refused while VMs are still
/// OUTDATED or BACKING_UP; otherwise UPDATED and ERROR are cleared and every VM becomes
/// OUTDATED, except those that failed `max_failures` times in a row, which stay in ERROR.
pub fn execute(
    job: &JobView,
    vms: &HashMap<u64, VmView>,
    limits: &Limits,
) -> Result<JobView, ExecuteError> {
    if !job.outdated.is_empty() || !job.backing_up.is_empty() {
        return Err(ExecuteError::Pending(job.id));
    }
    let capped = |v: &u64| {
        limits.max_failures != 0
            && vms
                .get(v)
                .is_some_and(|vm| vm.consecutive_failures >= limits.max_failures)
    };
    let mut next = job.clone();
    next.updated.clear();
    next.error = job.vms.iter().copied().filter(|v| capped(v)).collect();
    next.outdated = job.vms.iter().copied().filter(|v| !capped(v)).collect();
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Execution::{Parallel, Sequential};

    fn job(id: u64, priority: u8, execution: Execution, vms: &[u64]) -> JobView {
        let mut j = JobView::new(id, priority, execution, vms);
        j.outdated = vms.iter().copied().collect();
        j
    }

    fn vms(list: &[(u64, Option<&str>)]) -> HashMap<u64, VmView> {
        list.iter()
            .map(|(id, host)| {
                (
                    *id,
                    VmView {
                        id: *id,
                        host: host.map(str::to_string),
                        done: false,
                        consecutive_failures: 0,
                    },
                )
            })
            .collect()
    }

    fn started(d: &[Decision]) -> Vec<(u64, u64)> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Start { job, vm } => Some((*job, *vm)),
                Decision::Remove { .. } => None,
            })
            .collect()
    }

    fn limits(max: u32, per_host: u32) -> Limits {
        Limits {
            max_backups: max,
            max_backups_host: per_host,
            ..Limits::default()
        }
    }

    /// (case, jobs, vms, limits, expected starts in order)
    #[test]
    fn ticks_follow_the_rules() {
        let h = |n: &'static str| Some(n);
        type Case = (
            &'static str,
            Vec<JobView>,
            Vec<(u64, Option<&'static str>)>,
            Limits,
            Vec<(u64, u64)>,
        );
        let cases: Vec<Case> = vec![
            (
                "sequential: the first OUTDATED VM in BACKUP_VMS order, one at a time",
                vec![job(1, 50, Sequential, &[3, 1, 2])],
                vec![(1, h("a")), (2, h("b")), (3, h("c"))],
                limits(0, 0),
                vec![(1, 3)],
            ),
            (
                "sequential: nothing while one is BACKING_UP",
                vec![{
                    let mut j = job(1, 50, Sequential, &[1, 2]);
                    j.outdated.remove(&1);
                    j.backing_up.insert(1);
                    j
                }],
                vec![(1, h("a")), (2, h("b"))],
                limits(0, 0),
                vec![],
            ),
            (
                "parallel: up to MAX_BACKUPS overall",
                vec![job(1, 50, Parallel, &[1, 2, 3, 4])],
                vec![(1, h("a")), (2, h("b")), (3, h("c")), (4, h("d"))],
                limits(3, 0),
                vec![(1, 1), (1, 2), (1, 3)],
            ),
            (
                "parallel: MAX_BACKUPS_HOST per host, other hosts go on (no head-of-line block)",
                vec![job(1, 50, Parallel, &[1, 2, 3, 4])],
                vec![(1, h("a")), (2, h("a")), (3, h("b")), (4, h("a"))],
                limits(0, 1),
                vec![(1, 1), (1, 3)],
            ),
            (
                "strict priority: the lower job waits while a higher one has OUTDATED VMs",
                vec![job(1, 10, Parallel, &[1]), job(2, 60, Sequential, &[2, 3])],
                vec![(1, h("a")), (2, h("b")), (3, h("c"))],
                limits(0, 0),
                vec![(2, 2)],
            ),
            (
                "jobs of the same top priority both run, in id order",
                vec![job(2, 50, Parallel, &[3]), job(1, 50, Parallel, &[1, 2])],
                vec![(1, h("a")), (2, h("b")), (3, h("c"))],
                limits(0, 0),
                vec![(1, 1), (1, 2), (2, 3)],
            ),
            (
                "running backups of other jobs count against the limits",
                vec![
                    {
                        let mut j = job(1, 90, Parallel, &[1]);
                        j.outdated.clear();
                        j.backing_up.insert(1);
                        j
                    },
                    job(2, 50, Parallel, &[2, 3]),
                ],
                vec![(1, h("a")), (2, h("a")), (3, h("b"))],
                limits(2, 1),
                vec![(2, 3)],
            ),
            (
                "a VM never deployed is skipped and stays OUTDATED",
                vec![job(1, 50, Parallel, &[1, 2])],
                vec![(1, None), (2, h("b"))],
                limits(0, 0),
                vec![(1, 2)],
            ),
        ];
        for (name, jobs, list, l, want) in cases {
            assert_eq!(started(&tick(&jobs, &vms(&list), &l)), want, "{name}");
        }
    }

    #[test]
    fn head_of_line_blocking_as_oned_does_it_when_asked() {
        let jobs = vec![job(1, 50, Parallel, &[1, 2, 3])];
        let v = vms(&[(1, Some("a")), (2, Some("a")), (3, Some("b"))]);
        let oned = Limits {
            head_of_line_blocking: true,
            ..limits(0, 1)
        };
        assert_eq!(started(&tick(&jobs, &v, &oned)), vec![(1, 1)]);
        assert_eq!(
            started(&tick(&jobs, &v, &limits(0, 1))),
            vec![(1, 1), (1, 3)]
        );
    }

    #[test]
    fn gone_and_done_vms_leave_the_job() {
        let jobs = vec![job(1, 50, Parallel, &[1, 2, 3])];
        let mut v = vms(&[(1, Some("a")), (3, Some("b"))]);
        if let Some(vm) = v.get_mut(&3) {
            vm.done = true;
        }
        assert_eq!(
            tick(&jobs, &v, &limits(0, 0)),
            vec![
                Decision::Start { job: 1, vm: 1 },
                Decision::Remove { job: 1, vm: 2 },
                Decision::Remove { job: 1, vm: 3 },
            ]
        );
    }

    #[test]
    fn execute_refuses_pending_work_and_caps_failures() {
        let mut j = JobView::new(4, 50, Parallel, &[1, 2, 3]);
        j.updated.insert(1);
        j.error.insert(2);
        j.error.insert(3);
        let mut v = vms(&[(1, Some("a")), (2, Some("a")), (3, Some("b"))]);
        if let Some(vm) = v.get_mut(&3) {
            vm.consecutive_failures = 3;
        }
        let next = execute(&j, &v, &Limits::default()).expect("execute");
        assert_eq!(next.outdated, [1, 2].into_iter().collect());
        assert_eq!(next.error, [3].into_iter().collect(), "VM 3 stays in ERROR");
        assert!(next.updated.is_empty());
        // Without a cap every VM is retried.
        let all = execute(
            &j,
            &v,
            &Limits {
                max_failures: 0,
                ..Limits::default()
            },
        )
        .expect("execute");
        assert_eq!(all.outdated.len(), 3);
        // Pending work refuses the run.
        assert_eq!(
            execute(&next, &v, &Limits::default()),
            Err(ExecuteError::Pending(4))
        );
    }
}
