//! `spec-llava bench-kernels`: GB/s and GFLOP/s of the GPU kernels next to a plain copy kernel's
//! GB/s (src/backend/gpu/bench.rs), and plain greedy tokens/s of a model on the GPU and CPU engines.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::gpu::bench::{self, KernelRow, Suite};
use spec_llava::backend::gpu::GpuBackend;
use spec_llava::backend::Backend;
use spec_llava::caption::Captioner;
use spec_llava::checkpoint::Checkpoint;
use spec_llava::eval::DecodeSpeed;
use spec_llava::Result;

use super::BackendChoice;

#[derive(clap::Args)]
pub struct BenchKernelsArgs {
    /// Model whose plain greedy decoding speed is measured.
    #[arg(long, default_value = "web/models/demo/target")]
    model: PathBuf,
    /// Generated scenes captioned per backend for tokens/s.
    #[arg(long, default_value_t = 3)]
    scenes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Tiny sizes, few iterations, one scene of 8 tokens: a smoke test of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Only kernel rows whose `kernel shape dtype` contains this (e.g. `matmul_small`, `m16 n1024`,
    /// `attention`); the copy rows always run. Skips the tokens/s measurement.
    #[arg(long)]
    filter: Option<String>,
    /// Matmul rows of x to time instead of the suite's (e.g. `1,25,75`: a token, a speculation
    /// tree, a prompt).
    #[arg(long, value_delimiter = ',')]
    rows: Vec<usize>,
    /// Matmul weight shapes `OUTxIN` to time instead of the suite's (e.g. `688x256,256x688`).
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    weights: Vec<(usize, usize)>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Only this engine (cpu: tokens/s only, no kernels); default both, the GPU when one exists.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
}

#[derive(Serialize)]
struct Report {
    /// The adapter the kernels ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    kernels: Vec<KernelRow>,
    model: String,
    /// Plain greedy tokens/s of whole captions, per engine.
    tokens_per_s: BTreeMap<&'static str, f64>,
    decode: BTreeMap<&'static str, DecodeSpeed>,
}

async fn speed<B: Backend>(
    b: &B,
    checkpoint: Checkpoint,
    args: &BenchKernelsArgs,
) -> Result<DecodeSpeed> {
    let captioner = Captioner::new(b, checkpoint)?;
    let (scenes, max_new_tokens) = match args.quick {
        true => (1, 8),
        false => (args.scenes, args.max_new_tokens),
    };
    spec_llava::eval::plain_speed(b, &captioner, scenes, args.seed, max_new_tokens).await
}

pub fn run(args: BenchKernelsArgs) -> Result<()> {
    // The model is read (and checked) before any engine starts; each engine opens its own.
    Checkpoint::open(&args.model)?;
    let gpu = match args.backend {
        Some(BackendChoice::Cpu) => None,
        Some(BackendChoice::Gpu) => Some(pollster::block_on(GpuBackend::new())?),
        None => match pollster::block_on(GpuBackend::new()) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("notice: no usable GPU ({e}); measuring the CPU engine only");
                None
            }
        },
    };
    let mut report = Report {
        device: gpu.as_ref().map(GpuBackend::adapter_info),
        kernels: Vec::new(),
        model: args.model.display().to_string(),
        tokens_per_s: BTreeMap::new(),
        decode: BTreeMap::new(),
    };
    if let Some(g) = &gpu {
        let mut suite = if args.quick {
            Suite::quick()
        } else {
            Suite::full()
        };
        suite.filter = args.filter.clone();
        if !args.rows.is_empty() {
            suite.matmul_rows = args.rows.clone();
        }
        if !args.weights.is_empty() {
            suite.matmul_weights = args.weights.clone();
        }
        report.kernels = pollster::block_on(bench::run_suite(g, &suite))?;
        if args.filter.is_some() {
            return print_report(report, &args);
        }
        report.decode.insert(
            "gpu",
            pollster::block_on(speed(g, Checkpoint::open(&args.model)?, &args))?,
        );
    }
    if args.backend != Some(BackendChoice::Gpu) {
        report.decode.insert(
            "cpu",
            pollster::block_on(speed(&CpuBackend, Checkpoint::open(&args.model)?, &args))?,
        );
    }
    print_report(report, &args)
}

/// `OUTxIN` (e.g. `688x256`), both positive.
fn parse_shape(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a weight shape OUTxIN such as 688x256");
    let (n, k) = s.split_once('x').ok_or_else(bad)?;
    match (n.trim().parse(), k.trim().parse()) {
        (Ok(n), Ok(k)) if n > 0 && k > 0 => Ok((n, k)),
        _ => Err(bad()),
    }
}

fn print_report(mut report: Report, args: &BenchKernelsArgs) -> Result<()> {
    report.tokens_per_s = report
        .decode
        .iter()
        .map(|(k, d)| (*k, d.tokens_per_s))
        .collect();
    if args.json {
        return super::json_line(&report);
    }
    if let Some(d) = &report.device {
        println!("device: {d}");
        print!("{}", bench::table(&report.kernels));
    }
    for (name, d) in &report.decode {
        println!(
            "{name}: {:.1} tokens/s plain greedy ({} tokens, {} scenes; decoding loop {:.1} tokens/s) with {}",
            d.tokens_per_s, d.tokens, d.scenes, d.decode_tokens_per_s, report.model
        );
    }
    Ok(())
}
