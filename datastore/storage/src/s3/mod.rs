//! The S3 backend: restic's layout as objects in a bucket, on any S3-compatible store.
//!
//! - **Where**: `s3:<endpoint>/<bucket>/<path>` as restic writes it; the endpoint is
//!   `http://host[:port]`, `https://host[:port]`, or a bare host (https).
//! - **Keys**: `<path>/config`, `<path>/keys/<id>`, `<path>/data/<id[0..2]>/<id>`, ...:
//!   restic's default layout, which restic uses for every new S3 repository.
//! - **Writes** are single PUTs with a Content-MD5, so the store refuses a body damaged on the
//!   way; an object appears whole or not at all, so no temporary names are needed. Packs stay
//!   far below the 5 GiB a single PUT may carry.
//! - **Client** (measured choice, docs/s3.md): requests are signed by rusty-s3, a sans-I/O
//!   SigV4 signer (presigned URLs, nothing signed by hand), and sent by ureq, a blocking HTTP
//!   client with a connection pool, on the system's OpenSSL (native-tls). Every other part of
//!   the engine is synchronous threads; an async SDK would bring a runtime for nothing.
//! - **Retries** with exponential backoff on connection failures, timeouts, 5xx, 408 and 429;
//!   never on another 4xx ([`client`]).
//! - **Bandwidth**: RESTIC_BWLIMIT, one token bucket for every connection.
//! - **Secrets**: the secret key is kept in a [`Secret`], which never prints; errors name
//!   object keys, never the signed URLs.

mod client;
mod versions;

pub use versions::{ObjectVersion, Undeleted};

use crate::RepoId;
use crate::bandwidth::Bandwidth;
use crate::{LockEntry, Storage, dir_name, max_file_size, too_large};
use bytes::Bytes;
use client::{Attempt, Client, Failure, check};
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use rusty_s3::{Bucket, S3Action, UrlStyle};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub use client::Failure as S3Failure;

/// A secret that never shows in Debug or Display output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `s3:<endpoint>/<bucket>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `scheme://host[:port]`.
    pub endpoint: String,
    pub bucket: String,
    /// The key prefix of the repository, without leading or trailing `/` (may be empty).
    pub path: String,
}

impl S3Location {
    pub fn parse(text: &str) -> Result<S3Location, crate::Error> {
        let rest = text
            .strip_prefix("s3:")
            .ok_or_else(|| crate::Error::new(format!("{text:?} is not an s3: repository")))?;
        let (scheme, rest) = if let Some(r) = rest.strip_prefix("http://") {
            ("http", r)
        } else if let Some(r) = rest.strip_prefix("https://") {
            ("https", r)
        } else {
            ("https", rest)
        };
        let mut parts = rest.split('/').filter(|p| !p.is_empty());
        let host = parts.next().unwrap_or("");
        if host.contains('@') {
            // Checked first and said without the text: every later message quotes it, and the
            // location is printed wherever the repository is named.
            return Err(crate::Error::new(
                "the s3: location holds a user name or password before its host: the \
                 keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never the URL",
            ));
        }
        let bucket = parts.next().unwrap_or("");
        let path: Vec<&str> = parts.collect();
        if host.is_empty() || bucket.is_empty() {
            return Err(crate::Error::new(format!(
                "{text:?} is not s3:<endpoint>/<bucket>[/<path>] (for example s3:http://127.0.0.1:9000/backups/22)"
            )));
        }
        if path.iter().any(|p| *p == "." || *p == "..") {
            return Err(crate::Error::new(format!(
                "{text:?}: the path may not hold . or .."
            )));
        }
        Ok(S3Location {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            path: path.join("/"),
        })
    }

    pub fn url(&self) -> String {
        if self.path.is_empty() {
            format!("s3:{}/{}", self.endpoint, self.bucket)
        } else {
            format!("s3:{}/{}/{}", self.endpoint, self.bucket, self.path)
        }
    }
}

/// How to reach and sign for the store.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// RESTIC_S3_REGION; `us-east-1` by default.
    pub region: String,
    /// Path-style URLs (`host/bucket/key`) when true; bucket host names when false; `None`
    /// decides as restic's "auto" does: bucket host names on Amazon's own endpoints only.
    pub path_style: Option<bool>,
    /// RESTIC_S3_CACERT: these CA certificates (PEM) instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// RESTIC_S3_INSECURE_TLS: no certificate check at all.
    pub insecure_tls: bool,
    /// Requests in flight at once (RESTIC_CONNECTIONS); 5 when 0.
    pub connections: usize,
    /// KiB/s for reads and writes together (RESTIC_BWLIMIT).
    pub bwlimit_kib: Option<u64>,
    /// Retries of a request that may succeed later; the first waits `first_backoff`, each next
    /// one twice as long (at most 16 s).
    pub retries: u32,
    pub first_backoff: Duration,
    /// RESTIC_S3_OBJECT_LOCK: every object written but lock files gets a retention date.
    pub object_lock: Option<ObjectLock>,
}

/// S3 Object Lock's retention modes: COMPLIANCE (nobody may shorten or remove it) and
/// GOVERNANCE (a key with the bypass right may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Compliance,
    Governance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// The retention every object backstop writes carries (docs/s3.md, "Object Lock"): `mode`
/// until `days` after it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

/// At most this many days of retention (100 years).
pub const MAX_LOCK_DAYS: u32 = 36_500;

impl ObjectLock {
    /// RESTIC_S3_OBJECT_LOCK (`COMPLIANCE` or `GOVERNANCE`, any case) and
    /// RESTIC_S3_OBJECT_LOCK_DAYS (1..=36500), which it needs.
    pub fn parse(mode: &str, days: Option<&str>) -> Result<ObjectLock, String> {
        let mode = match mode.trim().to_ascii_uppercase().as_str() {
            "COMPLIANCE" => LockMode::Compliance,
            "GOVERNANCE" => LockMode::Governance,
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!(
                    "RESTIC_S3_OBJECT_LOCK is {shown:?}, not COMPLIANCE or GOVERNANCE"
                ));
            }
        };
        let days = days
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .ok_or("RESTIC_S3_OBJECT_LOCK needs RESTIC_S3_OBJECT_LOCK_DAYS, the days each object stays locked")?;
        let days = days
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=MAX_LOCK_DAYS).contains(d))
            .ok_or_else(|| {
                let shown: String = days.chars().take(40).collect();
                format!("RESTIC_S3_OBJECT_LOCK_DAYS is {shown:?}, not a number of days from 1 to {MAX_LOCK_DAYS}")
            })?;
        Ok(ObjectLock { mode, days })
    }

    /// The retention date of an object written at `now`: `days` later, to the second, in
    /// the form S3 takes.
    pub fn until(&self, now: jiff::Timestamp) -> String {
        let until = now
            .checked_add(jiff::SignedDuration::from_hours(24 * i64::from(self.days)))
            .unwrap_or(now);
        until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            region: "us-east-1".into(),
            path_style: None,
            ca_cert: None,
            insecure_tls: false,
            connections: 5,
            bwlimit_kib: None,
            retries: 5,
            first_backoff: Duration::from_millis(500),
            object_lock: None,
        }
    }
}

impl S3Options {
    pub fn connections(&self) -> usize {
        if self.connections == 0 {
            5
        } else {
            self.connections
        }
    }
}

/// A failure to reach the store or to be let in, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// A repository in a bucket.
pub struct S3Backend {
    client: Client,
    location: S3Location,
    connections: usize,
    bandwidth: Option<Bandwidth>,
    /// Bytes of repository objects read from the store.
    read: AtomicU64,
    object_lock: Option<ObjectLock>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.location.url())
            .finish_non_exhaustive()
    }
}

/// Amazon's endpoints take bucket host names; any other store is addressed by path, as
/// restic's "auto" bucket lookup does for them.
fn url_style(loc: &S3Location, options: &S3Options) -> UrlStyle {
    let amazon = loc
        .endpoint
        .split_once("://")
        .map(|(_, h)| h.split(':').next().unwrap_or(h))
        .is_some_and(|h| h == "s3.amazonaws.com" || h.ends_with(".amazonaws.com"));
    match options.path_style {
        Some(true) => UrlStyle::Path,
        Some(false) => UrlStyle::VirtualHost,
        None if amazon && !loc.bucket.contains('.') => UrlStyle::VirtualHost,
        None => UrlStyle::Path,
    }
}

fn backend_error(e: String) -> Box<RusticError> {
    RusticError::new(ErrorKind::Backend, e)
}

impl S3Backend {
    /// Checks the keys with one listing (a wrong key or an unreachable store fails here, in
    /// one line); a missing bucket is not an error yet: `create` makes it.
    pub fn connect(loc: &S3Location, options: &S3Options) -> Result<S3Backend, ConnectError> {
        if options.access_key_id.is_empty() || options.secret_access_key.is_empty() {
            return Err(ConnectError(format!(
                "{}: the access key id and the secret access key are both needed",
                loc.url()
            )));
        }
        let endpoint: url::Url = loc
            .endpoint
            .parse()
            .map_err(|e| ConnectError(format!("{}: the endpoint is not a URL: {e}", loc.url())))?;
        let bucket = Bucket::new(
            endpoint,
            url_style(loc, options),
            loc.bucket.clone(),
            options.region.clone(),
        )
        .map_err(|e| ConnectError(format!("{}: bucket {:?}: {e}", loc.url(), loc.bucket)))?;
        let client = Client::new(bucket, options)
            .map_err(|e| ConnectError(format!("{}: {e}", loc.url())))?;
        let backend = S3Backend {
            client,
            location: loc.clone(),
            connections: options.connections(),
            bandwidth: options.bwlimit_kib.and_then(Bandwidth::kib_per_sec),
            read: AtomicU64::new(0),
            object_lock: options.object_lock,
        };
        match backend.list_page(&backend.key_dir("keys"), None, Some(1)) {
            Ok(_) | Err(Failure::NotFound { .. }) => {}
            Err(Failure::Other(e)) => {
                return Err(ConnectError(format!("{}: {e}", backend.location.url())));
            }
        }
        if backend.object_lock.is_some() && backend.lock_enabled()? == Some(false) {
            return Err(ConnectError(format!(
                "{}: RESTIC_S3_OBJECT_LOCK is set, but bucket {} has no Object Lock (a bucket gets it only when it is made: make a new one with it, or leave RESTIC_S3_OBJECT_LOCK unset)",
                backend.location.url(),
                backend.location.bucket
            )));
        }
        Ok(backend)
    }

    /// Whether the bucket has Object Lock enabled; `None` when there is no bucket yet
    /// (`create` makes it with Object Lock).
    pub fn lock_enabled(&self) -> Result<Option<bool>, ConnectError> {
        let url = self.signed(rusty_s3::Method::Get, "", &[("object-lock", "")], &[]);
        match self.get_small("read the Object Lock configuration", &url) {
            Ok(body) => Ok(Some(
                body.contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>"),
            )),
            Err(Failure::NotFound { code }) if code.as_deref() == Some("NoSuchBucket") => Ok(None),
            // No configuration: 404 ObjectLockConfigurationNotFoundError on Amazon and
            // SeaweedFS.
            Err(Failure::NotFound { .. }) => Ok(Some(false)),
            Err(f) => Err(ConnectError(format!(
                "{}: cannot read bucket {}'s Object Lock configuration: {f}",
                self.location.url(),
                self.location.bucket
            ))),
        }
    }

    /// GETs a small answer (a configuration, a retention: at most 64 KiB are read) at a
    /// presigned `url`, with the retries every request has.
    fn get_small(&self, what: &str, url: &str) -> Result<String, Failure> {
        self.client.with_retries(what, || {
            let mut resp = check(self.client.agent().get(url).call(), self.endpoint())?;
            let mut body = String::new();
            resp.body_mut()
                .as_reader()
                .take(64 * 1024)
                .read_to_string(&mut body)
                .map_err(|e| Attempt::Transient(format!("{}: {e}", self.endpoint())))?;
            Ok(body)
        })
    }

    /// A presigned URL for a request rusty-s3 has no action for (a subresource such as
    /// `?object-lock`, `?retention` or `?versions`); `key` "" is the bucket. `headers` are
    /// signed and must be sent as given.
    fn signed(
        &self,
        method: rusty_s3::Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> String {
        let creds = self.client.credentials();
        // rusty-s3 signs what it is given in order, as its own sorted maps give it.
        let mut query = query.to_vec();
        query.sort();
        let mut headers = headers.to_vec();
        headers.sort();
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            self.client.bucket.object_url(key),
            creds.key(),
            creds.secret(),
            creds.token(),
            self.client.bucket.region(),
            client::SIGNED_FOR.as_secs(),
            query.iter().copied(),
            headers.iter().copied(),
        )
        .to_string()
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// Bytes of repository objects read from the store so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Every object of the repository (key, size): what `monitor` sums.
    pub fn objects(&self) -> Result<Vec<(String, u64)>, crate::Error> {
        let prefix = if self.location.path.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.path)
        };
        Ok(self
            .list_all(&prefix)?
            .into_iter()
            .map(|(k, s, _)| (k, s))
            .collect())
    }

    /// The repositories right under this one's path: each group of keys up to the next `/`
    /// whose name `accept`s and that holds a `config` object (a datastore's `<vm_id>` and
    /// `job_<bj>` repositories when the path is its root), sorted.
    pub fn repositories(&self, accept: &dyn Fn(&str) -> bool) -> Result<Vec<String>, crate::Error> {
        let base = if self.location.path.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.path)
        };
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        loop {
            match self.list_page_grouped(&base, token.as_deref(), None, true) {
                Ok((_, page, next)) => {
                    groups.extend(page);
                    match next {
                        Some(t) if !t.is_empty() => token = Some(t),
                        _ => break,
                    }
                }
                Err(Failure::NotFound { .. }) => break,
                Err(f) => return Err(crate::Error::new(self.said("list", &base, &f))),
            }
        }
        let mut out = Vec::new();
        for group in groups {
            let Some(name) = group.strip_prefix(&base).map(|n| n.trim_end_matches('/')) else {
                continue;
            };
            if name.is_empty() || name.contains('/') || !accept(name) {
                continue;
            }
            let config = format!("{base}{name}/config");
            match self.list_page(&config, None, Some(1)) {
                Ok((items, _)) if items.iter().any(|i| i.0 == config) => out.push(name.to_string()),
                Ok(_) | Err(Failure::NotFound { .. }) => {}
                Err(f) => return Err(crate::Error::new(self.said("list", &config, &f))),
            }
        }
        out.sort();
        Ok(out)
    }

    fn throttle(&self, bytes: usize) {
        if let Some(b) = &self.bandwidth {
            b.take(bytes);
        }
    }

    fn key_dir(&self, dir: &str) -> String {
        if self.location.path.is_empty() {
            format!("{dir}/")
        } else {
            format!("{}/{dir}/", self.location.path)
        }
    }

    fn key(&self, tpe: FileType, id: &Id) -> String {
        let hex = id.to_hex();
        let prefix = if self.location.path.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.path)
        };
        match tpe {
            FileType::Config => format!("{prefix}config"),
            FileType::Pack => format!("{prefix}data/{}/{}", &hex[0..2], hex.as_str()),
            _ => format!("{prefix}{}/{}", dir_name(tpe), hex.as_str()),
        }
    }

    fn endpoint(&self) -> &str {
        &self.location.endpoint
    }

    /// Says a failure with the operation and the bucket and key.
    fn said(&self, what: &str, key: &str, f: &Failure) -> String {
        format!(
            "cannot {what} s3:{}/{}/{key}: {f}",
            self.location.endpoint, self.location.bucket
        )
    }

    /// One page of a listing: (key, size, last modified) and the token of the next page.
    #[allow(clippy::type_complexity)]
    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max: Option<usize>,
    ) -> Result<(Vec<(String, u64, Option<String>)>, Option<String>), Failure> {
        self.list_page_grouped(prefix, token, max, false)
            .map(|(items, _, next)| (items, next))
    }

    /// [`Self::list_page`], with the keys grouped at the next `/` after the prefix when
    /// `grouped` (S3's delimiter): the groups are the second list.
    #[allow(clippy::type_complexity)]
    fn list_page_grouped(
        &self,
        prefix: &str,
        token: Option<&str>,
        max: Option<usize>,
        grouped: bool,
    ) -> Result<
        (
            Vec<(String, u64, Option<String>)>,
            Vec<String>,
            Option<String>,
        ),
        Failure,
    > {
        self.client.with_retries("list", || {
            let mut action = self
                .client
                .bucket
                .list_objects_v2(Some(self.client.credentials()));
            action.with_prefix(prefix);
            if let Some(t) = token {
                action.with_continuation_token(t);
            }
            if let Some(m) = max {
                action.with_max_keys(m);
            }
            if grouped {
                action.with_delimiter("/");
            }
            let url = self.client.url(&action);
            let mut resp = check(self.client.agent().get(&url).call(), self.endpoint())?;
            let text = resp
                .body_mut()
                .with_config()
                .limit(32 << 20)
                .read_to_string()
                .map_err(|e| client::transport(e, self.endpoint()))?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|e| {
                Attempt::Final(Failure::Other(format!("the listing is not S3's XML: {e}")))
            })?;
            let items = parsed
                .contents
                .into_iter()
                .map(|c| (c.key, c.size.unwrap_or(0), c.last_modified))
                .collect();
            let groups = parsed
                .common_prefixes
                .into_iter()
                .map(|p| p.prefix)
                .collect();
            Ok((items, groups, parsed.next_continuation_token))
        })
    }

    /// Every object under `prefix` (all pages).
    fn list_all(&self, prefix: &str) -> Result<Vec<(String, u64, Option<String>)>, crate::Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            match self.list_page(prefix, token.as_deref(), None) {
                Ok((items, next)) => {
                    out.extend(items);
                    match next {
                        Some(t) if !t.is_empty() => token = Some(t),
                        _ => return Ok(out),
                    }
                }
                // No bucket: nothing in it.
                Err(Failure::NotFound { .. }) => return Ok(out),
                Err(f) => return Err(crate::Error::new(self.said("list", prefix, &f))),
            }
        }
    }

    /// GETs an object (or `range` of it), refusing more than `cap` bytes.
    fn get(&self, key: &str, range: Option<(u64, u64)>, cap: u64) -> Result<Vec<u8>, Failure> {
        if range.is_some_and(|(_, length)| length == 0) {
            return Ok(Vec::new());
        }
        let data = self.client.with_retries("read", || {
            let action = self
                .client
                .bucket
                .get_object(Some(self.client.credentials()), key);
            let url = self.client.url(&action);
            let mut req = self.client.agent().get(&url);
            if let Some((offset, length)) = range {
                req = req.header("Range", format!("bytes={offset}-{}", offset + length - 1));
            }
            let mut resp = check(req.call(), self.endpoint())?;
            let limit = range.map_or(cap, |(_, l)| l);
            if let Some(len) = resp.body().content_length()
                && len > limit
            {
                return Err(Attempt::Final(Failure::Other(
                    too_large(key, len, limit).to_string(),
                )));
            }
            let mut buf = Vec::new();
            resp.body_mut()
                .as_reader()
                .take(limit + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Attempt::Transient(format!("{}: {e}", self.endpoint())))?;
            if buf.len() as u64 > limit {
                return Err(Attempt::Final(Failure::Other(
                    too_large(key, buf.len() as u64, limit).to_string(),
                )));
            }
            if let Some((_, length)) = range
                && buf.len() as u64 != length
            {
                return Err(Attempt::Transient(format!(
                    "{}: {} bytes came of the {length} asked for",
                    self.endpoint(),
                    buf.len()
                )));
            }
            Ok(buf)
        })?;
        self.throttle(data.len());
        self.read.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// PUTs an object with its MD5, so a body damaged on the way is refused by the store.
    /// Returns the store's clock at the write (its Date header).
    /// With Object Lock, every object but a lock file (which must go when its holder ends)
    /// carries its retention date, in headers signed with the request.
    fn put(&self, key: &str, body: &[u8]) -> Result<Option<SystemTime>, Failure> {
        let md5 = openssl::hash::hash(openssl::hash::MessageDigest::md5(), body)
            .map_err(|e| Failure::Other(format!("MD5: {e}")))?;
        let md5 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, md5);
        let lock = self
            .object_lock
            .filter(|_| !key.starts_with(&self.key_dir("locks")));
        self.throttle(body.len());
        self.client.with_retries("write", || {
            let mut action = self
                .client
                .bucket
                .put_object(Some(self.client.credentials()), key);
            let until = lock.map(|l| (l.mode.as_str(), l.until(jiff::Timestamp::now())));
            if let Some((mode, until)) = &until {
                action
                    .headers_mut()
                    .insert("x-amz-object-lock-mode", mode.to_string());
                action
                    .headers_mut()
                    .insert("x-amz-object-lock-retain-until-date", until.clone());
            }
            let url = self.client.url(&action);
            let mut request = self
                .client
                .agent()
                .put(&url)
                .header("Content-MD5", &md5)
                .header("Content-Type", "application/octet-stream");
            if let Some((mode, until)) = &until {
                request = request
                    .header("x-amz-object-lock-mode", *mode)
                    .header("x-amz-object-lock-retain-until-date", until);
            }
            let resp = check(request.send(body), self.endpoint())?;
            Ok(resp
                .headers()
                .get("date")
                .and_then(|d| d.to_str().ok())
                .and_then(|d| jiff::fmt::rfc2822::parse(d).ok())
                .map(|z| SystemTime::from(z.timestamp())))
        })
    }

    fn delete(&self, key: &str) -> Result<(), Failure> {
        self.client.with_retries("remove", || {
            let action = self
                .client
                .bucket
                .delete_object(Some(self.client.credentials()), key);
            let url = self.client.url(&action);
            match check(self.client.agent().delete(&url).call(), self.endpoint()) {
                Ok(_) | Err(Attempt::Final(Failure::NotFound { .. })) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// The size of an object; `None` when there is none.
    fn head(&self, key: &str) -> Result<Option<u64>, Failure> {
        let r = self.client.with_retries("stat", || {
            let action = self
                .client
                .bucket
                .head_object(Some(self.client.credentials()), key);
            let url = self.client.url(&action);
            let resp = check(self.client.agent().head(&url).call(), self.endpoint())?;
            Ok(resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0))
        });
        match r {
            Ok(size) => Ok(Some(size)),
            Err(Failure::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes the bucket when it does not exist, as restic does.
    fn ensure_bucket(&self) -> Result<(), crate::Error> {
        let name = self.location.bucket.clone();
        let said = |f: Failure| format!("bucket {name} at {}: {f}", self.location.endpoint);
        let failed = |f: Failure| crate::Error::new(said(f));
        let exists = self.client.with_retries("stat", || {
            let action = self
                .client
                .bucket
                .head_bucket(Some(self.client.credentials()));
            let url = self.client.url(&action);
            match check(self.client.agent().head(&url).call(), self.endpoint()) {
                Ok(_) => Ok(true),
                Err(Attempt::Final(Failure::NotFound { .. })) => Ok(false),
                Err(e) => Err(e),
            }
        });
        if exists.map_err(failed)? {
            return Ok(());
        }
        let locked = self.object_lock.is_some();
        self.client
            .with_retries("create the bucket", || {
                let mut action = self.client.bucket.create_bucket(self.client.credentials());
                if locked {
                    // Object Lock is given to a bucket when it is made, never after.
                    action
                        .headers_mut()
                        .insert("x-amz-bucket-object-lock-enabled", "true");
                }
                let url = self.client.url(&action);
                let body = action.body();
                let mut request = self.client.agent().put(&url);
                if locked {
                    request = request.header("x-amz-bucket-object-lock-enabled", "true");
                }
                let resp = request.send(body.as_bytes());
                match check(resp, self.endpoint()) {
                    Ok(_) => Ok(()),
                    // Made by someone else meanwhile.
                    Err(Attempt::Final(Failure::Other(s)))
                        if s.contains("BucketAlreadyOwnedByYou") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
            .map_err(|f| crate::Error::new(format!("cannot create {}", said(f))))
    }
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        self.location.url()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            let key = self.key(tpe, &Id::default());
            return match self.head(&key) {
                Ok(Some(size)) => Ok(vec![(
                    Id::default(),
                    u32::try_from(size).unwrap_or(u32::MAX),
                )]),
                Ok(None) => Ok(Vec::new()),
                Err(f) => Err(backend_error(self.said("read", &key, &f))),
            };
        }
        let items = self
            .list_all(&self.key_dir(dir_name(tpe)))
            .map_err(|e| backend_error(e.to_string()))?;
        Ok(items
            .into_iter()
            .filter_map(|(key, size, _)| {
                let name = key.rsplit('/').next()?;
                let id = name.parse::<Id>().ok()?;
                Some((id, u32::try_from(size).unwrap_or(u32::MAX)))
            })
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let key = self.key(tpe, id);
        self.get(&key, None, max_file_size(tpe))
            .map(Bytes::from)
            .map_err(|f| backend_error(self.said("read", &key, &f)))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let key = self.key(tpe, id);
        self.get(
            &key,
            Some((u64::from(offset), u64::from(length))),
            u64::from(length),
        )
        .map(Bytes::from)
        .map_err(|f| backend_error(self.said("read", &key, &f)))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.key(tpe, id)
    }
}

impl WriteBackend for S3Backend {
    fn create(&self) -> RusticResult<()> {
        self.ensure_bucket()
            .map_err(|e| backend_error(e.to_string()))
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let key = self.key(tpe, id);
        let parts = content.slice();
        let joined;
        let body: &[u8] = if parts.len() == 1 {
            &parts[0]
        } else {
            joined = parts.concat();
            &joined
        };
        self.put(&key, body)
            .map(|_| ())
            .map_err(|f| backend_error(self.said("write", &key, &f)))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let key = self.key(tpe, id);
        self.delete(&key)
            .map_err(|f| backend_error(self.said("remove", &key, &f)))
    }
}

fn storage_error(e: String) -> crate::Error {
    crate::Error::new(e)
}

impl Storage for S3Backend {
    fn list_locks(&self) -> Result<Vec<LockEntry>, crate::Error> {
        let items = self.list_all(&self.key_dir("locks"))?;
        Ok(items
            .into_iter()
            .filter_map(|(key, size, modified)| {
                Some(LockEntry {
                    id: RepoId::parse(key.rsplit('/').next()?)?,
                    size,
                    modified: modified
                        .and_then(|m| m.parse::<jiff::Timestamp>().ok())
                        .map(SystemTime::from),
                })
            })
            .collect())
    }

    fn read_lock(&self, id: &RepoId, cap: u64) -> Result<Vec<u8>, crate::Error> {
        let key = format!("{}{}", self.key_dir("locks"), id.to_hex());
        self.get(&key, None, cap)
            .map_err(|f| storage_error(self.said("read", &key, &f)))
    }

    fn file_size(&self, tpe: FileType, id: &RepoId) -> Result<u64, crate::Error> {
        let key = self.key(tpe, &id.to_rustic());
        match self.head(&key) {
            Ok(Some(size)) => Ok(size),
            Ok(None) => Err(storage_error(format!("{key} does not exist"))),
            Err(f) => Err(storage_error(self.said("read", &key, &f))),
        }
    }

    fn write_lock(&self, id: &RepoId, sealed: &[u8]) -> Result<Option<SystemTime>, crate::Error> {
        let key = format!("{}{}", self.key_dir("locks"), id.to_hex());
        self.put(&key, sealed)
            .map_err(|f| storage_error(self.said("write", &key, &f)))
    }

    fn remove_lock(&self, id: &RepoId) -> Result<(), crate::Error> {
        let key = format!("{}{}", self.key_dir("locks"), id.to_hex());
        self.delete(&key)
            .map_err(|f| storage_error(self.said("remove", &key, &f)))
    }

    /// Objects appear whole or not at all: there are no temporary names to clean.
    fn remove_temp_files(&self) -> Result<usize, crate::Error> {
        Ok(0)
    }

    fn refresh_retention(&self) -> Result<usize, crate::Error> {
        self.retention_pass(jiff::Timestamp::now())
    }

    fn write_concurrency(&self) -> usize {
        self.connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_s3_locations() {
        let l = S3Location::parse("s3:http://127.0.0.1:18333/bkt/22").expect("http");
        assert_eq!(l.endpoint, "http://127.0.0.1:18333");
        assert_eq!(l.bucket, "bkt");
        assert_eq!(l.path, "22");
        assert_eq!(l.url(), "s3:http://127.0.0.1:18333/bkt/22");
        let l = S3Location::parse("s3:s3.amazonaws.com/bkt//a/job_3/").expect("bare host");
        assert_eq!(l.endpoint, "https://s3.amazonaws.com");
        assert_eq!(l.path, "a/job_3");
        let l = S3Location::parse("s3:https://minio:9000/bkt").expect("no path");
        assert_eq!(l.path, "");
        assert_eq!(l.url(), "s3:https://minio:9000/bkt");
        for bad in [
            "s3:",
            "s3:http://host",
            "s3:host/",
            "sftp:host:/x",
            "s3:host/bkt/../other",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
        for given in [
            "s3:https://AKIA:wJalrXUtn@minio:9000/bkt/22",
            "s3:AKIA:wJalrXUtn@minio/bkt",
            "s3:http://wJalrXUtn@minio",
        ] {
            let e = S3Location::parse(given).expect_err(given).to_string();
            assert!(
                e.starts_with("the s3: location holds a user name or password")
                    && !e.contains("wJalrXUtn"),
                "{e}"
            );
        }
    }

    #[test]
    fn amazon_gets_bucket_host_names_and_others_paths() {
        let opts = S3Options::default();
        let aws = S3Location::parse("s3:s3.amazonaws.com/bkt/1").expect("aws");
        assert!(matches!(url_style(&aws, &opts), UrlStyle::VirtualHost));
        let dotted = S3Location::parse("s3:s3.amazonaws.com/a.b/1").expect("aws");
        assert!(matches!(url_style(&dotted, &opts), UrlStyle::Path));
        let local = S3Location::parse("s3:http://127.0.0.1:18333/bkt/1").expect("local");
        assert!(matches!(url_style(&local, &opts), UrlStyle::Path));
        let forced = S3Options {
            path_style: Some(true),
            ..S3Options::default()
        };
        assert!(matches!(url_style(&aws, &forced), UrlStyle::Path));
    }

    #[test]
    fn the_secret_never_prints() {
        let opts = S3Options {
            access_key_id: "AKIA".into(),
            secret_access_key: Secret::new("very-secret-key"),
            ..S3Options::default()
        };
        assert!(!format!("{opts:?}").contains("very-secret-key"));
    }
}
