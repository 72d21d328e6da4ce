//! A job's retention plan per VM ([`crate::retention`], docs/retention.md), and carrying it
//! out through the datastore's own actions.

use super::job_row;
use crate::Error;
use crate::error::input;
use crate::model::JobTemplate;
use crate::retention::{Decision, Point, plan_chain};
use crate::runner::{Env, Mode};
use crate::state::State;
use std::collections::BTreeMap;
use std::fmt;

/// One backup point of a VM as the plan sees it: its image, its increment (none for a whole
/// image in FULL mode), when it was taken, and what the plan says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub image: u64,
    pub increment: Option<u64>,
    pub at: i64,
    pub decision: Decision,
}

/// The plan of one VM: its points, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    pub vm: u64,
    pub points: Vec<Planned>,
}

/// Which job's plan, and of which of its VMs (all when none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    pub job: u64,
    pub vm: Option<u64>,
}

/// A job's retention plan: its keep rules and, per VM, what stays and what goes.
#[derive(Debug, Clone)]
pub struct RetentionPlan {
    pub job: u64,
    pub name: String,
    pub mode: Mode,
    /// The keep rules as `KEEP_DAILY=7`.
    pub rules: Vec<String>,
    pub vms: Vec<VmPlan>,
    /// The zone the dates are shown in.
    pub tz: jiff::tz::TimeZone,
}

/// A job's parsed template and its VMs (or the one asked for, which must be one of them).
struct JobVms {
    name: String,
    job: JobTemplate,
    vms: Vec<u64>,
}

fn job_and_vms(st: &State, id: u64, vm: Option<u64>) -> Result<JobVms, Error> {
    let crate::state::JobRow { name, template, .. } = job_row(st, id)?;
    let job = JobTemplate::parse(&template).map_err(|x| input(format!("backup job {id}: {x}")))?;
    // The job's VMs as its runs know them: BACKUP_VMS, and in OpenNebula mode the VMs its
    // LABELS chose at the last run.
    let mine: Vec<u64> = st.job_vms(id)?.iter().map(|r| r.vm_id).collect();
    let vms: Vec<u64> = match vm {
        Some(v) if mine.contains(&v) => vec![v],
        Some(v) => return Err(input(format!("VM {v} is not in backup job {id}"))),
        None => mine,
    };
    Ok(JobVms { name, job, vms })
}

/// The plan for VM `vm` of job `id`: its images in the job's datastore, oldest first.
fn vm_plan(
    st: &State,
    id: u64,
    job: &JobTemplate,
    vm: u64,
    tz: &jiff::tz::TimeZone,
) -> Result<Vec<Planned>, Error> {
    /// A point before the plan decides on it.
    struct Row {
        image: u64,
        increment: Option<u64>,
        at: i64,
        protected: bool,
    }
    let mut rows = Vec::new();
    // In OpenNebula mode a VM's images are recorded under no job (they are in its own
    // repository): the job's are its VMs' in its datastore.
    let oned = st
        .datastores()?
        .iter()
        .any(|d| d.id == job.datastore_id && crate::oned::is_oned(&d.template));
    let images_job = if oned { None } else { Some(id) };
    for image in st.images_of(vm, images_job, job.datastore_id)? {
        let img = st.image(image)?;
        let row = |increment: Option<u64>, at: i64| Row {
            image,
            increment,
            at,
            protected: img.protected,
        };
        match job.mode {
            Mode::Full => {
                if let Some(last) = img.increments.last() {
                    rows.push(row(None, last.created_at));
                }
            }
            Mode::Increment => {
                rows.extend(img.increments.iter().map(|n| row(Some(n.id), n.created_at)))
            }
        }
    }
    let points: Vec<Point> = rows
        .iter()
        .map(|r| Point {
            at: r.at,
            protected: r.protected,
        })
        .collect();
    Ok(rows
        .into_iter()
        .zip(plan_chain(&points, &job.keep, tz))
        .map(|(r, decision)| Planned {
            image: r.image,
            increment: r.increment,
            at: r.at,
            decision,
        })
        .collect())
}

/// The retention plan of a job (or of one VM of it). Read-only.
pub fn plan(st: &State, options: &PlanOptions) -> Result<RetentionPlan, Error> {
    let id = options.job;
    let JobVms { name, job, vms } = job_and_vms(st, id, options.vm)?;
    let tz = jiff::tz::TimeZone::system();
    let rules: Vec<String> = job
        .keep
        .attributes()
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let mut all = Vec::new();
    for v in vms {
        all.push(VmPlan {
            vm: v,
            points: vm_plan(st, id, &job, v, &tz)?,
        });
    }
    Ok(RetentionPlan {
        job: id,
        name,
        mode: job.mode,
        rules,
        vms: all,
        tz,
    })
}

/// What a plan removes, as one line of text that names every point: `vm:image:increment`
/// (`-` for a whole image), in plan order, comma-separated.
fn going_key<'a>(plans: impl Iterator<Item = (u64, &'a [Planned])>) -> String {
    let mut keys = Vec::new();
    for (vm, points) in plans {
        for p in points.iter().filter(|p| !p.decision.keep) {
            keys.push(format!(
                "{vm}:{}:{}",
                p.image,
                p.increment.map_or("-".to_string(), |n| n.to_string())
            ));
        }
    }
    keys.join(",")
}

/// SHA-256 of `key`, in hex: a confirmation names every point in 64 characters, however many.
fn digest(key: &str) -> String {
    openssl::sha::sha256(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RetentionPlan {
    /// What the plan removes, named point by point.
    pub fn going_key(&self) -> String {
        going_key(self.vms.iter().map(|v| (v.vm, v.points.as_slice())))
    }

    /// [`Self::going_key`]'s digest: what a confirmation carries ([`ApplyOptions::confirmed`]).
    pub fn going_digest(&self) -> String {
        digest(&self.going_key())
    }

    /// The points the plan removes, a line each: `VM 22: image 3 increment 1, taken ...`.
    pub fn going(&self) -> Vec<String> {
        let mut out = Vec::new();
        for v in &self.vms {
            for p in v.points.iter().filter(|p| !p.decision.keep) {
                let taken = jiff::Timestamp::from_second(p.at).map_or(p.at.to_string(), |t| {
                    t.to_zoned(self.tz.clone())
                        .strftime("%Y-%m-%d %H:%M")
                        .to_string()
                });
                out.push(format!(
                    "VM {}: image {}{}, taken {taken}",
                    v.vm,
                    p.image,
                    p.increment
                        .map_or(" (whole)".to_string(), |n| format!(" increment {n}"))
                ));
            }
        }
        out
    }

    /// The plan as `retention --json` prints it.
    pub fn json(&self) -> serde_json::Value {
        let v: Vec<_> = self
            .vms
            .iter()
            .map(|VmPlan { vm, points }| {
                let points: Vec<_> = points
                    .iter()
                    .map(|p| {
                        serde_json::json!({"image": p.image, "increment": p.increment,
                            "date": crate::json_time::seconds(Some(p.at)), "keep": p.decision.keep,
                            "reasons": p.decision.reasons})
                    })
                    .collect();
                serde_json::json!({"vm": vm, "points": points})
            })
            .collect();
        serde_json::json!({"job": self.job, "name": self.name,
            "mode": if self.mode == Mode::Full { "FULL" } else { "INCREMENT" },
            "rules": self.rules, "vms": v})
    }
}

impl fmt::Display for RetentionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = format!(
            "RETENTION PLAN OF JOB {} ({}): {}\n",
            self.job,
            self.name,
            if self.rules.is_empty() {
                "no keep rule, everything stays".to_string()
            } else {
                self.rules.join(" ")
            }
        );
        for VmPlan { vm, points } in &self.vms {
            let goes = points.iter().filter(|p| !p.decision.keep).count();
            out.push_str(&format!(
                "\nVM {vm}: {} points, {} stay, {goes} go\n",
                points.len(),
                points.len() - goes
            ));
            for p in points {
                let date = jiff::Timestamp::from_second(p.at)
                    .map(|t| {
                        t.to_zoned(self.tz.clone())
                            .strftime("%Y-%m-%d %H:%M")
                            .to_string()
                    })
                    .unwrap_or_else(|_| p.at.to_string());
                let point = match p.increment {
                    Some(n) => format!("image {} increment {n}", p.image),
                    None => format!("image {}", p.image),
                };
                out.push_str(&format!(
                    "  {point:<24} {date}  {}\n",
                    if p.decision.keep {
                        format!("KEEP    {}", p.decision.reasons.join(", "))
                    } else {
                        "REMOVE".to_string()
                    }
                ));
            }
        }
        f.write_str(out.trim_end())
    }
}

/// How to carry a plan out: the job (or one VM of it), and the most points it may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    pub job: u64,
    pub vm: Option<u64>,
    pub max_delete: usize,
    /// The plan someone confirmed, as [`RetentionPlan::going_digest`]: when given, a plan
    /// that would now remove anything else is refused and nothing is removed.
    pub confirmed: Option<String>,
}

/// One thing carrying a plan out did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An image none of whose points stayed, removed whole (`rm`).
    ImageRemoved { vm: u64, image: u64 },
    /// Increments of a chain removed by `increment_flatten`.
    IncrementsRemoved {
        vm: u64,
        image: u64,
        increments: Vec<u64>,
    },
    /// Increments the plan let go that the datastore kept (it removes only a chain's oldest).
    IncrementsStayed {
        vm: u64,
        image: u64,
        increments: Vec<u64>,
    },
    /// OpenNebula mode: increments the plan let go from a chain that keeps others; oned
    /// offers no removal of single increments (its KEEP_LAST drops a chain's oldest).
    StayInOned {
        vm: u64,
        image: u64,
        increments: Vec<u64>,
    },
}

/// What carrying a plan out did: each step, and how many points went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub job: u64,
    pub steps: Vec<Step>,
    pub removed: usize,
}

impl Applied {
    /// A line per step and the total, as `retention --apply` prints them.
    pub fn lines(&self) -> Vec<String> {
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let mut lines: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::ImageRemoved { vm, image } => format!("VM {vm}: image {image} removed"),
                Step::IncrementsRemoved {
                    vm,
                    image,
                    increments,
                } => format!(
                    "VM {vm}: image {image}: increments {} removed",
                    list(increments)
                ),
                Step::IncrementsStayed {
                    vm,
                    image,
                    increments,
                } => format!(
                    "VM {vm}: image {image}: increments {} stay: the datastore removes only the oldest increments of a chain",
                    list(increments)
                ),
                Step::StayInOned {
                    vm,
                    image,
                    increments,
                } => format!(
                    "VM {vm}: image {image}: increments {} stay: oned removes single increments only by the KEEP_LAST of the VM's BACKUP_CONFIG",
                    list(increments)
                ),
            })
            .collect();
        lines.push(format!(
            "retention of job {}: {} points removed",
            self.job, self.removed
        ));
        lines
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Carries the plan of a job (or of one VM of it) out through the datastore's own actions:
/// `rm` for an image none of whose points stay, `increment_flatten` (KEEP_LAST for the
/// oldest, and KEEP_INCREMENTS, which backstop's datastores read, for the others) for a chain
/// that loses some. Refuses a plan that removes more than `max_delete` points, and a VM being
/// backed up; either refusal removes nothing.
pub fn apply(env: &Env, st: &mut State, options: &ApplyOptions) -> Result<Applied, Error> {
    let id = options.job;
    let JobVms { job, vms, .. } = job_and_vms(st, id, options.vm)?;
    let tz = jiff::tz::TimeZone::system();
    let mut plans = Vec::new();
    for v in vms {
        plans.push((v, vm_plan(st, id, &job, v, &tz)?));
    }
    let going: usize = plans
        .iter()
        .map(|(_, p)| p.iter().filter(|x| !x.decision.keep).count())
        .sum();
    if going > options.max_delete {
        return Err(Error::Refused(format!(
            "the plan removes {going} points, more than --max-delete {}; nothing was removed",
            options.max_delete
        )));
    }
    if let Some(confirmed) = &options.confirmed
        && *confirmed != digest(&going_key(plans.iter().map(|(v, p)| (*v, p.as_slice()))))
    {
        return Err(Error::Refused(
            "the plan changed since it was confirmed (a run or a change of the job); nothing was removed: look at it again".into(),
        ));
    }
    let running: Vec<u64> = st
        .job_vms(id)?
        .iter()
        .filter(|r| r.state == Some(crate::state::VmState::Ongoing))
        .map(|r| r.vm_id)
        .collect();
    let text = st
        .datastores()?
        .into_iter()
        .find(|d| d.id == job.datastore_id)
        .map(|d| d.template)
        .ok_or_else(|| input(format!("there is no datastore {}", job.datastore_id)))?;
    let (_, ds) = crate::model::datastore(job.datastore_id, &text, &env.datastore_location)
        .map_err(|x| input(format!("datastore {}: {x}", job.datastore_id)))?;
    // OpenNebula mode: images go through oned, which runs the datastore's rm.
    let oned = if crate::oned::is_oned(&text) {
        Some(crate::oned::client(&text)?)
    } else {
        None
    };
    let mut applied = Applied {
        job: id,
        steps: Vec::new(),
        removed: 0,
    };
    for (vm, points) in &plans {
        let vm = *vm;
        if !points.iter().any(|p| !p.decision.keep) {
            continue;
        }
        if running.contains(&vm) {
            return Err(Error::Refused(format!(
                "VM {vm} is being backed up; apply the plan when it is done"
            )));
        }
        let mut by_image: BTreeMap<u64, Vec<&Planned>> = BTreeMap::new();
        for p in points {
            by_image.entry(p.image).or_default().push(p);
        }
        for (image, pts) in by_image {
            let gone: Vec<&&Planned> = pts.iter().filter(|p| !p.decision.keep).collect();
            if gone.is_empty() {
                continue;
            }
            if gone.len() == pts.len() {
                match &oned {
                    Some(client) => crate::oned::images::delete(st, client, image)?,
                    None => crate::runner::rm_image(env, st, &ds, image, "retention")?,
                }
                applied.removed += gone.len();
                applied.steps.push(Step::ImageRemoved { vm, image });
                continue;
            }
            if oned.is_some() {
                applied.steps.push(Step::StayInOned {
                    vm,
                    image,
                    increments: gone.iter().filter_map(|p| p.increment).collect(),
                });
                continue;
            }
            let keep: Vec<u64> = pts
                .iter()
                .filter(|p| p.decision.keep)
                .filter_map(|p| p.increment)
                .collect();
            let first = pts.iter().position(|p| p.decision.keep).unwrap_or(0);
            let keep_last = (pts.len() - first) as u32;
            crate::runner::flatten(env, st, &ds, image, (keep_last, Some(&keep)), "retention")?;
            let left: Vec<u64> = st.image(image)?.increments.iter().map(|n| n.id).collect();
            let (done, stayed): (Vec<_>, Vec<_>) = gone
                .iter()
                .filter_map(|p| p.increment)
                .partition(|n| !left.contains(n));
            applied.removed += done.len();
            applied.steps.push(Step::IncrementsRemoved {
                vm,
                image,
                increments: done,
            });
            if !stayed.is_empty() {
                applied.steps.push(Step::IncrementsStayed {
                    vm,
                    image,
                    increments: stayed,
                });
            }
        }
    }
    Ok(applied)
}

/// After a run of a job with period rules (the runner's own retention, as KEEP_LAST is after
/// each backup): its plan carried out under the default guard; the lines to print. A plan
/// the guard refuses changes nothing and is said.
pub fn after_run(st: &mut State, env: &Env, id: u64) -> Vec<String> {
    let periods = st
        .jobs()
        .ok()
        .and_then(|jobs| jobs.into_iter().find(|j| j.id == id))
        .and_then(|j| JobTemplate::parse(&j.template).ok())
        .is_some_and(|j| j.keep.has_periods());
    if !periods {
        return Vec::new();
    }
    let options = ApplyOptions {
        job: id,
        vm: None,
        max_delete: 10,
        confirmed: None,
    };
    match apply(env, st, &options) {
        Ok(applied) => applied
            .lines()
            .into_iter()
            .map(|l| format!("retention: {l}"))
            .collect(),
        Err(e) => vec![format!("retention: {e}")],
    }
}
