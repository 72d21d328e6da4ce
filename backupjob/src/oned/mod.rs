//! OpenNebula mode (docs/opennebula-mode.md): the runner on top of an OpenNebula cloud, oned
//! the source of truth. A runner datastore whose template says `ONED = "YES"` is oned's
//! backup datastore of the same id; a job backing up into it reads its VMs from oned at each
//! run ([`inventory`]), backs each up with `one.vm.backup` and waits for oned's outcome
//! ([`backup`]), and keeps the state's images a copy of oned's backup images ([`images`]).
//!
//! The connection: `ONE_XMLRPC` and `ONE_AUTH` (a credentials file) of the datastore's
//! template when given, else as OpenNebula's own tools find them (the environment,
//! `~/.one/one_auth`).

pub mod backup;
pub mod images;
pub mod inventory;
pub mod users;

use crate::Error;
use crate::error::input;
use crate::runner::BackupDatastore;
use backstop_protocol::oned::OnedClient;
use backstop_protocol::template::Template;
use std::path::Path;

/// The attribute that makes a runner datastore oned's.
pub const ONED: &str = "ONED";

/// Whether a runner datastore's template says it is oned's datastore.
pub fn is_oned(template: &str) -> bool {
    Template::parse(template).is_ok_and(|t| {
        t.get(ONED)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("YES"))
    })
}

/// The client for an OpenNebula datastore's template.
pub fn client(template: &str) -> Result<OnedClient, Error> {
    let t = Template::parse(template).map_err(|e| input(format!("template: {e}")))?;
    let get = |n: &str| t.get(n).map(str::trim).filter(|v| !v.is_empty());
    Ok(OnedClient::configured(
        get("ONE_XMLRPC"),
        get("ONE_AUTH").map(Path::new),
    )?)
}

/// oned's datastore `id` as the actions see it (`one.datastore.info`, secrets decrypted):
/// its name and document. Refused when it is not a backup datastore.
pub fn datastore(client: &OnedClient, id: u64) -> Result<(String, BackupDatastore), Error> {
    let doc = client
        .document_if_any("one.datastore.info", id)?
        .ok_or_else(|| input(format!("oned has no datastore {id}")))?;
    let root = backstop_protocol::xml::Element::parse(&doc)
        .map_err(|e| input(format!("oned's datastore {id}: {e}")))?;
    let ds = backstop_protocol::message::Datastore::from_xml(&root)
        .map_err(|e| input(format!("oned's datastore {id}: {e}")))?;
    if ds.type_code != Some(3) {
        return Err(input(format!(
            "oned's datastore {id} ({}) is not a backup datastore",
            ds.name
        )));
    }
    Ok((
        ds.name.clone(),
        BackupDatastore {
            id,
            ds_mad: ds.ds_mad.clone(),
            document: root.to_xml(),
        },
    ))
}

/// The tighter of two limits, 0 being none.
fn tighter(a: u32, b: u32) -> u32 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// The runner's limits within oned's own (`MAX_BACKUPS`, `MAX_BACKUPS_HOST` of oned.conf, as
/// `one.system.config` gives them): the backups the runner asks of oned never exceed what oned
/// allows its own backup jobs. `config` is that document; what it lacks limits nothing.
pub fn within_oned_limits(
    limits: &crate::scheduler::Limits,
    config: &str,
) -> crate::scheduler::Limits {
    let root = backstop_protocol::xml::Element::parse(config).ok();
    let get = |name: &str| -> u32 {
        root.as_ref()
            .and_then(|r| r.text_at(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    crate::scheduler::Limits {
        max_backups: tighter(limits.max_backups, get("MAX_BACKUPS")),
        max_backups_host: tighter(limits.max_backups_host, get("MAX_BACKUPS_HOST")),
        ..*limits
    }
}

/// oned's configuration document (`one.system.config`), or why it could not be read.
pub fn config(client: &OnedClient) -> Result<String, Error> {
    match client.call("one.system.config", &[])? {
        backstop_protocol::xmlrpc::Value::Str(xml) => Ok(xml),
        other => Err(input(format!(
            "one.system.config returned {other:?}, not a document"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Limits;

    #[test]
    fn the_runner_stays_within_oneds_backup_limits() {
        let conf = "<OPENNEBULA_CONFIGURATION><MAX_BACKUPS>3</MAX_BACKUPS>\
                    <MAX_BACKUPS_HOST>0</MAX_BACKUPS_HOST></OPENNEBULA_CONFIGURATION>";
        let runner = Limits {
            max_backups: 5,
            max_backups_host: 2,
            ..Limits::default()
        };
        let l = within_oned_limits(&runner, conf);
        assert_eq!((l.max_backups, l.max_backups_host), (3, 2));
        let unlimited = Limits {
            max_backups: 0,
            max_backups_host: 0,
            ..Limits::default()
        };
        let l = within_oned_limits(&unlimited, conf);
        assert_eq!((l.max_backups, l.max_backups_host), (3, 0));
        let l = within_oned_limits(&runner, "not xml");
        assert_eq!((l.max_backups, l.max_backups_host), (5, 2));
    }
}
