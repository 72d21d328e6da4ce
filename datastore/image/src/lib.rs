//! # backstop-image: disk images
//!
//! What a backup reads and a restore writes, below the repository format: the image sources
//! ([`image`]: a raw file, the changed extents of an increment), what qemu-img says of a file
//! ([`disk_image`]: the format always given, never probed), qcow2 output ([`qcow2`]), an NBD
//! client on a qemu-nbd export ([`nbd`]), Ceph RBD images ([`rbd`]) and rbd export-diff
//! streams ([`rbd_stream`]), one way to open any of them as a source ([`open`]), and the helper processes they run, named so that a reused PID is
//! never taken for them ([`process`], [`private_dir`]). It knows nothing of repositories.

pub mod disk_image;
mod error;
pub mod image;
pub mod nbd;
pub mod open;
pub mod private_dir;
pub mod process;
pub mod qcow2;
pub mod rbd;
pub mod rbd_stream;

pub(crate) use error::size_error;
pub use error::{Error, ErrorKind};
pub use open::{Disk, Opened, Source, open};
