//! `increment_flatten`: KEEP_LAST for INCREMENT chains (spec §5.7, §8.3).
//!
//! With increments `k0..kn` and `K = KEEP_LAST`, the first `n+1-K+1` increments merge into a
//! new base that carries the last merged increment's id. A backstop snapshot already holds
//! the complete disks, so the merge is metadata only: the snapshots of the merged increments
//! before the new base are forgotten and the new base keeps its own snapshot (its source does
//! not change). Then a prune that only deletes packs no snapshot uses (no repacking: retention
//! never moves data), so the time does not grow with the size of the disks.
//!
//! stdout: `<size_mb> <id:source,...>` with exactly the last K increments. The size is the sum
//! of the merged increments' sizes (what oned accounted for them), so the image's total stays
//! what it was. With K or fewer increments nothing is done and nothing printed (quirk Q4).

use crate::actions::backup::IMAGE_TAG;
use crate::actions::{lock_wait, open, present_snapshots};
use crate::config::DriverConfig;
use crate::repo::maintenance::PruneLimits;
use crate::target::image_repo_id;
use crate::{Error, ErrorKind};
use backstop_protocol::message::FlattenRequest;

/// What to do for a chain of `count` increments and KEEP_LAST `keep`: how many increments
/// merge into the new base (0: nothing to do).
pub fn merged_count(count: usize, keep: usize) -> usize {
    if count <= keep || keep == 0 {
        0
    } else {
        count - keep + 1
    }
}

pub fn run(request: &FlattenRequest, cfg: &DriverConfig) -> Result<Option<String>, Error> {
    let image = &request.image;
    let chain = image.chain();
    let keep = request.keep_last as usize;
    let merged = merged_count(chain.len(), keep);
    if merged == 0 {
        return Ok(None);
    }
    let ds = &request.datastore;
    let repo = open(ds, image_repo_id(image)?, cfg)?;
    let base = &chain[merged - 1];
    let (_, base_snap) = repo.find_snapshot(&base.source)?;
    if !base_snap.tags.iter().any(|t| t == IMAGE_TAG) {
        return Err(Error::not_implemented(format!(
            "flattening increments stored by OpenNebula's restic driver (qcow2 deltas; backup {})",
            base.source
        )));
    }
    let size_mb: u64 = image
        .increments
        .iter()
        .take(merged)
        .filter_map(|i| i.size_mb)
        .sum::<u64>()
        .max(
            image
                .size_mb
                .filter(|_| image.increments.is_empty())
                .unwrap_or(0),
        );
    let wait = lock_wait(ds);
    let forget = present_snapshots(&repo, &chain[..merged - 1])?;
    repo.forget(&forget, wait)?;
    repo.prune(
        &PruneLimits {
            max_unused: Some("unlimited".into()),
            max_repack: Some("0".into()),
        },
        wait,
    )
    .map_err(|e| {
        Error::new(
            ErrorKind::Repository,
            format!("the increments were forgotten but the prune failed: {e}"),
        )
    })?;
    let kept: Vec<String> = chain[merged - 1..]
        .iter()
        .map(|l| format!("{}:{}", l.increment_id, l.source))
        .collect();
    Ok(Some(format!("{size_mb} {}", kept.join(","))))
}

#[cfg(test)]
mod tests {
    use super::merged_count;

    #[test]
    fn merges_down_to_keep_last() {
        // (count, keep) -> merged into the new base (spec §5.7 example: 5 and 3 -> 3).
        for (count, keep, merged) in [
            (5, 3, 3),
            (4, 2, 3),
            (3, 3, 0),
            (2, 3, 0),
            (4, 1, 4),
            (4, 0, 0),
        ] {
            assert_eq!(merged_count(count, keep), merged, "{count} {keep}");
        }
    }
}
