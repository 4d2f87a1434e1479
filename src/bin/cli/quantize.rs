//! `spec-llava quantize`: write a q4 / q8 / f16 copy of a checkpoint (see `spec_llava::quantize`).

use std::path::PathBuf;

use clap::ValueEnum;
use spec_llava::quant::Format;
use spec_llava::quantize;
use spec_llava::{Error, Result};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantFormat {
    /// 4-bit codes, groups of 32 with an f16 scale (GGML Q4_0 blocks; 4.5 bits/weight).
    Q4,
    /// 8-bit codes, groups of 32 with an f16 scale (GGML Q8_0 blocks; 8.5 bits/weight).
    Q8,
    /// Half precision.
    F16,
}

impl QuantFormat {
    pub fn format(self) -> Format {
        match self {
            QuantFormat::Q4 => Format::Q4,
            QuantFormat::Q8 => Format::Q8,
            QuantFormat::F16 => Format::F16,
        }
    }
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Checkpoint directory to read (a plain Hugging Face LLaVA checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// Directory to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum)]
    format: QuantFormat,
    /// Largest safetensors shard to write, in bytes.
    #[arg(long, default_value_t = quantize::DEFAULT_MAX_SHARD_BYTES)]
    max_shard_bytes: u64,
    /// q4 only: calibrate GPTQ on this many generated scenes (runs the f32 CPU engine first); 0
    /// rounds each group to nearest instead.
    #[arg(long, default_value_t = quantize::calibrate::DEFAULT_SCENES)]
    calibration_scenes: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    if args.max_shard_bytes < 4096 {
        return Err(Error::invalid("--max-shard-bytes must be at least 4096"));
    }
    let r = quantize::quantize_checkpoint(
        &args.model,
        &args.out,
        args.format.format(),
        args.max_shard_bytes,
        args.calibration_scenes,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| Error::invalid(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{}: {} linear weights converted, {} other tensors kept; {:.1} MiB -> {:.1} MiB in {} shard(s)",
        r.format,
        r.quantized_tensors,
        r.other_tensors,
        r.input_bytes as f64 / (1 << 20) as f64,
        r.output_bytes as f64 / (1 << 20) as f64,
        r.shards.len()
    );
    if let Some(c) = &r.calibration {
        println!("q4 codes chosen by {c}");
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
