//! The CPU reference engine against Hugging Face transformers, on the tiny random checkpoints that
//! `tools/reference/make_model_fixtures.py` (transformers 4.x) and `make_v5_fixtures.py` (5.x)
//! record (tests/fixtures/models/*): prompt ids identical,
//! pixel values within 1e-5 (already at size) or 2/255 (resized), last-token logits within 1e-4
//! relative, 16 greedy tokens identical — through the library and through `spec-llava caption`.

use spec_llava::backend::cpu::CpuBackend;
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::image_io;
use spec_llava::text::decoder::Step;
use spec_llava::weights::{widen, DType};

mod common;
use common::{checkpoint_dir, fixtures_dir};

struct Reference {
    json: serde_json::Value,
    tensors: Vec<u8>,
}

fn reference(name: &str) -> Reference {
    let dir = fixtures_dir().join(name);
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    let tensors = std::fs::read(dir.join("reference.safetensors")).unwrap();
    Reference { json, tensors }
}

fn tensor(r: &Reference, name: &str) -> Vec<f32> {
    let st = safetensors::SafeTensors::deserialize(&r.tensors).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    widen(DType::F32, t.data())
}

fn raw_u8(r: &Reference, name: &str) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(&r.tensors).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::U8);
    t.data().to_vec()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_fixture(name: &str) {
    let r = reference(name);
    let dir = checkpoint_dir(name);
    let b = CpuBackend;
    let captioner = Captioner::new(&b, Checkpoint::open(&dir).unwrap()).unwrap();
    let (h, w) = captioner.checkpoint.processor.output_size();
    if let Some(chat) = r.json.get("chat_prompt").and_then(|c| c.as_str()) {
        assert_eq!(
            captioner
                .checkpoint
                .default_prompt("Describe the image.")
                .unwrap(),
            chat,
            "{name}: chat template"
        );
    }
    let cases = r.json["cases"].as_array().unwrap();
    assert!(cases.len() >= 3, "{name}: expected several cases");
    for (i, case) in cases.iter().enumerate() {
        let image_path = fixtures_dir()
            .join(name)
            .join(case["image"].as_str().unwrap());
        let image = image_io::load_rgb(&image_path, image_io::DEFAULT_MAX_PIXELS).unwrap();
        let prompt = case["prompt"].as_str().unwrap().to_string();
        let req = CaptionRequest {
            prompt: Some(prompt),
            max_new_tokens: 16,
            ..Default::default()
        };

        let (_, prompt_ids) = captioner.prepare(&image, &req).unwrap();
        assert_eq!(
            prompt_ids,
            ids(&case["input_ids"]),
            "{name} case {i}: prompt ids"
        );
        // Decoding: PNGs exactly as PIL; JPEG decoders round differently (a few levels).
        let pil_rgb = raw_u8(&r, &format!("case{i}.rgb"));
        let decode_diff = image
            .as_raw()
            .iter()
            .zip(&pil_rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let lossy = image_path
            .extension()
            .is_some_and(|e| e == "jpg" || e == "jpeg");
        println!("{name} case {i}: decoded RGB max diff {decode_diff} levels");
        assert!(
            decode_diff <= if lossy { 8 } else { 0 },
            "{name} case {i}: decoded image differs by {decode_diff}"
        );
        // Preprocessing of the same RGB pixels PIL decoded: 1e-5 at size, 2/255 of intensity
        // (scaled by 1/std after normalisation) after a resize.
        let pil_image = image::RgbImage::from_raw(image.width(), image.height(), pil_rgb).unwrap();
        let pixels = captioner
            .checkpoint
            .processor
            .preprocess(&pil_image)
            .unwrap();
        let ref_pixels = tensor(&r, &format!("case{i}.pixel_values"));
        let at_size = image.width() as usize == w && image.height() as usize == h;
        let std_min = captioner
            .checkpoint
            .processor
            .image_std
            .iter()
            .cloned()
            .fold(f32::INFINITY, f32::min);
        let tol = if at_size { 1e-5 } else { 2.0 / 255.0 / std_min };
        let d = max_abs_diff(&pixels, &ref_pixels);
        println!("{name} case {i}: pixel max abs diff {d:.2e} (tolerance {tol:.1e})");
        assert!(d <= tol, "{name} case {i}: pixel values differ by {d}");

        // Last-token logits of the prompt, computed from transformers' own pixel values so the
        // decoder is checked independently of the resize.
        let m = &captioner.model;
        let features = m.encode_image(&b, &ref_pixels).unwrap();
        let x = m.embed_prompt(&b, &prompt_ids, Some(&features)).unwrap();
        let mut cache = m.text.new_cache(&b, prompt_ids.len());
        let pos: Vec<u32> = (0..prompt_ids.len() as u32).collect();
        let logits = m.forward(&b, &mut cache, x, &Step::causal(0, &pos)).data;
        let ref_logits = tensor(&r, &format!("case{i}.logits"));
        let scale = ref_logits.iter().fold(0f32, |a, v| a.max(v.abs()));
        let rel = max_abs_diff(&logits, &ref_logits) / scale;
        println!("{name} case {i}: logits max relative diff {rel:.2e}");
        assert!(
            rel <= 1e-4,
            "{name} case {i}: logits differ by {rel} relative"
        );

        let out = pollster::block_on(captioner.caption(&b, &image, &req, |_| true)).unwrap();
        assert_eq!(
            out.tokens,
            ids(&case["greedy_tokens"]),
            "{name} case {i}: greedy tokens"
        );
        assert_eq!(
            out.hit_eos,
            case["eos_hit"].as_bool().unwrap(),
            "{name} case {i}: EOS"
        );
        assert_eq!(
            out.text,
            case["text"].as_str().unwrap(),
            "{name} case {i}: text"
        );
    }
}

#[test]
fn clip_llama_gqa_f32_matches_transformers() {
    check_fixture("clip-llama-gqa-f32");
}

#[test]
fn siglip_qwen2_bf16_sharded_matches_transformers() {
    check_fixture("siglip-qwen2-bf16-sharded");
}

#[test]
fn clip_llama2_tokenizer_matches_transformers() {
    check_fixture("clip-llama2tok");
}

/// As transformers 5.x saves it: vision tower without `vision_model.`, image processor inside
/// processor_config.json, chat_template.jinja, `rope_parameters`.
#[test]
fn clip_llama_saved_by_transformers5_matches_transformers() {
    check_fixture("clip-llama-v5");
}

#[test]
fn siglip_qwen2_saved_by_transformers5_matches_transformers() {
    check_fixture("siglip-qwen2-v5");
}

#[test]
fn cli_caption_json_reproduces_greedy_tokens() {
    for name in [
        "clip-llama-gqa-f32",
        "siglip-qwen2-bf16-sharded",
        "clip-llama2tok",
        "clip-llama-v5",
        "siglip-qwen2-v5",
    ] {
        let r = reference(name);
        let case = &r.json["cases"][0];
        let dir = checkpoint_dir(name);
        let image = fixtures_dir()
            .join(name)
            .join(case["image"].as_str().unwrap());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spec-llava"))
            .args(["caption", "--json", "--max-new-tokens", "16", "--model"])
            .arg(&dir)
            .arg("--image")
            .arg(&image)
            .args(["--prompt", case["prompt"].as_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "exactly one JSON line: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(ids(&v["tokens"]), ids(&case["greedy_tokens"]), "{name}");
        assert_eq!(
            v["prompt_tokens"].as_u64().unwrap() as usize,
            case["input_ids"].as_array().unwrap().len()
        );
        assert_eq!(v["text"], case["text"]);
        assert!(v["timings_ms"]["total_ms"].as_f64().unwrap() > 0.0);
    }
}
