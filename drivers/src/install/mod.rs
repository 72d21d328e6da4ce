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
use backstop_tm::hand_over::STOCK_SUFFIX;
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use tree::{Kind, Open, Rel, Tree};

pub mod oned_conf;
mod services;
mod tree;

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
    /// Only the root step of --with-services: the units and the environment file, nothing
    /// else in the tree (run the rest as the tree's owner).
    #[arg(long, conflicts_with_all = ["replace_stock", "with_tm", "with_services"])]
    services_only: bool,
    /// Where --with-services writes the units (and where --uninstall looks for them).
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
    #[arg(long, conflicts_with_all = ["replace_stock", "with_tm", "with_services", "services_only"])]
    uninstall: bool,
    /// Only say whether every file an earlier install put in place is still backstop's (an
    /// OpenNebula upgrade puts its own back); exit 1 when one is not. Changes nothing.
    #[arg(long, conflicts_with_all = ["replace_stock", "with_tm", "with_services", "services_only", "uninstall"])]
    check: bool,
    /// Change nothing: say what an install (or --uninstall, or --services-only) would write,
    /// move aside, restore and remove.
    #[arg(long, conflicts_with = "check")]
    dry_run: bool,
    /// Replace stock drivers even with actions this build does not implement yet (for tests).
    #[arg(long)]
    allow_unimplemented: bool,
    /// The executable to install. Default: this one.
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// The oned.conf the advice printed at the end is worked out from. Default:
    /// $ONE_LOCATION/etc/oned.conf when ONE_LOCATION is set, else /etc/one/oned.conf; when it
    /// cannot be read, OpenNebula 7.4's stock lists.
    #[arg(long, value_name = "FILE")]
    oned_conf: Option<PathBuf>,
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
const BINARY: &str = "backstop/bin/backstop";
const MANIFEST: &str = "backstop/manifest";
const REPLACED: &str = "backstop/replaced";
const DOWNLOADER_SH: &str = "datastore/downloader.sh";
/// The first line of every `--dry-run`.
const DRY_RUN: &str = "dry run: nothing is changed";
/// The largest shim, manifest or downloader.sh the installer reads (they are a few KiB).
const SMALL_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InstallError(pub(crate) String);

fn io_err(what: String) -> impl FnOnce(io::Error) -> InstallError {
    move |e| InstallError(format!("{what}: {e}"))
}

/// A path the installer itself names (never one read from the tree).
fn rel(text: &str) -> Rel {
    // Every caller passes a constant or a name built from constants.
    Rel::parse(text).unwrap_or_else(|| unreachable!("{text} is not a relative path"))
}

pub fn main(options: &Options) -> ExitCode {
    let remotes = options
        .remotes_dir
        .clone()
        .unwrap_or_else(default_remotes_dir);
    let mut out = io::stdout().lock();
    if options.check {
        return match check(&remotes) {
            Ok(report) => {
                out.write_all(report.text.as_bytes()).ok();
                if report.lost == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "install: {e}");
                ExitCode::from(2)
            }
        };
    }
    let result = if options.uninstall {
        uninstall(&remotes, options, &mut out)
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

fn default_oned_conf() -> PathBuf {
    match std::env::var_os("ONE_LOCATION").filter(|v| !v.is_empty()) {
        Some(one) => PathBuf::from(one).join("etc/oned.conf"),
        None => PathBuf::from("/etc/one/oned.conf"),
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
    include_str!("../../../remotes/shim.sh").replace("@UP@", &"../".repeat(depth))
}

/// Whether `rel` is a regular file that carries the installer's mark (never through a link).
fn is_ours(tree: &Tree, rel: &Rel) -> bool {
    matches!(tree.read(rel, SMALL_FILE), Ok(Some((c, _))) if has_mark(&c))
}

fn has_mark(content: &[u8]) -> bool {
    content.windows(MARK.len()).any(|w| w == MARK.as_bytes())
}

/// Whether `rel` is a regular file that reads cleanly and does not carry the mark: a stock
/// file (false for ours, for anything unreadable, for a link, for nothing).
fn is_plainly_foreign(tree: &Tree, rel: &Rel) -> bool {
    matches!(tree.read(rel, SMALL_FILE), Ok(Some((c, _))) if !has_mark(&c))
}

/// Every path an install can create or replace: a manifest naming anything else was not
/// written by the installer, and nothing in it is trusted.
fn installable() -> BTreeSet<Rel> {
    let mut all = BTreeSet::from([rel(BINARY), rel(&format!("datastore/{DS_MAD}_downloader"))]);
    all.insert(rel(&format!("datastore/{STOCK_MAD}_downloader.rb")));
    for mad in [DS_MAD, STOCK_MAD] {
        for action in DATASTORE_ACTIONS {
            all.insert(rel(&format!("datastore/{mad}/{}", action.name())));
        }
    }
    for tm in TM_DRIVERS {
        for action in TM_ACTIONS {
            all.insert(rel(&format!("tm/{tm}/{}", action.name())));
            all.insert(rel(&format!("tm/{tm}/{}{STOCK_SUFFIX}", action.name())));
        }
    }
    all
}

/// Whether `path` is a TM backup step (prebackup, postbackup and their _live forms): the
/// actions backstop hands over to the stock scripts.
fn is_backup_step(path: &str) -> bool {
    path.starts_with("tm/")
        && path
            .rsplit('/')
            .next()
            .is_some_and(|a| a.starts_with("prebackup") || a.starts_with("postbackup"))
        && !path.ends_with(STOCK_SUFFIX)
}

/// Whether `rel` is a hand-over copy of a stock script ([`STOCK_SUFFIX`]).
fn is_stock_copy(rel: &Rel) -> bool {
    rel.as_str().starts_with("tm/") && rel.as_str().ends_with(STOCK_SUFFIX)
}

/// The content and mode of the stock script kept for `at` (a TM action backstop replaced):
/// the kept file itself, or, when the stock `at` was a link (tm/ssh/prebackup ->
/// ../shared/prebackup), the script it led to, through the TM directories' own links
/// (tm/shared -> qcow2). `None` when it cannot be found that way.
fn stock_script(tree: &Tree, at: &Rel) -> Option<(Vec<u8>, u32)> {
    let mut at = at.clone();
    for _ in 0..4 {
        let keep = rel(REPLACED).join(&at);
        match tree.kind(&keep)? {
            Kind::File => return tree.read(&keep, SMALL_FILE).ok()?,
            Kind::Link => {
                // Where the link pointed, from the directory it was in: tm/<dir>/<action>.
                let target = tree.link_target(&keep)?;
                let target = target.to_str()?;
                let mut parts: Vec<&str> = at.as_str().split('/').collect();
                parts.pop();
                for p in target.split('/') {
                    match p {
                        "" | "." => {}
                        ".." => {
                            parts.pop()?;
                        }
                        p => parts.push(p),
                    }
                }
                // A TM directory that is itself a link to a sibling (tm/shared -> qcow2).
                if let ["tm", dir, name] = parts.as_slice()
                    && let Some(sibling) =
                        Rel::parse(&format!("tm/{dir}")).and_then(|d| tree.link_target(&d))
                    && let Some(sibling) = sibling.to_str()
                    && !sibling.contains('/')
                {
                    at = Rel::parse(&format!("tm/{sibling}/{name}"))?;
                } else {
                    at = Rel::parse(&parts.join("/"))?;
                }
            }
            _ => return None,
        }
    }
    None
}

/// What an install has done, kept in `backstop/manifest`: one `created <path>` or
/// `replaced <path>` line per file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Manifest {
    created: BTreeSet<Rel>,
    replaced: BTreeSet<Rel>,
}

impl Manifest {
    /// The manifest of the tree; `None` when there is none. Every line must name a path the
    /// installer writes (the tree's owner can edit the manifest, and an uninstall run by root
    /// renames and removes what it names).
    fn load(tree: &Tree) -> Result<Option<Manifest>, InstallError> {
        let Some((bytes, _)) = tree.read(&rel(MANIFEST), SMALL_FILE)? else {
            return Ok(None);
        };
        let shown = tree.display(&rel(MANIFEST));
        let text = String::from_utf8(bytes)
            .map_err(|_| InstallError(format!("{shown} is not UTF-8 text")))?;
        let known = installable();
        let mut m = Manifest::default();
        for line in text.lines() {
            let (set, path) = match line.split_once(' ') {
                Some(("created", p)) => (&mut m.created, p),
                Some(("replaced", p)) => (&mut m.replaced, p),
                _ if line.starts_with('#') || line.is_empty() => continue,
                _ => {
                    return Err(InstallError(format!(
                        "{shown} has an unreadable line {line:?}"
                    )));
                }
            };
            match Rel::parse(path).filter(|r| known.contains(r)) {
                Some(r) => {
                    set.insert(r);
                }
                None => {
                    return Err(InstallError(format!(
                        "{shown} names {path:?}, which is not a file backstop installs; refusing to act on it (was the manifest edited?)"
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

struct Installer<'a> {
    tree: &'a Tree,
    manifest: Manifest,
    changed: Vec<String>,
}

impl Installer<'_> {
    /// Puts a shim at `path`, moving a stock file (or link) there aside first.
    fn shim(&mut self, path: &str) -> Result<(), InstallError> {
        let at = rel(path);
        if self.tree.kind(&at).is_some() && !is_ours(self.tree, &at) {
            let keep = rel(REPLACED).join(&at);
            if self.manifest.replaced.contains(&at)
                && self.tree.kind(&keep).is_some()
                && is_plainly_foreign(self.tree, &at)
            {
                // An OpenNebula upgrade put its own file back over backstop's: the newer stock
                // file is the one an uninstall must restore. The older kept one is moved aside
                // first and dropped only once the newer one is in its place.
                let older = rel(REPLACED).join(&rel(&format!("{path}.older")));
                self.tree.rename_new(&keep, &older)?;
                if let Err(e) = self.tree.rename_new(&at, &keep) {
                    let _ = self.tree.rename_new(&older, &keep);
                    return Err(e);
                }
                self.tree.remove_file(&older)?;
                self.changed.push(format!(
                    "{path} was the stock file again (an OpenNebula upgrade?): kept the new one in backstop/replaced/"
                ));
                return self.write_shim(path, at);
            } else if self.tree.kind(&keep).is_some() {
                return Err(InstallError(format!(
                    "{} already holds a replaced file; refusing to overwrite it with {}",
                    self.tree.display(&keep),
                    self.tree.display(&at)
                )));
            }
            self.tree.rename_new(&at, &keep)?;
            self.manifest.replaced.insert(at.clone());
            self.changed
                .push(format!("kept {path} in backstop/replaced/"));
        }
        self.write_shim(path, at)
    }

    /// Writes the shim at `path` (`at`), the hand-over copy of what it replaced, and the
    /// manifest's line for it.
    fn write_shim(&mut self, path: &str, at: Rel) -> Result<(), InstallError> {
        if self
            .tree
            .write_if_changed(&at, shim(path).as_bytes(), 0o755)?
        {
            self.changed.push(format!("wrote {path}"));
        }
        if is_backup_step(path) && self.manifest.replaced.contains(&at) {
            self.stock_copy(path, &at)?;
        }
        if !self.manifest.replaced.contains(&at) {
            self.manifest.created.insert(at);
        }
        Ok(())
    }

    /// Writes the hand-over copy of the stock script backstop's `path` replaced
    /// ([`STOCK_SUFFIX`]); said, not fatal, when the stock script cannot be found.
    fn stock_copy(&mut self, path: &str, at: &Rel) -> Result<(), InstallError> {
        let copy = rel(&format!("{path}{STOCK_SUFFIX}"));
        match stock_script(self.tree, at) {
            Some((content, mode)) => {
                if self
                    .tree
                    .write_if_changed(&copy, &content, mode & 0o755)?
                {
                    self.changed.push(format!("wrote {}", copy.as_str()));
                }
                self.manifest.created.insert(copy);
            }
            None => self.changed.push(format!(
                "warning: the stock script {path} replaced cannot be found in backstop/replaced/, so backups backstop hands over to it (interactive, SNAPSHOT mode) will fail"
            )),
        }
        Ok(())
    }
}

/// The transfer-manager directories under `tm/` to give backstop's actions, each real
/// directory once by the name it has (tm/shared is a link to qcow2 in stock installs), and the
/// names that were found. A link to anything but a sibling directory is left alone.
fn tm_dirs(tree: &Tree) -> (Vec<&'static str>, Vec<&'static str>, Vec<String>) {
    let mut seen = BTreeSet::new();
    let (mut write, mut found, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for tm in TM_DRIVERS {
        let at = rel(&format!("tm/{tm}"));
        let real = match tree.kind(&at) {
            Some(Kind::Dir) => Some(*tm),
            Some(Kind::Link) => {
                let target = tree.link_target(&at);
                let sibling = target.as_deref().and_then(|t| {
                    let mut parts = t.components().filter(|c| *c != Component::CurDir);
                    match (parts.next(), parts.next()) {
                        (Some(Component::Normal(n)), None) => n.to_str(),
                        _ => None,
                    }
                });
                match sibling.and_then(|s| TM_DRIVERS.iter().find(|t| **t == s)) {
                    Some(s) if tree.kind(&rel(&format!("tm/{s}"))) == Some(Kind::Dir) => Some(*s),
                    _ => {
                        skipped.push(format!(
                            "tm/{tm} is a link to {}, not to a transfer manager beside it; left alone",
                            target.map(|t| t.display().to_string()).unwrap_or_default()
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        let Some(real) = real else { continue };
        let Some(id) = tree.dir_identity(&rel(&format!("tm/{real}"))) else {
            continue;
        };
        found.push(*tm);
        if seen.insert(id) {
            write.push(real);
        }
    }
    (write, found, skipped)
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
    if options.with_services || options.services_only {
        services::check(&options.systemd_dir)?;
    }
    // A dry run opens every tree pretending: changes are kept in memory, said, never made.
    let (existing, create) = if options.dry_run {
        (Open::Pretend, Open::Pretend)
    } else {
        (Open::Existing, Open::Create)
    };
    if options.services_only {
        let tree = Tree::open(remotes, existing)?;
        let mut services = Vec::new();
        services::write(
            &tree,
            &options.systemd_dir,
            &options.env_file,
            &mut services,
        )?;
        if options.dry_run {
            writeln!(out, "{DRY_RUN}; the services step would say:").ok();
        }
        out.write_all(&services).ok();
        return Ok(());
    }
    let binary = match &options.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(io_err("cannot find this executable".into()))?,
    };
    let binary_bytes = std::fs::read(&binary).map_err(io_err(format!(
        "cannot read the executable {}",
        binary.display()
    )))?;

    if options.dry_run {
        writeln!(
            out,
            "{DRY_RUN}; an install into {} would say:",
            remotes.display()
        )
        .ok();
    }
    if std::fs::symlink_metadata(remotes).is_err() {
        writeln!(out, "creating {}", remotes.display()).ok();
    }
    let tree = Tree::open(remotes, create)?;
    // The downloader.sh patch is checked before any file is written.
    let downloader_sh = rel(DOWNLOADER_SH);
    let patched = match tree.read(&downloader_sh, SMALL_FILE)? {
        Some((bytes, mode)) => {
            let text = String::from_utf8(bytes).map_err(|_| {
                InstallError(format!(
                    "{} is not UTF-8 text",
                    tree.display(&downloader_sh)
                ))
            })?;
            Some((
                patch_downloader(&text).ok_or_else(|| {
                    InstallError(format!(
                        "{} has no line `{ANCHOR}`; cannot hand backstop:// URLs to backstop (is it OpenNebula's downloader.sh?)",
                        tree.display(&downloader_sh)
                    ))
                })?,
                mode,
            ))
        }
        None => None,
    };
    let mut inst = Installer {
        tree: &tree,
        manifest: Manifest::load(&tree)?.unwrap_or_default(),
        changed: Vec::new(),
    };
    if tree.write_if_changed(&rel(BINARY), &binary_bytes, 0o755)? {
        inst.changed.push(format!("wrote {BINARY}"));
    }
    inst.manifest.created.insert(rel(BINARY));
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
    let mut tm_notes = Vec::new();
    if options.with_tm {
        let (write, found, skipped) = tm_dirs(&tree);
        for tm in write {
            for action in TM_ACTIONS {
                inst.shim(&format!("tm/{tm}/{}", action.name()))?;
            }
        }
        tm_notes.extend(skipped.into_iter().map(|s| format!("warning: {s}")));
        tm_notes.push(if found.is_empty() {
            format!(
                "warning: --with-tm found none of the transfer managers {} under {}/tm, so no backup action of theirs was replaced; install OpenNebula first or re-run with the right --remotes-dir",
                TM_DRIVERS.join(", "),
                remotes.display()
            )
        } else {
            format!(
                "transfer managers with backstop's backup actions: {}",
                found.join(", ")
            )
        });
    }
    let downloader_note = match patched {
        Some((new_text, mode)) => {
            if tree.write_if_changed(&downloader_sh, new_text.as_bytes(), mode)? {
                inst.changed.push(format!("patched {DOWNLOADER_SH}"));
            }
            None
        }
        None => Some(format!(
            "note: {} does not exist, so backstop:// URLs cannot be downloaded from this tree; install OpenNebula first or re-run with the right --remotes-dir",
            tree.display(&downloader_sh)
        )),
    };
    let mut services = Vec::new();
    if options.with_services {
        services::write(
            &tree,
            &options.systemd_dir,
            &options.env_file,
            &mut services,
        )?;
    }
    let manifest_text = inst.manifest.render();
    if tree.write_if_changed(&rel(MANIFEST), manifest_text.as_bytes(), 0o644)? {
        inst.changed.push(format!("wrote {MANIFEST}"));
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
        if options.dry_run {
            writeln!(out, "(dry run: nothing was changed)").ok();
        } else {
            writeln!(out, "backstop is installed in {}", remotes.display()).ok();
        }
    }
    if let Some(note) = downloader_note {
        writeln!(io::stderr(), "{note}").ok();
    }
    for note in tm_notes {
        if note.starts_with("warning:") {
            writeln!(io::stderr(), "{note}").ok();
        } else {
            writeln!(out, "{note}").ok();
        }
    }
    out.write_all(&services).ok();
    writeln!(out, "{}", oned_conf_lines(options)).ok();
    Ok(())
}

/// The arm downloader.sh needs for `backstop://` URLs (`remotes/datastore/downloader-arm.sh`).
fn downloader_block() -> &'static str {
    include_str!("../../../remotes/datastore/downloader-arm.sh")
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

/// What `--check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// One line per file, then a summary.
    pub text: String,
    /// Files (and the downloader.sh arm) that are not backstop's any more.
    pub lost: usize,
}

/// Whether every file the manifest names is still backstop's, and downloader.sh still has its
/// arm: an OpenNebula package upgrade writes its own files over the ones backstop replaced.
pub fn check(remotes: &Path) -> Result<CheckReport, InstallError> {
    let tree = Tree::open(remotes, Open::Existing)?;
    let Some(manifest) = Manifest::load(&tree)? else {
        return Err(InstallError(format!(
            "backstop is not installed in {} (no backstop/manifest)",
            remotes.display()
        )));
    };
    let mut text = String::new();
    let (mut lost, mut total) = (0, 0);
    for at in manifest.created.iter().chain(&manifest.replaced) {
        total += 1;
        let state = if at.as_str() == BINARY || is_stock_copy(at) {
            match tree.kind(at) {
                Some(Kind::File) => None,
                Some(_) => Some("is not a file"),
                None => Some("is missing"),
            }
        } else if is_ours(&tree, at) {
            None
        } else if tree.kind(at).is_some() {
            Some("is not backstop's any more (an OpenNebula upgrade put its own back?)")
        } else {
            Some("is missing")
        };
        if let Some(state) = state {
            lost += 1;
            text.push_str(&format!("{at} {state}\n"));
        }
    }
    // What an uninstall puts back, and what a hand-over runs.
    for at in &manifest.replaced {
        total += 1;
        if tree.kind(&rel(REPLACED).join(at)).is_none() {
            lost += 1;
            text.push_str(&format!(
                "backstop/replaced/{at} is missing (an uninstall could not put the stock {at} back)\n"
            ));
        }
        let copy = Rel::parse(&format!("{at}{STOCK_SUFFIX}"));
        if is_backup_step(at.as_str()) && copy.is_some_and(|c| !manifest.created.contains(&c)) {
            lost += 1;
            text.push_str(&format!(
                "{at} has no stock copy beside it (an install older than the hand-over): interactive and SNAPSHOT backups would fail\n"
            ));
        }
    }
    let downloader_sh = rel(DOWNLOADER_SH);
    if let Some((bytes, _)) = tree.read(&downloader_sh, SMALL_FILE)? {
        total += 1;
        let armed = String::from_utf8(bytes)
            .ok()
            .is_some_and(|t| patch_downloader(&t).as_deref() == Some(t.as_str()));
        if !armed {
            lost += 1;
            text.push_str(&format!(
                "{DOWNLOADER_SH} has lost backstop's arm (backstop:// URLs are not downloaded)\n"
            ));
        }
    }
    if lost == 0 {
        text.push_str(&format!(
            "all {total} of backstop's files in {} are in place\n",
            remotes.display()
        ));
    } else {
        let mut again = format!(
            "./install.sh --remotes-dir {}",
            backstop_protocol::remote::sh_quote(&remotes.display().to_string())
        );
        if manifest
            .created
            .iter()
            .chain(&manifest.replaced)
            .any(|a| a.as_str().starts_with(&format!("datastore/{STOCK_MAD}/")))
        {
            again.push_str(" --replace-stock");
        }
        if manifest
            .created
            .iter()
            .chain(&manifest.replaced)
            .any(|a| a.as_str().starts_with("tm/"))
        {
            again.push_str(" --with-tm");
        }
        text.push_str(&format!(
            "{lost} of backstop's {total} files in {} are not in place; `{again}` puts them back\n",
            remotes.display()
        ));
    }
    Ok(CheckReport { text, lost })
}

/// At the start of the scheduler and the dashboard: one warning on stderr when an OpenNebula
/// upgrade overwrote backstop's files in `remotes` (what `--check` says); nothing when all is in
/// place or backstop is not installed there.
pub fn warn_if_overwritten(remotes: &Path, who: &str) {
    if let Ok(report) = check(remotes)
        && report.lost > 0
    {
        for line in report.text.lines() {
            eprintln!("{who}: warning: {line}");
        }
    }
}

/// oned.conf's text, read as the installer reads the tree: never through a link at its last
/// step, never a FIFO or device, at most 1 MiB; bytes that are not UTF-8 shown as U+FFFD.
fn read_oned_conf(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(SMALL_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > SMALL_FILE {
        return Err(io::Error::other("larger than 1 MiB"));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What oned.conf needs, worked out from the front-end's own (`--oned-conf`).
fn oned_conf_lines(options: &Options) -> String {
    let path = options.oned_conf.clone().unwrap_or_else(default_oned_conf);
    let mut s = match read_oned_conf(&path) {
        Ok(text) => oned_conf::advice(Some(&text), &path.display().to_string()),
        Err(e) => oned_conf::advice(
            None,
            &format!(
                "OpenNebula 7.4's stock oned.conf, as {} cannot be read: {e}",
                path.display()
            ),
        ),
    };
    if options.replace_stock {
        s.push_str("DS_MAD=\"restic\" datastores now run backstop too; oned.conf needs no change for them.\n");
    }
    s
}

fn uninstall(remotes: &Path, options: &Options, out: &mut impl Write) -> Result<(), InstallError> {
    let how = if options.dry_run {
        Open::Pretend
    } else {
        Open::Existing
    };
    let tree = match Tree::open(remotes, how) {
        Ok(tree) => Some(tree),
        Err(_) if std::fs::symlink_metadata(remotes).is_err() => None,
        Err(e) => return Err(e),
    };
    let Some(manifest) = tree.as_ref().map(Manifest::load).transpose()?.flatten() else {
        writeln!(
            out,
            "backstop is not installed in {} (no backstop/manifest); nothing to do",
            remotes.display()
        )
        .ok();
        return Ok(());
    };
    let Some(tree) = tree else { return Ok(()) };
    if options.dry_run {
        writeln!(
            out,
            "{DRY_RUN}; an uninstall from {} would say:",
            remotes.display()
        )
        .ok();
    }
    services::remove(&tree, &options.systemd_dir, out)?;
    let mut dirs = BTreeSet::new();
    for at in manifest.created.iter().chain(&manifest.replaced) {
        let ours = is_ours(&tree, at)
            || (at.as_str() == BINARY && tree.kind(at) == Some(Kind::File))
            || (is_stock_copy(at) && tree.kind(at) == Some(Kind::File));
        if ours {
            tree.remove_file(at)?;
            writeln!(out, "removed {at}").ok();
        }
        if let Some(parent) = at.parent() {
            dirs.insert(parent);
        }
    }
    for at in &manifest.replaced {
        let keep = rel(REPLACED).join(at);
        if tree.kind(at).is_some() {
            // Not backstop's (it was removed above if it were): an OpenNebula upgrade put its
            // own file back, newer than the one kept; it stays, the kept one goes.
            if tree.kind(&keep).is_some() {
                tree.remove_file(&keep)?;
            }
            writeln!(
                out,
                "kept {at}: it is not backstop's (an OpenNebula upgrade put its own back), so the older stock file kept in backstop/replaced/ was dropped"
            )
            .ok();
            continue;
        }
        tree.rename_new(&keep, at)
            .map_err(|e| InstallError(format!("cannot restore {}: {e}", tree.display(at))))?;
        writeln!(out, "restored {at}").ok();
    }
    let downloader_sh = rel(DOWNLOADER_SH);
    if let Ok(Some((bytes, mode))) = tree.read(&downloader_sh, SMALL_FILE)
        && let Ok(text) = String::from_utf8(bytes)
    {
        let clean = unpatch_downloader(&text);
        if clean != text {
            tree.write_if_changed(&downloader_sh, clean.as_bytes(), mode)?;
            writeln!(out, "removed the backstop arm from {DOWNLOADER_SH}").ok();
        }
    }
    tree.remove_file(&rel(MANIFEST))?;
    // Remove the directories backstop made, deepest first, only when empty.
    tree.remove_empty_dirs(&rel(REPLACED));
    for dir in dirs
        .iter()
        .rev()
        .chain([rel("backstop/bin"), rel("backstop")].iter())
    {
        tree.remove_dir(dir);
    }
    if options.dry_run {
        writeln!(out, "(dry run: nothing was changed)").ok();
    } else {
        writeln!(out, "backstop is uninstalled from {}", remotes.display()).ok();
    }
    Ok(())
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
