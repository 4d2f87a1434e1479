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
use spec_llava::{Error, Result};

#[derive(Parser)]
#[command(name = "spec-llava", version, about = "Caption images with LLaVA checkpoints")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption one image.
    Caption(CaptionArgs),
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
}

fn caption(args: CaptionArgs) -> Result<()> {
    let sampling = SamplingOptions { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
    sampling.validate()?;
    // Decode the image first: a bad image is reported before the (slower) model load.
    let image = image_io::load_rgb(&args.image, image_io::DEFAULT_MAX_PIXELS)?;
    let backend = CpuBackend;
    let captioner = Captioner::new(&backend, Checkpoint::open(&args.model)?)?;
    let req = CaptionRequest { prompt: args.prompt, max_new_tokens: args.max_new_tokens, sampling };
    let streaming = !args.json;
    let tokenizer = &captioner.checkpoint.tokenizer;
    let mut shown = 0;
    let mut so_far = Vec::new();
    let result = pollster::block_on(captioner.caption(&backend, &image, &req, |t| {
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
        true
    }))?;
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
