//! The error of what this crate does beyond decoding (reading the driver configuration,
//! calling oned, running a step on another machine): a kind, a message naming what was wrong,
//! and the I/O error beneath when there is one. The adapters above turn it into their own
//! error, keeping the kind and the source.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration (a driver configuration file, a datastore's attribute) is missing,
    /// malformed or contradictory.
    Config,
    /// A local operation failed (a file, a process).
    Io,
    /// An input (a request on stdin, a URL) is not what the step accepts.
    Input,
    /// oned's XML-RPC API could not be reached or refused a call.
    Oned,
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
        Error::new(ErrorKind::Config, message)
    }

    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            message: message.into(),
            source: Some(source),
        }
    }
}
