//! The datastore driver's error: a kind (what class of failure, for exit codes and tests) and
//! a message that names what was wrong, with the I/O error beneath it when there is one.
//! The repository layer's errors become these with their class kept ([`From`]); the kinds
//! that only an OpenNebula driver has (its attributes, oned) are this layer's own. Secrets
//! never enter a message.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The datastore's attributes (or an option of the repository they set) are missing,
    /// malformed or contradictory.
    Config,
    /// A local file system operation failed.
    Io,
    /// The feature exists in the design but is not written yet.
    NotImplemented,
    /// A repository could not be created, opened, read or written.
    Repository,
    /// The disk image being backed up (or an input of the action) could not be read.
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

backstop_fault::error_type!(ErrorKind, io = Io);

impl Error {
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    pub fn not_implemented(what: impl Into<String>) -> Self {
        Error::new(
            ErrorKind::NotImplemented,
            format!(
                "{} is not implemented in this version of backstop",
                what.into()
            ),
        )
    }
}

/// A repository failure keeps its class; an invalid repository option came from the
/// datastore's attributes.
impl From<backstop_repo::Error> for Error {
    fn from(e: backstop_repo::Error) -> Self {
        use backstop_repo::ErrorKind as R;
        let kind = match e.kind {
            R::Invalid => ErrorKind::Config,
            R::Io => ErrorKind::Io,
            R::Repository => ErrorKind::Repository,
            R::Input => ErrorKind::Input,
            R::Locked => ErrorKind::Locked,
            R::Cancelled => ErrorKind::Cancelled,
            R::ParentIncomplete => ErrorKind::ParentIncomplete,
        };
        Error {
            kind,
            message: e.message,
            source: e.source,
        }
    }
}

/// The protocol layer's kinds are the driver's own.
impl From<backstop_protocol::Error> for Error {
    fn from(e: backstop_protocol::Error) -> Self {
        use backstop_protocol::ErrorKind as P;
        let kind = match e.kind {
            P::Config => ErrorKind::Config,
            P::Io => ErrorKind::Io,
            P::Input => ErrorKind::Input,
            P::Oned => ErrorKind::Oned,
        };
        Error {
            kind,
            message: e.message,
            source: e.source,
        }
    }
}

/// An image failure, classed as the repository layer classes it.
impl From<backstop_image::Error> for Error {
    fn from(e: backstop_image::Error) -> Self {
        Error::from(backstop_repo::Error::from(e))
    }
}

/// A storage failure, classed as the repository layer classes it.
impl From<backstop_storage::Error> for Error {
    fn from(e: backstop_storage::Error) -> Self {
        Error::from(backstop_repo::Error::from(e))
    }
}
