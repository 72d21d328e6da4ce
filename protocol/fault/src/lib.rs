//! The one shape of a library error in backstop, shared by every crate below the binary
//! (protocol, storage, image, repository, datastore adapter, host side) so that it is written
//! once: [`error_type!`] declares a crate's `Error` as
//!
//! - `kind`: the class of failure, the crate's own `ErrorKind` (what callers match on, what
//!   decides an exit code), or none for a crate whose callers need no class;
//! - `message`: one line naming what was wrong, and where;
//! - `source`: the I/O error beneath it when there is one, kept (not flattened) so that
//!   `Display` prints `message: source` and `std::error::Error::source` walks the chain.
//!
//! The rules every crate's errors follow:
//! 1. A library keeps the context and the source chain; it never flattens an error into a
//!    `String`. `Result<_, String>` belongs to the binary only.
//! 2. A message is one line that names what was wrong (the file, the attribute, the host),
//!    so that an operator reading oned's log at night knows where to look.
//! 3. An error crossing a layer keeps its class: each crate converts the errors of the layers
//!    below with `From`, mapping their kinds onto its own and keeping message and source.
//! 4. Secrets (repository passwords, storage keys, credentials in URLs) never enter a
//!    message, at any layer.
//! 5. Bad input is an error, never a panic.

/// Declares `pub struct Error` in the calling module, in the one shape above.
///
/// `error_type!(ErrorKind, io = Io)` gives `Error { kind, message, source }` with
/// `Error::new(kind, message)` and `Error::io(message, source)` (kind `ErrorKind::Io`);
/// `error_type!()` gives `Error { message, source }` with `Error::new(message)` and
/// `Error::io(message, source)`. Both implement `Display` (`message`, then `: source` when
/// there is one) and `std::error::Error` (whose `source` is the I/O error).
#[macro_export]
macro_rules! error_type {
    ($kind:ident, io = $io:ident) => {
        /// An error of this crate: its class, one line naming what was wrong, and the I/O
        /// error beneath it when there is one (the shape and its rules: `backstop_fault`).
        #[derive(Debug)]
        pub struct Error {
            pub kind: $kind,
            pub message: String,
            pub source: Option<std::io::Error>,
        }

        impl Error {
            pub fn new(kind: $kind, message: impl Into<String>) -> Self {
                Error {
                    kind,
                    message: message.into(),
                    source: None,
                }
            }

            pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
                Error {
                    kind: $kind::$io,
                    message: message.into(),
                    source: Some(source),
                }
            }
        }

        $crate::error_type!(@common);
    };
    () => {
        /// An error of this crate: one line naming what was wrong, and the I/O error beneath
        /// it when there is one (the shape and its rules: `backstop_fault`).
        #[derive(Debug)]
        pub struct Error {
            pub message: String,
            pub source: Option<std::io::Error>,
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

        $crate::error_type!(@common);
    };
    (@common) => {
        impl std::fmt::Display for Error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match &self.source {
                    Some(source) => write!(f, "{}: {source}", self.message),
                    None => f.write_str(&self.message),
                }
            }
        }

        impl std::error::Error for Error {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.source
                    .as_ref()
                    .map(|e| e as &(dyn std::error::Error + 'static))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    mod classed {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorKind {
            Io,
            Input,
        }
        crate::error_type!(ErrorKind, io = Io);
    }

    mod plain {
        crate::error_type!();
    }

    fn denied() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::PermissionDenied)
    }

    #[test]
    fn an_error_prints_its_line_then_its_source_and_keeps_the_chain() {
        let e = classed::Error::io("cannot read /var/a", denied());
        assert_eq!(e.kind, classed::ErrorKind::Io);
        assert_eq!(e.to_string(), format!("cannot read /var/a: {}", denied()));
        let source = e.source().expect("the I/O error is kept");
        assert_eq!(source.to_string(), denied().to_string());

        let e = classed::Error::new(classed::ErrorKind::Input, "no DISK 3 in the VM");
        assert_eq!(
            (e.kind, e.to_string()),
            (classed::ErrorKind::Input, "no DISK 3 in the VM".to_string())
        );
        assert!(e.source().is_none());

        let e = plain::Error::io("cannot list /repo/data", denied());
        assert_eq!(
            e.to_string(),
            format!("cannot list /repo/data: {}", denied())
        );
        assert!(e.source().is_some());
        assert_eq!(plain::Error::new("gone").to_string(), "gone");
        assert!(plain::Error::new("gone").source().is_none());
    }
}
