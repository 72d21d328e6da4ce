//! What is late, and why (docs/web.md, "Overdue work"): the scheduler daemon's health from its
//! heartbeat, and each backup, sync or verify job whose time has come and gone without a run,
//! with the first reason that holds. Pure functions over a [`Snapshot`]; the pages, the API and
//! the metrics all say what these say.

use crate::model::Snapshot;
use backstop_backupjob::state::SchedulerBeat;

/// Seconds between passes assumed when no scheduler ever said (the daemon's default).
const DEFAULT_INTERVAL: u64 = 15;

/// How the scheduler daemon is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No scheduler ever passed over this state.
    NeverRan,
    /// It said it was alive within three of its intervals (and a minute); `in_pass_since`
    /// when it is in a pass, `last_pass` when its last one ended.
    Up {
        in_pass_since: Option<i64>,
        last_pass: Option<i64>,
        interval: u64,
    },
    /// It has not said so for longer: killed, hung, or its machine is down.
    Silent { alive_at: i64, interval: u64 },
    /// It stopped cleanly (SIGTERM or SIGINT) at this time.
    Stopped { at: i64 },
}

impl Health {
    pub fn of(beat: Option<&SchedulerBeat>, now: i64) -> Health {
        match beat {
            None => Health::NeverRan,
            Some(b) => match b.stopped_at {
                Some(at) => Health::Stopped { at },
                None if now - b.alive_at > silence(b.interval) => Health::Silent {
                    alive_at: b.alive_at,
                    interval: b.interval,
                },
                None => Health::Up {
                    in_pass_since: b.pass_started_at,
                    last_pass: b.last_pass_at,
                    interval: b.interval,
                },
            },
        }
    }

    pub fn running(self) -> bool {
        matches!(self, Health::Up { .. })
    }

    /// `up`, `silent`, `stopped` or `never-ran`: for the API and the pages' classes.
    pub fn word(self) -> &'static str {
        match self {
            Health::NeverRan => "never-ran",
            Health::Up { .. } => "up",
            Health::Silent { .. } => "silent",
            Health::Stopped { .. } => "stopped",
        }
    }

    /// One line for an operator.
    pub fn describe(self, now: i64) -> String {
        match self {
            Health::NeverRan => "the scheduler has never run on this state \
                 (backstop backupjob scheduler --loop, or the backstop-scheduler service)"
                .into(),
            Health::Up {
                in_pass_since: Some(since),
                ..
            } => format!(
                "the scheduler is running: in a pass since {} (due jobs run one after another)",
                ago(now, since)
            ),
            Health::Up {
                in_pass_since: None,
                last_pass,
                interval,
            } => format!(
                "the scheduler is running: last pass {}, every {interval} s",
                last_pass.map_or("not ended yet".to_string(), |t| ago(now, t))
            ),
            Health::Silent { alive_at, interval } => format!(
                "the scheduler is not running: last heard from {} (it passes every {interval} s)",
                ago(now, alive_at)
            ),
            Health::Stopped { at } => {
                format!(
                    "the scheduler is not running: it was stopped {}",
                    ago(now, at)
                )
            }
        }
    }
}

/// How long a scheduler may stay silent before it counts as down.
fn silence(interval: u64) -> i64 {
    3 * interval as i64 + 60
}

/// How long past its time a job is still only due, not late: a pass may be a few intervals
/// away, and a pass runs jobs one after another.
pub fn grace(beat: Option<&SchedulerBeat>) -> i64 {
    silence(beat.map_or(DEFAULT_INTERVAL, |b| b.interval)).max(300)
}

/// `90 s ago`, `12 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(now: i64, t: i64) -> String {
    format!("{} ago", span(now - t))
}

/// A length of time, rounded down to its largest unit.
pub fn span(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days", s / 86_400),
    }
}

/// A job whose time has come and gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    /// `backup`, `sync` or `verify`.
    pub kind: &'static str,
    pub id: u64,
    pub name: String,
    /// When it became due.
    pub due_since: i64,
    /// Why it has not run, as far as the state tells.
    pub why: String,
}

impl Overdue {
    pub fn late_by(&self, now: i64) -> i64 {
        now - self.due_since
    }
}

/// Every job that is overdue: due for longer than [`grace`] and not running.
pub fn overdue(snap: &Snapshot) -> Vec<Overdue> {
    let now = snap.now;
    let beat = snap.scheduler.as_ref();
    let health = Health::of(beat, now);
    let grace = grace(beat);
    let mut out = Vec::new();
    // Looked up once: a state of 10,000 VMs in 500 jobs is read on every page.
    let vm_of: std::collections::HashMap<u64, &crate::model::Vm> =
        snap.vms.iter().map(|v| (v.id, v)).collect();
    let state_of = |vm: u64| vm_of.get(&vm).and_then(|v| v.state);
    let running = snap
        .vms
        .iter()
        .filter(|v| v.state == Some("ONGOING"))
        .count();
    let mut running_on: std::collections::HashMap<&str, usize> = Default::default();
    for v in snap.vms.iter().filter(|v| v.state == Some("ONGOING")) {
        if let Some(h) = v.host.as_deref() {
            *running_on.entry(h).or_default() += 1;
        }
    }
    // The jobs with VMs waiting, highest priority first.
    let mut waiting: Vec<&crate::model::Job> = snap
        .jobs
        .iter()
        .filter(|o| o.vms.iter().any(|vm| state_of(*vm) == Some("OUTDATED")))
        .collect();
    waiting.sort_by_key(|o| std::cmp::Reverse(o.priority));
    for j in &snap.jobs {
        let Some(due) = j.next_run.filter(|t| *t + grace < now) else {
            continue;
        };
        // A run under way is not late while the scheduler runs it (what its VMs wait for shows
        // on the job's page); with the scheduler down, it is stuck, and late.
        if health.running()
            && j.vms
                .iter()
                .any(|vm| matches!(state_of(*vm), Some("ONGOING" | "OUTDATED")))
        {
            continue;
        }
        let why = if !health.running() {
            health.describe(now)
        } else if j.locked {
            format!("the job is locked (backstop backupjob unlock {})", j.id)
        } else if let Some(first) = waiting.first().filter(|o| o.priority > j.priority) {
            format!(
                "job {} ({}, priority {}) runs first: it has VMs waiting",
                first.id, first.name, first.priority
            )
        } else if let Some(b) =
            beat.filter(|b| b.max_backups > 0 && running >= b.max_backups as usize)
        {
            format!(
                "{} backups are running, as many as MAX_BACKUPS allows",
                b.max_backups
            )
        } else if let Some(busy) = busy_hosts(j, beat, &vm_of, &running_on) {
            busy
        } else if let Health::Up {
            in_pass_since: Some(since),
            ..
        } = health
        {
            format!(
                "the scheduler is in a pass since {}, running due jobs one after another",
                ago(now, since)
            )
        } else {
            "the scheduler has passed since without starting it (see its log)".into()
        };
        out.push(Overdue {
            kind: "backup",
            id: j.id,
            name: j.name.clone(),
            due_since: due,
            why,
        });
    }
    for c in &snap.second_copies {
        let Some(due) = c.due_since.filter(|t| *t + grace < now) else {
            continue;
        };
        let why = if health.running() {
            "the scheduler has passed since without starting it (see its log)".into()
        } else {
            health.describe(now)
        };
        out.push(Overdue {
            kind: c.kind,
            id: c.id,
            name: c.name.clone(),
            due_since: due,
            why,
        });
    }
    out.sort_by_key(|o| o.due_since);
    out
}

/// When every host of the job's VMs already runs MAX_BACKUPS_HOST backups: which.
fn busy_hosts(
    job: &crate::model::Job,
    beat: Option<&SchedulerBeat>,
    vm_of: &std::collections::HashMap<u64, &crate::model::Vm>,
    running: &std::collections::HashMap<&str, usize>,
) -> Option<String> {
    let per_host = beat.map(|b| b.max_backups_host).filter(|m| *m > 0)?;
    let hosts: std::collections::BTreeSet<&str> = job
        .vms
        .iter()
        .filter_map(|vm| vm_of.get(vm))
        .filter_map(|v| v.host.as_deref())
        .collect();
    let running_on = |h: &str| running.get(h).copied().unwrap_or(0);
    (!hosts.is_empty() && hosts.iter().all(|h| running_on(h) >= per_host as usize)).then(|| {
        format!(
            "its VMs' hosts are busy: {} (MAX_BACKUPS_HOST is {per_host})",
            hosts
                .iter()
                .map(|h| format!("{h} runs {}", running_on(h)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Job, SecondCopy, Vm};

    const NOW: i64 = 1_800_000_000;

    fn beat(alive_ago: i64, stopped: Option<i64>) -> SchedulerBeat {
        SchedulerBeat {
            pid: 42,
            started_at: NOW - 86_400,
            alive_at: NOW - alive_ago,
            pass_started_at: None,
            last_pass_at: Some(NOW - alive_ago),
            interval: 15,
            max_backups: 2,
            max_backups_host: 1,
            stopped_at: stopped,
        }
    }

    fn job(id: u64, priority: u8, vms: &[u64], next_run: Option<i64>) -> Job {
        Job {
            id,
            name: format!("j{id}"),
            priority,
            locked: false,
            mode: "FULL",
            datastore_id: Some(1),
            vms: vms.to_vec(),
            last_run: None,
            last_duration: None,
            next_run,
            keep: String::new(),
        }
    }

    fn vm(id: u64, job: u64, host: &str, state: &'static str) -> Vm {
        Vm {
            id,
            name: format!("vm{id}"),
            host: Some(host.into()),
            job: Some(job),
            state: Some(state),
            reason: None,
            failures: 0,
            started_at_ms: None,
            ended_at_ms: None,
            last_backup: None,
            progress: None,
        }
    }

    fn snap(jobs: Vec<Job>, vms: Vec<Vm>, scheduler: Option<SchedulerBeat>) -> Snapshot {
        Snapshot {
            now: NOW,
            jobs,
            vms,
            images: Vec::new(),
            datastores: Vec::new(),
            runs: Vec::new(),
            second_copies: Vec::new(),
            scheduler,
            charts: Default::default(),
        }
    }

    /// What a tenant sees of a snapshot (`Snapshot::for_tenant`, kept here beside the
    /// snapshot helpers): their VMs, their images, the jobs holding them with only their VMs,
    /// the datastores those use; no runs, second copies, shared charts or snapshot ids.
    #[test]
    fn a_tenant_sees_only_their_vms_and_what_holds_them() {
        use crate::model::{Image, Increment, Run};
        let mut s = snap(
            vec![job(1, 50, &[1, 2], None), job(2, 50, &[3], None)],
            vec![
                vm(1, 1, "h", "DONE"),
                vm(2, 1, "h", "DONE"),
                vm(3, 2, "h", "DONE"),
            ],
            None,
        );
        s.jobs[1].datastore_id = Some(7);
        s.jobs[0].last_duration = Some(600);
        let image = |id: u64, vm: u64, ds: u64| Image {
            id,
            vm,
            job: Some(1),
            datastore: ds,
            protected: false,
            points: 1,
            stored_mb: 10,
            newest: Some(NOW),
            increments: vec![Increment {
                id: 0,
                kind: "FULL".into(),
                source: "0123456789abcdef".into(),
                size_mb: 10,
                date: NOW,
                verified: None,
            }],
        };
        s.images = vec![image(10, 1, 1), image(20, 2, 1), image(30, 3, 7)];
        s.datastores = vec![(1, "one".into()), (7, "seven".into())];
        s.runs = vec![Run {
            kind: "backup",
            what: "job 1: VM 1, VM 2".into(),
            started: NOW,
            ended: None,
            ok: true,
            detail: String::new(),
        }];
        s.second_copies = vec![SecondCopy {
            kind: "sync",
            id: 1,
            name: "offsite".into(),
            last_run: None,
            problem: None,
            due_since: None,
        }];
        s.charts.stored = vec![(NOW, 30)];
        s.charts.durations = vec![(NOW, 5, true)];
        let t = s.for_tenant(&[1].into());
        assert_eq!(t.vms.iter().map(|v| v.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.images.iter().map(|i| i.id).collect::<Vec<_>>(), vec![10]);
        assert_eq!(
            t.jobs
                .iter()
                .map(|j| (j.id, j.vms.clone()))
                .collect::<Vec<_>>(),
            vec![(1, vec![1])]
        );
        assert_eq!(t.datastores, vec![(1, "one".to_string())]);
        assert!(t.runs.is_empty() && t.second_copies.is_empty());
        assert!(t.charts.stored.is_empty() && t.charts.durations.is_empty());
        assert_eq!(t.images[0].increments[0].source, "", "no snapshot ids");
        assert!(t.jobs[0].last_duration.is_none(), "no whole job's duration");
        // Nothing oned lets them use: nothing at all.
        let none = snap(
            vec![job(1, 50, &[1], None)],
            vec![vm(1, 1, "h", "DONE")],
            None,
        )
        .for_tenant(&Default::default());
        assert!(none.jobs.is_empty() && none.vms.is_empty() && none.datastores.is_empty());
    }

    #[test]
    fn the_schedulers_health_from_its_heartbeat() {
        assert_eq!(Health::of(None, NOW), Health::NeverRan);
        assert!(Health::of(Some(&beat(20, None)), NOW).running());
        // Three intervals and a minute of silence: down.
        assert!(Health::of(Some(&beat(105, None)), NOW).running());
        assert_eq!(
            Health::of(Some(&beat(106, None)), NOW),
            Health::Silent {
                alive_at: NOW - 106,
                interval: 15
            }
        );
        // In a pass for hours, and alive: running.
        let mut long = beat(5, None);
        long.pass_started_at = Some(NOW - 3 * 3600);
        long.last_pass_at = Some(NOW - 4 * 3600);
        let h = Health::of(Some(&long), NOW);
        assert!(h.running());
        assert_eq!(
            h.describe(NOW),
            "the scheduler is running: in a pass since 3 h 0 min ago (due jobs run one after another)"
        );
        assert_eq!(
            Health::of(Some(&beat(5, Some(NOW - 3))), NOW),
            Health::Stopped { at: NOW - 3 }
        );
        assert_eq!(
            Health::of(Some(&beat(7200, None)), NOW).describe(NOW),
            "the scheduler is not running: last heard from 2 h 0 min ago (it passes every 15 s)"
        );
    }

    #[test]
    fn overdue_jobs_and_the_first_reason_that_holds() {
        let two_hours = Some(NOW - 7200);
        let up = Some(beat(10, None));
        let reasons = |jobs: Vec<Job>, vms: Vec<Vm>, b: Option<SchedulerBeat>| {
            overdue(&snap(jobs, vms, b))
                .into_iter()
                .map(|o| (o.id, o.why))
                .collect::<Vec<_>>()
        };
        // Not yet late: within the grace, or no time at all, or its run is under way.
        assert!(reasons(vec![job(1, 50, &[], Some(NOW - 200))], vec![], up).is_empty());
        assert!(reasons(vec![job(1, 50, &[], None)], vec![], up).is_empty());
        assert!(
            reasons(
                vec![job(1, 50, &[7], two_hours)],
                vec![vm(7, 1, "h1", "OUTDATED")],
                up
            )
            .is_empty()
        );
        // The scheduler first.
        let r = reasons(vec![job(1, 50, &[], two_hours)], vec![], None);
        assert!(r[0].1.starts_with("the scheduler has never run"), "{r:?}");
        let r = reasons(
            vec![job(1, 50, &[], two_hours)],
            vec![],
            Some(beat(7200, None)),
        );
        assert!(r[0].1.starts_with("the scheduler is not running"), "{r:?}");
        // Locked.
        let mut locked = job(1, 50, &[], two_hours);
        locked.locked = true;
        assert_eq!(
            reasons(vec![locked], vec![], up)[0].1,
            "the job is locked (backstop backupjob unlock 1)"
        );
        // A job of higher priority with VMs waiting.
        let r = reasons(
            vec![job(1, 50, &[7], two_hours), job(2, 80, &[8, 9], None)],
            vec![vm(7, 1, "h1", "UPDATED"), vm(8, 2, "h2", "OUTDATED")],
            up,
        );
        assert_eq!(
            r,
            vec![(
                1,
                "job 2 (j2, priority 80) runs first: it has VMs waiting".into()
            )]
        );
        // MAX_BACKUPS (2) running elsewhere.
        let r = reasons(
            vec![job(1, 50, &[7], two_hours), job(2, 50, &[8, 9], None)],
            vec![
                vm(7, 1, "h1", "UPDATED"),
                vm(8, 2, "h2", "ONGOING"),
                vm(9, 2, "h3", "ONGOING"),
            ],
            up,
        );
        assert_eq!(
            r[0].1,
            "2 backups are running, as many as MAX_BACKUPS allows"
        );
        // Its host runs MAX_BACKUPS_HOST (1) already.
        let r = reasons(
            vec![job(1, 50, &[7], two_hours), job(2, 50, &[8], None)],
            vec![vm(7, 1, "h1", "UPDATED"), vm(8, 2, "h1", "ONGOING")],
            up,
        );
        assert_eq!(
            r[0].1,
            "its VMs' hosts are busy: h1 runs 1 (MAX_BACKUPS_HOST is 1)"
        );
        // A run left stuck by a scheduler that is down is late too.
        let r = reasons(
            vec![job(1, 50, &[7], two_hours)],
            vec![vm(7, 1, "h1", "ONGOING")],
            Some(beat(7200, None)),
        );
        assert!(r[0].1.starts_with("the scheduler is not running"), "{r:?}");
        // In a long pass that has not reached it yet.
        let mut in_pass = beat(3, None);
        in_pass.pass_started_at = Some(NOW - 1800);
        let r = reasons(vec![job(1, 50, &[], two_hours)], vec![], Some(in_pass));
        assert_eq!(
            r[0].1,
            "the scheduler is in a pass since 30 min ago, running due jobs one after another"
        );
        // Nothing the state explains.
        let r = reasons(vec![job(1, 50, &[], two_hours)], vec![], up);
        assert_eq!(
            r[0].1,
            "the scheduler has passed since without starting it (see its log)"
        );
    }

    #[test]
    fn sync_and_verify_jobs_are_late_too() {
        let mut s = snap(vec![], vec![], Some(beat(7200, None)));
        s.second_copies.push(SecondCopy {
            kind: "verify",
            id: 3,
            name: "weekly".into(),
            last_run: Some(NOW - 8 * 86_400),
            problem: None,
            due_since: Some(NOW - 86_400),
        });
        s.second_copies.push(SecondCopy {
            kind: "sync",
            id: 4,
            name: "offsite".into(),
            last_run: Some(NOW - 60),
            problem: None,
            due_since: None,
        });
        let o = overdue(&s);
        assert_eq!(o.len(), 1, "{o:?}");
        assert_eq!(
            (o[0].kind, o[0].id, o[0].late_by(NOW)),
            ("verify", 3, 86_400)
        );
        assert!(o[0].why.starts_with("the scheduler is not running"));
    }
}
