//! The repository behind a backup datastore: one per VM (`<BASE_PATH>/<vm_id>`) or per backup
//! job (`<BASE_PATH>/job_<bj>`), as OpenNebula's restic driver lays them out (driver contract §5.1), on a
//! local path, over SFTP, or in an S3 bucket (`s3:<endpoint>/<bucket>/<vm_id | job_<bj>>`).

use crate::config::DriverConfig;
use crate::location::Location;
use crate::repo::Repo;
use crate::settings::Settings;
use crate::{Error, ErrorKind};
use backstop_protocol::message::{Datastore, Image};
use backstop_storage::s3::S3Location;
use backstop_storage::sftp::SftpLocation;
use backstop_storage::{S3Keys, Storage, StorageSpec, Transport, Where};
use std::sync::Arc;

/// Which repository of a datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoTarget {
    pub location: Location,
    /// `<vm_id>` or `job_<bj>`.
    pub repo_id: String,
}

/// The repository id of a backup: the job's when the VM is in one, else the VM's.
pub fn repo_id(job_id: Option<u64>, vm_id: u64) -> String {
    match job_id {
        Some(j) => format!("job_{j}"),
        None => vm_id.to_string(),
    }
}

/// The repository id of a backup image: its job's, else its VM's (from VMS/ID or PATH).
pub fn image_repo_id(image: &Image) -> Result<String, Error> {
    if let Some(j) = image.backup_job_id {
        return Ok(format!("job_{j}"));
    }
    image.vm_id().map(|v| v.to_string()).ok_or_else(|| {
        Error::config(format!(
            "image {}: no VM id (VMS/ID) and no backup job id, so its repository is unknown",
            image.id
        ))
    })
}

/// RESTIC_PASSWORD, with one pair of surrounding quotes removed as the stock driver does.
pub fn password(ds: &Datastore) -> Result<String, Error> {
    let raw = ds.attribute("RESTIC_PASSWORD").unwrap_or_default();
    let pw = ['"', '\'']
        .iter()
        .find_map(|q| raw.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
        .unwrap_or(raw);
    if pw.is_empty() {
        return Err(Error::config(format!(
            "datastore {}: RESTIC_PASSWORD is missing",
            ds.id
        )));
    }
    Ok(pw.to_string())
}

/// Removes doubled slashes (`/var/lib/one//datastores/100` is how oned writes BASE_PATH).
pub fn clean_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if out.len() > 1 {
        out.truncate(out.trim_end_matches('/').len());
    }
    out
}

impl RepoTarget {
    pub fn new(ds: &Datastore, repo_id: String) -> Result<RepoTarget, Error> {
        Ok(RepoTarget {
            location: Location::of(ds)?,
            repo_id,
        })
    }

    /// The repository's path on the machine that holds it.
    pub fn path(&self) -> String {
        let base = match &self.location {
            Location::Local { base_path } | Location::Sftp { base_path, .. } => base_path,
            Location::S3 { .. } => return self.repo_id.clone(),
        };
        clean_path(&format!("{base}/{}", self.repo_id))
    }

    /// As restic would name it: a path, `sftp:user@server:/path` or
    /// `s3:<endpoint>/<bucket>/<repo_id>`.
    pub fn url(&self) -> String {
        match &self.location {
            Location::Sftp { user, server, .. } => format!("sftp:{user}@{server}:{}", self.path()),
            Location::S3 { endpoint, bucket } => format!("s3:{endpoint}/{bucket}/{}", self.repo_id),
            Location::Local { .. } => self.path(),
        }
    }

    /// Connects to the storage (nothing is read yet).
    pub fn storage(&self, ds: &Datastore, cfg: &DriverConfig) -> Result<Arc<dyn Storage>, Error> {
        connect(&self.spec(ds, cfg)?).map_err(|e| repository_error(ds, e))
    }

    /// How to reach the storage; every attribute is checked here, once, whatever the action
    /// uses.
    fn spec(&self, ds: &Datastore, cfg: &DriverConfig) -> Result<StorageSpec, Error> {
        let settings = Settings::of(ds)?;
        let at = match &self.location {
            Location::Local { .. } => Where::Local(self.path().into()),
            Location::Sftp { user, server, .. } => Where::Sftp(SftpLocation {
                user: Some(user.clone()),
                host: server.clone(),
                path: self.path(),
            }),
            Location::S3 { .. } => {
                Where::S3(S3Location::parse(&self.url()).map_err(|e| repository_error(ds, e))?)
            }
        };
        Ok(StorageSpec {
            at,
            transport: transport(&settings, cfg, settings.connections.unwrap_or(0))?,
            cache_dir: settings.cache_dir.clone(),
        })
    }

    /// Whether the storage holds a repository (a config file).
    pub fn exists(&self, storage: &Arc<dyn Storage>) -> Result<bool, Error> {
        Ok(holds_repository(storage, &self.url())?)
    }

    /// Opens the repository; with `create` (a writer: a sync job's destination), makes it
    /// first when it does not exist yet, and gives it the escrow key BACKSTOP_ESCROW_RECIPIENTS
    /// asks for when it has none.
    pub fn open(&self, ds: &Datastore, cfg: &DriverConfig, create: bool) -> Result<Repo, Error> {
        let pw = password(ds)?;
        let storage = self.storage(ds, cfg)?;
        let repo = match (self.exists(&storage)?, create) {
            (true, _) => Repo::open(storage.clone(), &pw)?,
            (false, true) => Repo::init(storage.clone(), &pw)?,
            (false, false) => {
                return Err(Error::new(
                    ErrorKind::Repository,
                    format!("there is no repository at {}", self.url()),
                ));
            }
        };
        if create {
            ensure_escrow(ds, &storage, Some(&repo))?;
        }
        Ok(repo)
    }
}

/// With BACKSTOP_ESCROW_RECIPIENTS, gives the repository on `storage` an escrow key sealed to
/// them unless it has one (docs/escrow.md), opening it with the datastore's password when
/// `opened` is None; whether a key was added. Only an escrow key the repository's master key
/// made counts, so one planted by whoever can write the storage does not stop the real one
/// being added: checking costs opening the repository (one key derivation) and a read of
/// each key file.
pub fn ensure_escrow(
    ds: &Datastore,
    storage: &Arc<dyn Storage>,
    opened: Option<&Repo>,
) -> Result<bool, Error> {
    let Some(recipients) = Settings::of(ds)?.escrow else {
        return Ok(false);
    };
    let owned;
    let repo = match opened {
        Some(r) => r,
        None => {
            owned = Repo::open(storage.clone(), &password(ds)?)?;
            &owned
        }
    };
    repo.add_escrow(&recipients)
        .map(|added| added.is_some())
        .map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("datastore {}: cannot add the escrow key: {e}", ds.id),
            )
        })
}

/// How the datastore's attributes say to reach its storage, with `connections` at once.
fn transport(
    settings: &Settings,
    cfg: &DriverConfig,
    connections: usize,
) -> Result<Transport, Error> {
    Ok(Transport {
        connections,
        bwlimit_kib: settings.bwlimit_kib,
        ssh_config: cfg.ssh_config.clone(),
        host_fingerprint: settings.host_fingerprint.clone(),
        s3: settings.s3.as_ref().map(|access| S3Keys {
            access_key_id: access.access_key_id.clone(),
            secret_access_key: access.secret_access_key.clone(),
            region: access.region.clone(),
            path_style: access.force_path_style.then_some(true),
            ca_cert: access.ca_cert.clone(),
            insecure_tls: access.insecure_tls,
            object_lock: access.object_lock,
        }),
    })
}

fn repository_error(ds: &Datastore, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Repository, format!("datastore {}: {e}", ds.id))
}

/// The place that holds a datastore's repositories (its BASE_PATH, or its bucket), and how to
/// reach it.
pub fn base(ds: &Datastore, cfg: &DriverConfig) -> Result<(Where, Transport), Error> {
    let location = Location::of(ds)?;
    let at = match &location {
        // A local path needs nothing else of the datastore's attributes: listing it does not
        // check them (a bad one is said by the action that uses it).
        Location::Local { base_path } => {
            return Ok((Where::Local(base_path.into()), Transport::default()));
        }
        Location::Sftp {
            user,
            server,
            base_path,
        } => Where::Sftp(SftpLocation {
            user: Some(user.clone()),
            host: server.clone(),
            path: clean_path(base_path),
        }),
        Location::S3 { endpoint, bucket } => Where::S3(
            S3Location::parse(&format!("s3:{endpoint}/{bucket}"))
                .map_err(|e| repository_error(ds, e))?,
        ),
    };
    let settings = Settings::of(ds)?;
    // One session is enough to list a directory.
    let connections = match location {
        Location::Sftp { .. } => 1,
        _ => settings.connections.unwrap_or(0),
    };
    Ok((at, transport(&settings, cfg, connections)?))
}

impl RepoTarget {
    /// Starts opening an existing repository on a thread of its own (connecting and the key
    /// derivation take a while; the derivation is slow by design); a backup reads its disks
    /// meanwhile (`writer::backup_opening`). The datastore's attributes are checked at once;
    /// a storage that cannot be reached, or holds no repository, is said when the repository
    /// is waited for.
    pub fn open_in_background(
        &self,
        ds: &Datastore,
        cfg: &DriverConfig,
    ) -> Result<crate::repo::Opening, Error> {
        let pw = password(ds)?;
        let spec = self.spec(ds, cfg)?;
        let (url, id) = (self.url(), ds.id);
        Ok(crate::repo::Opening::spawn(move || {
            let storage = connect(&spec).map_err(|e| {
                crate::repo::Error::new(
                    crate::repo::ErrorKind::Repository,
                    format!("datastore {id}: {e}"),
                )
            })?;
            if !holds_repository(&storage, &url)? {
                return Err(crate::repo::Error::new(
                    crate::repo::ErrorKind::Repository,
                    format!("there is no repository at {url}"),
                ));
            }
            Repo::open(storage, &pw)
        }))
    }
}

/// Connects to the storage `spec` names, saying what the cache does on the action's log.
fn connect(spec: &StorageSpec) -> Result<Arc<dyn Storage>, backstop_storage::Error> {
    backstop_storage::open(spec, &mut |line| {
        backstop_protocol::output::log(backstop_protocol::output::Level::Info, line)
    })
}

/// Whether `storage` (the repository at `url`) holds a repository: a config file.
fn holds_repository(storage: &Arc<dyn Storage>, url: &str) -> Result<bool, crate::repo::Error> {
    storage
        .list(crate::repo::FileType::Config)
        .map(|c| !c.is_empty())
        .map_err(|e| {
            crate::repo::Error::new(
                crate::repo::ErrorKind::Repository,
                format!("cannot read the repository at {url}: {e}"),
            )
        })
}

/// Whether `name` is a repository name of a datastore: `<vm_id>` or `job_<bj>`, the numbers
/// written as oned writes them (no sign, no leading zero).
pub fn is_repository_name(name: &str) -> bool {
    let number = name.strip_prefix("job_").unwrap_or(name);
    number.parse::<u64>().is_ok_and(|n| n.to_string() == number)
}

/// Every repository of a datastore (`<vm_id>`, `job_<bj>` under its BASE_PATH or in its
/// bucket), sorted; a directory or prefix of another name, or without a `config`, is not one.
pub fn repositories(ds: &Datastore, cfg: &DriverConfig) -> Result<Vec<String>, Error> {
    let (at, transport) = base(ds, cfg)?;
    let mut names = backstop_storage::connect(&at, &transport)
        .and_then(|base| base.repositories(&is_repository_name))
        .map_err(|e| {
            Error::new(
                ErrorKind::Repository,
                format!("datastore {}: cannot list its repositories: {e}", ds.id),
            )
        })?;
    names.sort();
    Ok(names)
}

/// Opens an existing repository for an action that reads or forgets.
pub fn open_repo(ds: &Datastore, repo_id: String, cfg: &DriverConfig) -> Result<Repo, Error> {
    RepoTarget::new(ds, repo_id)?.open(ds, cfg, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            clean_path("/var/lib/one//datastores/100/22"),
            "/var/lib/one/datastores/100/22"
        );
        assert_eq!(clean_path("/a/b/"), "/a/b");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(repo_id(Some(3), 22), "job_3");
        assert_eq!(repo_id(None, 22), "22");
        for (name, is) in [
            ("22", true),
            ("job_3", true),
            ("0", true),
            ("022", false),
            ("job_", false),
            ("job_03", false),
            ("+2", false),
            ("lost+found", false),
            ("22.tmp", false),
            ("job_x", false),
        ] {
            assert_eq!(is_repository_name(name), is, "{name}");
        }
    }

    /// Listing needs only where the repositories are: another attribute that is wrong (here
    /// the compression) is said by the action that uses it, not by the listing.
    #[test]
    fn a_local_datastore_lists_its_repositories_whatever_its_other_attributes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, config) in [
            ("22", true),
            ("job_3", true),
            ("lost+found", true),
            ("7", false),
        ] {
            let repo = dir.path().join(name);
            std::fs::create_dir_all(&repo).expect("dir");
            if config {
                std::fs::write(repo.join("config"), b"x").expect("config");
            }
        }
        let ds = Datastore {
            id: 100,
            name: "b".into(),
            ds_mad: "backstop".into(),
            tm_mad: "-".into(),
            base_path: dir.path().display().to_string(),
            type_code: Some(3),
            template: backstop_protocol::template::Template::parse(
                "RESTIC_PASSWORD=x\nRESTIC_COMPRESSION=fast\n",
            )
            .expect("template"),
        };
        assert!(Settings::of(&ds).is_err(), "the compression is wrong");
        let cfg = DriverConfig::load(&dir.path().join("remotes")).expect("config");
        assert_eq!(
            repositories(&ds, &cfg).expect("list"),
            ["22".to_string(), "job_3".to_string()]
        );
    }
}
