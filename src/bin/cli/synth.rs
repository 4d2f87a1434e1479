//! `spec-llava synth`: write a shape-alike checkpoint (see `spec_llava::synth`).

use std::path::PathBuf;

use clap::ValueEnum;
use spec_llava::synth::{self, Like, Names, SynthDtype, SynthOptions};
use spec_llava::{Error, Result};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LikeArg {
    #[value(name = "llava-1.5-7b")]
    Llava15_7b,
    #[value(name = "llava-1.5-13b")]
    Llava15_13b,
    #[value(name = "llava-interleave-qwen-0.5b")]
    InterleaveQwen05b,
    /// A LLaVA-1.5 draft: llama-68m's text model with LLaVA-1.5's vision tower.
    #[value(name = "llava-1.5-68m")]
    Llava15_68m,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
    /// Linear weights as q8 blocks (the `spec-llava quantize` layout), the rest f16.
    Q8,
    /// Linear weights as q4 blocks (the `spec-llava quantize` layout), the rest f16.
    Q4,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NamesArg {
    /// transformers 4.x tensor names (`vision_tower.vision_model.*`), as llava-hf publishes.
    V4,
    /// transformers 5.x tensor names (`vision_tower.*`).
    V5,
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// The real checkpoint whose files, tensor names and shapes to imitate.
    #[arg(long, value_enum)]
    like: LikeArg,
    /// Directory to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "f16")]
    dtype: DtypeArg,
    /// Decoder layers (default: the real number).
    #[arg(long)]
    text_layers: Option<usize>,
    /// Vision tower layers (default: the real number).
    #[arg(long)]
    vision_layers: Option<usize>,
    /// Image side in pixels, a multiple of the patch size (default: the real one).
    #[arg(long)]
    image_size: Option<usize>,
    #[arg(long, value_enum, default_value = "v4")]
    names: NamesArg,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest safetensors shard, in bytes.
    #[arg(long, default_value_t = synth::DEFAULT_MAX_SHARD_BYTES, hide = true)]
    max_shard_bytes: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let like = match args.like {
        LikeArg::Llava15_7b => Like::Llava15_7b,
        LikeArg::Llava15_13b => Like::Llava15_13b,
        LikeArg::InterleaveQwen05b => Like::InterleaveQwen05b,
        LikeArg::Llava15_68m => Like::Llava15_68m,
    };
    let opts = SynthOptions {
        like,
        dtype: match args.dtype {
            DtypeArg::F32 => SynthDtype::F32,
            DtypeArg::F16 => SynthDtype::F16,
            DtypeArg::Bf16 => SynthDtype::BF16,
            DtypeArg::Q8 => SynthDtype::Q8,
            DtypeArg::Q4 => SynthDtype::Q4,
        },
        names: match args.names {
            NamesArg::V4 => Names::V4,
            NamesArg::V5 => Names::V5,
        },
        text_layers: args.text_layers,
        vision_layers: args.vision_layers,
        image_size: args.image_size,
        seed: args.seed,
        max_shard_bytes: args.max_shard_bytes,
    };
    let r = synth::synth_checkpoint(&opts, &args.out)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| Error::invalid(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{} ({}): {:.2}B parameters in {} tensors, {:.1} MiB of weights in {} shard(s)",
        r.like,
        r.dtype,
        r.parameters as f64 / 1e9,
        r.tensors,
        r.weight_bytes as f64 / (1 << 20) as f64,
        r.shards.len()
    );
    println!(
        "wrote {} (random weights: captions are gibberish)",
        args.out.display()
    );
    Ok(())
}
