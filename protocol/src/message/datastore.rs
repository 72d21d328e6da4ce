//! The DATASTORE element.

use super::*;

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

    pub(super) fn from_node(node: Node<'_>) -> Result<Datastore, MessageError> {
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
