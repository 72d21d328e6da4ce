//! `backupjob retention JOB [--vm ID]`: the retention plan of a job's VMs, read-only
//! ([`crate::retention`], docs/retention.md).

use super::{input, print};
use crate::Error;
use crate::model::JobTemplate;
use crate::retention::{Decision, Point, plan_chain};
use crate::runner::Mode;
use crate::state::State;

/// One backup point of a VM as the plan sees it: its image, its increment (none for a whole
/// image in FULL mode), when it was taken, and what the plan says.
#[derive(Debug)]
pub(crate) struct Planned {
    pub image: u64,
    pub increment: Option<u64>,
    pub at: i64,
    pub decision: Decision,
}

/// The plan for VM `vm` of job `id`: its images in the job's datastore, oldest first.
pub(crate) fn vm_plan(
    st: &State,
    id: u64,
    job: &JobTemplate,
    vm: u64,
    tz: &jiff::tz::TimeZone,
) -> Result<Vec<Planned>, Error> {
    let mut rows = Vec::new();
    for image in st.images_of(vm, Some(id), job.datastore_id)? {
        let img = st.image(image)?;
        match job.mode {
            Mode::Full => {
                if let Some(last) = img.increments.last() {
                    rows.push((image, None, last.created_at, img.protected));
                }
            }
            Mode::Increment => rows.extend(
                img.increments
                    .iter()
                    .map(|n| (image, Some(n.id), n.created_at, img.protected)),
            ),
        }
    }
    let points: Vec<Point> = rows
        .iter()
        .map(|r| Point {
            at: r.2,
            protected: r.3,
        })
        .collect();
    Ok(rows
        .into_iter()
        .zip(plan_chain(&points, &job.keep, tz))
        .map(|((image, increment, at, _), decision)| Planned {
            image,
            increment,
            at,
            decision,
        })
        .collect())
}

/// A job's name and template, and its VMs (or the one asked for, which must be one of them).
fn job_and_vms(
    st: &State,
    id: u64,
    vm: Option<u64>,
) -> Result<(String, JobTemplate, Vec<u64>), Error> {
    let crate::state::JobRow { name, template, .. } =
        st.jobs()?
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| input(format!("there is no backup job {id}")))?;
    let job = JobTemplate::parse(&template).map_err(|x| input(format!("backup job {id}: {x}")))?;
    let vms: Vec<u64> = match vm {
        Some(v) if job.vms.contains(&v) => vec![v],
        Some(v) => return Err(input(format!("VM {v} is not in backup job {id}"))),
        None => job.vms.clone(),
    };
    Ok((name, job, vms))
}

pub(super) fn show(st: &State, id: u64, vm: Option<u64>, json: bool) -> Result<(), Error> {
    let (name, job, vms) = job_and_vms(st, id, vm)?;
    let tz = jiff::tz::TimeZone::system();
    let rules: Vec<String> = job
        .keep
        .attributes()
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let mut all = Vec::new();
    for v in vms {
        all.push((v, vm_plan(st, id, &job, v, &tz)?));
    }
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|(vm, points)| {
                let points: Vec<_> = points
                    .iter()
                    .map(|p| {
                        serde_json::json!({"image": p.image, "increment": p.increment,
                            "date": p.at, "keep": p.decision.keep,
                            "reasons": p.decision.reasons})
                    })
                    .collect();
                serde_json::json!({"vm": vm, "points": points})
            })
            .collect();
        return print(
            &serde_json::json!({"job": id, "name": name,
                "mode": if job.mode == Mode::Full { "FULL" } else { "INCREMENT" },
                "rules": rules, "vms": v})
            .to_string(),
        );
    }
    let mut out = format!(
        "RETENTION PLAN OF JOB {id} ({name}): {}\n",
        if rules.is_empty() {
            "no keep rule, everything stays".to_string()
        } else {
            rules.join(" ")
        }
    );
    for (vm, points) in &all {
        let goes = points.iter().filter(|p| !p.decision.keep).count();
        out.push_str(&format!(
            "\nVM {vm}: {} points, {} stay, {goes} go\n",
            points.len(),
            points.len() - goes
        ));
        for p in points {
            let date = jiff::Timestamp::from_second(p.at)
                .map(|t| {
                    t.to_zoned(tz.clone())
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
    print(out.trim_end())
}

/// `--apply --yes`: carries the plan out through the datastore's own actions: `rm` for an
/// image none of whose points stay, `increment_flatten` (KEEP_LAST for the oldest, and
/// KEEP_INCREMENTS, which backstop's datastores read, for the others) for a chain that loses
/// some. Refuses a plan that removes more than `max_delete` points, and a VM being backed up.
pub(super) fn apply(
    st: &mut State,
    args: &super::Args,
    (id, vm): (u64, Option<u64>),
    yes: bool,
    max_delete: usize,
) -> Result<(), Error> {
    if !yes {
        return Err(input(
            "--apply removes backups: add --yes to carry the plan out (run without --apply to read it first)",
        ));
    }
    let env = crate::runner::Env {
        remotes: args.remotes.clone(),
        datastore_location: args.datastore_location.clone(),
    };
    for line in carry_out(st, &env, (id, vm), max_delete)? {
        print(&line)?;
    }
    Ok(())
}

/// After a run of a job with period rules (the runner's own retention, as KEEP_LAST is after
/// each backup): its plan carried out under the default guard; the lines to print. A plan
/// the guard refuses changes nothing and is said.
pub(crate) fn after_run(st: &mut State, env: &crate::runner::Env, id: u64) -> Vec<String> {
    let periods = st
        .jobs()
        .ok()
        .and_then(|jobs| jobs.into_iter().find(|j| j.id == id))
        .and_then(|j| JobTemplate::parse(&j.template).ok())
        .is_some_and(|j| j.keep.has_periods());
    if !periods {
        return Vec::new();
    }
    match carry_out(st, env, (id, None), 10) {
        Ok(lines) => lines
            .into_iter()
            .map(|l| format!("retention: {l}"))
            .collect(),
        Err(e) => vec![format!("retention: {e}")],
    }
}

/// Carries out the plan of job `id` (or of one VM of it); what was done, a line each.
fn carry_out(
    st: &mut State,
    env: &crate::runner::Env,
    (id, vm): (u64, Option<u64>),
    max_delete: usize,
) -> Result<Vec<String>, Error> {
    use std::collections::BTreeMap;
    let mut lines = Vec::new();
    let (_, job, vms) = job_and_vms(st, id, vm)?;
    let tz = jiff::tz::TimeZone::system();
    let mut plans = Vec::new();
    for v in vms {
        plans.push((v, vm_plan(st, id, &job, v, &tz)?));
    }
    let going: usize = plans
        .iter()
        .map(|(_, p)| p.iter().filter(|x| !x.decision.keep).count())
        .sum();
    if going > max_delete {
        return Err(Error::Refused(format!(
            "the plan removes {going} points, more than --max-delete {max_delete}; nothing was removed"
        )));
    }
    let running: Vec<u64> = st
        .job_vms(id)?
        .iter()
        .filter(|r| r.state == Some(crate::state::VmState::Ongoing))
        .map(|r| r.vm_id)
        .collect();
    let (_, text) = st
        .datastores()?
        .into_iter()
        .find(|d| d.id == job.datastore_id)
        .map(|d| (d.name, d.template))
        .ok_or_else(|| input(format!("there is no datastore {}", job.datastore_id)))?;
    let (_, ds) = crate::model::datastore(job.datastore_id, &text, &env.datastore_location)
        .map_err(|x| input(format!("datastore {}: {x}", job.datastore_id)))?;
    let mut removed = 0;
    for (vm, points) in &plans {
        if !points.iter().any(|p| !p.decision.keep) {
            continue;
        }
        if running.contains(vm) {
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
                crate::runner::rm_image(env, st, &ds, image, "retention")?;
                removed += gone.len();
                lines.push(format!("VM {vm}: image {image} removed"));
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
            removed += done.len();
            let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
            lines.push(format!(
                "VM {vm}: image {image}: increments {} removed",
                list(&done)
            ));
            if !stayed.is_empty() {
                lines.push(format!(
                    "VM {vm}: image {image}: increments {} stay: the datastore removes only the oldest increments of a chain",
                    list(&stayed)
                ));
            }
        }
    }
    lines.push(format!("retention of job {id}: {removed} points removed"));
    Ok(lines)
}
