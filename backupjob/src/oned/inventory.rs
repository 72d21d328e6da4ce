//! What a job backs up in OpenNebula mode, read from oned at each run: every VM that is not
//! DONE, a page at a time (`one.vmpool.info`, the short documents: state, host, labels), and
//! the job's choice among them: the ids of `BACKUP_VMS`, in that order, then the VMs carrying
//! one of its `LABELS` (a label or a label below it, `prod` matching `prod/db`), by id. A VM
//! `BACKUP_VMS` names that oned no longer lists is reported, never guessed at.

use crate::Error;
use crate::error::step;
use backstop_protocol::oned::OnedClient;
use backstop_protocol::xml::Element;
use std::collections::BTreeSet;

/// VMs per `one.vmpool.info` call: a page of short documents is about a megabyte.
pub const PAGE: u64 = 500;

/// One VM as oned lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVm {
    pub id: u64,
    pub name: String,
    pub state: u32,
    pub lcm_state: u32,
    /// The host of its last history record; `None` when it was never deployed.
    pub host: Option<String>,
    /// `USER_TEMPLATE/LABELS`, split at commas.
    pub labels: Vec<String>,
    /// Its short document, as the state keeps a VM's.
    pub document: String,
}

/// oned's VM state DONE (a deleted VM).
pub const DONE: u32 = 6;

/// The VMs of one `VM_POOL` page.
pub fn parse_page(xml: &str) -> Result<Vec<PoolVm>, String> {
    let root = Element::parse(xml).map_err(|e| format!("the VM pool: {e}"))?;
    if root.name != "VM_POOL" {
        return Err(format!("the VM pool is a <{}>, not a <VM_POOL>", root.name));
    }
    root.children_named("VM").map(pool_vm).collect()
}

/// One VM's document (`one.vm.info`) as the pool lists it.
pub fn parse_vm(xml: &str) -> Result<PoolVm, String> {
    let root = Element::parse(xml).map_err(|e| format!("a VM: {e}"))?;
    if root.name != "VM" {
        return Err(format!("a <{}>, not a <VM>", root.name));
    }
    pool_vm(&root)
}

fn pool_vm(vm: &Element) -> Result<PoolVm, String> {
    let number = |path: &str| -> Result<u64, String> {
        vm.text_at(path)
            .map(str::trim)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("a VM of the pool has no number {path}"))
    };
    let id = number("ID")?;
    // The last history record is the VM's current placement.
    let host = vm
        .child("HISTORY_RECORDS")
        .and_then(|h| h.children_named("HISTORY").last())
        .and_then(|h| h.text_at("HOSTNAME"))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    Ok(PoolVm {
        id,
        name: vm.text_at("NAME").unwrap_or_default().to_string(),
        state: number("STATE")? as u32,
        lcm_state: number("LCM_STATE")? as u32,
        host,
        labels: vm
            .text_at("USER_TEMPLATE/LABELS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        document: vm.to_xml(),
    })
}

/// Whether a VM label falls under a job's label (`prod` takes `prod` and `prod/db`).
fn under(vm_label: &str, job_label: &str) -> bool {
    vm_label == job_label
        || vm_label
            .strip_prefix(job_label)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A job's VMs among `pool`: the ids it names in their order, then those with one of its
/// labels by id; and the ids it names that oned does not list (deleted, or not visible).
pub fn select<'a>(
    pool: &'a [PoolVm],
    ids: &[u64],
    labels: &[String],
) -> (Vec<&'a PoolVm>, Vec<u64>) {
    let by_id: std::collections::HashMap<u64, &PoolVm> = pool.iter().map(|v| (v.id, v)).collect();
    let mut chosen = Vec::new();
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    for id in ids {
        match by_id.get(id) {
            Some(v) if v.state != DONE => {
                if seen.insert(*id) {
                    chosen.push(*v);
                }
            }
            _ => missing.push(*id),
        }
    }
    let mut labelled: Vec<&PoolVm> = pool
        .iter()
        .filter(|v| v.state != DONE && !seen.contains(&v.id))
        .filter(|v| v.labels.iter().any(|l| labels.iter().any(|j| under(l, j))))
        .collect();
    labelled.sort_by_key(|v| v.id);
    labelled.dedup_by_key(|v| v.id);
    chosen.extend(labelled);
    (chosen, missing)
}

/// The most pages one pass reads (500,000 VMs in pages of 500).
const MAX_PAGES: u64 = 1_000;

/// Every VM oned lists that is not DONE, page by page. A VM created or deleted while the
/// pages are read may be listed twice (kept once) or be missed: the caller asks for the VMs it
/// expected and did not get one by one ([`confirm`]). A page that lists no VM not seen yet
/// ends the pass (an oned that does not page would otherwise be read for ever).
pub fn read_pool(client: &OnedClient, page: u64) -> Result<Vec<PoolVm>, Error> {
    let mut all: Vec<PoolVm> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut offset = 0;
    for _ in 0..MAX_PAGES {
        let xml = client.vm_pool_page(offset, page)?;
        let vms = parse_page(&xml).map_err(|e| step(format!("oned answered: {e}")))?;
        let n = vms.len() as u64;
        let before = all.len();
        all.extend(vms.into_iter().filter(|v| seen.insert(v.id)));
        if n < page || all.len() == before {
            return Ok(all);
        }
        offset += n;
    }
    Err(step(format!(
        "oned listed more than {} pages of {page} VMs; the pass stops there",
        MAX_PAGES
    )))
}

/// A VM the pages did not list, asked for on its own: `None` when oned does not have it (or
/// it is DONE).
pub fn confirm(client: &OnedClient, vm: u64) -> Result<Option<PoolVm>, Error> {
    let Some(doc) = client.document_if_any("one.vm.info", vm)? else {
        return Ok(None);
    };
    let v = parse_vm(&doc).map_err(|e| step(format!("oned's VM {vm}: {e}")))?;
    Ok((v.state != DONE).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: u64, state: u32, host: Option<&str>, labels: &str) -> String {
        let history = host.map_or("<HISTORY_RECORDS/>".to_string(), |h| {
            format!(
                "<HISTORY_RECORDS><HISTORY><OID>{id}</OID><SEQ>0</SEQ><HOSTNAME>old</HOSTNAME></HISTORY>\
                 <HISTORY><OID>{id}</OID><SEQ>1</SEQ><HOSTNAME>{h}</HOSTNAME></HISTORY></HISTORY_RECORDS>"
            )
        });
        format!(
            "<VM><ID>{id}</ID><NAME>vm{id}</NAME><STATE>{state}</STATE><LCM_STATE>0</LCM_STATE>\
             <TEMPLATE/><USER_TEMPLATE><LABELS>{labels}</LABELS></USER_TEMPLATE>{history}</VM>"
        )
    }

    fn pool(vms: &[String]) -> Vec<PoolVm> {
        parse_page(&format!("<VM_POOL>{}</VM_POOL>", vms.concat())).expect("pool")
    }

    #[test]
    fn a_page_gives_each_vms_state_last_host_and_labels() {
        let p = pool(&[
            vm(4, 8, Some("host-b"), "prod, prod/db"),
            vm(5, 1, None, ""),
        ]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].host.as_deref(), Some("host-b"), "the last record");
        assert_eq!(p[0].labels, ["prod", "prod/db"]);
        assert_eq!((p[0].state, p[1].host.as_deref()), (8, None));
        assert!(p[1].labels.is_empty());
        let e = parse_page("<VM><ID>1</ID></VM>").expect_err("not a pool");
        assert!(e.contains("not a <VM_POOL>"), "{e}");
        let e = parse_page("<VM_POOL><VM><ID>x</ID></VM></VM_POOL>").expect_err("bad id");
        assert!(e.contains("ID"), "{e}");
    }

    #[test]
    fn a_job_takes_its_ids_in_order_then_its_labels_by_id() {
        let p = pool(&[
            vm(1, 8, Some("a"), "prod/db"),
            vm(2, 3, Some("a"), "production"),
            vm(3, 8, Some("b"), "prod"),
            vm(7, 8, Some("b"), ""),
            vm(9, DONE, Some("b"), "prod"),
        ]);
        let ids = |v: Vec<&PoolVm>| v.iter().map(|v| v.id).collect::<Vec<_>>();
        let (chosen, missing) = select(&p, &[7, 3, 8, 9], &["prod".to_string()]);
        // 3 once, in the id order; 1 by its label below prod; 2's "production" is not prod;
        // 8 is not listed and 9 is DONE: both missing.
        assert_eq!(ids(chosen), [7, 3, 1]);
        assert_eq!(missing, [8, 9]);
        let (chosen, missing) = select(&p, &[], &["prod/db".to_string()]);
        assert_eq!((ids(chosen), missing), (vec![1], vec![]));
        let (chosen, _) = select(&p, &[], &[]);
        assert!(chosen.is_empty());
    }
}
