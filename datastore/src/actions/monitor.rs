//! `monitor`: the capacity of the storage behind a backup datastore (driver contract §5.4).
//!
//! Prints `USED_MB=`, `TOTAL_MB=` and `FREE_MB=` as plain integers (MiB, rounded down), and
//! creates `BASE_PATH` when it is missing, as the stock drivers do. For a local datastore the
//! figures are the file system's that holds `BASE_PATH`: used = (blocks − free blocks),
//! free = blocks available to an unprivileged user, which is what `df` reports.

use crate::config::DriverConfig;
use crate::location::Location;
use crate::remote::{Agent, sh_quote, ssh_command};
use crate::{Error, ErrorKind};
use backstop_protocol::message::MonitorRequest;
use std::path::Path;

/// Capacity in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub used_mb: u64,
    pub total_mb: u64,
    pub free_mb: u64,
}

impl Capacity {
    /// The three lines oned reads.
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!("USED_MB={}", self.used_mb),
            format!("TOTAL_MB={}", self.total_mb),
            format!("FREE_MB={}", self.free_mb),
        ]
    }
}

pub fn run(request: &MonitorRequest, cfg: &DriverConfig) -> Result<Capacity, Error> {
    let ds = &request.datastore;
    match Location::of(ds)? {
        Location::Local { base_path } => local(Path::new(&base_path)),
        Location::Sftp {
            user,
            server,
            base_path,
        } => remote(cfg, &user, &server, &base_path),
        Location::S3 { endpoint, bucket } => s3(ds, cfg, &endpoint, &bucket),
    }
}

/// An S3 datastore: used = the sizes of every object of its repositories (keys under
/// `<vm_id>/` or `job_<bj>/` in the bucket), against `TOTAL_MB` (stock default 1048576,
/// 1 TiB), since a bucket has no capacity of its own.
pub fn s3(
    ds: &backstop_protocol::message::Datastore,
    cfg: &DriverConfig,
    endpoint: &str,
    bucket: &str,
) -> Result<Capacity, Error> {
    let total_mb = match ds.attribute("TOTAL_MB").map(str::trim) {
        None | Some("") => 1_048_576,
        Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::config(format!(
                "datastore {}: TOTAL_MB is {v:?}, not a positive whole number",
                ds.id
            ))
        })?,
    };
    let (at, transport) = crate::target::base(ds, cfg)?;
    let store = match backstop_storage::connect(&at, &transport) {
        Ok(backstop_storage::Connected::S3(store)) => store,
        Ok(_) => {
            return Err(Error::config(format!(
                "datastore {}: s3:{endpoint}/{bucket} is not an S3 location",
                ds.id
            )));
        }
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("datastore {}: {e}", ds.id),
            ));
        }
    };
    let objects = store.objects().map_err(|e| {
        Error::new(
            ErrorKind::Repository,
            format!("datastore {}: cannot add up the bucket's usage: {e}", ds.id),
        )
    })?;
    let used: u64 = objects
        .iter()
        .filter(|(key, _)| key.split('/').next().is_some_and(is_repo_id))
        .map(|(_, size)| *size)
        .sum();
    let used_mb = used / (1024 * 1024);
    Ok(Capacity {
        used_mb,
        total_mb,
        free_mb: total_mb.saturating_sub(used_mb),
    })
}

/// `<vm_id>` or `job_<bj>`: the names of a datastore's repositories.
fn is_repo_id(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(name) || name.strip_prefix("job_").is_some_and(digits)
}

/// Over ssh on the backup server, as the stock driver: `mkdir -p` then `df` in MiB.
pub fn remote(
    cfg: &DriverConfig,
    user: &str,
    server: &str,
    base_path: &str,
) -> Result<Capacity, Error> {
    let base = sh_quote(&crate::target::clean_path(base_path));
    let out = ssh_command(cfg, &format!("{user}@{server}"), Agent::NotForwarded)
        .arg(format!(
            "mkdir -p {base} && df -P -B1048576 {base} | tail -n 1"
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io("cannot run ssh", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let reason = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("ssh failed");
        return Err(Error::new(
            ErrorKind::Repository,
            format!(
                "cannot read the capacity of {base_path} on {server}: {}",
                reason.trim()
            ),
        ));
    }
    parse_df(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::new(
            ErrorKind::Repository,
            format!("cannot read the capacity of {base_path} on {server}: unexpected df output"),
        )
    })
}

/// The last line of `df -P -B1048576`: filesystem, total, used, available, capacity, mount.
pub fn parse_df(text: &str) -> Option<Capacity> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| f.get(i)?.trim_end_matches('M').parse::<u64>().ok();
    Some(Capacity {
        total_mb: n(1)?,
        used_mb: n(2)?,
        free_mb: n(3)?,
    })
}

/// Capacity of the file system holding `base_path`, creating the directory first.
pub fn local(base_path: &Path) -> Result<Capacity, Error> {
    std::fs::create_dir_all(base_path).map_err(|e| {
        Error::io(
            format!("cannot create BASE_PATH {}", base_path.display()),
            e,
        )
    })?;
    let st = rustix::fs::statvfs(base_path).map_err(|e| {
        Error::io(
            format!("cannot read the capacity of {}", base_path.display()),
            e.into(),
        )
    })?;
    const MIB: u128 = 1024 * 1024;
    let frsize = u128::from(st.f_frsize);
    let mb = |blocks: u64| u64::try_from(u128::from(blocks) * frsize / MIB).unwrap_or(u64::MAX);
    Ok(Capacity {
        used_mb: mb(st.f_blocks.saturating_sub(st.f_bfree)),
        total_mb: mb(st.f_blocks),
        free_mb: mb(st.f_bavail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_usage_counts_repositories_only() {
        assert!(is_repo_id("22") && is_repo_id("job_3"));
        assert!(
            !is_repo_id("job_") && !is_repo_id("x22") && !is_repo_id("") && !is_repo_id("job_3a")
        );
    }

    #[test]
    fn creates_base_path_and_matches_statvfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("datastores/100");
        let c = local(&base).expect("monitor");
        assert!(base.is_dir());
        assert!(c.total_mb > 0 && c.used_mb <= c.total_mb && c.free_mb <= c.total_mb);
        assert_eq!(c.lines()[0], format!("USED_MB={}", c.used_mb),);
    }

    #[test]
    fn reports_an_uncreatable_base_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let e = local(&file.join("sub")).expect_err("not a dir");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot create BASE_PATH {}/sub: ", file.display())),
            "{e}"
        );
    }
}
