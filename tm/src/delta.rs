//! The staged disk file of stock-layout staging (driver contract §4.2), written by backstop instead of
//! `qemu-img convert` and `qemu-io`: the disk is exported read-only with qemu-nbd (with the
//! parent's bitmap for an increment), and the clusters to keep are read once, in order, into a
//! qcow2 written front to back ([`backstop_image::qcow2`]).
//!
//! - FULL (increment 0): every allocated cluster; a standalone image.
//! - CBT increment: the clusters the bitmap marks dirty; no backing file (consumers rebase it
//!   onto the previous increment, as they do for the stock files).
//! - An increment without a usable bitmap: every allocated cluster, and every other cluster
//!   an explicit zero cluster, so it is correct whatever it is rebased onto.
//! - An RBD snapshot's increment: the extents `rbd diff` lists since the parent snapshot
//!   (read through librbd), as the stock Ceph TM stages it.

use crate::{Error, ErrorKind};
use backstop_image::disk_image::DiskImage;
use backstop_image::image::ImageSource;
use backstop_image::qcow2::{Allocation, CLUSTER, DataWriter, Layout};
use backstop_image::{Disk, Opened};
use std::io::Write;
use std::path::Path;

/// What goes into the staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Increment 0: the allocated data.
    Full,
    /// The clusters this bitmap marks dirty.
    Changed(String),
    /// An increment without a usable bitmap: everything, covering the backing file.
    Whole,
    /// These extents (an RBD snapshot's, as `rbd diff` lists them since the parent's).
    Listed(Vec<backstop_image::image::Extent>),
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub bytes_read: u64,
    pub file_bytes: u64,
}

/// Bytes read from the disk per request.
const RUN: u64 = 4 << 20;

/// Writes the staged file of a checked disk image (a stopped VM's disk: locked while read).
pub fn write(
    disk: &DiskImage,
    plan: &Plan,
    target: &Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Written, Error> {
    let bitmap = match plan {
        Plan::Changed(b) => Some(b.as_str()),
        _ => None,
    };
    let what = disk.path().display().to_string();
    let opened = backstop_image::open(
        Disk::Checked {
            image: disk,
            locking: true,
        },
        bitmap,
    )?;
    write_from(&opened, &what, plan, target, cancel)
}

/// [`write`] from a disk already open (a live VM's base or its pull-mode export, an RBD
/// snapshot); `what` names it in errors. For [`Plan::Changed`] it was opened with that
/// bitmap.
pub fn write_from(
    opened: &Opened,
    what: &str,
    plan: &Plan,
    target: &Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Written, Error> {
    let input =
        |e: std::io::Error| Error::new(ErrorKind::Input, format!("cannot read {what}: {e}"));
    let image = &opened.source;
    let size = image.size();
    backstop_image::image::check_size(what, size)?;
    let extents = match plan {
        Plan::Changed(b) => opened.changed.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Input,
                format!("{what} was not opened with bitmap {b}"),
            )
        })?,
        Plan::Listed(e) => e.clone(),
        _ => image.data_extents().map_err(input)?.unwrap_or_else(|| {
            vec![backstop_image::image::Extent {
                offset: 0,
                length: size,
            }]
        }),
    };
    let mut alloc = Allocation::new(size);
    for e in &extents {
        alloc.mark(e.offset, e.length);
    }
    if *plan == Plan::Whole {
        alloc.zero_rest();
    }
    let layout = Layout::new(&alloc);
    let tmp = target.with_extension("backstop-tmp");
    let file = std::fs::File::create(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    let result = (|| {
        let io = |e: std::io::Error| Error::io(format!("cannot write {}", tmp.display()), e);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
        layout.write_metadata(&alloc, &mut out).map_err(io)?;
        let mut writer = DataWriter::new(&alloc, &mut out);
        let mut bytes_read = 0u64;
        let clusters = size.div_ceil(CLUSTER);
        let mut c = 0u64;
        let mut buf = vec![0u8; RUN as usize];
        while c < clusters {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::Cancelled, "prebackup was cancelled"));
            }
            if !alloc.is_set(c) {
                // Up to the next allocated cluster.
                let mut next = c + 1;
                while next < clusters && !alloc.is_set(next) {
                    next += 1;
                }
                let end = (next * CLUSTER).min(size);
                writer.zeros(end - c * CLUSTER).map_err(io)?;
                c = next;
                continue;
            }
            let mut end = c + 1;
            while end < clusters && alloc.is_set(end) && (end - c) * CLUSTER < RUN {
                end += 1;
            }
            let from = c * CLUSTER;
            let to = (end * CLUSTER).min(size);
            let n = (to - from) as usize;
            image.read_at(&mut buf[..n], from).map_err(input)?;
            writer.data(&buf[..n]).map_err(io)?;
            bytes_read += n as u64;
            c = end;
        }
        writer.finish().map_err(io)?;
        out.flush().map_err(io)?;
        drop(out);
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, target)
            .map_err(|e| Error::io(format!("cannot rename into {}", target.display()), e))?;
        Ok(Written {
            bytes_read,
            file_bytes: layout.file_size(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
