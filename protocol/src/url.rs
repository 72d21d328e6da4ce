//! Backup image URLs (driver contract §7): `<proto>[+rbd]://<ds_id>/<bj_id>/<chain><absolute path>`.
//!
//! - `proto` is the datastore kind's scheme: `restic`, `rsync`, or `backstop` when installed
//!   side by side; `+rbd` marks Ceph rbd-format backups.
//! - `bj_id` is empty when the backup was not made by a backup job (`//`).
//! - `chain` is `<increment_id>:<source>` pairs joined by `,`; a FULL image has one pair `0:<src>`.
//! - the path starts with `/` and names one disk file as it was laid out on the host.
//!
//! Every consumer splits what follows `://` on `/` at most four ways (ds, job, chain, rest), so
//! a source may not hold `/`, `,`, `:` or whitespace.

use serde::Serialize;
use std::fmt;

/// One link of an increment chain: the increment id and its opaque source (a snapshot id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainLink {
    pub increment_id: u64,
    pub source: String,
}

/// A parsed backup URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupUrl {
    pub scheme: String,
    pub rbd: bool,
    pub datastore_id: u64,
    pub job_id: Option<u64>,
    pub chain: Vec<ChainLink>,
    /// Absolute path of the disk file, starting with `/`.
    pub path: String,
}

/// Why a string is not a backup URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backup URL {url:?} {problem}")]
pub struct UrlError {
    pub url: String,
    pub problem: String,
}

const FORM: &str = "<proto>://<datastore id>/<job id or empty>/<id:source,...>/<absolute path>";

/// Whether a string may serve as a chain source (a backup id).
pub fn valid_source(source: &str) -> bool {
    !source.is_empty()
        && !source
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | ',' | ':'))
}

impl BackupUrl {
    pub fn parse(url: &str) -> Result<BackupUrl, UrlError> {
        let fail = |problem: String| UrlError {
            url: url.to_string(),
            problem,
        };
        let (proto, rest) = url
            .split_once("://")
            .ok_or_else(|| fail(format!("has no '://' (expected {FORM})")))?;
        let (scheme, rbd) = match proto.strip_suffix("+rbd") {
            Some(s) => (s, true),
            None => (proto, false),
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(fail(format!("has a bad scheme {proto:?}")));
        }
        let mut parts = rest.splitn(4, '/');
        let ds = parts.next().unwrap_or_default();
        let datastore_id = ds
            .parse::<u64>()
            .map_err(|_| fail(format!("has a datastore id {ds:?} that is not a number")))?;
        let job = parts
            .next()
            .ok_or_else(|| fail(format!("has no job field (expected {FORM})")))?;
        let job_id = if job.is_empty() {
            None
        } else {
            Some(
                job.parse::<u64>()
                    .map_err(|_| fail(format!("has a job id {job:?} that is not a number")))?,
            )
        };
        let chain_text = parts.next().unwrap_or_default();
        if chain_text.is_empty() {
            return Err(fail(format!("has no increment chain (expected {FORM})")));
        }
        let chain = chain_text
            .split(',')
            .map(|link| {
                let (id, source) = link.split_once(':').ok_or_else(|| {
                    fail(format!(
                        "has a chain link {link:?} without ':' (expected id:source)"
                    ))
                })?;
                let increment_id = id.parse::<u64>().map_err(|_| {
                    fail(format!(
                        "has a chain link {link:?} whose increment id is not a number"
                    ))
                })?;
                if !valid_source(source) {
                    return Err(fail(format!(
                        "has a chain link {link:?} with an empty or bad source"
                    )));
                }
                Ok(ChainLink {
                    increment_id,
                    source: source.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tail = parts.next().unwrap_or_default();
        if tail.is_empty() {
            return Err(fail(format!("has no disk file path (expected {FORM})")));
        }
        Ok(BackupUrl {
            scheme: scheme.to_string(),
            rbd,
            datastore_id,
            job_id,
            chain,
            path: format!("/{tail}"),
        })
    }

    /// The source of the last link: the backup that holds the newest state.
    pub fn last_source(&self) -> &str {
        self.chain
            .last()
            .map(|l| l.source.as_str())
            .unwrap_or_default()
    }

    /// The file name of the disk path.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// The disk id from a file named `disk.<id>[.<increment>]`; `None` for `disk.tpm.0` and others.
    pub fn disk_id(&self) -> Option<u32> {
        let mut tokens = self.file_name().split('.');
        (tokens.next() == Some("disk"))
            .then(|| tokens.next()?.parse().ok())
            .flatten()
    }

    /// The VM id from a restic-style path `.../<vm_id>/backup/<file>`.
    pub fn vm_id(&self) -> Option<u64> {
        let mut parts = self.path.rsplit('/').skip(1);
        (parts.next() == Some("backup"))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    }
}

impl fmt::Display for BackupUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rbd = if self.rbd { "+rbd" } else { "" };
        let job = self.job_id.map(|j| j.to_string()).unwrap_or_default();
        write!(f, "{}{rbd}://{}/{job}/", self.scheme, self.datastore_id)?;
        for (i, link) in self.chain.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{}", link.increment_id, link.source)?;
        }
        write!(f, "{}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_spec_examples() {
        let u = BackupUrl::parse(
            "restic://103//0:f130ed80,1:1995054d/var/lib/one/datastores/100/22/backup/disk.0.0",
        )
        .expect("parses");
        assert_eq!(u.scheme, "restic");
        assert!(!u.rbd);
        assert_eq!(u.datastore_id, 103);
        assert_eq!(u.job_id, None);
        assert_eq!(u.chain.len(), 2);
        assert_eq!(u.last_source(), "1995054d");
        assert_eq!(u.path, "/var/lib/one/datastores/100/22/backup/disk.0.0");
        assert_eq!(u.disk_id(), Some(0));
        assert_eq!(u.vm_id(), Some(22));

        let r = BackupUrl::parse(
            "rsync+rbd://100/3/0:8a3454,1:f6e63e/var/lib/one/datastores/100/6/8a3454/disk.1.rbd2",
        )
        .expect("parses");
        assert!(r.rbd);
        assert_eq!(r.job_id, Some(3));
        assert_eq!(r.disk_id(), Some(1));
        assert_eq!(r.vm_id(), None);
    }

    #[test]
    fn round_trips() {
        for url in [
            "restic://103//0:f130ed80/var/lib/one/datastores/100/22/backup/disk.0.0",
            "backstop://7/12/0:a,1:b,2:c/x/22/backup/disk.tpm.0",
            "rsync+rbd://100/3/4:8a3454/a/b",
        ] {
            assert_eq!(BackupUrl::parse(url).expect(url).to_string(), url);
        }
    }

    #[test]
    fn pins_the_errors() {
        let cases = [
            (
                "restic://100///var/lib/one/datastores/0/1/backup/disk.0.0",
                "backup URL \"restic://100///var/lib/one/datastores/0/1/backup/disk.0.0\" has no increment chain (expected <proto>://<datastore id>/<job id or empty>/<id:source,...>/<absolute path>)",
            ),
            (
                "/var/lib/x",
                "backup URL \"/var/lib/x\" has no '://' (expected <proto>://<datastore id>/<job id or empty>/<id:source,...>/<absolute path>)",
            ),
            (
                "restic://x//0:a/p",
                "backup URL \"restic://x//0:a/p\" has a datastore id \"x\" that is not a number",
            ),
            (
                "restic://1/j/0:a/p",
                "backup URL \"restic://1/j/0:a/p\" has a job id \"j\" that is not a number",
            ),
            (
                "restic://1//0a/p",
                "backup URL \"restic://1//0a/p\" has a chain link \"0a\" without ':' (expected id:source)",
            ),
            (
                "restic://1//0:/p",
                "backup URL \"restic://1//0:/p\" has a chain link \"0:\" with an empty or bad source",
            ),
            (
                "restic://1//0:a",
                "backup URL \"restic://1//0:a\" has no disk file path (expected <proto>://<datastore id>/<job id or empty>/<id:source,...>/<absolute path>)",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(BackupUrl::parse(url).expect_err(url).to_string(), expected);
        }
    }
}
