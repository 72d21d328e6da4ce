//! Typed messages: what oned puts in `DS_DRIVER_ACTION_DATA` and in the VM document (driver contract §2.4,
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

mod datastore;
mod image;
mod requests;
mod vm;

pub use datastore::*;
pub use image::*;
pub use requests::*;
pub use vm::*;
