//! A whole LLaVA checkpoint directory as Hugging Face publishes it: `config.json`, safetensors
//! weights (single or sharded), `tokenizer.json` (+ `tokenizer_config.json`, chat template),
//! the image processor config, optional `generation_config.json`; checked for consistency before
//! any weight is uploaded, so a bad file is reported by name and nothing already loaded is disturbed.
//!
//! The image processor config is `preprocessor_config.json` (transformers 4.x) or, when that file is
//! absent, the `image_processor` object of `processor_config.json` (what transformers 5.x saves).

use crate::config::LlavaConfig;
use crate::error::{Error, Result};
use crate::files::CheckpointFiles;
#[cfg(not(target_arch = "wasm32"))]
use crate::files::DirFiles;
use crate::text::tokenizer::TextTokenizer;
use crate::vision::preprocess::ImageProcessor;
use crate::weights::WeightStore;

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
    /// Assemble and cross-check the parts. `processor_file` names the file `processor` was read
    /// from (for messages); `processor_config_json` is the optional `processor_config.json`;
    /// `generation_config_json` the optional `generation_config.json`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        source: &str,
        config: LlavaConfig,
        weights: WeightStore,
        mut tokenizer: TextTokenizer,
        processor: ImageProcessor,
        processor_file: &str,
        processor_config_json: Option<&str>,
        generation_config_json: Option<&str>,
    ) -> Result<Self> {
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
                processor_file,
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
        let processor_config = optional("processor_config.json");
        let (processor_json, processor_file) = if files.read("preprocessor_config.json")?.is_some()
        {
            (
                read("preprocessor_config.json")?,
                files.path("preprocessor_config.json"),
            )
        } else {
            match processor_config.as_deref().and_then(nested_image_processor) {
                Some(json) => (
                    json,
                    format!("{} (image_processor)", files.path("processor_config.json")),
                ),
                None => return Err(Error::file(
                    files.path("preprocessor_config.json"),
                    "cannot read: no such file, and processor_config.json has no image_processor",
                )),
            }
        };
        let processor = ImageProcessor::from_json(&processor_json, &processor_file)?;
        let weights = files.weights()?;
        Self::from_parts(
            &files.source(),
            config,
            weights,
            tokenizer,
            processor,
            &processor_file,
            processor_config.as_deref(),
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

/// The `image_processor` object of a processor_config.json (transformers 5.x nests the image
/// processor there instead of writing preprocessor_config.json), as JSON text.
fn nested_image_processor(processor_config_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(processor_config_json).ok()?;
    v.get("image_processor")
        .filter(|p| p.is_object())
        .map(|p| p.to_string())
}
