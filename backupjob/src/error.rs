//! One error type for the job runner, with the kind of failure, so the command line can tell
//! a bad input from a refused change or a failed backup. Every message names what was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state database could not be opened, read or written, or refused a change.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A datastore's repository or an action's own library failed.
    #[error(transparent)]
    Datastore(#[from] backstop_datastore::Error),
    /// Something given on the command line or in a file is wrong or unknown; the message
    /// names it (`job.tmpl: line 4: KEEP_LAST is "two", not a number`).
    #[error("{0}")]
    Input(String),
    /// A rule refused it: a locked job, a run with backups in progress, a delete that would
    /// orphan something.
    #[error("{0}")]
    Refused(String),
    /// A step of a backup (an action as oned runs it) failed; the message is the step's own.
    #[error("{0}")]
    Step(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A notification (mail, webhook) could not be sent; the message says why.
    #[error("{0}")]
    Notify(String),
    /// The answer could not be written.
    #[error("cannot write: {0}")]
    Output(std::io::Error),
}

/// The driver configuration, oned and ssh fail as the datastore driver's would.
impl From<backstop_protocol::Error> for Error {
    fn from(e: backstop_protocol::Error) -> Self {
        Error::Datastore(e.into())
    }
}

/// A repository failure, classed as the datastore driver classes it.
impl From<backstop_datastore::repo::Error> for Error {
    fn from(e: backstop_datastore::repo::Error) -> Self {
        Error::Datastore(e.into())
    }
}

/// What is wrong with a template (a job's, a datastore's): one line naming the attribute
/// and, where known, the line it is written on (`line 4: KEEP_LAST is "two", not a number`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl From<&str> for TemplateError {
    fn from(problem: &str) -> Self {
        TemplateError(problem.to_string())
    }
}

impl From<TemplateError> for Error {
    fn from(e: TemplateError) -> Self {
        Error::Input(e.0)
    }
}

/// `Error::Input` from anything printable.
pub fn input(message: impl Into<String>) -> Error {
    Error::Input(message.into())
}

/// `Error::Notify` from anything printable.
pub fn notify_error(message: impl Into<String>) -> Error {
    Error::Notify(message.into())
}

/// `Error::Step` from anything printable.
pub fn step(message: impl Into<String>) -> Error {
    Error::Step(message.into())
}
