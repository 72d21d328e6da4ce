//! Copying snapshots from one repository to another by blob id, as restic's `copy` does (see
//! `docs/sync.md`): only the blobs the destination lacks are read, opened with the source's
//! key, checked against their id and sealed again with the destination's; the stored form is
//! kept (a compressed blob stays compressed, nothing is compressed again). The destination is
//! a plain restic repository afterwards.
//!
//! Order makes an interrupted copy harmless and resumable: for each snapshot, its data blobs
//! and then its trees are packed and written, then the index of the data packs, then the index
//! of the tree packs, then the snapshot. A tree in a destination index therefore always has its
//! data there, so a later run skips a tree the destination has and everything under it; packs
//! a killed run wrote but never indexed are left for prune, as restic leaves them.
//!
//! A copied snapshot carries `original`: the source snapshot's own `original`, or its id.
//! A snapshot whose `original` (or id) the destination has already is not copied again.
//!
//! A copied snapshot also carries the tag `copied-from:<id>`, the id of the repository it was
//! copied from (its config's `id`, as `restic cat config` shows it), in place of any such tag
//! the source's snapshot had. A tag, because restic keeps, shows and copies tags (an extra
//! JSON field would be dropped by `restic copy` and shown by nothing). A sync job's
//! REMOVE_VANISHED takes only the copies tagged with its own source's id ([`copied_from`]),
//! so copies another job or `restic copy` brought from elsewhere are never taken for vanished
//! from this source.
//!
//! That id is written by the source itself, so a hostile source can claim another's. A copy
//! made by a sync job therefore also carries `copied-by:<id>`, the job's own random id
//! ([`CopierId`], kept in the runner's state, never read from either repository), and the job
//! forgets only copies that carry its id ([`copied_by`]) as well. A `copied-by:` tag the
//! source's snapshot had is dropped whoever copies, so a source cannot hand a copy to a job.

use crate::format::{BlobKind, IndexFile, IndexPack, RepoId, Snapshot, Tree};
use crate::lock::RetryLock;
use crate::pack::{PackBuilder, SealedBlob};
use crate::writer::PACK_TARGET;
use crate::{BlobLocation, Error, ErrorKind, Repo, decompress, rustic_error};
use backstop_storage::bandwidth::Bandwidth;
use crossbeam_channel::{bounded, unbounded};
use rustic_core::FileType;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub retry_lock: RetryLock,
    /// Blobs read from the source at once.
    pub threads: usize,
    pub cancel: Arc<AtomicBool>,
    /// Source snapshots whose copy the destination has but found damaged (its verify healed
    /// the bad blobs out of the index): every tree under them is walked, present or not, and
    /// what the destination lacks is copied again; no second copy of the snapshot is written.
    pub resync: Vec<RepoId>,
    /// A limit on what is read from the source, shared by every reader (and by every copy
    /// that holds the same bucket: a sync job's repositories share one).
    pub rate_in: Option<Arc<Bandwidth>>,
    /// A limit on what is written to the destination.
    pub rate_out: Option<Arc<Bandwidth>>,
    /// Counted as the copy goes, for progress lines.
    pub progress: Arc<CopyProgress>,
    /// The sync job making the copies: each carries its `copied-by:` tag. `None` (a copy by
    /// hand, `backstop repo copy`): no job is recorded, and no job will ever forget them.
    pub copied_by: Option<CopierId>,
}

/// What a running copy has done so far (read by another thread for progress lines).
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Snapshots done (copied or found there already).
    pub snapshots: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            retry_lock: RetryLock(std::time::Duration::ZERO),
            threads: 4,
            cancel: Arc::new(AtomicBool::new(false)),
            resync: Vec::new(),
            rate_in: None,
            rate_out: None,
            progress: Arc::default(),
            copied_by: None,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Snapshots written to the destination.
    pub snapshots: usize,
    /// Snapshots the destination had already.
    pub skipped: usize,
    /// Of those, the ones walked again to bring back what their copy lacked.
    pub resynced: usize,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Bytes read from the source's packs.
    pub bytes_read: u64,
    /// Bytes of packs written to the destination.
    pub bytes_written: u64,
}

/// One snapshot copied: its id at the source and at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub source: RepoId,
    pub copy: RepoId,
}

/// The tag that names the repository a copy came from.
pub const COPIED_FROM: &str = "copied-from:";

/// The tag a copy from the repository with id `source` carries.
pub fn source_tag(source: RepoId) -> String {
    format!("{COPIED_FROM}{}", source.to_hex())
}

/// The repository a snapshot was copied from, when it records one (a copy made by backstop
/// since copies carry the tag); `None` for a snapshot made where it is, a copy by `restic
/// copy`, or one made before (nothing proves where those came from). A snapshot with more
/// than one such tag, or a malformed one, records nothing.
pub fn copied_from(snapshot: &Snapshot) -> Option<RepoId> {
    let mut named = snapshot
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix(COPIED_FROM));
    let first = RepoId::parse(named.next()?)?;
    named.next().is_none().then_some(first)
}

/// The tag that names the sync job that made a copy.
pub const COPIED_BY: &str = "copied-by:";

/// A sync job's identity in the copies it makes: 16 to 64 lowercase hex digits, random at the
/// job's creation (32 digits) and kept by the runner, so it is unique across every runner that
/// writes to a destination and no repository can choose it. It is no secret: it decides only
/// which copies that job may forget.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopierId(String);

impl CopierId {
    /// A new random id (128 bits).
    pub fn random() -> Result<CopierId, Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("no random bytes for a job id: {e}"),
            )
        })?;
        Ok(CopierId(hex::encode(bytes)))
    }

    /// `text` when it is a well-formed id.
    pub fn parse(text: &str) -> Option<CopierId> {
        let hex = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ((16..=64).contains(&text.len()) && hex).then(|| CopierId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag its copies carry.
    pub fn tag(&self) -> String {
        format!("{COPIED_BY}{}", self.0)
    }
}

impl std::fmt::Display for CopierId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sync job a snapshot was copied by, when it records exactly one well-formed
/// `copied-by:` tag; `None` for a snapshot made where it is, a copy by hand or by `restic
/// copy`, or one made before copies carried the tag.
pub fn copied_by(snapshot: &Snapshot) -> Option<CopierId> {
    let mut named = snapshot
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix(COPIED_BY));
    let first = CopierId::parse(named.next()?)?;
    named.next().is_none().then_some(first)
}

/// The copy's tags: the source snapshot's, with its own `copied-from:` and `copied-by:` tags
/// (it may be a copy itself, or claim to be one) replaced by this source's and this job's.
fn copy_tags(
    tags: Option<&serde_json::Value>,
    source: RepoId,
    job: Option<&CopierId>,
) -> serde_json::Value {
    let ours = |t: &str| t.starts_with(COPIED_FROM) || t.starts_with(COPIED_BY);
    let mut out: Vec<serde_json::Value> = tags
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| !t.as_str().is_some_and(ours))
        .cloned()
        .collect();
    out.push(serde_json::Value::String(source_tag(source)));
    out.extend(job.map(|j| serde_json::Value::String(j.tag())));
    serde_json::Value::Array(out)
}

/// Where each blob of a repository is, from its index.
fn locations(repo: &Repo) -> Result<HashMap<RepoId, (BlobKind, BlobLocation)>, Error> {
    let mut map = HashMap::new();
    for id in repo.list(FileType::Index)? {
        let index: IndexFile = repo.load_file(FileType::Index, &id)?;
        for pack in index.packs.iter().chain(&index.packs_to_delete) {
            for b in &pack.blobs {
                map.insert(
                    b.id,
                    (
                        b.kind,
                        BlobLocation {
                            pack: pack.id,
                            offset: b.offset,
                            length: b.length,
                            uncompressed_length: b.uncompressed_length,
                        },
                    ),
                );
            }
        }
    }
    Ok(map)
}

/// The destination's snapshots by the `original` they stand for.
fn originals(dst: &Repo) -> Result<HashSet<RepoId>, Error> {
    let mut have = HashSet::new();
    for id in dst.list(FileType::Snapshot)? {
        let snap: Snapshot = dst.load_file(FileType::Snapshot, &id)?;
        have.insert(snap.original.unwrap_or(id));
    }
    Ok(have)
}

/// A blob read from the source: its stored form (compressed or not), checked against its id.
fn read_stored(
    src: &Repo,
    id: &RepoId,
    at: &BlobLocation,
) -> Result<(Vec<u8>, Option<usize>), Error> {
    let of_source =
        |e: Error| Error::new(ErrorKind::Repository, format!("the source's {}", e.message));
    decompress::check_blob(id, at).map_err(of_source)?;
    let sealed = src
        .backend()
        .read_partial(
            FileType::Pack,
            &at.pack.to_rustic(),
            false,
            at.offset,
            at.length,
        )
        .map_err(|e| rustic_error(&format!("cannot read blob {id} from the source"), &e))?;
    let stored = src.open_sealed(&sealed).map_err(|e| {
        Error::new(
            ErrorKind::Repository,
            format!(
                "blob {id} in pack {} of the source cannot be read: {}",
                at.pack, e.message
            ),
        )
    })?;
    let plain = decompress::blob(id, stored.clone(), at.uncompressed_length).map_err(of_source)?;
    if RepoId::of(&plain) != *id {
        return Err(Error::new(
            ErrorKind::Repository,
            format!("blob {id} is damaged at the source: its content does not match its id"),
        ));
    }
    Ok((stored, at.uncompressed_length.map(|n| n as usize)))
}

/// The trees and data blobs of `root` the destination lacks (trees it has are skipped with
/// everything under them), children before parents.
fn missing(
    src: &Repo,
    root: RepoId,
    where_: &HashMap<RepoId, (BlobKind, BlobLocation)>,
    present: &HashSet<RepoId>,
    (queued, every_tree): (&mut HashSet<RepoId>, bool),
) -> Result<(Vec<RepoId>, Vec<RepoId>), Error> {
    let (mut data, mut trees) = (Vec::new(), Vec::new());
    let mut stack = vec![root];
    while let Some(tree) = stack.pop() {
        let have = present.contains(&tree);
        if (have && !every_tree) || !queued.insert(tree) {
            continue;
        }
        let (_, at) = where_.get(&tree).ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!("tree {tree} is not in the source's index"),
            )
        })?;
        let bytes = src.read_blob(&tree, at)?;
        let parsed: Tree = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("tree {tree} of the source is not valid: {e}"),
            )
        })?;
        if !have {
            trees.push(tree);
        }
        for node in &parsed.nodes {
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            for blob in node.content.iter().flatten() {
                if !present.contains(blob) && queued.insert(*blob) {
                    data.push(*blob);
                }
            }
        }
    }
    Ok((data, trees))
}

/// Reads `ids` from the source with `threads` readers, seals them for the destination and
/// writes them in packs of their own kind; returns the index entries.
fn transfer(
    src: &Repo,
    dst: &Repo,
    ids: &[RepoId],
    where_: &HashMap<RepoId, (BlobKind, BlobLocation)>,
    options: &CopyOptions,
    stats: &Mutex<CopyStats>,
) -> Result<Vec<IndexPack>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let fail = |e: Error| {
        stop.store(true, Ordering::SeqCst);
        if let Ok(mut f) = failed.lock() {
            f.get_or_insert(e);
        }
    };
    let read = AtomicU64::new(0);
    let packs: Mutex<Vec<IndexPack>> = Mutex::new(Vec::new());
    let writers = dst.backend().write_concurrency().max(1);
    std::thread::scope(|s| {
        let (todo_tx, todo_rx) = unbounded::<RepoId>();
        for id in ids {
            let _ = todo_tx.send(*id);
        }
        drop(todo_tx);
        let (blob_tx, blob_rx) = bounded::<SealedBlob>(options.threads.max(1) * 2);
        for _ in 0..options.threads.max(1) {
            let (todo_rx, blob_tx) = (todo_rx.clone(), blob_tx.clone());
            let (read, fail, stop) = (&read, &fail, &stop);
            s.spawn(move || {
                for id in todo_rx {
                    if stop.load(Ordering::SeqCst) || options.cancel.load(Ordering::SeqCst) {
                        return;
                    }
                    let sealed = where_
                        .get(&id)
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::Repository,
                                format!("blob {id} is not in the source's index"),
                            )
                        })
                        .and_then(|(kind, at)| {
                            if let Some(limit) = &options.rate_in {
                                limit.take(at.length as usize);
                            }
                            read.fetch_add(u64::from(at.length), Ordering::Relaxed);
                            options
                                .progress
                                .bytes_read
                                .fetch_add(u64::from(at.length), Ordering::Relaxed);
                            let (stored, plain) = read_stored(src, &id, at)?;
                            Ok(SealedBlob {
                                id,
                                kind: *kind,
                                sealed: dst.seal(&stored)?,
                                uncompressed_length: plain.map(|n| n as u32),
                            })
                        });
                    match sealed {
                        Ok(b) => {
                            if blob_tx.send(b).is_err() {
                                return;
                            }
                        }
                        Err(e) => return fail(e),
                    }
                }
            });
        }
        drop(blob_tx);
        // One pack per kind being filled; full ones sealed and written by as many writers
        // as the destination takes at once.
        let (pack_tx, pack_rx) = bounded::<(PackBuilder, bool)>(writers);
        for _ in 0..writers {
            let pack_rx = pack_rx.clone();
            let (fail, stop, packs) = (&fail, &stop, &packs);
            s.spawn(move || {
                for (pack, trees) in pack_rx {
                    if stop.load(Ordering::SeqCst) {
                        continue;
                    }
                    match write_pack(dst, pack, trees, options, stats) {
                        Ok(index) => {
                            if let Ok(mut p) = packs.lock() {
                                p.push(index);
                            }
                        }
                        Err(e) => fail(e),
                    }
                }
            });
        }
        drop(pack_rx);
        let mut open: HashMap<bool, PackBuilder> = HashMap::new();
        for blob in blob_rx {
            if stop.load(Ordering::SeqCst) {
                continue;
            }
            let trees = blob.kind == BlobKind::Tree;
            if let Ok(mut st) = stats.lock() {
                if trees {
                    st.tree_blobs += 1;
                } else {
                    st.data_blobs += 1;
                }
            }
            let pack = open.entry(trees).or_default();
            pack.add(blob);
            if pack.len() >= PACK_TARGET {
                let full = std::mem::take(pack);
                if pack_tx.send((full, trees)).is_err() {
                    break;
                }
            }
        }
        for (trees, pack) in open {
            if !pack.is_empty() && !stop.load(Ordering::SeqCst) {
                let _ = pack_tx.send((pack, trees));
            }
        }
        drop(pack_tx);
    });
    if let Ok(mut st) = stats.lock() {
        st.bytes_read += read.load(Ordering::Relaxed);
    }
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    if options.cancel.load(Ordering::SeqCst) {
        return Err(Error::new(ErrorKind::Cancelled, "the copy was cancelled"));
    }
    packs
        .into_inner()
        .map_err(|_| Error::new(ErrorKind::Repository, "a copy thread panicked"))
}

/// Seals a full pack and writes it to the destination; its index entry.
fn write_pack(
    dst: &Repo,
    pack: PackBuilder,
    trees: bool,
    options: &CopyOptions,
    stats: &Mutex<CopyStats>,
) -> Result<IndexPack, Error> {
    if let Some(limit) = &options.rate_out {
        limit.take(pack.len());
    }
    let (index, size) = crate::pack::store(dst, pack, trees)?;
    if let Ok(mut st) = stats.lock() {
        st.bytes_written += size;
    }
    options
        .progress
        .bytes_written
        .fetch_add(size, Ordering::Relaxed);
    Ok(index)
}

/// Copies `snapshots` (ids at the source, oldest first) that the destination lacks; each copy
/// is tagged with the source's repository id ([`source_tag`]) and, when a job copies, the
/// job's id ([`CopierId::tag`]).
pub fn copy(
    src: &Repo,
    dst: &Repo,
    snapshots: &[RepoId],
    options: &CopyOptions,
) -> Result<(Vec<Copied>, CopyStats), Error> {
    let _src_lock = src.lock(false, options.retry_lock)?;
    let dst_lock = dst.lock_refreshed(false, options.retry_lock, crate::lock::REFRESH_EVERY)?;
    let where_ = locations(src)?;
    let known = dst.known_blobs()?;
    let mut present: HashSet<RepoId> = known
        .data
        .keys()
        .chain(known.trees.keys())
        .copied()
        .collect();
    let mut have = originals(dst)?;
    let stats = Mutex::new(CopyStats::default());
    let mut copied = Vec::new();
    for id in snapshots {
        let snap: Snapshot = src.load_file(FileType::Snapshot, id)?;
        let original = snap.original.unwrap_or(*id);
        let resync = options.resync.contains(id);
        if have.contains(&original) && !resync {
            if let Ok(mut st) = stats.lock() {
                st.skipped += 1;
            }
            options.progress.snapshots.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut queued = HashSet::new();
        let (data, trees) = missing(src, snap.tree, &where_, &present, (&mut queued, resync))?;
        let data_packs = transfer(src, dst, &data, &where_, options, &stats)?;
        let tree_packs = transfer(src, dst, &trees, &where_, options, &stats)?;
        // Packs, then the data index, then the tree index, then the snapshot: each durable
        // and under a standing lock before the next makes it count.
        dst.backend().sync()?;
        dst_lock.check()?;
        crate::writer::save_index(dst, data_packs)?;
        dst.backend().sync()?;
        crate::writer::save_index(dst, tree_packs)?;
        if have.contains(&original) {
            // A resync: the snapshot is there; what it needed is back.
            dst.backend().sync()?;
            present.extend(data);
            present.extend(trees);
            if let Ok(mut st) = stats.lock() {
                st.skipped += 1;
                st.resynced += 1;
            }
            options.progress.snapshots.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut value: serde_json::Value = src.load_file(FileType::Snapshot, id)?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "original".into(),
                serde_json::Value::String(original.to_hex()),
            );
            // The parent names a snapshot of the source.
            map.remove("parent");
            let tags = copy_tags(map.get("tags"), src.id(), options.copied_by.as_ref());
            map.insert("tags".into(), tags);
        }
        dst.backend().sync()?;
        dst_lock.check()?;
        let new = dst.save_file(FileType::Snapshot, &value)?;
        dst.backend().sync()?;
        present.extend(data);
        present.extend(trees);
        have.insert(original);
        if let Ok(mut st) = stats.lock() {
            st.snapshots += 1;
        }
        options.progress.snapshots.fetch_add(1, Ordering::Relaxed);
        copied.push(Copied {
            source: *id,
            copy: new,
        });
    }
    let stats = stats
        .into_inner()
        .map_err(|_| Error::new(ErrorKind::Repository, "a copy thread panicked"))?;
    Ok((copied, stats))
}
