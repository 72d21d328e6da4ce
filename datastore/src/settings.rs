//! A backup datastore's attributes, read in one place: names, defaults, and the range each
//! number must lie in. Anything past a range is an error naming the attribute, its value and
//! the range, never clamped in silence and never left to overflow later (see
//! `docs/security.md`, "Bounded everything").
//!
//! | attribute | default | range |
//! |---|---|---|
//! | `RESTIC_CONNECTIONS` | 5 (SFTP: at most one per CPU) | 1 to 64 SFTP sessions or S3 requests |
//! | `RESTIC_BWLIMIT` | none | 1 to 100,000,000 KiB/s (0 or empty: none) |
//! | `RESTIC_COMPRESSION` | `auto` | `off`, `fastest`, `auto`, `better`, `max` |
//! | `BACKSTOP_LOCK_WAIT` | 600 | 0 to 86,400 seconds |
//! | `RESTIC_NICE`, `RESTIC_IONICE` | none | -20 to 19, 0 to 7 |
//! | `RESTIC_CPU_QUOTA` | none | 1 to 100,000 (percent of one CPU) |
//! | `RESTIC_MAX_RIOPS`, `RESTIC_MAX_WIOPS` | none | 1 to 10,000,000 |
//! | `RESTIC_MEMORY_MAX_MB` | none | 1 to 16,777,216 (16 TiB) |
//! | `RESTIC_TMP_DIR` | `/var/tmp` | an absolute path |
//! | `RESTIC_PRUNE_MAX_UNUSED`, `RESTIC_PRUNE_MAX_REPACK` | `0`, unlimited | as restic reads them |
//! | `BACKSTOP_SFTP_HOST_FINGERPRINT` | none | `SHA256:<base64>` |
//! | `BACKSTOP_CACHE_DIR` | `$XDG_CACHE_HOME/backstop` or `~/.cache/backstop` | an absolute path, or `off` |
//! | `RESTIC_S3_ACCESS_KEY_ID`, `RESTIC_S3_SECRET_ACCESS_KEY` | required for S3 | |
//! | `RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID`, `RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY` | none | both or neither: the front-end's key ([`FRONT_END_ONLY`]) |
//! | `RESTIC_S3_REGION` | `us-east-1` | |
//! | `RESTIC_S3_FORCE_PATH_STYLE`, `RESTIC_S3_INSECURE_TLS` | `no` | `yes`, `no` |
//! | `RESTIC_S3_CACERT` | the system's CAs | an absolute path to a PEM file |
//! | `BACKUP_PULL` | `no` | `yes`, `no` |
//! | `BACKUP_PROXY` | none (the front-end pulls) | a host name, with `BACKUP_PULL=yes` only |

use crate::Error;
use crate::repo::Compression;
use crate::repo::lock::RetryLock;
use crate::repo::maintenance::PruneLimits;
use backstop_protocol::message::Datastore;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backstop_protocol::remote::Confinement;

/// Everything backstop reads from a backup datastore's template but where its repositories
/// are ([`crate::location::Location`]) and the password ([`crate::target::password`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// RESTIC_CONNECTIONS; unset, each transport's own default (SFTP: 5, at most one per
    /// CPU; S3: 5).
    pub connections: Option<usize>,
    pub bwlimit_kib: Option<u64>,
    pub compression: Compression,
    pub lock_wait: RetryLock,
    pub prune: PruneLimits,
    pub tmp_dir: PathBuf,
    pub host_fingerprint: Option<String>,
    /// Where remote repositories' metadata is cached (None: not cached).
    pub cache_dir: Option<PathBuf>,
    pub confinement: Confinement,
    /// How to reach an S3 datastore's store (`RESTIC_BACKEND=S3` only).
    pub s3: Option<S3Access>,
    /// BACKSTOP_ESCROW_RECIPIENTS: every repository gets an escrow key sealed to these
    /// (docs/escrow.md).
    pub escrow: Option<backstop_repo::escrow::Recipients>,
    /// BACKUP_PULL: the host only serves its disks and this machine writes the repository
    /// (docs/pull-mode.md).
    pub pull: bool,
    /// BACKUP_PROXY: with `pull`, the host (an ssh name) that pulls and writes the repository
    /// instead of the front-end (docs/pull-mode.md, "A backup proxy").
    pub proxy: Option<String>,
}

/// A host name ssh is given as it is: `[A-Za-z0-9._-]`, not starting with `-` (an option) or
/// `.`, at most 253 characters; an optional `user@` before it, of the same letters.
fn is_host_name(text: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && !part.starts_with(['-', '.'])
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    match text.split_once('@') {
        Some((user, host)) => ok(user) && ok(host),
        None => ok(text),
    }
}

/// Attributes the front-end keeps to itself: a host step is sent the datastore's document
/// without them. With the maintenance key pair set, everything that runs on the front-end
/// (backstop's runner included) reaches the bucket with it: rm, increment_flatten,
/// retention, sync and verify jobs, restore, monitor, and pull mode's writes. The hosts are
/// left the key of `RESTIC_S3_ACCESS_KEY_ID`, which may write but need not delete
/// (docs/s3.md, "Split keys").
pub const FRONT_END_ONLY: &[&str] = &[
    "RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID",
    "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY",
];

/// The keys and transport settings of an S3 datastore. The secret key never prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Access {
    /// The maintenance key when the datastore has one and this document holds it (the
    /// front-end's), else the write key: the one this process reaches the bucket with.
    pub access_key_id: String,
    pub secret_access_key: backstop_storage::s3::Secret,
    /// Whether `access_key_id` is the maintenance key.
    pub maintenance: bool,
    pub region: String,
    /// `RESTIC_S3_FORCE_PATH_STYLE=yes`; else restic's automatic choice.
    pub force_path_style: bool,
    pub ca_cert: Option<PathBuf>,
    pub insecure_tls: bool,
    /// RESTIC_S3_OBJECT_LOCK and RESTIC_S3_OBJECT_LOCK_DAYS (docs/s3.md, "Object Lock").
    pub object_lock: Option<backstop_storage::s3::ObjectLock>,
}

fn yes_no(ds: &Datastore, name: &str) -> Result<bool, Error> {
    match ds
        .attribute(name)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("no") | Some("false") => Ok(false),
        Some("yes") | Some("true") => Ok(true),
        Some(other) => Err(Error::config(format!(
            "datastore {}: {name} is {other:?}, not yes or no",
            ds.id
        ))),
    }
}

impl S3Access {
    fn of(ds: &Datastore) -> Result<S3Access, Error> {
        let required = |name: &str| {
            ds.attribute(name)
                .filter(|v| !v.trim().is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::config(format!(
                        "datastore {}: {name} is missing (RESTIC_BACKEND is S3)",
                        ds.id
                    ))
                })
        };
        let ca_cert = match ds.attribute("RESTIC_S3_CACERT").map(str::trim) {
            None | Some("") => None,
            Some(p) if Path::new(p).is_absolute() => Some(PathBuf::from(p)),
            Some(p) => {
                return Err(Error::config(format!(
                    "datastore {}: RESTIC_S3_CACERT {p:?} is not an absolute path",
                    ds.id
                )));
            }
        };
        let object_lock = match ds.attribute("RESTIC_S3_OBJECT_LOCK").map(str::trim) {
            None | Some("") => None,
            Some(mode) => Some(
                backstop_storage::s3::ObjectLock::parse(
                    mode,
                    ds.attribute("RESTIC_S3_OBJECT_LOCK_DAYS"),
                )
                .map_err(|e| Error::config(format!("datastore {}: {e}", ds.id)))?,
            ),
        };
        let write_key = (
            required("RESTIC_S3_ACCESS_KEY_ID")?.trim().to_string(),
            required("RESTIC_S3_SECRET_ACCESS_KEY")?,
        );
        let maintenance = match (
            ds.attribute("RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID")
                .map(str::trim)
                .filter(|v| !v.is_empty()),
            ds.attribute("RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY")
                .filter(|v| !v.trim().is_empty()),
        ) {
            (Some(id), Some(secret)) => Some((id.to_string(), secret.to_string())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(format!(
                    "datastore {}: RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID is set but RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY is missing",
                    ds.id
                )));
            }
            (None, Some(_)) => {
                return Err(Error::config(format!(
                    "datastore {}: RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY is set but RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID is missing",
                    ds.id
                )));
            }
        };
        let is_maintenance = maintenance.is_some();
        let (access_key_id, secret) = maintenance.unwrap_or(write_key);
        Ok(S3Access {
            access_key_id,
            secret_access_key: backstop_storage::s3::Secret::new(secret),
            maintenance: is_maintenance,
            region: ds
                .attribute("RESTIC_S3_REGION")
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .unwrap_or("us-east-1")
                .to_string(),
            force_path_style: yes_no(ds, "RESTIC_S3_FORCE_PATH_STYLE")?,
            ca_cert,
            insecure_tls: yes_no(ds, "RESTIC_S3_INSECURE_TLS")?,
            object_lock,
        })
    }
}

/// Every attribute a backup datastore's template may hold that backstop reads or accepts:
/// the table above, the password and where the repositories are, what oned itself writes or
/// reads on any datastore, and the stock restic driver's own (accepted; backstop does without
/// them). `backupjob datastore create` refuses a name close to one of these, and any other
/// `RESTIC_` or `BACKSTOP_` name, so a typo is caught when the datastore is made.
pub const ATTRIBUTES: &[&str] = &[
    // oned's, on every datastore
    "NAME",
    "DS_MAD",
    "TM_MAD",
    "TYPE",
    "BASE_PATH",
    "SAFE_DIRS",
    "RESTRICTED_DIRS",
    "LIMIT_MB",
    "LIMIT_TRANSFER_BW",
    "NO_DECOMPRESS",
    "BRIDGE_LIST",
    "STAGING_DIR",
    "DATASTORE_CAPACITY_CHECK",
    "COMPATIBLE_SYS_DS",
    "DESCRIPTION",
    "LABELS",
    // where and how
    "RESTIC_PASSWORD",
    "RESTIC_BACKEND",
    "RESTIC_SFTP_SERVER",
    "RESTIC_SFTP_USER",
    "RESTIC_S3_ACCESS_KEY_ID",
    "RESTIC_S3_SECRET_ACCESS_KEY",
    "RESTIC_S3_BUCKET",
    "RESTIC_S3_ENDPOINT",
    "RESTIC_S3_REGION",
    "RESTIC_S3_FORCE_PATH_STYLE",
    "RESTIC_S3_CACERT",
    "RESTIC_S3_INSECURE_TLS",
    "RESTIC_S3_OBJECT_LOCK",
    "RESTIC_S3_OBJECT_LOCK_DAYS",
    "RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID",
    "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY",
    "TOTAL_MB",
    // the table above
    "RESTIC_CONNECTIONS",
    "RESTIC_BWLIMIT",
    "RESTIC_COMPRESSION",
    "BACKSTOP_LOCK_WAIT",
    "RESTIC_NICE",
    "RESTIC_IONICE",
    "RESTIC_CPU_QUOTA",
    "RESTIC_MAX_RIOPS",
    "RESTIC_MAX_WIOPS",
    "RESTIC_MEMORY_MAX_MB",
    "RESTIC_TMP_DIR",
    "RESTIC_PRUNE_MAX_UNUSED",
    "RESTIC_PRUNE_MAX_REPACK",
    "BACKSTOP_SFTP_HOST_FINGERPRINT",
    "BACKSTOP_CACHE_DIR",
    "BACKSTOP_ESCROW_RECIPIENTS",
    "BACKUP_PULL",
    "BACKUP_PROXY",
    // the stock restic driver's, accepted
    "RESTIC_SPARSIFY",
];

pub const CONNECTIONS: RangeInclusive<i64> = 1..=64;
pub const BWLIMIT_KIB: RangeInclusive<i64> = 0..=100_000_000;
pub const LOCK_WAIT_SECONDS: RangeInclusive<i64> = 0..=86_400;

fn number(ds: &Datastore, name: &str, range: RangeInclusive<i64>) -> Result<Option<i64>, Error> {
    Ok(backstop_protocol::config::datastore_number(
        ds, name, range,
    )?)
}

impl Settings {
    /// Reads and checks the datastore's attributes; the first bad one is the error.
    pub fn of(ds: &Datastore) -> Result<Settings, Error> {
        let n = |name: &str, range: RangeInclusive<i64>| number(ds, name, range);
        let tmp_dir = PathBuf::from(ds.attribute("RESTIC_TMP_DIR").unwrap_or("/var/tmp"));
        if !tmp_dir.is_absolute() {
            return Err(Error::config(format!(
                "datastore {}: RESTIC_TMP_DIR {:?} is not an absolute path",
                ds.id,
                tmp_dir.display()
            )));
        }
        let fingerprint = ds
            .attribute("BACKSTOP_SFTP_HOST_FINGERPRINT")
            .map(str::trim)
            .filter(|f| !f.is_empty());
        if let Some(f) = fingerprint
            && !backstop_storage::sftp::is_fingerprint(f)
        {
            return Err(Error::config(format!(
                "datastore {}: BACKSTOP_SFTP_HOST_FINGERPRINT {f:?} is not SHA256:<base64> (as ssh-keygen -l prints it)",
                ds.id
            )));
        }
        let cache_dir = match ds.attribute("BACKSTOP_CACHE_DIR").map(str::trim) {
            None | Some("") => backstop_storage::cache::default_dir(),
            Some("off") => None,
            Some(dir) if Path::new(dir).is_absolute() => Some(PathBuf::from(dir)),
            Some(dir) => {
                return Err(Error::config(format!(
                    "datastore {}: BACKSTOP_CACHE_DIR {dir:?} is neither an absolute path nor off",
                    ds.id
                )));
            }
        };
        let escrow = match ds.attribute("BACKSTOP_ESCROW_RECIPIENTS").map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(backstop_repo::escrow::Recipients::parse(text).map_err(|e| {
                Error::config(format!(
                    "datastore {}: BACKSTOP_ESCROW_RECIPIENTS: {e}",
                    ds.id
                ))
            })?),
        };
        let pull = yes_no(ds, "BACKUP_PULL")?;
        let proxy = match ds.attribute("BACKUP_PROXY").map(str::trim) {
            None | Some("") => None,
            Some(_) if !pull => {
                return Err(Error::config(format!(
                    "datastore {}: BACKUP_PROXY is set but BACKUP_PULL is not YES (a proxy pulls; in direct mode the hosts write)",
                    ds.id
                )));
            }
            Some(host) if is_host_name(host) => Some(host.to_string()),
            Some(host) => {
                return Err(Error::config(format!(
                    "datastore {}: BACKUP_PROXY {host:?} is not a host name (letters, digits, '.', '-', '_', at most 253, as ssh is given it)",
                    ds.id
                )));
            }
        };
        Ok(Settings {
            escrow,
            pull,
            proxy,
            connections: n("RESTIC_CONNECTIONS", CONNECTIONS)?.map(|c| c as usize),
            bwlimit_kib: n("RESTIC_BWLIMIT", BWLIMIT_KIB)?
                .filter(|k| *k > 0)
                .map(|k| k as u64),
            compression: Compression::parse(ds.attribute("RESTIC_COMPRESSION")).map_err(|e| {
                let e = Error::from(e);
                Error {
                    message: format!("datastore {}: {}", ds.id, e.message),
                    ..e
                }
            })?,
            lock_wait: RetryLock(Duration::from_secs(
                n("BACKSTOP_LOCK_WAIT", LOCK_WAIT_SECONDS)?.unwrap_or(600) as u64,
            )),
            prune: PruneLimits {
                max_unused: ds.attribute("RESTIC_PRUNE_MAX_UNUSED").map(str::to_string),
                max_repack: ds.attribute("RESTIC_PRUNE_MAX_REPACK").map(str::to_string),
            },
            tmp_dir,
            host_fingerprint: fingerprint.map(str::to_string),
            cache_dir,
            confinement: Confinement::of(ds)?,
            s3: match ds.attribute("RESTIC_BACKEND").map(str::trim) {
                Some(b) if b.eq_ignore_ascii_case("S3") => Some(S3Access::of(ds)?),
                _ => None,
            },
        })
    }
}

/// How long actions wait for a conflicting repository lock: `BACKSTOP_LOCK_WAIT` seconds from
/// the datastore, default 10 minutes (the stock driver retries for 5 to 15 minutes). Every
/// action that reaches a repository has checked the datastore's settings on the way
/// ([`crate::target::RepoTarget::storage`]), so a bad value was refused there.
pub fn lock_wait(ds: &Datastore) -> RetryLock {
    crate::settings::Settings::of(ds)
        .map(|s| s.lock_wait)
        .unwrap_or(RetryLock(std::time::Duration::from_secs(600)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_protocol::template::Template;

    fn ds(template: &str) -> Datastore {
        Datastore {
            id: 100,
            name: "b".into(),
            ds_mad: "backstop".into(),
            tm_mad: "-".into(),
            base_path: "/b".into(),
            type_code: Some(3),
            template: Template::parse(template).expect("template"),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::of(&ds("")).expect("defaults");
        assert_eq!(s.connections, None);
        assert_eq!(s.bwlimit_kib, None);
        assert_eq!(s.compression, Compression::Auto);
        assert_eq!(s.lock_wait, RetryLock(Duration::from_secs(600)));
        assert_eq!(s.tmp_dir, PathBuf::from("/var/tmp"));
        assert_eq!(s.confinement, Confinement::default());
        let s = Settings::of(&ds(
            "RESTIC_CONNECTIONS = 64\nRESTIC_BWLIMIT = 0\nBACKSTOP_LOCK_WAIT = 0\nRESTIC_NICE = -20",
        ))
        .expect("edges");
        assert_eq!(
            (
                s.connections,
                s.bwlimit_kib,
                s.lock_wait.0,
                s.confinement.nice
            ),
            (Some(64), None, Duration::ZERO, Some(-20))
        );
    }

    #[test]
    fn every_number_past_its_range_is_one_clear_error() {
        for (attr, value, range) in [
            ("RESTIC_CONNECTIONS", "0", "1 to 64"),
            ("RESTIC_CONNECTIONS", "100000", "1 to 64"),
            ("RESTIC_BWLIMIT", "-1", "0 to 100000000"),
            ("RESTIC_BWLIMIT", "99999999999999999999", "0 to 100000000"),
            ("BACKSTOP_LOCK_WAIT", "9223372036854775807", "0 to 86400"),
            ("BACKSTOP_LOCK_WAIT", "ten", "0 to 86400"),
            ("RESTIC_NICE", "99", "-20 to 19"),
            ("RESTIC_IONICE", "x", "0 to 7"),
            ("RESTIC_CPU_QUOTA", "0", "1 to 100000"),
            (
                "RESTIC_MEMORY_MAX_MB",
                "9223372036854775807",
                "1 to 16777216",
            ),
            ("RESTIC_MAX_RIOPS", "-5", "1 to 10000000"),
        ] {
            let e = Settings::of(&ds(&format!("{attr} = \"{value}\""))).expect_err(attr);
            assert_eq!(
                e.to_string(),
                format!("datastore 100: {attr} is {value:?}, not a whole number from {range}")
            );
        }
        let e = Settings::of(&ds("RESTIC_COMPRESSION = fast")).expect_err("compression");
        assert_eq!(
            e.to_string(),
            "datastore 100: RESTIC_COMPRESSION \"fast\" is not one of off, fastest, auto, better, max"
        );
        let e = Settings::of(&ds("RESTIC_TMP_DIR = tmp")).expect_err("relative");
        assert!(e.to_string().contains("not an absolute path"), "{e}");
        let e = Settings::of(&ds("BACKSTOP_SFTP_HOST_FINGERPRINT = abc")).expect_err("fp");
        assert!(e.to_string().contains("SHA256:"), "{e}");
        let e = Settings::of(&ds("BACKSTOP_CACHE_DIR = cache")).expect_err("relative cache");
        assert_eq!(
            e.to_string(),
            "datastore 100: BACKSTOP_CACHE_DIR \"cache\" is neither an absolute path nor off"
        );
    }

    #[test]
    fn s3_access_is_read_with_the_stock_defaults() {
        let base = "RESTIC_BACKEND = S3\nRESTIC_S3_BUCKET = b-1\n";
        let s = Settings::of(&ds(&format!(
            "{base}RESTIC_S3_ACCESS_KEY_ID = AK\nRESTIC_S3_SECRET_ACCESS_KEY = \"s3cr3t\""
        )))
        .expect("s3");
        let a = s.s3.expect("s3 access");
        assert_eq!(a.access_key_id, "AK");
        assert_eq!(a.secret_access_key.expose(), "s3cr3t");
        assert_eq!(a.region, "us-east-1");
        assert!(!a.force_path_style && !a.insecure_tls && a.ca_cert.is_none());
        assert!(!format!("{a:?}").contains("s3cr3t"), "the secret printed");
        let e = Settings::of(&ds(&format!("{base}RESTIC_S3_ACCESS_KEY_ID = AK")))
            .expect_err("no secret");
        assert_eq!(
            e.to_string(),
            "datastore 100: RESTIC_S3_SECRET_ACCESS_KEY is missing (RESTIC_BACKEND is S3)"
        );
        let full = format!(
            "{base}RESTIC_S3_ACCESS_KEY_ID = AK\nRESTIC_S3_SECRET_ACCESS_KEY = S\nRESTIC_S3_REGION = eu-1\nRESTIC_S3_FORCE_PATH_STYLE = YES\nRESTIC_S3_INSECURE_TLS = no\nRESTIC_S3_CACERT = /etc/ca.pem"
        );
        let a = Settings::of(&ds(&full)).expect("all").s3.expect("s3");
        assert_eq!(
            (a.region.as_str(), a.force_path_style, a.ca_cert),
            ("eu-1", true, Some(PathBuf::from("/etc/ca.pem")))
        );
        let e = Settings::of(&ds(&format!(
            "{base}RESTIC_S3_ACCESS_KEY_ID = AK\nRESTIC_S3_SECRET_ACCESS_KEY = S\nRESTIC_S3_INSECURE_TLS = maybe"
        )))
            .expect_err("yes or no");
        assert!(e.to_string().contains("not yes or no"), "{e}");
        assert!(Settings::of(&ds("")).expect("local").s3.is_none());
    }

    #[test]
    fn a_maintenance_key_is_the_front_end_s_and_comes_in_pairs() {
        let base = "RESTIC_BACKEND = S3\nRESTIC_S3_BUCKET = b-1\nRESTIC_S3_ACCESS_KEY_ID = AK\nRESTIC_S3_SECRET_ACCESS_KEY = S\n";
        let a = Settings::of(&ds(&format!(
            "{base}RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID = MK\nRESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY = \"m-s3cr3t\""
        )))
        .expect("split")
        .s3
        .expect("s3");
        assert_eq!(
            (
                a.access_key_id.as_str(),
                a.secret_access_key.expose(),
                a.maintenance
            ),
            ("MK", "m-s3cr3t", true)
        );
        assert!(!format!("{a:?}").contains("m-s3cr3t"), "the secret printed");
        let a = Settings::of(&ds(base)).expect("write key").s3.expect("s3");
        assert_eq!((a.access_key_id.as_str(), a.maintenance), ("AK", false));
        for (half, missing) in [
            (
                "RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID = MK",
                "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY is missing",
            ),
            (
                "RESTIC_S3_MAINTENANCE_SECRET_ACCESS_KEY = m-s3cr3t",
                "RESTIC_S3_MAINTENANCE_ACCESS_KEY_ID is missing",
            ),
        ] {
            let e = Settings::of(&ds(&format!("{base}{half}"))).expect_err(half);
            assert!(e.to_string().ends_with(missing), "{e}");
            assert!(!e.to_string().contains("m-s3cr3t"), "{e}");
        }
        for name in FRONT_END_ONLY {
            assert!(ATTRIBUTES.contains(name));
            assert!(backstop_protocol::template::is_secret(name), "{name}");
        }
    }

    #[test]
    fn a_backup_proxy_is_a_host_name_and_needs_pull_mode() {
        let proxy = |t: &str| Settings::of(&ds(t)).map(|s| s.proxy);
        assert_eq!(
            proxy("BACKUP_PULL = YES\nBACKUP_PROXY = px-1.example.org").expect("proxy"),
            Some("px-1.example.org".into())
        );
        assert_eq!(
            proxy("BACKUP_PULL = YES\nBACKUP_PROXY = oneadmin@px1").expect("user"),
            Some("oneadmin@px1".into())
        );
        assert_eq!(proxy("BACKUP_PULL = YES").expect("none"), None);
        let e = proxy("BACKUP_PROXY = px1").expect_err("direct mode");
        assert!(e.to_string().contains("BACKUP_PULL is not YES"), "{e}");
        for bad in [
            "-oProxyCommand=x",
            "px1;id",
            "px 1",
            ".px",
            "a@",
            "px1:22",
            "$(id)",
        ] {
            let e = proxy(&format!("BACKUP_PULL = YES\nBACKUP_PROXY = \"{bad}\"")).expect_err(bad);
            assert!(e.to_string().contains("is not a host name"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_metadata_cache_is_configurable() {
        let of = |t: &str| Settings::of(&ds(t)).expect("settings").cache_dir;
        assert_eq!(of("BACKSTOP_CACHE_DIR = off"), None);
        assert_eq!(
            of("BACKSTOP_CACHE_DIR = /srv/cache"),
            Some(PathBuf::from("/srv/cache"))
        );
        assert_eq!(of(""), backstop_storage::cache::default_dir());
    }
}
