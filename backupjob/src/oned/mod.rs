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
