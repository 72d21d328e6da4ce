//! A versioned bucket's history (docs/s3.md, "Object Lock"): the versions and delete markers
//! of a repository's objects, their retention, and putting a repository back to what it held
//! at a time (`backstop repo undelete`): delete markers made since are removed, objects
//! overwritten since get their old version back (a copy of it), objects made since are hidden
//! behind a delete marker. No version is ever removed, so an undelete can itself be undone.

use super::S3Backend;
use super::client::{Failure, check};

/// One version (or delete marker) of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub latest: bool,
    /// A delete marker, not data.
    pub delete_marker: bool,
    pub last_modified: jiff::Timestamp,
    pub size: u64,
    /// The store's ETag (quotes and all), to tell two versions' contents apart.
    pub etag: String,
}

/// What [`S3Backend::undelete`] did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Undeleted {
    /// Objects whose delete marker(s) made after the time were removed.
    pub uncovered: usize,
    /// Objects overwritten after the time whose old version was copied back.
    pub restored: usize,
    /// Objects made after the time, hidden behind a delete marker.
    pub hidden: usize,
    /// Objects already as they were.
    pub unchanged: usize,
    /// Key files made since, left as they are: hiding one could lock the datastore's own
    /// password out (a password change made since).
    pub keys_kept: usize,
}

/// At most this many versions are read, in at most this many pages of at most this many
/// entries (S3's own page size): a hostile store could list forever.
const MAX_VERSIONS: usize = 1_000_000;
const MAX_PAGES: usize = 10_000;
const MAX_PAGE_ENTRIES: usize = 1_000;

/// The name, beside `config`, of the record of the last retention pass.
pub const RETENTION_RECORD: &str = "backstop-retention";

/// Text from the store, as an error may show it: control characters replaced, cut short.
fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(120)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 120 {
        out.push_str("...");
    }
    out
}

/// The text of `<name>...</name>` inside `block`, XML entities decoded; None when absent.
fn field(block: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = block.find(&open)? + open.len();
    let end = block[start..].find(&close)? + start;
    Some(unescape(&block[start..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The `<tag>...</tag>` blocks of a listing, in order, with their tag: one pass over the
/// text (a block's end is looked for from its start only).
fn blocks<'a>(text: &'a str, tags: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find('<') {
        let start = at + i;
        let rest = &text[start + 1..];
        let tag = tags
            .iter()
            .find(|t| rest.starts_with(**t) && rest[t.len()..].starts_with('>'));
        let Some(tag) = tag else {
            at = start + 1;
            continue;
        };
        let body = start + tag.len() + 2;
        let close = format!("</{tag}>");
        let Some(len) = text[body..].find(&close) else {
            break;
        };
        out.push((*tag, &text[body..body + len]));
        at = body + len + close.len();
    }
    out
}

/// Where the next page of a version listing starts: key and version id markers.
type NextPage = Option<(String, String)>;

/// One page of `ListObjectVersions`: the versions and where the next page starts.
fn parse_versions(text: &str) -> Result<(Vec<ObjectVersion>, NextPage), String> {
    if !text.contains("<ListVersionsResult") {
        return Err("the version listing is not S3's XML".into());
    }
    let found = blocks(text, &["Version", "DeleteMarker"]);
    if found.len() > MAX_PAGE_ENTRIES {
        return Err(format!(
            "the store listed {} versions in one page (S3 gives at most {MAX_PAGE_ENTRIES})",
            found.len()
        ));
    }
    let mut out = Vec::new();
    for (tag, block) in found {
        let key = field(block, "Key").ok_or("a version without a key")?;
        let version_id = field(block, "VersionId").ok_or("a version without an id")?;
        let last_modified = field(block, "LastModified")
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .ok_or_else(|| {
                format!(
                    "version {} of {} has no time",
                    shown(&version_id),
                    shown(&key)
                )
            })?;
        out.push(ObjectVersion {
            latest: field(block, "IsLatest").as_deref() == Some("true"),
            delete_marker: tag == "DeleteMarker",
            size: field(block, "Size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            etag: field(block, "ETag").unwrap_or_default(),
            key,
            version_id,
            last_modified,
        });
    }
    if field(text, "IsTruncated").as_deref() != Some("true") {
        return Ok((out, None));
    }
    match (field(text, "NextKeyMarker"), field(text, "NextVersionIdMarker")) {
        (Some(k), Some(v)) if !k.is_empty() => Ok((out, Some((k, v)))),
        _ => Err("the version listing goes on but does not say where (no NextKeyMarker and NextVersionIdMarker)".into()),
    }
}

impl S3Backend {
    /// Every version and delete marker of the repository's objects (all pages), as the
    /// store lists them: per key, newest first.
    pub fn versions(&self) -> Result<Vec<ObjectVersion>, crate::Error> {
        let prefix = self.prefix();
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        let mut seen = std::collections::HashSet::new();
        let mut listed = 0usize;
        for _ in 0..MAX_PAGES {
            let mut query: Vec<(&str, &str)> = vec![("versions", ""), ("prefix", &prefix)];
            if let Some((k, v)) = &marker {
                query.push(("key-marker", k));
                if !v.is_empty() {
                    query.push(("version-id-marker", v));
                }
            }
            let url = self.signed(rusty_s3::Method::Get, "", &query, &[]);
            let text = self
                .client
                .with_retries("list versions", || {
                    let mut resp = check(self.client.agent().get(&url).call(), self.endpoint())?;
                    resp.body_mut()
                        .with_config()
                        .limit(32 << 20)
                        .read_to_string()
                        .map_err(|e| super::client::transport(e, self.endpoint()))
                })
                .map_err(|f| crate::Error::new(self.said("list the versions of", &prefix, &f)))?;
            let (page, next) = parse_versions(&text)
                .map_err(|e| crate::Error::new(format!("{}: {e}", self.location.url())))?;
            listed += page.len();
            if listed > MAX_VERSIONS {
                return Err(crate::Error::new(format!(
                    "{}: more than {MAX_VERSIONS} object versions",
                    self.location.url()
                )));
            }
            out.extend(page.into_iter().filter(|v| v.key.starts_with(&prefix)));
            match next {
                None => return Ok(out),
                Some(n) => {
                    if !seen.insert(n.clone()) {
                        return Err(crate::Error::new(format!(
                            "{}: the version listing goes round in a circle",
                            self.location.url()
                        )));
                    }
                    marker = Some(n);
                }
            }
        }
        Err(crate::Error::new(format!(
            "{}: the version listing has more than {MAX_PAGES} pages",
            self.location.url()
        )))
    }

    /// An object version's retention: (mode, until), or None when it has none.
    pub fn retention(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<(String, jiff::Timestamp)>, crate::Error> {
        let mut query = vec![("retention", "")];
        if let Some(v) = version_id {
            query.push(("versionId", v));
        }
        let url = self.signed(rusty_s3::Method::Get, key, &query, &[]);
        match self.get_small("read the retention of", &url) {
            Ok(body) => {
                let mode = field(&body, "Mode");
                let until = field(&body, "RetainUntilDate").and_then(|t| t.parse().ok());
                Ok(mode.zip(until))
            }
            Err(Failure::NotFound { code })
                if code.as_deref() == Some("NoSuchObjectLockConfiguration") =>
            {
                Ok(None)
            }
            Err(f) => Err(crate::Error::new(self.said(
                "read the retention of",
                key,
                &f,
            ))),
        }
    }

    /// Writes an object at `key` (with this repository's retention, if it has one), as every
    /// repository file is written.
    pub fn put_object(&self, key: &str, body: &[u8]) -> Result<(), crate::Error> {
        self.put(key, body)
            .map(|_| ())
            .map_err(|f| crate::Error::new(self.said("write", key, &f)))
    }

    /// Deletes `key` as a repository file is deleted: in a versioned bucket, a delete marker.
    pub fn remove_object(&self, key: &str) -> Result<(), crate::Error> {
        self.delete(key)
            .map_err(|f| crate::Error::new(self.said("remove", key, &f)))
    }

    /// The object beside the repository's files that records when the last retention pass
    /// ran (`{"pass": "<RFC 3339>"}`); not one of restic's file types, so restic never lists it.
    fn pass_record(&self) -> String {
        format!("{}{RETENTION_RECORD}", self.prefix())
    }

    /// The repository's objects' common prefix: `<path>/`, or nothing at a bucket's root.
    fn prefix(&self) -> String {
        if self.location.path.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.path)
        }
    }

    /// With Object Lock: when the last pass is a quarter of the period old (or unknown), every
    /// object the repository holds now but lock files gets its retention set to the full period
    /// from `now`; then the pass is recorded. Objects written since the last pass carry their
    /// own date from their write. How many objects it extended.
    pub fn retention_pass(&self, now: jiff::Timestamp) -> Result<usize, crate::Error> {
        let Some(lock) = self.object_lock else {
            return Ok(0);
        };
        let record = self.pass_record();
        let period = jiff::SignedDuration::from_hours(24 * i64::from(lock.days));
        let last = match self.get(&record, None, 4096) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("pass")?.as_str()?.parse::<jiff::Timestamp>().ok()),
            Err(Failure::NotFound { .. }) => None,
            Err(f) => return Err(crate::Error::new(self.said("read", &record, &f))),
        };
        if let Some(last) = last
            && last <= now
            && now.duration_since(last) < period / 4
        {
            return Ok(0);
        }
        let until = lock.until(now);
        let locks = self.key_dir("locks");
        let prefix = self.prefix();
        let mut extended = 0;
        for (key, _, _) in self.list_all(&prefix)? {
            if key.starts_with(&locks) || key == record {
                continue;
            }
            self.put_retention(&key, lock.mode.as_str(), &until)?;
            extended += 1;
        }
        let text = serde_json::json!({"pass": now.to_string(), "until": until}).to_string();
        self.put(&record, text.as_bytes())
            .map_err(|f| crate::Error::new(self.said("write", &record, &f)))?;
        Ok(extended)
    }

    /// Sets `key`'s retention to `mode` until `until` (S3's form). A store that refuses
    /// because the date it holds is later (retention only grows) is fine; any other refusal
    /// is the error.
    fn put_retention(&self, key: &str, mode: &str, until: &str) -> Result<(), crate::Error> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>"
        );
        let md5 = openssl::hash::hash(openssl::hash::MessageDigest::md5(), body.as_bytes())
            .map_err(|e| crate::Error::new(format!("MD5: {e}")))?;
        let md5 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, md5);
        let url = self.signed(rusty_s3::Method::Put, key, &[("retention", "")], &[]);
        let put = self.client.with_retries("extend the retention of", || {
            check(
                self.client
                    .agent()
                    .put(&url)
                    .header("Content-MD5", &md5)
                    .header("Content-Type", "application/xml")
                    .send(body.as_bytes()),
                self.endpoint(),
            )
            .map(|_| ())
        });
        match put {
            Ok(()) => Ok(()),
            Err(f) => {
                let wanted = until.parse::<jiff::Timestamp>().ok();
                match (self.retention(key, None), wanted) {
                    (Ok(Some((_, held))), Some(wanted)) if held >= wanted => Ok(()),
                    _ => Err(crate::Error::new(self.said(
                        "extend the retention of",
                        key,
                        &f,
                    ))),
                }
            }
        }
    }

    /// Removes one version (a delete marker, or data whose retention has passed).
    pub fn delete_version(&self, key: &str, version_id: &str) -> Result<(), crate::Error> {
        let url = self.signed(
            rusty_s3::Method::Delete,
            key,
            &[("versionId", version_id)],
            &[],
        );
        self.client
            .with_retries("remove a version of", || {
                check(self.client.agent().delete(&url).call(), self.endpoint()).map(|_| ())
            })
            .map_err(|f| crate::Error::new(self.said("remove a version of", key, &f)))
    }

    /// Makes `version_id` of `key` its newest version again, by a copy inside the store (with
    /// this repository's retention, if it has one).
    fn copy_back(&self, key: &str, version_id: &str) -> Result<(), crate::Error> {
        let source = format!("/{}/{}?versionId={}", self.location.bucket, key, version_id);
        // The repository's retention when it was given, else the old version's own (a copy
        // does not inherit it), while it lasts.
        let now = jiff::Timestamp::now();
        let until: Option<(String, String)> = match self.object_lock {
            Some(l) => Some((l.mode.as_str().to_string(), l.until(now))),
            None => self
                .retention(key, Some(version_id))?
                .filter(|(_, until)| *until > now)
                .map(|(mode, until)| (mode, until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())),
        };
        let mut headers: Vec<(&str, &str)> = vec![("x-amz-copy-source", &source)];
        if let Some((mode, until)) = &until {
            headers.push(("x-amz-object-lock-mode", mode));
            headers.push(("x-amz-object-lock-retain-until-date", until));
        }
        let url = self.signed(rusty_s3::Method::Put, key, &[], &headers);
        self.client
            .with_retries("copy back", || {
                let mut request = self.client.agent().put(&url);
                for (name, value) in &headers {
                    request = request.header(*name, *value);
                }
                check(request.send_empty(), self.endpoint()).map(|_| ())
            })
            .map_err(|f| crate::Error::new(self.said("copy back an old version of", key, &f)))
    }

    /// Puts the repository back to what it held before `before`: what [`Undeleted`] says,
    /// done unless `dry`. Refused where no version of a `config` is (not one repository: a
    /// bucket's root or a parent prefix would touch every repository under it) and while a
    /// lock file is there (a backup or prune going on would lose what it writes). Lock files
    /// are left alone; key files made since are kept.
    pub fn undelete(&self, before: jiff::Timestamp, dry: bool) -> Result<Undeleted, crate::Error> {
        let locks = self.key_dir("locks");
        let keys = self.key_dir("keys");
        let config = self.key(rustic_core::FileType::Config, &rustic_core::Id::default());
        let mut by_key: std::collections::BTreeMap<String, Vec<ObjectVersion>> =
            std::collections::BTreeMap::new();
        let mut held = 0;
        for v in self.versions()? {
            if v.key.starts_with(&locks) {
                held += usize::from(v.latest && !v.delete_marker);
            } else {
                by_key.entry(v.key.clone()).or_default().push(v);
            }
        }
        if !by_key.contains_key(&config) {
            return Err(crate::Error::new(format!(
                "{}: no version of a repository's config is there: undelete works on one repository (s3:<endpoint>/<bucket>/<its path>)",
                self.location.url()
            )));
        }
        if held > 0 {
            return Err(crate::Error::new(format!(
                "{}: {held} lock file(s) are there: stop what uses the repository; if nothing does (an attacker may have left them), remove them with `backstop repo unlock --remove-all` and undelete again",
                self.location.url()
            )));
        }
        let hide = |key: &str| -> Result<(), crate::Error> {
            if dry {
                return Ok(());
            }
            self.delete(key)
                .map_err(|f| crate::Error::new(self.said("hide", key, &f)))
        };
        let mut done = Undeleted::default();
        for (key, mut versions) in by_key {
            // Newest first; a version's order among equal times is the store's.
            versions.sort_by_key(|v| std::cmp::Reverse(v.last_modified));
            let Some(latest) = versions.iter().find(|v| v.latest).or(versions.first()) else {
                continue;
            };
            let then = versions.iter().find(|v| v.last_modified < before);
            let is_key = key.starts_with(&keys);
            match then {
                // It did not exist then (or was deleted): hidden, if it shows now; key files
                // are kept.
                None
                | Some(ObjectVersion {
                    delete_marker: true,
                    ..
                }) => {
                    if latest.delete_marker {
                        done.unchanged += 1;
                    } else if is_key {
                        done.keys_kept += 1;
                    } else {
                        done.hidden += 1;
                        hide(&key)?;
                    }
                }
                Some(v) if v.version_id == latest.version_id => done.unchanged += 1,
                // An earlier undelete copied it back already.
                Some(v)
                    if !latest.delete_marker
                        && !v.etag.is_empty()
                        && latest.etag == v.etag
                        && latest.size == v.size =>
                {
                    done.unchanged += 1
                }
                Some(v) => {
                    // Everything listed before it (newest first, the store's order kept
                    // among equal times) came after it.
                    let at = versions
                        .iter()
                        .position(|x| x.version_id == v.version_id)
                        .unwrap_or(0);
                    let newer = &versions[..at];
                    if newer.iter().all(|n| n.delete_marker) {
                        done.uncovered += 1;
                        if !dry {
                            for m in newer {
                                self.delete_version(&key, &m.version_id)?;
                            }
                        }
                    } else {
                        done.restored += 1;
                        if !dry {
                            self.copy_back(&key, &v.version_id)?;
                        }
                    }
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_listings_are_read_with_their_markers() {
        let text = "<?xml version=\"1.0\"?><ListVersionsResult><Name>b</Name><IsTruncated>true</IsTruncated>\
            <NextKeyMarker>r/keys/a</NextKeyMarker><NextVersionIdMarker>v2</NextVersionIdMarker>\
            <DeleteMarker><Key>r/data/00/x&amp;y</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest>\
            <LastModified>2026-12-07T18:00:00.000Z</LastModified></DeleteMarker>\
            <Version><Key>r/data/00/x&amp;y</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest>\
            <LastModified>2026-12-07T17:00:00.000Z</LastModified><Size>42</Size></Version>\
            </ListVersionsResult>";
        let (v, next) = parse_versions(text).expect("parse");
        assert_eq!(v.len(), 2);
        assert!(v[0].delete_marker && v[0].latest && v[0].key == "r/data/00/x&y");
        assert!(!v[1].delete_marker && !v[1].latest && v[1].size == 42);
        assert_eq!(next, Some(("r/keys/a".into(), "v2".into())));
        assert!(parse_versions("<html/>").is_err());
        // A page that goes on without saying where: an error, not an end.
        let cut = "<ListVersionsResult><IsTruncated>true</IsTruncated></ListVersionsResult>";
        assert!(parse_versions(cut).is_err());
        // More entries than S3 puts in a page.
        let many = format!(
            "<ListVersionsResult>{}</ListVersionsResult>",
            "<DeleteMarker><Key>k</Key><VersionId>v</VersionId><LastModified>2026-12-07T18:00:00Z</LastModified></DeleteMarker>"
                .repeat(1001)
        );
        assert!(
            parse_versions(&many)
                .expect_err("too many")
                .contains("1001 versions in one page")
        );
        let bad = "<ListVersionsResult><Version><Key>k</Key></Version></ListVersionsResult>";
        assert!(parse_versions(bad).is_err());
    }
}
