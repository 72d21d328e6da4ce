//! What the host step asks of qemu-img about a VM's disk: its declared format, its checked
//! backing chain and persistent bitmaps ([`backstop_image::disk_image`]), and adding
//! or removing a bitmap. qemu is always told the format: it never probes a disk a guest wrote.

use crate::{Error, ErrorKind};
use backstop_image::disk_image::{self, Backing, DiskImage, Format};
use backstop_protocol::message::Vm;
use std::path::Path;

pub use backstop_image::disk_image::Bitmap;

use backstop_image::disk_image::qemu_img as run;

/// The format of disk `id` as the VM declares it: `DISK/DRIVER`, else `DISK/FORMAT` (what
/// libvirt is told, so what the guest's writes mean). Anything else is refused.
pub fn declared_format(vm: &Vm, id: u32) -> Result<Format, Error> {
    let disk = vm.disk(id).ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!("VM {}: disk {id} is not in the VM's template", vm.id),
        )
    })?;
    let declared = disk.driver().or(disk.format.as_deref()).ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!(
                "VM {}: disk {id} has neither DRIVER nor FORMAT; its format is not guessed",
                vm.id
            ),
        )
    })?;
    Format::parse(declared).ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!(
                "VM {}: disk {id} is {declared:?}; backstop backs up raw and qcow2 disks",
                vm.id
            ),
        )
    })
}

/// Disk `id` of the VM at `disk` (`<vm_dir>/disk.<id>`), read as declared, its backing chain
/// confined to the VM's and the datastores' directories.
pub fn inspect(vm: &Vm, id: u32, disk: &Path, vm_dir: &Path) -> Result<DiskImage, Error> {
    let format = declared_format(vm, id)?;
    let roots = backstop_protocol::dirs::backing_roots(vm_dir);
    let named = |e: backstop_image::Error| {
        let e = Error::from(e);
        Error {
            message: format!("VM {}: disk {id}: {}", vm.id, e.message),
            ..e
        }
    };
    let image = disk_image::inspect(disk, format, Backing::Within(&roots)).map_err(named)?;
    backstop_image::image::check_size(&disk.display().to_string(), image.virtual_size)
        .map_err(named)?;
    Ok(image)
}

/// The bitmaps of a qcow2 disk (none for raw).
pub fn bitmaps(disk: &Path, format: Format) -> Result<Vec<Bitmap>, Error> {
    if format != Format::Qcow2 {
        return Ok(Vec::new());
    }
    Ok(disk_image::info(disk, format)?.bitmaps)
}

pub fn bitmap_add(disk: &Path, name: &str) -> Result<(), Error> {
    bitmap(disk, "--add", name)
}

pub fn bitmap_remove(disk: &Path, name: &str) -> Result<(), Error> {
    bitmap(disk, "--remove", name)
}

/// Bitmaps live only in qcow2 disks: the format is always given.
fn bitmap(disk: &Path, op: &str, name: &str) -> Result<(), Error> {
    run(&[
        "bitmap".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        op.as_ref(),
        disk.as_os_str(),
        name.as_ref(),
    ])?;
    Ok(())
}
