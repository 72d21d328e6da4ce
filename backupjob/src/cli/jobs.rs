//! `backupjob create|list|show|update|delete|rename|lock|unlock|priority|backup|cancel|
//! retry`: backup jobs, and running one now.

use super::datastores::datastore_of;
use super::{Args, input, print, read};
use super::{CreateArgs, Reporter, local_time};
use crate::Error;
use crate::engine;
use crate::model::{self, JobTemplate};
use crate::runner::Env;
use crate::scheduler::Limits;
use crate::state::State;
use crate::state::VmState;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// A job backs up into a backup datastore, never straight into a remote.
fn not_a_remote(st: &State, id: u64) -> Result<(), Error> {
    if st.remotes()?.iter().any(|r| r.id == id) {
        return Err(input(format!(
            "DATASTORE_ID {id} is a remote, not a backup datastore (remotes receive copies through sync jobs)"
        )));
    }
    Ok(())
}

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
    let flags = [
        ("NAME", name.clone()),
        ("BACKUP_VMS", vms.clone()),
        ("DATASTORE_ID", datastore.map(|d| d.to_string())),
        ("MODE", mode.clone()),
        ("KEEP_LAST", keep.map(|k| k.to_string())),
        ("EXECUTION", execution.clone()),
        ("PRIORITY", priority.map(|p| p.to_string())),
    ];
    let (text, what) = super::flags::template_of(file.as_ref(), "", &flags)?;
    let file = std::path::Path::new(&what);
    let job = JobTemplate::parse(&text).map_err(|x| input(format!("{}: {x}", file.display())))?;
    not_a_remote(st, job.datastore_id)?;
    let stored = model::without_sched_actions(&text).map_err(|x| input(x.to_string()))?;
    let id = st.create_job_with(
        &job.name,
        job.priority,
        &stored,
        &job.vms,
        &job.sched_actions,
    )?;
    print(&format!("ID: {id}"))?;
    Ok(())
}

pub(super) fn list(st: &State, json: &bool) -> Result<(), Error> {
    let jobs = st.jobs()?;
    let mut rows = Vec::new();
    for crate::state::JobRow {
        id,
        name,
        priority: prio,
        ..
    } in jobs
    {
        let vms: Vec<String> = st
            .job_vms(id)?
            .iter()
            .map(|v| v.vm_id.to_string())
            .collect();
        let crate::state::JobStatus {
            locked,
            last_started: last,
            ..
        } = st.job_status(id)?;
        rows.push((id, name, prio, vms.join(","), locked, last));
    }
    if *json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, name, prio, vms, locked, last)| {
                serde_json::json!({"id": id, "name": name, "priority": prio,
                    "vms": vms, "locked": locked, "last_backup_time": last})
            })
            .collect();
        print(&serde_json::Value::Array(v).to_string())?;
    } else {
        print(&format!(
            "{:>4} {:>4} {:<20} {:<16} VMS",
            "ID", "PRIO", "NAME", "LAST"
        ))?;
        for (id, name, prio, mut list, _, last) in rows {
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
    let crate::state::JobRow {
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
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                })
            })
            .collect();
        let crate::state::JobStatus {
            locked,
            last_started: last,
            last_duration: duration,
        } = st.job_status(*id)?;
        let sas: Vec<_> = st
            .sched_actions(*id)?
            .into_iter()
            .map(
                |crate::state::SchedActionRow {
                     id: sid,
                     action: sa,
                     message: msg,
                 }| {
                    let (end_type, end_value) = sa.end.codes();
                    serde_json::json!({
                        "id": sid, "time": sa.time, "repeat": format!("{:?}", sa.repeat),
                        "days": sa.days, "end_type": end_type, "end_value": end_value,
                        "done": sa.done, "message": msg,
                    })
                },
            )
            .collect();
        print(
            &serde_json::json!({"id": id, "name": name, "priority": prio, "vms": vms,
                "locked": locked, "last_backup_time": last,
                "last_backup_duration": duration, "sched_actions": sas})
            .to_string(),
        )?;
    } else {
        let ids = |v: Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let crate::state::JobStatus {
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
            for crate::state::SchedActionRow {
                id: sid,
                action: sa,
                message: msg,
            } in sas
            {
                let repeat = match sa.repeat {
                    crate::schedule::Repeat::None => "-".to_string(),
                    crate::schedule::Repeat::Weekly => format!("Weekly {:?}", sa.days),
                    crate::schedule::Repeat::Monthly => format!("Monthly {:?}", sa.days),
                    crate::schedule::Repeat::Yearly => format!("Yearly {:?}", sa.days),
                    crate::schedule::Repeat::Hourly => {
                        format!("Each {} hours", sa.days.first().copied().unwrap_or(0))
                    }
                };
                let end = match sa.end {
                    crate::schedule::End::None | crate::schedule::End::Never => "None".to_string(),
                    crate::schedule::End::Times(n) => format!("After {n} times"),
                    crate::schedule::End::Until(t) => format!("On {}", local_time(t)),
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
    let env = Env {
        remotes: args.remotes.clone(),
        datastore_location: args.datastore_location.clone(),
    };
    let limits = Limits {
        max_backups: args.max_backups,
        max_backups_host: args.max_backups_host,
        ..Limits::default()
    };
    let mut reporter = Reporter::new(args.progress_every);
    let since = jiff::Timestamp::now().as_millisecond();
    let (updated, failed) = engine::run_now(&env, st, *id, &limits, |ev| {
        reporter.event("", ev);
    })?;
    print(&format!(
        "backup job {id}: {updated} VMs backed up, {failed} in ERROR"
    ))?;
    for line in crate::notify::after_job_run(st, &super::notify_settings(), *id, since) {
        eprintln!("backupjob: backup job {id}: {line}");
    }
    for line in super::retention::after_run(st, &env, *id) {
        print(&format!("backup job {id}: {line}"))?;
    }
    if failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cancel(st: &mut State, args: &Args, id: &u64) -> Result<(), Error> {
    let crate::state::JobRow { template, .. } = st
        .jobs()?
        .into_iter()
        .find(|j| j.id == *id)
        .ok_or_else(|| input(format!("there is no backup job {id}")))?;
    let job = JobTemplate::parse(&template).map_err(|x| input(format!("backup job {id}: {x}")))?;
    let ds_mad = datastore_of(st, args, job.datastore_id)
        .map_or_else(|_| "backstop".to_string(), |(_, _, ds)| ds.ds_mad);
    let docs = st.vms()?;
    let now = jiff::Timestamp::now().as_millisecond();
    let (mut dropped, mut stopped) = (0, 0);
    // The waiting VMs go first: once a running one is stopped, the runner would
    // otherwise start the next.
    let rows = st.job_vms(*id)?;
    for r in rows.iter().filter(|r| r.state == Some(VmState::Outdated)) {
        dropped += usize::from(st.clear_vm(*id, r.vm_id, VmState::Outdated)?);
    }
    for r in rows.iter().filter(|r| r.state == Some(VmState::Ongoing)) {
        st.cancel_vm(*id, r.vm_id, now)?;
        let Some((_, _, _, doc)) = docs.iter().find(|d| d.0 == r.vm_id) else {
            continue;
        };
        let root = backstop_protocol::xml::Element::parse(doc).map_err(|x| input(x.to_string()))?;
        let vm =
            backstop_protocol::message::Vm::from_xml(&root).map_err(|x| input(x.to_string()))?;
        let Some(place) = vm.placement.clone() else {
            continue;
        };
        let vm_dir = format!(
            "{}/{}/{}",
            args.datastore_location.trim_end_matches('/'),
            place.system_ds_id.unwrap_or(0),
            vm.id
        );
        let action = args
            .remotes
            .join(format!("datastore/{ds_mad}/backup_cancel"));
        let mut child = std::process::Command::new(&action)
            .arg(format!("{}:{vm_dir}", place.hostname))
            .arg(
                vm.deploy_id
                    .clone()
                    .unwrap_or_else(|| format!("one-{}", vm.id)),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|x| input(format!("cannot run {}: {x}", action.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(doc.as_bytes());
        }
        let out = child.wait_with_output().map_err(|x| input(x.to_string()))?;
        if !out.status.success() {
            return Err(input(format!(
                "backup_cancel of VM {}: {}",
                vm.id,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        stopped += 1;
    }
    print(&format!(
        "backup job {id}: {dropped} VMs dropped from the run, {stopped} running backups stopped"
    ))?;
    Ok(())
}

pub(super) fn update(st: &mut State, id: &u64, file: &PathBuf, append: &bool) -> Result<(), Error> {
    use backstop_protocol::template::Template;
    let crate::state::JobRow {
        name,
        template: old,
        ..
    } = st
        .jobs()?
        .into_iter()
        .find(|j| j.id == *id)
        .ok_or_else(|| input(format!("there is no backup job {id}")))?;
    let old = Template::parse(&old).map_err(|x| input(format!("backup job {id}: {x}")))?;
    let new = Template::parse(&read(file)?)
        .map_err(|x| input(format!("{}: template: {x}", file.display())))?;
    let fixed = ["NAME", "PRIORITY", "SCHED_ACTION"];
    if new.attributes.iter().any(|a| a.name == "SCHED_ACTION") {
        let _ = writeln!(
            std::io::stderr(),
            "backupjob: {}: SCHED_ACTION is not changed by update; use sched-add, sched-update or sched-delete",
            file.display()
        );
    }
    let mut merged = if *append {
        old.clone()
    } else {
        Template::default()
    };
    for a in new
        .attributes
        .iter()
        .filter(|a| !fixed.contains(&a.name.as_str()))
    {
        merged.attributes.retain(|b| b.name != a.name);
        merged.attributes.push(a.clone());
    }
    // What update cannot change stays as it was.
    for a in old
        .attributes
        .iter()
        .filter(|a| fixed.contains(&a.name.as_str()))
    {
        merged.attributes.retain(|b| b.name != a.name);
        merged.attributes.insert(0, a.clone());
    }
    // The job's current name (rename changes it outside the template).
    merged.attributes.retain(|b| b.name != "NAME");
    merged.attributes.insert(
        0,
        backstop_protocol::template::Attribute {
            name: "NAME".into(),
            value: backstop_protocol::template::Value::Single(name),
        },
    );
    let text = merged
        .render()
        .map_err(|x| input(format!("{}: {x}", file.display())))?;
    let job = JobTemplate::parse(&text).map_err(|x| input(format!("{}: {x}", file.display())))?;
    not_a_remote(st, job.datastore_id)?;
    st.set_job_template(*id, &text, &job.vms)?;
    Ok(())
}

pub(super) fn retry(st: &mut State, id: &u64) -> Result<(), Error> {
    let mut moved = 0;
    for r in st.job_vms(*id)? {
        if r.state == Some(VmState::Error)
            && st.move_vm(
                *id,
                r.vm_id,
                Some(VmState::Error),
                VmState::Outdated,
                None,
                jiff::Timestamp::now().as_millisecond(),
            )?
        {
            moved += 1;
        }
    }
    print(&format!("backup job {id}: {moved} VMs back to OUTDATED"))?;
    Ok(())
}
