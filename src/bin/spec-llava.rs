//! `spec-llava`: the command-line front end. Every error is one line on stderr naming the file and
//! the problem, with exit code 2.

#[path = "cli/bench_kernels.rs"]
mod bench_kernels;
#[path = "cli/bench_shape.rs"]
mod bench_shape;
#[path = "cli/quantize.rs"]
mod quantize;
#[path = "cli/synth.rs"]
mod synth;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::gpu::GpuBackend;
use spec_llava::backend::Backend;
use spec_llava::caption::{Caption, CaptionRequest, Captioner, DraftEngine, Drafter};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::image_io;
use spec_llava::sampling::SamplingOptions;
use spec_llava::speculative::events::RoundEvent;
use spec_llava::speculative::SpecOptions;
use spec_llava::{Error, Result};

#[derive(Parser)]
#[command(
    name = "spec-llava",
    version,
    about = "Caption images with LLaVA checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption one image.
    Caption(CaptionArgs),
    /// Caption held-out generated scenes and score them (exact match, per-attribute accuracy).
    Eval(EvalArgs),
    /// Score predicted captions against true scene captions as `eval` does (one JSON object:
    /// exact match, attribute accuracy, per attribute). Input: JSON lines {"truth", "prediction"}.
    Score {
        /// The JSON-lines file (`-` for standard input).
        #[arg(long)]
        pairs: PathBuf,
    },
    /// Plain vs speculative decoding on the same generated scenes, in one run.
    Bench(BenchArgs),
    /// GB/s and GFLOP/s of the GPU kernels next to a plain copy's GB/s; tokens/s per engine.
    BenchKernels(bench_kernels::BenchKernelsArgs),
    /// Cost curves at a real model's size (shapes of `synth`, random weights, in memory): target
    /// ms/token and GB/s, verify passes over 1..64 nodes, a draft pass, and a projected speedup.
    BenchShape(bench_shape::BenchShapeArgs),
    /// Write a quantized (q4 / q8) or f16 copy of a checkpoint as safetensors shards.
    Quantize(quantize::QuantizeArgs),
    /// Write a checkpoint with the files, tensor names and shapes of a real one and random
    /// weights (to measure memory and speed at scale).
    Synth(synth::SynthArgs),
    /// Print every WGSL kernel exactly as the engine compiles it (to check the shaders with
    /// another WebGPU implementation, e.g. the browser's: the e2e suite compiles them in Chromium).
    Kernels {
        /// One JSON array of {"name", "source"} on stdout instead of a list of names.
        #[arg(long)]
        json: bool,
    },
    /// Write generated scenes (PNG + captions.jsonl) for training and evaluation.
    Scenes {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// The plain-Rust reference engine.
    Cpu,
    /// Our WGSL kernels through wgpu (Vulkan / Metal / DX12).
    Gpu,
}

#[derive(clap::Args)]
struct CaptionArgs {
    /// Checkpoint directory (Hugging Face LlavaForConditionalGeneration layout).
    #[arg(long)]
    model: PathBuf,
    /// Image file (PNG, JPEG, WebP, GIF, BMP).
    #[arg(long)]
    image: PathBuf,
    /// Literal prompt containing <image>; default: the checkpoint's chat template.
    #[arg(long)]
    prompt: Option<String>,
    /// User text put through the checkpoint's chat template, as the page's prompt field does
    /// (default "Describe the image."); ignored with --prompt.
    #[arg(long)]
    instruction: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Draft checkpoint: turns on speculative decoding.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Plain decoding even when --draft is given.
    #[arg(long)]
    no_spec: bool,
    /// Write every speculation round as a JSON line to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Run the draft on the CPU engine whatever --backend the target uses (a tiny draft can cost
    /// less there than a pass on the device).
    #[arg(long)]
    draft_on_cpu: bool,
    /// Engine; default: the GPU when an adapter exists, else the CPU (with a notice).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Quantize a plain checkpoint's linear weights as they are loaded (the CPU engine then
    /// computes with the dequantized values).
    #[arg(long, value_enum)]
    quant: Option<quantize::QuantFormat>,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 100)]
    scenes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Quantize a plain checkpoint's linear weights as they are loaded.
    #[arg(long, value_enum)]
    quant: Option<quantize::QuantFormat>,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long)]
    target: PathBuf,
    #[arg(long)]
    draft: PathBuf,
    #[arg(long, default_value_t = 20)]
    scenes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[command(flatten)]
    spec: SpecArgs,
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Also run with the tree sized from costs measured on this device.
    #[arg(long)]
    adaptive: bool,
    /// Run the draft on the CPU engine whatever --backend the target uses (a tiny draft can cost
    /// less there than a pass on the device).
    #[arg(long)]
    draft_on_cpu: bool,
}

#[derive(clap::Args)]
struct SpecArgs {
    /// Draft nodes verified per round.
    #[arg(long, default_value_t = SpecOptions::default().budget)]
    budget: usize,
    /// Maximum draft depth.
    #[arg(long, default_value_t = SpecOptions::default().depth)]
    depth: usize,
    /// Children per expanded node and frontier width.
    #[arg(long, default_value_t = SpecOptions::default().top_k)]
    top_k: usize,
    /// Stop deepening below this cumulative draft probability.
    #[arg(long, default_value_t = SpecOptions::default().threshold)]
    threshold: f32,
}

impl SpecArgs {
    fn options(&self) -> Result<SpecOptions> {
        let o = SpecOptions {
            budget: self.budget,
            depth: self.depth,
            top_k: self.top_k,
            threshold: self.threshold,
        };
        o.validate()?;
        Ok(o)
    }
}

/// Work that runs on whichever backend was chosen (Rust has no generic closures).
trait Job {
    fn run<B: Backend>(self, b: &B) -> Result<()>;
}

/// Run `job` on the chosen backend. Inputs are parsed and checked before this, so a bad file is
/// reported without touching the GPU.
fn on_backend(choice: Option<BackendChoice>, job: impl Job) -> Result<()> {
    match choice {
        Some(BackendChoice::Cpu) => job.run(&CpuBackend),
        Some(BackendChoice::Gpu) => run_on_gpu(&pollster::block_on(GpuBackend::new())?, job),
        None => match pollster::block_on(GpuBackend::new()) {
            Ok(gpu) => run_on_gpu(&gpu, job),
            Err(e) => {
                eprintln!("notice: no usable GPU ({e}); using the CPU engine");
                job.run(&CpuBackend)
            }
        },
    }
}

/// Run `job` on the GPU; print the per-kernel profile after it when `SPEC_LLAVA_GPU_PROFILE` is set.
fn run_on_gpu(gpu: &GpuBackend, job: impl Job) -> Result<()> {
    let result = job.run(gpu);
    if let Some(report) = gpu.profile_report() {
        eprint!("{report}");
    }
    result
}

/// `spec-llava score`: JSON lines of {"truth", "prediction"} -> one EvalReport JSON object.
fn score(path: &std::path::Path) -> Result<()> {
    let name = path.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| Error::file("stdin", e))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::file(&name, format!("cannot read: {e}")))?
    };
    let mut pairs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::file(&name, format!("line {}: {e}", i + 1)))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|s| s.as_str())
                .map(String::from)
                .ok_or_else(|| {
                    Error::file(&name, format!("line {}: no string field \"{k}\"", i + 1))
                })
        };
        pairs.push((field("truth")?, field("prediction")?));
    }
    json_line(&spec_llava::eval::score_pairs(&pairs)?)
}

/// The process's peak resident memory (Linux `VmHWM`), where the system says it.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib >> 10)
}

fn json_line<T: serde::Serialize>(value: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(value).map_err(|e| Error::invalid(e.to_string()))?
    );
    Ok(())
}

/// A draft on the target's engine or on the CPU engine (boxed: one is built per run).
enum DraftOn<B: Backend> {
    Same(Box<Drafter<B>>),
    Cpu(Box<Drafter<CpuBackend>>),
}

struct CaptionJob {
    args: CaptionArgs,
    image: image::RgbImage,
    target: Checkpoint,
    draft: Option<Checkpoint>,
    req: CaptionRequest,
    options: SpecOptions,
}

impl Job for CaptionJob {
    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let args = &self.args;
        let captioner = Captioner::new(backend, self.target)?;
        let drafter = match self.draft {
            Some(d) if args.draft_on_cpu => Some(DraftOn::Cpu(Box::new(
                captioner.drafter(Captioner::new(&CpuBackend, d)?)?,
            ))),
            Some(d) => Some(DraftOn::Same(Box::new(
                captioner.drafter(Captioner::new(backend, d)?)?,
            ))),
            None => None,
        };
        let mut trace = match &args.trace {
            Some(path) => Some((
                path.display().to_string(),
                std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(|e| Error::file(path.display(), e))?,
                ),
            )),
            None => None,
        };
        // Stream the text as it grows (decoding the whole prefix keeps multi-byte characters and
        // word-marker spaces right).
        let tokenizer = &captioner.checkpoint.tokenizer;
        let (mut so_far, mut shown) = (Vec::new(), 0);
        let mut show = |t: u32| {
            if !args.json {
                so_far.push(t);
                if let Some(new) = tokenizer
                    .decode(&so_far)
                    .ok()
                    .and_then(|s| s.get(shown..).map(|n| (n.to_string(), s.len())))
                {
                    eprint!("{}", new.0);
                    shown = new.1;
                }
            }
        };
        let mut trace_error = None;
        let result: Caption = match &drafter {
            None => pollster::block_on(captioner.caption(backend, &self.image, &self.req, |t| {
                show(t);
                true
            }))?,
            Some(d) => {
                let mut on_round = |ev: &RoundEvent| {
                    ev.emitted.iter().for_each(|&t| show(t));
                    if let Some((path, w)) = trace.as_mut() {
                        let line = serde_json::to_string(ev).unwrap_or_default();
                        if let Err(e) = writeln!(w, "{line}") {
                            trace_error = Some(Error::file(path, e));
                            return false;
                        }
                    }
                    true
                };
                let (image, req, o) = (&self.image, &self.req, self.options);
                let r = match d {
                    DraftOn::Same(d) => pollster::block_on(captioner.caption_speculative(
                        backend,
                        d,
                        image,
                        req,
                        o,
                        &mut on_round,
                    )),
                    DraftOn::Cpu(d) => pollster::block_on(captioner.caption_speculative_with(
                        backend,
                        DraftEngine::new(&CpuBackend, d),
                        image,
                        req,
                        o,
                        &mut on_round,
                    )),
                };
                r.map_err(|e| trace_error.take().unwrap_or(e))?
            }
        };
        if let Some((path, mut w)) = trace {
            w.flush().map_err(|e| Error::file(path, e))?;
        }
        if args.json {
            /// The caption and the process's peak memory (for `cargo xtask scale-check`).
            #[derive(serde::Serialize)]
            struct WithMemory<'a, T: serde::Serialize> {
                #[serde(flatten)]
                caption: &'a T,
                peak_rss_mib: Option<u64>,
            }
            return json_line(&WithMemory {
                caption: &result,
                peak_rss_mib: peak_rss_mib(),
            });
        }
        eprintln!();
        println!("{}", result.text);
        let t = &result.timings_ms;
        eprintln!(
            "{} prompt tokens, {} new tokens; vision {:.0} ms, prefill {:.0} ms, decode {:.0} ms ({:.1} tokens/s)",
            result.prompt_tokens,
            result.tokens.len(),
            t.vision_ms,
            t.prefill_ms,
            t.decode_ms,
            result.tokens.len() as f64 / (t.decode_ms / 1e3).max(1e-9)
        );
        if let Some(s) = &result.spec {
            eprintln!(
                "speculation: {} rounds, tau {:.2} (without bonus {:.2})",
                s.rounds, s.tau, s.tau_without_bonus
            );
        }
        Ok(())
    }
}

fn caption(args: CaptionArgs) -> Result<()> {
    let sampling = SamplingOptions {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    let options = args.spec.options()?;
    // Everything the user named is read and checked before any engine starts.
    let image = image_io::load_rgb(&args.image, image_io::DEFAULT_MAX_PIXELS)?;
    let mut target = Checkpoint::open(&args.model)?;
    let mut draft = match (&args.draft, args.no_spec) {
        (Some(dir), false) => Some(Checkpoint::open(dir)?),
        _ => None,
    };
    let quant = args.quant.map(quantize::QuantFormat::format);
    target.weights.set_quantize_on_load(quant);
    if let Some(d) = draft.as_mut() {
        d.weights.set_quantize_on_load(quant);
    }
    let prompt = match (&args.prompt, &args.instruction) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(i)) => Some(target.default_prompt(i)?),
        (None, None) => None,
    };
    let req = CaptionRequest {
        prompt,
        max_new_tokens: args.max_new_tokens,
        sampling,
    };
    let backend = args.backend;
    on_backend(
        backend,
        CaptionJob {
            args,
            image,
            target,
            draft,
            req,
            options,
        },
    )
}

struct EvalJob(EvalArgs, Checkpoint);

impl Job for EvalJob {
    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let EvalJob(args, checkpoint) = self;
        let captioner = Captioner::new(backend, checkpoint)?;
        let report = pollster::block_on(spec_llava::eval::evaluate(
            backend,
            &captioner,
            args.scenes,
            args.seed,
        ))?;
        if args.json {
            return json_line(&report);
        }
        println!("scenes: {}", report.scenes);
        println!("exact match: {:.1}%", report.exact_match * 100.0);
        println!(
            "attribute accuracy: {:.1}%",
            report.attribute_accuracy * 100.0
        );
        for (name, v) in &report.per_attribute {
            println!("  {name:<10} {:.1}%", v * 100.0);
        }
        Ok(())
    }
}

struct BenchJob(BenchArgs, Checkpoint, Checkpoint, SpecOptions);

impl Job for BenchJob {
    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let BenchJob(args, target, draft, options) = self;
        let t = Captioner::new(backend, target)?;
        let run = spec_llava::eval::Bench {
            count: args.scenes,
            seed: args.seed,
            options,
            max_new_tokens: args.max_new_tokens,
            adaptive: args.adaptive,
        };
        let r = if args.draft_on_cpu {
            let mut d = t.drafter(Captioner::new(&CpuBackend, draft)?)?;
            pollster::block_on(spec_llava::eval::bench_with(
                backend,
                &CpuBackend,
                &t,
                &mut d,
                run,
            ))?
        } else {
            let mut d = t.drafter(Captioner::new(backend, draft)?)?;
            pollster::block_on(spec_llava::eval::bench_with(
                backend, backend, &t, &mut d, run,
            ))?
        };
        if args.json {
            return json_line(&r);
        }
        let o = &r.options;
        println!(
            "{} scenes; budget {} depth {} top-k {} threshold {}; shared vision: {}",
            r.total, o.budget, o.depth, o.top_k, o.threshold, o.shared_vision
        );
        println!("whole captions (image, prefill, decoding) | decoding phase only");
        println!(
            "plain:       {:>8.1} tokens/s | {:>8.1} tokens/s  ({} tokens, {} target passes)",
            r.plain.tokens_per_s,
            r.plain.decode_tokens_per_s,
            r.plain.tokens,
            r.plain.target_passes
        );
        println!(
            "speculative: {:>8.1} tokens/s | {:>8.1} tokens/s  ({} tokens, {} target passes, {} draft passes)",
            r.spec.tokens_per_s,
            r.spec.decode_tokens_per_s,
            r.spec.tokens,
            r.spec.target_passes,
            r.draft_passes
        );
        println!(
            "speedup {:.2}x | {:.2}x; tau {:.2} (without bonus {:.2}); identical outputs {}/{}",
            r.speedup, r.decode_speedup, r.tau, r.tau_without_bonus, r.identical, r.total
        );
        let shown = |n: Option<u64>| n.map_or("- (CPU engine)".to_string(), |n| n.to_string());
        println!(
            "kernel dispatches per decoding pass: target {}, draft {}",
            shown(r.dispatches_per_pass.target),
            shown(r.dispatches_per_pass.draft)
        );
        if let Some(a) = &r.adaptive {
            println!(
                "adaptive:    {:>8.1} tokens/s | {:>8.1} tokens/s  speedup {:.2}x | {:.2}x; tau {:.2}; mean tree {:.1} nodes (fixed: {:.1}); {:.1} rows per draft pass; identical {}/{}",
                a.spec.tokens_per_s,
                a.spec.decode_tokens_per_s,
                a.speedup,
                a.decode_speedup,
                a.tau,
                a.mean_tree_nodes,
                r.mean_tree_nodes,
                a.draft_rows_per_pass,
                a.identical,
                r.total
            );
        }
        Ok(())
    }
}

/// `spec-llava kernels`: the engine's WGSL sources, as compiled (shared helpers included): every
/// kernel's portable form, then the forms behind a WGSL language feature (`requires`), which a
/// browser compiles only where `navigator.gpu.wgslLanguageFeatures` has it.
fn kernels(json: bool) -> Result<()> {
    use spec_llava::backend::gpu::{DeviceKernels, Kernel};
    let int8 = DeviceKernels {
        int8_dot: true,
        ..DeviceKernels::PORTABLE
    };
    let mut list: Vec<(String, String, Option<&str>)> = Kernel::ALL
        .iter()
        .map(|k| (k.name().to_string(), k.source(), None))
        .collect();
    for k in [Kernel::MatmulVecQ8, Kernel::MatmulVecQ4] {
        let name = format!("{}_int8_dot", k.name());
        list.push((
            name,
            k.source_for(int8),
            Some("packed_4x8_integer_dot_product"),
        ));
    }
    if json {
        let list: Vec<serde_json::Value> = list
            .iter()
            .map(|(name, source, requires)| {
                serde_json::json!({ "name": name, "source": source, "requires": requires })
            })
            .collect();
        json_line(&list)?;
    } else {
        for (name, source, requires) in &list {
            let needs = requires.map_or(String::new(), |r| format!(" (needs {r})"));
            println!("{name:<28} {:>5} lines{needs}", source.lines().count());
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Caption(args) => caption(args),
        Command::Eval(args) => {
            let mut checkpoint = Checkpoint::open(&args.model)?;
            checkpoint
                .weights
                .set_quantize_on_load(args.quant.map(quantize::QuantFormat::format));
            on_backend(args.backend, EvalJob(args, checkpoint))
        }
        Command::Bench(args) => {
            let options = args.spec.options()?;
            let (t, d) = (
                Checkpoint::open(&args.target)?,
                Checkpoint::open(&args.draft)?,
            );
            on_backend(args.backend, BenchJob(args, t, d, options))
        }
        Command::Score { pairs } => score(&pairs),
        Command::BenchKernels(args) => bench_kernels::run(args),
        Command::BenchShape(args) => bench_shape::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Kernels { json } => kernels(json),
        Command::Scenes { count, seed, out } => spec_llava::scenes::write_scenes(&out, count, seed),
    }
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`spec-llava kernels --json | head`)
    // panics; the default action ends the process quietly, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The CPU engine's parallel loops are called from this thread: as one of rayon's threads it
    // runs its share of each loop itself, instead of handing the whole loop to the pool and
    // sleeping until it ends (two context switches per matmul, a quarter of a decoder pass).
    // Failing only means a pool already exists, which then serves as before.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
