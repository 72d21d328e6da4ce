//! Opening storage: the one place a transport is chosen and connected.
//!
//! A [`StorageSpec`] says where the files are ([`Where`]: a local path, `sftp:` or `s3:`) and
//! how to reach them ([`Transport`]: connections, bandwidth, the ssh client configuration and a
//! pinned host key, the S3 keys). [`connect`] makes the transport; [`open`] also puts the
//! metadata cache in front of a remote one. The datastore driver and `backstop repo` both come
//! here; neither builds a backend of its own.

use crate::Error;
use crate::Storage;
use crate::cache::CachedStorage;
use crate::local::LocalBackend;
use crate::s3::{S3Backend, S3Location, S3Options, Secret};
use crate::sftp::{SftpBackend, SftpLocation, SftpOptions};
use std::path::PathBuf;
use std::sync::Arc;

/// Where a repository's files are (or, for [`Connected::repositories`], where several are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    Local(PathBuf),
    Sftp(SftpLocation),
    S3(S3Location),
}

impl Where {
    /// As restic names a repository: a path, `sftp:[user@]host:/path` or
    /// `s3:<endpoint>/<bucket>[/<path>]`.
    pub fn parse(url: &str) -> Result<Where, Error> {
        if url.starts_with("sftp:") {
            SftpLocation::parse(url).map(Where::Sftp)
        } else if url.starts_with("s3:") {
            S3Location::parse(url).map(Where::S3)
        } else {
            Ok(Where::Local(PathBuf::from(url)))
        }
    }
}

/// The keys and TLS settings of an S3 store. The secret key never prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub region: String,
    /// Path-style URLs when `Some(true)`; `None` decides as restic's "auto" does.
    pub path_style: Option<bool>,
    pub ca_cert: Option<PathBuf>,
    pub insecure_tls: bool,
    /// RESTIC_S3_OBJECT_LOCK with its days (docs/s3.md, "Object Lock").
    pub object_lock: Option<crate::s3::ObjectLock>,
}

/// How to reach the storage.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Connections (SFTP sessions, S3 requests) at once; 0 is each transport's default (SFTP:
    /// 5, at most one per CPU; S3: 5).
    pub connections: usize,
    /// KiB/s for reads and writes together.
    pub bwlimit_kib: Option<u64>,
    /// The OpenSSH client configuration; `~/.ssh/config` when `None`.
    pub ssh_config: Option<PathBuf>,
    /// A pinned SFTP host key fingerprint, `SHA256:<base64>`.
    pub host_fingerprint: Option<String>,
    /// Needed for `s3:`.
    pub s3: Option<S3Keys>,
}

/// A repository's storage, and the directory of its metadata cache (`None`: no cache; a local
/// path is never cached).
#[derive(Debug, Clone)]
pub struct StorageSpec {
    pub at: Where,
    pub transport: Transport,
    pub cache_dir: Option<PathBuf>,
}

/// A connected transport, before it is used as one repository's storage.
#[derive(Debug)]
pub enum Connected {
    Local(LocalBackend),
    Sftp(SftpBackend),
    S3(Box<S3Backend>),
}

impl Connected {
    /// The repositories directly below this location whose names `accept` takes (each must
    /// hold a `config` file).
    pub fn repositories(&self, accept: &dyn Fn(&str) -> bool) -> Result<Vec<String>, Error> {
        match self {
            Connected::Local(local) => local
                .repositories(accept)
                .map_err(|e| Error::io(local.root().display().to_string(), e)),
            Connected::Sftp(sftp) => sftp.repositories(accept),
            Connected::S3(s3) => s3.repositories(accept),
        }
    }

    pub fn into_storage(self) -> Arc<dyn Storage> {
        match self {
            Connected::Local(local) => Arc::new(local),
            Connected::Sftp(sftp) => Arc::new(sftp),
            Connected::S3(s3) => Arc::new(*s3),
        }
    }
}

/// Connects to the storage at `at` (nothing of a repository is read yet).
pub fn connect(at: &Where, transport: &Transport) -> Result<Connected, Error> {
    match at {
        Where::Local(path) => Ok(Connected::Local(
            LocalBackend::new(path.clone()).with_bandwidth(transport.bwlimit_kib),
        )),
        Where::Sftp(loc) => {
            let options = SftpOptions {
                connections: transport.connections,
                bwlimit_kib: transport.bwlimit_kib,
                ssh_config: transport.ssh_config.clone(),
                host_fingerprint: transport.host_fingerprint.clone(),
            };
            SftpBackend::connect(loc, &options)
                .map(Connected::Sftp)
                .map_err(|e| Error::new(e.0))
        }
        Where::S3(loc) => {
            let keys = transport
                .s3
                .as_ref()
                .ok_or_else(|| Error::new(format!("{}: no S3 keys were given", loc.url())))?;
            let options = S3Options {
                access_key_id: keys.access_key_id.clone(),
                secret_access_key: keys.secret_access_key.clone(),
                region: keys.region.clone(),
                path_style: keys.path_style,
                ca_cert: keys.ca_cert.clone(),
                insecure_tls: keys.insecure_tls,
                object_lock: keys.object_lock,
                connections: transport.connections,
                bwlimit_kib: transport.bwlimit_kib,
                ..S3Options::default()
            };
            S3Backend::connect(loc, &options)
                .map(|s3| Connected::S3(Box::new(s3)))
                .map_err(|e| Error::new(e.0))
        }
    }
}

/// Opens a repository's storage: the transport, behind the metadata cache when it is remote
/// and a cache directory is given. A cache that cannot be made is only a lost speed-up: it is
/// said through `note` and the storage is used without one.
pub fn open(spec: &StorageSpec, note: &mut dyn FnMut(&str)) -> Result<Arc<dyn Storage>, Error> {
    let connected = connect(&spec.at, &spec.transport)?;
    let remote = !matches!(connected, Connected::Local(_));
    let storage = connected.into_storage();
    let Some(dir) = spec.cache_dir.as_ref().filter(|_| remote) else {
        return Ok(storage);
    };
    match CachedStorage::new(storage.clone(), dir) {
        Ok(cached) => Ok(Arc::new(cached)),
        Err(e) => {
            note(&format!(
                "no metadata cache: cannot create {}: {e}",
                dir.display()
            ));
            Ok(storage)
        }
    }
}
