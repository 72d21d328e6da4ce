#![allow(clippy::print_stdout)] // a command line prints its results
//! `backstop repo`: the operator's command line for repositories, shaped like restic's.
//!
//! The password comes from RESTIC_PASSWORD, RESTIC_PASSWORD_FILE or `--password-file`, never
//! from argv; S3 keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as restic reads them.

use backstop_datastore::repo::format::RepoId;
use backstop_datastore::repo::lock::RetryLock;
use backstop_datastore::repo::maintenance::{PruneLimits, ReadData};
use backstop_datastore::repo::writer::{self, BackupOptions, Content, FileSpec};
use backstop_datastore::repo::{Compression, Opening, Repo};
use backstop_image::disk_image::{Backing, Format};
use backstop_image::image;
use backstop_image::nbd;
use backstop_image::rbd::RbdImage;
use backstop_image::{Disk, Source};
use backstop_storage::Storage;
use backstop_storage::cache;
use backstop_storage::s3::Secret;
use backstop_storage::{S3Keys, StorageSpec, Transport, Where};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The heading the options every `backstop repo` command takes are listed under, after the
/// command's own; like restic's, they are taken anywhere on the line.
const REPOSITORY: &str = "Repository options";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository: a local path, sftp:[user@]host:/path (host may be an alias of the
    /// ssh configuration), or s3:<endpoint>/<bucket>/<path> (keys in AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, short = 'r', env = "RESTIC_REPOSITORY", global = true, help_heading = REPOSITORY)]
    repo: Option<String>,
    /// SFTP: the OpenSSH client configuration to read (default ~/.ssh/config).
    #[arg(long, value_name = "FILE", global = true, help_heading = REPOSITORY)]
    ssh_config: Option<PathBuf>,
    /// SFTP: accept only this host key (SHA256:... as `ssh-keygen -l` prints it) instead of
    /// looking it up in known_hosts.
    #[arg(long, value_name = "FINGERPRINT", global = true, help_heading = REPOSITORY)]
    host_fingerprint: Option<String>,
    /// SFTP: sessions to open at most (default 5, no more than this machine's CPUs); S3:
    /// requests in flight at once (default 5).
    #[arg(long, env = "RESTIC_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=64), global = true, help_heading = REPOSITORY)]
    pub(crate) connections: Option<u64>,
    /// S3: the region to sign for.
    #[arg(long, env = "AWS_DEFAULT_REGION", default_value = "us-east-1", global = true, help_heading = REPOSITORY)]
    s3_region: String,
    /// S3: path-style URLs (endpoint/bucket/key), as restic's -o s3.bucket-lookup=path.
    #[arg(long, global = true, help_heading = REPOSITORY)]
    s3_path_style: bool,
    /// S3: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE", global = true, help_heading = REPOSITORY)]
    cacert: Option<PathBuf>,
    /// S3: do not check the server's certificate at all.
    #[arg(long, global = true, help_heading = REPOSITORY)]
    insecure_tls: bool,
    /// S3: give every object written (but lock files) an Object Lock retention in this mode
    /// (COMPLIANCE or GOVERNANCE); the bucket must have Object Lock (a new one is made with it).
    #[arg(long, value_name = "MODE", env = "RESTIC_S3_OBJECT_LOCK", global = true, help_heading = REPOSITORY)]
    s3_object_lock: Option<String>,
    /// S3: with --s3-object-lock, how many days each object stays locked.
    #[arg(long, value_name = "DAYS", env = "RESTIC_S3_OBJECT_LOCK_DAYS", global = true, help_heading = REPOSITORY)]
    s3_object_lock_days: Option<String>,
    /// Bandwidth limit in KiB/s, reads and writes together, on every kind of repository (restic's
    /// unit).
    #[arg(long, value_name = "KIB", env = "RESTIC_BWLIMIT", global = true, help_heading = REPOSITORY)]
    limit: Option<u64>,
    /// A file whose first line is the password (else RESTIC_PASSWORD or RESTIC_PASSWORD_FILE).
    #[arg(long, value_name = "FILE", global = true, help_heading = REPOSITORY)]
    password_file: Option<PathBuf>,
    /// How long to wait for a conflicting lock to go away (e.g. 30s, 5m, 1h30m), as restic's
    /// --retry-lock; then fail naming the holder.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, global = true, help_heading = REPOSITORY)]
    pub(crate) retry_lock: Duration,
    /// SFTP and S3: where to keep the metadata cache (index, snapshot and tree files, checked by
    /// their hash; default $XDG_CACHE_HOME/backstop or ~/.cache/backstop).
    #[arg(long, value_name = "DIR", global = true, help_heading = REPOSITORY)]
    cache_dir: Option<PathBuf>,
    /// SFTP and S3: read everything from the server (`check` always does).
    #[arg(long, global = true, help_heading = REPOSITORY)]
    no_cache: bool,
    /// Print JSON instead of text (snapshots, backup's summary).
    #[arg(long, global = true, help_heading = REPOSITORY)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// `backup`'s options.
#[derive(Debug, clap::Args)]
struct BackupCmd {
    /// A disk image: a raw file or block device, or a qcow2 file (read through qemu-nbd).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["nbd", "rbd"],
        conflicts_with_all = ["nbd", "rbd"]
    )]
    image: Option<PathBuf>,
    /// A Ceph RBD snapshot, `POOL/IMAGE@SNAPSHOT`, read through librbd (needs --path).
    #[arg(long, value_name = "SPEC", conflicts_with = "nbd")]
    rbd: Option<String>,
    /// With --rbd and --parent: read only what `rbd diff --from-snap SNAPSHOT` reports.
    #[arg(long, value_name = "SNAPSHOT", requires_all = ["rbd", "parent"])]
    rbd_from_snap: Option<String>,
    /// The Ceph configuration for --rbd (default: librbd's).
    #[arg(long, value_name = "FILE", requires = "rbd")]
    ceph_conf: Option<PathBuf>,
    /// The cephx user for --rbd, without `client.` (default: admin).
    #[arg(long, value_name = "NAME", requires = "rbd")]
    ceph_user: Option<String>,
    /// A file holding the cephx key for --rbd.
    #[arg(long, value_name = "FILE", requires = "rbd")]
    ceph_keyfile: Option<PathBuf>,
    /// An NBD export on a unix socket (qemu-nbd, qemu-storage-daemon, libvirt pull backup).
    #[arg(long, value_name = "SOCKET")]
    nbd: Option<PathBuf>,
    /// The image format for --image: raw or qcow2. Without it a file is read as raw, and
    /// one that starts with a qcow2 header is refused (backstop never guesses a format).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Take the changed extents from this persistent dirty bitmap
    /// (`qemu:dirty-bitmap:NAME`); needs --parent.
    #[arg(
        long,
        value_name = "NAME",
        requires = "parent",
        conflicts_with = "changed_extents"
    )]
    bitmap: Option<String>,
    /// --image is a stock OpenNebula increment (disk.<id>.<n>: a qcow2 delta whose backing
    /// file is gone): its clusters are the changed extents, the rest comes from --parent.
    #[arg(long, requires_all = ["parent", "image"], conflicts_with_all = ["changed_extents", "bitmap"])]
    stock_increment: bool,
    /// The file's absolute path inside the snapshot (default: the image's own path).
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// The parent snapshot (id or unique prefix); with --changed-extents only changed
    /// chunks are read.
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// The file's path in the parent snapshot (default: --path).
    #[arg(long, value_name = "PATH")]
    parent_path: Option<String>,
    /// The changed extents, as `nbdinfo --json --map` prints them for a dirty bitmap.
    #[arg(long, value_name = "FILE", requires = "parent")]
    changed_extents: Option<PathBuf>,
    /// A tag for the snapshot (repeat for more).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// The host name recorded in the snapshot (default: this machine's).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// off, fastest, auto, better or max (restic 0.19's names).
    #[arg(long, env = "RESTIC_COMPRESSION")]
    compression: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a repository (restic format, version 2).
    Init,
    /// Back up a disk image as one file of a new snapshot.
    Backup(Box<BackupCmd>),
    /// List snapshots.
    Snapshots,
    /// Restore a file of a snapshot (a disk image) to a local file, sparse.
    Restore {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// The file's absolute path in the snapshot.
        path: String,
        /// Where to write it (written as <target>.backstop-tmp, then renamed).
        #[arg(long, value_name = "FILE")]
        target: PathBuf,
    },
    /// Check the repository (metadata; with --read-data every blob, or a subset).
    Check {
        /// Also read and check every blob.
        #[arg(long)]
        read_data: bool,
        /// e.g. 10%, 500M or 1/5.
        #[arg(long, value_name = "SUBSET", conflicts_with = "read_data")]
        read_data_subset: Option<String>,
    },
    /// Remove snapshots (ids or unique prefixes). Their data goes with `prune`.
    Forget {
        /// Snapshot ids or unique prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Prune right after.
        #[arg(long)]
        prune: bool,
        /// With --prune: how much unused space may stay (as prune's).
        #[arg(long, env = "RESTIC_PRUNE_MAX_UNUSED")]
        max_unused: Option<String>,
        /// With --prune: how much may be repacked at most (as prune's).
        #[arg(long, env = "RESTIC_PRUNE_MAX_REPACK")]
        max_repack: Option<String>,
    },
    /// Remove data no snapshot needs, at once.
    Prune {
        /// How much unused space may stay (default 0, as OpenNebula's driver: 0, 5%, 1G,
        /// unlimited).
        #[arg(long, env = "RESTIC_PRUNE_MAX_UNUSED")]
        max_unused: Option<String>,
        /// How much may be repacked at most (default unlimited).
        #[arg(long, env = "RESTIC_PRUNE_MAX_REPACK")]
        max_repack: Option<String>,
    },
    /// Snapshot count and stored size.
    Stats,
    /// Remove stale locks (all locks with --remove-all).
    Unlock {
        /// Remove every lock, not only stale ones (make sure nothing uses the repository).
        #[arg(long)]
        remove_all: bool,
    },
    /// Copy snapshots from another repository (restic's `copy`): only the blobs this one lacks.
    Copy(Box<crate::repo_copy::CopyCmd>),
    /// Read back every blob the snapshots need and say which are damaged; --heal takes the
    /// damaged ones out so the next backup writes them again.
    Verify(crate::repo_copy::VerifyCmd),
    /// Write a file of a snapshot to stdout.
    Dump {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// The file's absolute path in the snapshot.
        path: String,
    },
    /// The repository's key files (restic's `key`): each password that opens it has one.
    #[command(subcommand)]
    Key(KeyCmd),
    /// S3 with versioning (Object Lock): put the repository back to what it held at a time.
    /// Delete markers made since are removed, objects overwritten since get their old version
    /// back, objects made since are hidden; no version is removed. Needs no password.
    Undelete {
        /// The time to go back to: RFC 3339 (2026-12-07T18:00:00Z) or a local date and time
        /// (2026-12-07T19:00).
        #[arg(long, value_name = "TIME")]
        before: String,
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Escrow keys: a way back in when the password is lost, sealed to an age public key whose
    /// private key is kept offline (docs/escrow.md).
    #[command(subcommand)]
    Escrow(EscrowCmd),
}

/// `escrow`'s commands.
#[derive(Debug, clap::Subcommand)]
enum EscrowCmd {
    /// Make a new escrow identity: its private key is written to FILE (mode 0600, never over
    /// an existing file), its public key (age1...) is printed. Keep FILE offline.
    Keygen {
        /// Where to write the private key (an age identity file).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Add an escrow key sealed to these public keys, unless the repository has one sealed to
    /// exactly them (the password opens the repository).
    Add {
        /// age public keys (age1...), several separated by commas or given again.
        #[arg(
            long = "recipient",
            value_name = "AGE1...",
            env = "BACKSTOP_ESCROW_RECIPIENTS",
            required = true,
            value_delimiter = ','
        )]
        recipients: Vec<String>,
    },
    /// Give the repository a new password through its escrow key, with the private key: no
    /// password is needed. The escrow key stays.
    Recover {
        /// The private key (an age identity file, not encrypted; e.g. <(age -d key.age)).
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// A file whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        new_password_file: PathBuf,
    },
}

/// `escrow keygen|add|recover`; `add` opens the repository with the password, the others
/// need none.
fn escrow(args: &Args, cmd: &EscrowCmd) -> Result<(), String> {
    match cmd {
        EscrowCmd::Keygen { output } => {
            use std::os::unix::fs::OpenOptionsExt;
            let (text, public) = backstop_datastore::repo::escrow::keygen();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(output)
                .map_err(|e| format!("cannot create {}: {e}", output.display()))?;
            if let Err(e) = file
                .write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
            {
                let _ = std::fs::remove_file(output);
                return Err(format!("cannot write {}: {e}", output.display()));
            }
            println!("{public}");
            Ok(())
        }
        EscrowCmd::Add { recipients } => {
            let recipients =
                backstop_datastore::repo::escrow::Recipients::parse(&recipients.join(","))?;
            let repo = Repo::open(backend(args)?, &password(args)?).map_err(|e| e.to_string())?;
            let _lock = repo
                .lock(false, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            match repo.add_escrow(&recipients).map_err(|e| e.to_string())? {
                Some(id) => println!(
                    "added escrow key {} to {}, sealed to {}",
                    &id[..8],
                    repo.location(),
                    recipients.names().join(" ")
                ),
                None => println!(
                    "{} has an escrow key sealed to {} already: none added",
                    repo.location(),
                    recipients.names().join(" ")
                ),
            }
            Ok(())
        }
        EscrowCmd::Recover {
            identity,
            new_password_file,
        } => {
            let new = new_password(new_password_file)?;
            let identities = backstop_datastore::repo::escrow::Identities::read(identity)?;
            let (repo, _) =
                Repo::open_by_escrow(backend(args)?, &identities).map_err(|e| e.to_string())?;
            let _lock = repo
                .lock(false, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            let added = repo.add_password(&new).map_err(|e| e.to_string())?;
            println!(
                "{}: {}",
                repo.location(),
                if added {
                    "opened with the escrow key; a key for the new password added"
                } else {
                    "opened with the escrow key; it opens with the new password already"
                }
            );
            Ok(())
        }
    }
}

/// `key`'s commands. A new password is read from a file (its first line), never from argv.
#[derive(Debug, clap::Subcommand)]
enum KeyCmd {
    /// List the key files: id, user, host, when made; `*` marks those the password opens.
    List,
    /// Add a key file for another password (restic's key file format: restic opens with it).
    Add {
        /// A file whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        new_password_file: PathBuf,
    },
    /// Remove a key file by its id (at least its first 8 hex digits); never the one the
    /// password opens.
    Remove {
        /// The key file's id, or its first 8 or more hex digits.
        id: String,
    },
    /// Change the password: a key file for the new one is added and read back, then the key
    /// files the old one opens are removed. A datastore's repositories change theirs with
    /// `backstop backupjob datastore update` (the datastore's RESTIC_PASSWORD is theirs).
    Passwd {
        /// A file whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        new_password_file: PathBuf,
    },
}

/// The password a new password file holds: one line. What restic would read differently
/// from the same file (restic trims the whole file and drops a byte-order mark) is refused,
/// so that a key made here opens with `restic --password-file` on that file too.
fn new_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the new password file {}: {e}", path.display()))?;
    let shown = path.display();
    let pw = text.lines().next().unwrap_or_default().to_string();
    if pw.is_empty() {
        return Err(format!(
            "the new password file {shown} holds no password on its first line"
        ));
    }
    if text.lines().skip(1).any(|l| !l.trim().is_empty()) {
        return Err(format!(
            "the new password file {shown} holds more than one line: only the password, on one line"
        ));
    }
    if pw.starts_with('\u{feff}') || pw.trim() != pw {
        return Err(format!(
            "the new password in {shown} starts or ends with white space or a byte-order mark, which restic would not read: remove them"
        ));
    }
    Ok(pw)
}

/// `key list|add|remove|passwd` on an open repository.
fn key(args: &Args, repo: &Repo, pw: &str, cmd: &KeyCmd) -> Result<(), String> {
    match cmd {
        KeyCmd::List => {
            let keys = repo.keys(pw).map_err(|e| e.to_string())?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&keys).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            println!(" {:<8}  {:<16}  {:<24}  CREATED", "ID", "USER", "HOST");
            for k in &keys {
                println!(
                    "{}{:<8}  {:<16}  {:<24}  {}",
                    if k.current { '*' } else { ' ' },
                    &k.id[..8],
                    k.user.as_deref().unwrap_or("-"),
                    k.host.as_deref().unwrap_or("-"),
                    k.unreadable.as_deref().map_or_else(
                        || k.created.clone().unwrap_or_default(),
                        |why| format!("(this file {why})")
                    ) + &k
                        .escrow
                        .as_ref()
                        .map(|r| format!("  escrow, sealed to {}", r.join(" ")))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        KeyCmd::Add { new_password_file } => {
            let new = new_password(new_password_file)?;
            // As restic's `key add`: a shared lock; `remove` and `passwd` take an exclusive
            // one, so that no other process is opening with a key while it goes.
            let _lock = repo
                .lock(false, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            if repo.add_password(&new).map_err(|e| e.to_string())? {
                println!("added a key for the new password to {}", repo.location());
            } else {
                println!(
                    "{} opens with that password already: no key added",
                    repo.location()
                );
            }
            Ok(())
        }
        KeyCmd::Remove { id } => {
            let _lock = repo
                .lock(true, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            let removed = repo.remove_key(id, pw).map_err(|e| e.to_string())?;
            println!("removed key {}", &removed[..8]);
            Ok(())
        }
        KeyCmd::Passwd { new_password_file } => {
            let new = new_password(new_password_file)?;
            if new == pw {
                return Err("the new password is the one in use: nothing to change".into());
            }
            let _lock = repo
                .lock(true, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            let added = repo.add_password(&new).map_err(|e| e.to_string())?;
            let removed = repo.remove_password(pw, &new).map_err(|e| {
                format!(
                    "{e} (the new password opens the repository already; the old one still does too)"
                )
            })?;
            println!(
                "changed the password of {}: {}, {removed} key(s) of the old one removed",
                repo.location(),
                if added {
                    "a key for the new one added"
                } else {
                    "the new one had a key already"
                }
            );
            Ok(())
        }
    }
}

/// The repository named by -r/--repo or RESTIC_REPOSITORY.
fn location(args: &Args) -> Result<&str, String> {
    args.repo
        .as_deref()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| "no repository: give -r/--repo or set RESTIC_REPOSITORY".to_string())
}

pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "backstop repo: {}",
                backstop_protocol::output::one_line(&e)
            );
            ExitCode::FAILURE
        }
    }
}

fn password(args: &Args) -> Result<String, String> {
    let from_file = |path: &Path| -> Result<String, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
        Ok(text.lines().next().unwrap_or_default().to_string())
    };
    if let Some(p) = &args.password_file {
        return from_file(p);
    }
    if let Ok(p) = std::env::var("RESTIC_PASSWORD") {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("RESTIC_PASSWORD_FILE") {
        return from_file(Path::new(&p));
    }
    Err("no repository password: set RESTIC_PASSWORD or RESTIC_PASSWORD_FILE, or pass --password-file".into())
}

/// The S3 keys from the environment (never from argv), with the command line's TLS options.
fn s3_keys(args: &Args) -> Result<S3Keys, String> {
    let key = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{name} is not set (needed for an s3: repository)"))
    };
    Ok(S3Keys {
        access_key_id: key("AWS_ACCESS_KEY_ID")?,
        secret_access_key: Secret::new(key("AWS_SECRET_ACCESS_KEY")?),
        region: args.s3_region.clone(),
        path_style: args.s3_path_style.then_some(true),
        ca_cert: args.cacert.clone(),
        insecure_tls: args.insecure_tls,
        object_lock: match &args.s3_object_lock {
            Some(mode) if !mode.trim().is_empty() => Some(
                backstop_storage::s3::ObjectLock::parse(mode, args.s3_object_lock_days.as_deref())
                    .map_err(|e| {
                        e.replace("RESTIC_S3_OBJECT_LOCK_DAYS", "--s3-object-lock-days")
                            .replace("RESTIC_S3_OBJECT_LOCK", "--s3-object-lock")
                    })?,
            ),
            _ => None,
        },
    })
}

fn backend(args: &Args) -> Result<Arc<dyn Storage>, String> {
    backend_at(args, location(args)?)
}

/// The storage at `location`, with the command line's connection options.
fn backend_at(args: &Args, location: &str) -> Result<Arc<dyn Storage>, String> {
    connect(&spec_at(args, location)?)
}

fn connect(spec: &StorageSpec) -> Result<Arc<dyn Storage>, String> {
    backstop_storage::open(spec, &mut |line| eprintln!("INFO: {line}")).map_err(|e| e.to_string())
}

/// The repository at `args.repo` opened on a thread of its own: connecting and deriving the
/// key take a while, and the action reads its image (or opens the source) meanwhile.
fn open_in_background(
    args: &Args,
    pw: String,
) -> Result<backstop_datastore::repo::Opening, String> {
    let spec = spec_at(args, location(args)?)?;
    Ok(backstop_datastore::repo::Opening::spawn(move || {
        let be = connect(&spec).map_err(|e| {
            backstop_datastore::repo::Error::new(backstop_datastore::repo::ErrorKind::Repository, e)
        })?;
        Repo::open(be, &pw)
    }))
}

/// How to reach `location`, with the command line's connection options.
fn spec_at(args: &Args, location: &str) -> Result<StorageSpec, String> {
    let at = Where::parse(location).map_err(|e| e.to_string())?;
    let s3 = match at {
        Where::S3(_) => Some(s3_keys(args)?),
        _ => None,
    };
    // A check reads what the server holds, never a local copy.
    let cache_dir = match (&args.command, args.no_cache) {
        (Command::Check { .. }, _) | (_, true) => None,
        _ => args.cache_dir.clone().or_else(cache::default_dir),
    };
    Ok(StorageSpec {
        at,
        transport: Transport {
            connections: args.connections.map_or(0, |c| c as usize),
            bwlimit_kib: args.limit,
            ssh_config: args.ssh_config.clone(),
            host_fingerprint: args.host_fingerprint.clone(),
            s3,
        },
        cache_dir,
    })
}

fn copy_options<'a>(
    args: &Args,
    open: &'a crate::repo_copy::OpenStorage<'a>,
) -> crate::repo_copy::Options<'a> {
    crate::repo_copy::Options {
        open,
        retry_lock: args.retry_lock,
        connections: args.connections.map_or(0, |c| c as usize),
    }
}

/// A time given on the command line: RFC 3339, or a local date and time.
fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    text.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::system()).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!(
                "--before {text:?} is not a time (2026-12-07T18:00:00Z, or local 2026-12-07T19:00)"
            )
        })
}

/// `undelete`: object versions only, no password.
fn undelete(args: &Args, before: &str, dry_run: bool) -> Result<(), String> {
    let before = parse_time(before)?;
    let spec = spec_at(args, location(args)?)?;
    let backstop_storage::Connected::S3(s3) =
        backstop_storage::connect(&spec.at, &spec.transport).map_err(|e| e.to_string())?
    else {
        return Err(
            "undelete needs an s3: repository in a bucket with versioning (Object Lock)".into(),
        );
    };
    let done = s3.undelete(before, dry_run).map_err(|e| e.to_string())?;
    println!(
        "{}{}: {} object(s) undeleted, {} brought back from an overwrite, {} made since hidden, {} unchanged, {} key file(s) made since kept",
        if dry_run { "would change " } else { "" },
        s3.location().url(),
        done.uncovered,
        done.restored,
        done.hidden,
        done.unchanged,
        done.keys_kept
    );
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    if let Command::Escrow(cmd) = &args.command {
        return escrow(args, cmd);
    }
    if let Command::Undelete { before, dry_run } = &args.command {
        return undelete(args, before, *dry_run);
    }
    let open = |location: &str| backend_at(args, location);
    let pw = password(args)?;
    if let Command::Backup(cmd) = &args.command {
        // The key is derived while the image is read (writer::backup_opening).
        return backup(open_in_background(args, pw)?, args, cmd);
    }
    if let Command::Copy(cmd) = &args.command {
        // The destination connects and derives its key while the source opens.
        return crate::repo_copy::run(
            &copy_options(args, &open),
            open_in_background(args, pw)?,
            cmd,
        );
    }
    let be = backend(args)?;
    if let Command::Init = args.command {
        if be
            .list(rustic_core::FileType::Config)
            .map(|c| !c.is_empty())
            .unwrap_or(false)
        {
            return Err(format!("{} already holds a repository", location(args)?));
        }
        let repo = Repo::init(be, &pw).map_err(|e| e.to_string())?;
        println!("created repository at {}", repo.location());
        return Ok(());
    }
    let repo = Repo::open(be, &pw).map_err(|e| e.to_string())?;
    match &args.command {
        Command::Init | Command::Backup(_) => Ok(()),
        Command::Copy(_) | Command::Escrow(_) | Command::Undelete { .. } => Ok(()),
        Command::Verify(cmd) => crate::repo_copy::verify(&copy_options(args, &open), &repo, cmd),
        Command::Snapshots => {
            let snaps = repo.snapshots().map_err(|e| e.to_string())?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&snaps).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "{:<8}  {:<30}  {:<16}  {:<20}  PATHS",
                    "ID", "TIME", "HOST", "TAGS"
                );
                for s in &snaps {
                    println!(
                        "{:<8}  {:<30}  {:<16}  {:<20}  {}",
                        &s.id[..8],
                        s.time,
                        s.hostname,
                        s.tags.join(","),
                        s.paths.join(" ")
                    );
                }
                println!("{} snapshots", snaps.len());
            }
            Ok(())
        }
        Command::Restore {
            snapshot,
            path,
            target,
        } => {
            let started = Instant::now();
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            let st = repo
                .restore_file(snapshot, path, target, threads, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            println!(
                "restored {} bytes to {} ({} blobs, {} left sparse) in {:.2} s",
                st.size,
                target.display(),
                st.blobs,
                st.zero_blobs,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Check {
            read_data,
            read_data_subset,
        } => {
            let read = match (read_data, read_data_subset) {
                (_, Some(s)) => ReadData::Subset(s.clone()),
                (true, None) => ReadData::All,
                (false, None) => ReadData::None,
            };
            repo.check(&read, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            println!("no errors were found");
            Ok(())
        }
        Command::Forget {
            ids,
            prune,
            max_unused,
            max_repack,
        } => {
            let n = repo
                .forget(ids, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            println!("removed {n} snapshot(s)");
            if *prune {
                prune_now(&repo, max_unused, max_repack, args.retry_lock)?;
            }
            Ok(())
        }
        Command::Prune {
            max_unused,
            max_repack,
        } => prune_now(&repo, max_unused, max_repack, args.retry_lock),
        Command::Stats => {
            let snaps = repo.snapshots().map_err(|e| e.to_string())?;
            let size = repo.data_size().map_err(|e| e.to_string())?;
            println!("{} snapshots, {size} bytes in packs", snaps.len());
            Ok(())
        }
        Command::Unlock { remove_all } => {
            let n = repo.unlock(*remove_all).map_err(|e| e.to_string())?;
            println!("removed {n} lock(s)");
            Ok(())
        }
        Command::Key(cmd) => key(args, &repo, &pw, cmd),
        Command::Dump { snapshot, path } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(4 << 20, stdout.lock());
            repo.dump(snapshot, path, &mut out, RetryLock(args.retry_lock))
                .map_err(|e| e.to_string())?;
            out.flush()
                .map_err(|e| format!("cannot write to stdout: {e}"))
        }
    }
}

fn prune_now(
    repo: &Repo,
    max_unused: &Option<String>,
    max_repack: &Option<String>,
    retry: Duration,
) -> Result<(), String> {
    let limits = PruneLimits {
        max_unused: max_unused.clone(),
        max_repack: max_repack.clone(),
    };
    let freed = repo
        .prune(&limits, RetryLock(retry))
        .map_err(|e| e.to_string())?;
    println!("pruned: {freed} bytes freed");
    Ok(())
}

/// `backup`: one image into a new snapshot.
fn backup(opening: Opening, args: &Args, cmd: &BackupCmd) -> Result<(), String> {
    let BackupCmd {
        image,
        path,
        parent,
        parent_path,
        tags,
        host,
        compression,
        ..
    } = cmd;
    let started = Instant::now();
    let (source, changed) = source_and_changes(cmd)?;
    let snapshot_path = match (path, image) {
        (Some(p), _) => p.clone(),
        (None, Some(i)) => std::path::absolute(i)
            .map_err(|e| e.to_string())?
            .display()
            .to_string(),
        (None, None) => return Err("--path is needed with --nbd and --rbd".into()),
    };
    let files = [FileSpec {
        path: snapshot_path.clone(),
        content: Content::Image {
            source: &source,
            changed: changed.as_deref(),
            parent_path: Some(parent_path.clone().unwrap_or(snapshot_path)),
        },
    }];
    let mut options = BackupOptions {
        tags: tags.clone(),
        compression: Compression::parse(compression.as_deref()).map_err(|e| e.to_string())?,
        retry_lock: args.retry_lock,
        ..BackupOptions::default()
    };
    if let Some(h) = host {
        options.hostname = h.clone();
    }
    // A live progress line on a terminal (stderr), redrawn every second.
    let live = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal()
    };
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = std::thread::scope(|s| {
        if live {
            let (progress, finished) = (options.progress.clone(), finished.clone());
            s.spawn(move || {
                use std::io::Write;
                let begun = std::time::Instant::now();
                let mut last = begun;
                let mut drawn = false;
                while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if last.elapsed() < std::time::Duration::from_secs(1) {
                        continue;
                    }
                    last = std::time::Instant::now();
                    let (done, total, _) = progress.get();
                    let line = writer::progress_line(done, total, begun.elapsed());
                    let _ = write!(std::io::stderr(), "\r\x1b[K{line}");
                    drawn = true;
                }
                if drawn {
                    let _ = write!(std::io::stderr(), "\r\x1b[K");
                }
            });
        }
        let r = writer::backup_opening(opening, &files, options, |repo, o| {
            o.parent = parent
                .as_deref()
                .map(|p| repo.find_snapshot(p).map(|(id, _)| id))
                .transpose()?;
            Ok(())
        });
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        r.map(|(_, result)| result)
    })
    .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let t = &result.total;
    if let Some(reason) = &t.full_reason {
        eprintln!("INFO: read the whole image: {reason}");
    }
    if args.json {
        let summary = serde_json::json!({
            "snapshot_id": result.snapshot_id.to_hex(),
            "size": t.size, "chunks": t.chunks, "reused_chunks": t.reused_chunks,
            "zero_chunks": t.zero_chunks, "hashed_chunks": t.hashed_chunks,
            "bytes_read": t.bytes_read, "prepared_chunks": t.prepared_chunks, "new_blobs": t.new_blobs, "added_bytes": t.added_bytes,
            "seconds": secs,
        });
        println!("{summary}");
    } else {
        println!(
            "snapshot {} saved: {} bytes in {} chunks ({} reused, {} zero, {} hashed), read {} bytes, added {} bytes in {:.2} s",
            short(&result.snapshot_id),
            t.size,
            t.chunks,
            t.reused_chunks,
            t.zero_chunks,
            t.hashed_chunks,
            t.bytes_read,
            t.added_bytes,
            secs
        );
    }
    Ok(())
}

/// The image `backup` reads and, for an incremental, its changed extents (from a bitmap, a
/// file of extents, a stock delta's clusters, or `rbd diff`).
fn source_and_changes(cmd: &BackupCmd) -> Result<(Source, Option<Vec<image::Extent>>), String> {
    let BackupCmd {
        image,
        nbd,
        format,
        bitmap,
        stock_increment,
        changed_extents,
        ..
    } = cmd;
    if let Some(spec) = &cmd.rbd {
        // `--rbd POOL/IMAGE@SNAPSHOT`: the snapshot through librbd; with --rbd-from-snap, the
        // extents `rbd diff` reports since that snapshot.
        let bad = || format!("--rbd {spec:?} is not POOL/IMAGE@SNAPSHOT");
        let (pool, rest) = spec.split_once('/').ok_or_else(bad)?;
        let (name, snapshot) = rest.split_once('@').ok_or_else(bad)?;
        let rbd = RbdImage {
            pool: pool.to_string(),
            image: name.to_string(),
            snapshot: Some(snapshot.to_string()),
            conf: cmd.ceph_conf.clone(),
            user: cmd.ceph_user.clone(),
            keyfile: cmd.ceph_keyfile.clone(),
        };
        let disk = Disk::Rbd {
            image: &rbd,
            since: cmd.rbd_from_snap.as_deref(),
        };
        let opened = backstop_image::open(disk, bitmap.as_deref()).map_err(|e| e.to_string())?;
        return Ok((opened.source, opened.changed));
    }
    let dir;
    let (disk, bitmap) = if *stock_increment {
        let path = image.as_deref().ok_or("--stock-increment needs --image")?;
        (Disk::Delta(path), bitmap.as_deref())
    } else if let Some(socket) = nbd {
        let export = Disk::Export { socket, name: "" };
        (export, bitmap.as_deref())
    } else {
        let image = image.as_deref().ok_or("give --image or --nbd")?;
        // The format is named, never guessed: a raw disk whose guest wrote a qcow2 header must
        // not be read as qcow2 (docs/security.md).
        let format = match format {
            Some(f) => Format::parse(f).ok_or(format!("--format {f:?}: give raw or qcow2"))?,
            None if nbd::is_qcow2(image)
                .map_err(|e| format!("cannot open {}: {e}", image.display()))? =>
            {
                return Err(format!(
                    "{} starts with a qcow2 header: give --format qcow2 to read it as qcow2, or --format raw to store its bytes as they are",
                    image.display()
                ));
            }
            None => Format::Raw,
        };
        // A backing file must lie beside the image.
        dir = [std::path::absolute(image)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))];
        let file = Disk::File {
            path: image,
            format,
            backing: Backing::Within(&dir),
            locking: true,
        };
        (file, bitmap.as_deref())
    };
    let opened = backstop_image::open(disk, bitmap).map_err(|e| e.to_string())?;
    // A file of extents given by hand stands for whatever the image says changed.
    let changed = changed_extents
        .as_ref()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            image::parse_dirty_map(&text).map_err(|e| format!("{}: {e}", f.display()))
        })
        .transpose()?
        .or(opened.changed);
    Ok((opened.source, changed))
}

fn short(id: &RepoId) -> String {
    id.to_hex()[..8].to_string()
}

/// Parses durations as restic's --retry-lock takes them: `90s`, `5m`, `1h30m`, `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{text:?} is not a duration like 30s, 5m or 1h30m")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 1h30m"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("{text:?} is not a duration like 30s, 5m or 1h30m"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        for (text, secs) in [
            ("0", 0),
            ("0s", 0),
            ("30s", 30),
            ("5m", 300),
            ("1h30m", 5400),
            ("2h", 7200),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["", "5", "m", "5x", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
