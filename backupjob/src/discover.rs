//! `backupjob discover DATASTORE` (docs/discovery.md): the backups already in a datastore's
//! repositories recorded in the state, so that a lost or new state file is rebuilt from the
//! repositories alone. Idempotent: what the state holds already is left as it is.
//!
//! Every snapshot with a `one-<vm>` tag and disk files is a point: its VM from the tag, its
//! job from the repository's name (`job_<bj>`), its increment from its files' names, its size
//! from its summary (what the backup read; the disks' sizes for a snapshot without one), its
//! time. A VM's points form chains in time order: the VM document saved with a point says
//! which image it extends (`INCREMENTAL_BACKUP_ID`, -1 for a new chain), and an increment
//! number that does not grow starts a new chain too. A chain whose document names its image
//! is recorded under that id; another (a single FULL) under a new id, in the order the chains
//! began. VMs the state does not know are registered from their newest saved document; a job
//! the state does not know is created under its id (`discovered-<bj>`, its MODE and KEEP_LAST
//! from that document), with no schedule.

use crate::Error;
use crate::state::State;
use backstop_datastore::config::DriverConfig;
use backstop_datastore::vm_snapshots::{FoundBackup, found_backups};
use std::collections::BTreeMap;

/// The points of one image, oldest first.
#[derive(Debug)]
struct Chain {
    vm: u64,
    job: Option<u64>,
    image: Option<u64>,
    points: Vec<FoundBackup>,
}

/// The image a point's saved document says it extends (`None`: a new chain, or no document).
fn extends(b: &FoundBackup) -> Option<u64> {
    b.vm.as_ref()
        .and_then(|(_, v)| v.backup_config.incremental_backup_id)
}

/// One VM's points (oldest first) cut into chains.
fn chains_of(vm: u64, job: Option<u64>, points: Vec<FoundBackup>) -> Vec<Chain> {
    let mut out: Vec<Chain> = Vec::new();
    for b in points {
        let hint = extends(&b);
        let joins = out.last().is_some_and(|c| {
            let grows = c.points.last().is_some_and(|l| l.increment < b.increment);
            let same = match (b.vm.is_some(), hint, c.image) {
                // A document that says "a new chain".
                (true, None, _) => false,
                (true, Some(h), Some(i)) => h == i,
                _ => true,
            };
            grows && same
        });
        match out.last_mut() {
            Some(c) if joins => {
                c.image = c.image.or(hint);
                c.points.push(b);
            }
            _ => out.push(Chain {
                vm,
                job,
                image: hint,
                points: vec![b],
            }),
        }
    }
    out
}

/// What a discovery did, a line each.
pub fn discover(
    st: &mut State,
    ds_id: u64,
    location: &str,
    cfg: &DriverConfig,
) -> Result<Vec<String>, Error> {
    let ds = crate::model::state_datastore(&st.datastores()?, ds_id, "datastore", location)?;
    let mut chains = Vec::new();
    for repo in backstop_datastore::target::repositories(&ds, cfg)? {
        let job = repo
            .strip_prefix("job_")
            .and_then(|j| j.parse::<u64>().ok());
        let mut by_vm: BTreeMap<u64, Vec<FoundBackup>> = BTreeMap::new();
        for b in found_backups(&ds, &repo, cfg)? {
            by_vm.entry(b.vm_id).or_default().push(b);
        }
        for (vm, points) in by_vm {
            chains.extend(chains_of(vm, job, points));
        }
    }
    chains.sort_by_key(|c| c.points.first().map_or(0, |p| p.time));
    let mut lines = Vec::new();
    adopt_vms_and_jobs(st, ds_id, &chains, &mut lines)?;
    // Into a state without images (a lost one rebuilt), a chain whose backups do not name
    // their image takes the lowest id above the chain before it that no chain names, which is
    // the id it had when images were made in the order their chains began and none was
    // removed between; into a state with images, a new id as ever (ids are never reused).
    let fresh = st.all_images()?.is_empty();
    let mut ids = Ids {
        fresh,
        claimed: chains.iter().filter_map(|c| c.image).collect(),
        previous: 0,
    };
    for chain in &chains {
        record_chain(st, ds_id, chain, &mut ids, &mut lines)?;
    }
    Ok(lines)
}

/// How images without a named id get theirs.
struct Ids {
    fresh: bool,
    claimed: std::collections::BTreeSet<u64>,
    previous: u64,
}

impl Ids {
    fn next(&mut self) -> u64 {
        let mut n = self.previous + 1;
        while self.claimed.contains(&n) {
            n += 1;
        }
        self.claimed.insert(n);
        n
    }
}

/// Registers the VMs and creates the jobs the state does not know.
fn adopt_vms_and_jobs(
    st: &mut State,
    ds_id: u64,
    chains: &[Chain],
    lines: &mut Vec<String>,
) -> Result<(), Error> {
    let known: Vec<u64> = st.vms()?.iter().map(|v| v.id).collect();
    // Each VM's newest point (with its document) and the job it is in: a VM goes to the job
    // that backed it up last.
    let mut newest: BTreeMap<u64, (&FoundBackup, Option<u64>)> = BTreeMap::new();
    let mut jobs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // Each job's newest point with a document: its MODE and KEEP_LAST.
    let mut last_of_job: BTreeMap<u64, &FoundBackup> = BTreeMap::new();
    for c in chains {
        for p in &c.points {
            if p.vm.is_some() && newest.get(&c.vm).is_none_or(|n| n.0.time <= p.time) {
                newest.insert(c.vm, (p, c.job));
            }
        }
        if let Some(j) = c.job {
            jobs.entry(j).or_default();
            for p in c.points.iter().filter(|p| p.vm.is_some()) {
                if last_of_job
                    .get(&j)
                    .is_none_or(|n: &&FoundBackup| n.time <= p.time)
                {
                    last_of_job.insert(j, p);
                }
            }
        }
    }
    for (vm, (_, job)) in &newest {
        if let Some(j) = job {
            jobs.entry(*j).or_default().push(*vm);
        }
    }
    let newest: BTreeMap<u64, &FoundBackup> =
        newest.into_iter().map(|(vm, (p, _))| (vm, p)).collect();
    for (vm, p) in &newest {
        if known.contains(vm) {
            continue;
        }
        if let Some((doc, v)) = &p.vm
            && v.id == *vm
        {
            let host = v.placement.as_ref().map(|h| h.hostname.clone());
            st.register_vm(*vm, &v.name, host.as_deref(), doc)?;
            lines.push(format!("VM {vm} ({}) registered", v.name));
        }
    }
    for (j, vms) in jobs {
        if st.job_exists(j)? {
            continue;
        }
        let config = last_of_job
            .get(&j)
            .and_then(|p| p.vm.as_ref().map(|(_, v)| v.backup_config.clone()));
        let mode = match config.as_ref().map(|c| c.mode) {
            Some(backstop_protocol::message::BackupMode::Increment) => "INCREMENT",
            _ => "FULL",
        };
        let keep = config
            .and_then(|c| c.keep_last)
            .map_or(String::new(), |k| format!("KEEP_LAST=\"{k}\"\n"));
        let list: Vec<String> = vms.iter().map(u64::to_string).collect();
        let template = format!(
            "NAME=\"discovered-{j}\"\nBACKUP_VMS=\"{}\"\nDATASTORE_ID=\"{ds_id}\"\nMODE=\"{mode}\"\n{keep}",
            list.join(",")
        );
        let taken = st.adopt_job(j, &format!("discovered-{j}"), &template, &vms)?;
        lines.push(format!(
            "backup job {j} (discovered-{j}) created: VMs {}, MODE {mode}, no schedule",
            taken
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(())
}

/// Records one chain: under the image its backups name, else the image that holds one of its
/// points, else a new one; the points the state lacks are added.
fn record_chain(
    st: &mut State,
    ds_id: u64,
    chain: &Chain,
    ids: &mut Ids,
    lines: &mut Vec<String>,
) -> Result<(), Error> {
    let short = |p: &FoundBackup| p.snapshot.chars().take(8).collect::<String>();
    let mut held = None;
    for p in &chain.points {
        if let Some(i) = st.image_with_source(ds_id, &short(p))? {
            held = Some(i);
            break;
        }
    }
    let (image, new) = match (held, chain.image) {
        (Some(i), _) => (i, false),
        (None, Some(i)) if st.image(i).is_err() => {
            st.add_image_as(i, chain.vm, chain.job, ds_id, chain.points[0].time)?;
            (i, true)
        }
        (None, Some(i)) => {
            lines.push(format!(
                "VM {}: the backups {} name image {i}, which the state holds for other backups; left out",
                chain.vm,
                chain.points.iter().map(short).collect::<Vec<_>>().join(",")
            ));
            return Ok(());
        }
        (None, None) if ids.fresh => {
            let i = ids.next();
            st.add_image_as(i, chain.vm, chain.job, ds_id, chain.points[0].time)?;
            (i, true)
        }
        (None, None) => (
            st.add_image(chain.vm, chain.job, ds_id, chain.points[0].time)?,
            true,
        ),
    };
    ids.previous = ids.previous.max(image);
    let have: Vec<u64> = st.image(image)?.increments.iter().map(|n| n.id).collect();
    let mut added = 0;
    for (k, p) in chain.points.iter().enumerate() {
        if have.contains(&p.increment) {
            continue;
        }
        let kind = if k == 0 && have.is_empty() {
            "FULL"
        } else {
            "INCREMENT"
        };
        st.add_increment(
            image,
            p.increment,
            &short(p),
            p.size_bytes / (1024 * 1024),
            kind,
            p.time,
        )?;
        added += 1;
    }
    if added > 0 {
        lines.push(format!(
            "VM {}: image {image}{}: {added} points recorded",
            chain.vm,
            if new { " (new)" } else { "" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point with increment `n` at `time` whose document names image `hint` (-1: a new
    /// chain; `None`: no document).
    fn point(n: u64, time: i64, hint: Option<i64>) -> FoundBackup {
        let vm = hint.map(|h| {
            let doc = format!(
                "<VM><ID>22</ID><NAME>a</NAME><BACKUPS><BACKUP_CONFIG><MODE>INCREMENT</MODE>\
                 <INCREMENTAL_BACKUP_ID>{h}</INCREMENTAL_BACKUP_ID></BACKUP_CONFIG></BACKUPS></VM>"
            );
            let root = backstop_protocol::xml::Element::parse(&doc).expect("xml");
            let vm = backstop_protocol::message::Vm::from_xml(&root).expect("vm");
            (doc, vm)
        });
        FoundBackup {
            snapshot: format!("{n:08x}{time:08x}"),
            vm_id: 22,
            increment: n,
            time,
            size_bytes: 1 << 20,
            vm,
        }
    }

    fn shape(chains: &[Chain]) -> Vec<(Option<u64>, Vec<u64>)> {
        chains
            .iter()
            .map(|c| (c.image, c.points.iter().map(|p| p.increment).collect()))
            .collect()
    }

    #[test]
    fn points_are_cut_into_chains() {
        for (points, want) in [
            // A chain of three: the first says "new", the others name image 4.
            (
                vec![
                    point(0, 1, Some(-1)),
                    point(1, 2, Some(4)),
                    point(2, 3, Some(4)),
                ],
                vec![(Some(4), vec![0, 1, 2])],
            ),
            // FULL images: each a new chain.
            (
                vec![point(0, 1, Some(-1)), point(0, 2, Some(-1))],
                vec![(None, vec![0]), (None, vec![0])],
            ),
            // A flattened chain starts at its base; then a new chain that names image 7.
            (
                vec![
                    point(3, 1, Some(2)),
                    point(4, 2, Some(2)),
                    point(0, 3, Some(-1)),
                    point(1, 4, Some(7)),
                ],
                vec![(Some(2), vec![3, 4]), (Some(7), vec![0, 1])],
            ),
            // Without documents, a number that does not grow starts a chain.
            (
                vec![point(0, 1, None), point(1, 2, None), point(1, 3, None)],
                vec![(None, vec![0, 1]), (None, vec![1])],
            ),
            // A document naming another image than the chain's starts a new one.
            (
                vec![point(1, 1, Some(2)), point(2, 2, Some(5))],
                vec![(Some(2), vec![1]), (Some(5), vec![2])],
            ),
        ] {
            assert_eq!(shape(&chains_of(22, Some(1), points)), want);
        }
    }
}
