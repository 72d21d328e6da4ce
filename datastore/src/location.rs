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
    /// `RESTIC_BACKEND=S3`.
    S3,
}

impl Location {
    /// Reads `RESTIC_BACKEND`, `RESTIC_SFTP_SERVER` and `RESTIC_SFTP_USER`.
    pub fn of(ds: &Datastore) -> Result<Location, Error> {
        let backend = ds.attribute("RESTIC_BACKEND").map(str::to_ascii_uppercase);
        let server = ds.attribute("RESTIC_SFTP_SERVER");
        match (backend.as_deref(), server) {
            (Some("S3"), _) => Ok(Location::S3),
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
}
