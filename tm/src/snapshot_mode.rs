//! INCREMENT_MODE=SNAPSHOT, done by backstop (docs/host-side.md, "SNAPSHOT mode").
//!
//! The disk runs on a qcow2 overlay that was created right after the previous backup read the
//! disk, so the clusters the overlay holds itself are exactly what changed since then: an
//! increment reads only those. After a backup succeeds the overlay is merged into the base and
//! a new, empty one takes its place. The files are laid out as OpenNebula's own SNAPSHOT mode
//! lays them out, so either transfer manager can take the next backup:
//!
//! ```text
//! disk.<id> -> disk.<id>.snap/<n+1>      the disk after backup n
//! disk.<id>.snap/0                       the base: the disk as backup n read it
//! disk.<id>.snap/<n+1>                   what the VM wrote since (backing file: the base)
//! disk.<id>.snap/disk.<id>.snap -> .     so that names relative to the VM directory resolve
//!                                        from inside the snapshot directory too
//! ```
//!
//! The new overlay's backing file is named relative to the VM directory
//! (`disk.<id>.snap/0`): qemu resolves a relative name against the directory of the name
//! the image was opened by, which is `<vm_dir>/disk.<id>` when OpenNebula starts the VM and
//! the snapshot directory when the file is opened by its own path; the self-link makes both
//! work. A persistent image of a shared datastore keeps its snapshot directory beside the
//! image (`disk.<id>` is an absolute link into the image datastore): its overlays name their
//! backing file by its absolute path.
//!
//! A running VM's rotation may keep one more layer of the directory between the base and the
//! overlay (when qemu knows the base as `disk.<id>`, see `crate::live`); the powered-off
//! rotation merges it into the base.
//!
//! This module does what a powered-off VM needs (the rotation with qemu-img); the running
//! VM's side, which rotates through libvirt, is in [`crate::live`].

use crate::{Error, ErrorKind};
use backstop_image::disk_image::{self, Backing, DiskImage, Format};
use backstop_image::image::Extent;
use std::path::{Path, PathBuf};

/// Where disk `id` stands in its snapshot chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub id: u32,
    /// `<vm_dir>/disk.<id>`.
    pub link: PathBuf,
    /// The snapshot directory.
    pub snap: PathBuf,
    /// The directory part of the link's target as written: `disk.<id>.snap`, or an absolute
    /// path into an image datastore.
    pub slink: String,
    /// The name in `snap` of the file `disk.<id>` leads to (`0`: the base itself).
    pub name: String,
}

impl Chain {
    /// The file the disk runs on now.
    pub fn top(&self) -> PathBuf {
        self.snap.join(&self.name)
    }

    pub fn base(&self) -> PathBuf {
        self.snap.join("0")
    }

    /// Whether the snapshot directory is the VM's own `disk.<id>.snap`, whose files are named
    /// relative to the VM directory.
    pub fn in_vm_dir(&self) -> bool {
        self.slink == format!("disk.{}.snap", self.id)
    }

    /// How an overlay names the file `below` of this directory as its backing file.
    pub fn backing_name(&self, below: &str) -> String {
        if self.in_vm_dir() {
            format!("{}/{below}", self.slink)
        } else {
            self.snap.join(below).display().to_string()
        }
    }
}

/// What `<vm_dir>/disk.<id>` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A file of its own (the ssh and local TMs' disks before any snapshot).
    Plain,
    /// A link into a snapshot directory.
    Chain(Chain),
}

fn refuse(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

/// Reads what `<vm_dir>/disk.<id>` is. Anything but a file or a link to a file of a `.snap`
/// directory is refused with the reason: SNAPSHOT mode only rotates layouts it knows.
pub fn find(vm_dir: &Path, id: u32) -> Result<Found, Error> {
    let link = vm_dir.join(format!("disk.{id}"));
    let meta = std::fs::symlink_metadata(&link)
        .map_err(|e| Error::io(format!("cannot find disk {id} at {}", link.display()), e))?;
    if meta.file_type().is_file() {
        return Ok(Found::Plain);
    }
    let unknown = |what: String| {
        refuse(format!(
            "disk {id} ({}) {what}; INCREMENT_MODE=SNAPSHOT rotates only a file or a link into a disk's .snap directory (use INCREMENT_MODE=CBT)",
            link.display()
        ))
    };
    if !meta.file_type().is_symlink() {
        return Err(unknown("is neither a file nor a link".into()));
    }
    let target = std::fs::read_link(&link)
        .map_err(|e| Error::io(format!("cannot read the link {}", link.display()), e))?;
    let target_text = target.to_string_lossy().into_owned();
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(unknown(format!("leads to {target_text:?}")));
    };
    let dir_text = dir.to_string_lossy().into_owned();
    let name = name.to_string_lossy().into_owned();
    if !dir_text.ends_with(".snap") || name.contains('/') {
        return Err(unknown(format!("leads to {target_text:?}")));
    }
    let snap = vm_dir.join(dir);
    let top = snap.join(&name);
    if !std::fs::metadata(&top).is_ok_and(|m| m.is_file()) {
        return Err(unknown(format!(
            "leads to {target_text:?}, which is not a file"
        )));
    }
    Ok(Found::Chain(Chain {
        id,
        link,
        snap,
        slink: dir_text,
        name,
    }))
}

/// [`find`], and for a plain file whether [`make_snap_dir`] can turn it into the layout: what
/// prebackup checks before anything moves (postbackup, which rotates, cannot fail).
pub fn check(vm_dir: &Path, id: u32) -> Result<Found, Error> {
    let found = find(vm_dir, id)?;
    if found == Found::Plain {
        let slink = format!("disk.{id}.snap");
        check_snap_dir_for(&Chain {
            id,
            link: vm_dir.join(format!("disk.{id}")),
            snap: vm_dir.join(&slink),
            slink,
            name: "0".into(),
        })?;
    }
    Ok(found)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether the overlay disk `id` runs on is the one the parent of increment `increment` left
/// (named `<increment>`, backed by the base; `image` is the disk's checked chain), so that
/// the clusters it holds itself are the increment's changes; why not, if not.
pub fn parent_overlay(
    chain: &Found,
    image: &DiskImage,
    increment: u64,
    id: u32,
) -> Result<(), String> {
    let chain = match chain {
        Found::Plain => {
            return Err(format!(
                "disk {id} has no snapshot overlay yet (its SNAPSHOT chain starts with this backup)"
            ));
        }
        Found::Chain(c) => c,
    };
    if chain.name == "0" {
        return Err(format!(
            "disk {id} runs on the base of its snapshot directory (its SNAPSHOT chain starts with this backup)"
        ));
    }
    if chain.name != increment.to_string() {
        return Err(format!(
            "disk {id} runs on overlay {} of its snapshot directory, not on {increment}, which the parent backup would have left",
            chain.name
        ));
    }
    layers_to_base(chain, image)
        .map(|_| ())
        .map_err(|e| format!("overlay {} of disk {id}: {e}", chain.name))
}

/// How many layers of `image` (the disk's checked chain, top first) lie above the base
/// `<snap>/0`: the top, and the layers of the snapshot directory a running VM's rotation kept
/// between (see [`crate::live`]). Each of them and the base is a qcow2 file of the directory.
pub fn layers_to_base(chain: &Chain, image: &DiskImage) -> Result<usize, String> {
    let snap = std::fs::canonicalize(&chain.snap).map_err(|e| e.to_string())?;
    for (k, layer) in image.layers.iter().enumerate() {
        if layer.format != Format::Qcow2 || layer.path.parent() != Some(snap.as_path()) {
            break;
        }
        if same_file(&layer.path, &chain.base()) {
            return if k == 0 {
                Err("it is the base itself".into())
            } else {
                Ok(k)
            };
        }
    }
    Err(format!(
        "its backing chain does not reach the qcow2 file {} through files of its directory",
        chain.base().display()
    ))
}

/// The clusters `overlay` holds itself: the changes since the parent, once nothing writes it
/// any more (a powered-off VM's, or a running VM's under a new snapshot overlay: `locking`
/// false). Why the whole disk must be read, if they cannot be listed.
pub fn overlay_extents(overlay: &Path, locking: bool) -> Result<Vec<Extent>, String> {
    backstop_image::nbd::layer_extents(overlay, locking)
        .map_err(|e| format!("cannot list the clusters of {}: {e}", overlay.display()))
}

/// [`parent_overlay`], then the overlay's clusters, for a powered-off VM.
pub fn changed_extents(
    chain: &Found,
    image: &DiskImage,
    increment: u64,
    id: u32,
) -> Result<Vec<Extent>, String> {
    parent_overlay(chain, image, increment, id)?;
    match chain {
        Found::Chain(c) => overlay_extents(&c.top(), true),
        Found::Plain => Err(format!("disk {id} has no snapshot overlay")),
    }
}

/// Makes a plain disk file the base of a snapshot directory, as OpenNebula's SNAPSHOT mode
/// does: `disk.<id>.snap/0` becomes a second name of the file (a hard link: the same file, also
/// under a running VM that holds it open), then `disk.<id>` is replaced by a link to it (a
/// rename). Interrupted at any point, `disk.<id>` still names the disk and a repeat finishes
/// the job; a `disk.<id>.snap` with anything else in it is refused.
pub fn make_snap_dir(vm_dir: &Path, id: u32) -> Result<Chain, Error> {
    let link = vm_dir.join(format!("disk.{id}"));
    let slink = format!("disk.{id}.snap");
    let snap = vm_dir.join(&slink);
    let base = snap.join("0");
    let chain = Chain {
        id,
        link: link.clone(),
        snap: snap.clone(),
        slink: slink.clone(),
        name: "0".into(),
    };
    check_snap_dir_for(&chain)?;
    if std::fs::symlink_metadata(&snap).is_err() {
        std::fs::create_dir(&snap)
            .map_err(|e| Error::io(format!("cannot create {}", snap.display()), e))?;
    }
    if std::fs::symlink_metadata(&base).is_err() {
        std::fs::hard_link(&link, &base).map_err(|e| {
            Error::io(
                format!("cannot link {} as {}", link.display(), base.display()),
                e,
            )
        })?;
    }
    self_link(&chain)?;
    relink(&link, &format!("{slink}/0"))?;
    Ok(chain)
}

/// Whether a plain `disk.<id>` can become the base of `chain`'s directory: the directory is
/// missing, or holds at most what an interrupted [`make_snap_dir`] left (the self-link, and
/// `0` as a second name of the disk file).
pub fn check_snap_dir_for(chain: &Chain) -> Result<(), Error> {
    let snap = &chain.snap;
    let Ok(entries) = std::fs::read_dir(snap) else {
        return match std::fs::symlink_metadata(snap) {
            Err(_) => Ok(()),
            Ok(_) => Err(refuse(format!(
                "disk {} is a file of its own, but {} is not a directory",
                chain.id,
                snap.display()
            ))),
        };
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ok = if name == "0" {
            same_inode(&entry.path(), &chain.link)
        } else {
            name == chain.slink
                && std::fs::read_link(entry.path()).is_ok_and(|t| t == Path::new("."))
        };
        if !ok {
            return Err(refuse(format!(
                "disk {} is a file of its own, but {} holds {name:?}; INCREMENT_MODE=SNAPSHOT does not know this layout",
                chain.id,
                snap.display()
            )));
        }
    }
    Ok(())
}

fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `<snap>/disk.<id>.snap -> .`, so that a backing name relative to the VM directory resolves
/// from inside the snapshot directory too.
pub fn self_link(chain: &Chain) -> Result<(), Error> {
    if !chain.in_vm_dir() {
        return Ok(());
    }
    let path = chain.snap.join(&chain.slink);
    match std::fs::read_link(&path) {
        Ok(t) if t == Path::new(".") => Ok(()),
        Ok(t) => Err(refuse(format!(
            "{} leads to {}, not to its own directory",
            path.display(),
            t.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink(".", &path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
        }
        Err(_) => Err(refuse(format!(
            "{} is in the way of the snapshot directory's self-link",
            path.display()
        ))),
    }
}

/// Points `link` at `target`, atomically (a new link renamed over the old one).
pub fn relink(link: &Path, target: &str) -> Result<(), Error> {
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".backstop-link");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, link))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("cannot point {} at {target}", link.display()), e)
        })
}

/// Creates `<snap>/<name>`, an empty qcow2 overlay of `size` bytes whose backing file is
/// `backing` (a qcow2 file, named as [`Chain::backing_name`] names it), under a temporary name
/// renamed into place. qemu-img does not open the backing file (`-u`).
pub fn create_overlay(chain: &Chain, name: &str, backing: &str, size: u64) -> Result<(), Error> {
    let path = chain.snap.join(name);
    let tmp = chain.snap.join(format!("{name}.backstop-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let size = size.to_string();
    let result = disk_image::qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        backing.as_ref(),
        "-u".as_ref(),
        tmp.as_os_str(),
        size.as_ref(),
    ])
    .and_then(|_| {
        std::fs::rename(&tmp, &path)
            .map_err(|e| backstop_image::Error::io(format!("cannot rename {}", tmp.display()), e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::from)
}

/// Clears the way for a new overlay `<snap>/<name>`: a file there that is not the disk's is a
/// leftover of an interrupted rotation only if it is an empty overlay of the base; then it
/// goes. Anything else is refused with the reason.
fn clear_the_way(chain: &Chain, name: &str) -> Result<(), Error> {
    let path = chain.snap.join(name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(());
    }
    let in_the_way = || {
        refuse(format!(
            "disk {}: {} is in the way of the next SNAPSHOT overlay and is not an empty overlay of {}; it is left as it is",
            chain.id,
            path.display(),
            chain.base().display()
        ))
    };
    let info = disk_image::info(&path, Format::Qcow2).map_err(|_| in_the_way())?;
    let backed_by_base = info.backing.as_ref().is_some_and(|(named, _)| {
        let named = Path::new(named);
        let resolved = if named.is_absolute() {
            named.to_path_buf()
        } else {
            chain.link.parent().unwrap_or(Path::new("/")).join(named)
        };
        same_file(&resolved, &chain.base())
    });
    let empty = backstop_image::nbd::delta_extents(&path).is_ok_and(|e| e.is_empty());
    if !(backed_by_base && empty) {
        return Err(in_the_way());
    }
    std::fs::remove_file(&path)
        .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))
}

/// After backup `increment` of a powered-off VM succeeded: disk `id` runs on a new, empty
/// overlay `<snap>/<increment + 1>` over a base that holds the disk as the backup read it.
/// The overlay the backup read is merged into the base (`qemu-img commit`) and removed; a
/// plain disk file first becomes the base of a new snapshot directory. Safe to repeat after
/// an interruption at any point.
pub fn rotate(vm_dir: &Path, id: u32, increment: u64) -> Result<(), Error> {
    let chain = match find(vm_dir, id)? {
        Found::Plain => make_snap_dir(vm_dir, id)?,
        Found::Chain(c) => c,
    };
    self_link(&chain)?;
    let next = (increment + 1).to_string();
    let roots = backstop_protocol::dirs::backing_roots(vm_dir);
    let top = disk_image::inspect(&chain.link, Format::Qcow2, Backing::Within(&roots))?;
    // The layers above the base (the overlay, and any a running VM's rotation kept between),
    // each merged into the one below, down to the base: its own backing file (if any) is not
    // written. Each merged layer is emptied, so a repeat after an interruption merges nothing
    // twice, and until the link moves the disk reads the same through them.
    let above = if chain.name == "0" {
        Vec::new()
    } else {
        let k = layers_to_base(&chain, &top).map_err(|e| {
            refuse(format!(
                "overlay {}: {e}; the snapshot chain is not rotated",
                chain.name
            ))
        })?;
        top.layers[..k].to_vec()
    };
    for k in 0..above.len() {
        let sub = DiskImage {
            layers: top.layers[k..].to_vec(),
            ..top.clone()
        };
        disk_image::qemu_img(&[
            "commit".as_ref(),
            "-q".as_ref(),
            sub.json_spec(true).as_ref(),
        ])?;
    }
    if chain.name == next && above.len() == 1 {
        // The emptied overlay is already the next one.
        return Ok(());
    }
    let keep = chain.snap.join(&next);
    if above.iter().any(|l| same_file(&l.path, &keep)) {
        // A merged (so empty) layer has the next overlay's name: out of the chain, then gone.
        relink(&chain.link, &format!("{}/0", chain.slink))?;
        std::fs::remove_file(&keep)
            .map_err(|e| Error::io(format!("cannot remove {}", keep.display()), e))?;
    }
    clear_the_way(&chain, &next)?;
    create_overlay(&chain, &next, &chain.backing_name("0"), top.virtual_size)?;
    relink(&chain.link, &format!("{}/{next}", chain.slink))?;
    for layer in &above {
        if layer.path.exists() && !same_file(&layer.path, &keep) {
            std::fs::remove_file(&layer.path)
                .map_err(|e| Error::io(format!("cannot remove {}", layer.path.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(args: &[&str]) {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    fn write(disk: &Path, pattern: u8, offset: u64, len: u64) {
        sh(&[
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {pattern} {offset} {len}"),
            disk.to_str().expect("utf-8"),
        ]);
    }

    fn raw(disk: &Path) -> Vec<u8> {
        let out = disk.with_extension("raw-copy");
        sh(&[
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            disk.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
        ]);
        let data = std::fs::read(&out).expect("raw");
        std::fs::remove_file(&out).expect("rm");
        data
    }

    fn vm_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm = dir.path().join("datastores/0/7");
        std::fs::create_dir_all(&vm).expect("vm dir");
        (dir, vm)
    }

    /// `<vm>/disk.0`, an empty 8 MiB qcow2 file.
    fn new_disk(vm: &Path) -> PathBuf {
        let disk = vm.join("disk.0");
        sh(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            disk.to_str().expect("utf-8"),
            "8M",
        ]);
        disk
    }

    fn chain(vm: &Path) -> Chain {
        match find(vm, 0).expect("find") {
            Found::Chain(c) => c,
            Found::Plain => panic!("plain"),
        }
    }

    #[test]
    fn a_plain_disk_becomes_a_rotating_chain_that_keeps_its_data() {
        let (_d, vm) = vm_dir();
        let disk = new_disk(&vm);
        write(&disk, 1, 0, 1 << 20);
        assert_eq!(find(&vm, 0).expect("find"), Found::Plain);
        let before = raw(&disk);
        rotate(&vm, 0, 0).expect("rotate after the FULL");
        let c = chain(&vm);
        assert_eq!((c.slink.as_str(), c.name.as_str()), ("disk.0.snap", "1"));
        assert_eq!(
            std::fs::read_link(vm.join("disk.0.snap/disk.0.snap")).expect("self-link"),
            Path::new(".")
        );
        assert_eq!(raw(&disk), before);
        // What the VM writes lands in the overlay, and only that is the changed set.
        write(&disk, 2, 3 << 20, 65536);
        let roots = backstop_protocol::dirs::backing_roots(&vm);
        let image =
            disk_image::inspect(&disk, Format::Qcow2, Backing::Within(&roots)).expect("inspect");
        let found = find(&vm, 0).expect("find");
        assert_eq!(
            changed_extents(&found, &image, 1, 0).expect("changed"),
            [Extent {
                offset: 3 << 20,
                length: 65536
            }]
        );
        // The wrong increment (a rotation no backup recorded) reads the whole disk.
        assert!(
            changed_extents(&found, &image, 2, 0)
                .expect_err("not the parent's overlay")
                .contains("not on 2")
        );
        let now = raw(&disk);
        rotate(&vm, 0, 1).expect("rotate after increment 1");
        let c = chain(&vm);
        assert_eq!(c.name, "2");
        assert!(!vm.join("disk.0.snap/1").exists(), "the old overlay stays");
        assert_eq!(raw(&disk), now);
        assert_eq!(
            raw(&vm.join("disk.0.snap/0")),
            now,
            "the base holds the data"
        );
        // The new overlay names its base relative to the VM directory, and resolves from
        // its own directory too.
        let info = disk_image::info(&vm.join("disk.0.snap/2"), Format::Qcow2).expect("info");
        assert_eq!(info.backing.map(|b| b.0).as_deref(), Some("disk.0.snap/0"));
        assert_eq!(raw(&vm.join("disk.0.snap/2")), now);
        // Repeating the rotation (an interrupted postbackup) changes nothing.
        rotate(&vm, 0, 1).expect("again");
        assert_eq!(chain(&vm).name, "2");
        assert_eq!(raw(&disk), now);
    }

    /// The chain a running VM's rotation leaves when the VM was started on the base: one more
    /// layer between. The powered-off rotation merges both into the base.
    #[test]
    fn a_kept_layer_is_merged_into_the_base_too() {
        let (_d, vm) = vm_dir();
        let disk = new_disk(&vm);
        write(&disk, 1, 0, 1 << 20);
        rotate(&vm, 0, 0).expect("FULL");
        write(&disk, 2, 2 << 20, 65536);
        let c = chain(&vm);
        create_overlay(&c, "3", &c.backing_name("1"), 8 << 20).expect("overlay");
        relink(&c.link, "disk.0.snap/3").expect("link");
        write(&disk, 3, 4 << 20, 65536);
        let roots = backstop_protocol::dirs::backing_roots(&vm);
        let image =
            disk_image::inspect(&disk, Format::Qcow2, Backing::Within(&roots)).expect("inspect");
        let found = find(&vm, 0).expect("find");
        assert_eq!(layers_to_base(&chain(&vm), &image), Ok(2));
        assert_eq!(
            changed_extents(&found, &image, 3, 0).expect("the top's clusters"),
            [Extent {
                offset: 4 << 20,
                length: 65536
            }]
        );
        let now = raw(&disk);
        rotate(&vm, 0, 3).expect("rotate");
        assert_eq!(chain(&vm).name, "4");
        assert_eq!(raw(&disk), now);
        assert_eq!(raw(&vm.join("disk.0.snap/0")), now);
        let mut files: Vec<String> = std::fs::read_dir(vm.join("disk.0.snap"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["0", "4", "disk.0.snap"]);
    }

    #[test]
    fn an_interrupted_move_into_the_snapshot_directory_is_finished() {
        let (_d, vm) = vm_dir();
        let disk = new_disk(&vm);
        write(&disk, 3, 0, 65536);
        let before = raw(&disk);
        // Stopped after the directory and the second name were made: disk.0 is still the
        // file, and the next rotation finishes the move.
        std::fs::create_dir(vm.join("disk.0.snap")).expect("mkdir");
        std::fs::hard_link(&disk, vm.join("disk.0.snap/0")).expect("link");
        assert_eq!(check(&vm, 0).expect("resumable"), Found::Plain);
        rotate(&vm, 0, 0).expect("rotate");
        assert_eq!(chain(&vm).name, "1");
        assert_eq!(raw(&disk), before);
        // Anything else in the directory of a plain disk is a layout nobody knows.
        let (_d, vm) = vm_dir();
        let disk = new_disk(&vm);
        std::fs::create_dir(vm.join("disk.0.snap")).expect("mkdir");
        std::fs::write(vm.join("disk.0.snap/0"), b"someone else's").expect("file");
        let e = check(&vm, 0).expect_err("not ours");
        assert!(e.to_string().contains("holds \"0\""), "{e}");
        assert!(rotate(&vm, 0, 0).is_err());
        assert!(disk.is_file(), "the disk stays where it was");
    }

    #[test]
    fn unknown_layouts_and_files_in_the_way_are_refused() {
        let (_d, vm) = vm_dir();
        std::os::unix::fs::symlink("/dev/null", vm.join("disk.0")).expect("link");
        let e = find(&vm, 0).expect_err("a link to a device");
        assert!(
            e.to_string()
                .contains("INCREMENT_MODE=SNAPSHOT rotates only"),
            "{e}"
        );

        let (_d, vm) = vm_dir();
        new_disk(&vm);
        rotate(&vm, 0, 0).expect("chain");
        // A file with data where the next overlay goes: refused, nothing changed.
        let stray = vm.join("disk.0.snap/2");
        sh(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            stray.to_str().expect("utf-8"),
            "8M",
        ]);
        write(&stray, 9, 0, 4096);
        let e = rotate(&vm, 0, 1).expect_err("in the way");
        assert!(e.to_string().contains("is in the way"), "{e}");
        assert!(stray.exists());
    }
}
