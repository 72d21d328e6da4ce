//! Opening a disk as an image source: the one function every reader of a disk goes through
//! (a backup on the front-end or the host, `backstop repo backup`, prebackup's staging,
//! increment_flatten).
//!
//! It keeps the rules of [`crate::disk_image`] in one place: a file's format is the caller's
//! (never probed), a qcow2 chain is checked layer by layer against the caller's backing policy
//! before qemu opens it, a stock increment is checked as a delta (no data file, its backing
//! file not followed), and the changed extents come from the same open: a persistent bitmap,
//! the clusters a delta holds, or `rbd diff`.

use crate::disk_image::{self, Backing, DiskImage, Format};
use crate::image::{Extent, ImageSource, RawImage};
use crate::nbd::{self, NbdImage, QemuNbdExport};
use crate::rbd::RbdImage;
use crate::{Error, ErrorKind};
use std::io;
use std::path::Path;

/// Where a disk's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum Disk<'a> {
    /// A file (or block device) in the format the caller declares; a qcow2 backing chain is
    /// followed only as `backing` allows. `locking` false opens it without qemu's image lock
    /// (a running VM's file that it no longer writes, under a live snapshot's overlay).
    File {
        path: &'a Path,
        format: Format,
        backing: Backing<'a>,
        locking: bool,
    },
    /// An image whose chain the caller checked already ([`disk_image::inspect`]: it read the
    /// bitmaps to plan with).
    Checked { image: &'a DiskImage, locking: bool },
    /// A stock OpenNebula increment: a qcow2 delta read without its backing file. The
    /// clusters it holds are the changed extents.
    Delta(&'a Path),
    /// An NBD export another process serves (a running VM's pull-mode backup, a qemu-nbd);
    /// `name` empty for the default export.
    Export { socket: &'a Path, name: &'a str },
    /// A Ceph RBD image at its snapshot, read through librbd; with `since`, the extents
    /// `rbd diff` reports since that snapshot are the changed ones.
    Rbd {
        image: &'a RbdImage,
        since: Option<&'a str>,
    },
}

/// A disk opened for reading.
#[derive(Debug)]
pub enum Source {
    /// Raw bytes read with positioned reads (holes found with `SEEK_HOLE`).
    Raw(RawImage),
    /// Read over NBD (an export this source started, or someone else's).
    Nbd(Box<NbdImage>),
}

impl Source {
    fn inner(&self) -> &dyn ImageSource {
        match self {
            Source::Raw(r) => r,
            Source::Nbd(n) => n.as_ref(),
        }
    }
}

impl ImageSource for Source {
    fn size(&self) -> u64 {
        self.inner().size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner().read_at(buf, offset)
    }

    fn data_extents(&self) -> io::Result<Option<Vec<Extent>>> {
        self.inner().data_extents()
    }

    fn complete(&self) -> bool {
        self.inner().complete()
    }

    fn will_need(&self, extent: Extent) {
        self.inner().will_need(extent)
    }
}

/// An open disk and, when asked for, what changed in it.
#[derive(Debug)]
pub struct Opened {
    pub source: Source,
    /// The changed extents: of `bitmap`, of a delta, or since an RBD snapshot; `None` when
    /// no change tracking was asked for.
    pub changed: Option<Vec<Extent>>,
}

/// A failure to read `what` through qemu or the kernel: the image (or its export) is what
/// was wrong, more often than the machine.
fn unreadable(what: &str, e: io::Error) -> Error {
    Error {
        kind: ErrorKind::Input,
        message: format!("cannot read {what}"),
        source: Some(e),
    }
}

/// Opens `disk`; with `bitmap` (a file's or an export's persistent dirty bitmap), its dirty
/// extents are the changed ones. A raw file read with its lock and no bitmap is read
/// directly; everything else through qemu, which is told every format and file it opens.
pub fn open(disk: Disk<'_>, bitmap: Option<&str>) -> Result<Opened, Error> {
    if let (Some(b), Disk::Delta(_) | Disk::Rbd { .. }) = (bitmap, &disk) {
        // Their changes come from the delta's clusters or `rbd diff`; a bitmap given with
        // them would be quietly ignored.
        return Err(Error::new(
            ErrorKind::Input,
            format!("bitmap {b}: a stock increment or an RBD snapshot has no bitmap to read"),
        ));
    }
    match disk {
        Disk::File {
            path,
            format,
            backing,
            locking,
        } => {
            if format == Format::Raw && bitmap.is_none() && locking {
                let raw = RawImage::open(path).map_err(|e| unreadable(&show(path), e))?;
                return Ok(Opened {
                    source: Source::Raw(raw),
                    changed: None,
                });
            }
            let checked = disk_image::inspect(path, format, backing)?;
            open_checked(&checked, bitmap, locking)
        }
        Disk::Checked { image, locking } => open_checked(image, bitmap, locking),
        Disk::Delta(path) => {
            let what = show(path);
            if !nbd::is_qcow2(path).map_err(|e| unreadable(&what, e))? {
                return Err(Error::new(
                    ErrorKind::Input,
                    format!("{what} is not a qcow2 file (a stock increment is one)"),
                ));
            }
            // Checked as any qcow2 file from elsewhere: no external data file; its backing
            // file is never opened.
            disk_image::inspect(path, Format::Qcow2, Backing::Detached)?;
            let (image, present) = NbdImage::open_delta(path).map_err(|e| unreadable(&what, e))?;
            Ok(Opened {
                source: Source::Nbd(Box::new(image)),
                changed: Some(present),
            })
        }
        Disk::Export { socket, name } => {
            let what = format!("the NBD export at {}", socket.display());
            let image = NbdImage::connect_export(socket, name).map_err(|e| unreadable(&what, e))?;
            let changed = bitmap
                .map(|b| image.dirty(b).map_err(|e| bitmap_error(&what, b, e)))
                .transpose()?;
            Ok(Opened {
                source: Source::Nbd(Box::new(image)),
                changed,
            })
        }
        Disk::Rbd { image, since } => {
            let what = image.spec();
            let changed = since
                .map(|from| image.diff_from(from).map_err(|e| unreadable(&what, e)))
                .transpose()?;
            let source = NbdImage::open_rbd(image).map_err(|e| unreadable(&what, e))?;
            Ok(Opened {
                source: Source::Nbd(Box::new(source)),
                changed,
            })
        }
    }
}

/// A disk served read-only over NBD for another machine to read (pull mode, docs/pull-mode.md),
/// and its changed extents when a bitmap was asked for. The export lives as long as this
/// value: dropping it stops qemu-nbd (by the child it started) and removes its socket.
#[derive(Debug)]
pub struct Served {
    pub export: QemuNbdExport,
    pub changed: Option<Vec<Extent>>,
}

/// Serves a file (or block device) in its declared format through qemu-nbd, always (a raw file
/// too: the reader is elsewhere), with the checks of [`open`]: the format is the caller's, the
/// qcow2 chain is checked against `backing` before qemu opens it; `bitmap` becomes the
/// `qemu:dirty-bitmap:<bitmap>` context and its dirty extents are returned.
pub fn serve(
    path: &Path,
    format: Format,
    backing: Backing<'_>,
    locking: bool,
    bitmap: Option<&str>,
) -> Result<Served, Error> {
    let checked = disk_image::inspect(path, format, backing)?;
    let what = show(path);
    let export =
        QemuNbdExport::start_image(&checked, bitmap, locking).map_err(|e| unreadable(&what, e))?;
    let changed = bitmap
        .map(|b| export.dirty(b).map_err(|e| bitmap_error(&what, b, e)))
        .transpose()?;
    Ok(Served { export, changed })
}

/// Serves an RBD image at its snapshot through qemu-nbd (librbd, the host's cephx key), for
/// another machine to read, and what changed since the snapshot `since` (`rbd diff`).
pub fn serve_rbd(image: &RbdImage, since: Option<&str>) -> Result<Served, Error> {
    let what = image.spec();
    let changed = since
        .map(|from| image.diff_from(from).map_err(|e| unreadable(&what, e)))
        .transpose()?;
    let export = QemuNbdExport::start_rbd(image).map_err(|e| unreadable(&what, e))?;
    Ok(Served { export, changed })
}

fn open_checked(image: &DiskImage, bitmap: Option<&str>, locking: bool) -> Result<Opened, Error> {
    let what = show(image.path());
    let nbd = NbdImage::open(image, bitmap, locking).map_err(|e| unreadable(&what, e))?;
    let changed = bitmap
        .map(|b| nbd.dirty(b).map_err(|e| bitmap_error(&what, b, e)))
        .transpose()?;
    Ok(Opened {
        source: Source::Nbd(Box::new(nbd)),
        changed,
    })
}

fn bitmap_error(what: &str, bitmap: &str, e: io::Error) -> Error {
    Error {
        kind: ErrorKind::Input,
        message: format!("cannot read bitmap {bitmap} of {what}"),
        source: Some(e),
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stock increment's changes are its clusters and an RBD snapshot's are `rbd diff`'s: a
    /// bitmap named with either is refused before anything is opened, not quietly ignored.
    #[test]
    fn a_bitmap_with_a_delta_or_an_rbd_snapshot_is_refused() {
        let rbd = RbdImage {
            pool: "one".into(),
            image: "one-1".into(),
            snapshot: Some("s".into()),
            conf: None,
            user: None,
            keyfile: None,
        };
        for disk in [
            Disk::Delta(Path::new("/nonexistent/disk.0.1")),
            Disk::Rbd {
                image: &rbd,
                since: None,
            },
        ] {
            let e = open(disk, Some("one-0")).expect_err("a bitmap with it");
            assert_eq!(e.kind, ErrorKind::Input);
            assert_eq!(
                e.to_string(),
                "bitmap one-0: a stock increment or an RBD snapshot has no bitmap to read"
            );
        }
    }
}
