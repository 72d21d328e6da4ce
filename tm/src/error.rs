//! The host side's error: a kind, a message naming what was wrong, and the I/O error beneath
//! when there is one. The image and protocol layers' errors become it with `From`, keeping
//! their kind and source; the binary turns it into a driver's failure line.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The driver configuration or a datastore's attribute is missing, malformed or
    /// contradictory.
    Config,
    /// A local file system or process operation failed.
    Io,
    /// The feature exists in the design but is not written yet.
    NotImplemented,
    /// What the step was handed, or the disk it reads, is not what it accepts.
    Input,
    /// What a backup left on the host is not what it should be (an RBD snapshot missing, a
    /// stream read back that is not valid).
    Repository,
    /// The work was stopped on request (SIGTERM, backup_cancel).
    Cancelled,
    /// oned's XML-RPC API could not be reached or refused a call.
    Oned,
}

backstop_fault::error_type!(ErrorKind, io = Io);

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

/// An image backstop does not accept is the step's input; a stream read back that is not
/// valid is what a backup left.
impl From<backstop_image::Error> for Error {
    fn from(e: backstop_image::Error) -> Self {
        use backstop_image::ErrorKind as I;
        let kind = match e.kind {
            I::Input => ErrorKind::Input,
            I::Io => ErrorKind::Io,
            I::Stream => ErrorKind::Repository,
        };
        Error {
            kind,
            message: e.message,
            source: e.source,
        }
    }
}
