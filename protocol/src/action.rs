//! The catalogue of actions and how an invocation names one.
//!
//! oned runs `remotes/datastore/<DS_MAD>/<action>` and `remotes/tm/<TM_MAD>/<action>`;
//! downloader.sh runs `remotes/datastore/<scheme>_downloader[.rb]`. backstop is one executable:
//! each of those files is a shim (or a symlink) and the action is read from its path.

use crate::input::Encoding;
use serde::Serialize;
use std::path::Path;

/// Backup datastore actions (driver contract §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatastoreAction {
    Backup,
    BackupCancel,
    Monitor,
    Stat,
    Rm,
    IncrementFlatten,
    Ls,
    Restore,
    /// An image-datastore action a backup datastore refuses.
    Unsupported(UnsupportedAction),
}

/// The actions oned may send to any datastore that a backup datastore does not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsupportedAction {
    Cp,
    Mkfs,
    Clone,
    SnapDelete,
    SnapRevert,
    SnapFlatten,
    Export,
}

/// Transfer-manager actions on the host side (driver contract §4, §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TmAction {
    Prebackup,
    PrebackupLive,
    Postbackup,
    PostbackupLive,
    Restore,
}

pub const DATASTORE_ACTIONS: &[DatastoreAction] = &[
    DatastoreAction::Backup,
    DatastoreAction::BackupCancel,
    DatastoreAction::Monitor,
    DatastoreAction::Stat,
    DatastoreAction::Rm,
    DatastoreAction::IncrementFlatten,
    DatastoreAction::Ls,
    DatastoreAction::Restore,
    DatastoreAction::Unsupported(UnsupportedAction::Cp),
    DatastoreAction::Unsupported(UnsupportedAction::Mkfs),
    DatastoreAction::Unsupported(UnsupportedAction::Clone),
    DatastoreAction::Unsupported(UnsupportedAction::SnapDelete),
    DatastoreAction::Unsupported(UnsupportedAction::SnapRevert),
    DatastoreAction::Unsupported(UnsupportedAction::SnapFlatten),
    DatastoreAction::Unsupported(UnsupportedAction::Export),
];

pub const TM_ACTIONS: &[TmAction] = &[
    TmAction::Prebackup,
    TmAction::PrebackupLive,
    TmAction::Postbackup,
    TmAction::PostbackupLive,
    TmAction::Restore,
];

impl DatastoreAction {
    pub fn name(self) -> &'static str {
        match self {
            DatastoreAction::Backup => "backup",
            DatastoreAction::BackupCancel => "backup_cancel",
            DatastoreAction::Monitor => "monitor",
            DatastoreAction::Stat => "stat",
            DatastoreAction::Rm => "rm",
            DatastoreAction::IncrementFlatten => "increment_flatten",
            DatastoreAction::Ls => "ls",
            DatastoreAction::Restore => "restore",
            DatastoreAction::Unsupported(u) => u.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        DATASTORE_ACTIONS.iter().copied().find(|a| a.name() == name)
    }

    /// How oned encodes this action's stdin (driver contract §12 Q2).
    pub fn encoding(self) -> Encoding {
        match self {
            DatastoreAction::Backup | DatastoreAction::BackupCancel | DatastoreAction::Ls => {
                Encoding::RawXml
            }
            _ => Encoding::Base64,
        }
    }
}

impl UnsupportedAction {
    pub fn name(self) -> &'static str {
        match self {
            UnsupportedAction::Cp => "cp",
            UnsupportedAction::Mkfs => "mkfs",
            UnsupportedAction::Clone => "clone",
            UnsupportedAction::SnapDelete => "snap_delete",
            UnsupportedAction::SnapRevert => "snap_revert",
            UnsupportedAction::SnapFlatten => "snap_flatten",
            UnsupportedAction::Export => "export",
        }
    }
}

impl TmAction {
    pub fn name(self) -> &'static str {
        match self {
            TmAction::Prebackup => "prebackup",
            TmAction::PrebackupLive => "prebackup_live",
            TmAction::Postbackup => "postbackup",
            TmAction::PostbackupLive => "postbackup_live",
            TmAction::Restore => "restore",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        TM_ACTIONS.iter().copied().find(|a| a.name() == name)
    }
}

/// What a path in the remotes tree asks backstop to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Invocation {
    /// `datastore/<mad>/<action>`
    Datastore {
        mad: String,
        action: DatastoreAction,
    },
    /// `tm/<tm_mad>/<action>`
    Tm { tm_mad: String, action: TmAction },
    /// `datastore/<scheme>_downloader[.rb|.sh]`
    Downloader { scheme: String },
}

/// `path` made absolute with `.` and `..` resolved by name, not by the file system: oned's
/// scripts call actions through paths such as `remotes/datastore/fs/../downloader.sh`, whose
/// `$(dirname "$0")` then names the scheme's downloader.
pub fn lexical(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = std::path::PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Why a path names no action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownAction(pub String);

impl Invocation {
    /// Reads the action from the path a shim or symlink was run as. As one_tm does, a missing
    /// name is also tried without its `.suffix`.
    pub fn from_path(path: &Path) -> Result<Invocation, UnknownAction> {
        let parts: Vec<String> = lexical(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let unknown = || {
            UnknownAction(format!(
                "{} is not a backstop action (expected .../datastore/<mad>/<action>, .../tm/<tm>/<action> or .../datastore/<scheme>_downloader)",
                path.display()
            ))
        };
        let n = parts.len();
        let strip = |name: &str| -> String {
            match name.rsplit_once('.') {
                Some((base, _)) if !base.is_empty() => base.to_string(),
                _ => name.to_string(),
            }
        };
        if n >= 2 && parts[n - 2] == "datastore" {
            let file = strip(&parts[n - 1]);
            if let Some(scheme) = file.strip_suffix("_downloader").filter(|s| !s.is_empty()) {
                return Ok(Invocation::Downloader {
                    scheme: scheme.to_string(),
                });
            }
        }
        if n >= 3 {
            let (kind, mad, name) = (&parts[n - 3], &parts[n - 2], &parts[n - 1]);
            if kind == "datastore" {
                let action = DatastoreAction::from_name(name)
                    .or_else(|| DatastoreAction::from_name(&strip(name)))
                    .ok_or_else(unknown)?;
                return Ok(Invocation::Datastore {
                    mad: mad.clone(),
                    action,
                });
            }
            if kind == "tm" {
                let action = TmAction::from_name(name)
                    .or_else(|| TmAction::from_name(&strip(name)))
                    .ok_or_else(unknown)?;
                return Ok(Invocation::Tm {
                    tm_mad: mad.clone(),
                    action,
                });
            }
        }
        Err(unknown())
    }

    /// The name used in error lines: the action as oned knows it.
    pub fn name(&self) -> String {
        match self {
            Invocation::Datastore { action, .. } => action.name().to_string(),
            Invocation::Tm { action, .. } => action.name().to_string(),
            Invocation::Downloader { scheme } => format!("{scheme}_downloader"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_actions_from_paths() {
        let cases = [
            (
                "/var/lib/one/remotes/datastore/backstop/increment_flatten",
                Invocation::Datastore {
                    mad: "backstop".into(),
                    action: DatastoreAction::IncrementFlatten,
                },
            ),
            (
                "/var/tmp/one/datastore/restic/snap_delete",
                Invocation::Datastore {
                    mad: "restic".into(),
                    action: DatastoreAction::Unsupported(UnsupportedAction::SnapDelete),
                },
            ),
            (
                "remotes/tm/qcow2/prebackup_live",
                Invocation::Tm {
                    tm_mad: "qcow2".into(),
                    action: TmAction::PrebackupLive,
                },
            ),
            (
                "/r/tm/ssh/postbackup.ssh",
                Invocation::Tm {
                    tm_mad: "ssh".into(),
                    action: TmAction::Postbackup,
                },
            ),
            (
                "/var/lib/one/remotes/datastore/restic_downloader.rb",
                Invocation::Downloader {
                    scheme: "restic".into(),
                },
            ),
            (
                "/x/datastore/backstop_downloader",
                Invocation::Downloader {
                    scheme: "backstop".into(),
                },
            ),
            // As the stock `fs/cp` reaches it: `$(dirname $0)` of `datastore/fs/../downloader.sh`.
            (
                "/var/lib/one/remotes/datastore/fs/../backstop_downloader",
                Invocation::Downloader {
                    scheme: "backstop".into(),
                },
            ),
            (
                "/r/datastore/./backstop/../backstop/stat",
                Invocation::Datastore {
                    mad: "backstop".into(),
                    action: DatastoreAction::Stat,
                },
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(
                Invocation::from_path(Path::new(path)).expect(path),
                expected
            );
        }
        for bad in [
            "/usr/bin/backstop",
            "/r/datastore/backstop/frobnicate",
            "/r/tm/ssh/clone",
        ] {
            assert!(Invocation::from_path(Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            lexical(Path::new("/a/datastore/fs/../x/./y")),
            Path::new("/a/datastore/x/y")
        );
    }
}
