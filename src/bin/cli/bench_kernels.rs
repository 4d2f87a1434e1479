//! `spec-llava bench-kernels`: GB/s and GFLOP/s of the GPU kernels next to a plain copy kernel's
//! GB/s (src/backend/gpu/bench.rs), the same for the CPU engine's `linear` from packed weights next
//! to a memory copy (src/backend/cpu/bench.rs), the CPU engine's decoder pass over 1, 8 and 32 rows
//! of the model (a token, a speculation tree), and plain greedy tokens/s on the GPU and CPU engines.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use spec_llava::backend::cpu::{self, CpuBackend};
use spec_llava::backend::gpu::bench::{self, KernelRow, Suite};
use spec_llava::backend::gpu::GpuBackend;
use spec_llava::backend::{AttnMask, Backend};
use spec_llava::caption::Captioner;
use spec_llava::checkpoint::Checkpoint;
use spec_llava::eval::DecodeSpeed;
use spec_llava::text::decoder::{LogitRows, Step};
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
    /// Rows of the CPU engine's decoder passes to time instead of 1, 8, 32 (the first is the
    /// reference of `vs_one_row`).
    #[arg(long, value_delimiter = ',')]
    pass_rows: Vec<usize>,
    /// Only this engine; default both, the GPU when one exists.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
}

#[derive(Serialize)]
struct Report {
    /// The adapter the kernels ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    kernels: Vec<KernelRow>,
    /// The CPU engine's `linear` rows and its memory copy (the reference of these rows).
    cpu_kernels: Vec<KernelRow>,
    /// The CPU engine's decoder pass over the model, per row count.
    cpu_passes: Vec<PassRow>,
    model: String,
    /// Plain greedy tokens/s of whole captions, per engine.
    tokens_per_s: BTreeMap<&'static str, f64>,
    decode: BTreeMap<&'static str, DecodeSpeed>,
}

/// One decoder pass (all layers, logits for every row) over `rows` new tokens after a 64-token
/// prefix, on the CPU engine.
#[derive(Serialize)]
struct PassRow {
    rows: usize,
    ms: f64,
    /// `ms` over the one-row pass's.
    vs_one_row: f64,
}

fn cpu_passes(checkpoint: Checkpoint, rows: &[usize], target_s: f64) -> Result<Vec<PassRow>> {
    let b = CpuBackend;
    let captioner = Captioner::new(&b, checkpoint)?;
    let text = &captioner.model.text;
    let (hidden, prefix) = (text.cfg.hidden_size, 64usize);
    let most = rows.iter().copied().max().unwrap_or(1);
    let mut cache = text.new_cache(&b, prefix + most);
    let ids: Vec<u32> = (0..prefix as u32).collect();
    let x = b.tensor(vec![0.01; prefix * hidden], prefix, hidden);
    text.forward(&b, &mut cache, x, &Step::causal(0, &ids));
    let mut out: Vec<PassRow> = Vec::new();
    for &n in rows {
        let positions: Vec<u32> = (prefix as u32..(prefix + n) as u32).collect();
        let step = Step {
            start: prefix,
            positions: &positions,
            mask: &AttnMask::Causal,
            rows: LogitRows::All,
        };
        let secs = cpu::bench::time(target_s, &mut || {
            let x = b.tensor(vec![0.01; n * hidden], n, hidden);
            std::hint::black_box(text.forward(&b, &mut cache, x, &step));
        });
        let one = out.first().map_or(secs, |r| r.ms / 1e3);
        out.push(PassRow {
            rows: n,
            ms: secs * 1e3,
            vs_one_row: secs / one,
        });
    }
    Ok(out)
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
        cpu_kernels: Vec::new(),
        cpu_passes: Vec::new(),
        model: args.model.display().to_string(),
        tokens_per_s: BTreeMap::new(),
        decode: BTreeMap::new(),
    };
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
    if args.backend != Some(BackendChoice::Gpu) {
        let mut cpu_suite = suite.clone();
        if args.rows.is_empty() {
            // A token, a speculation tree's worth, a verification of a large tree.
            cpu_suite.matmul_rows = vec![1, 8, 32];
        }
        report.cpu_kernels = cpu::bench::run_suite(&cpu_suite);
        // Asked-for pass rows are timed even when a filter narrows the kernels.
        if args.filter.is_none() || !args.pass_rows.is_empty() {
            let rows = match (args.quick, args.pass_rows.is_empty()) {
                (_, false) => args.pass_rows.clone(),
                (true, true) => vec![1, 8],
                (false, true) => vec![1, 8, 32],
            };
            let t = suite.target_s * 3.0;
            report.cpu_passes = cpu_passes(Checkpoint::open(&args.model)?, &rows, t)?;
        }
    }
    if let Some(g) = &gpu {
        report.kernels = pollster::block_on(bench::run_suite(g, &suite))?;
    }
    if args.filter.is_some() {
        return print_report(report, &args);
    }
    if let Some(g) = &gpu {
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
    if !report.cpu_kernels.is_empty() {
        println!("cpu engine:");
        print!("{}", bench::table(&report.cpu_kernels));
    }
    for p in &report.cpu_passes {
        println!(
            "cpu decoder pass over {} rows: {:.3} ms ({:.2}x one row) with {}",
            p.rows, p.ms, p.vs_one_row, report.model
        );
    }
    for (name, d) in &report.decode {
        println!(
            "{name}: {:.1} tokens/s plain greedy ({} tokens, {} scenes; decoding loop {:.1} tokens/s) with {}",
            d.tokens_per_s, d.tokens, d.scenes, d.decode_tokens_per_s, report.model
        );
    }
    Ok(())
}
