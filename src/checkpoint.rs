//! A whole LLaVA checkpoint directory as Hugging Face publishes it: `config.json`, safetensors
//! weights (single or sharded), `tokenizer.json` (+ `tokenizer_config.json`, chat template),
//! `preprocessor_config.json`, optional `generation_config.json`; checked for consistency before any
//! weight is uploaded, so a bad file is reported by name and nothing already loaded is disturbed.

use crate::config::LlavaConfig;
use crate::error::{Error, Result};
use crate::text::tokenizer::TextTokenizer;
use crate::vision::preprocess::ImageProcessor;
use crate::weights::{shard_names, FileBytes, WeightStore};

pub struct Checkpoint {
    /// Directory or URL the files came from (for messages).
    pub source: String,
    pub config: LlavaConfig,
    pub weights: WeightStore,
    pub tokenizer: TextTokenizer,
    pub processor: ImageProcessor,
    /// The text that stands for one image in prompts (`image_token` of processor_config.json).
    pub image_token: String,
}

impl Checkpoint {
    /// Assemble and cross-check the parts. `processor_config_json` is the optional
    /// `processor_config.json`; `generation_config_json` the optional `generation_config.json`.
    pub fn from_parts(
        source: &str,
        config: LlavaConfig,
        weights: WeightStore,
        mut tokenizer: TextTokenizer,
        processor: ImageProcessor,
        processor_config_json: Option<&str>,
        generation_config_json: Option<&str>,
    ) -> Result<Self> {
        crate::config::validate::checkpoint_parts(
            source,
            &config,
            processor_config_json,
            generation_config_json,
        )?;
        let image_token = processor_config_json
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| {
                v.get("image_token")
                    .and_then(|s| s.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "<image>".to_string());
        match tokenizer.token_id(&image_token) {
            None => {
                return Err(Error::file(
                    tokenizer.name(),
                    format!("the tokenizer has no {image_token} token, so images cannot be placed in prompts"),
                ))
            }
            Some(id) if id != config.image_token_index => {
                return Err(Error::file(
                    tokenizer.name(),
                    format!(
                        "{image_token} is token {id}, but config.json says image_token_index {}",
                        config.image_token_index
                    ),
                ))
            }
            Some(_) => {}
        }
        let (h, w) = processor.output_size();
        let side = config.vision.image_size;
        if (h, w) != (side, side) {
            return Err(Error::file(
                format!("{source}/preprocessor_config.json"),
                format!("produces {h}x{w} images, but the vision tower expects {side}x{side}"),
            ));
        }
        // EOS ids: the tokenizer's, config.json's and generation_config.json's all end a caption.
        let mut eos = config.text.eos_token_ids.clone();
        if let Some(v) =
            generation_config_json.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        {
            match v.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|n| n as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32))
                }
                _ => {}
            }
        }
        tokenizer.set_extra_eos(&eos);
        Ok(Checkpoint {
            source: source.to_string(),
            config,
            weights,
            tokenizer,
            processor,
            image_token,
        })
    }

    /// Open a checkpoint directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir.display(), "not a checkpoint directory"));
        }
        Self::from_files(&DirFiles(dir.to_path_buf()))
    }

    /// Read a checkpoint from any file source: a directory, or files held in memory (the browser:
    /// downloaded from a URL or picked from a local folder).
    pub fn from_files(files: &dyn CheckpointFiles) -> Result<Self> {
        let read = |name: &str| -> Result<String> {
            let bytes = files
                .read(name)?
                .ok_or_else(|| Error::file(files.path(name), "cannot read: no such file"))?;
            String::from_utf8(bytes).map_err(|_| Error::file(files.path(name), "not UTF-8 text"))
        };
        let optional = |name: &str| -> Option<String> {
            files
                .read(name)
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
        };
        let config = LlavaConfig::from_json(&read("config.json")?, &files.path("config.json"))?;
        let tokenizer = TextTokenizer::from_files(files)?;
        let processor = ImageProcessor::from_json(
            &read("preprocessor_config.json")?,
            &files.path("preprocessor_config.json"),
        )?;
        let weights = files.weights()?;
        Self::from_parts(
            &files.source(),
            config,
            weights,
            tokenizer,
            processor,
            optional("processor_config.json").as_deref(),
            optional("generation_config.json").as_deref(),
        )
    }

    /// Token ids for a literal prompt (containing the image token once per image).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_prompt(prompt, &self.image_token, self.config.num_image_tokens())
    }

    /// The prompt used when the user gives none: the checkpoint's chat template, else LLaVA-1.5's.
    pub fn default_prompt(&self, user_text: &str) -> Result<String> {
        self.tokenizer.chat_prompt(user_text)
    }
}

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

/// A checkpoint's files held in memory, by file name (the browser's downloads or a picked folder).
pub struct MemoryFiles {
    pub source: String,
    pub files: std::collections::BTreeMap<String, std::sync::Arc<Vec<u8>>>,
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
    /// Total bytes held.
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|b| b.len() as u64).sum()
    }
}

impl CheckpointFiles for MemoryFiles {
    fn source(&self) -> String {
        self.source.clone()
    }
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(name).map(|b| b.as_ref().clone()))
    }
    fn weights(&self) -> Result<WeightStore> {
        let names = match self.files.get(INDEX_FILE) {
            Some(index) => {
                let text = std::str::from_utf8(index)
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
            files.push((self.path(&name), bytes.clone() as FileBytes));
        }
        WeightStore::from_files(files)
    }
}

/// The single-file weights name and the shard index name of Hugging Face checkpoints.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
