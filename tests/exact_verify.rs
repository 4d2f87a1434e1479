//! Speculative verification is exact: the logits the target computes for a tree node in one
//! verification pass are bit for bit those of plain one-token decoding along the same path, and
//! the keys and values the pass leaves in the cache (kept by compaction) give the next plain step
//! bit for bit the same logits as plain decoding. On the CPU engine and on the WebGPU engine with
//! both kernel choices (CPU drivers, GPUs), f32 and q4 weights, Llama (GQA) and Qwen2 (biases);
//! also with split-K attention and with packed 8-bit dot products (`GpuOptions::int8_dot`).
//!
//! Equality, not tolerance: greedy speculative output equals plain decoding because every kernel a
//! tree pass runs sums each output in the order a one-token pass does (`shaders/matmul_vec.wgsl`,
//! `shaders/attention_tree_f32.wgsl`, `src/backend/cpu/matmul.rs`).
//!
//! Without an adapter the GPU cases FAIL, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;
use common::{checkpoint_dir, demo, gpu_each_kernel_choice, gpu_with};

use std::path::Path;

use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::gpu::{GpuBackend, GpuOptions};
use spec_llava::backend::{AttnMask, Backend};
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::image_io;
use spec_llava::quant::Format;
use spec_llava::text::decoder::{LogitRows, Step};

/// Tokens along the verified path (one per depth).
const PATH: usize = 6;

fn read<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    pollster::block_on(b.read(t))
}

/// The logits rows of plain decoding along `path` and then `after`; and of one verification pass
/// over a tree holding `path` as a chain with a sibling beside every node (interleaved, so the
/// path's nodes are not contiguous), followed by compaction to the path and a plain step on
/// `after`.
struct Run {
    plain: Vec<Vec<f32>>,
    tree: Vec<Vec<f32>>,
}

fn run<B: Backend>(b: &B, captioner: &Captioner<B>, image: &Path) -> Run {
    let m = &captioner.model;
    let rgb = image_io::load_rgb(image, image_io::DEFAULT_MAX_PIXELS).unwrap();
    let req = CaptionRequest::default();
    let (pixels, ids) = captioner.prepare(&rgb, &req).unwrap();
    let vocab = m.config.text.vocab_size as u32;
    let path: Vec<u32> = (0..PATH as u32).map(|i| (7 + 13 * i) % vocab).collect();
    let siblings: Vec<u32> = (0..PATH as u32).map(|i| (5 + 29 * i) % vocab).collect();
    let after = 11 % vocab;
    let len = ids.len();
    let features = m.encode_image(b, &pixels).unwrap();
    let prefill = |cache: &mut B::Cache| {
        let x = m.embed_prompt(b, &ids, Some(&features)).unwrap();
        let pos: Vec<u32> = (0..len as u32).collect();
        let mut step = Step::causal(0, &pos);
        step.rows = LogitRows::Last;
        let _ = m.forward(b, cache, x, &step);
    };
    let one = |cache: &mut B::Cache, token: u32, at: usize| {
        let x = m.text.embed(b, &[token]);
        read(b, &m.forward(b, cache, x, &Step::causal(at, &[at as u32])))
    };

    let mut cache = m.text.new_cache(b, len + 2 * PATH + 2);
    prefill(&mut cache);
    let mut plain: Vec<Vec<f32>> = (0..PATH)
        .map(|i| one(&mut cache, path[i], len + i))
        .collect();
    plain.push(one(&mut cache, after, len + PATH));

    // Node 2i holds path[i], node 2i + 1 its sibling; both hang off node 2(i - 1).
    let mut cache = m.text.new_cache(b, len + 2 * PATH + 2);
    prefill(&mut cache);
    let n = 2 * PATH;
    let parent = |i: usize| (i >= 2).then(|| 2 * (i / 2 - 1));
    let mut allowed = vec![false; n * n];
    for i in 0..n {
        let mut a = Some(i);
        while let Some(j) = a {
            allowed[i * n + j] = true;
            a = parent(j);
        }
    }
    let tokens: Vec<u32> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                path[i / 2]
            } else {
                siblings[i / 2]
            }
        })
        .collect();
    let positions: Vec<u32> = (0..n).map(|i| (len + i / 2) as u32).collect();
    let mask = AttnMask::Tree { ctx: 0, n, allowed };
    let step = Step {
        start: len,
        positions: &positions,
        mask: &mask,
        rows: LogitRows::All,
    };
    let rows = read(
        b,
        &m.forward(b, &mut cache, m.text.embed(b, &tokens), &step),
    );
    let width = rows.len() / n;
    let mut tree: Vec<Vec<f32>> = (0..PATH)
        .map(|i| rows[2 * i * width..(2 * i + 1) * width].to_vec())
        .collect();
    let kept: Vec<usize> = (0..PATH).map(|i| len + 2 * i).collect();
    b.compact_cache(&mut cache, &kept, len);
    tree.push(one(&mut cache, after, len + PATH));
    Run { plain, tree }
}

fn assert_exact(what: &str, r: &Run) {
    for (d, (got, want)) in r.tree.iter().zip(&r.plain).enumerate() {
        assert_eq!(got.len(), want.len(), "{what}: row width");
        let differ = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        let pass = if d == PATH {
            "after compaction"
        } else {
            "tree node"
        };
        assert_eq!(
            differ,
            0,
            "{what}: {pass} at depth {d}: {differ} of {} logits differ from plain decoding",
            want.len()
        );
    }
}

/// (label, checkpoint dir, quantize to) for every model checked.
fn models() -> Vec<(String, std::path::PathBuf, Option<Format>)> {
    vec![
        ("demo target f32".into(), demo("target"), None),
        ("demo target q4".into(), demo("target"), Some(Format::Q4)),
        (
            "clip-llama-gqa-f32".into(),
            checkpoint_dir("clip-llama-gqa-f32"),
            None,
        ),
        (
            "siglip-qwen2-bf16-sharded q8".into(),
            checkpoint_dir("siglip-qwen2-bf16-sharded"),
            Some(Format::Q8),
        ),
    ]
}

fn open(dir: &Path, quant: Option<Format>) -> Checkpoint {
    let mut c = Checkpoint::open(dir).unwrap();
    c.weights.set_quantize_on_load(quant);
    c
}

fn image() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/photo.jpg")
}

#[test]
fn verified_nodes_equal_plain_decoding_bit_for_bit_on_the_cpu_engine() {
    let cpu = CpuBackend;
    for (label, dir, quant) in models() {
        let c = Captioner::new(&cpu, open(&dir, quant)).unwrap();
        assert_exact(&format!("cpu, {label}"), &run(&cpu, &c, &image()));
    }
}

#[test]
fn verified_nodes_equal_plain_decoding_bit_for_bit_on_the_gpu_engine() {
    for (cpu_kernels, g) in gpu_each_kernel_choice() {
        for (label, dir, quant) in models() {
            let c = Captioner::new(&g, open(&dir, quant)).unwrap();
            let r = run(&g, &c, &image());
            if let Some(e) = g.take_error() {
                panic!("{label}: {e}");
            }
            assert_exact(&format!("gpu (cpu kernels: {cpu_kernels}), {label}"), &r);
        }
    }
}

#[test]
fn stacked_projections_give_the_separate_ones_logits_bit_for_bit_on_the_gpu_engine() {
    // The GPU engine loads q/k/v and gate/up as one stacked weight each and runs one matmul where
    // three and two ran, with the layer's norm in its prologue on the GPU kernels, the rope +
    // cache-write kernel reading q/k/v in place and the activation in the gate/up matmul's
    // epilogue: every logit of plain steps, a tree pass and the step after compaction must be
    // what separate projections, norms and the gated kernel give, and a decoding pass must
    // launch 4 kernels fewer per layer (6 with the norms fused).
    for cpu_kernels in [true, false] {
        let opts = |separate_projections| GpuOptions {
            cpu_kernels: Some(cpu_kernels),
            separate_projections,
            ..GpuOptions::default()
        };
        let (Some(stacked), Some(separate)) = (gpu_with(opts(false)), gpu_with(opts(true))) else {
            continue;
        };
        assert!(stacked.stacks_projections() && !separate.stacks_projections());
        for (label, dir, quant) in models() {
            let run_on = |g: &GpuBackend| {
                let c = Captioner::new(g, open(&dir, quant)).unwrap();
                let r = run(g, &c, &image());
                // Dispatches of one decoding pass after the run's context.
                let m = &c.model;
                let mut cache = m.text.new_cache(g, 4);
                let before = g.dispatches().unwrap();
                let _ = m.forward(g, &mut cache, m.text.embed(g, &[1]), &Step::causal(0, &[0]));
                let launched = g.dispatches().unwrap() - before;
                if let Some(e) = g.take_error() {
                    panic!("{label}: {e}");
                }
                (r, launched, m.config.text.num_hidden_layers as u64)
            };
            let ((a, fewer, layers), (b, more, _)) = (run_on(&stacked), run_on(&separate));
            let what = format!("cpu kernels: {cpu_kernels}, {label}");
            let bits = |rows: &[Vec<f32>]| -> Vec<Vec<u32>> {
                rows.iter()
                    .map(|r| r.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert!(
                bits(&a.plain) == bits(&b.plain),
                "{what}: plain steps differ"
            );
            assert!(bits(&a.tree) == bits(&b.tree), "{what}: tree pass differs");
            assert_exact(&format!("{what}, stacked"), &a);
            assert_eq!(
                more - fewer,
                if cpu_kernels { 4 } else { 6 } * layers,
                "{what}: {more} vs {fewer} dispatches"
            );
        }
    }
}

#[test]
fn a_prompt_pass_cut_to_its_last_row_gives_that_row_and_the_next_step_bit_for_bit() {
    // With only the last row's logits asked for, the last layer's o_proj and MLP run on that
    // row alone (`text::decoder`): its logits, and the cache it leaves, must not change.
    let b = CpuBackend;
    let rgb = image_io::load_rgb(&image(), image_io::DEFAULT_MAX_PIXELS).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (label, dir, quant) in models() {
        let c = Captioner::new(&b, open(&dir, quant)).unwrap();
        let m = &c.model;
        let (pixels, ids) = c.prepare(&rgb, &CaptionRequest::default()).unwrap();
        let features = m.encode_image(&b, &pixels).unwrap();
        let len = ids.len();
        let pos: Vec<u32> = (0..len as u32).collect();
        let next = 11 % m.config.text.vocab_size as u32;
        let pass = |rows: LogitRows| {
            let mut cache = m.text.new_cache(&b, len + 2);
            let x = m.embed_prompt(&b, &ids, Some(&features)).unwrap();
            let mut step = Step::causal(0, &pos);
            step.rows = rows;
            let logits = read(&b, &m.forward(&b, &mut cache, x, &step));
            let x = m.text.embed(&b, &[next]);
            let after = m.forward(&b, &mut cache, x, &Step::causal(len, &[len as u32]));
            (logits, read(&b, &after))
        };
        let (last, after_cut) = pass(LogitRows::Last);
        let (all, after_full) = pass(LogitRows::All);
        assert_eq!(all.len(), last.len() * len, "{label}");
        assert_eq!(bits(&last), bits(&all[all.len() - last.len()..]), "{label}");
        assert_eq!(
            bits(&after_cut),
            bits(&after_full),
            "{label}: the next step"
        );
    }
}

#[test]
fn split_attention_keeps_verified_nodes_equal_to_plain_decoding_bit_for_bit() {
    // Split-K attention cuts each token's keys into chunks by logical index (its n-th visible key)
    // and merges them after. Chunks of 5 put a boundary inside every 6-token path, so a tree node
    // and the plain pass that decodes it must agree on which chunk each key is in; chunks of 16
    // leave the path whole for some tokens and cut it for others. Every logit must equal plain
    // decoding bit for bit, the logits must match the unsplit engine's within f32 noise, and a
    // decoding pass must launch one merge per layer more. With the partials capped at 4 KiB, the
    // prompt goes in slices of a few tokens.
    for (cpu_kernels, chunk, partial_bytes) in [(false, 5, None), (true, 16, Some(4096))] {
        let opts = |attention_chunk| GpuOptions {
            cpu_kernels: Some(cpu_kernels),
            attention_chunk: Some(attention_chunk),
            attention_partial_bytes: partial_bytes,
            ..GpuOptions::default()
        };
        let (Some(split), Some(whole)) = (gpu_with(opts(chunk)), gpu_with(opts(0))) else {
            continue;
        };
        for (label, dir, quant) in models() {
            let what = format!("chunk {chunk}, cpu kernels: {cpu_kernels}, {label}");
            let run_on = |g: &GpuBackend| {
                let c = Captioner::new(g, open(&dir, quant)).unwrap();
                let r = run(g, &c, &image());
                let m = &c.model;
                let mut cache = m.text.new_cache(g, 2 * chunk);
                let pos: Vec<u32> = (0..2 * chunk as u32).collect();
                let x = m.text.embed(g, &vec![1; 2 * chunk]);
                let _ = m.forward(g, &mut cache, x, &Step::causal(0, &pos));
                let before = g.dispatches().unwrap();
                let step = Step::causal(2 * chunk - 1, &pos[..1]);
                let _ = m.forward(g, &mut cache, m.text.embed(g, &[1]), &step);
                let launched = g.dispatches().unwrap() - before;
                if let Some(e) = g.take_error() {
                    panic!("{what}: {e}");
                }
                (r, launched, m.config.text.num_hidden_layers as u64)
            };
            let ((a, more, layers), (b, fewer, _)) = (run_on(&split), run_on(&whole));
            assert_exact(&what, &a);
            for (x, y) in a.plain.iter().zip(&b.plain) {
                let scale = y.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
                let worst = x.iter().zip(y).fold(0f32, |w, (p, q)| w.max((p - q).abs()));
                assert!(worst <= 1e-4 * scale, "{what}: {worst} vs scale {scale}");
            }
            assert_eq!(more - fewer, layers, "{what}: {more} vs {fewer} dispatches");
        }
    }
}

#[test]
fn int8_dot_products_keep_verified_nodes_equal_to_plain_decoding_bit_for_bit() {
    // With packed 8-bit dot products (`GpuOptions::int8_dot`) every q8 / q4 mat-vec of a decoding
    // or tree pass quantizes x per block of 32 (`shaders/dot_int8.wgsl`). A tree pass must still
    // give plain decoding's logits bit for bit, and those logits must stay near the f32 mat-vec's
    // without being them (the int8 kernels ran).
    let opts = |int8_dot| GpuOptions {
        cpu_kernels: Some(false),
        int8_dot: Some(int8_dot),
        ..GpuOptions::default()
    };
    let (Some(int8), Some(f32_engine)) = (gpu_with(opts(true)), gpu_with(opts(false))) else {
        return;
    };
    if !int8.device_kernels().int8_dot {
        eprintln!(
            "skipping: {} has no packed 8-bit dot products",
            int8.adapter_info()
        );
        return;
    }
    let quantized = models()
        .into_iter()
        .filter(|(_, _, q)| matches!(q, Some(Format::Q4 | Format::Q8)));
    for (label, dir, quant) in quantized {
        let run_on = |g: &GpuBackend| {
            let c = Captioner::new(g, open(&dir, quant)).unwrap();
            let r = run(g, &c, &image());
            if let Some(e) = g.take_error() {
                panic!("{label}: {e}");
            }
            r
        };
        let (a, b) = (run_on(&int8), run_on(&f32_engine));
        assert_exact(&format!("int8 dot, {label}"), &a);
        let mut worst = 0f32;
        for (x, y) in a.plain.iter().zip(&b.plain) {
            let scale = y.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            let err = x.iter().zip(y).fold(0f32, |w, (p, q)| w.max((p - q).abs()));
            worst = worst.max(err / scale);
        }
        println!("{label}: int8 logits within {worst:e} of the f32 mat-vec's");
        assert!(worst > 0.0 && worst <= 0.1, "{label}: {worst:e}");
    }
}
