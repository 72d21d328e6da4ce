//! What this machine can do: the full backup's CPU work on the same image, from memory, on all
//! cores, with no I/O at all. Each 1 MiB chunk is hashed; the first occurrence of each content
//! that is not all zeros is compressed (zstd, the repository's default level) and sealed with a
//! real repository key. The full backup's time can then be read as a share of this floor.

use backstop_datastore::repo::Repo;
use backstop_datastore::repo::format::RepoId;
use backstop_image::image::CHUNK_SIZE;
use backstop_storage::local::LocalBackend;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Seconds for the CPU work of a full backup of `image` (whose bytes are read before the clock
/// starts), and the number of threads used.
pub fn limit(image: &Path, scratch: &Path) -> (f64, usize) {
    let data = std::fs::read(image).expect("read the image into memory");
    let _ = std::fs::remove_dir_all(scratch);
    let storage = std::sync::Arc::new(LocalBackend::new(scratch));
    let repo = Repo::init(storage, crate::run::PASSWORD).expect("scratch repository");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<&[u8]> = data.chunks(CHUNK_SIZE as usize).collect();
    let next = AtomicUsize::new(0);
    let seen = Mutex::new(HashSet::new());
    let zero_id = RepoId::of(&vec![0u8; CHUNK_SIZE as usize]);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut zstd = zstd::bulk::Compressor::new(3).expect("zstd");
                let mut sealed_bytes = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else { break };
                    let id = RepoId::of(chunk);
                    if id == zero_id || !seen.lock().expect("set").insert(id) {
                        continue;
                    }
                    let packed = zstd.compress(chunk).expect("compress");
                    let plain: &[u8] = if packed.len() < chunk.len() {
                        &packed
                    } else {
                        chunk
                    };
                    sealed_bytes += repo.seal(plain).expect("seal").len();
                }
                std::hint::black_box(sealed_bytes);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(scratch);
    (seconds, threads)
}
