//! `backupjob datastore create|list|show|delete`: backup datastores, from OpenNebula-style
//! templates.

use super::{Args, input, print, read};
use crate::Error;
use crate::model::{self, JobTemplate};
use crate::state::State;
use std::path::PathBuf;

pub(super) fn create(st: &mut State, args: &Args, file: &PathBuf) -> Result<(), Error> {
    let text = read(file)?;
    // Validated with the id it will get.
    let next = st.datastores()?.last().map_or(0, |d| d.id) + 1;
    let (name, _) = model::datastore(next, &text, &args.datastore_location)
        .map_err(|x| input(format!("{}: {x}", file.display())))?;
    let id = st.add_datastore(&name, &text)?;
    print(&format!("ID: {id}"))?;
    Ok(())
}

pub(super) fn list(st: &State, json: &bool) -> Result<(), Error> {
    let list = st.datastores()?;
    if *json {
        let v: Vec<_> = list
            .iter()
            .map(|crate::state::Named { id, name, .. }| serde_json::json!({"id": id, "name": name}))
            .collect();
        print(&serde_json::Value::Array(v).to_string())?;
    } else {
        print(&format!("{:>4} {}", "ID", "NAME"))?;
        for crate::state::Named { id, name, .. } in list {
            print(&format!("{id:>4} {name}"))?;
        }
    }
    Ok(())
}

pub(super) fn delete(st: &mut State, id: &u64) -> Result<(), Error> {
    let using: Vec<u64> = st
        .jobs()?
        .into_iter()
        .filter(|j| JobTemplate::parse(&j.template).is_ok_and(|j| j.datastore_id == *id))
        .map(|j| j.id)
        .collect();
    st.delete_datastore(*id, &using)?;
    Ok(())
}

/// A datastore of the state as the actions see it.
pub(super) fn datastore_of(
    st: &State,
    args: &Args,
    id: u64,
) -> Result<(String, String, backstop_protocol::message::Datastore), Error> {
    let crate::state::Named {
        name,
        template: text,
        ..
    } = st
        .datastores()
        .map_err(|x| input(x.to_string()))?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| input(format!("there is no datastore {id}")))?;
    let (_, ds) = model::datastore(id, &text, &args.datastore_location)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    let parsed = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    Ok((name, text, parsed))
}

pub(super) fn show(st: &State, args: &Args, id: u64, json: bool) -> Result<(), Error> {
    use backstop_protocol::template::Template;
    let (name, text, ds) = datastore_of(st, args, id)?;
    let template = Template::parse(&text)
        .map_err(|x| input(format!("datastore {id}: {x}")))?
        .redacted();
    let jobs: Vec<u64> = st
        .jobs()
        .map_err(|x| input(x.to_string()))?
        .into_iter()
        .filter(|j| JobTemplate::parse(&j.template).is_ok_and(|j| j.datastore_id == id))
        .map(|j| j.id)
        .collect();
    let images: Vec<u64> = st
        .all_images()
        .map_err(|x| input(x.to_string()))?
        .into_iter()
        .filter(|i| i.datastore_id == id)
        .map(|i| i.id)
        .collect();
    if json {
        let attrs = super::attributes_json(&template);
        return print(
            &serde_json::json!({
                "id": id, "name": name, "ds_mad": ds.ds_mad, "base_path": ds.base_path,
                "jobs": jobs, "images": images, "template": attrs,
            })
            .to_string(),
        );
    }
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    print(&format!(
        "DATASTORE {id} INFORMATION\nID        : {id}\nNAME      : {name}\nDS_MAD    : {}\n\
         BASE_PATH : {}\nJOBS      : {}\nIMAGES    : {}\n\nDATASTORE TEMPLATE\n{}",
        ds.ds_mad,
        ds.base_path,
        list(&jobs),
        list(&images),
        template.to_string().trim_end()
    ))
}
