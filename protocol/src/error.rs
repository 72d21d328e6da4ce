//! The error of what this crate does beyond decoding (reading the driver configuration,
//! calling oned, running a step on another machine): a kind, a message naming what was wrong,
//! and the I/O error beneath when there is one. The adapters above turn it into their own
//! error, keeping the kind and the source.

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

backstop_fault::error_type!(ErrorKind, io = Io);

impl Error {
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }
}
