//! The image layer's error: a kind (a bad image or stream, or a local I/O failure) and a
//! message naming what was wrong, with the I/O error beneath it when there is one.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The disk image (or what qemu-img says of it) is not what backstop accepts.
    Input,
    /// A local file system operation failed.
    Io,
    /// A stream read back from a repository (an rbd export-diff) is not valid.
    Stream,
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

    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            message: message.into(),
            source: Some(source),
        }
    }
}

/// The error for a size from input that is past what backstop handles.
pub fn size_error(what: &str, size: u64, max: u64) -> Error {
    Error::new(
        ErrorKind::Input,
        format!("{what} is {size} bytes, more than the {max} bytes backstop handles"),
    )
}
