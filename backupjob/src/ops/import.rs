//! `backupjob import <id>`: one of oned's backup jobs made a runner job (OpenNebula mode,
//! docs/opennebula-mode.md). Its template (BACKUP_VMS, DATASTORE_ID, MODE, KEEP_LAST,
//! FS_FREEZE, BACKUP_VOLATILE, INCREMENT_MODE, DISK_IDS, RESET, EXECUTION, its PRIORITY and
//! scheduled actions) becomes the runner job's; its datastore is imported when the state lacks
//! it. oned refuses a backup of a VM that one of its backup jobs holds, so the VMs must leave
//! oned's job: `take_over` empties its BACKUP_VMS once the runner job exists (oned then starts
//! the INCREMENT chains of those VMs anew). Without it, an oned job that still holds VMs is
//! refused and nothing changes.

use super::definitions::{Created, Definition, FileText};
use crate::Error;
use crate::error::input;
use crate::state::State;
use backstop_protocol::oned::OnedClient;
use backstop_protocol::template::{Template, Value as TValue};
use backstop_protocol::xml::Element;
use backstop_protocol::xmlrpc::Value;

/// The attributes of an oned backup job's template that a runner job takes as they are.
const COPIED: &[&str] = &[
    "BACKUP_VMS",
    "DATASTORE_ID",
    "MODE",
    "KEEP_LAST",
    "FS_FREEZE",
    "BACKUP_VOLATILE",
    "INCREMENT_MODE",
    "DISK_IDS",
    "RESET",
    "EXECUTION",
];

/// The runner job's template for oned's backup job document `doc`, and its BACKUP_VMS.
pub fn template_of(doc: &str) -> Result<(String, Vec<u64>, u64), String> {
    let root = Element::parse(doc).map_err(|e| e.to_string())?;
    if root.name != "BACKUPJOB" {
        return Err(format!("a <{}>, not a <BACKUPJOB>", root.name));
    }
    let name = root.text_at("NAME").unwrap_or_default().trim().to_string();
    let mut t = Template::default();
    t.push("NAME", name);
    let tmpl = root.child("TEMPLATE").ok_or("no TEMPLATE")?;
    for a in COPIED {
        if let Some(v) = tmpl.text_at(a).map(str::trim).filter(|v| !v.is_empty()) {
            t.push(a, v.to_string());
        }
    }
    if let Some(p) = root
        .text_at("PRIORITY")
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        t.push("PRIORITY", p.to_string());
    }
    for sa in tmpl.children_named("SCHED_ACTION") {
        let pairs: Vec<(String, String)> = ["TIME", "REPEAT", "DAYS", "END_TYPE", "END_VALUE"]
            .iter()
            .filter_map(|k| {
                sa.text_at(k)
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| (k.to_string(), v.to_string()))
            })
            .collect();
        t.attributes.push(backstop_protocol::template::Attribute {
            name: "SCHED_ACTION".into(),
            value: TValue::Vector(pairs),
        });
    }
    let vms: Vec<u64> = tmpl
        .text_at("BACKUP_VMS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let ds: u64 = tmpl
        .text_at("DATASTORE_ID")
        .and_then(|d| d.trim().parse().ok())
        .ok_or("no DATASTORE_ID")?;
    Ok((t.render().map_err(|e| e.to_string())?, vms, ds))
}

/// Imports oned's backup job `id` as a runner job (see the module).
pub fn import_job(
    st: &mut State,
    client: &OnedClient,
    id: u64,
    take_over: bool,
    (endpoint, auth): (Option<&str>, Option<&std::path::Path>),
) -> Result<Created, Error> {
    let doc = client
        .document_if_any("one.backupjob.info", id)?
        .ok_or_else(|| input(format!("oned has no backup job {id}")))?;
    let (text, vms, ds) =
        template_of(&doc).map_err(|e| input(format!("oned's backup job {id}: {e}")))?;
    if !vms.is_empty() && !take_over {
        return Err(input(format!(
            "oned's backup job {id} holds VMs {}, and oned refuses other backups of them: --take-over empties its BACKUP_VMS once the runner's job exists (oned then starts their INCREMENT chains anew)",
            vms.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        )));
    }
    if !st.datastores()?.iter().any(|d| d.id == ds) {
        super::definitions::import_datastore(st, ds, endpoint, auth)?;
    }
    let created = super::definitions::create_job(
        st,
        &Definition {
            file: Some(FileText {
                text,
                name: format!("oned's backup job {id}"),
            }),
            settings: Vec::new(),
        },
    )?;
    if take_over && !vms.is_empty() {
        let released = client.call(
            "one.backupjob.update",
            &[
                Value::Int(id as i64),
                Value::Str("BACKUP_VMS=\"\"".into()),
                Value::Int(1),
            ],
        );
        if let Err(e) = released {
            // The runner's job would fail on every VM: it goes again, nothing else changed.
            let _ = st.delete_job(created.id);
            return Err(input(format!(
                "oned's backup job {id} kept its VMs ({e}); the runner's job was not kept"
            )));
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oned_backup_job_becomes_a_runner_template() {
        let doc = "<BACKUPJOB><ID>3</ID><NAME>nightly</NAME><PRIORITY>60</PRIORITY><TEMPLATE>\
                   <BACKUP_VMS>4,7</BACKUP_VMS><DATASTORE_ID>100</DATASTORE_ID><MODE>INCREMENT</MODE>\
                   <KEEP_LAST>3</KEEP_LAST><EXECUTION>PARALLEL</EXECUTION><ERROR>x</ERROR>\
                   <SCHED_ACTION><ID>9</ID><TIME>1900000000</TIME><REPEAT>0</REPEAT><DAYS>1,3</DAYS>\
                   <END_TYPE>0</END_TYPE></SCHED_ACTION></TEMPLATE></BACKUPJOB>";
        let (text, vms, ds) = template_of(doc).expect("template");
        assert_eq!((vms, ds), (vec![4, 7], 100));
        let job = crate::model::JobTemplate::parse(&text).expect("a runner job");
        assert_eq!(job.name, "nightly");
        assert_eq!(job.priority, 60);
        assert_eq!(job.keep_last, 3);
        assert_eq!(job.vms, [4, 7]);
        assert_eq!(job.sched_actions.len(), 1);
        assert!(!text.contains("ERROR"), "only the job's settings: {text}");
        assert!(template_of("<VM/>").is_err());
    }
}
