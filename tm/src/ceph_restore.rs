//! The in-place restore of Ceph RBD disks (`tm/ceph/restore`, see `docs/ceph.md`), the RBD
//! side of [`crate::restore`]. As the stock action does, each disk is brought back into a new
//! image beside the disk's own (`<image>.new.<random>`), and only when every disk of the
//! restore is in is each swapped in by renaming (the old one to `<image>.old.<random>`, then
//! removed with its snapshots). A failure before the swap removes the new images and leaves
//! the disks as they were.
//!
//! Unlike the stock action, nothing is staged in raw form: the download (a qcow2, from any
//! backup datastore's downloader, checked on the host before qemu opens it, see
//! [`crate::restore_host`]) lands on the VM's host, which reaches the cluster as it does
//! to run the VM, and qemu writes it straight into the new image through librbd, skipping what
//! is zero (`qemu-img convert -n --target-is-zero` into a JSON target spec, so no name is
//! parsed out of a `rbd:` string).

use crate::{Error, ErrorKind};
use backstop_image::rbd::RbdImage;
use backstop_protocol::config::DriverConfig;
use backstop_protocol::message::{Disk, Vm};
use backstop_protocol::remote::{Agent, last_line, sh_quote, ssh_command};
use std::process::Stdio;

/// One RBD disk to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdRestore {
    /// The disk's image as the VM uses it.
    pub image: RbdImage,
    /// The image the backup is written into, then renamed to the disk's.
    pub new: String,
    /// The name the disk's image has between the swap and its removal.
    pub old: String,
}

fn error(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

impl RbdRestore {
    pub fn of(vm: &Vm, disk: &Disk) -> Result<RbdRestore, Error> {
        let image = crate::ceph::image_of(vm.id, disk)?;
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(|e| error(e.to_string()))?;
        let suffix = hex::encode(random);
        let r = RbdRestore {
            new: format!("{}.new.{suffix}", image.image),
            old: format!("{}.old.{suffix}", image.image),
            image,
        };
        for name in [&r.new, &r.old] {
            r.named(name)
                .check()
                .map_err(|e| error(format!("disk {}: {e}", disk.disk_id)))?;
        }
        Ok(r)
    }

    fn named(&self, name: &str) -> RbdImage {
        RbdImage {
            image: name.to_string(),
            snapshot: None,
            ..self.image.clone()
        }
    }

    /// `rbd` with the disk's cluster options, for a shell line.
    fn rbd(&self) -> String {
        let cmd = self.image.command();
        let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
        words.extend(cmd.get_args().map(|a| sh_quote(&a.to_string_lossy())));
        words.join(" ")
    }

    fn spec(&self, name: &str) -> String {
        sh_quote(&self.named(name).spec())
    }

    /// The lines that write the qcow2 `download` into the new image of `size` bytes.
    pub fn import_script(&self, download: &str, size: u64) -> String {
        let target = self.named(&self.new);
        let env = target
            .ceph_args()
            .map(|a| format!("CEPH_ARGS={} ", sh_quote(&a)))
            .unwrap_or_default();
        format!(
            "set -e\n{rbd} create --size {size}B -- {new}\n{env}qemu-img convert -q -n --target-is-zero -f qcow2 -O raw {dl} {json}\nrm -f {dl}\n",
            rbd = self.rbd(),
            new = self.spec(&self.new),
            dl = sh_quote(download),
            json = sh_quote(&target.json_target()),
        )
    }

    /// The lines that swap the new image in; the old one's removal is best effort (a clone
    /// made from it keeps it), said on stderr, never a failure of the restore.
    pub fn swap_lines(&self) -> String {
        let rbd = self.rbd();
        let (image, new, old) = (
            self.spec(&self.image.image),
            self.spec(&self.new),
            self.spec(&self.old),
        );
        format!(
            "{rbd} mv -- {image} {old}\n{rbd} mv -- {new} {image}\n\
             for s in $({rbd} snap ls -- {old} | awk 'NR > 1 {{print $2}}'); do \
             {rbd} snap unprotect -- {old}@\"$s\" 2>/dev/null || true; \
             {rbd} snap rm --no-progress -- {old}@\"$s\" 2>/dev/null || true; done\n\
             out=$({rbd} rm --no-progress -- {old} 2>&1) || echo \"WARNING: the replaced image {plain} was kept: $out\" >&2\n",
            plain = self.named(&self.old).spec(),
        )
    }

    /// The line that removes the new image after a failed restore.
    pub fn cleanup_line(&self) -> String {
        format!(
            "{} rm --no-progress -- {} >/dev/null 2>&1 || true\n",
            self.rbd(),
            self.spec(&self.new)
        )
    }
}

/// Checks the Ceph files on `host` (`backstop host-restore ceph-files`), then the downloaded
/// qcow2, makes it stand alone and reads its virtual size
/// (`backstop host-restore disk`, [`crate::restore_host::disk`]): it names no file of the host
/// that qemu would open when it is written into the new image.
pub fn downloaded_size(
    cfg: &DriverConfig,
    host: &str,
    download: &str,
    rbd: &RbdRestore,
) -> Result<u64, Error> {
    // First the cluster files the import is about to use (a VM owner may have named them).
    let bin = sh_quote(&cfg.remote_binary());
    let file = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or_else(|| "-".to_string(), |p| sh_quote(&p.display().to_string()))
    };
    let out = ssh_command(cfg, host, Agent::NotForwarded)
        .arg(format!(
            "{bin} host-restore ceph-files {} {} && {bin} host-restore disk {} qcow2",
            file(&rbd.image.conf),
            file(&rbd.image.keyfile),
            sh_quote(download)
        ))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("cannot run ssh", e))?;
    if !out.status.success() {
        return Err(error(format!(
            "cannot read the downloaded disk {download} on {host}: {}",
            last_line(&String::from_utf8_lossy(&out.stderr))
                .unwrap_or_else(|| format!("ssh exited with {}", out.status))
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u64>()
        .map_err(|_| {
            error(format!(
                "the host step gives no virtual size for {download}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore() -> RbdRestore {
        RbdRestore {
            image: RbdImage {
                pool: "one".into(),
                image: "one-7".into(),
                snapshot: None,
                conf: Some("/etc/ceph/ceph.conf".into()),
                user: Some("libvirt".into()),
                keyfile: Some("/etc/ceph/key.file".into()),
            },
            new: "one-7.new.0a0b0c0d".into(),
            old: "one-7.old.0a0b0c0d".into(),
        }
    }

    #[test]
    fn the_import_writes_into_the_new_image_through_a_json_spec() {
        let s = restore().import_script("/d/22/disk.0.backup", 52428800);
        assert!(s.contains(
            "rbd --conf /etc/ceph/ceph.conf --id libvirt --keyfile /etc/ceph/key.file create --size 52428800B -- one/one-7.new.0a0b0c0d\n"
        ), "{s}");
        assert!(s.contains("CEPH_ARGS='--keyfile /etc/ceph/key.file' qemu-img convert -q -n --target-is-zero -f qcow2 -O raw /d/22/disk.0.backup 'json:"), "{s}");
        assert!(
            s.contains(r#""image":"one-7.new.0a0b0c0d""#) && s.contains(r#""read-only":false"#),
            "{s}"
        );
        assert!(s.ends_with("rm -f /d/22/disk.0.backup\n"), "{s}");
    }

    #[test]
    fn the_swap_renames_then_removes_the_old_image() {
        let s = restore().swap_lines();
        let first = s
            .find("mv -- one/one-7 one/one-7.old.0a0b0c0d\n")
            .expect("old");
        let second = s
            .find("mv -- one/one-7.new.0a0b0c0d one/one-7\n")
            .expect("new");
        assert!(first < second, "{s}");
        assert!(s.contains("out=$(rbd --conf /etc/ceph/ceph.conf --id libvirt --keyfile /etc/ceph/key.file rm --no-progress -- one/one-7.old.0a0b0c0d 2>&1) || echo"), "{s}");
        assert!(
            restore()
                .cleanup_line()
                .contains("rm --no-progress -- one/one-7.new.0a0b0c0d")
        );
    }
}
