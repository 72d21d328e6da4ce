//! The transfer manager's in-place `restore` (driver contract §9.2): `onevm restore <vm> <img>
//! [--increment I] [--disk-id D]` on a powered-off VM. Argv `host:vm_dir vm_id img_id inc_id
//! disk_id` (`-1` for none); no stdin. Runs on the front-end:
//!
//! 1. the VM, the backup image and its datastore from oned's API;
//! 2. the backup datastore's own `ls -i <inc>` (raw XML on stdin, as the stock TM calls it)
//!    gives the URL of each disk (and `tpm`);
//! 3. each URL goes through `downloader.sh --nodecomp <url> -` into `ssh <host> dd` as
//!    `<vm_dir>/disk.<id>.backup` (a persistent disk: `<image source>.backup`);
//! 4. only when every download worked, `backstop host-restore` settles each on the host
//!    ([`crate::restore_host`]): a disk's qcow2 is checked (a data file or a `json:` or
//!    protocol backing file is refused before qemu opens it) and made what the disk is
//!    declared to be, the TPM archive is unpacked, regular files under `tpm/` only, into a
//!    fresh `<vm_dir>/tpm.restored`. A download names a file of the host in no way that gets
//!    it opened: whoever can write the repository wrote it;
//! 5. only when every file is settled are they swapped in: a non-persistent disk becomes
//!    `disk.<id>.snap/0` with `disk.<id>` pointing to it, a persistent one replaces its image
//!    file and its snapshot directory is reset; `tpm.restored` becomes `<vm_dir>/tpm`.
//!
//! A Ceph RBD disk (the `ceph` TM) is not a file on the host: its download is written into a
//! new image beside the disk's and swapped in by renaming, once every disk is in
//! ([`crate::ceph_restore`]).
//!
//! The restored files come from a downloader, so they carry no qcow2 bitmaps: the next backup
//! starts a new chain (oned resets LAST_INCREMENT_ID). A failure removes what was downloaded
//! and leaves the VM's disks as they were.

use crate::ceph_restore::RbdRestore;
use crate::{Error, ErrorKind};
use backstop_image::disk_image::Format;
use backstop_protocol::args::TmRestoreArgs;
use backstop_protocol::config::DriverConfig;
use backstop_protocol::message::{Datastore, Image, Vm};
use backstop_protocol::oned::OnedClient;
use backstop_protocol::remote::{Agent, last_line, sh_quote, ssh_command};
use backstop_protocol::xml::Element;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

fn error(message: String) -> Error {
    Error::new(ErrorKind::Input, message)
}

fn parse<T>(
    xml: &str,
    what: &str,
    f: impl Fn(&Element) -> Result<T, backstop_protocol::message::MessageError>,
) -> Result<T, Error> {
    let root = Element::parse(xml).map_err(|e| error(format!("{what}: {e}")))?;
    f(&root).map_err(|e| error(format!("{what}: {e}")))
}

/// One file to bring back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Restored {
    key: String,
    url: String,
    /// Where it is downloaded on the host.
    download: String,
    /// For a persistent disk, its image file.
    source: Option<String>,
    /// The disk's declared format (None for the TPM state). The download is a qcow2 file; a
    /// raw disk gets raw bytes.
    format: Option<Format>,
    /// A Ceph RBD disk: written into a new image, swapped in by renaming.
    rbd: Option<RbdRestore>,
}

pub fn run(args: &TmRestoreArgs, cfg: &DriverConfig) -> Result<(), Error> {
    let oned = OnedClient::from_env()?;
    let vm_xml = oned.document("one.vm.info", args.vm_id)?;
    let image_xml = oned.document("one.image.info", args.image_id)?;
    let vm = parse(&vm_xml, &format!("VM {}", args.vm_id), Vm::from_xml)?;
    let image = parse(
        &image_xml,
        &format!("image {}", args.image_id),
        Image::from_xml,
    )?;
    let ds_id = image
        .datastore_id
        .ok_or_else(|| error(format!("image {} has no DATASTORE_ID", image.id)))?;
    let ds_xml = oned.document("one.datastore.info", ds_id)?;
    let ds = parse(&ds_xml, &format!("datastore {ds_id}"), Datastore::from_xml)?;

    // The backup datastore's ls, as the stock TM calls it.
    let ls = cfg.remotes.join(format!("datastore/{}/ls", ds.ds_mad));
    let inc = args.increment.map_or("-1".to_string(), |i| i.to_string());
    let mut child = Command::new(&ls)
        .args(["-i", &inc])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("cannot run {}", ls.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(
            format!("<DS_DRIVER_ACTION_DATA>{ds_xml}{vm_xml}{image_xml}</DS_DRIVER_ACTION_DATA>")
                .as_bytes(),
        );
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("cannot run {}", ls.display()), e))?;
    if !out.status.success() {
        return Err(error(format!(
            "cannot list backup {}: {}",
            image.id,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let map: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).map_err(|e| {
        error(format!(
            "the ls of datastore {ds_id} printed no JSON map: {e}"
        ))
    })?;

    let vm_dir = args.host_dir.vm_dir.trim_end_matches('/').to_string();
    let mut files = Vec::new();
    for (key, url) in &map {
        if key == "tpm" {
            if args.disk_id.is_none_or(|d| d == 0) {
                files.push(Restored {
                    key: key.clone(),
                    url: url.clone(),
                    download: format!("{vm_dir}/disk.tpm.backup"),
                    source: None,
                    format: None,
                    rbd: None,
                });
            }
            continue;
        }
        let Ok(id) = key.parse::<u32>() else {
            continue;
        };
        if args.disk_id.is_some_and(|d| d != id) {
            continue;
        }
        let disk = vm.disk(id);
        if let Some(d) = disk.filter(|d| crate::ceph::is_rbd(d)) {
            files.push(Restored {
                key: key.clone(),
                url: url.clone(),
                download: format!("{vm_dir}/disk.{id}.backup"),
                source: None,
                format: None,
                rbd: Some(RbdRestore::of(&vm, d)?),
            });
            continue;
        }
        let format = Some(crate::qemu::declared_format(&vm, id)?);
        match disk.filter(|d| d.persistent).and_then(|d| d.source.clone()) {
            Some(source) => files.push(Restored {
                key: key.clone(),
                url: url.clone(),
                download: format!("{source}.backup"),
                source: Some(source),
                format,
                rbd: None,
            }),
            None => files.push(Restored {
                key: key.clone(),
                url: url.clone(),
                download: format!("{vm_dir}/disk.{id}.backup"),
                source: None,
                format,
                rbd: None,
            }),
        }
    }
    if !files.iter().any(|f| f.key != "tpm") {
        return Err(error(match args.disk_id {
            Some(d) => format!("disk {d} is not in backup {}", image.id),
            None => format!("backup {} holds no disks", image.id),
        }));
    }

    let host = &args.host_dir.host;
    let result = (|| {
        for f in &files {
            download(cfg, host, &f.url, &f.download)?;
            if let Some(r) = &f.rbd {
                let size = crate::ceph_restore::downloaded_size(cfg, host, &f.download, r)?;
                remote(cfg, host, &r.import_script(&f.download, size))?;
            }
        }
        remote(
            cfg,
            host,
            &swap_script(&cfg.remote_binary(), &vm_dir, &files),
        )
    })();
    if result.is_err() {
        let cleanup: Vec<String> = files
            .iter()
            .flat_map(|f| {
                [
                    sh_quote(&f.download),
                    sh_quote(&format!("{}.raw", f.download)),
                ]
            })
            .collect();
        let mut script = format!(
            "rm -f {}\nrm -rf {}\n",
            cleanup.join(" "),
            sh_quote(&format!("{vm_dir}/{}", crate::restore_host::TPM_RESTORED))
        );
        for r in files.iter().filter_map(|f| f.rbd.as_ref()) {
            script.push_str(&r.cleanup_line());
        }
        let _ = remote(cfg, host, &script);
    }
    result
}

/// `downloader.sh --nodecomp <url> -` into `ssh <host> dd of=<target>`.
fn download(cfg: &DriverConfig, host: &str, url: &str, target: &str) -> Result<(), Error> {
    let downloader = cfg.remotes.join("datastore/downloader.sh");
    let mut source = Command::new(&downloader)
        .args(["--nodecomp", url, "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("cannot run {}", downloader.display()), e))?;
    let Some(data) = source.stdout.take() else {
        return Err(error("the downloader has no stdout".into()));
    };
    let sink = ssh_command(cfg, host, Agent::NotForwarded)
        .arg(format!(
            "dd of={} bs=64k conv=sparse status=none",
            sh_quote(target)
        ))
        .stdin(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::io("cannot run ssh", e))?;
    let src = source
        .wait_with_output()
        .map_err(|e| Error::io("cannot wait for the downloader", e))?;
    if !src.status.success() {
        return Err(error(format!(
            "cannot download {url}: {}",
            String::from_utf8_lossy(&src.stderr)
                .lines()
                .last()
                .unwrap_or("no message")
        )));
    }
    if !sink.status.success() {
        return Err(error(format!(
            "cannot write {target} on {host}: {}",
            String::from_utf8_lossy(&sink.stderr).trim()
        )));
    }
    Ok(())
}

fn remote(cfg: &DriverConfig, host: &str, script: &str) -> Result<(), Error> {
    let out = ssh_command(cfg, host, Agent::NotForwarded)
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("cannot run ssh", e))?;
    if !out.status.success() {
        // The host step's own line is the last; ssh may say more before it.
        return Err(error(format!(
            "cannot put the restored disks in place on {host}: {}",
            last_line(&String::from_utf8_lossy(&out.stderr))
                .unwrap_or_else(|| format!("ssh exited with {}", out.status))
        )));
    }
    Ok(())
}

/// The shell script that settles the downloaded files with `bin` (backstop on the host) and
/// puts them in place.
fn swap_script(bin: &str, vm_dir: &str, files: &[Restored]) -> String {
    let q = |s: &str| sh_quote(s);
    let mut script = String::from("set -e\n");
    // First every download is checked and becomes what its disk is declared to be, and the
    // TPM state is unpacked beside the old one, before anything is swapped.
    for f in files {
        if f.rbd.is_some() {
            continue;
        }
        match f.format {
            Some(format) => script.push_str(&format!(
                "{bin} host-restore disk {dl} {format} >/dev/null\n",
                bin = q(bin),
                dl = q(&f.download),
            )),
            None if f.key == "tpm" => script.push_str(&format!(
                "{bin} host-restore tpm {dl} {dir}\n",
                bin = q(bin),
                dl = q(&f.download),
                dir = q(vm_dir),
            )),
            None => {}
        }
    }
    for f in files {
        if let Some(r) = &f.rbd {
            script.push_str(&r.swap_lines());
            continue;
        }
        if f.key == "tpm" {
            script.push_str(&format!(
                "rm -rf {tpm}\nmv {restored} {tpm}\nrm -f {dl}\n",
                tpm = q(&format!("{vm_dir}/tpm")),
                restored = q(&format!("{vm_dir}/{}", crate::restore_host::TPM_RESTORED)),
                dl = q(&f.download),
            ));
            continue;
        }
        let disk = format!("{vm_dir}/disk.{}", f.key);
        match &f.source {
            None => {
                let snap = format!("{disk}.snap");
                script.push_str(&format!(
                    "rm -rf {snap}\nmkdir -p {snap}\nmv {dl} {snap}/0\nrm -f {disk}\nln -s {rel} {disk}\nln -s . {snap}/{base}\n",
                    snap = q(&snap),
                    dl = q(&f.download),
                    disk = q(&disk),
                    rel = q(&format!("disk.{}.snap/0", f.key)),
                    base = q(&format!("disk.{}.snap", f.key)),
                ));
            }
            Some(source) => {
                let isnap = format!("{source}.snap");
                let base = isnap.rsplit('/').next().unwrap_or_default().to_string();
                script.push_str(&format!(
                    "rm -rf {isnap}\nmkdir -p {isnap}\nmv {dl} {src}\nln -s {src} {isnap}/0\nln -s . {isnap}/{base}\nrm -f {disk}\nln -s {isnap}/0 {disk}\nrm -rf {dsnap}\n",
                    isnap = q(&isnap),
                    dl = q(&f.download),
                    src = q(source),
                    base = q(&base),
                    disk = q(&disk),
                    dsnap = q(&format!("{disk}.snap")),
                ));
            }
        }
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swap_script_for_each_kind_of_disk() {
        let files = vec![
            Restored {
                key: "0".into(),
                url: "u".into(),
                download: "/d/22/disk.0.backup".into(),
                source: None,
                format: Some(Format::Qcow2),
                rbd: None,
            },
            Restored {
                key: "1".into(),
                url: "u".into(),
                download: "/ds/1/abc.backup".into(),
                source: Some("/ds/1/abc".into()),
                format: Some(Format::Raw),
                rbd: None,
            },
            Restored {
                key: "tpm".into(),
                url: "u".into(),
                download: "/d/22/disk.tpm.backup".into(),
                source: None,
                format: None,
                rbd: None,
            },
        ];
        let s = swap_script("/r/backstop/bin/backstop", "/d/22", &files);
        assert!(s.starts_with("set -e\n"));
        assert!(s.contains("mv /d/22/disk.0.backup /d/22/disk.0.snap/0\n"));
        assert!(s.contains("ln -s disk.0.snap/0 /d/22/disk.0\n"));
        assert!(s.contains("mv /ds/1/abc.backup /ds/1/abc\n"));
        assert!(s.contains("ln -s /ds/1/abc.snap/0 /d/22/disk.1\n"));
        assert!(s.contains("rm -rf /d/22/disk.1.snap\n"));
        assert!(s.contains("rm -rf /d/22/tpm\nmv /d/22/tpm.restored /d/22/tpm\n"));
        assert!(!s.contains("tar "), "{s}");
        // Every file is settled on the host before anything moves; the raw disk gets raw
        // bytes.
        let first_move = s.find("mv /d/22/disk.0.backup").expect("move");
        for step in [
            "/r/backstop/bin/backstop host-restore disk /d/22/disk.0.backup qcow2 >/dev/null\n",
            "/r/backstop/bin/backstop host-restore disk /ds/1/abc.backup raw >/dev/null\n",
            "/r/backstop/bin/backstop host-restore tpm /d/22/disk.tpm.backup /d/22\n",
        ] {
            let at = s.find(step).unwrap_or_else(|| panic!("{step} in {s}"));
            assert!(at < first_move, "{step} comes after a move");
        }
        assert!(!s.contains("qemu-img"), "{s}");
    }
}
