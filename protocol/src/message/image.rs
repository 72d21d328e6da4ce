//! A backup IMAGE and its BACKUP_INCREMENTS.

use super::*;

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

    pub(super) fn from_node(node: Node<'_>) -> Result<Image, MessageError> {
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
    /// link `0:<SOURCE>` (driver contract §8.2).
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

    /// The VM this backup belongs to: `VMS/ID`, else parsed from PATH (driver contract §5.1).
    pub fn vm_id(&self) -> Option<u64> {
        self.vm_ids.first().copied().or_else(|| {
            self.path
                .as_deref()
                .and_then(|p| BackupUrl::parse(p).ok())
                .and_then(|u| u.vm_id())
        })
    }
}
