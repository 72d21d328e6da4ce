//! `backupjob vm register|list|show|unregister`: VMs, from their documents
//! (`onevm show -x`).

use super::{input, print};
use backstop_backupjob::Error;
use backstop_backupjob::state::{State, VmState};

pub(super) fn list(st: &State, json: &bool) -> Result<(), Error> {
    let list = st.vms()?;
    if *json {
        let v: Vec<_> = list
            .iter()
            .map(|v| serde_json::json!({"id": v.id, "name": v.name, "host": v.host}))
            .collect();
        print(&serde_json::Value::Array(v).to_string())?;
    } else {
        print(&format!("{:>4} {:<20} {}", "ID", "NAME", "HOST"))?;
        for backstop_backupjob::state::VmRow { id, name, host, .. } in list {
            print(&format!(
                "{id:>4} {name:<20} {}",
                host.unwrap_or_else(|| "-".into())
            ))?;
        }
    }
    Ok(())
}

pub(super) fn show(st: &State, id: u64, json: bool) -> Result<(), Error> {
    let backstop_backupjob::state::VmRow {
        name,
        host,
        document: doc,
        ..
    } = st
        .vms()
        .map_err(|x| input(x.to_string()))?
        .into_iter()
        .find(|v| v.id == id)
        .ok_or_else(|| input(format!("there is no registered VM {id}")))?;
    let root =
        backstop_protocol::xml::Element::parse(&doc).map_err(|x| input(format!("VM {id}: {x}")))?;
    let vm = backstop_protocol::message::Vm::from_xml(&root)
        .map_err(|x| input(format!("VM {id}: {x}")))?;
    let mut job = None;
    for backstop_backupjob::state::JobRow {
        id: jid,
        name: jname,
        ..
    } in st.jobs().map_err(|x| input(x.to_string()))?
    {
        if let Some(r) = st
            .job_vms(jid)
            .map_err(|x| input(x.to_string()))?
            .into_iter()
            .find(|r| r.vm_id == id)
        {
            job = Some((jid, jname, r));
            break;
        }
    }
    let images: Vec<_> = st
        .all_images()
        .map_err(|x| input(x.to_string()))?
        .into_iter()
        .filter(|i| i.vm_id == id)
        .collect();
    let disks: Vec<_> = vm
        .disks
        .iter()
        .map(|d| (d.disk_id, d.format.clone(), d.size_mb, d.source.clone()))
        .collect();
    if json {
        return print(
            &serde_json::json!({
                "id": id, "name": name, "host": host,
                "disks": disks.iter().map(|(i, f, s, src)| serde_json::json!({
                    "id": i, "format": f, "size_mb": s, "source": src,
                })).collect::<Vec<_>>(),
                "job": job.as_ref().map(|(j, n, r)| serde_json::json!({
                    "id": j, "name": n, "state": r.state.map(VmState::as_str), "reason": r.reason,
                })),
                "images": images.iter().map(|i| i.id).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    let mut out = format!(
        "VIRTUAL MACHINE {id} INFORMATION\nID    : {id}\nNAME  : {name}\nHOST  : {}\n",
        host.as_deref().unwrap_or("-")
    );
    match &job {
        Some((j, n, r)) => out.push_str(&format!(
            "JOB   : {j} ({n}), {}{}\n",
            r.state.map_or("not in a run", VmState::as_str),
            r.reason
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        )),
        None => out.push_str("JOB   : -\n"),
    }
    out.push_str(&format!(
        "\nDISKS\n{:>3} {:<7} {:>9} SOURCE\n",
        "ID", "FORMAT", "SIZE_MB"
    ));
    for (i, f, s, src) in &disks {
        out.push_str(&format!(
            "{i:>3} {:<7} {:>9} {}\n",
            f.as_deref().unwrap_or("-"),
            s.map_or("-".into(), |n| n.to_string()),
            src.as_deref().unwrap_or("-")
        ));
    }
    let ids: Vec<String> = images.iter().map(|i| i.id.to_string()).collect();
    out.push_str(&format!("\nBACKUP IMAGES : {}", ids.join(",")));
    print(&out)
}
