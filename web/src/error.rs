//! The web server's error: one line naming what was wrong, by kind.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runner's state could not be read; the message names it.
    #[error("{0}")]
    State(String),
    /// A setting (an environment variable, the address, a password) is wrong.
    #[error("{0}")]
    Config(String),
    /// The server could not start or stopped serving.
    #[error("{0}")]
    Serve(String),
}
