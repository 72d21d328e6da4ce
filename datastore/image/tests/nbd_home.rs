//! qemu-nbd exports under a long home directory: the owner record goes under `$HOME` (private),
//! the socket under the temporary directory, since a unix socket's path has at most 107 bytes
//! (oneadmin's home is /var/lib/one: a socket under ~/.local/state/backstop/nbd/<machine>/...
//! did not fit). A test binary of its own: it sets HOME for the whole process.

use backstop_image::disk_image::{Backing, Format, inspect};
use backstop_image::image::ImageSource;
use backstop_image::nbd::{NbdImage, exports_dir};
use std::process::Command;

#[test]
fn an_export_works_under_a_long_home_and_keeps_its_record_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `std::env::set_var` is unsafe in edition 2024 and the workspace forbids unsafe code: the
    // test runs itself again with HOME set.
    let Some(home) = std::env::var_os("BACKSTOP_TEST_HOME").map(std::path::PathBuf::from) else {
        let home = dir
            .path()
            .join("a-home-directory-as-long-as-some-operators-make-them/var/lib/one");
        std::fs::create_dir_all(&home).expect("home");
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "an_export_works_under_a_long_home_and_keeps_its_record_there",
            ])
            .env("HOME", &home)
            .env("BACKSTOP_TEST_HOME", &home)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .expect("run again");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    let disk = dir.path().join("disk.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("4M")
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let ok = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 64K"])
        .arg(&disk)
        .output()
        .expect("qemu-io");
    assert!(ok.status.success(), "{ok:?}");
    let image = inspect(&disk, Format::Qcow2, Backing::Refused).expect("inspect");
    let exports = exports_dir().expect("exports dir");
    assert!(exports.starts_with(&home), "{}", exports.display());
    let nbd = NbdImage::open(&image, None, true).expect("export under a long home");
    let mut buf = vec![0u8; 65536];
    nbd.read_at(&mut buf, 1 << 20).expect("read");
    assert!(buf.iter().all(|b| *b == 0x5a));
    // The record is in the private directory while the export lives, and gone after.
    let records = || std::fs::read_dir(&exports).map(|d| d.count()).unwrap_or(0);
    assert_eq!(records(), 1);
    drop(nbd);
    assert_eq!(records(), 0);
}
