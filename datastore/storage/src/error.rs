//! The storage layer's error: what failed (a message naming the file or the request) and the
//! I/O error beneath it when there is one. Secrets never enter a message.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub struct Error {
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
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            source: None,
        }
    }

    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            message: message.into(),
            source: Some(source),
        }
    }
}
