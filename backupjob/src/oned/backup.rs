//! One VM's backup through oned, as `onevm backup` makes it: the job's settings written into
//! the VM's BACKUP_CONFIG (`one.vm.updateconf`, append mode, as oned's own backup jobs write
//! theirs), `one.vm.backup` with the datastore and the reset flag, then the VM watched until
//! it leaves the backup states. The outcome is read from the VM's record, never assumed: a
//! new image in BACKUP_IDS, or a new increment of its chain, is a success; anything else a
//! failure with oned's own message (`USER_TEMPLATE/ERROR`).

use crate::Error;
use crate::error::step;
use crate::runner::{JobConfig, Mode};
use backstop_protocol::message::{IncrementMode, Vm};
use backstop_protocol::oned::OnedClient;
use std::time::Duration;

/// oned's VM states and LCM states a backup passes through.
const ACTIVE: u32 = 3;
const BACKUP: u32 = 69;
const BACKUP_POWEROFF: u32 = 70;

/// How often a VM under backup is looked at.
const POLL: Duration = Duration::from_secs(2);

/// How long oned may stay unreachable while a backup runs before the runner gives up on
/// knowing its outcome (the backup itself goes on in oned; the next run settles it).
const LOST_AFTER: Duration = Duration::from_secs(600);

/// What a VM's record says of its backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: u32,
    pub lcm_state: u32,
    pub backup_ids: Vec<u64>,
    pub incremental_backup_id: Option<u64>,
    pub last_increment_id: Option<u64>,
    /// The backup job of oned that owns the VM's backups, when one does.
    pub backup_job_id: Option<u64>,
    /// `USER_TEMPLATE/ERROR`: oned's last error for the VM.
    pub error: Option<String>,
    pub vm: Vm,
}

impl Record {
    pub fn parse(doc: &str) -> Result<Record, String> {
        let root = backstop_protocol::xml::Element::parse(doc).map_err(|e| e.to_string())?;
        let vm = Vm::from_xml(&root).map_err(|e| e.to_string())?;
        Ok(Record {
            state: vm.state.unwrap_or(0),
            lcm_state: vm.lcm_state.unwrap_or(0),
            backup_ids: vm.backup_ids.clone(),
            incremental_backup_id: vm.backup_config.incremental_backup_id,
            last_increment_id: vm.backup_config.last_increment_id,
            backup_job_id: vm.backup_config.backup_job_id,
            error: vm
                .user_template
                .get("ERROR")
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string),
            vm,
        })
    }

    /// Whether oned is backing the VM up.
    pub fn in_backup(&self) -> bool {
        self.state == ACTIVE && matches!(self.lcm_state, BACKUP | BACKUP_POWEROFF)
    }
}

/// What a backup through oned made: the image it went into and its increment (0 for a
/// FULL image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub image_id: u64,
    pub increment_id: u64,
    pub new_chain: bool,
    /// The VM's BACKUP_IDS after it.
    pub backup_ids: Vec<u64>,
}

/// What the VM's record before and after a backup says it made; the failure line otherwise.
pub fn outcome(vm: u64, before: &Record, after: &Record) -> Result<Made, String> {
    let new_images: Vec<u64> = after
        .backup_ids
        .iter()
        .filter(|i| !before.backup_ids.contains(i))
        .copied()
        .collect();
    if let Some(&image) = new_images.iter().max() {
        let increment = match after.incremental_backup_id {
            Some(i) if i == image => after.last_increment_id.unwrap_or(0),
            _ => 0,
        };
        return Ok(Made {
            image_id: image,
            increment_id: increment,
            new_chain: true,
            backup_ids: after.backup_ids.clone(),
        });
    }
    if let (Some(image), Some(last)) = (after.incremental_backup_id, after.last_increment_id)
        && before.incremental_backup_id == Some(image)
        && before.last_increment_id.is_none_or(|b| last > b)
    {
        return Ok(Made {
            image_id: image,
            increment_id: last,
            new_chain: false,
            backup_ids: after.backup_ids.clone(),
        });
    }
    Err(match &after.error {
        Some(e) if before.error.as_ref() != Some(e) => format!(
            "oned made no backup of VM {vm}; its USER_TEMPLATE/ERROR says: {}",
            e.lines().next().unwrap_or_default()
        ),
        _ => format!("oned made no backup of VM {vm} (onevm show {vm} has its log)"),
    })
}

/// The BACKUP_CONFIG a job writes into its VMs, as oned's backup jobs write theirs: MODE,
/// KEEP_LAST (0: oned keeps every backup and the job's retention plan decides), FS_FREEZE,
/// BACKUP_VOLATILE, INCREMENT_MODE and DISK_IDS when the job has them.
pub fn backup_config(cfg: &JobConfig) -> String {
    let mut pairs = vec![
        (
            "MODE",
            match cfg.mode {
                Mode::Full => "FULL".to_string(),
                Mode::Increment => "INCREMENT".to_string(),
            },
        ),
        ("KEEP_LAST", cfg.keep_last.to_string()),
        ("FS_FREEZE", cfg.fs_freeze.clone()),
        (
            "BACKUP_VOLATILE",
            if cfg.backup_volatile { "YES" } else { "NO" }.to_string(),
        ),
    ];
    if cfg.mode == Mode::Increment {
        pairs.push((
            "INCREMENT_MODE",
            match cfg.increment_mode {
                IncrementMode::Cbt => "CBT",
                IncrementMode::Snapshot => "SNAPSHOT",
            }
            .to_string(),
        ));
    }
    if let Some(ids) = &cfg.disk_ids {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        pairs.push(("DISK_IDS", ids.join(",")));
    }
    // Every value is the runner's own (names, numbers, a fixed word), never a VM owner's.
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace(['"', '\\'], "")))
        .collect();
    format!("BACKUP_CONFIG=[{}]", inner.join(","))
}

/// Whether the VM's BACKUP_CONFIG already says what the job's would.
fn config_matches(vm: &Vm, cfg: &JobConfig) -> bool {
    use backstop_protocol::message::{BackupMode, FsFreeze};
    let bc = &vm.backup_config;
    let mode = match cfg.mode {
        Mode::Full => BackupMode::Full,
        Mode::Increment => BackupMode::Increment,
    };
    let freeze = match cfg.fs_freeze.as_str() {
        "AGENT" => FsFreeze::Agent,
        "SUSPEND" => FsFreeze::Suspend,
        _ => FsFreeze::None,
    };
    bc.mode == mode
        && bc.keep_last.unwrap_or(0) == cfg.keep_last
        && bc.fs_freeze == freeze
        && bc.backup_volatile == cfg.backup_volatile
        && (cfg.mode == Mode::Full
            || bc.increment_mode.unwrap_or(IncrementMode::Cbt) == cfg.increment_mode)
        && cfg
            .disk_ids
            .as_ref()
            .is_none_or(|ids| bc.disk_ids.as_ref() == Some(ids))
}

/// The VM's record, or the line saying it is gone.
fn record(client: &OnedClient, vm: u64) -> Result<Record, Error> {
    let doc = client
        .document_if_any("one.vm.info", vm)?
        .ok_or_else(|| step(format!("VM {vm} no longer exists in OpenNebula")))?;
    let r = Record::parse(&doc).map_err(|e| step(format!("oned's VM {vm}: {e}")))?;
    if r.state == super::inventory::DONE {
        return Err(step(format!("VM {vm} was deleted in OpenNebula")));
    }
    Ok(r)
}

/// Backs VM `vm` up into oned's datastore `ds` and waits for oned's outcome. `cancelled` is
/// asked while it runs; when it says yes, oned is asked to cancel (`one.vm.backupcancel`)
/// and the backup ends as oned ends it.
pub fn run(
    client: &OnedClient,
    vm: u64,
    ds: u64,
    cfg: &JobConfig,
    cancelled: &dyn Fn() -> bool,
) -> Result<Made, Error> {
    let before = record(client, vm)?;
    if let Some(bj) = before.backup_job_id {
        return Err(step(format!(
            "VM {vm} belongs to OpenNebula's backup job {bj}, which oned lets alone back it up \
             (take it out of that job's BACKUP_VMS)"
        )));
    }
    if before.in_backup() {
        return Err(step(format!("oned is backing VM {vm} up already")));
    }
    if !config_matches(&before.vm, cfg) {
        client
            .vm_updateconf_append(vm, &backup_config(cfg))
            .map_err(|e| step(format!("VM {vm}: the job's BACKUP_CONFIG: {e}")))?;
    }
    if cancelled() {
        return Err(step("the backup was cancelled"));
    }
    client.vm_backup(vm, ds, cfg.reset)?;
    let after = wait(client, vm, cancelled)?;
    outcome(vm, &before, &after).map_err(step)
}

/// Waits until oned is done with the VM's backup; its record then.
fn wait(client: &OnedClient, vm: u64, cancelled: &dyn Fn() -> bool) -> Result<Record, Error> {
    let mut asked_to_cancel = false;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(POLL);
        let r = match record(client, vm) {
            Ok(r) => {
                unreachable_since = None;
                r
            }
            Err(Error::Datastore(e)) => {
                // oned unreachable or refusing for now: the backup goes on in oned.
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > LOST_AFTER {
                    return Err(step(format!(
                        "lost oned while it backed VM {vm} up ({e}); the backup may go on in oned, and the next run backs the VM up again"
                    )));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if !r.in_backup() {
            return Ok(r);
        }
        if !asked_to_cancel && cancelled() {
            asked_to_cancel = true;
            client.vm_backup_cancel(vm)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ids: &[u64], inc: Option<(u64, u64)>, error: Option<&str>) -> Record {
        let (image, last) = inc.map_or((-1, -1), |(i, l)| (i as i64, l as i64));
        let ids: String = ids.iter().map(|i| format!("<ID>{i}</ID>")).collect();
        let error = error.map_or(String::new(), |e| format!("<ERROR>{e}</ERROR>"));
        Record::parse(&format!(
            "<VM><ID>4</ID><NAME>a</NAME><STATE>8</STATE><LCM_STATE>0</LCM_STATE><TEMPLATE/>\
             <USER_TEMPLATE>{error}</USER_TEMPLATE><BACKUPS><BACKUP_CONFIG><MODE>INCREMENT</MODE>\
             <INCREMENTAL_BACKUP_ID>{image}</INCREMENTAL_BACKUP_ID><LAST_INCREMENT_ID>{last}</LAST_INCREMENT_ID>\
             </BACKUP_CONFIG><BACKUP_IDS>{ids}</BACKUP_IDS></BACKUPS></VM>"
        ))
        .expect("record")
    }

    #[test]
    fn the_outcome_is_read_from_the_vms_record() {
        // A first FULL of a chain: a new image, increment 0.
        let made = outcome(4, &rec(&[], None, None), &rec(&[12], Some((12, 0)), None));
        assert_eq!(
            made,
            Ok(Made {
                image_id: 12,
                increment_id: 0,
                new_chain: true,
                backup_ids: vec![12],
            })
        );
        // An increment of image 12.
        let made = outcome(
            4,
            &rec(&[12], Some((12, 0)), None),
            &rec(&[12], Some((12, 1)), None),
        );
        assert_eq!(
            made,
            Ok(Made {
                image_id: 12,
                increment_id: 1,
                new_chain: false,
                backup_ids: vec![12],
            })
        );
        // FULL mode with KEEP_LAST: the oldest went as the new one came.
        let made = outcome(4, &rec(&[10, 11], None, None), &rec(&[11, 13], None, None));
        assert_eq!(made.map(|m| m.image_id), Ok(13));
        // Nothing new: oned's new error is the reason; an old error is not.
        let e = outcome(
            4,
            &rec(&[12], Some((12, 1)), Some("old")),
            &rec(&[12], Some((12, 1)), Some("Mon Dec 7: BACKUP: disk full")),
        )
        .expect_err("failed");
        assert_eq!(
            e,
            "oned made no backup of VM 4; its USER_TEMPLATE/ERROR says: Mon Dec 7: BACKUP: disk full"
        );
        let e = outcome(
            4,
            &rec(&[], None, Some("old")),
            &rec(&[], None, Some("old")),
        )
        .expect_err("failed");
        assert!(e.contains("made no backup of VM 4"), "{e}");
    }

    #[test]
    fn the_backup_config_is_the_jobs() {
        let cfg = JobConfig {
            job_id: Some(1),
            mode: Mode::Increment,
            keep_last: 3,
            fs_freeze: "AGENT".into(),
            backup_volatile: false,
            disk_ids: Some(vec![0, 2]),
            reset: false,
            chain: Default::default(),
            increment_mode: IncrementMode::Snapshot,
        };
        assert_eq!(
            backup_config(&cfg),
            "BACKUP_CONFIG=[MODE=\"INCREMENT\",KEEP_LAST=\"3\",FS_FREEZE=\"AGENT\",BACKUP_VOLATILE=\"NO\",\
             INCREMENT_MODE=\"SNAPSHOT\",DISK_IDS=\"0,2\"]"
        );
        let r = rec(&[], None, None);
        assert!(!config_matches(&r.vm, &cfg));
    }
}
