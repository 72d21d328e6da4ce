//! The tools measured beside backstop on the same data: restic (always) and rustic (when a
//! binary is on PATH or given with `--rustic`). Each gets a repository of its own and is run as
//! a user would run it, as a separate process; passwords come from the environment.

use crate::run::q;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Restic,
    Rustic,
}

#[derive(Debug)]
pub struct Peer {
    pub kind: Kind,
    bin: PathBuf,
    repo: String,
    /// Extra options before the command (restic's `-o sftp.command=...`).
    options: String,
}

/// The snapshot's single file: both peers back up the image from stdin under this name.
pub const NAME: &str = "disk.0.0";

impl Peer {
    pub fn restic(repo: &Path) -> Peer {
        Peer {
            kind: Kind::Restic,
            bin: PathBuf::from("restic"),
            repo: repo.display().to_string(),
            options: String::new(),
        }
    }

    /// restic on an SFTP repository, reached with the benchmark's own ssh config.
    pub fn restic_sftp(remote_path: &Path, ssh_config: &Path) -> Peer {
        let command = format!("ssh -F {} benchhost -s sftp", ssh_config.display());
        Peer {
            kind: Kind::Restic,
            bin: PathBuf::from("restic"),
            repo: format!("sftp:benchhost:{}", remote_path.display()),
            options: format!("-o {}", q(Path::new(&format!("sftp.command={command}")))),
        }
    }

    /// restic on an S3 repository (keys in the environment).
    pub fn restic_s3(url: &str) -> Peer {
        Peer {
            kind: Kind::Restic,
            bin: PathBuf::from("restic"),
            repo: url.to_string(),
            options: String::new(),
        }
    }

    pub fn rustic(bin: PathBuf, repo: &Path) -> Peer {
        Peer {
            kind: Kind::Rustic,
            bin,
            repo: repo.display().to_string(),
            options: String::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Restic => "restic",
            Kind::Rustic => "rustic",
        }
    }

    fn cmd(&self, rest: &str) -> String {
        let repo = q(Path::new(&self.repo));
        match self.kind {
            Kind::Restic => format!(
                "{} --no-cache -q {} -r {repo} {rest}",
                q(&self.bin),
                self.options
            ),
            Kind::Rustic => format!(
                "{} --no-cache --log-level warn -r {repo} {rest}",
                q(&self.bin)
            ),
        }
    }

    pub fn init(&self) -> String {
        self.cmd("init")
    }

    /// restic's `copy` of every snapshot of the repository `from` (its password in
    /// RESTIC_FROM_PASSWORD) into this one.
    pub fn copy_from(&self, from: &Path) -> String {
        self.cmd(&format!("copy --from-repo {}", q(from)))
    }

    /// restic's `check --read-data` of this repository.
    pub fn check_read_data(&self) -> String {
        self.cmd("check --read-data")
    }

    pub fn backup(&self, image: &Path) -> String {
        match self.kind {
            Kind::Restic => self.cmd(&format!(
                "backup --stdin --stdin-filename {NAME} < {}",
                q(image)
            )),
            // --force: rustic 0.11.4 takes stdin as unchanged against a parent snapshot and
            // records an empty file; a stream has no metadata to compare, so read it all.
            Kind::Rustic => self.cmd(&format!(
                "backup --force --stdin-filename {NAME} - < {}",
                q(image)
            )),
        }
    }

    /// What every command pays before data moves: key derivation and listing snapshots.
    pub fn open(&self) -> String {
        self.cmd("snapshots")
    }

    pub fn dump_to_null(&self) -> String {
        match self.kind {
            Kind::Restic => self.cmd(&format!("dump latest {NAME} > /dev/null")),
            Kind::Rustic => self.cmd(&format!("dump latest:{NAME} > /dev/null")),
        }
    }

    /// Restores the latest snapshot into `dir` (the file lands at `dir/disk.0.0`), then
    /// `sync`: the restore is only as done as what is on the disk.
    pub fn restore_and_sync(&self, dir: &Path) -> String {
        let restore = match self.kind {
            Kind::Restic => self.cmd(&format!("restore latest --target {}", q(dir))),
            Kind::Rustic => self.cmd(&format!("restore latest {}", q(dir))),
        };
        format!("{restore} && sync")
    }

    /// The tool's own version line.
    pub fn version(&self) -> String {
        let arg = match self.kind {
            Kind::Restic => "version",
            Kind::Rustic => "--version",
        };
        let out = std::process::Command::new(&self.bin).arg(arg).output();
        let text = out.map(|o| o.stdout).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        text.lines()
            .next()
            .unwrap_or(self.name())
            .trim()
            .to_string()
    }

    /// `rustic` on PATH, if any.
    pub fn find_rustic() -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("rustic"))
                .find(|p| p.is_file())
        })
    }
}
