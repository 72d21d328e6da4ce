//! `install --with-services` (docs/services.md): systemd units for the scheduler daemon and the
//! web server, an environment file for their settings and secrets, and how to enable them;
//! `--uninstall` removes the units.
//!
//! The units run as oneadmin (the runner logs in to hosts and to oned as oneadmin does) and read
//! `EnvironmentFile=` (default `/etc/backstop/backstop.env`, made 0600 and never overwritten: it
//! holds the operator's secrets). The paths written are kept in `<remotes>/backstop/services`
//! so that `--uninstall` removes exactly those, and only when they are still backstop's.

use super::tree::{Open, Rel, Tree};
use super::{InstallError, MARK, SMALL_FILE};
use std::io::Write;
use std::path::{Component, Path};

pub const SCHEDULER_UNIT: &str = "backstop-scheduler.service";
pub const WEB_UNIT: &str = "backstop-web.service";
const UNITS: [&str; 2] = [SCHEDULER_UNIT, WEB_UNIT];

fn record() -> Rel {
    super::rel("backstop/services")
}
fn unit(description: &str, exec: &str, env_file: &Path, stop: &str) -> String {
    format!(
        "# {MARK}: written by backstop's install.sh --with-services; --uninstall removes it.\n\
         [Unit]\n\
         Description={description}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User=oneadmin\n\
         EnvironmentFile=-{}\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=30\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec={stop}\n\
         NoNewPrivileges=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        env_file.display()
    )
}

const ENV_FILE: &str = "# Settings and secrets of backstop's services (systemd EnvironmentFile=); keep it 0600.\n\
# The runner's state (default: ~oneadmin/.local/share/backstop/state.db); set it here and the\n\
# command line, run as oneadmin, needs the same BACKSTOP_STATE (or --state) to see it\n\
#BACKSTOP_STATE=/var/lib/one/backstop/state.db\n\
# backstop serve: where it listens; any non-loopback address needs both BACKSTOP_API_TOKEN\n\
# and BACKSTOP_WEB_PASSWORD_HASH\n\
#BACKSTOP_LISTEN=127.0.0.1:8421\n\
# the JSON API's and /metrics' bearer token (16 characters or more)\n\
#BACKSTOP_API_TOKEN=\n\
# the key to the actions (POST /api/jobs/ID/run, ...), another token of 16 or more\n\
#BACKSTOP_ADMIN_TOKEN=\n\
# the pages' password, from: backstop serve --hash-password (the password on stdin)\n\
#BACKSTOP_WEB_PASSWORD_HASH=\n\
# yes: the page password may use the dashboard's buttons too (needs BACKSTOP_ADMIN_TOKEN)\n\
#BACKSTOP_WEB_ACTIONS=no\n\
# yes: OpenNebula users log in with their own credentials, checked by oned, and see their VMs\n\
# (needs BACKSTOP_WEB_PASSWORD_HASH; serve speaks plain HTTP: a TLS proxy in front off-host)\n\
#BACKSTOP_WEB_TENANTS=no\n\
#ONE_XMLRPC=http://localhost:2633/RPC2\n\
# Notifications (docs/notifications.md)\n\
#BACKSTOP_NOTIFY_EMAIL=ops@example.org\n\
#BACKSTOP_SMTP_SERVER=mail.example.org:587\n\
#BACKSTOP_SMTP_USER=\n\
#BACKSTOP_SMTP_PASSWORD_FILE=/etc/backstop/smtp-password\n\
#BACKSTOP_SMTP_FROM=\n\
#BACKSTOP_NOTIFY_WEBHOOK=\n\
#BACKSTOP_NOTIFY_CA_FILE=\n";

/// The directory of an absolute path and its last component, the directory opened as a tree
/// (a link on the way is followed only where nobody but root or this user could have put it).
fn open_parent(path: &Path, how: Open) -> Result<(Tree, Rel), InstallError> {
    let bad = || InstallError(format!("{} is not a path to a file", path.display()));
    let path = &std::path::absolute(path).map_err(|_| bad())?;
    let name = match path.components().next_back() {
        Some(Component::Normal(n)) => n.to_str().and_then(Rel::parse).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let dir = path.parent().filter(|d| d.is_absolute()).ok_or_else(bad)?;
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(bad());
    }
    Ok((Tree::open(dir, how)?, name))
}

/// Whether the unit file at `path` exists and carries the installer's mark.
fn unit_is_ours(path: &Path) -> Result<Option<bool>, InstallError> {
    if std::fs::symlink_metadata(path.parent().unwrap_or(path)).is_err() {
        return Ok(None);
    }
    let (dir, name) = open_parent(path, Open::Existing)?;
    Ok(dir
        .read(&name, SMALL_FILE)
        .map(|found| found.map(|(text, _)| text.windows(MARK.len()).any(|w| w == MARK.as_bytes())))
        // A link or anything but a regular file is not a unit backstop wrote.
        .unwrap_or(Some(false)))
}

/// Refuses a unit of the same name that is not backstop's (the installer asks before it writes
/// anything).
pub fn check(systemd_dir: &Path) -> Result<(), InstallError> {
    for name in UNITS {
        let path = systemd_dir.join(name);
        if unit_is_ours(&path)? == Some(false) {
            return Err(InstallError(format!(
                "{} exists and is not backstop's; not replacing it",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Writes the units and (when missing) the environment file; records what it wrote in the
/// tree.
pub fn write(
    tree: &Tree,
    systemd_dir: &Path,
    env_file: &Path,
    out: &mut impl Write,
) -> Result<(), InstallError> {
    let remotes = std::path::absolute(tree.path())
        .map_err(|e| InstallError(format!("cannot resolve {}: {e}", tree.path().display())))?;
    let binary = remotes.join(super::BINARY);
    let remotes_arg = remotes.display();
    let units = [
        (
            SCHEDULER_UNIT,
            unit(
                "backstop: the backup-job scheduler",
                &format!(
                    "{} backupjob --remotes {remotes_arg} scheduler --loop",
                    binary.display()
                ),
                env_file,
                // It stops between backups on SIGTERM; let the one running finish.
                "6h",
            ),
        ),
        (
            WEB_UNIT,
            unit(
                "backstop: dashboard, JSON API and metrics",
                &format!("{} serve", binary.display()),
                env_file,
                "30s",
            ),
        ),
    ];
    check(systemd_dir)?;
    // A dry run pretends here too.
    let how = if tree.pretending() {
        Open::Pretend
    } else {
        Open::Create
    };
    let units_dir = Tree::open(systemd_dir, how)?;
    let mut written = Vec::new();
    for (name, text) in &units {
        if units_dir.write_if_changed(&super::rel(name), text.as_bytes(), 0o644)? {
            writeln!(out, "wrote {}", systemd_dir.join(name).display()).ok();
        }
        written.push(systemd_dir.join(name));
    }
    let (env_dir, env_name) = open_parent(env_file, how)?;
    if env_dir.write_once(&env_name, ENV_FILE.as_bytes(), 0o600)? {
        writeln!(
            out,
            "wrote {} (settings and secrets, 0600)",
            env_file.display()
        )
        .ok();
    }
    let list: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    tree.write_if_changed(&record(), list.as_bytes(), 0o644)?;
    writeln!(
        out,
        "to start them: systemctl daemon-reload && systemctl enable --now {SCHEDULER_UNIT} {WEB_UNIT}\n\
         (settings and secrets: {})",
        env_file.display()
    )
    .ok();
    Ok(())
}

/// Removes the units an install wrote (those still backstop's); the environment file stays.
/// The record in the tree only says where they were written: a line naming anything but one of
/// backstop's unit names at an absolute path is not followed (the tree's owner can edit it).
pub fn remove(tree: &Tree, systemd_dir: &Path, out: &mut impl Write) -> Result<(), InstallError> {
    let listed = match tree.read(&record(), SMALL_FILE)? {
        Some((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
        None => return Ok(()),
    };
    let mut paths: Vec<std::path::PathBuf> = UNITS.iter().map(|n| systemd_dir.join(n)).collect();
    for line in listed.lines().filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| UNITS.contains(&n));
        if !named || !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            writeln!(out, "left {line}: not a unit backstop writes").ok();
            continue;
        }
        if !paths.iter().any(|p| p == path) {
            paths.push(path.to_path_buf());
        }
    }
    for path in paths {
        // Where the record points, only a directory only root can change: the record is the
        // tree owner's to edit, and a unit-named file elsewhere may be another user's.
        let listed_only = !UNITS.iter().any(|n| systemd_dir.join(n) == path);
        if listed_only
            && std::fs::symlink_metadata(path.parent().unwrap_or(&path)).is_ok()
            && !open_parent(&path, Open::Existing).is_ok_and(|(dir, _)| dir.only_root_can_change())
        {
            writeln!(
                out,
                "left {}: not in a directory only root can change",
                path.display()
            )
            .ok();
            continue;
        }
        match unit_is_ours(&path)? {
            Some(true) => {
                let how = if tree.pretending() {
                    Open::Pretend
                } else {
                    Open::Existing
                };
                let (dir, name) = open_parent(&path, how)?;
                dir.remove_file(&name)?;
                writeln!(out, "removed {}", path.display()).ok();
            }
            Some(false) => {
                writeln!(out, "left {}: it is no longer backstop's", path.display()).ok();
            }
            None => {}
        }
    }
    tree.remove_file(&record())?;
    writeln!(
        out,
        "the services are removed (run systemctl daemon-reload); their environment file stays, as it holds your settings"
    )
    .ok();
    Ok(())
}
