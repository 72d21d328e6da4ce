//! `backupjob retention JOB [--vm ID]`: the retention plan of a job's VMs, read-only
//! ([`crate::retention`], docs/retention.md).

use super::{input, print};
use crate::Error;
use crate::model::JobTemplate;
use crate::retention::{Decision, Point, plan};
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
        .zip(plan(&points, &job.keep, tz))
        .map(|((image, increment, at, _), decision)| Planned {
            image,
            increment,
            at,
            decision,
        })
        .collect())
}

pub(super) fn show(st: &State, id: u64, vm: Option<u64>, json: bool) -> Result<(), Error> {
    let (_, name, _, template) = st
        .jobs()?
        .into_iter()
        .find(|j| j.0 == id)
        .ok_or_else(|| input(format!("there is no backup job {id}")))?;
    let job = JobTemplate::parse(&template).map_err(|x| input(format!("backup job {id}: {x}")))?;
    let vms: Vec<u64> = match vm {
        Some(v) if job.vms.contains(&v) => vec![v],
        Some(v) => return Err(input(format!("VM {v} is not in backup job {id}"))),
        None => job.vms.clone(),
    };
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
