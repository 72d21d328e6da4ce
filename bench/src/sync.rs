//! The sync and verify rows (docs/sync.md): a VM's chain (a 1 GiB disk, a FULL and 10
//! increments of 5 %) in a local repository, copied to a repository over SFTP (a loopback
//! sshd) by `backstop repo copy` and by `restic copy`, both from the same source in the same
//! run; then one more increment, copied again by both (the incremental sync). And a verify of
//! the main benchmark's repository against `restic check --read-data` of it.

use crate::compare::settle;
use crate::data::{MIB, generate, rewrite};
use crate::peers::Peer;
use crate::run::{Measure, q, timed};
use std::fs;
use std::path::Path;

const FILE: &str = "/var/lib/one/datastores/0/7/backup/disk.0.0";

pub struct SyncRows {
    pub mib: u64,
    pub increments: u64,
    pub chain: (Measure, Measure),
    pub incremental: (Measure, Measure),
}

impl SyncRows {
    pub fn print(&self) {
        println!(
            "Sync of a chain (a {} MiB disk, a FULL and {} increments of 5 %) to a repository over SFTP:",
            self.mib, self.increments
        );
        for (name, (ours, theirs), goal) in [
            ("whole chain", &self.chain, 3.0),
            ("one more increment", &self.incremental, 10.0),
        ] {
            let x = theirs.seconds / ours.seconds;
            println!(
                "  {name:<20} backstop copy {:>7.2} s ({:>4.0} MiB RSS)   restic copy {:>7.2} s ({:>4.0} MiB RSS)   {x:.1}x (goal {goal}x: {})",
                ours.seconds,
                ours.rss_mib,
                theirs.seconds,
                theirs.rss_mib,
                if x >= goal { "met" } else { "NOT met" }
            );
        }
    }
}

/// The sync rows, or None without sshd.
pub fn rows(work: &Path, backstop: &Path, mib: u64, increments: u64) -> Option<SyncRows> {
    let dir = work.join("sync-bench");
    fs::create_dir_all(&dir).expect("dir");
    // Its own sshd (keys and config) beside the SFTP row's.
    let sshd = crate::sshd::start_sshd(&dir)?;
    let image = dir.join("disk.raw");
    generate(&image, mib).expect("generate");
    let src = dir.join("source");
    let bs = |repo: &str, rest: &str| {
        format!(
            "{} repo -r {} --ssh-config {} {rest}",
            q(backstop),
            q(Path::new(repo)),
            q(&sshd.config)
        )
    };
    let src_s = src.display().to_string();
    timed("sync source init", &bs(&src_s, "init"));
    let backup = |parent: bool, extents: Option<&Path>| {
        let mut rest = format!("backup --image {} --format raw --path {FILE}", q(&image));
        if parent {
            rest.push_str(" --parent latest");
        }
        if let Some(e) = extents {
            rest.push_str(&format!(" --changed-extents {}", q(e)));
        }
        timed("sync source backup", &bs(&src_s, &rest));
    };
    backup(false, None);
    let extents = dir.join("changed.json");
    for k in 0..increments {
        fs::write(
            &extents,
            rewrite(&image, mib * MIB, 1000 + k).expect("rewrite"),
        )
        .expect("json");
        backup(true, Some(&extents));
    }
    let ours_remote = format!("sftp:benchhost:{}", dir.join("backstop-dst").display());
    let restic = Peer::restic_sftp(&dir.join("restic-dst"), &sshd.config);
    timed("sync backstop dst init", &bs(&ours_remote, "init"));
    timed("sync restic dst init", &restic.init());
    let copy_ours = bs(&ours_remote, &format!("copy --from-repo {}", q(&src)));
    settle();
    let ours = timed("backstop copy chain", &copy_ours);
    settle();
    let theirs = timed("restic copy chain", &restic.copy_from(&src));
    fs::write(&extents, rewrite(&image, mib * MIB, 9999).expect("rewrite")).expect("json");
    backup(true, Some(&extents));
    settle();
    let ours_inc = timed("backstop copy increment", &copy_ours);
    settle();
    let theirs_inc = timed("restic copy increment", &restic.copy_from(&src));
    drop(sshd);
    let _ = fs::remove_dir_all(&dir);
    Some(SyncRows {
        mib,
        increments,
        chain: (ours, theirs),
        incremental: (ours_inc, theirs_inc),
    })
}

/// `backstop repo verify` of `repo` against `restic check --read-data` of it.
pub fn verify_row(backstop: &Path, repo: &Path) -> (Measure, Measure) {
    settle();
    let ours = timed(
        "backstop verify",
        &format!("{} repo -r {} verify", q(backstop), q(repo)),
    );
    settle();
    let theirs = timed(
        "restic check --read-data",
        &Peer::restic(repo).check_read_data(),
    );
    (ours, theirs)
}
