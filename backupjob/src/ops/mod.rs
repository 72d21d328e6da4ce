//! The runner's operations: what `backstop backupjob ...` and the web server's actions do,
//! as functions over the state. Each takes its options as a named struct and returns a named
//! result; a result's `Display` is the text the command line prints for it, so the command
//! line and the web server's JSON (`"output"`) say the same thing. Nothing here parses flags,
//! reads a terminal or prints: the caller decides where text goes.
//!
//! - [`backup`]: run a backup job now, retry its failed VMs, cancel its run;
//! - [`retention`]: a job's retention plan, and carrying it out;
//! - [`definitions`]: creating and changing jobs, scheduled actions, datastores, remotes,
//!   VMs, sync and verify jobs (checked before they are stored);
//! - [`runs`]: a sync job's or a verify job's run, the scheduler's pass, a discovery;
//! - [`images`]: restoring a backup image into a directory.

pub mod backup;
pub mod definitions;
pub mod images;
pub mod import;
pub mod retention;
pub mod runs;

use crate::Error;
use crate::error::input;
use crate::state::State;

/// The global notification settings from the environment, and, when they are wrong, why
/// (notifications are then off; the caller says so).
pub fn notify_settings() -> (crate::notify::Settings, Option<String>) {
    match crate::notify::Settings::from_env() {
        Ok(s) => (s, None),
        Err(e) => (
            crate::notify::Settings::default(),
            Some(format!("notifications are off: {e}")),
        ),
    }
}

/// An error as a user reads it: its first line, secrets hidden. The command line prints it
/// after `backupjob: `, and so does the web server in an action's `"error"`.
pub fn error_line(e: &Error) -> String {
    backstop_protocol::redact::text(e.to_string().lines().next().unwrap_or(""))
}

/// A backup job's stored row.
pub(crate) fn job_row(st: &State, id: u64) -> Result<crate::state::JobRow, Error> {
    st.jobs()?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| input(format!("there is no backup job {id}")))
}

/// A datastore of the state as the actions see it: its name, its template and its document.
#[derive(Debug, Clone)]
pub struct StateDatastore {
    pub name: String,
    pub template: String,
    pub datastore: backstop_protocol::message::Datastore,
}

/// Datastore `id` of the state, parsed as the actions see it.
pub fn datastore_of(st: &State, location: &str, id: u64) -> Result<StateDatastore, Error> {
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
    let (_, ds) = crate::model::datastore(id, &text, location)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    let root = backstop_protocol::xml::Element::parse(&ds.document)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    let parsed = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|x| input(format!("datastore {id}: {x}")))?;
    Ok(StateDatastore {
        name,
        template: text,
        datastore: parsed,
    })
}
