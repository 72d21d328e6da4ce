//! The host half of the in-place restore ([`crate::restore`]): `backstop host-restore`, run
//! on the VM's host over ssh once every file is downloaded there and before anything is
//! swapped in. What it reads came from a repository (through any backup datastore's
//! downloader), so it is treated as hostile (`docs/security.md`):
//!
//! - `disk <download> <raw|qcow2>`: the download must be a qcow2 file that names no other
//!   file qemu would open ([`disk_image::check_foreign`]: no data file, no `json:` or protocol
//!   backing file), checked with `qemu-img info` before qemu opens it for anything else. A
//!   backing file named as a path is detached unread (`rebase -u`); a raw disk gets the raw
//!   bytes. Prints the disk's virtual size.
//! - `tpm <download> <vm_dir>`: the TPM archive unpacked into `<vm_dir>/tpm.restored`
//!   ([`crate::tpm_archive`]), which the swap renames to `tpm`.
//! - `ceph-files <conf|-> <key|->`: the Ceph files a restore of an RBD disk is about to hand
//!   `rbd` and qemu are files only root can have written, the key a bare key
//!   ([`backstop_image::rbd::check_cluster_files`]): a VM owner may have chosen them.

use crate::tpm_archive;
use crate::{Error, ErrorKind};
use backstop_image::disk_image::{self, ForeignBacking, Format, qemu_img};
use std::path::{Path, PathBuf};

/// Where the TPM state is unpacked before the swap.
pub const TPM_RESTORED: &str = "tpm.restored";

/// Makes the downloaded qcow2 `download` what its disk is declared to be, in place: a
/// standalone qcow2, or raw bytes. Returns its virtual size.
pub fn disk(download: &Path, format: Format) -> Result<u64, Error> {
    let info = disk_image::check_foreign(download, ForeignBacking::PlainPath)?;
    if info.backing.is_some() {
        // -u: the backing file is never opened, only forgotten.
        qemu_img(&[
            "rebase".as_ref(),
            "-q".as_ref(),
            "-u".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            "".as_ref(),
            download.as_os_str(),
        ])?;
    }
    if format == Format::Raw {
        let mut raw = download.as_os_str().to_owned();
        raw.push(".raw");
        let raw = PathBuf::from(raw);
        let converted = qemu_img(&[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            download.as_os_str(),
            raw.as_os_str(),
        ])
        .map_err(Error::from)
        .and_then(|_| {
            std::fs::rename(&raw, download)
                .map_err(|e| Error::io(format!("cannot rename {}", raw.display()), e))
        });
        if converted.is_err() {
            let _ = std::fs::remove_file(&raw);
        }
        converted?;
    }
    Ok(info.virtual_size)
}

/// Unpacks the TPM archive `download` into `<vm_dir>/tpm.restored` (a leftover of an earlier
/// attempt is removed first).
pub fn tpm(download: &Path, vm_dir: &Path) -> Result<tpm_archive::Unpacked, Error> {
    let fresh = vm_dir.join(TPM_RESTORED);
    match std::fs::symlink_metadata(&fresh) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&fresh),
        Ok(_) => std::fs::remove_file(&fresh),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| Error::io(format!("cannot remove {}", fresh.display()), e))?;
    tpm_archive::unpack(download, &fresh)
}

/// `backstop host-restore <step> <args>`; what goes on stdout.
pub fn run(step: &str, args: &[String]) -> Result<String, Error> {
    let usage = || {
        Error::new(
            ErrorKind::Input,
            format!(
                "usage: host-restore disk <download> <raw|qcow2> | tpm <download> <vm_dir> | ceph-files <conf|-> <key|->; not {step} {args:?}"
            ),
        )
    };
    match (step, args) {
        ("disk", [download, format]) => {
            let format = Format::parse(format).ok_or_else(usage)?;
            Ok(format!("{}\n", disk(Path::new(download), format)?))
        }
        ("tpm", [download, vm_dir]) => {
            tpm(Path::new(download), Path::new(vm_dir))?;
            Ok(String::new())
        }
        ("ceph-files", [conf, key]) => {
            let given = |p: &String| (p != "-").then(|| PathBuf::from(p));
            let (conf, key) = (given(conf), given(key));
            for p in conf.iter().chain(&key) {
                if !backstop_image::rbd::cluster_path(p) {
                    return Err(Error::new(
                        ErrorKind::Input,
                        format!(
                            "{} is not an absolute path without blanks, control characters, '.' or '..'",
                            p.display()
                        ),
                    ));
                }
            }
            backstop_image::rbd::check_cluster_files(conf.as_deref(), key.as_deref())
                .map_err(|e| Error::new(ErrorKind::Input, e.to_string()))?;
            Ok(String::new())
        }
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The Ceph files a restore hands rbd: a VM owner may have named them (issue 23).
    #[test]
    fn ceph_files_must_be_roots_and_the_key_bare() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "AQBbZ2dlAAAAABAAr4Sz0uLxwqXe3j6ZxP7mNA==\n").expect("key");
        let auth = dir.path().join("one_auth");
        std::fs::write(&auth, "oneadmin:s3cr3t\n").expect("auth");
        let arg = |p: &Path| p.display().to_string();
        let e = run("ceph-files", &["-".into(), arg(&auth)]).expect_err("not a key");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = run("ceph-files", &["/etc/ceph/../one/x".into(), "-".into()]).expect_err("..");
        assert!(e.to_string().contains("'..'"), "{e}");
        // Made by this test: root's where the tests run as root (CI), else refused as not
        // root's.
        let mine = run("ceph-files", &["-".into(), arg(&key)]);
        let as_root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        });
        assert_eq!(mine.is_ok(), as_root, "{mine:?}");
    }

    fn sh(args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A qcow2 whose clusters are the host file `victim` (an external data file, with its L2
    /// tables filled so that every read goes there), as a hostile repository's writer makes
    /// one: made against a decoy of their own, then pointed at the victim.
    fn reads_through_to(dir: &Path, victim: &Path) -> PathBuf {
        let decoy = dir.join("decoy");
        std::fs::write(&decoy, vec![0u8; 1 << 20]).expect("decoy");
        let evil = dir.join("disk.0.backup");
        let (e, d, v) = (
            evil.to_str().expect("utf-8"),
            decoy.to_str().expect("utf-8"),
            victim.to_str().expect("utf-8"),
        );
        sh(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={d},data_file_raw=on,preallocation=metadata"),
            e,
            "1M",
        ]);
        sh(&[
            "qemu-img",
            "amend",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={v}"),
            e,
        ]);
        std::fs::remove_file(&decoy).expect("decoy");
        evil
    }

    /// The host step refuses a download with an external data file before qemu opens it for
    /// anything but `info`: the host file is neither read into the disk nor written, and the
    /// download is left as it was for the front-end to remove.
    #[test]
    fn a_download_with_a_data_file_is_refused_unopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        let secret: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&victim, &secret).expect("victim");
        let evil = reads_through_to(dir.path(), &victim);
        let before = std::fs::read(&evil).expect("download");
        for format in [Format::Raw, Format::Qcow2] {
            let e = disk(&evil, format).expect_err("refused");
            assert_eq!(
                e.to_string(),
                format!(
                    "{} uses the external data file {:?}, which backstop does not open",
                    evil.display(),
                    victim.display().to_string()
                )
            );
            assert_eq!(std::fs::read(&evil).expect("download"), before);
            assert!(!dir.path().join("disk.0.backup.raw").exists());
        }
        assert_eq!(std::fs::read(&victim).expect("victim"), secret);
    }

    /// A backing file named as a `json:` specification is refused; one named as a path is
    /// detached without being opened, and a raw disk gets the download's own bytes.
    #[test]
    fn backing_files_are_refused_or_detached_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, vec![0x77u8; 1 << 20]).expect("victim");
        let dl = dir.path().join("disk.1.backup");
        let d = dl.to_str().expect("utf-8");
        let json = format!(
            r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{}"}}}}"#,
            victim.display()
        );
        sh(&[
            "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", &json, d, "1M",
        ]);
        let e = disk(&dl, Format::Raw).expect_err("json backing");
        assert!(
            e.to_string()
                .contains("is not a plain file; it is not read"),
            "{e}"
        );

        let v = victim.to_str().expect("utf-8");
        sh(&[
            "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", v, d, "1M",
        ]);
        sh(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 64k", d]);
        assert_eq!(disk(&dl, Format::Raw).expect("settled"), 1 << 20);
        let raw = std::fs::read(&dl).expect("raw");
        assert_eq!(raw.len(), 1 << 20);
        assert!(raw[..65536].iter().all(|b| *b == 0x42));
        assert!(
            raw[65536..].iter().all(|b| *b == 0),
            "the backing file was read"
        );
    }
}
