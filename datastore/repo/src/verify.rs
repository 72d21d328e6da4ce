//! Verifying snapshots by reading their blobs back, and healing what is damaged (see
//! `docs/sync.md`, "Verify and heal").
//!
//! [`verify`] reads every blob the chosen snapshots reference (their trees and their data;
//! with a subset, only the blobs of a share of the packs) and checks each against its id; the
//! result is per snapshot: clean, or the damaged blobs it needs.
//!
//! [`heal`] takes damaged blobs out of the repository as restic's `repair packs` does: every
//! pack holding one is rewritten with its good blobs (their sealed bytes as they are, checked
//! first), the index files naming it are replaced by ones naming the new pack instead, and the
//! old pack is deleted, all under an exclusive lock. The damaged blobs are then in no index,
//! so the next backup of the disk reads those chunks again instead of reusing them; the chunk
//! has the same id as before, so every older snapshot that needs it is whole again.

use crate::format::{IndexBlob, IndexFile, IndexPack, RepoId, Snapshot, Tree};
use crate::lock::RetryLock;
use crate::pack::{PackBuilder, SealedBlob};
use crate::session::Session;
use crate::{BlobLocation, Error, ErrorKind, Index, Packs, Repo, decompress, rustic_error};
use rustic_core::FileType;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotVerdict {
    pub snapshot: RepoId,
    /// The damaged (or missing) blobs it needs; empty when it verified clean.
    pub bad: Vec<RepoId>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub verdicts: Vec<SnapshotVerdict>,
    pub blobs_read: u64,
    pub bytes_read: u64,
}

/// A share of the packs: `n` of `m` (1-based), by the pack id's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub n: u8,
    pub m: u8,
}

impl Share {
    pub fn parse(text: &str) -> Result<Share, Error> {
        let bad = |why: &str| Error::new(ErrorKind::Input, format!("{text:?}{why}"));
        let (n, m) = text.split_once('/').ok_or_else(|| bad(" is not n/m"))?;
        let (n, m): (u8, u8) = (
            n.trim().parse().map_err(|_| bad(" is not n/m"))?,
            m.trim().parse().map_err(|_| bad(" is not n/m"))?,
        );
        if m == 0 || n == 0 || n > m {
            return Err(bad(": n/m needs 1 <= n <= m"));
        }
        Ok(Share { n, m })
    }

    fn holds(self, pack: &RepoId) -> bool {
        pack.0[0] % self.m == self.n - 1
    }
}

fn location(pack: RepoId, b: &IndexBlob) -> BlobLocation {
    BlobLocation {
        pack,
        offset: b.offset,
        length: b.length,
        uncompressed_length: b.uncompressed_length,
    }
}

/// The blobs a snapshot needs: (trees, data). A tree that cannot be read is itself the
/// damage, and what is under it is not known.
fn needed(
    repo: &Repo,
    snap: &Snapshot,
    index: &Index,
    bad: &mut HashSet<RepoId>,
) -> (BTreeSet<RepoId>, BTreeSet<RepoId>) {
    let (mut trees, mut data) = (BTreeSet::new(), BTreeSet::new());
    let mut stack = vec![snap.tree];
    while let Some(t) = stack.pop() {
        if !trees.insert(t) {
            continue;
        }
        let parsed = index
            .tree(&t)
            .ok_or(())
            .and_then(|at| repo.read_blob(&t, &at).map_err(|_| ()))
            .and_then(|b| serde_json::from_slice::<Tree>(&b).map_err(|_| ()));
        let Ok(tree) = parsed else {
            bad.insert(t);
            continue;
        };
        for node in tree.nodes {
            stack.extend(node.subtree);
            data.extend(node.content.into_iter().flatten());
        }
    }
    (trees, data)
}

/// Verifies `snapshots`: every blob they need read and checked (within `share` of the packs
/// when given; a blob missing from the index is always damage). Trees are read (and so
/// checked) on the walk; the data blobs are then read pack by pack, one read per pack for the
/// span its wanted blobs cover, on as many threads as there are cores.
pub fn verify(
    repo: &Repo,
    snapshots: &[RepoId],
    share: Option<Share>,
    retry: RetryLock,
) -> Result<VerifyReport, Error> {
    verify_counted(repo, snapshots, share, retry, &VerifyProgress::default())
}

/// What a running verify has read of what it is to read (read by another thread for
/// progress lines); the total is known once the trees are walked.
#[derive(Debug, Default)]
pub struct VerifyProgress {
    pub bytes_total: AtomicU64,
    pub bytes_read: AtomicU64,
}

/// [`verify`], counting as it reads.
pub fn verify_counted(
    repo: &Repo,
    snapshots: &[RepoId],
    share: Option<Share>,
    retry: RetryLock,
    progress: &VerifyProgress,
) -> Result<VerifyReport, Error> {
    let _lock = repo.lock(false, retry)?;
    // What restic reads: packs marked for deletion are not counted on.
    let index = Index::read(repo, Packs::Live)?;
    let mut walks = Vec::new();
    let mut wanted: BTreeSet<RepoId> = BTreeSet::new();
    for id in snapshots {
        let snap: Snapshot = repo.load_file(FileType::Snapshot, id)?;
        let mut bad_trees = HashSet::new();
        let (_, data) = needed(repo, &snap, &index, &mut bad_trees);
        wanted.extend(data.iter().copied());
        walks.push((*id, data, bad_trees));
    }
    let mut bad: HashSet<RepoId> = HashSet::new();
    let mut by_pack: HashMap<RepoId, Vec<(RepoId, BlobLocation)>> = HashMap::new();
    for blob in &wanted {
        match index.data(blob) {
            None => {
                bad.insert(*blob);
            }
            Some(at) if share.is_some_and(|s| !s.holds(&at.pack)) => {}
            // An entry whose lengths no blob can have, or that runs past the 4 GiB a pack
            // offset can address, is damage: nothing is read or allocated for it.
            Some(at) if !sane(blob, &at) => {
                bad.insert(*blob);
            }
            Some(at) => by_pack.entry(at.pack).or_default().push((*blob, at)),
        }
    }
    let total = by_pack
        .values()
        .map(|blobs| {
            let start = blobs.iter().map(|(_, at)| at.offset).min().unwrap_or(0);
            let end = blobs.iter().map(|(_, at)| at.offset + at.length).max();
            u64::from(end.unwrap_or(start) - start)
        })
        .sum();
    progress.bytes_total.store(total, Ordering::Relaxed);
    let mut report = VerifyReport::default();
    let found = check_packs(repo, by_pack, &mut report, progress);
    bad.extend(found);
    for (id, data, bad_trees) in walks {
        let mut damaged: Vec<RepoId> = bad_trees
            .into_iter()
            .chain(data.into_iter().filter(|b| bad.contains(b)))
            .collect();
        damaged.sort();
        damaged.dedup();
        report.verdicts.push(SnapshotVerdict {
            snapshot: id,
            bad: damaged,
        });
    }
    Ok(report)
}

/// Reads each pack's span of wanted blobs once and checks every blob in it; the damaged ones
/// (all of a pack that cannot be read: [`heal`] reads again before it deletes anything).
fn check_packs(
    repo: &Repo,
    by_pack: HashMap<RepoId, Vec<(RepoId, BlobLocation)>>,
    report: &mut VerifyReport,
    progress: &VerifyProgress,
) -> Vec<RepoId> {
    use std::sync::Mutex;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = crossbeam_channel::unbounded();
    for job in by_pack {
        let _ = tx.send(job);
    }
    drop(tx);
    let out: Mutex<(Vec<RepoId>, u64, u64)> = Mutex::new((Vec::new(), 0, 0));
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (rx, out) = (rx.clone(), &out);
            s.spawn(move || {
                for (pack, mut blobs) in rx {
                    blobs.sort_by_key(|(_, at)| at.offset);
                    let start = blobs.first().map_or(0, |(_, at)| at.offset);
                    let end = blobs
                        .iter()
                        .map(|(_, at)| at.offset + at.length)
                        .max()
                        .unwrap_or(start);
                    let read = repo.backend().read_partial(
                        FileType::Pack,
                        &pack.to_rustic(),
                        false,
                        start,
                        end - start,
                    );
                    let mut damaged = Vec::new();
                    for (id, at) in &blobs {
                        let from = (at.offset - start) as usize;
                        let ok = read.as_ref().is_ok_and(|bytes| {
                            bytes
                                .get(from..from + at.length as usize)
                                .is_some_and(|sealed| {
                                    intact(repo, id, at.uncompressed_length, sealed)
                                })
                        });
                        if !ok {
                            damaged.push(*id);
                        }
                    }
                    progress
                        .bytes_read
                        .fetch_add(u64::from(end - start), Ordering::Relaxed);
                    if let Ok(mut o) = out.lock() {
                        o.0.extend(damaged);
                        o.1 += blobs.len() as u64;
                        o.2 += u64::from(end - start);
                    }
                }
            });
        }
    });
    let (damaged, blobs, bytes) = out.into_inner().unwrap_or_default();
    report.blobs_read += blobs;
    report.bytes_read += bytes;
    damaged
}

/// Whether an index entry's lengths are ones a blob can have (see [`decompress::check_blob`]).
fn sane(id: &RepoId, at: &BlobLocation) -> bool {
    decompress::check_blob(id, at).is_ok() && at.offset.checked_add(at.length).is_some()
}

/// Whether sealed blob bytes open with the key and hash to the blob's id.
fn intact(repo: &Repo, id: &RepoId, uncompressed: Option<u32>, sealed: &[u8]) -> bool {
    let Ok(stored) = repo.open_sealed(sealed) else {
        return false;
    };
    decompress::blob(id, stored, uncompressed).is_ok_and(|plain| RepoId::of(&plain) == *id)
}

/// What [`heal`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healed {
    /// Packs rewritten without their damaged blobs (and deleted).
    pub packs: usize,
    /// Damaged blobs that left the index.
    pub removed: usize,
    /// Good blobs carried into the new packs.
    pub kept: usize,
}

/// What a heal is to do, decided from the index files alone (nothing read from a pack yet):
/// which index files are replaced and which packs rewritten. A value, so that it can be shown
/// and tested before anything is carried out ([`heal`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealPlan {
    /// The index files naming a pack that holds a damaged blob, as they are now; each is
    /// replaced by one naming the rewritten pack instead.
    pub files: BTreeMap<RepoId, IndexFile>,
    /// The packs to rewrite, each with the blobs the index files say it holds (once each);
    /// every one is read again and judged when the plan is carried out.
    pub packs: BTreeMap<RepoId, Vec<IndexBlob>>,
}

impl HealPlan {
    /// The plan for taking `bad` blobs out, from the repository's index files (the packs in
    /// use; those rustic's prune marked for deletion are carried over as they are). A pack
    /// holding a damaged blob is rewritten, and EVERY index file that names it is replaced,
    /// whether its entry for that pack lists the damaged blob or not: the old pack is deleted,
    /// so no index file may be left naming it.
    pub fn of(
        files: impl IntoIterator<Item = (RepoId, IndexFile)>,
        bad: &HashSet<RepoId>,
    ) -> HealPlan {
        let files: Vec<(RepoId, IndexFile)> = files.into_iter().collect();
        let mut doomed = HashSet::new();
        for (_, file) in &files {
            HealPlan::find_doomed(file, bad, &mut doomed);
        }
        let mut plan = HealPlan::default();
        for (id, file) in files {
            plan.add(id, file, &doomed);
        }
        plan
    }

    /// The first pass: adds to `doomed` the packs of `file` that hold a blob of `bad`.
    pub fn find_doomed(file: &IndexFile, bad: &HashSet<RepoId>, doomed: &mut HashSet<RepoId>) {
        doomed.extend(
            file.packs
                .iter()
                .filter(|p| p.blobs.iter().any(|b| bad.contains(&b.id)))
                .map(|p| p.id),
        );
    }

    /// The second pass: takes one index file into the plan when it names a `doomed` pack.
    pub fn add(&mut self, id: RepoId, file: IndexFile, doomed: &HashSet<RepoId>) {
        let mut named = false;
        for pack in file.packs.iter().filter(|p| doomed.contains(&p.id)) {
            named = true;
            let blobs = self.packs.entry(pack.id).or_default();
            for b in &pack.blobs {
                if !blobs.iter().any(|k| k.id == b.id && k.offset == b.offset) {
                    blobs.push(b.clone());
                }
            }
        }
        if named {
            self.files.insert(id, file);
        }
    }

    /// Whether there is nothing to do (no damaged blob is in any index file).
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }
}

/// Takes `bad` blobs out of the repository: the packs holding them are rewritten with their
/// good blobs, the index updated, the old packs deleted. Under an exclusive lock: the plan
/// ([`HealPlan`]) is made from the index files under it, then carried out. Every blob of
/// those packs is read again and judged from what was read: one of `bad` that reads intact now
/// (its earlier failure was the network's) stays.
pub fn heal(repo: &Repo, bad: &[RepoId], retry: RetryLock) -> Result<Healed, Error> {
    let session = repo.session(true, retry, crate::lock::REFRESH_EVERY)?;
    let bad: HashSet<RepoId> = bad.iter().copied().collect();
    // Two passes over the index files (unchanged between them: the lock is exclusive), so
    // that only the files the plan needs are held in memory.
    let ids = repo.list(FileType::Index)?;
    let mut doomed = HashSet::new();
    for id in &ids {
        HealPlan::find_doomed(&repo.load_file(FileType::Index, id)?, &bad, &mut doomed);
    }
    let mut plan = HealPlan::default();
    if !doomed.is_empty() {
        for id in ids {
            plan.add(id, repo.load_file(FileType::Index, &id)?, &doomed);
        }
    }
    carry_out(&session, plan)
}

/// Carries out a heal plan: each pack rewritten with what in it still reads intact, the new
/// index files written, then the old ones and the old packs removed ([`Session::replace`]).
fn carry_out(session: &Session<'_>, plan: HealPlan) -> Result<Healed, Error> {
    let repo = session.repo();
    let mut healed = Healed::default();
    // Each damaged pack rewritten with what in it is still good.
    let mut replaced: HashMap<RepoId, Option<IndexPack>> = HashMap::new();
    for (pack_id, blobs) in &plan.packs {
        let mut builder = PackBuilder::default();
        for b in blobs {
            if !sane(&b.id, &location(*pack_id, b)) {
                healed.removed += 1;
                continue;
            }
            // Read once more and judged from these bytes alone: a read that fails stops the
            // heal before anything is deleted, so a passing network error never costs a blob.
            let sealed = repo
                .backend()
                .read_partial(
                    FileType::Pack,
                    &pack_id.to_rustic(),
                    false,
                    b.offset,
                    b.length,
                )
                .map_err(|e| rustic_error(&format!("cannot read pack {pack_id}"), &e))?;
            if !intact(repo, &b.id, b.uncompressed_length, &sealed) {
                healed.removed += 1;
                continue;
            }
            builder.add(SealedBlob {
                id: b.id,
                kind: b.kind,
                sealed: sealed.to_vec(),
                uncompressed_length: b.uncompressed_length,
            });
            healed.kept += 1;
        }
        let new = if builder.is_empty() {
            None
        } else {
            let trees = builder.has_trees();
            Some(session.store_pack(builder, trees)?.0)
        };
        replaced.insert(*pack_id, new);
        healed.packs += 1;
    }
    // New index files first, then the old ones go, then the old packs.
    let new: Vec<IndexFile> = plan
        .files
        .iter()
        .map(|(old_id, file)| IndexFile {
            supersedes: vec![*old_id],
            packs: file
                .packs
                .iter()
                .filter_map(|p| match replaced.get(&p.id) {
                    Some(new) => new.clone(),
                    None => Some(p.clone()),
                })
                .collect(),
            packs_to_delete: file.packs_to_delete.clone(),
        })
        .collect();
    let old: Vec<RepoId> = plan.files.keys().copied().collect();
    let doomed: Vec<RepoId> = plan.packs.keys().copied().collect();
    session.replace(&new, &old, &doomed)?;
    Ok(healed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobKind;

    fn blob(id: u8, offset: u32) -> IndexBlob {
        IndexBlob {
            id: RepoId([id; 32]),
            kind: BlobKind::Data,
            offset,
            length: 64,
            uncompressed_length: None,
        }
    }

    fn pack(id: u8, blobs: Vec<IndexBlob>) -> IndexPack {
        IndexPack {
            id: RepoId([id; 32]),
            blobs,
        }
    }

    #[test]
    fn a_heal_plan_names_only_the_packs_and_index_files_that_hold_a_damaged_blob() {
        let damaged = pack(0xa0, vec![blob(1, 0), blob(2, 64)]);
        let clean = pack(0xb0, vec![blob(3, 0)]);
        let first = IndexFile {
            packs: vec![damaged.clone(), clean.clone()],
            ..IndexFile::default()
        };
        // The same pack named twice (a second index file from an interrupted writer), this
        // time listing only its good blob: it names a pack the heal deletes, so it is replaced
        // too, whichever order the files come in.
        let second = IndexFile {
            packs: vec![pack(0xa0, vec![blob(1, 0)])],
            ..IndexFile::default()
        };
        let untouched = IndexFile {
            packs: vec![pack(0xc0, vec![blob(4, 0)])],
            ..IndexFile::default()
        };
        let bad: HashSet<RepoId> = [RepoId([2; 32])].into();
        let plan = HealPlan::of(
            [
                (RepoId([0x12; 32]), second.clone()),
                (RepoId([0x11; 32]), first.clone()),
                (RepoId([0x13; 32]), untouched),
            ],
            &bad,
        );
        assert_eq!(
            plan.files.keys().collect::<Vec<_>>(),
            [&RepoId([0x11; 32]), &RepoId([0x12; 32])]
        );
        assert_eq!(plan.files[&RepoId([0x11; 32])], first);
        // The damaged pack once, each of its blobs once (the good one is carried over when it
        // reads intact); the clean pack is not rewritten.
        assert_eq!(plan.packs.len(), 1);
        assert_eq!(plan.packs[&RepoId([0xa0; 32])], damaged.blobs);
        assert!(!plan.is_empty());
        assert!(HealPlan::of([(RepoId([0x11; 32]), first)], &HashSet::new()).is_empty());
    }
}
