//! The installation's configuration, read on the front-end from the remotes tree.
//!
//! - `<remotes>/etc/datastore/datastore.conf` (OpenNebula's own, shell syntax): `BACKUP_BASE_PATH`
//!   moves the staging directory to `<BACKUP_BASE_PATH>/<vm_id>/backup` (driver contract §4.2).
//! - `<remotes>/etc/datastore/backstop.conf` (ours, same syntax), all optional:
//!   - `SCRIPTS_REMOTE_DIR`: where `onehost sync` puts the remotes tree on hosts (oned.conf's
//!     setting of the same name; default `/var/tmp/one`); the host step runs
//!     `<SCRIPTS_REMOTE_DIR>/backstop/bin/backstop`.
//!   - `SSH_CONFIG`: an OpenSSH client configuration file used instead of `~/.ssh/config`, by
//!     `ssh` to the hosts and by the SFTP client (on the front-end and on the hosts, so the file
//!     must exist at that path on both).
//!   - `RUN_DIR`: where running backups leave their PID files for `backup_cancel` (default
//!     `<remotes>/../.backstop/run`, i.e. `/var/lib/one/.backstop/run`).
//!   - `TM_DELIVERY`: how backstop's prebackup hands disks to the datastore: `staging` (copies
//!     in the stock layout, for any datastore driver), `direct` (no copies; only backstop's
//!     datastore reads them) or `auto` (the default: direct when the backup datastore's
//!     `backup` action is backstop's, asked of oned; staging otherwise).

use crate::Error;
use crate::message::Datastore;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

pub const DEFAULT_SCRIPTS_REMOTE_DIR: &str = "/var/tmp/one";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    pub remotes: PathBuf,
    pub scripts_remote_dir: String,
    pub ssh_config: Option<PathBuf>,
    pub backup_base_path: Option<String>,
    pub run_dir: PathBuf,
    pub tm_delivery: Delivery,
}

/// How prebackup hands the disks to the datastore's backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    #[default]
    Auto,
    Staging,
    Direct,
}

impl DriverConfig {
    /// Reads both files under `remotes`; a missing file means the defaults.
    pub fn load(remotes: &Path) -> Result<DriverConfig, Error> {
        let ours = read_conf(&remotes.join("etc/datastore/backstop.conf"))?;
        let one = read_conf(&remotes.join("etc/datastore/datastore.conf"))?;
        let get = |vars: &[(String, String)], key: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let parent = remotes.parent().unwrap_or(remotes);
        Ok(DriverConfig {
            remotes: remotes.to_path_buf(),
            scripts_remote_dir: get(&ours, "SCRIPTS_REMOTE_DIR")
                .unwrap_or_else(|| DEFAULT_SCRIPTS_REMOTE_DIR.to_string()),
            ssh_config: get(&ours, "SSH_CONFIG").map(PathBuf::from),
            backup_base_path: get(&one, "BACKUP_BASE_PATH"),
            run_dir: get(&ours, "RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| parent.join(".backstop/run")),
            tm_delivery: match get(&ours, "TM_DELIVERY").as_deref() {
                None | Some("auto") => Delivery::Auto,
                Some("staging") => Delivery::Staging,
                Some("direct") => Delivery::Direct,
                Some(other) => {
                    return Err(Error::config(format!(
                        "{}: TM_DELIVERY is {other:?}; use auto, staging or direct",
                        remotes.join("etc/datastore/backstop.conf").display()
                    )));
                }
            },
        })
    }

    /// The staging directory of a VM (driver contract §4.2).
    pub fn staging_dir(&self, vm_dir: &str, vm_id: u64) -> String {
        match &self.backup_base_path {
            Some(base) => format!("{}/{vm_id}/backup", base.trim_end_matches('/')),
            None => format!("{}/backup", vm_dir.trim_end_matches('/')),
        }
    }

    /// The backstop binary on hosts.
    pub fn remote_binary(&self) -> String {
        format!(
            "{}/backstop/bin/backstop",
            self.scripts_remote_dir.trim_end_matches('/')
        )
    }
}

/// `KEY=VALUE` lines in shell syntax: comments, `export`, one level of quotes.
pub fn parse_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line).trim();
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            Some((key.to_string(), unquote(value.trim()).to_string()))
        })
        .collect()
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

fn read_conf(path: &Path) -> Result<Vec<(String, String)>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_conf(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// A whole-number attribute of a datastore within `range`; `None` when it is not set (or
/// blank). The error names the datastore, the attribute and the range.
pub fn datastore_number(
    ds: &Datastore,
    name: &str,
    range: RangeInclusive<i64>,
) -> Result<Option<i64>, Error> {
    let Some(v) = ds.attribute(name).map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match v.parse::<i64>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(Error::config(format!(
            "datastore {}: {name} is {v:?}, not a whole number from {} to {}",
            ds.id,
            range.start(),
            range.end()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_syntax() {
        let vars = parse_conf(
            "# comment\nBACKUP_BASE_PATH=\"/srv/stage\"\nexport SSH_CONFIG='/etc/x y'\n  A = b \nnot a line\n",
        );
        assert_eq!(
            vars,
            vec![
                ("BACKUP_BASE_PATH".to_string(), "/srv/stage".to_string()),
                ("SSH_CONFIG".to_string(), "/etc/x y".to_string()),
                ("A".to_string(), "b".to_string()),
            ]
        );
    }

    #[test]
    fn staging_dir_follows_backup_base_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let remotes = dir.path().join("remotes");
        let mut cfg = DriverConfig::load(&remotes).expect("defaults");
        assert_eq!(cfg.scripts_remote_dir, "/var/tmp/one");
        assert_eq!(cfg.run_dir, dir.path().join(".backstop/run"));
        assert_eq!(
            cfg.staging_dir("/var/lib/one//datastores/0/22", 22),
            "/var/lib/one//datastores/0/22/backup"
        );
        cfg.backup_base_path = Some("/srv/stage/".into());
        assert_eq!(cfg.staging_dir("/x/22", 22), "/srv/stage/22/backup");
    }
}
