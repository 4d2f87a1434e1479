//! `spec-llava`: the command-line front end. Every error is one line on stderr naming the file and
//! the problem, with exit code 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::generate::SamplingOptions;
use spec_llava::image_io;
use spec_llava::spec::SpecOptions;
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
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 100)]
        scenes: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Plain vs speculative decoding on the same generated scenes, in one run.
    Bench {
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

fn caption(args: CaptionArgs) -> Result<()> {
    let sampling = SamplingOptions {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    // Decode the image first: a bad image is reported before the (slower) model load.
    let image = image_io::load_rgb(&args.image, image_io::DEFAULT_MAX_PIXELS)?;
    let options = args.spec.options()?;
    let backend = CpuBackend;
    let captioner = Captioner::new(&backend, Checkpoint::open(&args.model)?)?;
    let draft = match (&args.draft, args.no_spec) {
        (Some(dir), false) => {
            let d = Captioner::new(&backend, Checkpoint::open(dir)?)?;
            Some(captioner.drafter(d)?)
        }
        _ => None,
    };
    let mut trace = match &args.trace {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| Error::file(path.display(), e))?,
        )),
        None => None,
    };
    let req = CaptionRequest {
        prompt: args.prompt,
        max_new_tokens: args.max_new_tokens,
        sampling,
    };
    let streaming = !args.json;
    let tokenizer = &captioner.checkpoint.tokenizer;
    let mut shown = 0;
    let mut so_far = Vec::new();
    let mut show = |t: u32| {
        // Stream the decoded text as it grows (decoding the whole prefix keeps multi-token
        // characters and word-marker spaces right).
        if streaming {
            so_far.push(t);
            if let Ok(text) = tokenizer.decode(&so_far) {
                if let Some(new) = text.get(shown..) {
                    eprint!("{new}");
                    shown = text.len();
                }
            }
        }
    };
    let mut trace_error = None;
    let result = match &draft {
        None => pollster::block_on(captioner.caption(&backend, &image, &req, |t| {
            show(t);
            true
        }))?,
        Some(d) => pollster::block_on(captioner.caption_speculative(
            &backend,
            d,
            &image,
            &req,
            options,
            |ev| {
                ev.emitted.iter().for_each(|&t| show(t));
                if let Some(w) = trace.as_mut() {
                    use std::io::Write;
                    let line = serde_json::to_string(ev).unwrap_or_default();
                    if let Err(e) = writeln!(w, "{line}") {
                        trace_error = Some(e);
                        return false;
                    }
                }
                true
            },
        ))
        .map_err(|e| match (&trace_error, &args.trace) {
            (Some(te), Some(path)) => Error::file(path.display(), te),
            _ => e,
        })?,
    };
    if let Some(mut w) = trace {
        use std::io::Write;
        let path = args
            .trace
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        w.flush().map_err(|e| Error::file(path, e))?;
    }
    if args.json {
        let json = serde_json::to_string(&result).map_err(|e| Error::invalid(e.to_string()))?;
        println!("{json}");
    } else {
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
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Caption(args) => caption(args),
        Command::Scenes { count, seed, out } => spec_llava::scenes::write_scenes(&out, count, seed),
        Command::Eval {
            model,
            scenes,
            seed,
            json,
        } => {
            let backend = CpuBackend;
            let captioner = Captioner::new(&backend, Checkpoint::open(&model)?)?;
            let report = pollster::block_on(spec_llava::eval::evaluate(
                &backend, &captioner, scenes, seed,
            ))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| Error::invalid(e.to_string()))?
                );
            } else {
                println!("scenes: {}", report.scenes);
                println!("exact match: {:.1}%", report.exact_match * 100.0);
                println!(
                    "attribute accuracy: {:.1}%",
                    report.attribute_accuracy * 100.0
                );
                for (name, v) in &report.per_attribute {
                    println!("  {name:<10} {:.1}%", v * 100.0);
                }
            }
            Ok(())
        }
        Command::Bench {
            target,
            draft,
            scenes,
            seed,
            max_new_tokens,
            spec,
            json,
        } => {
            let options = spec.options()?;
            let backend = CpuBackend;
            let t = Captioner::new(&backend, Checkpoint::open(&target)?)?;
            let d = t.drafter(Captioner::new(&backend, Checkpoint::open(&draft)?)?)?;
            let r = pollster::block_on(spec_llava::eval::bench(
                &backend,
                &t,
                &d,
                scenes,
                seed,
                options,
                max_new_tokens,
            ))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(|e| Error::invalid(e.to_string()))?
                );
            } else {
                println!("backend: cpu; {} scenes; budget {} depth {} top-k {} threshold {}; shared vision: {}",
                    r.total, r.options.budget, r.options.depth, r.options.top_k, r.options.threshold, r.options.shared_vision);
                println!(
                    "plain:       {:>8.1} tokens/s  ({} tokens, {} target passes)",
                    r.plain.tokens_per_s, r.plain.tokens, r.plain.target_passes
                );
                println!(
                    "speculative: {:>8.1} tokens/s  ({} tokens, {} target passes, {} draft passes)",
                    r.spec.tokens_per_s, r.spec.tokens, r.spec.target_passes, r.draft_passes
                );
                println!(
                    "speedup {:.2}x; tau {:.2} (without bonus {:.2}); identical outputs {}/{}",
                    r.speedup, r.tau, r.tau_without_bonus, r.identical, r.total
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
