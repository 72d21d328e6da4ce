//! Copying snapshots from one repository to another by blob id, as restic's `copy` does (see
//! `docs/sync.md`): only the blobs the destination lacks are read, opened with the source's
//! key, checked against their id and sealed again with the destination's; the stored form is
//! kept (a compressed blob stays compressed, nothing is compressed again). The destination is
//! a plain restic repository afterwards.
//!
//! Order makes an interrupted copy harmless and resumable: for each snapshot, its data blobs
//! and then its trees are packed and written, then the index of the data packs, then the index
//! of the tree packs, then the snapshot; packs a killed run wrote but never indexed are left for
//! prune, as restic leaves them. Every tree of a snapshot being copied is walked, even one the
//! destination has: a heal at the destination takes damaged data blobs out of its index and
//! leaves the trees that name them, so a tree there does not prove the data under it is.
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

use crate::format::{BlobKind, IndexPack, RepoId, Snapshot, Tree};
use crate::lock::RetryLock;
use crate::pack::SealedBlob;
use crate::session::{PackFlow, Session};
use crate::{BlobLocation, Error, ErrorKind, Index, Repo, decompress, rustic_error};
use backstop_storage::bandwidth::Bandwidth;
use crossbeam_channel::{bounded, unbounded};
use rustic_core::FileType;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub retry_lock: RetryLock,
    /// Blobs read from the source at once.
    pub threads: usize,
    pub cancel: Arc<AtomicBool>,
    /// Source snapshots whose copy the destination has but found damaged (its verify healed
    /// the bad blobs out of the index): what the destination lacks under them is copied again;
    /// no second copy of the snapshot is written.
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

/// Blob ids of both kinds, kept apart as restic keys them (by type and id): a data blob and a
/// tree may have the same id (the same bytes), and one must never stand for the other.
#[derive(Default)]
struct BlobIds {
    data: HashSet<RepoId>,
    trees: HashSet<RepoId>,
}

impl BlobIds {
    fn extend(&mut self, data: &[RepoId], trees: &[RepoId]) {
        self.data.extend(data.iter().copied());
        self.trees.extend(trees.iter().copied());
    }
}

/// The trees and data blobs of `root` the destination lacks, children before parents. Every
/// tree is walked, even one the destination has (see the module's text).
fn missing(
    src: &Repo,
    root: RepoId,
    where_: &Index,
    present: &BlobIds,
    queued: &mut BlobIds,
) -> Result<(Vec<RepoId>, Vec<RepoId>), Error> {
    let (mut data, mut trees) = (Vec::new(), Vec::new());
    let mut stack = vec![root];
    while let Some(tree) = stack.pop() {
        let have = present.trees.contains(&tree);
        if !queued.trees.insert(tree) {
            continue;
        }
        let at = where_.tree(&tree).ok_or_else(|| {
            Error::new(
                ErrorKind::Repository,
                format!("tree {tree} is not in the source's index"),
            )
        })?;
        let bytes = src.read_blob(&tree, &at)?;
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
                if !present.data.contains(blob) && queued.data.insert(*blob) {
                    data.push(*blob);
                }
            }
        }
    }
    Ok((data, trees))
}

/// Reads `ids` (blobs of one kind) from the source with `threads` readers, seals them for
/// the destination and hands them to its session's pack pipeline; returns the index entries.
fn transfer(
    src: &Repo,
    dst: &Session<'_>,
    (kind, ids): (BlobKind, &[RepoId]),
    where_: &Index,
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
    let packed = std::thread::scope(|s| {
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
                        .blob(kind, &id)
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::Repository,
                                format!("blob {id} is not in the source's index"),
                            )
                        })
                        .and_then(|at| {
                            if let Some(limit) = &options.rate_in {
                                limit.take(at.length as usize);
                            }
                            read.fetch_add(u64::from(at.length), Ordering::Relaxed);
                            options
                                .progress
                                .bytes_read
                                .fetch_add(u64::from(at.length), Ordering::Relaxed);
                            let (stored, plain) = read_stored(src, &id, &at)?;
                            Ok(SealedBlob {
                                id,
                                kind,
                                sealed: dst.repo().seal(&stored)?,
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
        let stopped = || stop.load(Ordering::SeqCst);
        dst.pack(
            blob_rx,
            &PackFlow {
                stopped: &stopped,
                abort: &stop,
                rate: options.rate_out.as_deref(),
                written: Some(&options.progress.bytes_written),
            },
        )
    });
    if let Ok(mut st) = stats.lock() {
        st.bytes_read += read.load(Ordering::Relaxed);
        if let Ok(p) = &packed {
            st.data_blobs += p.data_blobs;
            st.tree_blobs += p.tree_blobs;
            st.bytes_written += p.bytes;
        }
    }
    // A reader's failure is the cause of anything that followed it.
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let packed = packed?;
    if options.cancel.load(Ordering::SeqCst) {
        return Err(Error::new(ErrorKind::Cancelled, "the copy was cancelled"));
    }
    Ok(packed.packs)
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
    let session = dst.session(false, options.retry_lock, crate::lock::REFRESH_EVERY)?;
    let where_ = src.index()?;
    let known = dst.index()?;
    let mut present = BlobIds {
        data: known.ids(BlobKind::Data).copied().collect(),
        trees: known.ids(BlobKind::Tree).copied().collect(),
    };
    drop(known);
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
        let mut queued = BlobIds::default();
        let (data, trees) = missing(src, snap.tree, &where_, &present, &mut queued)?;
        let data_packs = transfer(
            src,
            &session,
            (BlobKind::Data, &data),
            &where_,
            options,
            &stats,
        )?;
        let tree_packs = transfer(
            src,
            &session,
            (BlobKind::Tree, &trees),
            &where_,
            options,
            &stats,
        )?;
        // The data index before the tree index: a tree the destination's index names always
        // has its data there (see the module's text).
        session.index(data_packs)?;
        session.index(tree_packs)?;
        if have.contains(&original) {
            // A resync: the snapshot is there; what it needed is back.
            session.finish()?;
            present.extend(&data, &trees);
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
        let new = session.snapshot(&value)?;
        present.extend(&data, &trees);
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
