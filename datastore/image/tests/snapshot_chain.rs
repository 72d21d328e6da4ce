//! A disk with OpenNebula qcow2 disk snapshots, laid out as the `local` TM's snap_create
//! (OpenNebula 7.4) makes it: `disk.0 -> disk.0.snap/2`, each overlay backed by the one before
//! under its bare name (`2` by `1`, `1` by `0`). qemu, given `disk.0`, looks for `1` beside the
//! link and finds nothing; the chain is the snapshot directory's. The shared TM's layout
//! (`disk.0.snap/0` as the name, a `disk.0.snap/disk.0.snap -> .` link) resolves as qemu does.

use backstop_image::disk_image::{Backing, Format, inspect};
use std::path::Path;
use std::process::Command;

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `count` qcow2 files in `snaps`, each backed by the one before under `name(k)`.
fn chain(snaps: &Path, count: u32, name: impl Fn(u32) -> String) {
    run(
        snaps,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "0", "16M"],
    );
    for k in 1..count {
        let backing = name(k - 1);
        let file = k.to_string();
        run(
            snaps,
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "backing_fmt=qcow2",
                "-b",
                &backing,
                &file,
            ],
        );
    }
}

fn layers(vm: &Path) -> Vec<std::path::PathBuf> {
    let roots = [vm.to_path_buf()];
    inspect(&vm.join("disk.0"), Format::Qcow2, Backing::Within(&roots))
        .expect("the chain of a disk with snapshots")
        .layers
        .iter()
        .map(|l| l.path.clone())
        .collect()
}

#[test]
fn a_local_tm_disk_with_snapshots_is_read_through_its_snapshot_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vm = tmp.path().join("vm");
    let snaps = vm.join("disk.0.snap");
    std::fs::create_dir_all(&snaps).expect("snap dir");
    chain(&snaps, 3, |k| k.to_string());
    std::os::unix::fs::symlink("disk.0.snap/2", vm.join("disk.0")).expect("link");
    let real = std::fs::canonicalize(&snaps).expect("canonical");
    // The first step needs the snapshot directory; the second resolves where qemu looks.
    assert_eq!(
        layers(&vm),
        [real.join("2"), real.join("1"), real.join("0")]
    );

    // Still confined: a bare relative name that leads out of the VM's directory is refused by
    // the roots check, not by a missing file.
    let stray = tmp.path().join("stray.qcow2");
    run(
        tmp.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "stray.qcow2", "16M"],
    );
    assert!(stray.is_file());
    run(
        &snaps,
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "../../stray.qcow2",
            "1",
        ],
    );
    let roots = [vm.clone()];
    let err = inspect(&vm.join("disk.0"), Format::Qcow2, Backing::Within(&roots))
        .expect_err("a backing file outside the VM's directory");
    assert!(
        err.to_string()
            .contains("is outside the VM's and the datastores' directories"),
        "{err}"
    );
}

#[test]
fn a_shared_tm_disk_with_snapshots_resolves_where_qemu_looks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vm = tmp.path().join("vm");
    let snaps = vm.join("disk.0.snap");
    std::fs::create_dir_all(&snaps).expect("snap dir");
    std::os::unix::fs::symlink(".", snaps.join("disk.0.snap")).expect("self link");
    chain(&snaps, 2, |k| format!("disk.0.snap/{k}"));
    std::os::unix::fs::symlink("disk.0.snap/1", vm.join("disk.0")).expect("link");
    let real = std::fs::canonicalize(&snaps).expect("canonical");
    assert_eq!(layers(&vm), [real.join("1"), real.join("0")]);
}
