//! Where a checkpoint's files come from: a directory on disk (weights memory-mapped), or files by
//! name, each held in memory or read on demand (the browser: small files downloaded, weights read a
//! tensor at a time from a picked file, the origin-private file system, or HTTP ranges). Everything above reads a checkpoint
//! through [`CheckpointFiles`], so the same loading code serves the CLI and the page.

use crate::error::{Error, Result};
use crate::weights::{shard_names, FileBytes, WeightStore};

/// Where a checkpoint's files come from. `read` answers `Ok(None)` for a file that is absent
/// (optional files may be); `path` names a file in messages.
pub trait CheckpointFiles {
    /// The directory or URL, for messages.
    fn source(&self) -> String;
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.source().trim_end_matches('/'))
    }
    /// The safetensors weights (single file or the shards of `model.safetensors.index.json`).
    fn weights(&self) -> Result<WeightStore>;
}

/// A checkpoint directory on disk (weights memory-mapped).
#[cfg(not(target_arch = "wasm32"))]
pub struct DirFiles(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl CheckpointFiles for DirFiles {
    fn source(&self) -> String {
        self.0.display().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.0.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::file(path.display(), format!("cannot read: {e}"))),
        }
    }
    fn weights(&self) -> Result<WeightStore> {
        WeightStore::open_dir(&self.0)
    }
}

/// A checkpoint's files by file name, each in memory or read on demand ([`WeightFile`]).
pub struct MemoryFiles {
    pub source: String,
    pub files: std::collections::BTreeMap<String, FileBytes>,
}

impl MemoryFiles {
    pub fn new(source: &str) -> Self {
        MemoryFiles {
            source: source.to_string(),
            files: Default::default(),
        }
    }
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.files
            .insert(name.to_string(), std::sync::Arc::new(bytes));
    }
    /// A file read on demand (a tensor at a time).
    pub fn insert_file(&mut self, name: &str, file: FileBytes) {
        self.files.insert(name.to_string(), file);
    }
    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|b| b.len()).sum()
    }
}

impl CheckpointFiles for MemoryFiles {
    fn source(&self) -> String {
        self.source.clone()
    }
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.files.get(name) {
            None => Ok(None),
            Some(f) => f
                .read(0, f.len())
                .map(|b| Some(b.into_owned()))
                .map_err(|e| Error::file(self.path(name), format!("cannot read: {e}"))),
        }
    }
    fn weights(&self) -> Result<WeightStore> {
        let names = match self.files.get(INDEX_FILE) {
            Some(_) => {
                let index = self.read(INDEX_FILE)?.unwrap_or_default();
                let text = std::str::from_utf8(&index)
                    .map_err(|_| Error::file(self.path(INDEX_FILE), "not UTF-8 text"))?;
                shard_names(text, &self.path(INDEX_FILE))?
            }
            None => vec![WEIGHTS_FILE.to_string()],
        };
        let mut files = Vec::new();
        for name in names {
            let bytes = self.files.get(&name).ok_or_else(|| {
                Error::file(
                    self.path(&name),
                    "cannot read: no such file (named by the shard index)",
                )
            })?;
            files.push((self.path(&name), bytes.clone()));
        }
        WeightStore::from_files(files)
    }
}

/// The single-file weights name and the shard index name of Hugging Face checkpoints.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
