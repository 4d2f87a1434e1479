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

use std::collections::HashSet;
use std::fmt;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use crate::files::CheckpointFiles;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// Name under which the chat template is stored in the MiniJinja environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The prompt used when a checkpoint ships no chat template (llava-1.5 style).
const FALLBACK_PROMPT_PREFIX: &str = "USER: <image>\n";
const FALLBACK_PROMPT_SUFFIX: &str = " ASSISTANT:";

/// Tokenizer config keys whose values transformers treats as special tokens.
const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Tokenizer classes whose post-processor transformers rebuilds from add_bos/add_eos_token.
const LLAMA_CLASSES: [&str; 2] = ["LlamaTokenizer", "LlamaTokenizerFast"];

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

/// A compiled chat template and the file it came from (for error messages).
#[derive(Clone)]
struct ChatTemplate {
    env: Environment<'static>,
    source_name: String,
}

/// How vocabulary entries spell text, for [`TextTokenizer::token_text`].
#[derive(Clone, Copy, Debug, PartialEq)]
struct PieceStyle {
    /// GPT-2 byte-level alphabet ("Ġ" is a space).
    byte_level: bool,
    /// `<0xHH>` tokens stand for single bytes.
    byte_fallback: bool,
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
            Some((source, source_name)) => Some(ChatTemplate {
                env: compile_template(source, &source_name)?,
                source_name,
            }),
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
        if self.pieces.byte_level {
            return bytes_text(&byte_level_bytes(&token));
        }
        if self.pieces.byte_fallback {
            if let Some(byte) = parse_byte_token(&token) {
                return bytes_text(&[byte]);
            }
        }
        token.replace('\u{2581}', " ")
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
        let template = chat
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&chat.source_name, &e))?;
        let image = Value::from_iter([("type", Value::from("image"))]);
        let text = Value::from_iter([("type", "text"), ("text", user_text)]);
        let message = Value::from_iter([
            ("role", Value::from("user")),
            ("content", Value::from(vec![image, text])),
        ]);
        let mut context: Vec<(&str, Value)> = vec![
            ("messages", Value::from(vec![message])),
            ("add_generation_prompt", Value::from(true)),
        ];
        for (key, text) in &self.template_tokens {
            context.push((key, Value::from(text.as_str())));
        }
        template
            .render(Value::from_iter(context))
            .map_err(|e| template_error(&chat.source_name, &e))
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

/// A render error, named by the template's source, with MiniJinja's cause chain.
fn template_error(source_name: &str, err: &minijinja::Error) -> Error {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        msg.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::file(source_name, msg)
}

/// `dir/tokenizer.json` -> `dir/tokenizer_config.json`; other names get the sibling in brackets.
fn sibling_name(name: &str, sibling: &str) -> String {
    match name.strip_suffix("tokenizer.json") {
        Some(dir) => format!("{dir}{sibling}"),
        None => format!("{sibling} (beside {name})"),
    }
}

fn parse_tokenizer(bytes: &[u8], name: &str) -> Result<Tokenizer> {
    // Parse as plain JSON first so that broken JSON and "JSON but not a tokenizer" read differently.
    let json: Json = serde_json::from_slice(bytes)
        .map_err(|e| Error::file(name, format!("not valid JSON: {e}")))?;
    if !json.is_object() || json.get("model").is_none() {
        return Err(Error::file(
            name,
            "not a Hugging Face tokenizer (tokenizer.json has a \"model\" object)",
        ));
    }
    Tokenizer::from_bytes(bytes)
        .map_err(|e| Error::file(name, format!("not a tokenizer this version can read: {e}")))
}

fn parse_config(bytes: &[u8], name: &str) -> Result<serde_json::Map<String, Json>> {
    match serde_json::from_slice::<Json>(bytes) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(Error::file(name, "expected a JSON object")),
        Err(e) => Err(Error::file(name, format!("not valid JSON: {e}"))),
    }
}

/// The chat template from `chat_template.jinja` or `chat_template.json`, with its file name.
fn template_from_files(files: &dyn CheckpointFiles) -> Result<Option<(String, String)>> {
    if let Some(bytes) = files.read("chat_template.jinja")? {
        let name = files.path("chat_template.jinja");
        let source =
            String::from_utf8(bytes).map_err(|_| Error::file(&name, "not valid UTF-8 text"))?;
        return Ok(Some((source, name)));
    }
    let Some(bytes) = files.read("chat_template.json")? else {
        return Ok(None);
    };
    let name = files.path("chat_template.json");
    let map = parse_config(&bytes, &name)?;
    match template_from_config(&map, &name)? {
        Some(source) => Ok(Some((source, name))),
        None => Err(Error::file(&name, "has no \"chat_template\" entry")),
    }
}

/// `chat_template` as a string, or a list of `{name, template}` of which "default" is used.
fn template_from_config(
    config: &serde_json::Map<String, Json>,
    name: &str,
) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(source)) => Ok(Some(source.clone())),
        Some(Json::Array(list)) => {
            let default = list
                .iter()
                .find(|entry| entry.get("name").and_then(Json::as_str) == Some("default"));
            match default
                .and_then(|entry| entry.get("template"))
                .and_then(Json::as_str)
            {
                Some(source) => Ok(Some(source.to_string())),
                None => Err(Error::file(
                    name,
                    "chat_template is a list of named templates without a \"default\" one",
                )),
            }
        }
        Some(_) => Err(Error::file(
            name,
            "chat_template must be a string or a list of {name, template}",
        )),
    }
}

/// A special token named by the config: a string or an AddedToken dict `{"content": ...}`.
/// `default` applies only when the key is absent (an explicit null means "none").
fn special_token(
    config: &serde_json::Map<String, Json>,
    key: &str,
    default: Option<&str>,
) -> Option<String> {
    match config.get(key) {
        None => default.map(str::to_string),
        Some(value) => token_content(value),
    }
}

fn token_content(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(map) => map
            .get("content")
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Every token string the config declares special (transformers' `all_special_tokens`).
fn config_special_tokens(config: &serde_json::Map<String, Json>) -> Vec<String> {
    let mut tokens: Vec<String> = SPECIAL_TOKEN_KEYS
        .iter()
        .filter_map(|key| config.get(*key).and_then(token_content))
        .collect();
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        match config.get(key) {
            Some(Json::Array(list)) => tokens.extend(list.iter().filter_map(token_content)),
            // transformers 4.5x writes extra_special_tokens as {"image_token": "<image>", ...}
            Some(Json::Object(map)) => tokens.extend(map.values().filter_map(token_content)),
            _ => {}
        }
    }
    tokens
}

/// Mark the config's special tokens as special in the tokenizer, as `from_pretrained` does, so
/// decoding skips them. Tokens missing from the vocabulary are left out (transformers would append
/// new ids that no checkpoint's embedding matrix has).
fn mark_config_specials(
    inner: &mut Tokenizer,
    config: &serde_json::Map<String, Json>,
    name: &str,
) -> Result<()> {
    let added = inner.get_added_tokens_decoder();
    let mut seen = HashSet::new();
    let mut to_mark = Vec::new();
    for content in config_special_tokens(config) {
        if !seen.insert(content.clone()) {
            continue;
        }
        let Some(id) = inner.token_to_id(&content) else {
            continue;
        };
        let token = match added.get(&id) {
            Some(existing) if existing.special => continue,
            Some(existing) => AddedToken {
                special: true,
                ..existing.clone()
            },
            None => AddedToken::from(content, true),
        };
        to_mark.push(token);
    }
    if !to_mark.is_empty() {
        inner
            .add_special_tokens(to_mark)
            .map_err(|e| Error::file(name, format!("cannot register special tokens: {e}")))?;
    }
    Ok(())
}

/// `LlamaTokenizerFast.update_post_processor`: `[bos] $A [eos]` from add_bos_token/add_eos_token.
fn rebuild_llama_post_processor(
    inner: &mut Tokenizer,
    config: &serde_json::Map<String, Json>,
    bos: &Option<String>,
    eos: &Option<String>,
    config_name: &str,
) -> Result<()> {
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Json::as_bool).unwrap_or(default);
    let add_bos = flag("add_bos_token", true);
    let add_eos = flag("add_eos_token", false);
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = serde_json::Map::new();
    let mut special = |slot: &str, text: &Option<String>, type_id: u32, out: &mut Vec<Json>| {
        let text = text.as_deref().ok_or_else(|| {
            Error::file(
                config_name,
                format!("add_{slot} is true but the config has no {slot}"),
            )
        })?;
        let id = inner.token_to_id(text).ok_or_else(|| {
            Error::file(
                config_name,
                format!("{slot} `{text}` is not in the vocabulary"),
            )
        })?;
        specials.insert(
            text.to_string(),
            serde_json::json!({"id": text, "ids": [id], "tokens": [text]}),
        );
        out.push(serde_json::json!({"SpecialToken": {"id": text, "type_id": type_id}}));
        Ok::<(), Error>(())
    };
    for (sequence, type_id, out) in [("A", 0u32, &mut single), ("B", 1u32, &mut pair)] {
        if add_bos {
            special("bos_token", bos, type_id, out)?;
        }
        out.push(serde_json::json!({"Sequence": {"id": sequence, "type_id": type_id}}));
        if add_eos {
            special("eos_token", eos, type_id, out)?;
        }
    }
    let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
    let processor = serde_json::json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    });
    let processor: tokenizers::PostProcessorWrapper =
        serde_json::from_value(processor).map_err(|e| {
            Error::file(
                config_name,
                format!("cannot build the BOS/EOS template: {e}"),
            )
        })?;
    inner.with_post_processor(Some(processor));
    Ok(())
}

/// Which spelling the vocabulary uses, read from the decoder's component types.
fn piece_style(inner: &Tokenizer) -> PieceStyle {
    let decoder = inner
        .get_decoder()
        .and_then(|d| serde_json::to_value(d).ok())
        .unwrap_or(Json::Null);
    let mut types = Vec::new();
    collect_types(&decoder, &mut types);
    PieceStyle {
        byte_level: types.iter().any(|t| t == "ByteLevel"),
        byte_fallback: types.iter().any(|t| t == "ByteFallback"),
    }
}

fn collect_types(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if let Some(kind) = map.get("type").and_then(Json::as_str) {
                out.push(kind.to_string());
            }
            map.values().for_each(|v| collect_types(v, out));
        }
        Json::Array(list) => list.iter().for_each(|v| collect_types(v, out)),
        _ => {}
    }
}

/// `<0x0A>` -> 0x0A.
fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Text for raw bytes: valid UTF-8 as is, the rest as `<0xHH>`.
fn bytes_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("<0x{byte:02X}>"));
        }
    }
    out
}

/// GPT-2's byte-level alphabet, inverted: each char of a token stands for one byte (a char
/// outside the alphabet is kept as its own UTF-8).
fn byte_level_bytes(token: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(token.len());
    for c in token.chars() {
        match byte_level_byte(c) {
            Some(byte) => bytes.push(byte),
            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bytes
}

fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let code = c as u32;
    if code < 256 && printable(code) {
        return u8::try_from(code).ok();
    }
    // The other 68 bytes are numbered 256.. in byte order.
    let index = code.checked_sub(256)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(usize::try_from(index).ok()?)
        .and_then(|b| u8::try_from(b).ok())
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |acc, (from, to)| acc.replace(from, to))
}

/// A MiniJinja environment that renders templates like transformers' ImmutableSandboxedEnvironment.
fn compile_template(source: String, source_name: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", python_tojson);
    env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source))
        .map_err(|e| {
            Error::file(
                source_name,
                format!("does not compile as a Jinja template: {e}"),
            )
        })?;
    Ok(env)
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `{% generation %}...{% endgeneration %}` (an extension that only records
/// offsets) becomes `{% if true %}...{% endif %}`, keeping any `-`/`+` whitespace modifiers.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match rewrite_tag(tag) {
            Some((replacement, used)) => {
                out.push_str(&replacement);
                rest = &tag[used..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with a generation/endgeneration tag, its replacement and byte length.
fn rewrite_tag(tag: &str) -> Option<(String, usize)> {
    let end = tag.find("%}")?;
    let inner = &tag[2..end];
    let (open, body) = split_modifier_start(inner);
    let (body, close) = split_modifier_end(body);
    let keyword = match body.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    Some((format!("{{%{open} {keyword} {close}%}}"), end + 2))
}

fn split_modifier_start(s: &str) -> (&str, &str) {
    match s.chars().next() {
        Some(c @ ('-' | '+')) => s.split_at(c.len_utf8()),
        _ => ("", s),
    }
}

fn split_modifier_end(s: &str) -> (&str, &str) {
    match s.chars().last() {
        Some('-' | '+') => s.split_at(s.len() - 1),
        _ => (s, ""),
    }
}

/// transformers' `tojson`: Python `json.dumps` (", " and ": " separators, no HTML escaping,
/// `ensure_ascii=False`), with the `indent`, `sort_keys` and `ensure_ascii` options.
fn python_tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let options = JsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&value, &options, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(
    value: &Value,
    style: &JsonStyle,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(value)),
        ValueKind::String => out.push_str(&json_string(value.as_str().unwrap_or(""), style)),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            let items = keys
                .into_iter()
                .map(|key| {
                    let item = value.get_item(&key)?;
                    Ok((key, item))
                })
                .collect::<std::result::Result<Vec<_>, minijinja::Error>>()?;
            write_container(out, style, depth, ('{', '}'), &items, |(key, item), out| {
                out.push_str(&json_string(&key.to_string(), style));
                out.push_str(": ");
                write_json(item, style, depth + 1, out)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, style, depth, ('[', ']'), &items, |item, out| {
                write_json(item, style, depth + 1, out)
            })?;
        }
        _ => out.push_str(&json_string(&value.to_string(), style)),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    style: &JsonStyle,
    depth: usize,
    (open, close): (char, char),
    items: &[T],
    mut write_item: impl FnMut(&T, &mut String) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if style.indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        write_item(item, out)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 => format!("{x:.1}"),
        Ok(x) if x.is_nan() => "NaN".to_string(),
        Ok(x) if x.is_infinite() => if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string(),
        Ok(x) => x.to_string(),
        Err(_) => value.to_string(),
    }
}

fn json_string(s: &str, style: &JsonStyle) -> String {
    let escaped = serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    if !style.ensure_ascii {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_if_blocks_with_their_modifiers() {
        let src = "a{% generation %}b{%- endgeneration -%} c {%+generation%}{% if x %}{% endif %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "a{% if true %}b{%- endif -%} c {%+ if true %}{% if x %}{% endif %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% generations %}"),
            "{% generations %}"
        );
        assert_eq!(rewrite_generation_tags("x {% y"), "x {% y");
    }

    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        // GPT-2's table: "Ġ" (U+0120) is the space, "Ċ" (U+010A) the newline.
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_byte('A'), Some(b'A'));
        assert_eq!(byte_level_byte('\u{143}'), Some(0xAD));
        assert_eq!(byte_level_byte('\u{144}'), None);
        let mapped: HashSet<u8> = (0u32..0x200)
            .filter_map(char::from_u32)
            .filter_map(byte_level_byte)
            .collect();
        assert_eq!(mapped.len(), 256);
    }

    #[test]
    fn byte_tokens_and_invalid_utf8() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("<0x0A0>"), None);
        assert_eq!(bytes_text(&[0xF0, b'a']), "<0xF0>a");
        assert_eq!(bytes_text("é".as_bytes()), "é");
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("Hello , world . Is n't it ? I 'm"),
            "Hello, world. Isn't it? I'm"
        );
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        // Expected strings are Python's json.dumps(x, ensure_ascii=False[, indent=2]) and
        // json.dumps(x, ensure_ascii=True, sort_keys=True).
        let source = r#"{% set x = {'b': [1, 2.0, none, true], 'a': 'é"<>
', 'e': {}, 'l': []} %}{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(ensure_ascii=true, sort_keys=true) }}"#;
        let env = compile_template(source.to_string(), "test").unwrap();
        let out = env.get_template(TEMPLATE_NAME).unwrap().render(()).unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(
            parts[0],
            r#"{"b": [1, 2.0, null, true], "a": "é\"<>\n", "e": {}, "l": []}"#
        );
        assert_eq!(
            parts[1],
            "{\n  \"b\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"a\": \"é\\\"<>\\n\",\n  \"e\": {},\n  \"l\": []\n}"
        );
        assert_eq!(
            parts[2],
            r#"{"a": "\u00e9\"<>\n", "b": [1, 2.0, null, true], "e": {}, "l": []}"#
        );
    }

    #[test]
    fn tokenizer_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TextTokenizer>();
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling_name("m/tokenizer.json", "tokenizer_config.json"),
            "m/tokenizer_config.json"
        );
        assert_eq!(
            sibling_name("tok", "tokenizer_config.json"),
            "tokenizer_config.json (beside tok)"
        );
    }
}
