//! Range checks for every number a checkpoint's JSON files give, run before anything is
//! allocated from them.
//!
//! A value that parses but makes no sense (a negative RoPE theta, an image mean of 1e308, two
//! billion layers) would otherwise surface much later as NaN logits, a panic deep in a kernel or
//! an allocation abort; in the browser worker either kills the engine. Each refusal names the
//! file, the field and the value as written.
//!
//! The hard caps are far above any published model (the largest have ~128 layers, hidden sizes
//! of ~25k and vocabularies of ~260k) and far below what would overflow or exhaust memory. Within
//! them, every weight is checked against the shape the config implies before it is widened or
//! uploaded (`WeightStore::f32` / `weight_data`), so a size the tensors do not have is reported
//! there, by tensor, before any allocation that depends on it.

use serde_json::Value;

use super::{LlavaConfig, TextConfig, VisionConfig, VisionKind};
use crate::error::{Error, Result};

/// Most layers of either tower.
pub const MAX_LAYERS: usize = 1024;
/// Largest hidden size of either tower.
pub const MAX_HIDDEN: usize = 1 << 17;
/// Largest MLP width of either tower.
pub const MAX_INTERMEDIATE: usize = 1 << 20;
/// Most attention heads, and the largest head dimension.
pub const MAX_HEADS: usize = 4096;
/// Largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 22;
/// Largest vision input side (the image processor's own bound).
pub const MAX_IMAGE_SIDE: usize = 8192;
/// Largest sequence length a config may announce.
pub const MAX_POSITIONS: usize = 1 << 30;

/// The value of `path` (dot-separated) as the file writes it, else `fallback`.
fn written(root: &Value, path: &str, fallback: &dyn std::fmt::Debug) -> String {
    match lookup(root, path) {
        Some(v) => v.to_string(),
        None => format!("{fallback:?} (the default)"),
    }
}

/// Checks of one parsed JSON file, with errors naming it.
struct Check<'a> {
    root: &'a Value,
    file: &'a str,
}

impl Check<'_> {
    fn fail(&self, path: &str, value: &dyn std::fmt::Debug, what: &str) -> Error {
        Error::file(
            self.file,
            format!("{path} = {}: {what}", written(self.root, path, value)),
        )
    }
    /// An integer in `1..=max`.
    fn count(&self, path: &str, n: usize, max: usize) -> Result<()> {
        if n == 0 || n > max {
            return Err(self.fail(path, &n, &format!("must be an integer in 1..={max}")));
        }
        Ok(())
    }
    /// A finite number in the open interval (0, 1): layer-norm and RMS-norm epsilons.
    fn eps(&self, path: &str, x: f32) -> Result<()> {
        if !(x.is_finite() && x > 0.0 && x < 1.0) {
            return Err(self.fail(
                path,
                &x,
                "must be a finite number between 0 and 1 (exclusive)",
            ));
        }
        Ok(())
    }
}

/// `config.json`: sizes, divisibility, epsilons, RoPE and token ids. `root` is the parsed file.
pub(crate) fn llava(cfg: &LlavaConfig, root: &Value, file: &str) -> Result<()> {
    let c = Check { root, file };
    vision(&cfg.vision, &c)?;
    text(&cfg.text, &c)?;
    Ok(())
}

fn vision(v: &VisionConfig, c: &Check) -> Result<()> {
    c.count("vision_config.hidden_size", v.hidden_size, MAX_HIDDEN)?;
    c.count(
        "vision_config.intermediate_size",
        v.intermediate_size,
        MAX_INTERMEDIATE,
    )?;
    c.count(
        "vision_config.num_hidden_layers",
        v.num_hidden_layers,
        MAX_LAYERS,
    )?;
    c.count(
        "vision_config.num_attention_heads",
        v.num_attention_heads,
        MAX_HEADS.min(v.hidden_size),
    )?;
    c.count("vision_config.image_size", v.image_size, MAX_IMAGE_SIDE)?;
    c.count("vision_config.patch_size", v.patch_size, v.image_size)?;
    c.eps("vision_config.layer_norm_eps", v.layer_norm_eps)?;
    Ok(())
}

fn text(t: &TextConfig, c: &Check) -> Result<()> {
    c.count("text_config.vocab_size", t.vocab_size, MAX_VOCAB)?;
    c.count("text_config.hidden_size", t.hidden_size, MAX_HIDDEN)?;
    c.count(
        "text_config.intermediate_size",
        t.intermediate_size,
        MAX_INTERMEDIATE,
    )?;
    c.count(
        "text_config.num_hidden_layers",
        t.num_hidden_layers,
        MAX_LAYERS,
    )?;
    c.count(
        "text_config.num_attention_heads",
        t.num_attention_heads,
        MAX_HEADS,
    )?;
    c.count("text_config.head_dim", t.head_dim, MAX_HEADS)?;
    c.count(
        "text_config.max_position_embeddings",
        t.max_position_embeddings,
        MAX_POSITIONS,
    )?;
    c.eps("text_config.rms_norm_eps", t.rms_norm_eps)?;
    // theta <= 1 gives frequencies >= 1 that grow along the head; the kernels compute in f32.
    if !(t.rope_theta > 1.0 && t.rope_theta <= f64::from(f32::MAX)) {
        let path = rope_path(c.root, "rope_theta");
        return Err(c.fail(
            &path,
            &t.rope_theta,
            "must be a finite number greater than 1",
        ));
    }
    let f = t.rope_linear_factor;
    if !(f.is_finite() && f > 0.0 && f <= 1e6) {
        let path = rope_path(c.root, "factor");
        return Err(c.fail(&path, &f, "must be a finite number in (0, 1e6]"));
    }
    let vocab = t.vocab_size;
    let in_vocab = |id: u32| (id as usize) < vocab;
    if let Some(bos) = t.bos_token_id.filter(|&id| !in_vocab(id)) {
        return Err(c.fail(
            "text_config.bos_token_id",
            &bos,
            &format!("must be a token id inside the vocabulary (vocab_size {vocab})"),
        ));
    }
    if let Some(eos) = t.eos_token_ids.iter().find(|&&id| !in_vocab(id)) {
        return Err(c.fail(
            "text_config.eos_token_id",
            eos,
            &format!("must be token ids inside the vocabulary (vocab_size {vocab})"),
        ));
    }
    Ok(())
}

/// Where a RoPE field was read from: `text_config.rope_parameters.*` / `rope_scaling.*` when
/// given there, else `text_config.*`.
fn rope_path(root: &Value, key: &str) -> String {
    let text = root.get("text_config");
    for section in ["rope_scaling", "rope_parameters"] {
        if text
            .and_then(|t| t.get(section))
            .and_then(|s| s.get(key))
            .is_some()
        {
            return format!("text_config.{section}.{key}");
        }
    }
    format!("text_config.{key}")
}

/// A JSON integer as u32, or None (negative, fractional, too large, not a number).
fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// Checks of the text values `config.json` reads that the typed config cannot show (ids that
/// were dropped or truncated while parsing). `v` is `text_config`.
pub(crate) fn text_ids(v: &Value, file: &str) -> Result<()> {
    let root = serde_json::json!({ "text_config": v });
    let c = Check { root: &root, file };
    for key in ["bos_token_id", "eos_token_id"] {
        let ok = match v.get(key) {
            None | Some(Value::Null) => true,
            Some(Value::Array(items)) => items.iter().all(|x| token_id(x).is_some()),
            Some(x) => token_id(x).is_some(),
        };
        if !ok {
            let path = format!("text_config.{key}");
            return Err(c.fail(
                &path,
                &"",
                "must be a token id (an integer in 0..2^32) or a list of them",
            ));
        }
    }
    Ok(())
}

/// The numbers of a parsed `preprocessor_config.json` (`root` is the file's JSON): the rescale
/// factor and the per-channel mean and std the processor read from it.
pub(crate) fn image_processor(
    rescale_factor: f64,
    image_mean: &[f32],
    image_std: &[f32],
    root: &Value,
    file: &str,
) -> Result<()> {
    let c = Check { root, file };
    let r = rescale_factor;
    if !(r.is_finite() && r > 0.0 && r <= 1.0) {
        return Err(c.fail("rescale_factor", &r, "must be a finite number in (0, 1]"));
    }
    // Pixel values lie in 0..=255 before rescaling and 0..=255 * rescale_factor after.
    for (i, &m) in image_mean.iter().enumerate() {
        if !(m.is_finite() && m.abs() <= 255.0) {
            let at = indexed(root, "image_mean", i);
            return Err(c.fail(&at, &m, "must be a finite number in [-255, 255]"));
        }
    }
    for (i, &s) in image_std.iter().enumerate() {
        if !(s.is_finite() && (1e-3..=1e3).contains(&s)) {
            let at = indexed(root, "image_std", i);
            return Err(c.fail(&at, &s, "must be a finite number in [0.001, 1000]"));
        }
    }
    Ok(())
}

/// `key.i` when the file gives a list, `key` when it gives one number for all channels.
fn indexed(root: &Value, key: &str, i: usize) -> String {
    match root.get(key) {
        Some(Value::Array(_)) => format!("{key}.{i}"),
        _ => key.to_string(),
    }
}

/// Index into arrays too when a path segment is a number.
fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(root, |v, key| match key.parse::<usize>() {
            Ok(i) if v.is_array() => v.get(i),
            _ => v.get(key),
        })
}

/// The optional `processor_config.json`: the LlavaProcessor expands one image to
/// `(image_size / patch_size)^2 + num_additional_image_tokens` tokens, less one for the "default"
/// strategy; that must be what the model produces.
pub(crate) fn processor_config(text: &str, file: &str, cfg: &LlavaConfig) -> Result<()> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| Error::file(file, format!("invalid JSON: {e}")))?;
    if !root.is_object() {
        return Err(Error::file(file, "expected a JSON object"));
    }
    let c = Check { root: &root, file };
    if let Some(t) = root.get("image_token").filter(|t| !t.is_null()) {
        if t.as_str().is_none_or(str::is_empty) {
            return Err(c.fail("image_token", &"", "must be a non-empty string"));
        }
    }
    let int = |key: &str| -> Result<Option<u64>> {
        match root.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| c.fail(key, &"", "must be a non-negative integer")),
        }
    };
    let v = &cfg.vision;
    if let Some(p) = int("patch_size")? {
        if p != v.patch_size as u64 {
            return Err(c.fail(
                "patch_size",
                &p,
                &format!(
                    "must equal config.json's vision_config.patch_size {}",
                    v.patch_size
                ),
            ));
        }
    }
    if let Some(n) = int("num_additional_image_tokens")? {
        let class_tokens = u64::from(v.kind == VisionKind::Clip);
        if n != class_tokens {
            return Err(c.fail(
                "num_additional_image_tokens",
                &n,
                &format!(
                    "must be {class_tokens} for this vision tower (config.json makes {} image tokens)",
                    cfg.num_image_tokens()
                ),
            ));
        }
    }
    Ok(())
}

/// The optional `generation_config.json`: the EOS ids it adds must be token ids of the model.
pub(crate) fn generation_config(text: &str, file: &str, cfg: &LlavaConfig) -> Result<()> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| Error::file(file, format!("invalid JSON: {e}")))?;
    if !root.is_object() {
        return Err(Error::file(file, "expected a JSON object"));
    }
    let c = Check { root: &root, file };
    let vocab = cfg.text.vocab_size;
    let ids: Vec<(String, &Value)> = match root.get("eos_token_id") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (format!("eos_token_id.{i}"), x))
            .collect(),
        Some(x) => vec![("eos_token_id".to_string(), x)],
    };
    for (path, x) in ids {
        if token_id(x).is_none_or(|id| id as usize >= vocab) {
            return Err(c.fail(
                &path,
                &"",
                &format!(
                    "must be a token id inside the vocabulary (config.json's vocab_size {vocab})"
                ),
            ));
        }
    }
    Ok(())
}

/// The image token must be a row of the embedding table. Checked with the whole checkpoint, not
/// in [`llava`]: transformers' all-default config (image token 32000, vocabulary 32000) parses,
/// as the class defaults do, but no checkpoint can use it.
fn image_token(cfg: &LlavaConfig, file: &str) -> Result<()> {
    let vocab = cfg.text.vocab_size;
    if cfg.image_token_index as usize >= vocab {
        return Err(Error::file(
            file,
            format!(
                "image_token_index = {}: must be a token id inside the vocabulary (text_config.vocab_size {vocab})",
                cfg.image_token_index
            ),
        ));
    }
    Ok(())
}

/// All checks that need more than `config.json`: run by [`crate::checkpoint::Checkpoint`] before
/// it assembles the parts. `source` is the directory or URL (file names are joined to it).
pub fn checkpoint_parts(
    source: &str,
    cfg: &LlavaConfig,
    processor_config_json: Option<&str>,
    generation_config_json: Option<&str>,
) -> Result<()> {
    let path = |name: &str| format!("{}/{name}", source.trim_end_matches('/'));
    image_token(cfg, &path("config.json"))?;
    if let Some(text) = processor_config_json {
        processor_config(text, &path("processor_config.json"), cfg)?;
    }
    if let Some(text) = generation_config_json {
        generation_config(text, &path("generation_config.json"), cfg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(config: &str) -> String {
        LlavaConfig::from_json(config, "m/config.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn lookup_indexes_arrays() {
        let v: Value = serde_json::json!({"a": [1, {"b": 2}]});
        assert_eq!(lookup(&v, "a.1.b"), Some(&serde_json::json!(2)));
        assert_eq!(lookup(&v, "a.5"), None);
    }

    #[test]
    fn nonsense_numbers_name_file_field_and_value() {
        for (text, want) in [
            (
                r#"{"model_type":"llava","text_config":{"rope_theta":-3.5}}"#,
                "m/config.json: text_config.rope_theta = -3.5: must be",
            ),
            (
                r#"{"model_type":"llava","text_config":{"rope_scaling":{"rope_type":"linear","factor":0}}}"#,
                "text_config.rope_scaling.factor = 0: must be",
            ),
            (
                r#"{"model_type":"llava","text_config":{"rms_norm_eps":1e308}}"#,
                "text_config.rms_norm_eps = 1e+308",
            ),
            (
                r#"{"model_type":"llava","vision_config":{"num_hidden_layers":2147483648}}"#,
                "vision_config.num_hidden_layers = 2147483648: must be an integer in 1..=1024",
            ),
            (
                r#"{"model_type":"llava","text_config":{"vocab_size":10,"bos_token_id":10}}"#,
                "text_config.bos_token_id = 10: must be a token id inside the vocabulary",
            ),
            (
                r#"{"model_type":"llava","text_config":{"eos_token_id":[2,-1]}}"#,
                "text_config.eos_token_id = [2,-1]: must be a token id",
            ),
            (
                r#"{"model_type":"llava","image_token_index":4294967296}"#,
                "image_token_index must be a token id below 2^32",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{e}\nshould contain {want}");
        }
    }

    #[test]
    fn processor_and_generation_configs_are_checked() {
        let cfg = LlavaConfig::from_json(
            r#"{"model_type":"llava","text_config":{"vocab_size":32064}}"#,
            "config.json",
        )
        .unwrap();
        let ok = r#"{"image_token":"<image>","patch_size":14,"num_additional_image_tokens":1}"#;
        processor_config(ok, "p.json", &cfg).unwrap();
        let e = processor_config(r#"{"patch_size":0}"#, "p.json", &cfg).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("p.json: patch_size = 0: must equal"),
            "{e}"
        );
        generation_config(r#"{"eos_token_id":[2, 32063]}"#, "g.json", &cfg).unwrap();
        let e = generation_config(r#"{"eos_token_id":[2, 32064]}"#, "g.json", &cfg).unwrap_err();
        assert!(
            e.to_string().starts_with("g.json: eos_token_id.1 = 32064"),
            "{e}"
        );
        let e = image_token(
            &LlavaConfig::from_json(r#"{"model_type":"llava"}"#, "c").unwrap(),
            "c",
        )
        .unwrap_err();
        assert!(e.to_string().contains("image_token_index = 32000"), "{e}");
    }
}
