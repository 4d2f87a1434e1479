//! Speculative decoding on the WebGPU engine (lavapipe here): greedy output identical to plain
//! decoding on every fixture, for a chain, a wide tree, a perfect and a random-weight draft —
//! the same backend-agnostic loop the CPU tests check in tests/speculative.rs.
//! Without an adapter these tests FAIL, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;

use common::{checkpoint_dir, fixtures_dir, gpu, random_weights_copy};
use spec_llava::caption::{CaptionRequest, Captioner, DraftEngine};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::image_io;
use spec_llava::speculative::SpecOptions;

// Greedy speculation equals plain decoding and transformers' greedy tokens on every fixture, on
// each engine (`greedy_speculation_equals_plain_decoding::{cpu, gpu}`).
test_each_backend!(greedy_speculation_equals_plain_decoding, |b| {
    for name in [
        "clip-llama-gqa-f32",
        "siglip-qwen2-bf16-sharded",
        "clip-llama2tok",
    ] {
        let target = Captioner::new(b, Checkpoint::open(&checkpoint_dir(name)).unwrap()).unwrap();
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures_dir().join(name).join("reference.json")).unwrap(),
        )
        .unwrap();
        let case = &reference["cases"][1];
        let image = image_io::load_rgb(
            &fixtures_dir()
                .join(name)
                .join(case["image"].as_str().unwrap()),
            1 << 26,
        )
        .unwrap();
        let req = CaptionRequest {
            prompt: Some(case["prompt"].as_str().unwrap().into()),
            max_new_tokens: 16,
            ..Default::default()
        };
        let plain = pollster::block_on(target.caption(b, &image, &req, |_| true)).unwrap();
        let want: Vec<u32> = case["greedy_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            plain.tokens, want,
            "{name}: GPU plain decoding vs transformers"
        );
        for draft_dir in [checkpoint_dir(name), random_weights_copy(name, 9)] {
            let drafter = target
                .drafter(Captioner::new(b, Checkpoint::open(&draft_dir).unwrap()).unwrap())
                .unwrap();
            for o in [
                SpecOptions {
                    budget: 1,
                    depth: 1,
                    top_k: 1,
                    threshold: 0.0,
                },
                SpecOptions {
                    budget: 12,
                    depth: 5,
                    top_k: 3,
                    threshold: 0.0,
                },
            ] {
                let s = pollster::block_on(target.caption_speculative(
                    b,
                    &drafter,
                    &image,
                    &req,
                    o,
                    |_| true,
                ))
                .unwrap();
                assert_eq!(
                    s.tokens,
                    want,
                    "{name}, draft {}, {o:?}",
                    draft_dir.display()
                );
            }
        }
    }
});

/// The demo pair on the GPU engine: greedy speculation with the default tree equals plain decoding
/// on 200 held-out scenes (as the CPU test does), and a chain (budget 1) does on the first 12.
#[test]
fn demo_pair_on_the_gpu_is_lossless_on_200_scenes() {
    let Some(b) = gpu() else { return };
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/models/demo");
    let target = Captioner::new(&b, Checkpoint::open(&demo.join("target")).unwrap()).unwrap();
    let draft = Captioner::new(&b, Checkpoint::open(&demo.join("draft")).unwrap()).unwrap();
    let drafter = target.drafter(draft).unwrap();
    let req = CaptionRequest::default();
    let chain = SpecOptions {
        budget: 1,
        depth: 1,
        top_k: 1,
        threshold: 0.0,
    };
    let (mut tokens, mut rounds) = (0, 0);
    for seed in 3000..3200u64 {
        let scene = spec_llava::scenes::generate(seed);
        let plain = pollster::block_on(target.caption(&b, &scene.image, &req, |_| true)).unwrap();
        let settings: &[SpecOptions] = if seed < 3012 {
            &[chain, SpecOptions::default()]
        } else {
            &[SpecOptions::default()]
        };
        for &o in settings {
            let s = pollster::block_on(target.caption_speculative(
                &b,
                &drafter,
                &scene.image,
                &req,
                o,
                |_| true,
            ))
            .unwrap();
            assert_eq!(s.tokens, plain.tokens, "scene {seed}, {o:?}");
            if o == SpecOptions::default() {
                tokens += s.tokens.len();
                rounds += s.spec.as_ref().map_or(0, |r| r.rounds);
            }
        }
    }
    // The tree does its job here too: several tokens per target pass on average.
    assert!(
        rounds > 0 && tokens as f64 / rounds as f64 > 3.0,
        "{tokens} tokens in {rounds} rounds"
    );
    assert!(b.take_error().is_none());
}

/// The draft on the CPU engine, the target on the GPU: still lossless, the shared image features
/// cross from one engine to the other, and the bench's adaptive mode measures the draft where it
/// runs.
#[test]
fn a_cpu_draft_for_a_gpu_target_is_lossless() {
    use spec_llava::backend::cpu::CpuBackend;
    let Some(b) = gpu() else { return };
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/models/demo");
    let target = Captioner::new(&b, Checkpoint::open(&demo.join("target")).unwrap()).unwrap();
    let draft =
        Captioner::new(&CpuBackend, Checkpoint::open(&demo.join("draft")).unwrap()).unwrap();
    let mut drafter = target.drafter(draft).unwrap();
    assert!(drafter.shared_vision);
    let req = CaptionRequest::default();
    for seed in 3100..3104u64 {
        let scene = spec_llava::scenes::generate(seed);
        let plain = pollster::block_on(target.caption(&b, &scene.image, &req, |_| true)).unwrap();
        let s = pollster::block_on(target.caption_speculative_with(
            &b,
            DraftEngine::new(&CpuBackend, &drafter),
            &scene.image,
            &req,
            SpecOptions::default(),
            |_| true,
        ))
        .unwrap();
        assert_eq!(s.tokens, plain.tokens, "scene {seed}");
        assert!(
            s.spec.unwrap().tau > 1.0,
            "scene {seed}: the draft never agreed"
        );
    }
    let run = spec_llava::eval::Bench {
        count: 2,
        seed: 3200,
        options: SpecOptions::default(),
        max_new_tokens: 64,
        adaptive: true,
    };
    let r = pollster::block_on(spec_llava::eval::bench_with(
        &b,
        &CpuBackend,
        &target,
        &mut drafter,
        run,
    ))
    .unwrap();
    assert_eq!(r.identical, 2);
    let a = r.adaptive.unwrap();
    assert_eq!(a.identical, 2);
    // The draft measured over one frontier row and over a full frontier.
    let rows: Vec<usize> = a.cost.draft_ms.iter().map(|&(n, _)| n).collect();
    assert!(
        rows.len() == 2 && rows[0] == 1 && a.cost.draft(1) > 0.0,
        "{rows:?}"
    );
    assert!(r.plain.decode_tokens_per_s > 0.0 && r.spec.decode_tokens_per_s > 0.0);
    // The GPU target's decoding pass is counted in dispatches (embed, 4 layers, norm, head,
    // top-k); the CPU draft dispatches none.
    let target_dispatches = r.dispatches_per_pass.target.unwrap();
    assert!(
        (20..400).contains(&target_dispatches),
        "{target_dispatches}"
    );
    assert_eq!(r.dispatches_per_pass.draft, None);
    assert!(b.take_error().is_none());
}

/// `spec-llava caption --draft-on-cpu` prints the plain caption's tokens and the speculation
/// summary (the target on the default engine, the GPU here).
#[test]
fn caption_cli_with_the_draft_on_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/models/demo");
    let dir = std::env::temp_dir().join(format!("spec-llava-cpu-draft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("scene.png");
    spec_llava::scenes::generate(3300).image.save(&png).unwrap();
    let caption = |extra: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spec-llava"))
            .args(["caption", "--json", "--model"])
            .arg(demo.join("target"))
            .arg("--draft")
            .arg(demo.join("draft"))
            .arg("--image")
            .arg(&png)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = caption(&["--no-spec"]);
    let hybrid = caption(&["--draft-on-cpu"]);
    assert_eq!(hybrid["tokens"], plain["tokens"]);
    assert!(hybrid["spec"]["tau"].as_f64().unwrap() > 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nucleus sampling reads back each row's best `MAX_TOP_K` at the temperature, not the
/// vocabulary row, when the nucleus is among them (the demo target is confident: nearly always):
/// plain and speculative sampling on the GPU engine read back well under half of what whole rows
/// would cost, and the speculative caption is a caption (sampled tokens, no error).
#[test]
fn nucleus_sampling_reads_back_top_k_rows_not_the_vocabulary() {
    let Some(b) = gpu() else { return };
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/models/demo");
    let target = Captioner::new(&b, Checkpoint::open(&demo.join("target")).unwrap()).unwrap();
    let draft = Captioner::new(&b, Checkpoint::open(&demo.join("draft")).unwrap()).unwrap();
    let drafter = target.drafter(draft).unwrap();
    let vocab = target.model.config.text.vocab_size as u64;
    let req = CaptionRequest {
        sampling: spec_llava::sampling::SamplingOptions {
            temperature: 0.7,
            top_p: 0.9,
            seed: 5,
        },
        ..Default::default()
    };
    let scene = spec_llava::scenes::generate(3300);
    let before = b.bytes_read();
    let plain = pollster::block_on(target.caption(&b, &scene.image, &req, |_| true)).unwrap();
    let read = b.bytes_read() - before;
    let passes = plain.tokens.len() as u64 + 1;
    assert!(
        read * 2 < passes * vocab * 4,
        "plain: {read} bytes read back for {passes} passes of {vocab} logits"
    );
    let before = b.bytes_read();
    let spec = pollster::block_on(target.caption_speculative(
        &b,
        &drafter,
        &scene.image,
        &req,
        SpecOptions::default(),
        |_| true,
    ))
    .unwrap();
    let read = b.bytes_read() - before;
    let stats = spec.spec.as_ref().unwrap();
    // Every verified node would have been a vocabulary row.
    let verified = (stats.rounds as f64 * (stats.mean_tree_nodes + 1.0)).round() as u64;
    assert!(
        read * 2 < verified * vocab * 4,
        "speculative: {read} bytes read back for {verified} verified rows of {vocab} logits"
    );
    assert!(!spec.tokens.is_empty() && spec.tokens.iter().all(|&t| (t as u64) < vocab));
    assert!(b.take_error().is_none());
}
