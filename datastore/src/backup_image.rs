//! A backup image at one of its points (an increment, or the last): the snapshot that holds
//! it (authorised by content, see [`crate::vm_snapshots`]), the VM document saved with it, its
//! disks and their backup URLs; and that point written out as files, without oned (the job
//! runner's `image restore`). The `restore` action reads the same selection.

use crate::config::DriverConfig;
use crate::layout::scheme;
use crate::settings::lock_wait;
use crate::target::{image_repo_id, open_repo};
use crate::{Error, ErrorKind};
use backstop_protocol::message::{Datastore, Image};
use backstop_protocol::xml::Element;
use std::collections::BTreeMap;

fn error(message: String) -> Error {
    Error::new(ErrorKind::Repository, message)
}

/// What a restore reads: the selected snapshot of a backup image and the URLs of its files.
pub(crate) struct Selected {
    pub(crate) repo: crate::repo::Repo,
    pub(crate) source: String,
    /// The saved VM document.
    pub(crate) vm: Element,
    /// Its text (the snapshot's vm.xml is base64 of it).
    pub(crate) vm_text: Vec<u8>,
    /// Disk id to its path in the snapshot (only `disk_id` when one was asked for).
    pub(crate) disks: BTreeMap<u32, String>,
    /// The snapshot's TPM state file, if any.
    pub(crate) tpm_path: Option<String>,
    /// `<scheme>://<ds>/<job>/<inc:source,...>`; a file's URL is this plus its path.
    pub(crate) base_url: String,
}

pub(crate) fn select(
    image: &Image,
    ds: &Datastore,
    increment_id: Option<u64>,
    disk_id: Option<u32>,
    cfg: &DriverConfig,
) -> Result<Selected, Error> {
    let chain = image.chain_until(increment_id);
    let Some(selected) = chain.last() else {
        return Err(Error::new(
            ErrorKind::Input,
            match increment_id {
                Some(i) => format!("backup image {} has no increment {i} or earlier", image.id),
                None => format!("backup image {} has no increments", image.id),
            },
        ));
    };
    let source = selected.source.clone();
    let vm_id = crate::vm_snapshots::image_vm_id(image)?;
    let repo = open_repo(ds, image_repo_id(image)?, cfg)?;
    let (_, snap) = crate::vm_snapshots::find(&repo, &source, vm_id)?;
    let vm_path = snap
        .paths
        .iter()
        .find(|p| p.rsplit('/').next() == Some("vm.xml"))
        .ok_or_else(|| error(format!("backup {source} holds no vm.xml")))?;
    let mut bytes = Vec::new();
    repo.dump(&source, vm_path, &mut bytes, lock_wait(ds))?;
    let vm = backstop_protocol::input::decode_siblings(
        &bytes,
        backstop_protocol::input::Encoding::Base64,
    )
    .ok()
    .and_then(|roots| roots.into_iter().find(|r| r.name == "VM"))
    .ok_or_else(|| {
        error(format!(
            "the vm.xml of backup {source} is not a VM document"
        ))
    })?;
    let vm_text = {
        use base64::Engine;
        let trimmed: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&trimmed)
            .unwrap_or(bytes)
    };
    let mut disks = crate::layout::snapshot_disks(&snap.paths);
    if disks.is_empty() {
        return Err(error(format!("backup {source} holds no disks")));
    }
    if let Some(only) = disk_id {
        let path = disks
            .remove(&only)
            .ok_or_else(|| error(format!("backup {source} holds no disk {only}")))?;
        disks = BTreeMap::from([(only, path)]);
    }
    let tpm_path = snap
        .paths
        .iter()
        .find(|p| p.rsplit('/').next() == Some("disk.tpm.0"))
        .cloned();
    let proto = if image.format.as_deref() == Some("rbd") {
        format!("{}+rbd", scheme(ds))
    } else {
        scheme(ds).to_string()
    };
    let links: Vec<String> = chain
        .iter()
        .map(|l| format!("{}:{}", l.increment_id, l.source))
        .collect();
    let base_url = format!(
        "{proto}://{}/{}/{}",
        ds.id,
        image
            .backup_job_id
            .map(|j| j.to_string())
            .unwrap_or_default(),
        links.join(",")
    );
    Ok(Selected {
        repo,
        source,
        vm,
        vm_text,
        disks,
        tpm_path,
        base_url,
    })
}

pub(crate) fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Restores a backup image into files, without oned (the backup-job runner's `image
/// restore`): `disk.<id>.qcow2` per disk (standalone qcow2, as the downloader streams them),
/// `vm.xml` (the saved VM document) and `disk.tpm.0` when the backup has one. Each file is
/// written under a temporary name, synced and renamed, so a failure leaves no partial file
/// under a final name. Returns the files written.
pub fn to_directory(
    image: &Image,
    ds: &Datastore,
    increment_id: Option<u64>,
    disk_id: Option<u32>,
    dir: &std::path::Path,
    cfg: &DriverConfig,
) -> Result<Vec<std::path::PathBuf>, Error> {
    let sel = select(image, ds, increment_id, disk_id, cfg)?;
    let io = |what: &std::path::Path, e| Error::io(format!("cannot write {}", what.display()), e);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    let mut put = |name: &str,
                   fill: &mut dyn FnMut(&mut std::fs::File) -> Result<(), Error>|
     -> Result<(), Error> {
        let dest = dir.join(name);
        let tmp = dir.join(format!(".{name}.partial"));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
            fill(&mut f)?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        written.push(dest);
        Ok(())
    };
    for (id, path) in &sel.disks {
        let text = format!("{}{}", sel.base_url, absolute(path));
        let url = backstop_protocol::url::BackupUrl::parse(&text)
            .map_err(|e| error(format!("backup URL {text}: {e}")))?;
        put(&format!("disk.{id}.qcow2"), &mut |f| {
            crate::disk_source::write_image(&url, ds, cfg, f)
        })?;
    }
    put("vm.xml", &mut |f| {
        use std::io::Write;
        f.write_all(&sel.vm_text)
            .map_err(|e| Error::io("cannot write vm.xml", e))
    })?;
    if let (None, Some(p)) = (disk_id, &sel.tpm_path) {
        put("disk.tpm.0", &mut |f| {
            Ok(sel.repo.dump(&sel.source, p, f, lock_wait(ds))?)
        })?;
    }
    Ok(written)
}
