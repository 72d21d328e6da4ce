//! `backupjob datastore list|show` (create and delete: [`backstop_backupjob::ops::definitions`]): backup datastores, from OpenNebula-style
//! templates.

use super::{Args, input, print};
use backstop_backupjob::Error;
use backstop_backupjob::ops;
use backstop_backupjob::state::State;

pub(super) fn list(st: &State, json: &bool) -> Result<(), Error> {
    let list = st.datastores()?;
    if *json {
        let v: Vec<_> = list
            .iter()
            .map(|backstop_backupjob::state::Named { id, name, .. }| serde_json::json!({"id": id, "name": name}))
            .collect();
        print(&serde_json::Value::Array(v).to_string())?;
    } else {
        print(&format!("{:>4} {}", "ID", "NAME"))?;
        for backstop_backupjob::state::Named { id, name, .. } in list {
            print(&format!("{id:>4} {name}"))?;
        }
    }
    Ok(())
}

pub(super) fn show(st: &State, args: &Args, id: u64, json: bool) -> Result<(), Error> {
    use backstop_protocol::template::Template;
    let ops::StateDatastore {
        name,
        template: text,
        datastore: ds,
    } = ops::datastore_of(st, &args.datastore_location, id)?;
    let template = Template::parse(&text)
        .map_err(|x| input(format!("datastore {id}: {x}")))?
        .redacted();
    let jobs = ops::definitions::jobs_using(st, id).map_err(|x| input(x.to_string()))?;
    let images: Vec<u64> = st
        .all_images()
        .map_err(|x| input(x.to_string()))?
        .into_iter()
        .filter(|i| i.datastore_id == id)
        .map(|i| i.id)
        .collect();
    // A password change that has not finished (docs/rekey.md).
    let rekey = st.rekey(id).map_err(|x| input(x.to_string()))?;
    let phase = |r: &backstop_backupjob::state::Rekey| match r.phase {
        backstop_backupjob::state::RekeyPhase::Adding => "ADDING",
        backstop_backupjob::state::RekeyPhase::Removing => "REMOVING",
    };
    if json {
        let attrs = super::attributes_json(&template);
        return print(
            &serde_json::json!({
                "id": id, "name": name, "ds_mad": ds.ds_mad, "base_path": ds.base_path,
                "jobs": jobs, "images": images, "template": attrs,
                "password_change": rekey.as_ref().map(|r| serde_json::json!({
                    "phase": phase(r),
                    "started_at": backstop_backupjob::json_time::seconds(Some(r.started_at)),
                })),
            })
            .to_string(),
        );
    }
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let change = rekey.as_ref().map_or(String::new(), |r| {
        format!(
            "PASSWORD  : a change is unfinished ({}, since {}): the next run completes it{}\n",
            phase(r),
            super::local_time(r.started_at),
            match r.phase {
                backstop_backupjob::state::RekeyPhase::Adding => {
                    format!("; abort-rekey {id} gives it up")
                }
                backstop_backupjob::state::RekeyPhase::Removing => String::new(),
            }
        )
    });
    print(&format!(
        "DATASTORE {id} INFORMATION\nID        : {id}\nNAME      : {name}\nDS_MAD    : {}\n\
         BASE_PATH : {}\nJOBS      : {}\nIMAGES    : {}\n{change}\nDATASTORE TEMPLATE\n{}",
        ds.ds_mad,
        ds.base_path,
        list(&jobs),
        list(&images),
        template.to_string().trim_end()
    ))
}
