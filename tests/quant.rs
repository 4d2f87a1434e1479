//! Quantized checkpoints: `spec-llava quantize` round trips (files, sizes, metadata, shard limit),
//! bad quantized files are reported by name, GPTQ beats round-to-nearest on a layer's outputs, and
//! q8 / q4 (GPTQ-calibrated, the `quantize` default) captions of the demo target agree with the f32
//! engine on held-out scenes.
//!
//! The 50-scene agreement runs on the CPU engine (it dequantizes on load, so it computes with
//! exactly the weights the GPU kernels read; tests/gpu_quant_kernels.rs checks the kernels against
//! it, and `quantized_gpu_greedy_tokens_match_the_cpu` below checks whole captions on a few scenes).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::Backend;
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::eval::EvalReport;
use spec_llava::quant::gptq::{self, GptqOptions, Hessian};
use spec_llava::quant::{Format, QuantMatrix, Scheme, WeightData};
use spec_llava::scenes::{self, AttributeScores};

fn demo_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web/models/demo/target")
}

/// A fresh empty directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spec-llava-quant-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spec-llava"))
        .args(args)
        .output()
        .unwrap()
}

fn quantize(format: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let model = demo_target();
    let mut args = vec![
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        format,
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Safetensors `__metadata__` of a file.
fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn quantize_round_trip_sizes_metadata_and_weights() {
    let src = Checkpoint::open(&demo_target()).unwrap();
    let src_bytes = file_size(&demo_target().join("model.safetensors"));
    for (name, format, max_ratio) in [
        // The demo target is f16: q8 ~ 8.5/16 of the linear weights, q4 ~ 4.5/16; embeddings,
        // norms and biases stay f16.
        ("q8", Format::Q8, 0.60),
        ("q4", Format::Q4, 0.35),
        ("f16", Format::F16, 1.01),
    ] {
        let out = scratch(name);
        // Round-to-nearest q4 (no calibration) is exactly what quantize-on-load computes; q8 and
        // f16 ignore the (default) calibration.
        let extra: &[&str] = match format {
            Format::Q4 => &["--calibration-scenes", "0"],
            _ => &[],
        };
        let report = quantize(name, &out, extra);
        assert_eq!(report["shards"], serde_json::json!(["model.safetensors"]));
        assert_eq!(report["calibration"], serde_json::Value::Null, "{report}");
        assert_eq!(report["quantized_tensors"], 49, "{report}");
        let file = out.join("model.safetensors");
        let ratio = file_size(&file) as f64 / src_bytes as f64;
        assert!(ratio <= max_ratio, "{name}: {ratio}");
        let meta = metadata(&file);
        assert_eq!(meta["spec_llava.quant"], name);
        assert_eq!(meta["group_size"], "32");
        assert!(!meta.contains_key("spec_llava.calibration"), "{meta:?}");
        assert!(!out.join("model.safetensors.index.json").exists());
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "preprocessor_config.json",
            "processor_config.json",
            "chat_template.json",
            "generation_config.json",
        ] {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(demo_target().join(f)).unwrap(),
                "{f}"
            );
        }

        // Every linear weight loads packed, identical to quantizing the original on load; the
        // rest loads as in the original.
        let q = Checkpoint::open(&out).unwrap();
        assert_eq!(q.weights.format(), Some(format));
        let mut on_load = Checkpoint::open(&demo_target()).unwrap().weights;
        on_load.set_quantize_on_load(Some(format));
        let mut packed = 0;
        for tensor in src.weights.names() {
            let shape = src.weights.raw(tensor).unwrap().shape.to_vec();
            let got = q.weights.weight_data(tensor, &shape).unwrap();
            let want = on_load.weight_data(tensor, &shape).unwrap();
            assert_eq!(got, want, "{tensor}");
            match got {
                WeightData::F32(v) => assert_eq!(v, src.weights.f32(tensor, &shape).unwrap()),
                _ => packed += 1,
            }
        }
        assert_eq!(packed, 49, "{name}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn quantize_respects_the_shard_limit_and_sharded_output_loads() {
    let out = scratch("sharded");
    let limit = 600_000u64;
    let report = quantize(
        "q4",
        &out,
        &[
            "--max-shard-bytes",
            &limit.to_string(),
            "--calibration-scenes",
            "0",
        ],
    );
    let shards: Vec<String> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(shards.len() >= 4, "{shards:?}");
    for s in &shards {
        let path = out.join(s);
        assert!(file_size(&path) <= limit, "{s}: {}", file_size(&path));
        assert_eq!(metadata(&path)["spec_llava.quant"], "q4");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["metadata"]["spec_llava.quant"], "q4");
    let map = index["weight_map"].as_object().unwrap();
    assert!(map.keys().any(|k| k.ends_with(".q4")) && map.keys().any(|k| k.ends_with(".scales")));

    // Sharded and single-file q4 checkpoints caption identically.
    let single = scratch("single");
    quantize("q4", &single, &["--calibration-scenes", "0"]);
    let scene = scenes::generate(7);
    let req = CaptionRequest::default();
    let caption = |dir: &Path| {
        let c = Captioner::new(&CpuBackend, Checkpoint::open(dir).unwrap()).unwrap();
        pollster::block_on(c.caption(&CpuBackend, &scene.image, &req, |_| true))
            .unwrap()
            .tokens
    };
    assert_eq!(caption(&out), caption(&single));
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&single);
}

/// Rewrite `model.safetensors` of `dir` with `edit` applied to its tensors and metadata.
fn rewrite(
    dir: &Path,
    edit: impl FnOnce(
        &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
        &mut std::collections::HashMap<String, String>,
    ),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut meta = metadata(&path);
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, Some(meta), &path).unwrap();
}

fn load_error(dir: &Path) -> String {
    let result = Checkpoint::open(dir).and_then(|c| Captioner::new(&CpuBackend, c).map(|_| ()));
    result
        .expect_err("a bad checkpoint must not load")
        .to_string()
}

#[test]
fn bad_quantized_files_are_errors_naming_the_file() {
    let base = scratch("bad-base");
    quantize("q4", &base, &["--calibration-scenes", "0"]);
    let copy = |name: &str| {
        let dir = scratch(name);
        for e in std::fs::read_dir(&base).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    };
    let file = |dir: &Path| dir.join("model.safetensors").display().to_string();

    // Unknown scheme in the metadata.
    let dir = copy("bad-scheme");
    rewrite(&dir, |_, meta| {
        meta.insert("spec_llava.quant".into(), "q3".into());
    });
    let e = load_error(&dir);
    assert!(
        e.starts_with(&file(&dir)) && e.contains("unknown quantization scheme \"q3\""),
        "{e}"
    );

    // Unsupported group size.
    let dir = copy("bad-group");
    rewrite(&dir, |_, meta| {
        meta.insert("group_size".into(), "64".into());
    });
    let e = load_error(&dir);
    assert!(
        e.starts_with(&file(&dir)) && e.contains("group_size"),
        "{e}"
    );

    // Codes of the wrong size.
    let dir = copy("bad-codes");
    rewrite(&dir, |tensors, _| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0.ends_with("q_proj.weight.q4"))
            .unwrap();
        t.2[1] -= 16;
        t.3.truncate(t.2[0] * t.2[1]);
    });
    let e = load_error(&dir);
    assert!(
        e.starts_with(&file(&dir)) && e.contains("q_proj.weight.q4"),
        "{e}"
    );

    // Scales of the wrong shape.
    let dir = copy("bad-scales");
    rewrite(&dir, |tensors, _| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0.ends_with("down_proj.weight.scales"))
            .unwrap();
        t.2[1] -= 1;
        t.3.truncate(t.2[0] * t.2[1] * 2);
    });
    let e = load_error(&dir);
    assert!(
        e.starts_with(&file(&dir)) && e.contains("down_proj.weight.scales"),
        "{e}"
    );

    // q8 codes in a checkpoint whose metadata says q4.
    let dir = copy("bad-mix");
    rewrite(&dir, |tensors, _| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0.ends_with("up_proj.weight.q4"))
            .unwrap();
        t.0 = t.0.replace(".q4", ".q8");
        t.1 = safetensors::Dtype::I8;
    });
    let e = load_error(&dir);
    assert!(
        e.starts_with(&file(&dir)) && e.contains("metadata says q4"),
        "{e}"
    );

    // A quantizable weight left unquantized.
    let dir = copy("bad-missing");
    rewrite(&dir, |tensors, _| {
        let i = tensors
            .iter()
            .position(|t| t.0.ends_with("o_proj.weight.q4"))
            .unwrap();
        let (name, _, shape, _) = tensors.remove(i);
        let name = name.trim_end_matches(".q4").to_string();
        let cols = shape[1] * 2;
        tensors.retain(|t| t.0 != format!("{name}.scales"));
        tensors.push((
            name,
            safetensors::Dtype::F16,
            vec![shape[0], cols],
            vec![0; shape[0] * cols * 2],
        ));
    });
    let e = load_error(&dir);
    assert!(
        e.starts_with(&file(&dir)) && e.contains("is not quantized"),
        "{e}"
    );

    // The CLI prints one line naming the file and exits 2.
    let img = base.join("scene.png");
    scenes::generate(1).image.save(&img).unwrap();
    let o = cli(&[
        "caption",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&file(&dir)), "{stderr}");

    for name in [
        "bad-base",
        "bad-scheme",
        "bad-group",
        "bad-codes",
        "bad-scales",
        "bad-mix",
        "bad-missing",
    ] {
        let _ = std::fs::remove_dir_all(scratch(name));
    }
}

/// Greedy captions of scenes `0..count` with the demo target loaded as `format` (quantized on
/// load, round-to-nearest).
fn captions<B: Backend>(
    b: &B,
    format: Option<Format>,
    count: u64,
    max_new_tokens: usize,
) -> Vec<(Vec<u32>, String)> {
    let mut c = Checkpoint::open(&demo_target()).unwrap();
    c.weights.set_quantize_on_load(format);
    captions_of(b, c, count, max_new_tokens)
}

/// Greedy captions of scenes `0..count` by `checkpoint`.
fn captions_of<B: Backend>(
    b: &B,
    checkpoint: Checkpoint,
    count: u64,
    max_new_tokens: usize,
) -> Vec<(Vec<u32>, String)> {
    let captioner = Captioner::new(b, checkpoint).unwrap();
    let req = CaptionRequest {
        max_new_tokens,
        ..CaptionRequest::default()
    };
    (0..count)
        .map(|seed| {
            let scene = scenes::generate(seed);
            let out =
                pollster::block_on(captioner.caption(b, &scene.image, &req, |_| true)).unwrap();
            (out.tokens, out.text)
        })
        .collect()
}

/// On 50 held-out scenes (seeds 0..50, as `spec-llava eval --scenes 50`), q8 gives the f32
/// caption on >= 95% of scenes and q4 on >= 85%, and neither loses more than 2 points of
/// attribute accuracy (the goals). q8 is quantized on load (round-to-nearest); q4 is the
/// checkpoint `spec-llava quantize --format q4` writes by default: GPTQ calibrated on 64 generated
/// scenes (seeds 10000.., disjoint from these). Round-to-nearest q4 measured 37/50 here.
#[test]
fn q8_and_q4_captions_agree_with_f32_on_50_demo_scenes() {
    const SCENES: u64 = 50;
    let b = CpuBackend;
    let q4_dir = scratch("gptq");
    let report = quantize("q4", &q4_dir, &[]);
    assert_eq!(report["calibration"], "gptq, 64 scenes", "{report}");
    let meta = metadata(&q4_dir.join("model.safetensors"));
    assert_eq!(meta["spec_llava.calibration"], "gptq, 64 scenes");
    assert_eq!(meta["spec_llava.quant"], "q4");

    let reference = captions(&b, None, SCENES, 64);
    let score = |caps: &[(Vec<u32>, String)]| {
        let mut total = AttributeScores::default();
        for (seed, (_, text)) in caps.iter().enumerate() {
            total += scenes::attribute_scores(text, &scenes::generate(seed as u64));
        }
        EvalReport::from_scores(caps.len(), &total)
    };
    let base = score(&reference);
    println!(
        "f32: attribute accuracy {:.1}%",
        base.attribute_accuracy * 100.0
    );
    let q8 = captions(&b, Some(Format::Q8), SCENES, 64);
    let q4 = captions_of(&b, Checkpoint::open(&q4_dir).unwrap(), SCENES, 64);
    for (name, caps, min_identical) in [("q8", q8, 0.95), ("q4 (gptq)", q4, 0.85)] {
        let identical = caps
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a.0 == b.0)
            .count();
        let report = score(&caps);
        let drop = (base.attribute_accuracy - report.attribute_accuracy) * 100.0;
        println!(
            "{name}: {identical}/{SCENES} identical captions, attribute accuracy {:.1}% (drop {drop:.1} points)",
            report.attribute_accuracy * 100.0
        );
        assert!(
            identical as f64 >= min_identical * SCENES as f64,
            "{name}: {identical}/{SCENES} identical"
        );
        assert!(drop <= 2.0, "{name}: accuracy drop {drop:.1} points");
    }
    let _ = std::fs::remove_dir_all(&q4_dir);
}

/// Inputs with correlated channels (`factors` latent factors mixed into every channel by `mix`,
/// some channels much larger than others), as a layer's activations are: `[rows, cols]`.
fn correlated_inputs(rng: &mut impl rand::Rng, mix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let factors = mix.len() / cols;
    let gain: Vec<f32> = (0..cols)
        .map(|c| if c.is_multiple_of(7) { 4.0 } else { 1.0 })
        .collect();
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let z: Vec<f32> = (0..factors)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for c in 0..cols {
            let v: f32 = (0..factors).map(|f| z[f] * mix[f * cols + c]).sum::<f32>()
                + 0.1 * rng.random_range(-1.0f32..1.0);
            x.push(v * gain[c]);
        }
    }
    x
}

/// `||X W^T - X Q^T||²` for `X: [n, cols]`, `W, Q: [rows, cols]`.
fn output_error(x: &[f32], w: &[f32], q: &[f32], rows: usize, cols: usize) -> f64 {
    let mut e = 0f64;
    for xr in x.chunks_exact(cols) {
        for r in 0..rows {
            let d: f64 = (0..cols)
                .map(|c| f64::from(xr[c]) * f64::from(w[r * cols + c] - q[r * cols + c]))
                .sum();
            e += d * d;
        }
    }
    e
}

/// GPTQ lowers a layer's output error well below round-to-nearest's, on the calibration inputs and
/// on fresh inputs from the same distribution, and writes ordinary q4 blocks (a partial last
/// group included, its padding decoding to zero).
#[test]
fn gptq_reduces_output_error_versus_round_to_nearest() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (rows, cols) = (24, 80);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    // One distribution (the same mixing) for the calibration and the fresh inputs.
    let mix: Vec<f32> = (0..8 * cols)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let calib = correlated_inputs(&mut rng, &mix, 512, cols);
    let fresh = correlated_inputs(&mut rng, &mix, 512, cols);
    let mut h = Hessian::new(cols);
    // Added in uneven batches, as the model's calls arrive.
    h.add(&calib[..100 * cols], 100);
    h.add(&calib[100 * cols..], 412);
    assert_eq!(h.samples, 512);

    let g = gptq::quantize_q4(&w, rows, cols, &h);
    g.check().unwrap();
    assert_eq!((g.scheme, g.rows, g.cols), (Scheme::Q4, rows, cols));
    let rtn = QuantMatrix::quantize(Scheme::Q4, &w, rows, cols);
    let (gq, rq) = (g.dequantize(), rtn.dequantize());
    // The padded half of the last group holds code 8 (zero) in every row, as round-to-nearest's.
    for r in 0..rows {
        let last = (r * 3 + 2) * 16;
        assert!(g.qs[last..last + 16].iter().all(|b| b >> 4 == 8), "row {r}");
    }
    // Plain GPTQ (no scale refit) already beats round-to-nearest; the refit rounds only help.
    let plain = gptq::quantize_q4_with(
        &w,
        rows,
        cols,
        &h,
        GptqOptions {
            refit_scales: false,
            rounds: 1,
            ..GptqOptions::default()
        },
    )
    .dequantize();
    for (name, x) in [("calibration", &calib), ("fresh", &fresh)] {
        let eg = output_error(x, &w, &gq, rows, cols);
        let ep = output_error(x, &w, &plain, rows, cols);
        let er = output_error(x, &w, &rq, rows, cols);
        println!(
            "{name} inputs: gptq {eg:.3e}, without scale refit {ep:.3e}, round-to-nearest {er:.3e}"
        );
        assert!(ep < 0.5 * er, "{name}: plain gptq {ep} vs rtn {er}");
        assert!(eg < 0.2 * er, "{name}: gptq {eg} vs rtn {er}");
        if name == "calibration" {
            assert!(eg <= ep * 1.001, "refit made it worse: {eg} vs {ep}");
        }
    }
    // Without calibration data it is round-to-nearest.
    assert_eq!(gptq::quantize_q4(&w, rows, cols, &Hessian::new(cols)), rtn);
}

/// The GPU engine with q8 / q4 / f16 weights writes the same greedy tokens as the CPU engine with
/// the same weights dequantized (a few scenes: lavapipe is slow).
#[test]
fn quantized_gpu_greedy_tokens_match_the_cpu() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    for format in [Format::Q8, Format::Q4, Format::F16] {
        let want = captions(&CpuBackend, Some(format), 2, 24);
        let got = captions(&gpu, Some(format), 2, 24);
        if let Some(e) = gpu.take_error() {
            panic!("{e}");
        }
        assert_eq!(got, want, "{}", format.name());
    }
}
