//! # backstop-protocol
//!
//! The protocol OpenNebula's oned speaks to its datastore and transfer-manager drivers, as
//! backstop implements it (see `docs/driver-contract.md` §2, §3.2, §7, §12, §15):
//!
//! - [`action`]: which actions exist and how a remotes path names one;
//! - [`args`]: each action's argv, for OpenNebula 6.6 through 7.x;
//! - [`input`]: stdin as base64 or raw XML;
//! - [`xml`] and [`message`]: the typed messages (DATASTORE, VM, IMAGE, requests per action);
//! - [`template`]: OpenNebula template syntax and ordered templates;
//! - [`url`]: backup image URLs `<proto>://<ds>/<job>/<id:src,...><path>`;
//! - [`output`]: one stdout line, one stderr failure line, `INFO:`/`ERROR:` log lines.
//! - [`redact`]: secrets in URLs hidden before a URL is printed.
//! - [`xmlrpc`]: the XML-RPC calls and replies of oned's API, and [`oned`]: a client for it.
//! - [`config`]: the driver configuration an installation keeps in its remotes tree.
//! - [`remote`]: running a step on another machine as oned's drivers do (ssh, quoting, the
//!   framed request, the confinement of a host step).
//! - [`dirs`]: where a VM's disks and their backing files may lie on a host.
//!
//! Decoding a monitor request as oned sends it:
//!
//! ```
//! use backstop_protocol::{input, message::MonitorRequest};
//! let xml = "<DS_DRIVER_ACTION_DATA><DATASTORE><ID>100</ID><DS_MAD>backstop</DS_MAD>\
//!            <BASE_PATH>/var/lib/one//datastores/100</BASE_PATH>\
//!            <TEMPLATE><RESTIC_PASSWORD><![CDATA[secret]]></RESTIC_PASSWORD></TEMPLATE>\
//!            </DATASTORE></DS_DRIVER_ACTION_DATA>";
//! use base64::Engine;
//! let stdin = base64::engine::general_purpose::STANDARD.encode(xml);
//! let root = input::decode(stdin.as_bytes(), input::Encoding::Base64).unwrap();
//! let request = MonitorRequest::from_xml(&root).unwrap();
//! assert_eq!(request.datastore.base_path, "/var/lib/one//datastores/100");
//! assert_eq!(request.datastore.attribute("RESTIC_PASSWORD"), Some("secret"));
//! assert!(!format!("{:?}", request).contains("secret"));
//! ```

pub mod action;
pub mod args;
pub mod config;
pub mod dirs;
mod error;
pub mod input;
pub mod message;
pub mod oned;
pub mod output;
pub mod redact;
pub mod remote;
pub mod staging;
pub mod template;
pub mod url;
pub mod xml;
pub mod xmlrpc;

pub use error::{Error, ErrorKind};
