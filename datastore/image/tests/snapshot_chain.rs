//! A disk with OpenNebula qcow2 disk snapshots, laid out as the local/shared/qcow2 TM's
//! snap_create makes it: `disk.0 -> disk.0.snap/1`, the overlay `1` backed by `0` (a name
//! relative to the snapshot directory). qemu, given `disk.0`, looks for `0` beside the link and
//! finds nothing; the chain is the snapshot directory's.

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

#[test]
fn a_disk_with_snapshots_is_read_through_its_snapshot_directory() {
    let vm = tempfile::tempdir().expect("tempdir");
    let snaps = vm.path().join("disk.0.snap");
    std::fs::create_dir(&snaps).expect("snap dir");
    run(
        &snaps,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "0", "16M"],
    );
    run(
        &snaps,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "backing_fmt=qcow2",
            "-b",
            "0",
            "1",
        ],
    );
    std::os::unix::fs::symlink("disk.0.snap/1", vm.path().join("disk.0")).expect("link");

    let roots = [vm.path().to_path_buf()];
    let image = inspect(
        &vm.path().join("disk.0"),
        Format::Qcow2,
        Backing::Within(&roots),
    )
    .expect("the chain of a disk with snapshots");
    let real = std::fs::canonicalize(&snaps).expect("canonical");
    let layers: Vec<_> = image.layers.iter().map(|l| l.path.clone()).collect();
    assert_eq!(layers, [real.join("1"), real.join("0")]);

    // Still confined: a relative name that leads out of the VM's directory is refused.
    let name = format!(
        "{}-outside",
        vm.path().file_name().expect("name").to_string_lossy()
    );
    let relative = format!("../../{name}");
    run(
        &snaps,
        "qemu-img",
        &[
            "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", &relative, "1",
        ],
    );
    let outside = vm.path().parent().expect("parent").join(&name);
    run(
        vm.path(),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            outside.to_str().expect("utf-8"),
            "16M",
        ],
    );
    let err = inspect(
        &vm.path().join("disk.0"),
        Format::Qcow2,
        Backing::Within(&roots),
    )
    .expect_err("a backing file outside the VM's directory");
    let _ = std::fs::remove_file(&outside);
    assert!(err.to_string().contains("outside"), "{err}");
}
