//! A point of a backup image written out as files.

use super::datastore_of;
use crate::Error;
use crate::error::input;
use crate::runner::Env;
use crate::state::State;
use std::path::PathBuf;

/// Which point of which image to restore, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    pub image: u64,
    /// The directory to write (created if missing).
    pub to: PathBuf,
    /// The increment to restore (default: the latest).
    pub increment: Option<u64>,
    /// Only this disk.
    pub disk_id: Option<u32>,
}

/// The files a restore wrote: `disk.<id>.qcow2` per disk, `vm.xml`, `disk.tpm.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub files: Vec<PathBuf>,
}

/// Restores a backup image into a directory through the datastore driver's own restore.
pub fn restore(env: &Env, st: &State, options: &RestoreOptions) -> Result<Restored, Error> {
    let id = options.image;
    let doc = crate::runner::image_document(st, id)?;
    let root = backstop_protocol::xml::Element::parse(&doc).map_err(|x| input(x.to_string()))?;
    let image = backstop_protocol::message::Image::from_xml(&root)
        .map_err(|x| input(format!("image {id}: {x}")))?;
    let ds_id = st.image(id)?.datastore_id;
    let ds = datastore_of(st, &env.datastore_location, ds_id)?.datastore;
    let cfg = backstop_datastore::config::DriverConfig::load(&env.remotes)?;
    let files = backstop_datastore::backup_image::to_directory(
        &image,
        &ds,
        options.increment,
        options.disk_id,
        &options.to,
        &cfg,
    )
    .map_err(|x| input(format!("image {id}: {x}")))?;
    Ok(Restored { files })
}
