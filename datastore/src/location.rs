//! Where a backup datastore keeps its data, from its template attributes.

use crate::Error;
use backstop_protocol::message::Datastore;

/// The storage behind a backup datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `BASE_PATH` on the machine that runs the step.
    Local { base_path: String },
    /// `RESTIC_SFTP_USER@RESTIC_SFTP_SERVER:BASE_PATH`.
    Sftp {
        user: String,
        server: String,
        base_path: String,
    },
    /// `RESTIC_BACKEND=S3`: `s3:<endpoint>/<bucket>/<repo_id>` (the access settings are in
    /// [`crate::settings::S3Access`]).
    S3 { endpoint: String, bucket: String },
}

/// RESTIC_S3_ENDPOINT as the stock driver reads it: `s3.amazonaws.com` by default, trailing
/// `/` removed, an `s3:` prefix dropped (the repository URL adds it back).
fn s3_endpoint(ds: &Datastore) -> Result<String, Error> {
    let raw = ds
        .attribute("RESTIC_S3_ENDPOINT")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .unwrap_or("s3.amazonaws.com");
    let e = raw.strip_prefix("s3:").unwrap_or(raw);
    let (scheme, host) = if let Some(h) = e.strip_prefix("http://") {
        ("http://", h)
    } else if let Some(h) = e.strip_prefix("https://") {
        ("https://", h)
    } else {
        ("", e)
    };
    let host = host.trim_end_matches('/');
    let (name, port) = host.split_once(':').unwrap_or((host, "1"));
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !name_ok || port.parse::<u16>().is_err() {
        return Err(Error::config(format!(
            "datastore {}: RESTIC_S3_ENDPOINT {:?} is not [http://|https://]host[:port]",
            ds.id,
            backstop_protocol::redact::url(raw)
        )));
    }
    Ok(format!("{scheme}{host}"))
}

/// RESTIC_S3_BUCKET: required, and a name S3 accepts (3 to 63 of a-z, 0-9, `.`, `-`).
fn s3_bucket(ds: &Datastore) -> Result<String, Error> {
    let b = ds
        .attribute("RESTIC_S3_BUCKET")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            Error::config(format!(
                "datastore {}: RESTIC_S3_BUCKET is missing (RESTIC_BACKEND is S3)",
                ds.id
            ))
        })?;
    let ok = (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !b.starts_with(['.', '-'])
        && !b.ends_with(['.', '-']);
    if !ok {
        return Err(Error::config(format!(
            "datastore {}: RESTIC_S3_BUCKET {b:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')",
            ds.id
        )));
    }
    Ok(b.to_string())
}

impl Location {
    /// Reads `RESTIC_BACKEND`, `RESTIC_SFTP_SERVER` and `RESTIC_SFTP_USER`, or for S3
    /// `RESTIC_S3_ENDPOINT` and `RESTIC_S3_BUCKET`.
    pub fn of(ds: &Datastore) -> Result<Location, Error> {
        let backend = ds.attribute("RESTIC_BACKEND").map(str::to_ascii_uppercase);
        let server = ds.attribute("RESTIC_SFTP_SERVER");
        match (backend.as_deref(), server) {
            (Some("S3"), _) => Ok(Location::S3 {
                endpoint: s3_endpoint(ds)?,
                bucket: s3_bucket(ds)?,
            }),
            (Some("LOCAL"), _) | (None | Some("SFTP"), None) => Ok(Location::Local {
                base_path: ds.base_path.clone(),
            }),
            (None | Some("SFTP"), Some(server)) => Ok(Location::Sftp {
                user: ds
                    .attribute("RESTIC_SFTP_USER")
                    .unwrap_or("oneadmin")
                    .to_string(),
                server: server.to_string(),
                base_path: ds.base_path.clone(),
            }),
            (Some(other), _) => Err(Error::config(format!(
                "datastore {}: RESTIC_BACKEND {other:?} is not one of LOCAL, SFTP, S3",
                ds.id
            ))),
        }
    }
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
            base_path: "/var/lib/one//datastores/100".into(),
            type_code: Some(3),
            template: Template::parse(template).expect("template"),
        }
    }

    #[test]
    fn picks_the_backend() {
        assert_eq!(
            Location::of(&ds("")).expect("local"),
            Location::Local {
                base_path: "/var/lib/one//datastores/100".into()
            }
        );
        assert_eq!(
            Location::of(&ds("RESTIC_SFTP_SERVER = 10.0.0.8")).expect("sftp"),
            Location::Sftp {
                user: "oneadmin".into(),
                server: "10.0.0.8".into(),
                base_path: "/var/lib/one//datastores/100".into()
            }
        );
        assert!(matches!(
            Location::of(&ds("RESTIC_BACKEND = LOCAL\nRESTIC_SFTP_SERVER = x")),
            Ok(Location::Local { .. })
        ));
        assert_eq!(
            Location::of(&ds("RESTIC_BACKEND = tape"))
                .expect_err("bad")
                .to_string(),
            "datastore 100: RESTIC_BACKEND \"TAPE\" is not one of LOCAL, SFTP, S3"
        );
    }

    #[test]
    fn reads_the_s3_endpoint_and_bucket_as_stock_does() {
        let s3 = |t: &str| Location::of(&ds(&format!("RESTIC_BACKEND = S3\n{t}")));
        assert_eq!(
            s3("RESTIC_S3_BUCKET = backups").expect("defaults"),
            Location::S3 {
                endpoint: "s3.amazonaws.com".into(),
                bucket: "backups".into()
            }
        );
        assert_eq!(
            s3("RESTIC_S3_BUCKET = b-1\nRESTIC_S3_ENDPOINT = \"http://127.0.0.1:18333/\"")
                .expect("http"),
            Location::S3 {
                endpoint: "http://127.0.0.1:18333".into(),
                bucket: "b-1".into()
            }
        );
        assert_eq!(
            s3("RESTIC_S3_BUCKET = b-1\nRESTIC_S3_ENDPOINT = \"s3:https://minio:9000\"")
                .expect("s3: prefix"),
            Location::S3 {
                endpoint: "https://minio:9000".into(),
                bucket: "b-1".into()
            }
        );
        assert_eq!(
            s3("").expect_err("no bucket").to_string(),
            "datastore 100: RESTIC_S3_BUCKET is missing (RESTIC_BACKEND is S3)"
        );
        for bad in ["Upper", "a/b", "..x", "ab", "x\\y"] {
            assert!(
                s3(&format!("RESTIC_S3_BUCKET = \"{bad}\"")).is_err(),
                "{bad}"
            );
        }
        for bad in ["http://h/x", "user@h", "http://"] {
            assert!(
                s3(&format!(
                    "RESTIC_S3_BUCKET = b-1\nRESTIC_S3_ENDPOINT = \"{bad}\""
                ))
                .is_err(),
                "{bad}"
            );
        }
        let e =
            s3("RESTIC_S3_BUCKET = b-1\nRESTIC_S3_ENDPOINT = \"https://AKIA:s3cret@minio:9000\"")
                .expect_err("credentials");
        assert_eq!(
            e.to_string(),
            "datastore 100: RESTIC_S3_ENDPOINT \"https://AKIA:***@minio:9000\" is not [http://|https://]host[:port]"
        );
    }
}
