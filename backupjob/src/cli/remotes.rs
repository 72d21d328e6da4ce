//! `backupjob remote create|list|show|update|remove` (also `backstop remote ...`): the other
//! site of a sync (docs/sync.md), written as a backup datastore's template (NAME, DS_MAD,
//! BASE_PATH or RESTIC_SFTP_SERVER/RESTIC_SFTP_USER, or the RESTIC_S3_* attributes, and its own
//! RESTIC_PASSWORD). Secrets are sealed in the state and never printed.

use super::{Args, input, print, read};
use crate::Error;
use crate::model;
use crate::state::State;
use backstop_protocol::template::Template;
use std::path::PathBuf;

/// The template checked as a datastore's, with the id it has or will get; its name.
fn checked(args: &Args, id: u64, text: &str, file: &std::path::Path) -> Result<String, Error> {
    let (name, _) = model::datastore(id, text, &args.datastore_location)
        .map_err(|x| input(format!("{}: {x}", file.display())))?;
    Ok(name)
}

pub(super) fn create(st: &mut State, args: &Args, file: &PathBuf) -> Result<(), Error> {
    let text = read(file)?;
    let name = checked(args, 0, &text, file)?;
    let id = st.add_remote(&name, &text)?;
    print(&format!("ID: {id}"))
}

pub(super) fn update(st: &mut State, args: &Args, id: u64, file: &PathBuf) -> Result<(), Error> {
    let text = read(file)?;
    let name = checked(args, id, &text, file)?;
    st.update_remote(id, &name, &text)?;
    Ok(())
}

pub(super) fn remove(st: &mut State, id: u64) -> Result<(), Error> {
    st.delete_remote(id)?;
    Ok(())
}

/// Where a remote's repositories are: `<location>/<vm_id>` and `<location>/job_<bj>`.
fn location(args: &Args, id: u64, text: &str) -> Result<String, Error> {
    let (_, ds) = model::datastore(id, text, &args.datastore_location)
        .map_err(|x| input(format!("remote {id}: {x}")))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("remote {id}: {x}")))?;
    let parsed = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|x| input(format!("remote {id}: {x}")))?;
    use backstop_datastore::location::Location;
    Ok(
        match Location::of(&parsed).map_err(|x| input(format!("remote {id}: {x}")))? {
            Location::Local { base_path } => base_path,
            Location::Sftp {
                user,
                server,
                base_path,
            } => format!("sftp:{user}@{server}:{base_path}"),
            Location::S3 { endpoint, bucket } => format!("s3:{endpoint}/{bucket}"),
        },
    )
}

pub(super) fn list(st: &State, args: &Args, json: bool) -> Result<(), Error> {
    let remotes = st.remotes()?;
    let mut rows = Vec::new();
    for crate::state::Named {
        id,
        name,
        template: text,
    } in &remotes
    {
        rows.push((*id, name.clone(), location(args, *id, text)?));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, name, at)| serde_json::json!({"id": id, "name": name, "location": at}))
            .collect();
        return print(&serde_json::Value::Array(v).to_string());
    }
    print(&format!("{:>4} {:<20} LOCATION", "ID", "NAME"))?;
    for (id, name, at) in rows {
        print(&format!("{id:>4} {name:<20} {at}"))?;
    }
    Ok(())
}

pub(super) fn show(st: &State, args: &Args, id: u64, json: bool) -> Result<(), Error> {
    let crate::state::Named {
        name,
        template: text,
        ..
    } = st
        .remotes()?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| input(format!("there is no remote {id}")))?;
    let at = location(args, id, &text)?;
    let template = Template::parse(&text)
        .map_err(|x| input(format!("remote {id}: {x}")))?
        .redacted();
    if json {
        let attrs = super::attributes_json(&template);
        return print(
            &serde_json::json!({"id": id, "name": name, "location": at, "template": attrs})
                .to_string(),
        );
    }
    print(&format!(
        "REMOTE {id} INFORMATION\nID        : {id}\nNAME      : {name}\nLOCATION  : {at}\n\n\
         REMOTE TEMPLATE\n{}",
        template.to_string().trim_end()
    ))
}
