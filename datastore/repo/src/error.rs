//! One error type for the datastore layer: a kind (what class of failure, for exit codes and
//! tests) and a message that names what was wrong. Secrets never enter a message.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The datastore's attributes are missing or contradictory.
    Config,
    /// A local file system operation failed.
    Io,
    /// The feature exists in the design but is not written yet.
    NotImplemented,
    /// A repository could not be created, opened, read or written.
    Repository,
    /// The disk image being backed up could not be read.
    Input,
    /// Another process holds a conflicting repository lock.
    Locked,
    /// The work was stopped on request (SIGTERM, backup_cancel).
    Cancelled,
    /// oned's XML-RPC API could not be reached or refused a call.
    Oned,
    /// An increment handed over as changes only cannot be completed: its parent snapshot
    /// lacks data (a verify job took damaged blobs out of the index). The message begins with
    /// the path of the file in the snapshot.
    ParentIncomplete,
}

#[derive(Debug, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<std::io::Error>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Config,
            message: message.into(),
            source: None,
        }
    }

    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            message: message.into(),
            source: Some(source),
        }
    }

    pub fn not_implemented(what: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::NotImplemented,
            message: format!(
                "{} is not implemented in this version of backstop",
                what.into()
            ),
            source: None,
        }
    }
}

/// A storage failure is a repository that could not be read or written.
impl From<backstop_storage::Error> for Error {
    fn from(e: backstop_storage::Error) -> Self {
        Error {
            kind: ErrorKind::Repository,
            message: e.message,
            source: e.source,
        }
    }
}

/// An image failure keeps its class: a bad image is bad input, a bad stream read back from a
/// repository is a repository failure.
impl From<backstop_image::Error> for Error {
    fn from(e: backstop_image::Error) -> Self {
        let kind = match e.kind {
            backstop_image::ErrorKind::Input => ErrorKind::Input,
            backstop_image::ErrorKind::Io => ErrorKind::Io,
            backstop_image::ErrorKind::Stream => ErrorKind::Repository,
        };
        Error {
            kind,
            message: e.message,
            source: e.source,
        }
    }
}
