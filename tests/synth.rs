//! `spec-llava synth`: shape-alike checkpoints open and caption on the CPU engine for every
//! imitated model, name style and a spread of dtypes; the tensor list at full size has the real
//! names and shapes; shards and the index are written; the same seed gives the same bytes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use spec_llava::backend::cpu::CpuBackend;
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::scenes;
use spec_llava::synth::{self, Like, Names, SynthDtype, SynthOptions};
use spec_llava::weights::NameStyle;

/// The 7B / 13B-width checkpoints take a few GB of memory on the CPU engine: one at a time.
static BIG: Mutex<()> = Mutex::new(());

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spec-llava-synth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Small overrides: 1 decoder layer, 2 vision layers, 56 px (4x4 patches of 14).
fn small(like: Like, dtype: SynthDtype, names: Names) -> SynthOptions {
    SynthOptions {
        dtype,
        names,
        text_layers: Some(1),
        vision_layers: Some(2),
        image_size: Some(56),
        ..SynthOptions::new(like)
    }
}

/// Write, open, caption a few tokens; check the name style and the written tensor list.
fn writes_opens_and_captions(opts: &SynthOptions, tag: &str) {
    let dir = scratch(tag);
    let report = synth::synth_checkpoint(opts, &dir).unwrap();
    let (_, stored) = synth::plan(opts).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let mut names: Vec<&str> = checkpoint.weights.names().collect();
    names.sort();
    let planned: Vec<&str> = stored.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, planned, "{tag}");
    for t in &stored {
        let raw = checkpoint.weights.raw(&t.name).unwrap();
        assert_eq!(raw.shape, t.shape.as_slice(), "{tag}: {}", t.name);
    }
    let style = NameStyle::detect(&checkpoint.weights);
    let vision = match opts.names {
        Names::V4 => "vision_tower.vision_model.",
        Names::V5 => "vision_tower.",
    };
    assert_eq!(style.vision, vision, "{tag}");
    assert_eq!(style.text, "language_model.model.", "{tag}");
    let format = checkpoint.weights.format().map(|f| f.name());
    match opts.dtype {
        SynthDtype::Q4 => assert_eq!(format, Some("q4")),
        SynthDtype::Q8 => assert_eq!(format, Some("q8")),
        _ => assert_eq!(format, None),
    }
    assert_eq!(
        checkpoint.config.vision.image_size,
        opts.image_size.unwrap_or(opts.like.dims().image_size)
    );
    let captioner = Captioner::new(&CpuBackend, checkpoint).unwrap();
    let req = CaptionRequest {
        max_new_tokens: 3,
        ..CaptionRequest::default()
    };
    let scene = scenes::generate(1);
    let out =
        pollster::block_on(captioner.caption(&CpuBackend, &scene.image, &req, |_| true)).unwrap();
    assert!(!out.tokens.is_empty(), "{tag}: no tokens");
    assert!(report.shards.len() == 1, "{tag}: {:?}", report.shards);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn draft_68m_in_every_dtype_and_name_style() {
    for (dtype, names) in [
        (SynthDtype::F16, Names::V4),
        (SynthDtype::BF16, Names::V5),
        (SynthDtype::Q4, Names::V4),
        (SynthDtype::Q8, Names::V5),
        (SynthDtype::F32, Names::V4),
    ] {
        let opts = small(Like::Llava15_68m, dtype, names);
        writes_opens_and_captions(&opts, &format!("68m-{}-{names:?}", dtype.name()));
    }
}

#[test]
fn interleave_qwen_in_both_name_styles() {
    // SigLIP: 28 px = 2x2 patches.
    for (dtype, names) in [(SynthDtype::BF16, Names::V4), (SynthDtype::Q4, Names::V5)] {
        let opts = SynthOptions {
            image_size: Some(28),
            ..small(Like::InterleaveQwen05b, dtype, names)
        };
        writes_opens_and_captions(&opts, &format!("qwen-{}-{names:?}", dtype.name()));
    }
}

#[test]
fn llava_7b_width_one_layer() {
    let _one = BIG.lock().unwrap_or_else(|e| e.into_inner());
    let opts = small(Like::Llava15_7b, SynthDtype::Q4, Names::V4);
    writes_opens_and_captions(&opts, "7b-q4-v4");
}

#[test]
fn llava_13b_width_one_layer() {
    let _one = BIG.lock().unwrap_or_else(|e| e.into_inner());
    let opts = small(Like::Llava15_13b, SynthDtype::F16, Names::V5);
    writes_opens_and_captions(&opts, "13b-f16-v5");
}

fn shapes(opts: &SynthOptions) -> std::collections::HashMap<String, Vec<usize>> {
    synth::plan(opts)
        .unwrap()
        .0
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect()
}

#[test]
fn full_size_tensor_lists_match_the_real_checkpoints() {
    // llava-hf/llava-1.5-7b-hf, transformers 4.x names.
    let s = shapes(&SynthOptions::new(Like::Llava15_7b));
    let v = "vision_tower.vision_model.";
    let want: &[(&str, &[usize])] = &[
        ("language_model.model.embed_tokens.weight", &[32064, 4096]),
        (
            "language_model.model.layers.0.self_attn.q_proj.weight",
            &[4096, 4096],
        ),
        (
            "language_model.model.layers.31.self_attn.k_proj.weight",
            &[4096, 4096],
        ),
        (
            "language_model.model.layers.31.mlp.gate_proj.weight",
            &[11008, 4096],
        ),
        (
            "language_model.model.layers.31.mlp.down_proj.weight",
            &[4096, 11008],
        ),
        (
            "language_model.model.layers.0.input_layernorm.weight",
            &[4096],
        ),
        ("language_model.model.norm.weight", &[4096]),
        ("language_model.lm_head.weight", &[32064, 4096]),
        ("multi_modal_projector.linear_1.weight", &[4096, 1024]),
        ("multi_modal_projector.linear_1.bias", &[4096]),
        ("multi_modal_projector.linear_2.weight", &[4096, 4096]),
    ];
    for (name, shape) in want {
        assert_eq!(s.get(*name).map(Vec::as_slice), Some(*shape), "{name}");
    }
    let vision: &[(&str, &[usize])] = &[
        ("embeddings.class_embedding", &[1024]),
        ("embeddings.patch_embedding.weight", &[1024, 3, 14, 14]),
        ("embeddings.position_embedding.weight", &[577, 1024]),
        ("pre_layrnorm.weight", &[1024]),
        ("encoder.layers.23.self_attn.out_proj.weight", &[1024, 1024]),
        ("encoder.layers.23.mlp.fc1.weight", &[4096, 1024]),
        ("encoder.layers.23.mlp.fc2.bias", &[1024]),
        ("post_layernorm.bias", &[1024]),
    ];
    for (name, shape) in vision {
        let full = format!("{v}{name}");
        assert_eq!(s.get(&full).map(Vec::as_slice), Some(*shape), "{full}");
    }
    assert!(!s.contains_key("language_model.model.layers.32.input_layernorm.weight"));
    assert!(!s.contains_key(&format!("{v}encoder.layers.24.mlp.fc1.weight")));
    // 32 decoder layers x 9 + embed, norm, head; 24 CLIP layers x 16 + 8; projector 4.
    assert_eq!(s.len(), 32 * 9 + 3 + 24 * 16 + 7 + 4);
    let params: usize = s.values().map(|v| v.iter().product::<usize>()).sum();
    assert!((7_000_000_000..7_100_000_000).contains(&params), "{params}");

    // transformers 5.x names: no `vision_model.` level, the rest unchanged.
    let s5 = shapes(&SynthOptions {
        names: Names::V5,
        ..SynthOptions::new(Like::Llava15_7b)
    });
    assert_eq!(
        s5.get("vision_tower.embeddings.position_embedding.weight"),
        Some(&vec![577, 1024])
    );
    assert_eq!(s5.len(), s.len());
    assert!(s5.keys().all(|k| !k.contains("vision_model.")));

    // 13B.
    let s = shapes(&SynthOptions::new(Like::Llava15_13b));
    assert_eq!(
        s["language_model.model.layers.39.mlp.up_proj.weight"],
        [13824, 5120]
    );
    assert_eq!(s["language_model.lm_head.weight"], [32064, 5120]);
    assert_eq!(s["multi_modal_projector.linear_1.weight"], [5120, 1024]);

    // llava-interleave-qwen-0.5b: SigLIP (no class token, patch bias, no pre-norm), tied head.
    let s = shapes(&SynthOptions::new(Like::InterleaveQwen05b));
    assert_eq!(
        s[&format!("{v}embeddings.position_embedding.weight")],
        [729, 1152]
    );
    assert_eq!(s[&format!("{v}embeddings.patch_embedding.bias")], [1152]);
    assert_eq!(
        s[&format!("{v}encoder.layers.25.mlp.fc1.weight")],
        [4304, 1152]
    );
    assert!(!s.contains_key(&format!("{v}encoder.layers.26.mlp.fc1.weight")));
    assert!(!s.contains_key(&format!("{v}pre_layrnorm.weight")));
    assert_eq!(
        s["language_model.model.embed_tokens.weight"],
        [152000, 1024]
    );
    assert_eq!(
        s["language_model.model.layers.23.self_attn.k_proj.bias"],
        [1024]
    );
    assert!(!s.contains_key("language_model.lm_head.weight"));

    // The draft: llama-68m text, CLIP-L tower, projector to 768.
    let s = shapes(&SynthOptions::new(Like::Llava15_68m));
    assert_eq!(s["multi_modal_projector.linear_1.weight"], [768, 1024]);
    assert_eq!(
        s["language_model.model.layers.1.mlp.up_proj.weight"],
        [3072, 768]
    );
    assert!(!s.contains_key("language_model.model.layers.2.mlp.up_proj.weight"));
}

#[test]
fn full_size_q4_header_of_7b() {
    // The stored (quantized) list at full width; q4 codes and scales as `quantize` writes them.
    let opts = SynthOptions {
        dtype: SynthDtype::Q4,
        ..SynthOptions::new(Like::Llava15_7b)
    };
    let (_, stored) = synth::plan(&opts).unwrap();
    let get = |n: &str| stored.iter().find(|t| t.name == n).unwrap();
    let q = get("language_model.model.layers.0.self_attn.q_proj.weight.q4");
    assert_eq!(q.shape, [4096, 128 * 16]);
    assert_eq!(
        get("language_model.model.layers.0.self_attn.q_proj.weight.scales").shape,
        [4096, 128]
    );
    assert_eq!(
        get("language_model.model.embed_tokens.weight").shape,
        [32064, 4096]
    );
    let total: u64 = stored.iter().map(|t| t.bytes).sum();
    // About 3.9 GiB: 4.5 bits per linear weight, f16 embeddings.
    assert!((4_000_000_000..4_300_000_000).contains(&total), "{total}");
}

#[test]
fn config_json_matches_the_real_one() {
    let text = synth::config_json(&SynthOptions::new(Like::Llava15_7b)).unwrap();
    let c = spec_llava::config::LlavaConfig::from_json(&text, "config.json").unwrap();
    assert_eq!(
        (
            c.text.hidden_size,
            c.text.num_hidden_layers,
            c.text.num_attention_heads
        ),
        (4096, 32, 32)
    );
    assert_eq!(
        (c.text.intermediate_size, c.text.vocab_size),
        (11008, 32064)
    );
    assert_eq!(c.text.rope_theta, 10000.0);
    assert_eq!(
        (
            c.vision.hidden_size,
            c.vision.num_hidden_layers,
            c.vision.image_size
        ),
        (1024, 24, 336)
    );
    assert_eq!(c.vision_feature_layers, [-2]);
    // The shipped Llama-2 tokenizer has <image> at 32045.
    assert_eq!(c.image_token_index, 32045);
    let text = synth::config_json(&SynthOptions::new(Like::InterleaveQwen05b)).unwrap();
    let c = spec_llava::config::LlavaConfig::from_json(&text, "config.json").unwrap();
    assert!(c.text.tie_word_embeddings);
    assert_eq!((c.text.vocab_size, c.text.rope_theta), (152000, 1e6));
    assert_eq!((c.vision.image_size, c.vision.num_hidden_layers), (384, 26));
    assert_eq!(
        (c.vision_feature_layers.as_slice(), c.image_token_index),
        (&[-1][..], 151646)
    );
    // Overrides are checked.
    let bad = SynthOptions {
        image_size: Some(50),
        ..SynthOptions::new(Like::Llava15_7b)
    };
    assert!(synth::config_json(&bad)
        .unwrap_err()
        .to_string()
        .contains("multiple of the patch"));
    let bad = SynthOptions {
        vision_layers: Some(0),
        ..SynthOptions::new(Like::Llava15_7b)
    };
    assert!(synth::plan(&bad).is_err());
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn shards_index_and_determinism() {
    let opts = SynthOptions {
        vision_layers: Some(1),
        max_shard_bytes: 8 << 20,
        seed: 7,
        ..small(Like::Llava15_68m, SynthDtype::Q4, Names::V4)
    };
    let a = scratch("shard-a");
    let report = synth::synth_checkpoint(&opts, &a).unwrap();
    assert!(report.shards.len() >= 3, "{:?}", report.shards);
    for s in &report.shards {
        let len = std::fs::metadata(a.join(s)).unwrap().len();
        // A tensor bigger than the limit (the embeddings) gets a shard of its own.
        assert!(len <= 8 << 20 || s.contains("-of-"), "{s}: {len}");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["metadata"]["spec_llava.quant"], "q4");
    assert_eq!(
        index["metadata"]["total_size"].as_u64().unwrap(),
        report.weight_bytes
    );
    let checkpoint = Checkpoint::open(&a).unwrap();
    assert_eq!(checkpoint.weights.format().map(|f| f.name()), Some("q4"));
    Captioner::new(&CpuBackend, checkpoint).unwrap();

    // Same seed: the same bytes, file for file.
    let b = scratch("shard-b");
    synth::synth_checkpoint(&opts, &b).unwrap();
    assert!(read_all(&a) == read_all(&b), "same seed, different bytes");
    // In memory (for benchmarks): the same files, byte for byte.
    let (memory, in_memory) = synth::synth_in_memory(&opts, "memory").unwrap();
    assert_eq!(in_memory.shards, report.shards);
    let memory: Vec<(String, Vec<u8>)> = memory
        .files
        .iter()
        .map(|(name, file)| (name.clone(), file.read(0, file.len()).unwrap().into_owned()))
        .collect();
    assert!(memory == read_all(&a), "memory and files differ");
    // Another seed: other weights, same layout.
    let c = scratch("shard-c");
    synth::synth_checkpoint(
        &SynthOptions {
            seed: 8,
            ..opts.clone()
        },
        &c,
    )
    .unwrap();
    let (fa, fc) = (read_all(&a), read_all(&c));
    assert_eq!(fa.len(), fc.len());
    assert!(fa.iter().zip(&fc).any(|(x, y)| x.1 != y.1));
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn cli_writes_a_checkpoint() {
    let out = scratch("cli");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_spec-llava"))
        .args(["synth", "--like", "llava-1.5-68m", "--out"])
        .arg(&out)
        .args([
            "--dtype",
            "bf16",
            "--text-layers",
            "1",
            "--vision-layers",
            "1",
        ])
        .args([
            "--image-size",
            "28",
            "--names",
            "v5",
            "--seed",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["like"], "llava-1.5-68m");
    assert_eq!(r["dtype"], "bf16");
    Checkpoint::open(&out).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_spec-llava"))
        .args(["synth", "--like", "llava-1.5-7b", "--out"])
        .arg(&out)
        .args(["--image-size", "30"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("multiple of the patch size"));
    let _ = std::fs::remove_dir_all(&out);
}
