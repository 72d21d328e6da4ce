//! `install --with-services` (docs/services.md): systemd units for the scheduler daemon and the
//! web server, an environment file for their settings and secrets, and how to enable them;
//! `--uninstall` removes the units.
//!
//! The units run as oneadmin (the runner logs in to hosts and to oned as oneadmin does) and read
//! `EnvironmentFile=` (default `/etc/backstop/backstop.env`, made 0600 and never overwritten: it
//! holds the operator's secrets). The paths written are kept in `<remotes>/backstop/services`
//! so that `--uninstall` removes exactly those, and only when they are still backstop's.

use crate::install::{InstallError, MARK, write_if_changed};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SCHEDULER_UNIT: &str = "backstop-scheduler.service";
pub const WEB_UNIT: &str = "backstop-web.service";

fn record(remotes: &Path) -> PathBuf {
    remotes.join("backstop/services")
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
# The runner's state (default: ~oneadmin/.local/share/backstop/state.db)\n\
#BACKSTOP_STATE=/var/lib/one/backstop/state.db\n\
# backstop serve: where it listens; any non-loopback address needs both of the next two\n\
#BACKSTOP_LISTEN=127.0.0.1:8421\n\
#BACKSTOP_API_TOKEN=\n\
# the key to the actions (POST /api/jobs/ID/run, ...), another token\n\
#BACKSTOP_ADMIN_TOKEN=\n\
# from: backstop serve --hash-password (the password on stdin)\n\
#BACKSTOP_WEB_PASSWORD_HASH=\n\
# Notifications (docs/notifications.md)\n\
#BACKSTOP_NOTIFY_EMAIL=ops@example.org\n\
#BACKSTOP_SMTP_SERVER=mail.example.org:587\n\
#BACKSTOP_SMTP_USER=\n\
#BACKSTOP_SMTP_PASSWORD_FILE=/etc/backstop/smtp-password\n\
#BACKSTOP_SMTP_FROM=\n\
#BACKSTOP_NOTIFY_WEBHOOK=\n\
#BACKSTOP_NOTIFY_CA_FILE=\n";

/// Refuses a unit of the same name that is not backstop's (the installer asks before it writes
/// anything).
pub fn check(systemd_dir: &Path) -> Result<(), InstallError> {
    for name in [SCHEDULER_UNIT, WEB_UNIT] {
        let path = systemd_dir.join(name);
        if let Ok(existing) = fs::read_to_string(&path)
            && !existing.contains(MARK)
        {
            return Err(InstallError(format!(
                "{} exists and is not backstop's; not replacing it",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Writes the units and (when missing) the environment file; records what it wrote.
pub fn write(
    remotes: &Path,
    systemd_dir: &Path,
    env_file: &Path,
    out: &mut impl Write,
) -> Result<(), InstallError> {
    let binary = remotes.join("backstop/bin/backstop");
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
    let mut written = Vec::new();
    for (name, text) in &units {
        let path = systemd_dir.join(name);
        if write_if_changed(&path, text.as_bytes(), 0o644)? {
            writeln!(out, "wrote {}", path.display()).ok();
        }
        written.push(path);
    }
    if fs::symlink_metadata(env_file).is_err() {
        write_if_changed(env_file, ENV_FILE.as_bytes(), 0o600)?;
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
    write_if_changed(&record(remotes), list.as_bytes(), 0o644)?;
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
pub fn remove(remotes: &Path, out: &mut impl Write) -> Result<(), InstallError> {
    let Ok(list) = fs::read_to_string(record(remotes)) else {
        return Ok(());
    };
    for line in list.lines().filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        match fs::read_to_string(path) {
            Ok(text) if text.contains(MARK) => {
                fs::remove_file(path)
                    .map_err(|e| InstallError(format!("cannot remove {line}: {e}")))?;
                writeln!(out, "removed {line}").ok();
            }
            Ok(_) => writeln!(out, "left {line}: it is no longer backstop's")
                .ok()
                .unwrap_or(()),
            Err(_) => {}
        }
    }
    fs::remove_file(record(remotes))
        .map_err(|e| InstallError(format!("cannot remove {}: {e}", record(remotes).display())))?;
    writeln!(
        out,
        "the services are removed (run systemctl daemon-reload); their environment file stays, as it holds your settings"
    )
    .ok();
    Ok(())
}
