//! The image layer's error: a kind (a bad image or stream, or a local I/O failure) and a
//! message naming what was wrong, with the I/O error beneath it when there is one.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The disk image (or what qemu-img says of it) is not what backstop accepts.
    Input,
    /// A local file system operation failed.
    Io,
    /// A stream read back from a repository (an rbd export-diff) is not valid.
    Stream,
}

backstop_fault::error_type!(ErrorKind, io = Io);

/// The error for a size from input that is past what backstop handles.
pub fn size_error(what: &str, size: u64, max: u64) -> Error {
    Error::new(
        ErrorKind::Input,
        format!("{what} is {size} bytes, more than the {max} bytes backstop handles"),
    )
}
