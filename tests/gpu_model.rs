//! The whole model on the WebGPU engine against the CPU reference, on the tiny checkpoints in
//! tests/fixtures/models/ (the same cases as tests/conformance.rs): 16 greedy tokens identical,
//! prompt logits within 1e-5 relative (to the largest logit), and a speculation-tree verification
//! pass (tree mask, logits for every node, KV compaction, one more step) within 1e-5 relative.
//!
//! Without an adapter these tests FAIL, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;
use common::{checkpoint_dir, fixtures_dir, gpu};

use std::path::PathBuf;

use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::{AttnMask, Backend};
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::image_io;
use spec_llava::model::LlavaModel;
use spec_llava::text::decoder::{LogitRows, Step};

/// (image path, prompt) of every recorded case.
fn cases(name: &str) -> Vec<(PathBuf, String)> {
    let dir = fixtures_dir().join(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                dir.join(c["image"].as_str().unwrap()),
                c["prompt"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn relative_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

fn read<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    pollster::block_on(b.read(t))
}

/// Prefill the prompt, verify a 6-node tree (two branches) with logits for every node, keep one
/// branch, and decode one more token; returns the logits of each of those three passes.
fn tree_round<B: Backend>(b: &B, m: &LlavaModel<B>, pixels: &[f32], ids: &[u32]) -> Vec<Vec<f32>> {
    let features = m.encode_image(b, pixels).unwrap();
    let x = m.embed_prompt(b, ids, Some(&features)).unwrap();
    let len = ids.len();
    let mut cache = m.text.new_cache(b, len + 8);
    let pos: Vec<u32> = (0..len as u32).collect();
    let prefill = read(b, &m.forward(b, &mut cache, x, &Step::causal(0, &pos)));

    // Nodes 0..3 form one branch (0 -> 1 -> 2), nodes 3..6 another (3 -> 4, 3 -> 5).
    let parent: [Option<usize>; 6] = [None, Some(0), Some(1), None, Some(3), Some(3)];
    let n = parent.len();
    let mut allowed = vec![false; n * n];
    let mut depth = vec![0u32; n];
    for i in 0..n {
        let mut a = Some(i);
        while let Some(j) = a {
            allowed[i * n + j] = true;
            a = parent[j];
        }
        depth[i] = parent[i].map_or(0, |p| depth[p] + 1);
    }
    let vocab = m.config.text.vocab_size as u32;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (7 + 13 * i) % vocab).collect();
    let positions: Vec<u32> = depth.iter().map(|d| len as u32 + d).collect();
    let x = m.text.embed(b, &tokens);
    let mask = AttnMask::Tree { ctx: 0, n, allowed };
    let tree = read(
        b,
        &m.forward(
            b,
            &mut cache,
            x,
            &Step {
                start: len,
                positions: &positions,
                mask: &mask,
                rows: LogitRows::All,
            },
        ),
    );

    // Accept the second branch's path 3 -> 5, then decode after it.
    b.compact_cache(&mut cache, &[len + 3, len + 5], len);
    let x = m.text.embed(b, &[11 % vocab]);
    let next = read(
        b,
        &m.forward(b, &mut cache, x, &Step::causal(len + 2, &[len as u32 + 2])),
    );
    vec![prefill, tree, next]
}

fn check_fixture(name: &str) {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let dir = checkpoint_dir(name);
    let on_cpu = Captioner::new(&cpu, Checkpoint::open(&dir).unwrap()).unwrap();
    let on_gpu = Captioner::new(&g, Checkpoint::open(&dir).unwrap()).unwrap();
    for (i, (image_path, prompt)) in cases(name).into_iter().enumerate() {
        let image = image_io::load_rgb(&image_path, image_io::DEFAULT_MAX_PIXELS).unwrap();
        let req = CaptionRequest {
            prompt: Some(prompt),
            max_new_tokens: 16,
            ..Default::default()
        };
        let want = pollster::block_on(on_cpu.caption(&cpu, &image, &req, |_| true)).unwrap();
        let read_before = g.bytes_read();
        let got = pollster::block_on(on_gpu.caption(&g, &image, &req, |_| true)).unwrap();
        // Greedy decoding reads back the argmax row of `top_k` (value, id, lse) per token, never
        // a vocabulary row of logits.
        let read = g.bytes_read() - read_before;
        let passes = got.tokens.len() as u64 + 1;
        assert!(
            read <= 12 * passes,
            "{name} case {i}: {read} bytes read back for {passes} passes"
        );
        if let Some(e) = g.take_error() {
            panic!("{name} case {i}: {e}");
        }
        assert_eq!(got.tokens, want.tokens, "{name} case {i}: greedy tokens");
        assert_eq!(got.hit_eos, want.hit_eos, "{name} case {i}: EOS");
        assert_eq!(got.text, want.text, "{name} case {i}: text");

        let (pixels, ids) = on_cpu.prepare(&image, &req).unwrap();
        let c = tree_round(&cpu, &on_cpu.model, &pixels, &ids);
        let gr = tree_round(&g, &on_gpu.model, &pixels, &ids);
        for (pass, (got, want)) in ["prefill", "tree", "after compaction"]
            .iter()
            .zip(gr.iter().zip(&c))
        {
            let rel = relative_diff(got, want);
            println!("{name} case {i} {pass}: logits max relative diff {rel:.2e}");
            assert!(
                rel <= 1e-5,
                "{name} case {i} {pass}: logits differ by {rel:e} relative"
            );
        }
        assert!(g.take_error().is_none());
    }
    println!("{name}: on {}", g.adapter_info());
}

#[test]
fn clip_llama_gqa_f32_greedy_tokens_match_the_cpu() {
    check_fixture("clip-llama-gqa-f32");
}

#[test]
fn siglip_qwen2_bf16_sharded_greedy_tokens_match_the_cpu() {
    check_fixture("siglip-qwen2-bf16-sharded");
}

#[test]
fn clip_llama2_tokenizer_greedy_tokens_match_the_cpu() {
    check_fixture("clip-llama2tok");
}

#[test]
fn clip_llama_saved_by_transformers5_greedy_tokens_match_the_cpu() {
    check_fixture("clip-llama-v5");
}

#[test]
fn siglip_qwen2_saved_by_transformers5_greedy_tokens_match_the_cpu() {
    check_fixture("siglip-qwen2-v5");
}
