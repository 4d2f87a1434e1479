//! The real checkpoints `synth` imitates: their dimensions, config.json as llava-hf publishes it,
//! the processor / generation / chat-template files, and every tensor's name and shape.

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// A published checkpoint to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Like {
    /// llava-hf/llava-1.5-7b-hf: Vicuna-7B (Llama-2-7B shapes) + CLIP ViT-L/14-336.
    Llava15_7b,
    /// llava-hf/llava-1.5-13b-hf: Vicuna-13B (Llama-2-13B shapes) + CLIP ViT-L/14-336.
    Llava15_13b,
    /// llava-hf/llava-interleave-qwen-0.5b-hf: Qwen1.5-0.5B-Chat + SigLIP so400m-patch14-384
    /// (26 of its 27 layers, no pooling head).
    InterleaveQwen05b,
    /// A LLaVA-1.5 draft: JackFram/llama-68m's text model with LLaVA-1.5's CLIP ViT-L/14-336
    /// tower and a projector to 768 (vocabulary padded to LLaVA-1.5's 32064, which a draft shares
    /// with its target).
    Llava15_68m,
}

impl Like {
    pub const ALL: [Like; 4] = [
        Like::Llava15_7b,
        Like::Llava15_13b,
        Like::InterleaveQwen05b,
        Like::Llava15_68m,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Like::Llava15_7b => "llava-1.5-7b",
            Like::Llava15_13b => "llava-1.5-13b",
            Like::InterleaveQwen05b => "llava-interleave-qwen-0.5b",
            Like::Llava15_68m => "llava-1.5-68m",
        }
    }

    pub fn parse(s: &str) -> Option<Like> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }

    fn is_qwen(self) -> bool {
        self == Like::InterleaveQwen05b
    }

    /// The real dimensions.
    pub fn dims(self) -> Dims {
        let clip = |text_hidden, layers, heads, inter| Dims {
            text_hidden,
            text_layers: layers,
            text_heads: heads,
            text_kv_heads: heads,
            text_intermediate: inter,
            vocab: 32064,
            qkv_bias: false,
            tied: false,
            siglip: false,
            vision_hidden: 1024,
            vision_layers: 24,
            vision_heads: 16,
            vision_intermediate: 4096,
            patch_size: 14,
            image_size: 336,
            vision_feature_layer: -2,
        };
        match self {
            Like::Llava15_7b => clip(4096, 32, 32, 11008),
            Like::Llava15_13b => clip(5120, 40, 40, 13824),
            Like::Llava15_68m => clip(768, 2, 12, 3072),
            Like::InterleaveQwen05b => Dims {
                text_hidden: 1024,
                text_layers: 24,
                text_heads: 16,
                text_kv_heads: 16,
                text_intermediate: 2816,
                vocab: 152000,
                qkv_bias: true,
                tied: true,
                siglip: true,
                vision_hidden: 1152,
                vision_layers: 26,
                vision_heads: 16,
                vision_intermediate: 4304,
                patch_size: 14,
                image_size: 384,
                vision_feature_layer: -1,
            },
        }
    }
}

/// Tensor names as transformers 4.x (`vision_tower.vision_model.*`) or 5.x (`vision_tower.*`)
/// saves them; see `weights::NameStyle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Names {
    V4,
    V5,
}

/// The dimensions of one model (the real ones, or with overridden layer counts / image size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    pub text_hidden: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_kv_heads: usize,
    pub text_intermediate: usize,
    pub vocab: usize,
    pub qkv_bias: bool,
    pub tied: bool,
    pub siglip: bool,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub vision_intermediate: usize,
    pub patch_size: usize,
    pub image_size: usize,
    pub vision_feature_layer: i64,
}

/// How a tensor's random values are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Normal-ish, small (weights, biases, embeddings).
    Random,
    /// Ones (LayerNorm / RMSNorm weights).
    Norm,
}

/// One tensor of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

/// Every tensor of the checkpoint, named as `names` says.
pub fn model_tensors(d: &Dims, names: Names) -> Vec<ModelTensor> {
    let mut out = Vec::new();
    let mut add =
        |name: String, shape: Vec<usize>, kind| out.push(ModelTensor { name, shape, kind });
    use TensorKind::{Norm, Random};
    // Vision tower.
    let v = match names {
        Names::V4 => "vision_tower.vision_model.",
        Names::V5 => "vision_tower.",
    };
    let (h, i) = (d.vision_hidden, d.vision_intermediate);
    let side = d.image_size / d.patch_size;
    let positions = side * side + usize::from(!d.siglip);
    add(
        format!("{v}embeddings.patch_embedding.weight"),
        vec![h, 3, d.patch_size, d.patch_size],
        Random,
    );
    if d.siglip {
        add(
            format!("{v}embeddings.patch_embedding.bias"),
            vec![h],
            Random,
        );
    } else {
        add(format!("{v}embeddings.class_embedding"), vec![h], Random);
        add(format!("{v}pre_layrnorm.weight"), vec![h], Norm);
        add(format!("{v}pre_layrnorm.bias"), vec![h], Random);
    }
    add(
        format!("{v}embeddings.position_embedding.weight"),
        vec![positions, h],
        Random,
    );
    for l in 0..d.vision_layers {
        let p = format!("{v}encoder.layers.{l}.");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}self_attn.{proj}.weight"), vec![h, h], Random);
            add(format!("{p}self_attn.{proj}.bias"), vec![h], Random);
        }
        for norm in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}{norm}.weight"), vec![h], Norm);
            add(format!("{p}{norm}.bias"), vec![h], Random);
        }
        add(format!("{p}mlp.fc1.weight"), vec![i, h], Random);
        add(format!("{p}mlp.fc1.bias"), vec![i], Random);
        add(format!("{p}mlp.fc2.weight"), vec![h, i], Random);
        add(format!("{p}mlp.fc2.bias"), vec![h], Random);
    }
    add(format!("{v}post_layernorm.weight"), vec![h], Norm);
    add(format!("{v}post_layernorm.bias"), vec![h], Random);
    // Projector.
    let t = d.text_hidden;
    add(
        "multi_modal_projector.linear_1.weight".into(),
        vec![t, h],
        Random,
    );
    add(
        "multi_modal_projector.linear_1.bias".into(),
        vec![t],
        Random,
    );
    add(
        "multi_modal_projector.linear_2.weight".into(),
        vec![t, t],
        Random,
    );
    add(
        "multi_modal_projector.linear_2.bias".into(),
        vec![t],
        Random,
    );
    // Language model.
    let m = "language_model.model.";
    let head_dim = t / d.text_heads;
    let kv = d.text_kv_heads * head_dim;
    add(format!("{m}embed_tokens.weight"), vec![d.vocab, t], Random);
    for l in 0..d.text_layers {
        let p = format!("{m}layers.{l}.");
        add(format!("{p}input_layernorm.weight"), vec![t], Norm);
        add(format!("{p}post_attention_layernorm.weight"), vec![t], Norm);
        for (proj, rows) in [("q_proj", t), ("k_proj", kv), ("v_proj", kv)] {
            add(format!("{p}self_attn.{proj}.weight"), vec![rows, t], Random);
            if d.qkv_bias {
                add(format!("{p}self_attn.{proj}.bias"), vec![rows], Random);
            }
        }
        add(format!("{p}self_attn.o_proj.weight"), vec![t, t], Random);
        let f = d.text_intermediate;
        add(format!("{p}mlp.gate_proj.weight"), vec![f, t], Random);
        add(format!("{p}mlp.up_proj.weight"), vec![f, t], Random);
        add(format!("{p}mlp.down_proj.weight"), vec![t, f], Random);
    }
    add(format!("{m}norm.weight"), vec![t], Norm);
    if !d.tied {
        add(
            "language_model.lm_head.weight".into(),
            vec![d.vocab, t],
            Random,
        );
    }
    out
}

/// `<image>` in the tokenizer `synth` ships with the LLaVA-1.5 shapes
/// (tests/fixtures/llama2-tokenizer). The real llava-1.5 tokenizer has it at 32000; the one shipped
/// here has other added tokens first, so config.json's image_token_index says 32045 to match it.
pub const LLAMA_IMAGE_TOKEN: u32 = 32045;
/// `<image>` in the Qwen-shaped tokenizer (as in the real llava-interleave-qwen tokenizer).
pub const QWEN_IMAGE_TOKEN: u32 = 151646;

/// config.json as llava-hf publishes it for `like`, with `d`'s layer counts and image size where
/// they were overridden (the real files are sparse: missing fields are transformers' defaults).
pub fn config(like: Like, d: &Dims, torch_dtype: &str) -> Value {
    let real = like.dims();
    match like {
        Like::Llava15_7b | Like::Llava15_13b | Like::Llava15_68m => {
            let mut text = match like {
                Like::Llava15_7b => json!({
                    "_name_or_path": "lmsys/vicuna-7b-v1.5",
                    "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096,
                    "model_type": "llama",
                    "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16",
                    "vocab_size": 32064
                }),
                Like::Llava15_13b => json!({
                    "_name_or_path": "lmsys/vicuna-13b-v1.5",
                    "architectures": ["LlamaForCausalLM"],
                    "hidden_size": 5120,
                    "intermediate_size": 13824,
                    "max_position_embeddings": 4096,
                    "model_type": "llama",
                    "num_attention_heads": 40,
                    "num_hidden_layers": 40,
                    "num_key_value_heads": 40,
                    "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16",
                    "vocab_size": 32064
                }),
                // JackFram/llama-68m's config.json, vocabulary padded to LLaVA-1.5's.
                _ => json!({
                    "_name_or_path": "JackFram/llama-68m",
                    "architectures": ["LlamaForCausalLM"],
                    "bos_token_id": 0,
                    "eos_token_id": 2,
                    "hidden_act": "silu",
                    "hidden_size": 768,
                    "initializer_range": 0.02,
                    "intermediate_size": 3072,
                    "max_position_embeddings": 2048,
                    "model_type": "llama",
                    "num_attention_heads": 12,
                    "num_hidden_layers": 2,
                    "pad_token_id": 1,
                    "rms_norm_eps": 1e-06,
                    "tie_word_embeddings": false,
                    "torch_dtype": "float32",
                    "use_cache": true,
                    "vocab_size": 32064
                }),
            };
            if d.text_layers != real.text_layers {
                text["num_hidden_layers"] = d.text_layers.into();
            }
            json!({
                "architectures": ["LlavaForConditionalGeneration"],
                "ignore_index": -100,
                // The real checkpoints say 32000; the tokenizer shipped here has <image> at
                // 32045 (see LLAMA_IMAGE_TOKEN).
                "image_token_index": LLAMA_IMAGE_TOKEN,
                "model_type": "llava",
                "pad_token_id": 32001,
                "projector_hidden_act": "gelu",
                "text_config": text,
                "tie_word_embeddings": false,
                "torch_dtype": torch_dtype,
                "transformers_version": "4.36.0.dev0",
                "vision_config": {
                    "hidden_size": 1024,
                    "image_size": d.image_size,
                    "intermediate_size": 4096,
                    "model_type": "clip_vision_model",
                    "num_attention_heads": 16,
                    "num_hidden_layers": d.vision_layers,
                    "patch_size": 14,
                    "projection_dim": 768,
                    "vocab_size": 32000
                },
                "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default",
                "vocab_size": 32064
            })
        }
        Like::InterleaveQwen05b => json!({
            "architectures": ["LlavaForConditionalGeneration"],
            "ignore_index": -100,
            "image_seq_length": (d.image_size / d.patch_size).pow(2),
            "image_token_index": QWEN_IMAGE_TOKEN,
            "model_type": "llava",
            "projector_hidden_act": "gelu",
            "text_config": {
                "_name_or_path": "Qwen/Qwen1.5-0.5B-Chat",
                "architectures": ["Qwen2ForCausalLM"],
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "hidden_size": 1024,
                "intermediate_size": 2816,
                "max_position_embeddings": 32768,
                "max_window_layers": 21,
                "model_type": "qwen2",
                "num_attention_heads": 16,
                "num_hidden_layers": d.text_layers,
                "num_key_value_heads": 16,
                "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0,
                "sliding_window": 32768,
                "tie_word_embeddings": true,
                "torch_dtype": "bfloat16",
                "use_sliding_window": false,
                "vocab_size": 152000
            },
            "tie_word_embeddings": true,
            "torch_dtype": torch_dtype,
            "transformers_version": "4.41.0.dev0",
            "vision_config": {
                "hidden_size": 1152,
                "image_size": d.image_size,
                "intermediate_size": 4304,
                "model_type": "siglip_vision_model",
                "num_attention_heads": 16,
                "num_hidden_layers": d.vision_layers,
                "patch_size": 14,
                "vision_use_head": false
            },
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
            "vocab_size": 152000
        }),
    }
}

/// The small files besides config.json and the tokenizer, as (file name, text).
pub fn side_files(like: Like, d: &Dims) -> Result<Vec<(String, String)>> {
    let pretty = |v: Value| {
        serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| Error::invalid(e.to_string()))
    };
    let px = d.image_size;
    let mut out = Vec::new();
    if like.is_qwen() {
        out.push((
            "preprocessor_config.json".to_string(),
            pretty(json!({
                "do_convert_rgb": null,
                "do_normalize": true,
                "do_rescale": true,
                "do_resize": true,
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "SiglipImageProcessor",
                "image_std": [0.5, 0.5, 0.5],
                "processor_class": "LlavaProcessor",
                "resample": 3,
                "rescale_factor": 0.00392156862745098,
                "size": {"height": px, "width": px}
            }))?,
        ));
        out.push((
            "processor_config.json".to_string(),
            pretty(json!({
                "image_token": "<image>",
                "num_additional_image_tokens": 0,
                "patch_size": d.patch_size,
                "processor_class": "LlavaProcessor",
                "vision_feature_select_strategy": "full"
            }))?,
        ));
        out.push(("chat_template.json".to_string(), pretty(json!({
            "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        }))?));
        out.push((
            "generation_config.json".to_string(),
            pretty(json!({
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "transformers_version": "4.41.0.dev0"
            }))?,
        ));
    } else {
        out.push((
            "preprocessor_config.json".to_string(),
            pretty(json!({
                "crop_size": {"height": px, "width": px},
                "do_center_crop": true,
                "do_convert_rgb": true,
                "do_normalize": true,
                "do_rescale": true,
                "do_resize": true,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_processor_type": "CLIPImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "processor_class": "LlavaProcessor",
                "resample": 3,
                "rescale_factor": 0.00392156862745098,
                "size": {"shortest_edge": px}
            }))?,
        ));
        out.push((
            "processor_config.json".to_string(),
            pretty(json!({
                "image_token": "<image>",
                "num_additional_image_tokens": 1,
                "patch_size": d.patch_size,
                "processor_class": "LlavaProcessor",
                "vision_feature_select_strategy": "default"
            }))?,
        ));
        out.push(("chat_template.json".to_string(), pretty(json!({
            "chat_template": "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
        }))?));
        out.push((
            "generation_config.json".to_string(),
            pretty(json!({
                "_from_model_config": true,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 32001,
                "transformers_version": "4.36.0.dev0"
            }))?,
        ));
    }
    out.push((
        "SYNTHETIC.md".to_string(),
        format!(
            "# Shape-alike checkpoint: {}\n\nWritten by `spec-llava synth`: the files, tensor names and shapes of the real \
             checkpoint, with seeded random weights (captions are gibberish). {}\n",
            like.name(),
            if like.is_qwen() {
                "The tokenizer is a generated byte-level BPE vocabulary of the real size (no merges), with \
                 <|endoftext|>, <|im_start|>, <|im_end|> and <image> at the real ids."
            } else {
                "The tokenizer is the Llama-2 vocabulary of tests/fixtures/llama2-tokenizer, whose <image> \
                 is id 32045 (the real llava-1.5 tokenizer has it at 32000), so config.json's \
                 image_token_index is 32045."
            }
        ),
    ));
    Ok(out)
}
