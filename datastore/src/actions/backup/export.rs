//! The host step of a backup in pull mode (`backstop host-export`, docs/pull-mode.md): the
//! hypervisor only serves its disks, read-only, and the front-end reads them and writes the
//! repository. This step never sees the
//! repository's password, its storage keys or an ssh agent: its request is empty, and nothing
//! here opens a repository.
//!
//! 1. Reads what backstop's prebackup left in the staging directory: the direct-mode
//!    manifest (`backstop.json`), `vm.xml` and `disk.tpm.0`. A stock prebackup's staged
//!    copies are refused: pull mode reads the disks themselves.
//! 2. Serves each disk read-only: a file through its own qemu-nbd (the format as declared,
//!    the chain checked, the bitmap as the `qemu:dirty-bitmap:` context), a running VM's disk
//!    through the export libvirt's backup job already has up. It works out the changed
//!    extents here, where the bitmaps are.
//! 3. Prints one JSON line ([`Exported`]) and waits until its stdin closes (the puller is
//!    done, gone or cancels); then every qemu-nbd it started stops (by the child it holds) and
//!    its socket goes.

use crate::{Error, ErrorKind};
use backstop_image::disk_image::{Backing, Format};
use backstop_image::image::Extent;
use backstop_image::open::Served;
use backstop_protocol::args::BackupArgs;
use backstop_protocol::staging::{DirectManifest, MANIFEST};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The one line `host-export` prints: what the puller needs to write the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    /// 1.
    pub version: u32,
    /// `vm.xml` as staged (base64 of the VM document), itself in base64.
    pub vm_xml: String,
    /// `disk.tpm.0` as staged, in base64, when there is one.
    pub tpm: Option<String>,
    /// prebackup's manifest, as it wrote it.
    pub manifest: DirectManifest,
    pub disks: Vec<ExportedDisk>,
}

/// One disk served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedDisk {
    pub disk_id: u32,
    /// The unix socket on the host (forwarded by the puller; never a local path for it).
    pub socket: String,
    /// The export's name ("" for qemu-nbd's default export).
    pub export: String,
    /// The changed extents (offset, length), when the manifest names a way to know them.
    pub changed: Option<Vec<(u64, u64)>>,
}

pub const EXPORTED_VERSION: u32 = 1;

/// The host step: serves the disks, prints the line, and waits for the end of stdin
/// (`stdin_closed`), or SIGTERM, in the same flag.
pub fn host_export(
    args: &BackupArgs,
    staging: &Path,
    stdin_closed: &Arc<AtomicBool>,
    out: &mut impl std::io::Write,
) -> Result<(), Error> {
    let (staged, manifest) = super::host::read_staging(staging, &args.disk_ids)?;
    let manifest = manifest.ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!(
                "VM {}: pull mode (BACKUP_PULL) needs backstop's prebackup in direct mode (TM_DELIVERY=direct); {} has no {MANIFEST}",
                args.vm_id,
                staging.display()
            ),
        )
    })?;
    let vm_xml_path = staged.vm_xml.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("no vm.xml in the staging directory {}", staging.display()),
        )
    })?;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))
    };
    let vm_xml = read(&vm_xml_path)?;
    let tpm = staged.tpm.as_deref().map(read).transpose()?;

    let roots = backstop_protocol::dirs::backing_roots(Path::new(&args.host_dir.vm_dir));
    let mut serving = Vec::new();
    let mut disks = Vec::new();
    for d in manifest
        .disks
        .iter()
        .filter(|d| args.disk_ids.contains(&d.disk_id))
    {
        let what = |m: String| {
            Error::new(
                ErrorKind::Input,
                format!("VM {}: disk {}: {m}", args.vm_id, d.disk_id),
            )
        };
        let format = Format::parse(&d.format).ok_or_else(|| {
            what(format!(
                "{MANIFEST} names the format {:?}; backstop reads raw and qcow2",
                d.format
            ))
        })?;
        let (socket, export, changed, held) = if let Some(r) = &d.rbd {
            // A Ceph disk: its snapshot served through librbd with this host's cephx key, the
            // changes since the parent's snapshot from `rbd diff`.
            let served = backstop_image::open::serve_rbd(
                &super::host::rbd_image(r),
                r.parent_snapshot.as_deref(),
            )
            .map_err(|e| what(Error::from(e).message))?;
            let changed = served.changed.clone();
            (
                served.export.socket().display().to_string(),
                String::new(),
                changed,
                Some(served),
            )
        } else if let Some(n) = &d.nbd {
            // libvirt's export: its dirty extents read here, where the socket is.
            let changed = d
                .bitmap
                .as_deref()
                .map(|b| {
                    backstop_image::nbd::dirty_of(Path::new(&n.socket), &n.export, b).map_err(|e| {
                        what(format!(
                            "cannot read bitmap {b} of the export at {}: {e}",
                            n.socket
                        ))
                    })
                })
                .transpose()?;
            // libvirt's export of a running VM: prebackup started it, postbackup ends it.
            (n.socket.clone(), n.export.clone(), changed, None)
        } else if d.layer {
            // SNAPSHOT mode: the chain served whole, the changes are the overlay's clusters.
            let path = Path::new(&d.path);
            let served = serve(
                path,
                Format::Qcow2,
                &roots,
                !d.shared,
                None,
                args,
                d.disk_id,
            )?;
            let changed = backstop_image::nbd::layer_extents(path, !d.shared)
                .map_err(|e| what(format!("cannot list the clusters of {}: {e}", d.path)))?;
            (
                served.export.socket().display().to_string(),
                String::new(),
                Some(changed),
                Some(served),
            )
        } else {
            // A raw file has no bitmap (prebackup names none for it).
            let bitmap = d.bitmap.as_deref().filter(|_| format == Format::Qcow2);
            let served = serve(
                Path::new(&d.path),
                format,
                &roots,
                !d.shared,
                bitmap,
                args,
                d.disk_id,
            )?;
            let changed = served.changed.clone();
            (
                served.export.socket().display().to_string(),
                String::new(),
                changed,
                Some(served),
            )
        };
        // A qemu-nbd this step started, held up while the puller reads.
        serving.extend(held);
        disks.push(ExportedDisk {
            disk_id: d.disk_id,
            socket,
            export,
            changed: changed.map(|c: Vec<Extent>| c.iter().map(|e| (e.offset, e.length)).collect()),
        });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let line = serde_json::to_string(&Exported {
        version: EXPORTED_VERSION,
        vm_xml: b64.encode(&vm_xml),
        tpm: tpm.map(|t| b64.encode(t)),
        manifest,
        disks,
    })
    .map_err(|e| {
        Error::new(
            ErrorKind::Repository,
            format!("cannot write the answer: {e}"),
        )
    })?;
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write the answer", e))?;
    // Served until the puller closes stdin (done, cancelled or gone) or SIGTERM comes.
    while !stdin_closed.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(serving);
    Ok(())
}

fn serve(
    path: &Path,
    format: Format,
    roots: &[std::path::PathBuf],
    locking: bool,
    bitmap: Option<&str>,
    args: &BackupArgs,
    disk_id: u32,
) -> Result<Served, Error> {
    backstop_image::open::serve(path, format, Backing::Within(roots), locking, bitmap).map_err(
        |e| {
            let e = Error::from(e);
            Error {
                message: format!("VM {}: disk {disk_id}: {}", args.vm_id, e.message),
                ..e
            }
        },
    )
}
