//! `spec-llava bench-shape`: what speculation would buy at a real model's size. A target and a
//! draft with the tensor shapes of real checkpoints (`synth`, random weights, made in memory: no
//! files) are timed the way decoding runs them (`speculative::adapt::time_pass`: one pass after a
//! context, the top-k read back): one target token, target passes over 1..64 tree nodes, one draft
//! pass over a frontier. The target's weight bytes over its time per token give its GB/s, next to a
//! plain copy's on the same device. A projection combines these costs with what the demo pair
//! accepts per round (its `bench` on the CPU engine): it is a projection, not a measurement of a
//! trained pair at that size.

use serde::Serialize;
use spec_llava::backend::cpu::{self, CpuBackend};
use spec_llava::backend::gpu::bench::{self as gpu_bench, KernelRow, Suite};
use spec_llava::backend::gpu::GpuBackend;
use spec_llava::backend::Backend;
use spec_llava::caption::Captioner;
use spec_llava::checkpoint::Checkpoint;
use spec_llava::eval::{bench, Bench};
use spec_llava::speculative::adapt::{time_pass, CostModel};
use spec_llava::speculative::SpecOptions;
use spec_llava::synth::{self, Like, SynthDtype, SynthOptions};
use spec_llava::{Error, Result};

use super::BackendChoice;

#[derive(clap::Args)]
pub struct BenchShapeArgs {
    /// The target's shape: llava-1.5-7b, llava-1.5-13b, llava-interleave-qwen-0.5b, llava-1.5-68m.
    #[arg(long, default_value = "llava-1.5-7b")]
    target_like: String,
    /// The draft's shape (the same names).
    #[arg(long, default_value = "llava-1.5-68m")]
    draft_like: String,
    /// How both store their linear weights: q4, q8 or f16.
    #[arg(long, default_value = "q4")]
    dtype: String,
    /// Tree sizes (target tokens per verify pass, root included) to time.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16, 32, 64])]
    nodes: Vec<usize>,
    /// Tokens already in the cache when a pass runs (LLaVA-1.5's prompt: 576 image tokens and
    /// the text). Every timed pass first fills a cache this long: keep it small on CPU drivers.
    #[arg(long, default_value_t = 600)]
    context: usize,
    /// Text layers of the target (default: the real number); fewer for a quick look.
    #[arg(long)]
    text_layers: Option<usize>,
    /// Demo-pair scenes `bench` runs for the acceptance the projection uses.
    #[arg(long, default_value_t = 10)]
    scenes: usize,
    /// The demo pair's folder (`target/` and `draft/` in it).
    #[arg(long, default_value = "web/models/demo")]
    demo: std::path::PathBuf,
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    device: String,
    /// Tokens in the cache when each timed pass runs.
    context: usize,
    target: TargetCost,
    draft: DraftCost,
    verify: Vec<VerifyCost>,
    projection: Projection,
}

#[derive(Serialize)]
struct TargetCost {
    like: &'static str,
    text_layers: usize,
    /// Bytes a decoding pass reads: the decoder's layers and the output head (not the token
    /// embeddings, of which a pass reads one row, nor the vision tower).
    weight_bytes: u64,
    ms_per_token: f64,
    gb_s: f64,
    /// A plain copy's GB/s on the same engine.
    copy_gb_s: f64,
}

#[derive(Serialize)]
struct DraftCost {
    like: &'static str,
    /// One pass over a frontier of `top_k` nodes (what each level of the tree costs).
    ms_per_pass: f64,
}

#[derive(Serialize)]
struct VerifyCost {
    nodes: usize,
    ms: f64,
    ratio_to_one: f64,
}

#[derive(Serialize)]
struct Projection {
    acceptance_from: String,
    /// Tokens per target pass of the demo pair (bonus included).
    tau: f64,
    /// Tree nodes verified per round (root included) and draft passes per round there.
    nodes: f64,
    draft_passes_per_round: f64,
    /// `tau * ms_per_token / (verify(nodes) + draft_passes_per_round * draft ms_per_pass)`.
    speedup: f64,
    note: &'static str,
}

fn like(name: &str) -> Result<Like> {
    Like::parse(name).ok_or_else(|| {
        Error::invalid(format!(
            "unknown shape {name:?}: use llava-1.5-7b, llava-1.5-13b, llava-interleave-qwen-0.5b or llava-1.5-68m"
        ))
    })
}

/// A model of `like`'s shape in memory on `b`: one small vision layer and a 28-px image (this
/// benchmark times the text decoder), the real text layers unless `text_layers` says otherwise.
fn shape_model<B: Backend>(
    b: &B,
    like: Like,
    dtype: SynthDtype,
    text_layers: Option<usize>,
) -> Result<(Captioner<B>, u64)> {
    let opts = SynthOptions {
        dtype,
        text_layers,
        vision_layers: Some(1),
        image_size: Some(28),
        ..SynthOptions::new(like)
    };
    let (files, _) = synth::synth_in_memory(&opts, like.name())?;
    let checkpoint = Checkpoint::from_files(&files)?;
    let per_token = checkpoint.weights.loaded_bytes_where(|name| {
        (name.contains("language_model") || name.starts_with("lm_head"))
            && !name.contains("embed_tokens")
    });
    Ok((Captioner::new(b, checkpoint)?, per_token))
}

pub fn run(args: BenchShapeArgs) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "q4" => SynthDtype::Q4,
        "q8" => SynthDtype::Q8,
        "f16" => SynthDtype::F16,
        other => {
            return Err(Error::invalid(format!(
                "--dtype {other:?}: use q4, q8 or f16"
            )))
        }
    };
    if args.nodes.is_empty() || args.nodes.contains(&0) {
        return Err(Error::invalid(
            "--nodes: a list of tree sizes of at least 1",
        ));
    }
    let (target_like, draft_like) = (like(&args.target_like)?, like(&args.draft_like)?);
    let gpu = match args.backend {
        Some(BackendChoice::Cpu) => None,
        Some(BackendChoice::Gpu) => Some(pollster::block_on(GpuBackend::new())?),
        None => pollster::block_on(GpuBackend::new()).ok(),
    };
    let report = match &gpu {
        Some(g) => {
            let copy = pollster::block_on(gpu_bench::run_suite(g, &copy_suite()))?;
            measure(
                g,
                g.adapter_info(),
                copy_gb_s(&copy),
                target_like,
                draft_like,
                dtype,
                &args,
            )?
        }
        None => {
            let copy = cpu::bench::run_suite(&copy_suite());
            measure(
                &CpuBackend,
                "CPU engine".into(),
                copy_gb_s(&copy),
                target_like,
                draft_like,
                dtype,
                &args,
            )?
        }
    };
    if args.json {
        let line = serde_json::to_string(&report).map_err(|e| Error::invalid(e.to_string()))?;
        println!("{line}");
        return Ok(());
    }
    let t = &report.target;
    println!("{}", report.device);
    println!(
        "target {} ({} text layers): {:.2} GB read per token, {:.1} ms/token, {:.1} GB/s (copy {:.1} GB/s, {:.0}%)",
        t.like,
        t.text_layers,
        t.weight_bytes as f64 / 1e9,
        t.ms_per_token,
        t.gb_s,
        t.copy_gb_s,
        100.0 * t.gb_s / t.copy_gb_s.max(1e-9)
    );
    println!(
        "draft {}: {:.2} ms per pass",
        report.draft.like, report.draft.ms_per_pass
    );
    println!("| nodes | ms | vs one token |\n|---:|---:|---:|");
    for v in &report.verify {
        println!("| {} | {:.1} | {:.2}x |", v.nodes, v.ms, v.ratio_to_one);
    }
    let p = &report.projection;
    println!(
        "projection ({}): {:.2}x at {:.1} nodes, {:.1} draft passes per round ({})",
        p.acceptance_from, p.speedup, p.nodes, p.draft_passes_per_round, p.note
    );
    Ok(())
}

/// Only the copy rows (they always run; no kernel matches the filter).
fn copy_suite() -> Suite {
    Suite {
        filter: Some("\u{0}".into()),
        ..Suite::full()
    }
}

fn copy_gb_s(rows: &[KernelRow]) -> f64 {
    rows.first().map_or(0.0, |r| r.copy_gb_s)
}

fn measure<B: Backend>(
    b: &B,
    device: String,
    copy_gb_s: f64,
    target_like: Like,
    draft_like: Like,
    dtype: SynthDtype,
    args: &BenchShapeArgs,
) -> Result<Report> {
    let top_k = SpecOptions::default().top_k;
    let (target, weight_bytes) = shape_model(b, target_like, dtype, args.text_layers)?;
    let (draft, _) = shape_model(b, draft_like, dtype, None)?;
    let ctx = args.context;
    // One token first (the reference of every ratio), then the other sizes in order.
    let mut sizes = args.nodes.clone();
    sizes.push(1);
    sizes.sort_unstable();
    sizes.dedup();
    let mut verify: Vec<VerifyCost> = Vec::new();
    for n in sizes {
        let ms = pollster::block_on(time_pass(b, &target.model, ctx, n, 1));
        let one = verify.first().map_or(ms, |v| v.ms);
        verify.push(VerifyCost {
            nodes: n,
            ms,
            ratio_to_one: ms / one,
        });
    }
    let ms_per_token = verify.first().map_or(0.0, |v| v.ms);
    let draft_ms = pollster::block_on(time_pass(b, &draft.model, ctx, top_k, top_k));
    let projection = project(args, ms_per_token, &verify, draft_ms)?;
    Ok(Report {
        device,
        context: ctx,
        target: TargetCost {
            like: target_like.name(),
            text_layers: target.checkpoint.config.text.num_hidden_layers,
            weight_bytes,
            ms_per_token,
            gb_s: weight_bytes as f64 / 1e9 / (ms_per_token / 1e3),
            copy_gb_s,
        },
        draft: DraftCost {
            like: draft_like.name(),
            ms_per_pass: draft_ms,
        },
        verify,
        projection,
    })
}

/// The demo pair's acceptance (default tree, CPU engine) applied to the measured costs.
fn project(
    args: &BenchShapeArgs,
    ms_one: f64,
    verify: &[VerifyCost],
    draft_ms: f64,
) -> Result<Projection> {
    let (root, scenes) = (&args.demo, args.scenes);
    let target = Captioner::new(&CpuBackend, Checkpoint::open(&root.join("target"))?)?;
    let draft = Captioner::new(&CpuBackend, Checkpoint::open(&root.join("draft"))?)?;
    let mut drafter = target.drafter(draft)?;
    let options = SpecOptions::default();
    let r = pollster::block_on(bench(
        &CpuBackend,
        &target,
        &mut drafter,
        Bench {
            count: scenes.max(1),
            seed: 0,
            options,
            max_new_tokens: 64,
            adaptive: false,
        },
    ))?;
    let rounds = r.spec.target_passes.saturating_sub(r.total).max(1) as f64;
    let nodes = r.mean_tree_nodes + 1.0;
    let passes = r.draft_passes as f64 / rounds;
    let curve = CostModel {
        verify_ms: verify.iter().map(|v| (v.nodes, v.ms)).collect(),
        draft_ms: vec![(1, draft_ms)],
    };
    let round_ms = curve.verify(nodes.round() as usize) + passes * draft_ms;
    Ok(Projection {
        acceptance_from: format!(
            "demo pair, {} scenes, budget {} depth {} top-k {}",
            r.total, options.budget, options.depth, options.top_k
        ),
        tau: r.tau,
        nodes,
        draft_passes_per_round: passes,
        speedup: r.tau * ms_one / round_ms.max(1e-9),
        note: "a projection: measured costs at this size, acceptance of the small demo pair",
    })
}
