//! The repository layer's error: a kind (what class of failure) and a message that names what
//! was wrong, with the I/O error beneath it when there is one. It knows nothing of OpenNebula:
//! the datastore driver maps these kinds to its own. Secrets never enter a message.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An option given to the repository layer (compression, prune limits, a read-data
    /// subset) is not valid.
    Invalid,
    /// A local file system operation failed.
    Io,
    /// A repository could not be created, opened, read or written.
    Repository,
    /// The disk image being backed up could not be read.
    Input,
    /// Another process holds a conflicting repository lock.
    Locked,
    /// The work was stopped on request (SIGTERM, backup_cancel).
    Cancelled,
    /// An increment handed over as changes only cannot be completed: its parent snapshot
    /// lacks data (a verify job took damaged blobs out of the index). The message begins with
    /// the path of the file in the snapshot.
    ParentIncomplete,
}

backstop_fault::error_type!(ErrorKind, io = Io);

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Invalid,
            message: message.into(),
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
