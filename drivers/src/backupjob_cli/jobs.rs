//! `backupjob create|list|show|update|delete|rename|lock|unlock|priority|backup|cancel|
//! retry`: backup jobs, and running one now.

use super::{Args, file_text, input, print};
use super::{CreateArgs, Reporter, local_time};
use backstop_backupjob::Error;
use backstop_backupjob::json_time;
use backstop_backupjob::ops::{self, definitions::Definition, definitions::Setting};
use backstop_backupjob::state::State;
use backstop_backupjob::state::VmState;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub(super) fn create(st: &mut State, c: &CreateArgs) -> Result<(), Error> {
    let CreateArgs {
        file,
        name,
        vms,
        datastore,
        mode,
        keep,
        execution,
        priority,
    } = c;
    let settings = vec![
        Setting::new("NAME", name.clone()),
        Setting::new("BACKUP_VMS", vms.clone()),
        Setting::new("DATASTORE_ID", datastore.map(|d| d.to_string())),
        Setting::new("MODE", mode.clone()),
        Setting::new("KEEP_LAST", keep.map(|k| k.to_string())),
        Setting::new("EXECUTION", execution.clone()),
        Setting::new("PRIORITY", priority.map(|p| p.to_string())),
    ];
    let definition = Definition {
        file: file.as_deref().map(file_text).transpose()?,
        settings,
    };
    print(&ops::definitions::create_job(st, &definition)?.to_string())
}

pub(super) fn list(st: &State, json: &bool) -> Result<(), Error> {
    let jobs = st.jobs()?;
    let mut rows = Vec::new();
    for backstop_backupjob::state::JobRow {
        id,
        name,
        priority: prio,
        ..
    } in jobs
    {
        let vms = st.job_vms(id)?;
        let backstop_backupjob::state::JobStatus {
            locked,
            last_started: last,
            ..
        } = st.job_status(id)?;
        rows.push((id, name, prio, vms, locked, last));
    }
    if *json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, name, prio, vms, locked, last)| {
                // `vms` holds what `show` holds for each VM, its id and state first.
                let vms: Vec<_> = vms
                    .iter()
                    .map(|r| serde_json::json!({"id": r.vm_id, "state": r.state.map(VmState::as_str)}))
                    .collect();
                serde_json::json!({"id": id, "name": name, "priority": prio,
                    "vms": vms, "locked": locked, "last_backup_time": json_time::seconds(*last)})
            })
            .collect();
        print(&serde_json::Value::Array(v).to_string())?;
    } else {
        print(&format!(
            "{:>4} {:>4} {:<20} {:<16} VMS",
            "ID", "PRIO", "NAME", "LAST"
        ))?;
        for (id, name, prio, vms, _, last) in rows {
            let mut list: String = vms
                .iter()
                .map(|v| v.vm_id.to_string())
                .collect::<Vec<_>>()
                .join(",");
            if list.len() > 15 {
                list.truncate(12);
                list.push_str("...");
            }
            print(&format!(
                "{id:>4} {prio:>4} {name:<20} {:<16} {list}",
                last.map_or("-".into(), local_time)
            ))?;
        }
    }
    Ok(())
}

pub(super) fn show(st: &State, id: &u64, json: &bool) -> Result<(), Error> {
    let backstop_backupjob::state::JobRow {
        name,
        priority: prio,
        template,
        ..
    } = st
        .jobs()?
        .into_iter()
        .find(|j| j.id == *id)
        .ok_or_else(|| input(format!("there is no backup job {id}")))?;
    let rows = st.job_vms(*id)?;
    let set = |s: VmState| -> Vec<u64> {
        rows.iter()
            .filter(|r| r.state == Some(s))
            .map(|r| r.vm_id)
            .collect()
    };
    if *json {
        let vms: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.vm_id,
                    "state": r.state.map(VmState::as_str),
                    "reason": r.reason,
                    "failures": r.failures,
                    "started_at": json_time::millis(r.started_at),
                    "ended_at": json_time::millis(r.ended_at),
                })
            })
            .collect();
        let backstop_backupjob::state::JobStatus {
            locked,
            last_started: last,
            last_duration: duration,
        } = st.job_status(*id)?;
        let sas: Vec<_> = st
            .sched_actions(*id)?
            .into_iter()
            .map(
                |backstop_backupjob::state::SchedActionRow {
                     id: sid,
                     action: sa,
                     message: msg,
                 }| {
                    let (end_type, _) = sa.end.codes();
                    let (end_runs, end_time) = match sa.end {
                        backstop_backupjob::schedule::End::Times(n) => (Some(n), None),
                        backstop_backupjob::schedule::End::Until(t) => (None, Some(t)),
                        _ => (None, None),
                    };
                    serde_json::json!({
                        "id": sid, "time": json_time::seconds(Some(sa.time)),
                        "repeat": format!("{:?}", sa.repeat), "days": sa.days,
                        "end_type": end_type, "end_runs": end_runs,
                        "end_time": json_time::seconds(end_time),
                        "done": json_time::seconds(Some(sa.done)), "message": msg,
                    })
                },
            )
            .collect();
        print(
            &serde_json::json!({"id": id, "name": name, "priority": prio, "vms": vms,
                "locked": locked, "last_backup_time": json_time::seconds(last),
                "last_backup_duration": duration, "sched_actions": sas})
            .to_string(),
        )?;
    } else {
        let ids = |v: Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let backstop_backupjob::state::JobStatus {
            locked,
            last_started: last,
            last_duration: duration,
        } = st.job_status(*id)?;
        print(&format!(
            "BACKUP JOB {id} INFORMATION\nID       : {id}\nNAME     : {name}\nPRIORITY : {prio}\n\
             LOCK     : {}\n",
            if locked { "Locked" } else { "None" }
        ))?;
        print(&format!(
            "LAST BACKUP JOB EXECUTION INFORMATION\nTIME     : {}\nDURATION : {}\n",
            last.map_or("-".into(), local_time),
            duration.map_or("-".into(), |d| format!(
                "{:02}h{:02}m{:02}s",
                d / 3600,
                d / 60 % 60,
                d % 60
            ))
        ))?;
        print(&format!(
            "VIRTUAL MACHINE BACKUP STATUS\nUPDATED  : {}\nOUTDATED : {}\nONGOING  : {}\nERROR    : {}\n",
            ids(set(VmState::Updated)),
            ids(set(VmState::Outdated)),
            ids(set(VmState::Ongoing)),
            ids(set(VmState::Error)),
        ))?;
        for r in rows.iter().filter(|r| r.reason.is_some()) {
            print(&format!(
                "VM {} : {}",
                r.vm_id,
                r.reason.as_deref().unwrap_or_default()
            ))?;
        }
        let sas = st.sched_actions(*id)?;
        if !sas.is_empty() {
            print("SCHEDULED ACTIONS")?;
            print(&format!(
                "{:>3} {:<7} {:<5} {:<16} {:<16} {:<16} STATUS",
                "ID", "ACTION", "ARGS", "SCHEDULED", "REPEAT", "END"
            ))?;
            for backstop_backupjob::state::SchedActionRow {
                id: sid,
                action: sa,
                message: msg,
            } in sas
            {
                let repeat = match sa.repeat {
                    backstop_backupjob::schedule::Repeat::None => "-".to_string(),
                    backstop_backupjob::schedule::Repeat::Weekly => format!("Weekly {:?}", sa.days),
                    backstop_backupjob::schedule::Repeat::Monthly => {
                        format!("Monthly {:?}", sa.days)
                    }
                    backstop_backupjob::schedule::Repeat::Yearly => format!("Yearly {:?}", sa.days),
                    backstop_backupjob::schedule::Repeat::Hourly => {
                        format!("Each {} hours", sa.days.first().copied().unwrap_or(0))
                    }
                };
                let end = match sa.end {
                    backstop_backupjob::schedule::End::None
                    | backstop_backupjob::schedule::End::Never => "None".to_string(),
                    backstop_backupjob::schedule::End::Times(n) => format!("After {n} times"),
                    backstop_backupjob::schedule::End::Until(t) => format!("On {}", local_time(t)),
                };
                let status = match msg {
                    Some(m) => format!("Error! {m}"),
                    None if sa.done > 0 => format!("Done on {}", local_time(sa.done)),
                    None => "Pending".into(),
                };
                print(&format!(
                    "{sid:>3} {:<7} {:<5} {:<16} {repeat:<16} {end:<16} {status}",
                    "backup",
                    "-",
                    local_time(sa.time)
                ))?;
            }
            print("")?;
        }
        print(&format!(
            "\nTEMPLATE CONTENTS\n{}",
            super::shown_template(&template)
        ))?;
    }
    Ok(())
}

pub(super) fn backup(st: &mut State, args: &Args, id: &u64) -> Result<ExitCode, Error> {
    let mut reporter = Reporter::new(args.progress_every);
    let options = ops::backup::RunOptions {
        job: *id,
        limits: super::limits(args),
        notify: super::notify_settings(),
    };
    let result = ops::backup::run(&super::env(args), st, &options, |ev| {
        reporter.event("", ev);
    })?;
    print(&result.to_string())?;
    for line in &result.notifications {
        eprintln!("backupjob: backup job {id}: {line}");
    }
    Ok(if result.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(super) fn update(st: &mut State, id: &u64, file: &Path, append: &bool) -> Result<(), Error> {
    let update = ops::definitions::JobUpdate {
        job: *id,
        file: file_text(file)?,
        append: *append,
    };
    ops::definitions::update_job(st, &update, |note| {
        let _ = writeln!(std::io::stderr(), "backupjob: {note}");
    })
}
