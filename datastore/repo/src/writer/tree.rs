//! The snapshot's tree: directories built from the files' absolute paths, saved bottom up.

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
        if !shared.index.has(BlobKind::Tree, &id) && stored.insert(id) {
            pack.add(shared.seal(id, BlobKind::Tree, &json, compressor)?);
        }
        Ok(id)
    }
}
