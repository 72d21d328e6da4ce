//! `ls -i <increment>`: the one-line JSON map from disk id (and `tpm`) to backup URL that the
//! TM's in-place `restore` downloads (driver contract §5.8).
//!
//! The files listed are those of the chain's last snapshot (up to the increment asked for).
//! Every backstop snapshot holds complete disks, so the last one is the state wanted; the stock
//! driver lists increment 0's files instead (quirk Q3), which only changes the file name at
//! the end of the URL, not what a downloader fetches.

use crate::config::DriverConfig;
use crate::layout::scheme;
use crate::target::image_repo_id;
use crate::target::open_repo;
use crate::{Error, ErrorKind, vm_snapshots};
use backstop_protocol::args::LsArgs;
use backstop_protocol::message::LsRequest;
use backstop_protocol::url::BackupUrl;

pub fn run(args: &LsArgs, request: &LsRequest, cfg: &DriverConfig) -> Result<String, Error> {
    let image = &request.image;
    let chain = image.chain_until(args.increment);
    let last = chain.last().ok_or_else(|| {
        Error::new(
            ErrorKind::Input,
            format!(
                "image {}: no increment up to {:?}",
                image.id, args.increment
            ),
        )
    })?;
    let ds = &request.datastore;
    let vm_id = vm_snapshots::image_vm_id(image)?;
    let repo = open_repo(ds, image_repo_id(image)?, cfg)?;
    let (_, snap) = vm_snapshots::find(&repo, &last.source, vm_id)?;
    let mut map = serde_json::Map::new();
    for path in &snap.paths {
        let name = path.rsplit('/').next().unwrap_or_default();
        let key = match (crate::layout::stored_disk(name), name) {
            (Some(disk_id), _) => disk_id.to_string(),
            (None, "disk.tpm.0") => "tpm".to_string(),
            _ => continue,
        };
        let url = BackupUrl {
            scheme: scheme(ds).to_string(),
            rbd: image.format.as_deref() == Some("rbd"),
            datastore_id: ds.id,
            job_id: image.backup_job_id,
            chain: chain.clone(),
            path: path.clone(),
        };
        map.insert(key, serde_json::Value::String(url.to_string()));
    }
    if map.is_empty() {
        return Err(Error::new(
            ErrorKind::Repository,
            format!("backup {} does not contain any disks", last.source),
        ));
    }
    serde_json::to_string(&map).map_err(|e| Error::new(ErrorKind::Repository, e.to_string()))
}
