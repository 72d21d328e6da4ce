//! Installing backstop into an OpenNebula remotes tree, and taking it out again.
//!
//! What goes where (all relative to the remotes dir, `/var/lib/one/remotes` by default):
//!
//! | path | what |
//! |---|---|
//! | `backstop/bin/backstop` | the executable; oned's host sync copies it to hosts with the rest |
//! | `backstop/manifest` | what this install created and what it moved aside |
//! | `backstop/replaced/<path>` | stock files moved aside by `--replace-stock` / `--with-tm` |
//! | `datastore/backstop/<action>` | shims for DS_MAD `backstop` (side by side, always) |
//! | `datastore/backstop_downloader` | the downloader for `backstop://` URLs |
//! | `datastore/downloader.sh` | patched once, between marker lines, to hand `backstop://` to it |
//! | `datastore/restic/<action>`, `datastore/restic_downloader.rb` | with `--replace-stock` |
//! | `tm/{qcow2,shared,ssh,local}/{pre,post}backup[_live]`, `restore` | with `--with-tm` |
//!
//! Every file is written to a temporary name and renamed, and only when its content differs,
//! so a second run changes nothing. Stock files are moved (not copied: symlinks stay symlinks)
//! into `backstop/replaced/` before a shim takes their place; `--uninstall` puts them back.

use crate::run;
use backstop_protocol::action::{DATASTORE_ACTIONS, TM_ACTIONS};
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The options of `backstop install` (and install.sh).
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The remotes tree. Default: $ONE_LOCATION/var/remotes when ONE_LOCATION is set, else
    /// /var/lib/one/remotes.
    #[arg(long, value_name = "DIR")]
    remotes_dir: Option<PathBuf>,
    /// Also install as DS_MAD "restic" in place of OpenNebula's own restic driver (drop-in),
    /// keeping the replaced files for --uninstall.
    #[arg(long)]
    replace_stock: bool,
    /// Also replace the backup actions of the qcow2, shared, ssh, local and ceph TM drivers.
    #[arg(long)]
    with_tm: bool,
    /// Also write systemd units for the scheduler daemon and `backstop serve`, and an
    /// environment file for their settings (docs/services.md).
    #[arg(long)]
    with_services: bool,
    /// Where --with-services writes the units.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    systemd_dir: PathBuf,
    /// The services' environment file (written when missing, 0600, never overwritten).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/backstop/backstop.env"
    )]
    env_file: PathBuf,
    /// Remove what an earlier install put in place and restore what it replaced.
    #[arg(long, conflicts_with_all = ["replace_stock", "with_tm", "with_services"])]
    uninstall: bool,
    /// Replace stock drivers even with actions this build does not implement yet (for tests).
    #[arg(long)]
    allow_unimplemented: bool,
    /// The executable to install. Default: this one.
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
}

/// Marks every file the installer writes, so it never mistakes a stock file for its own.
pub(crate) const MARK: &str = "backstop-shim";
const DS_MAD: &str = "backstop";
const STOCK_MAD: &str = "restic";
const TM_DRIVERS: &[&str] = &["qcow2", "shared", "ssh", "local", "ceph"];
const ANCHOR: &str = "case \"$FROM\" in";
const BLOCK_START: &str =
    "# >>> backstop: backstop:// URLs (added by backstop's install.sh; --uninstall removes it)";
const BLOCK_END: &str = "# <<< backstop";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InstallError(pub(crate) String);

fn io_err(what: String) -> impl FnOnce(io::Error) -> InstallError {
    move |e| InstallError(format!("{what}: {e}"))
}

pub fn main(options: &Options) -> ExitCode {
    let remotes = options
        .remotes_dir
        .clone()
        .unwrap_or_else(default_remotes_dir);
    let mut out = io::stdout().lock();
    let result = if options.uninstall {
        uninstall(&remotes, &mut out)
    } else {
        install(&remotes, options, &mut out)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "install: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_remotes_dir() -> PathBuf {
    match std::env::var_os("ONE_LOCATION").filter(|v| !v.is_empty()) {
        Some(one) => PathBuf::from(one).join("var/remotes"),
        None => PathBuf::from("/var/lib/one/remotes"),
    }
}

/// The shim installed for an action at `rel` (a path relative to the remotes dir).
pub fn shim(rel: &str) -> String {
    let depth = rel.matches('/').count();
    include_str!("../../remotes/shim.sh").replace("@UP@", &"../".repeat(depth))
}

fn is_ours(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => fs::read(path)
            .map(|c| c.windows(MARK.len()).any(|w| w == MARK.as_bytes()))
            .unwrap_or(false),
        _ => false,
    }
}

/// What an install has done, kept in `backstop/manifest`: one `created <path>` or
/// `replaced <path>` line per file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Manifest {
    created: BTreeSet<String>,
    replaced: BTreeSet<String>,
}

impl Manifest {
    fn path(remotes: &Path) -> PathBuf {
        remotes.join("backstop/manifest")
    }

    fn load(remotes: &Path) -> Result<Option<Manifest>, InstallError> {
        let path = Self::path(remotes);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
        };
        let mut m = Manifest::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("created", p)) => {
                    m.created.insert(p.to_string());
                }
                Some(("replaced", p)) => {
                    m.replaced.insert(p.to_string());
                }
                _ if line.starts_with('#') || line.is_empty() => {}
                _ => {
                    return Err(InstallError(format!(
                        "{} has an unreadable line {line:?}",
                        path.display()
                    )));
                }
            }
        }
        Ok(Some(m))
    }

    fn render(&self) -> String {
        let mut s =
            String::from("# backstop install manifest: what --uninstall removes and restores\n");
        for p in &self.created {
            s.push_str(&format!("created {p}\n"));
        }
        for p in &self.replaced {
            s.push_str(&format!("replaced {p}\n"));
        }
        s
    }
}

/// Writes `content` to `path` through a temporary file and a rename, unless it is already
/// there with the same mode. Returns whether anything changed.
pub(crate) fn write_if_changed(
    path: &Path,
    content: &[u8],
    mode: u32,
) -> Result<bool, InstallError> {
    if let Ok(m) = fs::symlink_metadata(path)
        && m.file_type().is_file()
        && m.permissions().mode() & 0o7777 == mode
        && fs::read(path).is_ok_and(|c| c == content)
    {
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| InstallError(format!("{} has no parent directory", path.display())))?;
    fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.backstop-tmp"));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        InstallError(format!("cannot write {}: {e}", path.display()))
    })?;
    Ok(true)
}

struct Installer<'a> {
    remotes: &'a Path,
    manifest: Manifest,
    changed: Vec<String>,
}

impl Installer<'_> {
    /// Puts a shim at `rel`, moving a stock file there aside first.
    fn shim(&mut self, rel: &str) -> Result<(), InstallError> {
        let path = self.remotes.join(rel);
        if fs::symlink_metadata(&path).is_ok() && !is_ours(&path) {
            let keep = self.remotes.join("backstop/replaced").join(rel);
            if fs::symlink_metadata(&keep).is_ok() {
                return Err(InstallError(format!(
                    "{} already holds a replaced file; refusing to overwrite it with {}",
                    keep.display(),
                    path.display()
                )));
            }
            if let Some(dir) = keep.parent() {
                fs::create_dir_all(dir)
                    .map_err(io_err(format!("cannot create {}", dir.display())))?;
            }
            fs::rename(&path, &keep).map_err(io_err(format!(
                "cannot move {} to {}",
                path.display(),
                keep.display()
            )))?;
            self.manifest.replaced.insert(rel.to_string());
            self.changed
                .push(format!("kept {rel} in backstop/replaced/"));
        }
        if write_if_changed(&path, shim(rel).as_bytes(), 0o755)? {
            self.changed.push(format!("wrote {rel}"));
        }
        if !self.manifest.replaced.contains(rel) {
            self.manifest.created.insert(rel.to_string());
        }
        Ok(())
    }
}

fn install(remotes: &Path, options: &Options, out: &mut impl Write) -> Result<(), InstallError> {
    // Refuse before touching anything.
    let missing_ds = run::unimplemented_datastore_actions();
    if options.replace_stock && !missing_ds.is_empty() && !options.allow_unimplemented {
        return Err(InstallError(format!(
            "--replace-stock would replace OpenNebula's working restic driver, but these parts of backstop are not implemented yet: {}; refusing (--allow-unimplemented overrides, for testing only)",
            missing_ds.join(", ")
        )));
    }
    let missing_tm = run::unimplemented_tm_actions();
    if options.with_tm && !missing_tm.is_empty() && !options.allow_unimplemented {
        return Err(InstallError(format!(
            "--with-tm would replace the stock transfer-manager backup actions, but these backstop actions are not implemented yet: {}; refusing (--allow-unimplemented overrides, for testing only)",
            missing_tm.join(", ")
        )));
    }
    if options.with_services {
        crate::services::check(&options.systemd_dir)?;
    }
    let binary = match &options.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(io_err("cannot find this executable".into()))?,
    };
    let binary_bytes = fs::read(&binary).map_err(io_err(format!(
        "cannot read the executable {}",
        binary.display()
    )))?;
    // The downloader.sh patch is checked before any file is written.
    let downloader_sh = remotes.join("datastore/downloader.sh");
    let patched = match fs::read_to_string(&downloader_sh) {
        Ok(text) => Some(patch_downloader(&text).ok_or_else(|| {
            InstallError(format!(
                "{} has no line `{ANCHOR}`; cannot hand backstop:// URLs to backstop (is it OpenNebula's downloader.sh?)",
                downloader_sh.display()
            ))
        })?),
        // No tree yet (or a path through a file): the directory creation below reports it.
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => None,
        Err(e) => return Err(io_err(format!("cannot read {}", downloader_sh.display()))(e)),
    };

    if !remotes.exists() {
        writeln!(out, "creating {}", remotes.display()).ok();
    }
    fs::create_dir_all(remotes.join("backstop"))
        .map_err(io_err(format!("cannot write to {}", remotes.display())))?;
    let mut inst = Installer {
        remotes,
        manifest: Manifest::load(remotes)?.unwrap_or_default(),
        changed: Vec::new(),
    };
    if write_if_changed(&remotes.join("backstop/bin/backstop"), &binary_bytes, 0o755)? {
        inst.changed.push("wrote backstop/bin/backstop".into());
    }
    inst.manifest.created.insert("backstop/bin/backstop".into());
    for action in DATASTORE_ACTIONS {
        inst.shim(&format!("datastore/{DS_MAD}/{}", action.name()))?;
    }
    inst.shim(&format!("datastore/{DS_MAD}_downloader"))?;
    if options.replace_stock {
        for action in DATASTORE_ACTIONS {
            inst.shim(&format!("datastore/{STOCK_MAD}/{}", action.name()))?;
        }
        inst.shim(&format!("datastore/{STOCK_MAD}_downloader.rb"))?;
    }
    // Which transfer managers got backstop's backup actions (said either way).
    let mut tm_note = None;
    if options.with_tm {
        let mut seen = BTreeSet::new();
        let mut replaced = Vec::new();
        for tm in TM_DRIVERS {
            let dir = remotes.join("tm").join(tm);
            // tm/shared is a symlink to tm/qcow2 in stock installs: replace each real dir once.
            let Ok(real) = fs::canonicalize(&dir) else {
                continue;
            };
            if !seen.insert(real) {
                replaced.push(tm.to_string());
                continue;
            }
            for action in TM_ACTIONS {
                inst.shim(&format!("tm/{tm}/{}", action.name()))?;
            }
            replaced.push(tm.to_string());
        }
        tm_note = Some(if replaced.is_empty() {
            format!(
                "warning: --with-tm found none of the transfer managers {} under {}/tm, so no backup action of theirs was replaced; install OpenNebula first or re-run with the right --remotes-dir",
                TM_DRIVERS.join(", "),
                remotes.display()
            )
        } else {
            format!(
                "transfer managers with backstop's backup actions: {}",
                replaced.join(", ")
            )
        });
    }
    let downloader_note = match patched {
        Some(new_text) => {
            if write_if_changed(&downloader_sh, new_text.as_bytes(), mode_of(&downloader_sh))? {
                inst.changed.push("patched datastore/downloader.sh".into());
            }
            None
        }
        None => Some(format!(
            "note: {} does not exist, so backstop:// URLs cannot be downloaded from this tree; install OpenNebula first or re-run with the right --remotes-dir",
            downloader_sh.display()
        )),
    };
    let mut services = Vec::new();
    if options.with_services {
        crate::services::write(
            remotes,
            &options.systemd_dir,
            &options.env_file,
            &mut services,
        )?;
    }
    let manifest_text = inst.manifest.render();
    if write_if_changed(&Manifest::path(remotes), manifest_text.as_bytes(), 0o644)? {
        inst.changed.push("wrote backstop/manifest".into());
    }

    if inst.changed.is_empty() {
        writeln!(
            out,
            "backstop is already installed in {}; nothing changed",
            remotes.display()
        )
        .ok();
    } else {
        for c in &inst.changed {
            writeln!(out, "{c}").ok();
        }
        writeln!(out, "backstop is installed in {}", remotes.display()).ok();
    }
    if let Some(note) = downloader_note {
        writeln!(io::stderr(), "{note}").ok();
    }
    match tm_note {
        Some(w) if w.starts_with("warning:") => writeln!(io::stderr(), "{w}").ok(),
        Some(n) => writeln!(out, "{n}").ok(),
        None => None,
    };
    out.write_all(&services).ok();
    writeln!(out, "{}", oned_conf_lines(options.replace_stock)).ok();
    Ok(())
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755)
}

/// The arm downloader.sh needs for `backstop://` URLs (`remotes/datastore/downloader-arm.sh`).
fn downloader_block() -> &'static str {
    include_str!("../../remotes/datastore/downloader-arm.sh")
}

/// downloader.sh with the backstop arm right after `case "$FROM" in` (or with an older arm
/// replaced). `None` when there is no such line.
pub fn patch_downloader(text: &str) -> Option<String> {
    let clean = unpatch_downloader(text);
    let mut out = String::with_capacity(clean.len() + 512);
    let mut done = false;
    for line in clean.split_inclusive('\n') {
        out.push_str(line);
        if !done && line.trim() == ANCHOR {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(downloader_block());
            done = true;
        }
    }
    done.then_some(out)
}

/// downloader.sh without the backstop arm: byte for byte what it was before the patch.
pub fn unpatch_downloader(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end_matches(['\n', '\r']);
        if t == BLOCK_START {
            inside = true;
            continue;
        }
        if inside {
            if t == BLOCK_END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

fn oned_conf_lines(replace_stock: bool) -> String {
    let mut s = String::from(
        "\nTo let oned use DS_MAD=\"backstop\", add to /etc/one/oned.conf (then restart oned and run `onehost sync --force`):\n\
  1. backstop in the -d list of DATASTORE_MAD, for example\n\
     DATASTORE_MAD = [ EXECUTABLE = \"one_datastore\",\n\
         ARGUMENTS = \"-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,vcenter,restic,rsync,backstop -s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2,vcenter\" ]\n\
  2. the driver's configuration:\n\
     DS_MAD_CONF = [ NAME = \"backstop\", REQUIRED_ATTRS = \"RESTIC_PASSWORD\", PERSISTENT_ONLY = \"YES\" ]\n\
  3. the password encrypted at rest (stock oned.conf already has this line):\n\
     DATASTORE_ENCRYPTED_ATTR = \"RESTIC_PASSWORD\"\n",
    );
    if replace_stock {
        s.push_str("DS_MAD=\"restic\" datastores now run backstop too; oned.conf needs no change for them.\n");
    }
    s
}

fn uninstall(remotes: &Path, out: &mut impl Write) -> Result<(), InstallError> {
    let Some(manifest) = Manifest::load(remotes)? else {
        writeln!(
            out,
            "backstop is not installed in {} (no backstop/manifest); nothing to do",
            remotes.display()
        )
        .ok();
        return Ok(());
    };
    crate::services::remove(remotes, out)?;
    let mut dirs = BTreeSet::new();
    for rel in manifest.created.iter().chain(&manifest.replaced) {
        let path = remotes.join(rel);
        let ours = is_ours(&path) || rel == "backstop/bin/backstop";
        if ours {
            fs::remove_file(&path).map_err(io_err(format!("cannot remove {}", path.display())))?;
            writeln!(out, "removed {rel}").ok();
        }
        if let Some(parent) = Path::new(rel).parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    for rel in &manifest.replaced {
        let keep = remotes.join("backstop/replaced").join(rel);
        let path = remotes.join(rel);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(InstallError(format!(
                "{} exists and is not backstop's; cannot restore the file kept in {}",
                path.display(),
                keep.display()
            )));
        }
        fs::rename(&keep, &path).map_err(io_err(format!(
            "cannot restore {} from {}",
            path.display(),
            keep.display()
        )))?;
        writeln!(out, "restored {rel}").ok();
    }
    let downloader_sh = remotes.join("datastore/downloader.sh");
    if let Ok(text) = fs::read_to_string(&downloader_sh) {
        let clean = unpatch_downloader(&text);
        if clean != text {
            write_if_changed(&downloader_sh, clean.as_bytes(), mode_of(&downloader_sh))?;
            writeln!(out, "removed the backstop arm from datastore/downloader.sh").ok();
        }
    }
    fs::remove_file(Manifest::path(remotes)).map_err(io_err(format!(
        "cannot remove {}",
        Manifest::path(remotes).display()
    )))?;
    // Remove the directories backstop made, deepest first, only when empty.
    remove_empty_dirs(&remotes.join("backstop/replaced"));
    for dir in dirs
        .iter()
        .rev()
        .chain([PathBuf::from("backstop/bin"), PathBuf::from("backstop")].iter())
    {
        let _ = fs::remove_dir(remotes.join(dir));
    }
    writeln!(out, "backstop is uninstalled from {}", remotes.display()).ok();
    Ok(())
}

/// Removes `dir` and the directories below it that are empty, never a file.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOCK: &str =
        "#!/bin/bash\nFROM=\"$1\"\ncase \"$FROM\" in\nhttp://*)\n    command=curl\n    ;;\nesac\n";

    #[test]
    fn the_arm_is_delimited_by_the_markers() {
        let lines: Vec<&str> = downloader_block().lines().collect();
        assert_eq!(lines.first(), Some(&BLOCK_START));
        assert_eq!(lines.last(), Some(&BLOCK_END));
        assert!(shim("x/y").contains(MARK));
    }

    #[test]
    fn patches_once_and_unpatches_exactly() {
        let once = patch_downloader(STOCK).expect("anchor");
        assert_eq!(once.matches(BLOCK_START).count(), 1);
        assert_eq!(patch_downloader(&once).expect("again"), once);
        assert_eq!(unpatch_downloader(&once), STOCK);
        assert!(patch_downloader("#!/bin/sh\necho hi\n").is_none());
    }

    #[test]
    fn shims_reach_the_binary() {
        assert!(
            shim("datastore/backstop/rm")
                .contains("\"$(dirname -- \"$0\")/../../backstop/bin/backstop\"")
        );
        assert!(
            shim("datastore/backstop_downloader")
                .contains("\"$(dirname -- \"$0\")/../backstop/bin/backstop\"")
        );
    }
}
