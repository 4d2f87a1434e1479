//! Prompt tokenization, the way Hugging Face transformers' `LlavaProcessor` does it.
//!
//! A [`TextTokenizer`] wraps a `tokenizers` tokenizer (tokenizer.json) plus what transformers reads
//! from tokenizer_config.json: the BOS/EOS tokens, which tokens count as special, the chat template
//! and a few class-specific rules. What it follows:
//! - `encode_prompt`: `LlavaProcessor.__call__` — every `<image>` in the text becomes N copies of
//!   itself, then the text is encoded with `add_special_tokens=True` (BOS from the tokenizer's
//!   post-processor). No truncation or padding (transformers turns both off per call).
//! - Special tokens: `from_pretrained` marks every token the config names (bos, eos, unk, pad, sep,
//!   cls, mask, additional/extra special tokens) as special, so `decode(skip_special_tokens=True)`
//!   drops them even where tokenizer.json does not flag them.
//! - `LlamaTokenizer(Fast)` configs: the post-processor is rebuilt from `add_bos_token` (default
//!   true) and `add_eos_token` (default false), as `LlamaTokenizerFast.update_post_processor` does.
//! - `decode`: `decode(ids, skip_special_tokens=True)`, plus `clean_up_tokenization` when the config
//!   sets `clean_up_tokenization_spaces`.
//! - `chat_prompt`: `processor.apply_chat_template(messages, add_generation_prompt=True)` rendered
//!   with MiniJinja set up like transformers' Jinja environment (trim_blocks, lstrip_blocks, loop
//!   controls, `raise_exception`, a Python-style `tojson`, Python string/dict methods, and
//!   `{% generation %}` blocks rendered as plain text).
//!
//! Everything works from bytes (for the browser); [`TextTokenizer::load`] is the native convenience
//! that reads a checkpoint directory.
//!
//! The rules live in submodules: `config` (tokenizer_config.json: special tokens, BOS/EOS),
//! `pieces` (how ids read as text) and `chat_template` (finding and rendering the template).

use std::fmt;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use crate::files::CheckpointFiles;

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

mod chat_template;
mod config;
mod pieces;

use chat_template::{template_from_config, template_from_files, ChatTemplate};
use config::{
    mark_config_specials, parse_config, parse_tokenizer, rebuild_llama_post_processor,
    sibling_name, special_token, LLAMA_CLASSES,
};
use pieces::{clean_up_tokenization, piece_style, PieceStyle};

/// The prompt used when a checkpoint ships no chat template (llava-1.5 style).
const FALLBACK_PROMPT_PREFIX: &str = "USER: <image>\n";
const FALLBACK_PROMPT_SUFFIX: &str = " ASSISTANT:";

/// A text tokenizer with the prompt, chat-template and decoding rules of a LLaVA processor.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    name: String,
    bos: Option<u32>,
    bos_text: Option<String>,
    eos: Vec<u32>,
    extra_eos: Vec<u32>,
    /// bos/eos/unk/pad token strings, passed to the chat template like `special_tokens_map`.
    template_tokens: Vec<(&'static str, String)>,
    template: Option<ChatTemplate>,
    pieces: PieceStyle,
    clean_up_spaces: bool,
}

impl fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("name", &self.name)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos_ids())
            .field("chat_template", &self.template.is_some())
            .finish()
    }
}

impl TextTokenizer {
    /// Build from the bytes of tokenizer.json and (optionally) tokenizer_config.json.
    ///
    /// `chat_template` overrides the config's `chat_template`; `name` is the tokenizer file name
    /// used in error messages (the config is named as its sibling tokenizer_config.json).
    pub fn from_bytes(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
        chat_template: Option<String>,
        name: &str,
    ) -> Result<Self> {
        let config_name = sibling_name(name, "tokenizer_config.json");
        let config = match tokenizer_config_json {
            Some(bytes) => parse_config(bytes, &config_name)?,
            None => serde_json::Map::new(),
        };
        let template = match chat_template {
            Some(source) => Some((source, format!("chat template for {name}"))),
            None => template_from_config(&config, &config_name)?
                .map(|source| (source, format!("{config_name} (chat_template)"))),
        };
        Self::build(tokenizer_json, (&config, &config_name), template, name)
    }

    /// Read a tokenizer from a checkpoint directory: tokenizer.json (required),
    /// tokenizer_config.json (optional) and the chat template from `chat_template.jinja`,
    /// `chat_template.json` or tokenizer_config.json, in that order.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &Path) -> Result<Self> {
        let files = crate::files::DirFiles(dir.to_path_buf());
        Self::from_files(&files)
    }

    /// Read a tokenizer from any checkpoint file source (a directory, or files held in memory
    /// in the browser), with the same rules as [`TextTokenizer::load`].
    pub fn from_files(files: &dyn CheckpointFiles) -> Result<Self> {
        let name = files.path("tokenizer.json");
        let tokenizer_json = files.read("tokenizer.json")?.ok_or_else(|| {
            Error::file(
                &name,
                "cannot read: no such file (every checkpoint needs tokenizer.json)",
            )
        })?;
        let config_name = files.path("tokenizer_config.json");
        let config = match files.read("tokenizer_config.json")? {
            Some(bytes) => parse_config(&bytes, &config_name)?,
            None => serde_json::Map::new(),
        };
        let template = match template_from_files(files)? {
            Some(found) => Some(found),
            None => template_from_config(&config, &config_name)?
                .map(|source| (source, format!("{config_name} (chat_template)"))),
        };
        Self::build(&tokenizer_json, (&config, &config_name), template, &name)
    }

    /// `config` is the parsed tokenizer_config.json with its name; `template` the chat template
    /// source with its name.
    fn build(
        tokenizer_json: &[u8],
        (config, config_name): (&serde_json::Map<String, Json>, &str),
        template: Option<(String, String)>,
        name: &str,
    ) -> Result<Self> {
        let mut inner = parse_tokenizer(tokenizer_json, name)?;
        // transformers sets truncation and padding per call; a plain call uses neither.
        inner
            .with_truncation(None)
            .map_err(|e| Error::file(name, format!("cannot turn off truncation: {e}")))?;
        inner.with_padding(None);
        mark_config_specials(&mut inner, config, name)?;

        let llama_class = config
            .get("tokenizer_class")
            .and_then(Json::as_str)
            .is_some_and(|class| LLAMA_CLASSES.contains(&class));
        let bos_text = special_token(config, "bos_token", llama_class.then_some("<s>"));
        let eos_text = special_token(config, "eos_token", llama_class.then_some("</s>"));
        if llama_class {
            rebuild_llama_post_processor(&mut inner, config, &bos_text, &eos_text, config_name)?;
        }

        let bos = bos_text.as_deref().and_then(|t| inner.token_to_id(t));
        let eos = eos_text
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        let template_tokens = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|key| {
                let text = match key {
                    "bos_token" => bos_text.clone(),
                    "eos_token" => eos_text.clone(),
                    _ => special_token(config, key, None),
                };
                text.map(|text| (key, text))
            })
            .collect();
        let template = match template {
            Some((source, source_name)) => Some(ChatTemplate::compile(source, source_name)?),
            None => None,
        };
        let pieces = piece_style(&inner);
        let clean_up_spaces = config
            .get("clean_up_tokenization_spaces")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        Ok(Self {
            inner,
            name: name.to_string(),
            bos,
            bos_text,
            eos,
            extra_eos: Vec::new(),
            template_tokens,
            template,
            pieces,
            clean_up_spaces,
        })
    }

    /// The tokenizer file name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The BOS id named by the config, if the vocabulary has it.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The config's EOS id followed by any extra ones from [`set_extra_eos`](Self::set_extra_eos),
    /// without duplicates.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.eos.clone();
        for id in &self.extra_eos {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        ids
    }

    /// Add EOS ids from the model config / generation_config (replaces earlier extra ids).
    pub fn set_extra_eos(&mut self, ids: &[u32]) {
        self.extra_eos = ids.to_vec();
    }

    /// The id of a token (model vocabulary or added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the tokenizer has a chat template (otherwise `chat_prompt` uses the llava-1.5 form).
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// A readable form of one token: "▁cat" and "Ġcat" become " cat", `<0x0A>` becomes "\n".
    /// Bytes that are not valid UTF-8 on their own are shown as `<0xHH>`; an id outside the
    /// vocabulary as `<id N?>`.
    pub fn token_text(&self, id: u32) -> String {
        let Some(token) = self.inner.id_to_token(id) else {
            return format!("<id {id}?>");
        };
        if self.is_added_token(id) {
            return token;
        }
        self.pieces.piece_text(&token)
    }

    /// Decode ids to text, skipping special tokens (transformers' `skip_special_tokens=True`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| Error::file(&self.name, format!("cannot decode ids: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Token ids for plain text with the tokenizer's special tokens (transformers' `tokenizer(text)`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::file(&self.name, format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids for a prompt, the way `LlavaProcessor` makes them: each `image_token` in the text
    /// is replaced by `num_image_tokens` copies, then the text is encoded with special tokens.
    ///
    /// One deliberate difference from a bare processor call: if the text already starts with the
    /// BOS token (a chat template that writes `bos_token`), BOS is not added a second time — what
    /// `apply_chat_template(..., tokenize=True)` does.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        image_token: &str,
        num_image_tokens: usize,
    ) -> Result<Vec<u32>> {
        let image_id = self.image_token_id(image_token)?;
        let occurrences = prompt.matches(image_token).count();
        if occurrences == 0 {
            return Err(Error::invalid(format!(
                "the prompt has no image token `{image_token}`; put it where the image goes, e.g. \
                 `USER: {image_token}\\nDescribe the image. ASSISTANT:`"
            )));
        }
        if num_image_tokens == 0 {
            return Err(Error::invalid(
                "the number of image tokens must be at least 1",
            ));
        }
        let expanded = prompt.replace(image_token, &image_token.repeat(num_image_tokens));
        let starts_with_bos = self
            .bos_text
            .as_deref()
            .is_some_and(|bos| expanded.starts_with(bos));
        let encoding = self
            .inner
            .encode(expanded.as_str(), !starts_with_bos)
            .map_err(|e| Error::file(&self.name, format!("cannot encode the prompt: {e}")))?;
        let ids = encoding.get_ids().to_vec();
        // Like the processor's `_check_special_mm_tokens`: every copy must stay one token.
        let found = ids.iter().filter(|&&id| id == image_id).count();
        let expected = occurrences * num_image_tokens;
        if found != expected {
            return Err(Error::file(
                &self.name,
                format!(
                    "the image token `{image_token}` does not encode as one token: expected \
                     {expected} copies of id {image_id}, found {found}"
                ),
            ));
        }
        Ok(ids)
    }

    /// The prompt text for one image and one user message, rendered with the chat template
    /// (`add_generation_prompt=True`); without a template, `USER: <image>\n{user_text} ASSISTANT:`.
    pub fn chat_prompt(&self, user_text: &str) -> Result<String> {
        let Some(chat) = &self.template else {
            return Ok(format!(
                "{FALLBACK_PROMPT_PREFIX}{user_text}{FALLBACK_PROMPT_SUFFIX}"
            ));
        };
        chat.render(user_text, &self.template_tokens)
    }

    /// True when both tokenizers map the same strings to the same ids, have the same added
    /// tokens (with the same flags) and the same BOS/EOS ids.
    pub fn same_vocabulary(&self, other: &TextTokenizer) -> bool {
        self.bos == other.bos
            && self.eos_ids() == other.eos_ids()
            && self.vocab_size() == other.vocab_size()
            && self.inner.get_added_tokens_decoder() == other.inner.get_added_tokens_decoder()
            && self.inner.get_vocab(true) == other.inner.get_vocab(true)
    }

    fn image_token_id(&self, image_token: &str) -> Result<u32> {
        let id = self.inner.token_to_id(image_token).ok_or_else(|| {
            Error::file(
                &self.name,
                format!(
                    "the image token `{image_token}` is not in the vocabulary (a LLaVA tokenizer \
                     adds it as a special token)"
                ),
            )
        })?;
        Ok(id)
    }

    fn is_added_token(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TextTokenizer>();
    }
}
