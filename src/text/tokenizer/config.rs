//! What transformers reads from tokenizer_config.json besides the chat template: which tokens
//! are special, the BOS/EOS tokens, and the `LlamaTokenizer(Fast)` post-processor rule.
//!
//! - Special tokens: `from_pretrained` marks every token the config names (bos, eos, unk, pad, sep,
//!   cls, mask, additional/extra special tokens) as special, so `decode(skip_special_tokens=True)`
//!   drops them even where tokenizer.json does not flag them.
//! - `LlamaTokenizer(Fast)` configs: the post-processor is rebuilt from `add_bos_token` (default
//!   true) and `add_eos_token` (default false), as `LlamaTokenizerFast.update_post_processor` does.

use std::collections::HashSet;

use serde_json::Value as Json;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

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
pub(super) const LLAMA_CLASSES: [&str; 2] = ["LlamaTokenizer", "LlamaTokenizerFast"];

/// `dir/tokenizer.json` -> `dir/tokenizer_config.json`; other names get the sibling in brackets.
pub(super) fn sibling_name(name: &str, sibling: &str) -> String {
    match name.strip_suffix("tokenizer.json") {
        Some(dir) => format!("{dir}{sibling}"),
        None => format!("{sibling} (beside {name})"),
    }
}

pub(super) fn parse_tokenizer(bytes: &[u8], name: &str) -> Result<Tokenizer> {
    // Parse as plain JSON first so that broken JSON and "JSON but not a tokenizer" read differently.
    let json: Json = serde_json::from_slice(bytes)
        .map_err(|e| Error::file(name, format!("not valid JSON: {e}")))?;
    if !json.is_object() || json.get("model").is_none() {
        return Err(Error::file(
            name,
            "not a Hugging Face tokenizer (tokenizer.json has a \"model\" object)",
        ));
    }
    if let Some(msg) = bpe_merge_too_long(&json["model"]) {
        return Err(Error::file(name, msg));
    }
    Tokenizer::from_bytes(bytes)
        .map_err(|e| Error::file(name, format!("not a tokenizer this version can read: {e}")))
}

/// A BPE merge whose joined token is longer than every vocabulary entry (or whose second part
/// is shorter than the continuing-subword prefix): the tokenizers crate copies such a merge into a
/// buffer sized by the longest entry and panics, where the merge could never be in the vocabulary
/// anyway. Found by the checkpoint fuzzer (a vocabulary entry deleted).
fn bpe_merge_too_long(model: &Json) -> Option<String> {
    let vocab = model.get("vocab")?.as_object()?;
    let longest = vocab.keys().map(String::len).max().unwrap_or(0);
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Json::as_str)
        .map_or(0, str::len);
    for merge in model.get("merges")?.as_array()? {
        let (a, b) = match merge {
            Json::String(m) => m.split_once(' ')?,
            Json::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
            _ => return None,
        };
        if b.len() < prefix || a.len() + b.len() - prefix > longest {
            return Some(format!(
                "BPE merge \"{a}\" + \"{b}\" is longer than every vocabulary entry"
            ));
        }
    }
    None
}

pub(super) fn parse_config(bytes: &[u8], name: &str) -> Result<serde_json::Map<String, Json>> {
    match serde_json::from_slice::<Json>(bytes) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(Error::file(name, "expected a JSON object")),
        Err(e) => Err(Error::file(name, format!("not valid JSON: {e}"))),
    }
}

/// A special token named by the config: a string or an AddedToken dict `{"content": ...}`.
/// `default` applies only when the key is absent (an explicit null means "none").
pub(super) fn special_token(
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
pub(super) fn mark_config_specials(
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
pub(super) fn rebuild_llama_post_processor(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_longer_than_the_vocabulary_is_an_error_not_a_panic() {
        // "a" + "b" joins to "ab", longer than every entry: the tokenizers crate would panic.
        let json = br#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}"#;
        let err = parse_tokenizer(json, "tokenizer.json")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("BPE merge")),
            "{err:?}"
        );
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
