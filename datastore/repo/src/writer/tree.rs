//! The snapshot's tree: directories built from the files' absolute paths, saved bottom up,
//! and the index files that name the new packs.

use super::*;

/// A directory being assembled: files and subdirectories by name (sorted, as restic sorts).
#[derive(Default)]
pub(super) struct DirBuilder {
    files: BTreeMap<String, Node>,
    dirs: BTreeMap<String, DirBuilder>,
}

impl DirBuilder {
    pub(super) fn insert(&mut self, path: &str, node: Node) -> Result<(), Error> {
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let Some((name, dirs)) = parts.split_last() else {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("{path:?} is not a file path"),
            ));
        };
        if parts.contains(&"..") {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("{path:?} must not contain '..'"),
            ));
        }
        let mut dir = self;
        for d in dirs {
            dir = dir.dirs.entry((*d).to_string()).or_default();
        }
        let mut node = node;
        node.name = (*name).to_string();
        if dir.files.insert(node.name.clone(), node).is_some() {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("{path} is given twice"),
            ));
        }
        Ok(())
    }

    /// Serialises the trees bottom-up into `pack`; returns this tree's id.
    pub(super) fn save(
        self,
        time: &str,
        shared: &Shared<'_>,
        pack: &mut PackBuilder,
        compressor: &mut Option<zstd::bulk::Compressor<'static>>,
        stored: &mut HashSet<RepoId>,
    ) -> Result<RepoId, Error> {
        let mut nodes: BTreeMap<String, Node> = self.files;
        for (name, dir) in self.dirs {
            let id = dir.save(time, shared, pack, compressor, stored)?;
            if nodes
                .insert(name.clone(), Node::dir(&name, id, time))
                .is_some()
            {
                return Err(Error::new(
                    ErrorKind::Repository,
                    format!("{name} is both a file and a directory"),
                ));
            }
        }
        let tree = Tree {
            nodes: nodes.into_values().collect(),
        };
        let mut json = serde_json::to_vec(&tree)
            .map_err(|e| Error::new(ErrorKind::Repository, format!("cannot encode a tree: {e}")))?;
        json.push(b'\n');
        let id = RepoId::of(&json);
        if !shared.known.trees.contains_key(&id) && stored.insert(id) {
            pack.add(shared.seal(id, BlobKind::Tree, &json, compressor)?);
        }
        Ok(id)
    }
}

/// Index entries per index file, as restic splits them: a reader never has to take in one
/// huge file (and a file past the size readers accept is never written).
const INDEX_BLOBS_PER_FILE: usize = 50_000;

/// Writes the index entries of `packs`, in files of at most [`INDEX_BLOBS_PER_FILE`] blobs.
pub(crate) fn save_index(repo: &Repo, packs: Vec<IndexPack>) -> Result<(), Error> {
    let mut file = Vec::new();
    let mut blobs = 0;
    for pack in packs {
        blobs += pack.blobs.len();
        file.push(pack);
        if blobs >= INDEX_BLOBS_PER_FILE {
            repo.save_file(
                FileType::Index,
                &IndexFile {
                    packs: std::mem::take(&mut file),
                    ..IndexFile::default()
                },
            )?;
            blobs = 0;
        }
    }
    if !file.is_empty() {
        repo.save_file(
            FileType::Index,
            &IndexFile {
                packs: file,
                ..IndexFile::default()
            },
        )?;
    }
    Ok(())
}
