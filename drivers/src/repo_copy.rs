#![allow(clippy::print_stdout)] // a command line prints its results
//! `backstop repo -r DEST copy --from-repo SOURCE [SNAPSHOT...]`: restic's `copy`, by blob id
//! (the engine's [`backstop_datastore::repo::copy`]; see docs/sync.md). The source's password
//! comes from RESTIC_FROM_PASSWORD, RESTIC_FROM_PASSWORD_FILE or `--from-password-file`, as
//! restic's, never from argv.
//!
//! `backstop repo verify [SNAPSHOT...] [--share n/m] [--heal]`: the engine's
//! [`backstop_datastore::repo::verify`].

use backstop_datastore::repo::Repo;
use backstop_datastore::repo::copy::{CopyOptions, copy};
use backstop_datastore::repo::lock::RetryLock;
use backstop_storage::Storage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a copy and a verify take from the `repo` command line: how to open another storage
/// location with its connection options, how long to wait for a lock, connections at once.
/// Opens the storage at a location.
pub type OpenStorage<'a> = dyn Fn(&str) -> Result<Arc<dyn Storage>, String> + 'a;

pub struct Options<'a> {
    pub open: &'a OpenStorage<'a>,
    pub retry_lock: Duration,
    pub connections: usize,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("retry_lock", &self.retry_lock)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, clap::Args)]
pub struct CopyCmd {
    /// The repository to copy from (a local path, sftp:..., s3:...).
    #[arg(long, value_name = "REPOSITORY", env = "RESTIC_FROM_REPOSITORY")]
    from_repo: String,
    /// A file whose first line is the source's password (else RESTIC_FROM_PASSWORD or
    /// RESTIC_FROM_PASSWORD_FILE).
    #[arg(long, value_name = "FILE")]
    from_password_file: Option<PathBuf>,
    /// Snapshots to copy (ids or unique prefixes); every snapshot of the source when none.
    snapshots: Vec<String>,
}

fn from_password(cmd: &CopyCmd) -> Result<String, String> {
    let from_file = |path: &Path| -> Result<String, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the source's password file {}: {e}",
                path.display()
            )
        })?;
        Ok(text.lines().next().unwrap_or_default().to_string())
    };
    if let Some(p) = &cmd.from_password_file {
        return from_file(p);
    }
    if let Ok(p) = std::env::var("RESTIC_FROM_PASSWORD") {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("RESTIC_FROM_PASSWORD_FILE") {
        return from_file(Path::new(&p));
    }
    Err("no password for the source repository: set RESTIC_FROM_PASSWORD or RESTIC_FROM_PASSWORD_FILE, or pass --from-password-file".into())
}

/// The snapshots named (ids or unique prefixes), oldest first when none: every one.
fn named(
    repo: &Repo,
    names: &[String],
) -> Result<Vec<backstop_datastore::repo::format::RepoId>, String> {
    if names.is_empty() {
        return Ok(repo
            .all_snapshots()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect());
    }
    names
        .iter()
        .map(|s| repo.find_snapshot(s).map(|(id, _)| id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The destination is being opened on a thread of its own meanwhile (its key derivation and
/// the source's run at once).
pub fn run(
    args: &Options<'_>,
    dst: backstop_datastore::repo::Opening,
    cmd: &CopyCmd,
) -> Result<(), String> {
    let src = Repo::open((args.open)(&cmd.from_repo)?, &from_password(cmd)?)
        .map_err(|e| format!("the source: {e}"));
    let dst = dst.wait().map_err(|e| e.to_string())?;
    let dst = &dst;
    let src = src?;
    let ids = named(&src, &cmd.snapshots)?;
    let options = CopyOptions {
        retry_lock: RetryLock(args.retry_lock),
        threads: if args.connections == 0 {
            CopyOptions::default().threads
        } else {
            args.connections
        },
        ..CopyOptions::default()
    };
    let (copied, stats) = copy(&src, dst, &ids, &options).map_err(|e| e.to_string())?;
    for c in &copied {
        println!(
            "copied {} as {}",
            &c.source.to_hex()[..8],
            &c.copy.to_hex()[..8]
        );
    }
    println!(
        "{} snapshots copied, {} there already; {} data and {} tree blobs; {} bytes read, {} bytes written",
        stats.snapshots,
        stats.skipped,
        stats.data_blobs,
        stats.tree_blobs,
        stats.bytes_read,
        stats.bytes_written
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct VerifyCmd {
    /// Snapshots to verify (ids or unique prefixes); every snapshot when none.
    snapshots: Vec<String>,
    /// Only the blobs of share n of m of the packs (e.g. 1/7: a seventh per run).
    #[arg(long, value_name = "N/M")]
    share: Option<String>,
    /// Take the damaged blobs out (their packs rewritten without them) so that the next
    /// backup writes them again.
    #[arg(long)]
    heal: bool,
}

/// Exit 1 (an error naming the snapshots) when a snapshot is damaged, healed or not.
pub fn verify(args: &Options<'_>, repo: &Repo, cmd: &VerifyCmd) -> Result<(), String> {
    use backstop_datastore::repo::verify::{Share, heal, verify};
    let share = cmd
        .share
        .as_deref()
        .map(Share::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let ids = named(repo, &cmd.snapshots)?;
    let retry = RetryLock(args.retry_lock);
    let report = verify(repo, &ids, share, retry).map_err(|e| e.to_string())?;
    let mut bad = std::collections::BTreeSet::new();
    for v in &report.verdicts {
        let id = &v.snapshot.to_hex()[..8];
        if v.bad.is_empty() {
            println!("{id} ok");
        } else {
            println!("{id} damaged: {} blobs", v.bad.len());
            bad.extend(v.bad.iter().copied());
        }
    }
    println!(
        "{} snapshots, {} blobs read ({} bytes), {} damaged blobs",
        report.verdicts.len(),
        report.blobs_read,
        report.bytes_read,
        bad.len()
    );
    if bad.is_empty() {
        return Ok(());
    }
    let damaged: Vec<String> = report
        .verdicts
        .iter()
        .filter(|v| !v.bad.is_empty())
        .map(|v| v.snapshot.to_hex()[..8].to_string())
        .collect();
    if cmd.heal {
        let bad: Vec<_> = bad.into_iter().collect();
        let healed = heal(repo, &bad, retry).map_err(|e| e.to_string())?;
        println!(
            "healed: {} packs rewritten, {} damaged blobs out, {} good blobs kept; the next backup writes them again",
            healed.packs, healed.removed, healed.kept
        );
    }
    Err(format!("damaged snapshots: {}", damaged.join(", ")))
}
