//! Where a VM's files lie on a host, as OpenNebula lays them out:
//! `<datastores>/<system datastore id>/<vm id>/disk.<n>`.

use std::path::{Path, PathBuf};

/// Where the backing files of a VM's disks may lie: the VM's directory and the datastores'
/// directory above it (each datastore's own directory too, resolved, for datastores mounted
/// elsewhere through a symlink). A backing file anywhere else is refused (see
/// `docs/security.md`).
pub fn backing_roots(vm_dir: &Path) -> Vec<PathBuf> {
    let mut roots = vec![vm_dir.to_path_buf()];
    if let Some(datastores) = vm_dir.parent().and_then(Path::parent) {
        roots.push(datastores.to_path_buf());
        if let Ok(entries) = std::fs::read_dir(datastores) {
            for e in entries.flatten() {
                if let Ok(real) = std::fs::canonicalize(e.path())
                    && real.is_dir()
                {
                    roots.push(real);
                }
            }
        }
    }
    roots
}
