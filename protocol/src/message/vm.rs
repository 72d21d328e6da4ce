//! The VM document: its disks, placement and BACKUP_CONFIG.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BackupMode {
    Full,
    Increment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IncrementMode {
    Cbt,
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FsFreeze {
    None,
    Agent,
    Suspend,
}

/// `VM/BACKUPS/BACKUP_CONFIG` (driver contract §8.1), normalised the way oned normalises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupConfig {
    pub mode: BackupMode,
    /// Only for INCREMENT mode.
    pub increment_mode: Option<IncrementMode>,
    /// `None`: keep everything.
    pub keep_last: Option<u32>,
    pub backup_volatile: bool,
    pub fs_freeze: FsFreeze,
    /// `None`: every eligible disk.
    pub disk_ids: Option<Vec<u32>>,
    pub interactive: bool,
    /// `None` when oned writes -1 (no active chain).
    pub last_increment_id: Option<u64>,
    pub incremental_backup_id: Option<u64>,
    pub backup_job_id: Option<u64>,
    pub active_flatten: bool,
    pub last_datastore_id: Option<u64>,
    pub last_bridge: Option<String>,
    pub last_backup_id: Option<String>,
    pub last_backup_size: Option<u64>,
    pub last_backup_format: Option<String>,
}

pub(super) fn yes(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("YES") || v.eq_ignore_ascii_case("TRUE"))
}

impl BackupConfig {
    pub(super) fn from_node(node: Node<'_>) -> Result<BackupConfig, MessageError> {
        let mode = match node.text("MODE") {
            Some(m) if m.eq_ignore_ascii_case("INCREMENT") => BackupMode::Increment,
            _ => BackupMode::Full,
        };
        let increment_mode =
            (mode == BackupMode::Increment).then(|| match node.text("INCREMENT_MODE") {
                Some(m) if m.eq_ignore_ascii_case("SNAPSHOT") => IncrementMode::Snapshot,
                _ => IncrementMode::Cbt,
            });
        let fs_freeze = match node.text("FS_FREEZE") {
            Some(f) if f.eq_ignore_ascii_case("AGENT") => FsFreeze::Agent,
            Some(f) if f.eq_ignore_ascii_case("SUSPEND") => FsFreeze::Suspend,
            _ => FsFreeze::None,
        };
        let keep_last = node
            .number::<i64>("KEEP_LAST")?
            .map(|k| u32::try_from(k.max(0)).unwrap_or(u32::MAX));
        let disk_ids = node
            .text("DISK_IDS")
            .map(|list| parse_id_list(list, &node.sub("DISK_IDS"), ','))
            .transpose()?;
        Ok(BackupConfig {
            mode,
            increment_mode,
            keep_last,
            backup_volatile: yes(node.text("BACKUP_VOLATILE")),
            fs_freeze,
            disk_ids,
            // As the stock TM reads it (YES only, any case), so a hand-over and the stock
            // script agree.
            interactive: node
                .text("INTERACTIVE")
                .is_some_and(|v| v.eq_ignore_ascii_case("YES")),
            last_increment_id: node.optional_id("LAST_INCREMENT_ID")?,
            incremental_backup_id: node.optional_id("INCREMENTAL_BACKUP_ID")?,
            backup_job_id: node.optional_id("BACKUP_JOB_ID")?,
            active_flatten: yes(node.text("ACTIVE_FLATTEN")),
            last_datastore_id: node.optional_id("LAST_DATASTORE_ID")?,
            last_bridge: node.text("LAST_BRIDGE").map(str::to_string),
            last_backup_id: node.text("LAST_BACKUP_ID").map(str::to_string),
            last_backup_size: node.number("LAST_BACKUP_SIZE")?,
            last_backup_format: node.text("LAST_BACKUP_FORMAT").map(str::to_string),
        })
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            mode: BackupMode::Full,
            increment_mode: None,
            keep_last: None,
            backup_volatile: false,
            fs_freeze: FsFreeze::None,
            disk_ids: None,
            interactive: false,
            last_increment_id: None,
            incremental_backup_id: None,
            backup_job_id: None,
            active_flatten: false,
            last_datastore_id: None,
            last_bridge: None,
            last_backup_id: None,
            last_backup_size: None,
            last_backup_format: None,
        }
    }
}

/// Parses `0,1,3` or `0:1:3` (blank and empty items ignored).
pub fn parse_id_list(list: &str, path: &str, sep: char) -> Result<Vec<u32>, MessageError> {
    list.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| MessageError::NotNumber {
                path: path.to_string(),
                value: s.to_string(),
            })
        })
        .collect()
}

/// One `VM/TEMPLATE/DISK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    pub disk_id: u32,
    /// Virtual size in MB.
    pub size_mb: Option<u64>,
    pub format: Option<String>,
    /// `TYPE`: FILE, BLOCK, FS, SWAP, CDROM, RBD, ...
    pub disk_type: Option<String>,
    pub source: Option<String>,
    pub image_id: Option<u64>,
    pub target: Option<String>,
    pub persistent: bool,
    /// Every attribute of the disk, as oned wrote it.
    pub attributes: Vec<(String, String)>,
}

impl Disk {
    /// `DRIVER`: the format libvirt opens the disk file with.
    pub fn driver(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, v)| k == "DRIVER" && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// The current placement of a VM: the last `HISTORY_RECORDS/HISTORY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub hostname: String,
    pub host_id: Option<u64>,
    pub system_ds_id: Option<u64>,
    pub tm_mad: Option<String>,
    pub vm_mad: Option<String>,
}

/// A VM document (`onevm show -x`, or what oned sends its drivers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    pub id: u64,
    pub name: String,
    pub deploy_id: Option<String>,
    pub state: Option<u32>,
    pub lcm_state: Option<u32>,
    pub placement: Option<Placement>,
    pub disks: Vec<Disk>,
    /// `TEMPLATE/TPM` pairs when the VM has a TPM.
    pub tpm: Option<Vec<(String, String)>>,
    pub backup_config: BackupConfig,
    /// `BACKUPS/BACKUP_IDS`: the backup images of this VM.
    pub backup_ids: Vec<u64>,
    pub template: Template,
    pub user_template: Template,
    /// `BACKUP_RESULT=FAILURE`, added by one_vmm_exec for postbackup after a failed step.
    pub backup_failed: bool,
    /// The disks that have disk snapshots (`SNAPSHOTS/DISK_ID` with at least one
    /// `SNAPSHOT`).
    pub disk_snapshots: Vec<u32>,
}

impl Vm {
    /// A `<VM>` document on its own, as `one.vm.info` returns it.
    pub fn from_xml(root: &Element) -> Result<Vm, MessageError> {
        Vm::from_node(Node::root(root, &["VM"])?)
    }

    pub(super) fn from_node(node: Node<'_>) -> Result<Vm, MessageError> {
        let template = node.template("TEMPLATE");
        let mut disks = Vec::new();
        if let Some(t) = node.child("TEMPLATE") {
            for (i, d) in t.element.children_named("DISK").enumerate() {
                let path = format!("{}/DISK[{i}]", t.path);
                let dn = Node {
                    element: d,
                    path: &path,
                };
                disks.push(Disk {
                    disk_id: dn.required_number("DISK_ID")?,
                    size_mb: dn.number("SIZE")?,
                    format: dn.text("FORMAT").map(str::to_string),
                    disk_type: dn.text("TYPE").map(str::to_string),
                    source: dn.text("SOURCE").map(str::to_string),
                    image_id: dn.optional_id("IMAGE_ID")?,
                    target: dn.text("TARGET").map(str::to_string),
                    persistent: yes(dn.text("PERSISTENT")),
                    attributes: d
                        .children
                        .iter()
                        .map(|c| (c.name.clone(), c.text.clone()))
                        .collect(),
                });
            }
        }
        let tpm = template.vectors("TPM").next().map(|pairs| pairs.to_vec());
        let placement = node
            .element
            .at("HISTORY_RECORDS")
            .and_then(|h| h.children_named("HISTORY").last())
            .map(|h| {
                let path = node.sub("HISTORY_RECORDS/HISTORY");
                let hn = Node {
                    element: h,
                    path: &path,
                };
                Ok::<_, MessageError>(Placement {
                    hostname: hn.required_text("HOSTNAME")?.to_string(),
                    host_id: hn.optional_id("HID")?,
                    system_ds_id: hn.optional_id("DS_ID")?,
                    tm_mad: hn.text("TM_MAD").map(str::to_string),
                    vm_mad: hn.text("VM_MAD").map(str::to_string),
                })
            })
            .transpose()?;
        let backup_config = match node.child("BACKUPS/BACKUP_CONFIG") {
            Some(c) => BackupConfig::from_node(c.node())?,
            None => BackupConfig::default(),
        };
        let backup_ids = match node.child("BACKUPS/BACKUP_IDS") {
            Some(ids) => ids_of(ids.node())?,
            None => Vec::new(),
        };
        let mut disk_snapshots = Vec::new();
        for (i, s) in node.element.children_named("SNAPSHOTS").enumerate() {
            if s.children_named("SNAPSHOT").next().is_none() {
                continue;
            }
            let path = format!("{}/SNAPSHOTS[{i}]", node.path);
            let sn = Node {
                element: s,
                path: &path,
            };
            disk_snapshots.push(sn.required_number("DISK_ID")?);
        }
        Ok(Vm {
            id: node.required_number("ID")?,
            name: node.text("NAME").unwrap_or_default().to_string(),
            deploy_id: node.text("DEPLOY_ID").map(str::to_string),
            state: node.number("STATE")?,
            lcm_state: node.number("LCM_STATE")?,
            placement,
            disks,
            tpm,
            backup_config,
            backup_ids,
            template,
            user_template: node.template("USER_TEMPLATE"),
            backup_failed: node
                .text("BACKUP_RESULT")
                .is_some_and(|r| r.eq_ignore_ascii_case("FAILURE")),
            disk_snapshots,
        })
    }

    pub fn disk(&self, id: u32) -> Option<&Disk> {
        self.disks.iter().find(|d| d.disk_id == id)
    }
}

pub(super) fn ids_of(node: Node<'_>) -> Result<Vec<u64>, MessageError> {
    node.element
        .children_named("ID")
        .map(|e| {
            let t = e.text.trim();
            t.parse().map_err(|_| MessageError::NotNumber {
                path: node.sub("ID"),
                value: t.to_string(),
            })
        })
        .collect()
}
