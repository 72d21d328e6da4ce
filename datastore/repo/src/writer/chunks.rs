//! One disk image of a snapshot: which chunks are reused from the parent, which are zeros,
//! which are read (a reader thread, hashing, compression and sealing in worker threads), and
//! how a stock increment's partial chunks are completed from the parent's blobs.

use super::prefetch::{Prepared, PreparedChunk, Ready};
use super::*;

enum Outcome {
    Zero,
    Data { id: RepoId, stored: bool },
}

/// Zero-blob ids by length (the full chunk and at most one short last chunk).
#[derive(Default)]
pub(super) struct ZeroIds(HashMap<usize, RepoId>);

impl ZeroIds {
    /// The id of `len` zero bytes, storing that blob once if the repository lacks it.
    fn get(
        &mut self,
        len: usize,
        shared: &Shared<'_>,
        blobs: &Sender<SealedBlob>,
        stats: &mut Stats,
    ) -> Result<RepoId, Error> {
        if let Some(id) = self.0.get(&len) {
            return Ok(*id);
        }
        let zeros = vec![0u8; len];
        let id = RepoId::of(&zeros);
        if shared.claim(id) {
            let blob = shared.seal(id, BlobKind::Data, &zeros, &mut shared.compressor()?)?;
            stats.new_blobs += 1;
            stats.added_plain += len as u64;
            send(blobs, blob)?;
        }
        self.0.insert(len, id);
        Ok(id)
    }
}

fn input_error(what: String, e: std::io::Error) -> Error {
    Error {
        kind: ErrorKind::Input,
        message: what,
        source: Some(e),
    }
}

/// One image to back up.
pub(super) struct ImageJob<'a> {
    pub(super) path: &'a str,
    /// The file's position in the backup (the key of its prepared chunks).
    pub(super) file: usize,
    pub(super) prepared: &'a Prepared,
    pub(super) source: &'a dyn ImageSource,
    pub(super) changed: Option<&'a [Extent]>,
    pub(super) parent: Option<&'a Node>,
}

/// Backs up one image; returns its content list.
pub(super) fn backup_image(
    shared: &Shared<'_>,
    blobs: &Sender<SealedBlob>,
    threads: usize,
    job: ImageJob<'_>,
    zero_ids: &mut ZeroIds,
) -> Result<(Vec<RepoId>, Stats), Error> {
    let ImageJob {
        path,
        file,
        prepared,
        source,
        changed,
        parent,
    } = job;
    let size = source.size();
    image::check_size(path, size)?;
    let n = image::chunk_count(size);
    let mut stats = Stats {
        size,
        chunks: n,
        ..Stats::default()
    };
    let parent_content = parent_content(path, size, n, changed, parent, &mut stats);
    let reusable = |i: usize| {
        parent_content.is_some_and(|pc| {
            shared.index.data_len(&pc[i]) == Some(image::chunk_range(i, size).length as u32)
        })
    };
    let data = source
        .data_extents()
        .map_err(|e| input_error(format!("cannot map the allocated ranges of {path}"), e))?;
    let plan = image::plan(size, data.as_deref(), parent_content.and(changed), reusable);

    let merges = merges(shared, path, size, &plan, source, changed, parent_content)?;
    let merges = &merges;

    let mut content = vec![RepoId::default(); n];
    let mut reads = Vec::new();
    let progress = &shared.progress;
    for (i, p) in plan.iter().enumerate() {
        if *p != ChunkPlan::Read {
            progress
                .done
                .fetch_add(image::chunk_range(i, size).length, Ordering::Relaxed);
        }
        match p {
            ChunkPlan::Reuse => {
                content[i] = parent_content.map(|pc| pc[i]).unwrap_or_default();
                stats.reused_chunks += 1;
            }
            ChunkPlan::Zero => {
                content[i] = zero_ids.get(
                    image::chunk_range(i, size).length as usize,
                    shared,
                    blobs,
                    &mut stats,
                )?;
                stats.zero_chunks += 1;
            }
            ChunkPlan::Read => reads.push(i),
        }
    }

    read_and_store(
        shared,
        blobs,
        threads,
        ImageJob {
            path,
            file,
            prepared,
            source,
            changed,
            parent,
        },
        (&reads, merges),
        zero_ids,
        (&mut content, &mut stats),
    )?;
    if shared.stopped() {
        // Stopped by a failure elsewhere (the pack writer); the caller reports that one.
        return Err(Error::new(
            ErrorKind::Repository,
            format!("{path}: the backup was stopped"),
        ));
    }
    if stats.reused_chunks + stats.zero_chunks + stats.hashed_chunks != n {
        return Err(Error::new(
            ErrorKind::Repository,
            format!(
                "{path}: {} of {n} chunks were backed up",
                stats.reused_chunks + stats.zero_chunks + stats.hashed_chunks
            ),
        ));
    }
    Ok((content, stats))
}

/// The parent's chunk list when an incremental can use it: a parent of the same size cut the
/// same way; otherwise None, with the reason in `stats.full_reason`.
fn parent_content<'a>(
    path: &str,
    size: u64,
    n: usize,
    changed: Option<&[Extent]>,
    parent: Option<&'a Node>,
    stats: &mut Stats,
) -> Option<&'a [RepoId]> {
    // An incremental needs a parent of the same size cut the same way.
    match (changed, parent) {
        (None, _) => None,
        (Some(_), None) => {
            stats.full_reason = Some(format!("no parent file for {path}"));
            None
        }
        (Some(_), Some(p)) if p.size != size => {
            stats.full_reason = Some(format!(
                "the parent of {path} has size {} and the disk now {size}",
                p.size
            ));
            None
        }
        (Some(_), Some(p)) => match p.content.as_deref() {
            Some(c) if c.len() == n => Some(c),
            _ => {
                stats.full_reason = Some(format!(
                    "the parent of {path} was not cut in {CHUNK_SIZE}-byte chunks"
                ));
                None
            }
        },
    }
}

/// Where the parent's blobs are for the chunks a source that holds only changed extents (a
/// stock increment) does not wholly cover: they are completed from the parent's data.
fn merges(
    shared: &Shared<'_>,
    path: &str,
    size: u64,
    plan: &[ChunkPlan],
    source: &dyn ImageSource,
    changed: Option<&[Extent]>,
    parent_content: Option<&[RepoId]>,
) -> Result<HashMap<usize, (RepoId, BlobLocation)>, Error> {
    // A source that holds only the changed extents (a stock increment) is completed from the
    // parent's blobs wherever a chunk is not wholly changed.
    let mut merges: HashMap<usize, (RepoId, BlobLocation)> = HashMap::new();
    if !source.complete() {
        let (Some(changed), Some(pc)) = (changed, parent_content) else {
            return Err(Error::new(
                ErrorKind::Input,
                format!(
                    "{path} holds only changed clusters (a stock increment): it needs its parent snapshot and a parent file of the same size"
                ),
            ));
        };
        let partial: Vec<usize> = plan
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                let range = image::chunk_range(*i, size);
                **p == ChunkPlan::Read && image::covered(changed, range) != [range]
            })
            .map(|(i, _)| i)
            .collect();
        for i in partial {
            let at = shared.index.data(&pc[i]).ok_or_else(|| {
                Error::new(
                    ErrorKind::ParentIncomplete,
                    format!(
                        "{path}: blob {} of its parent snapshot is not in any index (a verify job healed it away?), and the changes handed over do not cover that chunk",
                        pc[i]
                    ),
                )
            })?;
            merges.insert(i, (pc[i], at));
        }
    }
    Ok(merges)
}

/// Reads the chunks of `reads` in a reader thread, hashes, compresses and seals them in
/// `threads` workers, and fills in `content` and `stats` as the results come.
fn read_and_store(
    shared: &Shared<'_>,
    blobs: &Sender<SealedBlob>,
    threads: usize,
    job: ImageJob<'_>,
    (reads, merges): (&[usize], &HashMap<usize, (RepoId, BlobLocation)>),
    zero_ids: &mut ZeroIds,
    (content, stats): (&mut [RepoId], &mut Stats),
) -> Result<(), Error> {
    let ImageJob {
        path,
        file,
        prepared,
        source,
        changed,
        ..
    } = job;
    let size = source.size();
    let progress = &shared.progress;
    let threads = threads.max(1);
    let (work_tx, work_rx) = bounded::<(usize, Work)>(threads * 2);
    let (res_tx, res_rx) = unbounded::<Result<(usize, usize, bool, Outcome), Error>>();
    std::thread::scope(|s| -> Result<(), Error> {
        let reader_res = res_tx.clone();
        s.spawn(move || {
            for (k, &i) in reads.iter().enumerate() {
                if shared.stopped() {
                    break;
                }
                image::read_ahead(source, reads, k);
                let work = if let Some(p) = prepared.take(file, i) {
                    Work::Prepared(p)
                } else {
                    let r = image::chunk_range(i, size);
                    match read_chunk(shared, source, path, r, changed, merges.get(&i)) {
                        Ok(b) => Work::Read(b),
                        Err(e) => {
                            let _ = reader_res.send(Err(e));
                            break;
                        }
                    }
                };
                if work_tx.send((i, work)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..threads {
            let work_rx = work_rx.clone();
            let res_tx = res_tx.clone();
            let blobs = blobs.clone();
            s.spawn(move || {
                let mut compressor = match shared.compressor() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = res_tx.send(Err(e));
                        return;
                    }
                };
                for (i, work) in work_rx {
                    if shared.stopped() {
                        continue;
                    }
                    let (len, was_prepared, outcome) = match work {
                        Work::Read(buf) => (
                            buf.len(),
                            false,
                            store_chunk(shared, &blobs, &buf, &mut compressor),
                        ),
                        Work::Prepared(p) => (p.len, true, store_prepared(shared, &blobs, p)),
                    };
                    if res_tx
                        .send(outcome.map(|o| (i, len, was_prepared, o)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        let mut first_error = None;
        for r in &res_rx {
            match r {
                Ok((i, len, was_prepared, outcome)) => {
                    stats.bytes_read += len as u64;
                    stats.prepared_chunks += usize::from(was_prepared);
                    progress.done.fetch_add(len as u64, Ordering::Relaxed);
                    if !was_prepared {
                        progress.read.fetch_add(len as u64, Ordering::Relaxed);
                    }
                    match outcome {
                        Outcome::Zero => {
                            stats.zero_chunks += 1;
                            match zero_ids.get(len, shared, blobs, stats) {
                                Ok(id) => content[i] = id,
                                Err(e) => {
                                    shared.abort.store(true, Ordering::SeqCst);
                                    first_error.get_or_insert(e);
                                }
                            }
                        }
                        Outcome::Data { id, stored } => {
                            stats.hashed_chunks += 1;
                            stats.new_blobs += usize::from(stored);
                            if stored {
                                stats.added_plain += len as u64;
                            }
                            content[i] = id;
                        }
                    }
                }
                Err(e) => {
                    shared.abort.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    })?;
    Ok(())
}

/// What a worker gets: a chunk just read, or one prepared while the repository was opened.
enum Work {
    Read(Vec<u8>),
    Prepared(PreparedChunk),
}

/// Recognises zeros, hashes, and stores the chunk if the repository needs it.
fn store_chunk(
    shared: &Shared<'_>,
    blobs: &Sender<SealedBlob>,
    buf: &[u8],
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
) -> Result<Outcome, Error> {
    if image::is_zero(buf) {
        return Ok(Outcome::Zero);
    }
    let id = RepoId::of(buf);
    if !shared.claim(id) {
        return Ok(Outcome::Data { id, stored: false });
    }
    send(blobs, shared.seal(id, BlobKind::Data, buf, compressor)?)?;
    Ok(Outcome::Data { id, stored: true })
}

/// Stores a prepared chunk if the repository needs it: only the sealing is left to do.
fn store_prepared(
    shared: &Shared<'_>,
    blobs: &Sender<SealedBlob>,
    p: PreparedChunk,
) -> Result<Outcome, Error> {
    let Ready::Data {
        id,
        stored,
        compressed,
    } = p.content
    else {
        return Ok(Outcome::Zero);
    };
    if !shared.claim(id) {
        return Ok(Outcome::Data { id, stored: false });
    }
    let len = compressed.then_some(p.len);
    send(blobs, shared.seal_stored(id, BlobKind::Data, &stored, len)?)?;
    Ok(Outcome::Data { id, stored: true })
}

/// Reads one chunk: from the source, or, for a chunk of a stock increment that is not wholly
/// changed, the parent's blob with the changed parts read over it.
fn read_chunk(
    shared: &Shared<'_>,
    source: &dyn ImageSource,
    path: &str,
    r: Extent,
    changed: Option<&[Extent]>,
    merge: Option<&(RepoId, BlobLocation)>,
) -> Result<Vec<u8>, Error> {
    let read_err =
        |offset: u64, e| input_error(format!("cannot read {path} at offset {offset}"), e);
    let Some((parent_id, at)) = merge else {
        let mut buf = vec![0u8; r.length as usize];
        source
            .read_at(&mut buf, r.offset)
            .map_err(|e| read_err(r.offset, e))?;
        return Ok(buf);
    };
    let mut buf = shared.repo.read_blob(parent_id, at)?;
    if buf.len() as u64 != r.length {
        return Err(Error::new(
            ErrorKind::Repository,
            format!(
                "{path}: the parent's chunk at {} holds {} bytes, not {}",
                r.offset,
                buf.len(),
                r.length
            ),
        ));
    }
    for part in image::covered(changed.unwrap_or_default(), r) {
        let from = (part.offset - r.offset) as usize;
        source
            .read_at(&mut buf[from..from + part.length as usize], part.offset)
            .map_err(|e| read_err(part.offset, e))?;
    }
    Ok(buf)
}
