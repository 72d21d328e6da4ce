//! Running one VM's backup as oned runs it (driver contract §3.2, §3.4, §8), through the installed
//! actions, with their argv and stdin:
//!
//! 1. `tm/<tm_mad>/prebackup  host:vm_dir disks deploy_id bj_id vm_id sys_ds_id`, the VM
//!    document (with the job's BACKUP_CONFIG and the chain pointers) on stdin;
//! 2. `datastore/<ds_mad>/backup` with the same argv and
//!    `<DS_DRIVER_ACTION_DATA><DATASTORE/><VM/></DS_DRIVER_ACTION_DATA>` on stdin;
//! 3. `tm/<tm_mad>/postbackup`, with `<BACKUP_RESULT>FAILURE</BACKUP_RESULT>` appended after a
//!    failure of step 1 or 2.
//!
//! Then the result is recorded as oned would: a new backup image for FULL mode or a new chain,
//! else an increment of the chain's image; and KEEP_LAST is applied with the datastore's `rm`
//! (FULL) or `increment_flatten` (INCREMENT).

use crate::Error;
use crate::error::step;
use crate::state::{State, StateError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the runner knows of the installation it plays oned for.
#[derive(Debug, Clone)]
pub struct Env {
    /// The remotes tree (`/var/lib/one/remotes`).
    pub remotes: PathBuf,
    /// oned's DATASTORE_LOCATION: VM directories are `<location>/<system ds>/<vm id>`.
    pub datastore_location: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Increment,
}

/// The job's backup settings (driver contract §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    pub job_id: Option<u64>,
    pub mode: Mode,
    pub keep_last: u32,
    pub fs_freeze: String,
    pub backup_volatile: bool,
    pub disk_ids: Option<Vec<u32>>,
    pub reset: bool,
    pub chain: ChainPolicy,
    /// How increments find what changed: CBT bitmaps, or the rotating snapshot overlay
    /// (INCREMENT_MODE=SNAPSHOT).
    pub increment_mode: backstop_protocol::message::IncrementMode,
}

/// When an INCREMENT job's chain starts anew without being asked (OpenNebula has neither;
/// its issues #6188, #6290, #6475 ask for them): after `max_increments` increments on its
/// FULL, or once its FULL is `max_days` old. A new chain reads every disk whole again instead
/// of trusting the dirty bitmaps; backstop stores a complete image either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainPolicy {
    pub max_increments: Option<u32>,
    pub max_days: Option<u32>,
}

impl ChainPolicy {
    /// Why the next backup starts a new chain, given the times (seconds) at which the current
    /// chain's backups were made, its FULL first, and the scheduler's clock `now`; `None` when
    /// it extends the chain.
    pub fn due(&self, chain: &[i64], now: i64) -> Option<String> {
        let full = *chain.first()?;
        let increments = chain.len() as u64 - 1;
        if let Some(max) = self.max_increments
            && increments >= u64::from(max)
        {
            return Some(format!(
                "the chain has {increments} increments (MAX_INCREMENTS={max})"
            ));
        }
        if let Some(days) = self.max_days
            && now.saturating_sub(full) >= i64::from(days) * 86_400
        {
            return Some(format!(
                "the chain's FULL is {} days old (CHAIN_MAX_DAYS={days})",
                now.saturating_sub(full) / 86_400
            ));
        }
        None
    }
}

/// The backup datastore: its id, driver and document (decrypted), as oned sends it.
#[derive(Debug, Clone)]
pub struct BackupDatastore {
    pub id: u64,
    pub ds_mad: String,
    pub document: String,
}

/// What one VM's backup produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub backup_id: String,
    pub size_mb: u64,
    pub image_id: u64,
    pub increment_id: u64,
}

/// What `run_chain` produced, for `record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainResult {
    pub vm_id: u64,
    pub backup_id: String,
    pub size_mb: u64,
    /// FULL mode, RESET or no chain yet: a new backup image.
    pub new_chain: bool,
    /// The chain it extends otherwise.
    pub chain: ChainPointers,
}

/// The chain a VM's next INCREMENT extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainPointers {
    pub image_id: Option<u64>,
    pub last_increment: Option<u64>,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The VM document with the job's BACKUP_CONFIG and the chain pointers in `<BACKUPS>`.
/// It is rebuilt from the parsed document, never cut from its text: a value a VM owner wrote
/// may hold `<BACKUPS>` or `</VM>`.
pub fn vm_document(
    doc: &str,
    cfg: &JobConfig,
    ds_id: u64,
    chain: ChainPointers,
) -> Result<String, Error> {
    let mut vm = backstop_protocol::xml::Element::parse(doc)
        .map_err(|e| step(format!("the registered VM document: {e}")))?;
    vm.children.retain(|c| c.name != "BACKUPS");
    let mut c = format!(
        "<MODE>{}</MODE><KEEP_LAST>{}</KEEP_LAST><FS_FREEZE>{}</FS_FREEZE><BACKUP_VOLATILE>{}</BACKUP_VOLATILE>\
         <LAST_DATASTORE_ID>{ds_id}</LAST_DATASTORE_ID>",
        match cfg.mode {
            Mode::Full => "FULL",
            Mode::Increment => "INCREMENT",
        },
        cfg.keep_last,
        xml_escape(&cfg.fs_freeze),
        if cfg.backup_volatile { "YES" } else { "NO" },
    );
    if cfg.mode == Mode::Increment {
        c.push_str(match cfg.increment_mode {
            backstop_protocol::message::IncrementMode::Cbt => {
                "<INCREMENT_MODE>CBT</INCREMENT_MODE>"
            }
            backstop_protocol::message::IncrementMode::Snapshot => {
                "<INCREMENT_MODE>SNAPSHOT</INCREMENT_MODE>"
            }
        });
    }
    let (image, last) = match (cfg.mode, chain) {
        (
            Mode::Increment,
            ChainPointers {
                image_id: Some(i),
                last_increment: Some(l),
            },
        ) if !cfg.reset => (i as i64, l as i64),
        _ => (-1, -1),
    };
    c.push_str(&format!(
        "<LAST_INCREMENT_ID>{last}</LAST_INCREMENT_ID><INCREMENTAL_BACKUP_ID>{image}</INCREMENTAL_BACKUP_ID>"
    ));
    if let Some(j) = cfg.job_id {
        c.push_str(&format!("<BACKUP_JOB_ID>{j}</BACKUP_JOB_ID>"));
    }
    if let Some(ids) = &cfg.disk_ids {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        c.push_str(&format!("<DISK_IDS>{}</DISK_IDS>", list.join(" ")));
    }
    let backups = format!("<BACKUPS><BACKUP_CONFIG>{c}</BACKUP_CONFIG><BACKUP_IDS/></BACKUPS>");
    vm.children.push(
        backstop_protocol::xml::Element::parse(&backups)
            .map_err(|e| step(format!("the job's BACKUP_CONFIG: {e}")))?,
    );
    Ok(vm.to_xml())
}

/// The disks oned backs up (driver contract §3.1): not CDROM, SWAP or FILESYSTEM; volatile FS disks only
/// with BACKUP_VOLATILE; only DISK_IDS when given.
pub fn backup_disks(vm: &backstop_protocol::message::Vm, cfg: &JobConfig) -> Vec<u32> {
    vm.disks
        .iter()
        .filter(|d| {
            let t = d
                .disk_type
                .as_deref()
                .unwrap_or("FILE")
                .to_ascii_uppercase();
            match t.as_str() {
                "CDROM" | "RBD_CDROM" | "SWAP" | "FILESYSTEM" => false,
                "FS" => cfg.backup_volatile,
                _ => true,
            }
        })
        .map(|d| d.disk_id)
        .filter(|id| cfg.disk_ids.as_ref().is_none_or(|ids| ids.contains(id)))
        .collect()
}

/// Runs an action file with argv and stdin; (success, stdout, stderr).
fn action(path: &Path, args: &[String], stdin: &[u8]) -> Result<(bool, String, String), Error> {
    action_with(path, args, stdin, None)
}

/// [`action`], with the progress file for a backup action.
fn action_with(
    path: &Path,
    args: &[String],
    stdin: &[u8],
    progress: Option<&Path>,
) -> Result<(bool, String, String), Error> {
    let mut cmd = Command::new(path);
    if let Some(p) = progress {
        cmd.env(PROGRESS_ENV, p);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| step(format!("cannot run {}: {e}", path.display())))?;
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| step(format!("cannot run {}: {e}", path.display())))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The environment variable that asks backstop's backup action for progress (it names the
/// file the action keeps `<done> <total> <read>` in); other drivers ignore it.
pub use backstop_datastore::remote::PROGRESS_ENV;

/// The last stderr line that is not a log line: the failure oned would show.
fn reason(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("INFO:"))
        .unwrap_or("failed without a message")
        .trim()
        .to_string()
}

/// prebackup, backup, postbackup for one VM. The backup id and size on success, the failed
/// step's message otherwise (postbackup has then run with BACKUP_RESULT=FAILURE). `cancelled`
/// is asked between prebackup and backup; a backup already running is stopped by the
/// datastore's backup_cancel. With `progress`, the backup action keeps its progress in that
/// file.
pub fn run_chain(
    env: &Env,
    vm_doc: &str,
    cfg: &JobConfig,
    ds: &BackupDatastore,
    chain: ChainPointers,
    cancelled: &dyn Fn() -> bool,
    progress: Option<&Path>,
) -> Result<ChainResult, Error> {
    let call = ChainCall::new(env, vm_doc, cfg, ds, chain)?;
    let mut retried = false;
    let out = loop {
        let (ok, _, err) = action(&call.tm("prebackup"), &call.args, call.doc.as_bytes())?;
        if !ok {
            call.postbackup(true);
            return Err(step(reason(&err)));
        }
        // A cancel between the steps: no backup is started.
        if cancelled() {
            call.postbackup(true);
            return Err(step("the backup was cancelled"));
        }
        let ds_stdin = format!(
            "<DS_DRIVER_ACTION_DATA>{}{}</DS_DRIVER_ACTION_DATA>",
            ds.document, call.doc
        );
        let backup = env.remotes.join(format!("datastore/{}/backup", ds.ds_mad));
        let (ok, out, err) = action_with(&backup, &call.args, ds_stdin.as_bytes(), progress)?;
        if ok {
            break out;
        }
        call.postbackup(true);
        // Staged changes on a parent that lacks healed-away data: the backup left a note that
        // makes backstop's prebackup read those disks whole, so one more attempt at once
        // completes the increment (with another TM it fails the same way, and the line says
        // to reset the chain).
        if !retried && err.contains(backstop_protocol::staging::REREAD_NEXT_ATTEMPT) {
            retried = true;
            continue;
        }
        return Err(step(reason(&err)));
    };
    call.postbackup(false);
    let mut words = out.split_whitespace();
    let id = words.next().unwrap_or_default().to_string();
    let size: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if id.is_empty() {
        return Err(step("the backup printed no backup id"));
    }
    Ok(ChainResult {
        vm_id: call.vm_id,
        backup_id: id,
        size_mb: size,
        new_chain: call.new_chain,
        chain,
    })
}

/// What oned passes to each action of a VM's backup chain (the six arguments and the VM
/// document), and where the TM actions are.
#[derive(Debug)]
pub struct ChainCall {
    pub vm_id: u64,
    pub args: Vec<String>,
    pub doc: String,
    /// Whether this backup starts a new image (FULL, RESET, or no image yet).
    pub new_chain: bool,
    tm_dir: std::path::PathBuf,
    suffix: &'static str,
}

impl ChainCall {
    pub fn new(
        env: &Env,
        vm_doc: &str,
        cfg: &JobConfig,
        ds: &BackupDatastore,
        chain: ChainPointers,
    ) -> Result<ChainCall, Error> {
        let root = backstop_protocol::xml::Element::parse(vm_doc)
            .map_err(|e| step(format!("the VM document is not XML: {e}")))?;
        let vm = backstop_protocol::message::Vm::from_xml(&root)
            .map_err(|e| step(format!("the VM document: {e}")))?;
        let place = vm
            .placement
            .clone()
            .ok_or_else(|| step(format!("VM {} was never deployed (no HISTORY)", vm.id)))?;
        let sys_ds = place
            .system_ds_id
            .ok_or_else(|| step(format!("VM {}: its HISTORY has no DS_ID", vm.id)))?;
        let tm_mad = place.tm_mad.clone().unwrap_or_else(|| "ssh".into());
        let live = vm.lcm_state == Some(3) || vm.state == Some(3);
        let vm_dir = format!(
            "{}/{sys_ds}/{}",
            env.datastore_location.trim_end_matches('/'),
            vm.id
        );
        let disks = backup_disks(&vm, cfg);
        if disks.is_empty() {
            return Err(step(format!("VM {} has no disk to back up", vm.id)));
        }
        let args: Vec<String> = vec![
            format!("{}:{vm_dir}", place.hostname),
            disks
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(":"),
            vm.deploy_id
                .clone()
                .unwrap_or_else(|| format!("one-{}", vm.id)),
            cfg.job_id.map_or("-".into(), |j| j.to_string()),
            vm.id.to_string(),
            sys_ds.to_string(),
        ];
        Ok(ChainCall {
            vm_id: vm.id,
            args,
            doc: vm_document(vm_doc, cfg, ds.id, chain)?,
            new_chain: cfg.mode == Mode::Full || cfg.reset || chain.image_id.is_none(),
            tm_dir: env.remotes.join(format!("tm/{tm_mad}")),
            suffix: if live { "_live" } else { "" },
        })
    }

    fn tm(&self, name: &str) -> std::path::PathBuf {
        self.tm_dir.join(format!("{name}{}", self.suffix))
    }

    /// The TM postbackup, with BACKUP_RESULT=FAILURE after a failure. Its own failure is not
    /// reported: the backup's outcome is already decided, and the next prebackup heals.
    pub fn postbackup(&self, failed: bool) {
        let stdin = if failed {
            format!("{}<BACKUP_RESULT>FAILURE</BACKUP_RESULT>", self.doc)
        } else {
            self.doc.clone()
        };
        let _ = action(&self.tm("postbackup"), &self.args, stdin.as_bytes());
    }
}

/// The IMAGE document of a stored backup image, as oned sends it to `rm` and
/// `increment_flatten`.
pub fn image_document(state: &State, image_id: u64) -> Result<String, StateError> {
    let img = state.image(image_id)?;
    let incs: String = img
        .increments
        .iter()
        .enumerate()
        .map(|(k, i)| {
            format!(
                "<INCREMENT><ID>{}</ID><PARENT_ID>{}</PARENT_ID><SIZE>{}</SIZE><SOURCE><![CDATA[{}]]></SOURCE>\
                 <TYPE>{}</TYPE><DATE>{}</DATE></INCREMENT>",
                i.id,
                if k == 0 { -1 } else { img.increments[k - 1].id as i64 },
                i.size_mb,
                i.source,
                i.kind,
                i.created_at
            )
        })
        .collect();
    let template = match img.job_id {
        Some(j) => format!("<TEMPLATE><BACKUP_JOB_ID>{j}</BACKUP_JOB_ID></TEMPLATE>"),
        None => "<TEMPLATE/>".into(),
    };
    let source = img
        .increments
        .first()
        .map(|i| i.source.clone())
        .unwrap_or_default();
    let size: u64 = img.increments.iter().map(|i| i.size_mb).sum();
    Ok(format!(
        "<IMAGE><ID>{image_id}</ID><NAME>{} backup</NAME><TYPE>6</TYPE><SOURCE><![CDATA[{source}]]></SOURCE>\
         <FORMAT>raw</FORMAT><SIZE>{size}</SIZE><DATASTORE_ID>{}</DATASTORE_ID><VMS><ID>{}</ID></VMS>{template}\
         <BACKUP_INCREMENTS>{incs}</BACKUP_INCREMENTS></IMAGE>",
        img.vm_id, img.datastore_id, img.vm_id
    ))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Records a successful backup and applies KEEP_LAST; the outcome.
pub fn record(
    env: &Env,
    state: &mut State,
    cfg: &JobConfig,
    ds: &BackupDatastore,
    result: ChainResult,
    now: i64,
) -> Result<Outcome, Error> {
    let ChainResult {
        vm_id,
        backup_id,
        size_mb,
        new_chain,
        chain,
    } = result;
    let mode = cfg.mode;
    let (image_id, increment_id) = if new_chain {
        let image = state.add_image(vm_id, cfg.job_id, ds.id, now)?;
        state.add_increment(image, 0, &backup_id, size_mb, "FULL", now)?;
        (image, 0)
    } else {
        let image = chain.image_id.ok_or_else(|| step("no chain to extend"))?;
        let next = chain.last_increment.map_or(0, |l| l + 1);
        state.add_increment(image, next, &backup_id, size_mb, "INCREMENT", now)?;
        (image, next)
    };
    // KEEP_LAST.
    if cfg.keep_last > 0 {
        match mode {
            Mode::Full => {
                let images = state.images_of(vm_id, cfg.job_id, ds.id)?;
                let excess = images.len().saturating_sub(cfg.keep_last as usize);
                for old in images.iter().take(excess) {
                    rm_image(env, state, ds, *old, "KEEP_LAST")?;
                }
            }
            Mode::Increment => {
                let img = state.image(image_id)?;
                if img.increments.len() > cfg.keep_last as usize {
                    flatten(env, state, ds, image_id, (cfg.keep_last, None), "KEEP_LAST")?;
                }
            }
        }
    }
    Ok(Outcome {
        backup_id,
        size_mb,
        image_id,
        increment_id,
    })
}

/// Removes backup image `image` with the datastore's `rm`, then from the records; `what`
/// names the rule in an error.
pub(crate) fn rm_image(
    env: &Env,
    state: &mut State,
    ds: &BackupDatastore,
    image: u64,
    what: &str,
) -> Result<(), Error> {
    let doc = format!(
        "<DS_DRIVER_ACTION_DATA>{}{}</DS_DRIVER_ACTION_DATA>",
        image_document(state, image)?,
        ds.document
    );
    let rm = env.remotes.join(format!("datastore/{}/rm", ds.ds_mad));
    let (ok, _, err) = action(&rm, &[image.to_string()], b64(&doc).as_bytes())?;
    if !ok {
        return Err(step(format!(
            "{what}: rm of image {image}: {}",
            reason(&err)
        )));
    }
    state.remove_image(image)?;
    Ok(())
}

/// Runs the datastore's `increment_flatten` on `image` with KEEP_LAST and, for backstop's
/// datastores, KEEP_INCREMENTS (the ids to keep); records the increments it kept.
pub(crate) fn flatten(
    env: &Env,
    state: &mut State,
    ds: &BackupDatastore,
    image: u64,
    (keep_last, keep): (u32, Option<&[u64]>),
    what: &str,
) -> Result<(), Error> {
    let extra = keep.map_or(String::new(), |ids| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        format!("<KEEP_INCREMENTS>{}</KEEP_INCREMENTS>", ids.join(","))
    });
    let doc = format!(
        "<DS_DRIVER_ACTION_DATA>{}{}<EXTRA_DATA><KEEP_LAST>{keep_last}</KEEP_LAST>{extra}</EXTRA_DATA></DS_DRIVER_ACTION_DATA>",
        image_document(state, image)?,
        ds.document,
    );
    let path = env
        .remotes
        .join(format!("datastore/{}/increment_flatten", ds.ds_mad));
    let (ok, out, err) = action(&path, &[image.to_string()], b64(&doc).as_bytes())?;
    if !ok {
        return Err(step(format!(
            "{what}: increment_flatten of image {image}: {}",
            reason(&err)
        )));
    }
    if let Some((size, chain_text)) = out.trim().split_once(' ') {
        let size: u64 = size.parse().unwrap_or(0);
        let kept: Vec<(u64, String)> = chain_text
            .split(',')
            .filter_map(|l| {
                let (i, s) = l.split_once(':')?;
                Some((i.parse().ok()?, s.to_string()))
            })
            .collect();
        state.flatten_increments(image, &kept, size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_protocol::message::IncrementMode;

    fn cfg(mode: Mode) -> JobConfig {
        JobConfig {
            job_id: Some(7),
            mode,
            keep_last: 2,
            fs_freeze: "NONE".into(),
            backup_volatile: false,
            disk_ids: None,
            reset: false,
            chain: Default::default(),
            increment_mode: backstop_protocol::message::IncrementMode::Cbt,
        }
    }

    /// Regression: the document was cut at the first `<BACKUPS>` and the last `</VM>` of its
    /// text, which a VM owner's USER_TEMPLATE value can hold.
    #[test]
    fn a_hostile_user_template_does_not_reshape_the_vm_document() {
        let note = "<BACKUPS><BACKUP_CONFIG><MODE>FULL</MODE></BACKUP_CONFIG></BACKUPS></VM>";
        let doc = format!(
            "<VM><ID>22</ID><TEMPLATE/><USER_TEMPLATE><NOTE><![CDATA[{note}]]></NOTE></USER_TEMPLATE>\
             <BACKUPS><BACKUP_CONFIG><MODE>FULL</MODE></BACKUP_CONFIG></BACKUPS></VM>"
        );
        let out = vm_document(
            &doc,
            &cfg(Mode::Increment),
            100,
            ChainPointers {
                image_id: Some(40),
                last_increment: Some(2),
            },
        )
        .expect("document");
        let root = backstop_protocol::xml::Element::parse(&out).expect("xml");
        assert_eq!(root.text_at("USER_TEMPLATE/NOTE"), Some(note));
        assert_eq!(root.children_named("BACKUPS").count(), 1);
        let vm = backstop_protocol::message::Vm::from_xml(&root).expect("vm");
        assert_eq!(
            vm.backup_config.mode,
            backstop_protocol::message::BackupMode::Increment
        );
        assert_eq!(vm.backup_config.last_increment_id, Some(2));
    }

    #[test]
    fn the_vm_document_carries_the_jobs_config_and_the_chain() {
        let doc = "<VM><ID>22</ID><TEMPLATE/><BACKUPS><BACKUP_CONFIG><MODE>FULL</MODE></BACKUP_CONFIG><BACKUP_IDS><ID>3</ID></BACKUP_IDS></BACKUPS></VM>";
        let out = vm_document(
            doc,
            &cfg(Mode::Increment),
            100,
            ChainPointers {
                image_id: Some(40),
                last_increment: Some(2),
            },
        )
        .expect("document");
        let root = backstop_protocol::xml::Element::parse(&out).expect("xml");
        let vm = backstop_protocol::message::Vm::from_xml(&root).expect("vm");
        let bc = &vm.backup_config;
        assert_eq!(bc.mode, backstop_protocol::message::BackupMode::Increment);
        assert_eq!(bc.last_increment_id, Some(2));
        assert_eq!(bc.incremental_backup_id, Some(40));
        assert_eq!(bc.last_datastore_id, Some(100));
        assert_eq!(bc.backup_job_id, Some(7));
        assert_eq!(bc.increment_mode, Some(IncrementMode::Cbt));
        assert_eq!(out.matches("<BACKUPS>").count(), 1);
        // INCREMENT_MODE reaches the TM as the job says.
        let snapshot = JobConfig {
            increment_mode: IncrementMode::Snapshot,
            ..cfg(Mode::Increment)
        };
        let out = vm_document(doc, &snapshot, 100, ChainPointers::default()).expect("document");
        let root = backstop_protocol::xml::Element::parse(&out).expect("xml");
        let vm = backstop_protocol::message::Vm::from_xml(&root).expect("vm");
        assert_eq!(
            vm.backup_config.increment_mode,
            Some(IncrementMode::Snapshot)
        );
        // FULL mode and RESET start a new chain.
        for c in [
            cfg(Mode::Full),
            JobConfig {
                reset: true,
                ..cfg(Mode::Increment)
            },
        ] {
            let out = vm_document(
                doc,
                &c,
                100,
                ChainPointers {
                    image_id: Some(40),
                    last_increment: Some(2),
                },
            )
            .expect("document");
            assert!(
                out.contains("<LAST_INCREMENT_ID>-1</LAST_INCREMENT_ID>"),
                "{out}"
            );
        }
    }

    #[test]
    fn which_disks_are_backed_up() {
        let doc = "<VM><ID>1</ID><TEMPLATE>\
                   <DISK><DISK_ID>0</DISK_ID><TYPE>FILE</TYPE></DISK>\
                   <DISK><DISK_ID>1</DISK_ID><TYPE>CDROM</TYPE></DISK>\
                   <DISK><DISK_ID>2</DISK_ID><TYPE>fs</TYPE></DISK>\
                   <DISK><DISK_ID>3</DISK_ID><TYPE>SWAP</TYPE></DISK>\
                   <DISK><DISK_ID>4</DISK_ID></DISK></TEMPLATE></VM>";
        let root = backstop_protocol::xml::Element::parse(doc).expect("xml");
        let vm = backstop_protocol::message::Vm::from_xml(&root).expect("vm");
        assert_eq!(backup_disks(&vm, &cfg(Mode::Full)), [0, 4]);
        let volatile = JobConfig {
            backup_volatile: true,
            ..cfg(Mode::Full)
        };
        assert_eq!(backup_disks(&vm, &volatile), [0, 2, 4]);
        let only = JobConfig {
            disk_ids: Some(vec![4]),
            ..cfg(Mode::Full)
        };
        assert_eq!(backup_disks(&vm, &only), [4]);
    }
}
