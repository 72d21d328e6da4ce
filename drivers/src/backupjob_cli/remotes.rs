//! `backupjob remote create|list|show|update|remove` (also `backstop remote ...`): the other
//! site of a sync (docs/sync.md), written as a backup datastore's template (NAME, DS_MAD,
//! BASE_PATH or RESTIC_SFTP_SERVER/RESTIC_SFTP_USER, or the RESTIC_S3_* attributes, and its own
//! RESTIC_PASSWORD). Secrets are sealed in the state and never printed.

use super::{Args, input, print};
use backstop_backupjob::Error;
use backstop_backupjob::ops;
use backstop_backupjob::state::State;
use backstop_protocol::template::Template;

/// Where a remote's repositories are.
fn location(args: &Args, id: u64, text: &str) -> Result<String, Error> {
    ops::definitions::remote_location(&args.datastore_location, id, text)
}

pub(super) fn list(st: &State, args: &Args, json: bool) -> Result<(), Error> {
    let remotes = st.remotes()?;
    let mut rows = Vec::new();
    for backstop_backupjob::state::Named {
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
    let backstop_backupjob::state::Named {
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
