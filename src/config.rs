//! `config.json` of a Hugging Face `LlavaForConditionalGeneration` checkpoint -> typed config.
//!
//! Published configs are sparse: every missing field takes the default of the transformers class
//! that would read it (`LlavaConfig`, `CLIPVisionConfig`, `SiglipVisionConfig`, `LlamaConfig`,
//! `Qwen2Config`), so the same file means the same model here and in transformers.

use serde_json::Value;

use crate::error::{Error, Result};

pub mod validate;

/// Element-wise activations used anywhere in the model (names as in transformers' `ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu`.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: x * sigmoid(1.702 x) (CLIP).
    QuickGelu,
    /// `silu` / `swish` (Llama, Qwen2 MLP gate).
    Silu,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionKind {
    /// CLIP ViT: class token, `pre_layrnorm`, patch conv without bias.
    Clip,
    /// SigLIP ViT: no class token, no pre-norm, patch conv with bias.
    Siglip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub kind: VisionKind,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
    /// SigLIP: whether the last hidden state (`hidden_states[-1]`, what `vision_feature_layer` -1
    /// selects) is reported after `post_layernorm`, transformers' `tie_last_hidden_states`.
    /// transformers 4.57 did so; 5.x does not (its SigLIP default, overridable by
    /// `vision_config.tie_last_hidden_states`). Without the key: true for a checkpoint written by
    /// 4.x (or not saying), false for one written by 5.x (`transformers_version` in config.json).
    /// Always false for CLIP, whose `post_layernorm` only touches the pooled output.
    pub tie_last_hidden_states: bool,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn num_patches(&self) -> usize {
        let side = self.image_size / self.patch_size;
        side * side
    }
    /// Tokens the tower produces: patches plus the class token for CLIP.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + usize::from(self.kind == VisionKind::Clip)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Llama,
    /// Llama with biases on q/k/v.
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub kind: TextKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    /// Linear RoPE scaling factor (`rope_type: linear`); 1.0 for the default RoPE.
    pub rope_linear_factor: f64,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub hidden_act: Activation,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Sliding-window attention (Mistral; Qwen2 with `use_sliding_window`): past this many
    /// tokens, transformers masks the oldest keys. The engine has no such mask, so a caption
    /// stops at the window (`Captioner`), where both compute the same.
    pub sliding_window: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Drop the class token (CLIP).
    Default,
    /// Keep every token.
    Full,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub image_token_index: u32,
    pub projector_hidden_act: Activation,
    pub projector_bias: bool,
    /// Indices into the tower's hidden states (0 = embeddings); negatives count from the end.
    pub vision_feature_layers: Vec<i64>,
    pub select_strategy: SelectStrategy,
    pub vision: VisionConfig,
    pub text: TextConfig,
}

impl LlavaConfig {
    /// Parse `config.json` text. `file` names the file in error messages.
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::file(file, format!("invalid JSON: {e}")))?;
        let f = Fields {
            obj: &root,
            file,
            section: "",
        };
        if !root.is_object() {
            return Err(Error::file(file, "expected a JSON object"));
        }
        match f.str_opt("model_type")? {
            Some("llava") => {}
            Some(other) => {
                return Err(Error::file(
                    file,
                    format!("unsupported model_type \"{other}\" (expected \"llava\")"),
                ))
            }
            None => return Err(Error::file(file, "missing model_type (expected \"llava\")")),
        }
        let empty = Value::Object(Default::default());
        let vision_value = root.get("vision_config").unwrap_or(&empty);
        let text_value = root.get("text_config").unwrap_or(&empty);
        // The transformers major version that wrote the file (absent: treated as 4.x).
        let written_by_v5 = f
            .str_opt("transformers_version")?
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .is_some_and(|major| major >= 5);
        let vision = parse_vision(
            vision_value,
            file,
            root.get("vision_config").is_none(),
            written_by_v5,
        )?;
        let mut text = parse_text(text_value, file, root.get("text_config").is_none())?;
        // transformers ties embeddings when either level asks for it.
        if f.bool_or("tie_word_embeddings", false)? {
            text.tie_word_embeddings = true;
        }

        let layers = match root.get("vision_feature_layer") {
            None | Some(Value::Null) => vec![-2],
            Some(Value::Number(n)) => vec![n
                .as_i64()
                .ok_or_else(|| Error::file(file, "vision_feature_layer must be an integer"))?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_i64())
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Error::file(file, "vision_feature_layer must be a list of integers")
                })?,
            Some(_) => {
                return Err(Error::file(
                    file,
                    "vision_feature_layer must be an integer or a list",
                ))
            }
        };
        let n_states = vision.num_hidden_layers as i64 + 1;
        for &l in &layers {
            if l >= n_states || l < -n_states {
                return Err(Error::file(
                    file,
                    format!(
                        "vision_feature_layer {l} is out of range for a tower with {} layers",
                        vision.num_hidden_layers
                    ),
                ));
            }
        }
        let select_strategy = match f.str_or("vision_feature_select_strategy", "default")? {
            "default" => SelectStrategy::Default,
            "full" => SelectStrategy::Full,
            other => {
                return Err(Error::file(
                    file,
                    format!("unsupported vision_feature_select_strategy \"{other}\""),
                ))
            }
        };
        let act = f.str_or("projector_hidden_act", "gelu")?;
        let projector_hidden_act = Activation::parse(act).ok_or_else(|| {
            Error::file(file, format!("unsupported projector_hidden_act \"{act}\""))
        })?;
        let image_token_index = f
            .u64_opt("image_token_index")?
            .or(f.u64_opt("image_token_id")?)
            .unwrap_or(32000);
        let image_token_index = u32::try_from(image_token_index)
            .map_err(|_| f.bad("image_token_index", "a token id below 2^32"))?;
        let cfg = LlavaConfig {
            image_token_index,
            projector_hidden_act,
            projector_bias: f.bool_or("multimodal_projector_bias", true)?,
            vision_feature_layers: layers,
            select_strategy,
            vision,
            text,
        };
        validate::llava(&cfg, &root, file)?;
        Ok(cfg)
    }

    /// Number of `<image>` tokens one image expands to.
    pub fn num_image_tokens(&self) -> usize {
        match self.select_strategy {
            SelectStrategy::Default => self.vision.num_positions().saturating_sub(1),
            SelectStrategy::Full => self.vision.num_positions(),
        }
    }

    /// Hidden-state indices (0 = embeddings, L = last layer) resolved from the possibly negative
    /// `vision_feature_layer` values.
    pub fn feature_layer_indices(&self) -> Vec<usize> {
        let n_states = self.vision.num_hidden_layers as i64 + 1;
        self.vision_feature_layers
            .iter()
            .map(|&l| {
                if l < 0 {
                    (n_states + l) as usize
                } else {
                    l as usize
                }
            })
            .collect()
    }
}

fn parse_vision(v: &Value, file: &str, absent: bool, written_by_v5: bool) -> Result<VisionConfig> {
    let f = Fields {
        obj: v,
        file,
        section: "vision_config.",
    };
    let model_type = f.str_or("model_type", "clip_vision_model")?;
    let kind = match model_type {
        "clip_vision_model" | "clip" => VisionKind::Clip,
        "siglip_vision_model" | "siglip" => VisionKind::Siglip,
        other => {
            return Err(Error::file(
                file,
                format!(
                    "unsupported vision_config.model_type \"{other}\" (expected clip_vision_model or siglip_vision_model)"
                ),
            ))
        }
    };
    // LlavaConfig without a vision_config builds CLIP ViT-L/14-336; a given dict takes the
    // vision class's own defaults.
    let (hidden, inter, layers, heads, image, patch) = match (kind, absent) {
        (VisionKind::Clip, true) => (1024, 4096, 24, 16, 336, 14),
        (VisionKind::Clip, false) => (768, 3072, 12, 12, 224, 32),
        (VisionKind::Siglip, _) => (768, 3072, 12, 12, 224, 16),
    };
    let (act, eps) = match kind {
        VisionKind::Clip => ("quick_gelu", 1e-5),
        VisionKind::Siglip => ("gelu_pytorch_tanh", 1e-6),
    };
    let act_name = f.str_or("hidden_act", act)?;
    let cfg = VisionConfig {
        kind,
        hidden_size: f.usize_or("hidden_size", hidden)?,
        intermediate_size: f.usize_or("intermediate_size", inter)?,
        num_hidden_layers: f.usize_or("num_hidden_layers", layers)?,
        num_attention_heads: f.usize_or("num_attention_heads", heads)?,
        num_channels: f.usize_or("num_channels", 3)?,
        image_size: f.usize_or("image_size", image)?,
        patch_size: f.usize_or("patch_size", patch)?,
        hidden_act: Activation::parse(act_name).ok_or_else(|| {
            Error::file(
                file,
                format!("unsupported vision_config.hidden_act \"{act_name}\""),
            )
        })?,
        layer_norm_eps: f.f64_or("layer_norm_eps", eps)? as f32,
        tie_last_hidden_states: kind == VisionKind::Siglip
            && f.bool_or("tie_last_hidden_states", !written_by_v5)?,
    };
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(Error::file(
            file,
            "vision_config.hidden_size is not a multiple of num_attention_heads",
        ));
    }
    // The patch convolution drops a remainder (SigLIP-so400m: 384 px / 14 = 27 patches a side).
    if cfg.patch_size == 0 || cfg.patch_size > cfg.image_size || cfg.num_channels != 3 {
        return Err(Error::file(
            file,
            "vision_config: patch_size must be between 1 and image_size, with 3 channels",
        ));
    }
    Ok(cfg)
}

fn parse_text(v: &Value, file: &str, _absent: bool) -> Result<TextConfig> {
    let f = Fields {
        obj: v,
        file,
        section: "text_config.",
    };
    let model_type = f.str_or("model_type", "llama")?;
    validate::text_ids(v, file)?;
    // Mistral is Llama's decoder (no biases) with sliding-window attention (BakLLaVA).
    let kind = match model_type {
        "llama" | "mistral" => TextKind::Llama,
        "qwen2" => TextKind::Qwen2,
        other => {
            return Err(Error::file(
                file,
                format!(
                "unsupported text_config.model_type \"{other}\" (expected llama, mistral or qwen2)"
            ),
            ))
        }
    };
    let mistral = model_type == "mistral";
    // transformers' defaults for each model type.
    let (vocab, hidden, inter, max_pos) = match (kind, mistral) {
        (TextKind::Llama, false) => (32000, 4096, 11008, 2048),
        (TextKind::Llama, true) => (32000, 4096, 14336, 32768),
        (TextKind::Qwen2, _) => (151936, 4096, 22016, 32768),
    };
    let window_key = match (kind, mistral) {
        (TextKind::Llama, true) => true,
        (TextKind::Qwen2, _) => f.bool_or("use_sliding_window", false)?,
        (TextKind::Llama, false) => false,
    };
    let sliding_window = match v.get("sliding_window") {
        _ if !window_key => None,
        Some(Value::Null) => None,
        // MistralConfig's and Qwen2Config's default.
        None => Some(4096),
        Some(_) => match f.u64_opt("sliding_window")? {
            Some(0) => {
                return Err(Error::file(
                    file,
                    "text_config.sliding_window must be positive",
                ))
            }
            n => n.map(|n| n as usize),
        },
    };
    let hidden_size = f.usize_or("hidden_size", hidden)?;
    let heads = f.usize_or("num_attention_heads", 32)?;
    if heads == 0 {
        return Err(Error::file(
            file,
            "text_config.num_attention_heads must be positive",
        ));
    }
    let kv_heads = match f.u64_opt("num_key_value_heads")? {
        Some(n) => n as usize,
        None if mistral => 8,
        None => heads,
    };
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(Error::file(
            file,
            format!("text_config: {heads} attention heads cannot be grouped over {kv_heads} key/value heads"),
        ));
    }
    let head_dim = match f.u64_opt("head_dim")? {
        Some(d) => d as usize,
        None => hidden_size / heads,
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::file(
            file,
            format!("text_config.head_dim {head_dim} must be even and positive"),
        ));
    }
    // RoPE: transformers 4.x writes rope_theta (+ rope_scaling); 5.x writes rope_parameters.
    let mut rope_theta = f.f64_or("rope_theta", 10000.0)?;
    let mut factor = 1.0;
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(params) = v.get(key).filter(|p| !p.is_null()) else {
            continue;
        };
        let p = Fields {
            obj: params,
            file,
            section: "text_config.rope_parameters.",
        };
        if let Some(t) = p.f64_opt("rope_theta")? {
            rope_theta = t;
        }
        let rope_type = p
            .str_opt("rope_type")?
            .or(p.str_opt("type")?)
            .unwrap_or("default");
        match rope_type {
            "default" => {}
            "linear" => factor = p.f64_or("factor", 1.0)?,
            other => {
                return Err(Error::file(
                    file,
                    format!("unsupported RoPE type \"{other}\" in text_config.{key}"),
                ))
            }
        }
    }
    let act_name = f.str_or("hidden_act", "silu")?;
    let eos_token_ids = match v.get("eos_token_id") {
        None => match kind {
            TextKind::Llama => vec![2],
            TextKind::Qwen2 => vec![],
        },
        Some(Value::Null) => vec![],
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        Some(_) => {
            return Err(Error::file(
                file,
                "text_config.eos_token_id must be an integer or a list",
            ))
        }
    };
    let bos_default = match kind {
        TextKind::Llama => Some(1),
        TextKind::Qwen2 => None,
    };
    let cfg = TextConfig {
        kind,
        vocab_size: f.usize_or("vocab_size", vocab)?,
        hidden_size,
        intermediate_size: f.usize_or("intermediate_size", inter)?,
        num_hidden_layers: f.usize_or("num_hidden_layers", 32)?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)? as f32,
        rope_theta,
        rope_linear_factor: factor,
        max_position_embeddings: f.usize_or("max_position_embeddings", max_pos)?,
        attention_bias: kind == TextKind::Qwen2 || f.bool_or("attention_bias", false)?,
        mlp_bias: f.bool_or("mlp_bias", false)?,
        hidden_act: Activation::parse(act_name).ok_or_else(|| {
            Error::file(
                file,
                format!("unsupported text_config.hidden_act \"{act_name}\""),
            )
        })?,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        bos_token_id: f.u64_opt("bos_token_id")?.map(|n| n as u32).or(bos_default),
        eos_token_ids,
        sliding_window,
    };
    Ok(cfg)
}

/// Typed access to one JSON object's fields, with errors naming the file and the field.
struct Fields<'a> {
    obj: &'a Value,
    file: &'a str,
    section: &'a str,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn bad(&self, key: &str, what: &str) -> Error {
        Error::file(self.file, format!("{}{key} must be {what}", self.section))
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string")))
            .transpose()
    }
    fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        Ok(self.str_opt(key)?.unwrap_or(default))
    }
    fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.bad(key, "a non-negative integer"))
            })
            .transpose()
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.u64_opt(key)?.map(|n| n as usize).unwrap_or(default))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.bad(key, "a number")))
            .transpose()
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.f64_opt(key)?.unwrap_or(default))
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.bad(key, "true or false")))
            .transpose()
            .map(|b| b.unwrap_or(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_config_takes_class_defaults() {
        let cfg = LlavaConfig::from_json(r#"{"model_type":"llava"}"#, "config.json").unwrap();
        assert_eq!(cfg.vision.image_size, 336);
        assert_eq!(cfg.vision.patch_size, 14);
        assert_eq!(cfg.num_image_tokens(), 576);
        assert_eq!(cfg.text.hidden_size, 4096);
        assert_eq!(cfg.text.head_dim, 128);
        assert_eq!(cfg.image_token_index, 32000);
        assert_eq!(cfg.feature_layer_indices(), vec![23]);
    }

    #[test]
    fn rope_parameters_and_rope_theta_are_both_read() {
        let a = r#"{"model_type":"llava","text_config":{"rope_theta":500000.0}}"#;
        let b = r#"{"model_type":"llava","text_config":{"rope_parameters":{"rope_type":"default","rope_theta":500000.0}}}"#;
        for text in [a, b] {
            let cfg = LlavaConfig::from_json(text, "config.json").unwrap();
            assert_eq!(cfg.text.rope_theta, 500000.0);
        }
        let c = r#"{"model_type":"llava","text_config":{"rope_scaling":{"rope_type":"yarn","factor":2.0}}}"#;
        let err = LlavaConfig::from_json(c, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json") && err.contains("yarn"), "{err}");
    }

    #[test]
    fn unknown_model_type_names_the_file() {
        let err = LlavaConfig::from_json(r#"{"model_type":"blip"}"#, "x/config.json").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x/config.json: unsupported model_type \"blip\" (expected \"llava\")"
        );
        let err = LlavaConfig::from_json("{", "x/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x/config.json: invalid JSON"), "{err}");
    }

    #[test]
    fn mistral_is_llama_with_a_sliding_window() {
        let text = |t: &str| {
            let json = format!(r#"{{"model_type":"llava","text_config":{{{t}}}}}"#);
            LlavaConfig::from_json(&json, "config.json").map(|c| c.text)
        };
        // BakLLaVA's text_config, cut to what matters.
        let bak =
            text(r#""model_type":"mistral","vocab_size":32002,"sliding_window":4096"#).unwrap();
        assert_eq!(bak.kind, TextKind::Llama);
        assert!(!bak.attention_bias);
        assert_eq!((bak.num_key_value_heads, bak.intermediate_size), (8, 14336));
        assert_eq!((bak.sliding_window, bak.vocab_size), (Some(4096), 32002));
        let window = |t: &str| text(t).unwrap().sliding_window;
        assert_eq!(window(r#""model_type":"mistral""#), Some(4096));
        assert_eq!(
            window(r#""model_type":"mistral","sliding_window":null"#),
            None
        );
        assert_eq!(window(r#""model_type":"llama","sliding_window":16"#), None);
        assert_eq!(window(r#""model_type":"qwen2","sliding_window":16"#), None);
        assert_eq!(
            window(r#""model_type":"qwen2","use_sliding_window":true,"sliding_window":16"#),
            Some(16)
        );
        let zero = text(r#""model_type":"mistral","sliding_window":0"#).unwrap_err();
        assert!(zero.to_string().contains("sliding_window"), "{zero}");
        let other = text(r#""model_type":"gemma""#).unwrap_err();
        assert!(
            other.to_string().contains("llama, mistral or qwen2"),
            "{other}"
        );
    }

    #[test]
    fn siglip_qwen2_full_list_layers() {
        let text = r#"{"model_type":"llava","vision_feature_layer":[-1,-2],"vision_feature_select_strategy":"full",
          "vision_config":{"model_type":"siglip_vision_model","image_size":384,"patch_size":14,"num_hidden_layers":26},
          "text_config":{"model_type":"qwen2","vocab_size":152000,"num_key_value_heads":4,"num_attention_heads":28,"hidden_size":3584}}"#;
        let cfg = LlavaConfig::from_json(text, "config.json").unwrap();
        assert_eq!(cfg.num_image_tokens(), 729);
        assert_eq!(cfg.feature_layer_indices(), vec![26, 25]);
        assert!(cfg.text.attention_bias);
        assert_eq!(cfg.vision.hidden_act, Activation::GeluTanh);
        assert!(
            cfg.vision.tie_last_hidden_states,
            "4.x semantics without a version"
        );
    }

    #[test]
    fn siglip_last_hidden_state_norm_follows_the_writing_version() {
        let cfg = |top: &str, vision: &str| {
            let text = format!(
                r#"{{"model_type":"llava",{top}"vision_config":{{"model_type":"{vision}"}}}}"#
            );
            LlavaConfig::from_json(&text, "config.json").unwrap().vision
        };
        let siglip = "siglip_vision_model";
        assert!(cfg(r#""transformers_version":"4.57.1","#, siglip).tie_last_hidden_states);
        assert!(!cfg(r#""transformers_version":"5.24.0","#, siglip).tie_last_hidden_states);
        assert!(
            !cfg(r#""transformers_version":"5.0.0","#, "clip_vision_model").tie_last_hidden_states
        );
        assert!(!cfg("", "clip_vision_model").tie_last_hidden_states);
        // vision_config.tie_last_hidden_states overrides the version's default.
        let text = r#"{"model_type":"llava","transformers_version":"5.24.0",
          "vision_config":{"model_type":"siglip_vision_model","tie_last_hidden_states":true}}"#;
        assert!(
            LlavaConfig::from_json(text, "config.json")
                .unwrap()
                .vision
                .tie_last_hidden_states
        );
    }
}
