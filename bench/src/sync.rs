//! The sync and verify rows (docs/sync.md): a VM's chain (a 1 GiB disk, a FULL and 10
//! increments of 5 %) in a local repository, copied to a repository over SFTP (a loopback
//! sshd) by `backstop repo copy` and by `restic copy`, both from the same source in the same
//! run; then one more increment, copied again by both (the incremental sync). And a verify of
//! the main benchmark's repository against `restic check --read-data` of it.

use crate::data::{MIB, generate, rewrite};
use crate::peers::Peer;
use crate::run::{Measure, q, settle, timed};
use std::fs;
use std::path::Path;

const FILE: &str = "/var/lib/one/datastores/0/7/backup/disk.0.0";

pub struct SyncRows {
    pub mib: u64,
    pub increments: u64,
    pub chain: (Measure, Measure),
    pub incremental: (Measure, Measure),
    pub datastore: DatastoreRows,
}

/// A whole datastore of small repositories pushed by a sync job, with PARALLEL 1, 2 and 4,
/// against `restic copy` of each repository in turn.
pub struct DatastoreRows {
    pub repos: u64,
    pub mib: u64,
    /// (PARALLEL, the run).
    pub ours: Vec<(u64, Measure)>,
    pub restic: Measure,
    /// The PARALLEL=2 job run again with nothing new, against restic copying each again.
    pub again: (Measure, Measure),
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
        let d = &self.datastore;
        println!(
            "Sync job of a whole datastore ({} repositories, a {} MiB FULL each) to SFTP:",
            d.repos, d.mib
        );
        for (parallel, m) in &d.ours {
            println!(
                "  PARALLEL={parallel:<2}          backstop sync {:>7.2} s ({:>4.0} MiB RSS)   restic copy, each in turn {:>7.2} s   {:.1}x",
                m.seconds,
                m.rss_mib,
                d.restic.seconds,
                d.restic.seconds / m.seconds
            );
        }
        let (ours, theirs) = &d.again;
        println!(
            "  again, nothing new   backstop sync {:>7.2} s ({:>4.0} MiB RSS)   restic copy, each in turn {:>7.2} s   {:.1}x",
            ours.seconds,
            ours.rss_mib,
            theirs.seconds,
            theirs.seconds / ours.seconds
        );
    }
}

/// A state with the datastore `local` and one SFTP remote per PARALLEL value; a sync job
/// pushing the whole datastore to each, timed; and restic copying each repository in turn.
fn datastore_rows(dir: &Path, backstop: &Path, sshd: &crate::sshd::Sshd) -> DatastoreRows {
    let (repos, mib) = (12u64, 64u64);
    let local = dir.join("ds-local");
    let image = dir.join("ds-disk.raw");
    generate(&image, mib).expect("generate");
    for k in 0..repos {
        let repo = local.join((100 + k).to_string());
        let r = q(&repo);
        timed(
            "datastore repo",
            &format!(
                "{b} repo -r {r} init && {b} repo -r {r} backup --image {} --format raw --path {FILE} --tag one-{}",
                q(&image),
                100 + k,
                b = q(backstop),
            ),
        );
    }
    let remotes = dir.join("ds-remotes");
    fs::create_dir_all(remotes.join("etc/datastore")).expect("remotes");
    fs::write(
        remotes.join("etc/datastore/backstop.conf"),
        format!("SSH_CONFIG={}\n", sshd.config.display()),
    )
    .expect("conf");
    let bj = format!(
        "{} backupjob --state {} --remotes {}",
        q(backstop),
        q(&dir.join("ds-state.db")),
        q(&remotes)
    );
    let tmpl = dir.join("ds.tmpl");
    let create = |what: &str, text: String| {
        fs::write(&tmpl, text).expect("template");
        timed(
            "datastore state",
            &format!("{bj} {what} create {}", q(&tmpl)),
        );
    };
    create(
        "datastore",
        format!(
            "NAME=\"local\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_PASSWORD=\"{}\"\n",
            local.display(),
            crate::run::PASSWORD
        ),
    );
    let mut ours = Vec::new();
    for (k, parallel) in [1u64, 2, 4].into_iter().enumerate() {
        create(
            "remote",
            format!(
                "NAME=\"r{parallel}\"\nDS_MAD=\"backstop\"\nBASE_PATH=\"{}\"\nRESTIC_SFTP_SERVER=\"benchhost\"\n\
                 RESTIC_SFTP_USER=\"root\"\nRESTIC_PASSWORD=\"{}\"\n",
                dir.join(format!("ds-dst-{parallel}")).display(),
                crate::run::PASSWORD
            ),
        );
        create(
            "sync-job",
            format!(
                "NAME=\"p{parallel}\"\nDATASTORE_ID=1\nREMOTE_ID={}\nPARALLEL={parallel}\n",
                k + 2
            ),
        );
        settle();
        let m = timed(
            &format!("sync job PARALLEL={parallel}"),
            &format!("{bj} sync-job run {}", k + 1),
        );
        ours.push((parallel, m));
    }
    let mut script = Vec::new();
    for k in 0..repos {
        let name = (100 + k).to_string();
        let peer = Peer::restic_sftp(&dir.join("ds-restic").join(&name), &sshd.config);
        script.push(peer.init());
        script.push(peer.copy_from(&local.join(&name)));
    }
    settle();
    let restic = timed("restic copy each repository", &script.join(" && "));
    settle();
    let ours_again = timed("sync job again", &format!("{bj} sync-job run 2"));
    let copies: Vec<String> = script.iter().skip(1).step_by(2).cloned().collect();
    settle();
    let restic_again = timed("restic copy each again", &copies.join(" && "));
    DatastoreRows {
        repos,
        mib,
        ours,
        restic,
        again: (ours_again, restic_again),
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
    let datastore = datastore_rows(&dir, backstop, &sshd);
    drop(sshd);
    let _ = fs::remove_dir_all(&dir);
    Some(SyncRows {
        mib,
        increments,
        chain: (ours, theirs),
        incremental: (ours_inc, theirs_inc),
        datastore,
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
