//! Typed messages: what oned puts in `DS_DRIVER_ACTION_DATA` and in the VM document (spec §2.4,
//! §3.2, §8). Every field an action needs is read here, once, with an error that names the full
//! path of whatever is missing or malformed. Unknown elements are ignored; template attributes
//! are all kept, in order.

use crate::template::{Attribute, Template, Value};
use crate::url::{BackupUrl, ChainLink};
use crate::xml::Element;
use serde::Serialize;
use std::fmt;

/// A message that does not hold what the action needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("expected XML root element {expected}, found {found}")]
    WrongRoot { expected: String, found: String },
    #[error("{path} is missing")]
    Missing { path: String },
    #[error("{path} is not a number: {value:?}")]
    NotNumber { path: String, value: String },
    #[error("{path} {problem}")]
    Invalid { path: String, problem: String },
}

/// An element together with its path from the root, for error messages.
#[derive(Clone, Copy)]
struct Node<'a> {
    element: &'a Element,
    path: &'a str,
}

struct Owned<'a> {
    element: &'a Element,
    path: String,
}

impl<'a> Owned<'a> {
    fn node(&self) -> Node<'_> {
        Node {
            element: self.element,
            path: &self.path,
        }
    }
}

impl<'a> Node<'a> {
    fn root(element: &'a Element, expected: &[&str]) -> Result<Node<'a>, MessageError> {
        if !expected.contains(&element.name.as_str()) {
            return Err(MessageError::WrongRoot {
                expected: expected.join(" or "),
                found: element.name.clone(),
            });
        }
        Ok(Node {
            element,
            path: &element.name,
        })
    }

    fn sub(&self, name: &str) -> String {
        format!("{}/{name}", self.path)
    }

    fn child(&self, name: &str) -> Option<Owned<'a>> {
        self.element.at(name).map(|element| Owned {
            element,
            path: self.sub(name),
        })
    }

    fn require(&self, name: &str) -> Result<Owned<'a>, MessageError> {
        self.child(name).ok_or_else(|| MessageError::Missing {
            path: self.sub(name),
        })
    }

    /// Text of a child, `None` when absent or empty.
    fn text(&self, name: &str) -> Option<&'a str> {
        self.element.text_at(name).filter(|t| !t.is_empty())
    }

    fn required_text(&self, name: &str) -> Result<&'a str, MessageError> {
        self.text(name).ok_or_else(|| MessageError::Missing {
            path: self.sub(name),
        })
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, MessageError> {
        self.text(name)
            .map(|t| {
                t.parse::<T>().map_err(|_| MessageError::NotNumber {
                    path: self.sub(name),
                    value: t.to_string(),
                })
            })
            .transpose()
    }

    fn required_number<T: std::str::FromStr>(&self, name: &str) -> Result<T, MessageError> {
        self.number(name)?.ok_or_else(|| MessageError::Missing {
            path: self.sub(name),
        })
    }

    /// An id where oned writes `-1` for "none".
    fn optional_id(&self, name: &str) -> Result<Option<u64>, MessageError> {
        Ok(self
            .number::<i64>(name)?
            .and_then(|v| u64::try_from(v).ok()))
    }

    fn template(&self, name: &str) -> Template {
        self.element
            .child(name)
            .map(template_from_xml)
            .unwrap_or_default()
    }
}

/// Reads a `TEMPLATE` element: a leaf is a single attribute, an element with children a vector.
pub fn template_from_xml(element: &Element) -> Template {
    Template {
        attributes: element
            .children
            .iter()
            .map(|c| Attribute {
                name: c.name.clone(),
                value: if c.children.is_empty() {
                    Value::Single(c.text.clone())
                } else {
                    Value::Vector(
                        c.children
                            .iter()
                            .map(|v| (v.name.clone(), v.text.clone()))
                            .collect(),
                    )
                },
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// DATASTORE

/// The backup datastore, decrypted by oned: `RESTIC_PASSWORD` arrives in plain text.
#[derive(Clone, PartialEq, Eq)]
pub struct Datastore {
    pub id: u64,
    pub name: String,
    pub ds_mad: String,
    pub tm_mad: String,
    /// `<DATASTORE_LOCATION>/<id>`, e.g. `/var/lib/one//datastores/100`.
    pub base_path: String,
    /// The numeric TYPE (3 is BACKUP_DS), when present.
    pub type_code: Option<u32>,
    pub template: Template,
}

impl Datastore {
    /// A `<DATASTORE>` document on its own, as `one.datastore.info` returns it.
    pub fn from_xml(root: &Element) -> Result<Datastore, MessageError> {
        Datastore::from_node(Node::root(root, &["DATASTORE"])?)
    }

    fn from_node(node: Node<'_>) -> Result<Datastore, MessageError> {
        Ok(Datastore {
            id: node.required_number("ID")?,
            name: node.text("NAME").unwrap_or_default().to_string(),
            ds_mad: node.required_text("DS_MAD")?.to_string(),
            tm_mad: node.text("TM_MAD").unwrap_or("-").to_string(),
            base_path: node.required_text("BASE_PATH")?.to_string(),
            type_code: node.number("TYPE")?,
            template: node.template("TEMPLATE"),
        })
    }

    /// A template attribute with one pair of surrounding double quotes removed (as the stock
    /// drivers do); `None` when absent or empty.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        let v = self.template.get(name)?.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    }
}

/// Debug never shows secret attributes.
impl fmt::Debug for Datastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datastore")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("ds_mad", &self.ds_mad)
            .field("tm_mad", &self.tm_mad)
            .field("base_path", &self.base_path)
            .field("type_code", &self.type_code)
            .field("template", &self.template.redacted())
            .finish()
    }
}

/// Serialisation (for `backstop decode`) never shows secret attributes either.
impl Serialize for Datastore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Datastore", 7)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("ds_mad", &self.ds_mad)?;
        st.serialize_field("tm_mad", &self.tm_mad)?;
        st.serialize_field("base_path", &self.base_path)?;
        st.serialize_field("type_code", &self.type_code)?;
        st.serialize_field("template", &self.template.redacted())?;
        st.end()
    }
}

// ---------------------------------------------------------------------------------------------
// VM

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

/// `VM/BACKUPS/BACKUP_CONFIG` (spec §8.1), normalised the way oned normalises it.
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

fn yes(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("YES") || v.eq_ignore_ascii_case("TRUE"))
}

impl BackupConfig {
    fn from_node(node: Node<'_>) -> Result<BackupConfig, MessageError> {
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
            interactive: yes(node.text("INTERACTIVE")),
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
}

impl Vm {
    /// A `<VM>` document on its own, as `one.vm.info` returns it.
    pub fn from_xml(root: &Element) -> Result<Vm, MessageError> {
        Vm::from_node(Node::root(root, &["VM"])?)
    }

    fn from_node(node: Node<'_>) -> Result<Vm, MessageError> {
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
        })
    }

    pub fn disk(&self, id: u32) -> Option<&Disk> {
        self.disks.iter().find(|d| d.disk_id == id)
    }
}

fn ids_of(node: Node<'_>) -> Result<Vec<u64>, MessageError> {
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

// ---------------------------------------------------------------------------------------------
// IMAGE

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IncrementType {
    Full,
    Increment,
}

/// One `BACKUP_INCREMENTS/INCREMENT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Increment {
    pub id: u64,
    pub parent_id: Option<u64>,
    pub source: String,
    pub size_mb: Option<u64>,
    pub date: Option<i64>,
    pub kind: IncrementType,
}

/// A backup image (TYPE 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: u64,
    pub image_type: Option<u32>,
    /// The backup id of the first (or only) backup.
    pub source: String,
    pub path: Option<String>,
    /// `raw` or `rbd`.
    pub format: Option<String>,
    pub size_mb: Option<u64>,
    pub datastore_id: Option<u64>,
    pub vm_ids: Vec<u64>,
    pub backup_job_id: Option<u64>,
    pub increments: Vec<Increment>,
    pub backup_disk_ids: Vec<u32>,
    pub template: Template,
}

impl Image {
    /// An `<IMAGE>` document on its own, as `one.image.info` returns it.
    pub fn from_xml(root: &Element) -> Result<Image, MessageError> {
        Image::from_node(Node::root(root, &["IMAGE"])?)
    }

    fn from_node(node: Node<'_>) -> Result<Image, MessageError> {
        let template = node.template("TEMPLATE");
        let mut increments = Vec::new();
        if let Some(incs) = node.child("BACKUP_INCREMENTS") {
            for (i, inc) in incs.element.children_named("INCREMENT").enumerate() {
                let path = format!("{}/INCREMENT[{i}]", incs.path);
                let n = Node {
                    element: inc,
                    path: &path,
                };
                let source = n.required_text("SOURCE")?;
                if !crate::url::valid_source(source) {
                    return Err(MessageError::Invalid {
                        path: n.sub("SOURCE"),
                        problem: format!(
                            "{source:?} is not a backup id (no blanks, '/', ',' or ':')"
                        ),
                    });
                }
                increments.push(Increment {
                    id: n.required_number("ID")?,
                    parent_id: n.optional_id("PARENT_ID")?,
                    source: source.to_string(),
                    size_mb: n.number("SIZE")?,
                    date: n.number("DATE")?,
                    kind: match n.text("TYPE") {
                        Some(t) if t.eq_ignore_ascii_case("FULL") => IncrementType::Full,
                        _ => IncrementType::Increment,
                    },
                });
            }
            increments.sort_by_key(|i| i.id);
        }
        let backup_job_id = match node.text("TEMPLATE/BACKUP_JOB_ID") {
            Some(_) => node.optional_id("TEMPLATE/BACKUP_JOB_ID")?,
            None => node.optional_id("BACKUP_JOB_ID")?,
        };
        let source = node.text("SOURCE").unwrap_or_default().to_string();
        if increments.is_empty() && source.is_empty() {
            return Err(MessageError::Missing {
                path: node.sub("SOURCE"),
            });
        }
        Ok(Image {
            id: node.required_number("ID")?,
            image_type: node.number("TYPE")?,
            source,
            path: node.text("PATH").map(str::to_string),
            format: node.text("FORMAT").map(str::to_string),
            size_mb: node.number("SIZE")?,
            datastore_id: node.optional_id("DATASTORE_ID")?,
            vm_ids: match node.child("VMS") {
                Some(v) => ids_of(v.node())?,
                None => Vec::new(),
            },
            backup_job_id,
            increments,
            backup_disk_ids: match node.child("BACKUP_DISK_IDS") {
                Some(v) => ids_of(v.node())?
                    .into_iter()
                    .map(|id| u32::try_from(id).unwrap_or(u32::MAX))
                    .collect(),
                None => Vec::new(),
            },
            template,
        })
    }

    /// The chain of increments, oldest first. A FULL-mode image (no increments) is the single
    /// link `0:<SOURCE>` (spec §8.2).
    pub fn chain(&self) -> Vec<ChainLink> {
        if self.increments.is_empty() {
            return vec![ChainLink {
                increment_id: 0,
                source: self.source.clone(),
            }];
        }
        self.increments
            .iter()
            .map(|i| ChainLink {
                increment_id: i.id,
                source: i.source.clone(),
            })
            .collect()
    }

    /// The chain up to and including `increment`; the whole chain for `None`.
    pub fn chain_until(&self, increment: Option<u64>) -> Vec<ChainLink> {
        let mut chain = self.chain();
        if let Some(last) = increment {
            chain.retain(|l| l.increment_id <= last);
        }
        chain
    }

    /// The VM this backup belongs to: `VMS/ID`, else parsed from PATH (spec §5.1).
    pub fn vm_id(&self) -> Option<u64> {
        self.vm_ids.first().copied().or_else(|| {
            self.path
                .as_deref()
                .and_then(|p| BackupUrl::parse(p).ok())
                .and_then(|u| u.vm_id())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Requests, one per action.

const ACTION_DATA: &str = "DS_DRIVER_ACTION_DATA";

fn action_root(root: &Element) -> Result<Node<'_>, MessageError> {
    Node::root(root, &[ACTION_DATA])
}

fn datastore_of(node: Node<'_>) -> Result<Datastore, MessageError> {
    Datastore::from_node(node.require("DATASTORE")?.node())
}

fn image_of(node: Node<'_>) -> Result<Image, MessageError> {
    Image::from_node(node.require("IMAGE")?.node())
}

/// `monitor`: the datastore only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitorRequest {
    pub datastore: Datastore,
}

impl MonitorRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        Ok(MonitorRequest {
            datastore: datastore_of(node)?,
        })
    }
}

/// `rm`: the backup image and its datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RmRequest {
    pub image: Image,
    pub datastore: Datastore,
}

impl RmRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        Ok(RmRequest {
            datastore: datastore_of(node)?,
            image: image_of(node)?,
        })
    }
}

/// `increment_flatten`: the image, its datastore and `EXTRA_DATA/KEEP_LAST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlattenRequest {
    pub image: Image,
    pub datastore: Datastore,
    pub keep_last: u32,
}

impl FlattenRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        Ok(FlattenRequest {
            datastore: datastore_of(node)?,
            image: image_of(node)?,
            keep_last: node.required_number("EXTRA_DATA/KEEP_LAST")?,
        })
    }
}

/// `stat`: the URL of one restored disk and the backup datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatRequest {
    pub url: BackupUrl,
    pub size_mb: Option<u64>,
    pub backup_job_id: Option<u64>,
    pub datastore: Datastore,
}

impl StatRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        let datastore = datastore_of(node)?;
        let image = node.require("IMAGE")?;
        let image = image.node();
        let path = image.required_text("PATH")?;
        let url = BackupUrl::parse(path).map_err(|e| MessageError::Invalid {
            path: image.sub("PATH"),
            problem: e.problem.clone(),
        })?;
        Ok(StatRequest {
            url,
            size_mb: image.number("SIZE")?,
            backup_job_id: match image.text("TEMPLATE/BACKUP_JOB_ID") {
                Some(_) => image.optional_id("TEMPLATE/BACKUP_JOB_ID")?,
                None => image.optional_id("BACKUP_JOB_ID")?,
            },
            datastore,
        })
    }
}

/// The options of `oneimage restore` (the `TEMPLATE` of a restore request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RestoreOptions {
    pub no_nic: bool,
    pub no_ip: bool,
    pub name: Option<String>,
    pub increment_id: Option<u64>,
    pub disk_id: Option<u32>,
    /// Always set by oned: the user the restored objects belong to.
    pub username: String,
}

/// `restore`: the image, the backup datastore, the destination image datastore and options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreRequest {
    pub image: Image,
    pub datastore: Datastore,
    pub destination_ds_id: u64,
    pub options: RestoreOptions,
}

impl RestoreRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        let t = node.require("TEMPLATE")?;
        let t = t.node();
        Ok(RestoreRequest {
            datastore: datastore_of(node)?,
            image: image_of(node)?,
            destination_ds_id: node.required_number("DESTINATION_DS_ID")?,
            options: RestoreOptions {
                no_nic: yes(t.text("NO_NIC")),
                no_ip: yes(t.text("NO_IP")),
                name: t.text("NAME").map(str::to_string),
                increment_id: t.optional_id("INCREMENT_ID")?,
                disk_id: t
                    .number::<i64>("DISK_ID")?
                    .and_then(|d| u32::try_from(d).ok()),
                username: t.required_text("USERNAME")?.to_string(),
            },
        })
    }
}

/// `backup`: the backup datastore and (since 7.0) the VM. Up to 6.10 stdin was the bare
/// `<DATASTORE>` element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRequest {
    pub datastore: Datastore,
    pub vm: Option<Vm>,
}

impl BackupRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = Node::root(root, &[ACTION_DATA, "DATASTORE"])?;
        if root.name == "DATASTORE" {
            return Ok(BackupRequest {
                datastore: Datastore::from_node(node)?,
                vm: None,
            });
        }
        Ok(BackupRequest {
            datastore: datastore_of(node)?,
            vm: node
                .child("VM")
                .map(|v| Vm::from_node(v.node()))
                .transpose()?,
        })
    }
}

/// `ls`: the datastore, the VM and the image (raw XML on stdin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsRequest {
    pub datastore: Datastore,
    pub vm: Option<Vm>,
    pub image: Image,
}

impl LsRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        Ok(LsRequest {
            datastore: datastore_of(node)?,
            vm: node
                .child("VM")
                .map(|v| Vm::from_node(v.node()))
                .transpose()?,
            image: image_of(node)?,
        })
    }
}

/// A bare VM document: `backup_cancel` and the transfer-manager actions. Accepts a
/// `<BACKUP_RESULT>` written after `</VM>` as well as inside it.
pub fn vm_from_siblings(roots: &[Element]) -> Result<Vm, MessageError> {
    let first = roots
        .first()
        .ok_or_else(|| MessageError::Missing { path: "VM".into() })?;
    let node = Node::root(first, &["VM"])?;
    let mut vm = Vm::from_node(node)?;
    if roots[1..]
        .iter()
        .any(|e| e.name == "BACKUP_RESULT" && e.text.trim().eq_ignore_ascii_case("FAILURE"))
    {
        vm.backup_failed = true;
    }
    Ok(vm)
}
