//! What each action reads from `DS_DRIVER_ACTION_DATA`, one request type per action.

use super::*;

const ACTION_DATA: &str = "DS_DRIVER_ACTION_DATA";

pub(super) fn action_root(root: &Element) -> Result<Node<'_>, MessageError> {
    Node::root(root, &[ACTION_DATA])
}

pub(super) fn datastore_of(node: Node<'_>) -> Result<Datastore, MessageError> {
    Datastore::from_node(node.require("DATASTORE")?.node())
}

pub(super) fn image_of(node: Node<'_>) -> Result<Image, MessageError> {
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

/// `increment_flatten`: the image, its datastore and `EXTRA_DATA/KEEP_LAST`; and, from
/// backstop's job runner only, `EXTRA_DATA/KEEP_INCREMENTS` (the increment ids a retention
/// plan keeps, comma-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlattenRequest {
    pub image: Image,
    pub datastore: Datastore,
    pub keep_last: u32,
    pub keep_increments: Option<Vec<u64>>,
}

impl FlattenRequest {
    pub fn from_xml(root: &Element) -> Result<Self, MessageError> {
        let node = action_root(root)?;
        let keep_increments = node
            .text("EXTRA_DATA/KEEP_INCREMENTS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .map(|id| {
                        id.parse::<u64>().map_err(|_| MessageError::NotNumber {
                            path: node.sub("EXTRA_DATA/KEEP_INCREMENTS"),
                            value: list.to_string(),
                        })
                    })
                    .collect::<Result<Vec<u64>, _>>()
            })
            .transpose()?;
        Ok(FlattenRequest {
            datastore: datastore_of(node)?,
            image: image_of(node)?,
            keep_last: node.required_number("EXTRA_DATA/KEEP_LAST")?,
            keep_increments,
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

/// A copy of a request document (`DS_DRIVER_ACTION_DATA`, or a bare `<DATASTORE>`) whose
/// datastore TEMPLATE no longer holds the attributes `names` (case-insensitive): what a host
/// is sent when it must not see them. `None` when the template held none of them, so the
/// document can be sent as it came.
pub fn without_datastore_attributes(root: &Element, names: &[&str]) -> Option<Element> {
    let mut copy = root.clone();
    let ds = if copy.name == "DATASTORE" {
        &mut copy
    } else {
        copy.children.iter_mut().find(|c| c.name == "DATASTORE")?
    };
    let template = ds.children.iter_mut().find(|c| c.name == "TEMPLATE")?;
    let before = template.children.len();
    template
        .children
        .retain(|a| !names.iter().any(|n| n.eq_ignore_ascii_case(&a.name)));
    (template.children.len() != before).then_some(copy)
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
