//! `spec-llava synth`: shape-alike checkpoints. Writes a checkpoint directory with the files, the
//! tensor names and the tensor shapes of a real llava-hf checkpoint (config.json as published,
//! tokenizer, processor configs, chat template, generation config) and seeded random weights, so
//! memory, load time and speed can be measured at 7B / 13B scale without downloading the real
//! weights. Captions are gibberish.
//!
//! Weights are written tensor by tensor, a block of rows at a time, straight into safetensors
//! shards whose headers are computed up front (`safetensors::tensor::Metadata`): the model is never
//! in memory as a whole. q8 / q4 use the layout `spec-llava quantize` writes (`NAME.q4` +
//! `NAME.scales`, see [`crate::quant`]): q8 by [`QuantMatrix::quantize`], q4 by GGML's plain
//! `Q4_0` encoder ([`crate::quant::BlockQ4::quantize_max`]).
//!
//! Every value is a function of the seed, the tensor name and the row, so the same options give the
//! same bytes, whatever the shard limit.

mod shapes;
mod tokenizer;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

pub use self::shapes::{Dims, Like, Names, TensorKind};
use crate::config::LlavaConfig;
use crate::error::{Error, Result};
use crate::files::MemoryFiles;
use crate::quant::{
    blocks_per_row, quantizable, BlockQ4, QuantMatrix, Scheme, GROUP, META_GROUP, META_QUANT,
};

/// Largest shard written by default (transformers' `max_shard_size` is of this order too).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 2 << 30;

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynthDtype {
    F32,
    F16,
    BF16,
    /// Linear weights as q8 blocks, everything else f16 (what `spec-llava quantize --format q8`
    /// writes).
    Q8,
    /// Linear weights as q4 blocks, everything else f16.
    Q4,
}

impl SynthDtype {
    pub fn name(self) -> &'static str {
        match self {
            SynthDtype::F32 => "f32",
            SynthDtype::F16 => "f16",
            SynthDtype::BF16 => "bf16",
            SynthDtype::Q8 => "q8",
            SynthDtype::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::F32, Self::F16, Self::BF16, Self::Q8, Self::Q4]
            .into_iter()
            .find(|d| d.name() == s)
    }

    fn scheme(self) -> Option<Scheme> {
        match self {
            SynthDtype::Q8 => Some(Scheme::Q8),
            SynthDtype::Q4 => Some(Scheme::Q4),
            _ => None,
        }
    }

    /// `torch_dtype` / `dtype` written in config.json.
    fn torch_name(self) -> &'static str {
        match self {
            SynthDtype::F32 => "float32",
            SynthDtype::BF16 => "bfloat16",
            _ => "float16",
        }
    }
}

/// What to write.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    pub like: Like,
    pub dtype: SynthDtype,
    pub names: Names,
    /// Override the number of decoder layers.
    pub text_layers: Option<usize>,
    /// Override the number of vision tower layers.
    pub vision_layers: Option<usize>,
    /// Override the image side (a multiple of the patch size).
    pub image_size: Option<usize>,
    pub seed: u64,
    pub max_shard_bytes: u64,
}

impl SynthOptions {
    /// The real model, f16, transformers 4.x names, seed 0.
    pub fn new(like: Like) -> Self {
        SynthOptions {
            like,
            dtype: SynthDtype::F16,
            names: Names::V4,
            text_layers: None,
            vision_layers: None,
            image_size: None,
            seed: 0,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }

    /// The dimensions after the overrides, checked.
    pub fn dims(&self) -> Result<Dims> {
        let mut d = self.like.dims();
        if let Some(n) = self.text_layers {
            d.text_layers = n;
        }
        if let Some(n) = self.vision_layers {
            d.vision_layers = n;
        }
        if let Some(px) = self.image_size {
            d.image_size = px;
        }
        if d.text_layers == 0 {
            return Err(Error::invalid("--text-layers must be at least 1"));
        }
        let need = d.vision_feature_layer.unsigned_abs() as usize;
        // Hidden state `vision_feature_layer` (-2: the second to last) must be a layer's output.
        if d.vision_layers + 1 < need || d.vision_layers == 0 {
            return Err(Error::invalid(format!(
                "--vision-layers {} does not reach vision_feature_layer {} (at least {} needed)",
                d.vision_layers,
                d.vision_feature_layer,
                need.max(1)
            )));
        }
        // (The real SigLIP-384 is not a multiple of 14: its conv drops the last 6 pixels.)
        let overridden = self.image_size.is_some() && d.image_size != self.like.dims().image_size;
        if d.image_size < d.patch_size || (overridden && !d.image_size.is_multiple_of(d.patch_size))
        {
            return Err(Error::invalid(format!(
                "--image-size {} is not a positive multiple of the patch size {}",
                d.image_size, d.patch_size
            )));
        }
        Ok(d)
    }
}

/// One tensor as it is stored in the written files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: u64,
    /// The model tensor it holds (itself, or the weight whose q4/q8 codes or scales it is).
    source: usize,
    part: Part,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Plain,
    Codes,
    Scales,
}

/// What `synth_checkpoint` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthReport {
    pub like: &'static str,
    pub dtype: &'static str,
    pub parameters: u64,
    pub tensors: usize,
    pub shards: Vec<String>,
    pub weight_bytes: u64,
    pub files: Vec<String>,
}

/// Model tensors (names and shapes exactly as the real checkpoint) and how each is stored, in
/// file order: what `synth_checkpoint` writes, without writing anything.
pub fn plan(opts: &SynthOptions) -> Result<(Vec<shapes::ModelTensor>, Vec<StoredTensor>)> {
    let dims = opts.dims()?;
    let mut model = shapes::model_tensors(&dims, opts.names);
    model.sort_by(|a, b| a.name.cmp(&b.name));
    let mut stored = Vec::new();
    for (i, t) in model.iter().enumerate() {
        let elems: usize = t.shape.iter().product();
        match opts.dtype.scheme() {
            Some(s) if quantizable(&t.name, &t.shape) => {
                let (rows, nb) = (t.shape[0], blocks_per_row(t.shape[1]));
                stored.push(StoredTensor {
                    name: format!("{}{}", t.name, s.suffix()),
                    dtype: match s {
                        Scheme::Q8 => Dtype::I8,
                        Scheme::Q4 => Dtype::U8,
                    },
                    shape: vec![rows, nb * s.block_bytes()],
                    bytes: (rows * nb * s.block_bytes()) as u64,
                    source: i,
                    part: Part::Codes,
                });
                stored.push(StoredTensor {
                    name: format!("{}{}", t.name, crate::quant::SCALES_SUFFIX),
                    dtype: Dtype::F16,
                    shape: vec![rows, nb],
                    bytes: (rows * nb * 2) as u64,
                    source: i,
                    part: Part::Scales,
                });
            }
            _ => {
                let dtype = match opts.dtype {
                    SynthDtype::F32 => Dtype::F32,
                    SynthDtype::BF16 => Dtype::BF16,
                    _ => Dtype::F16,
                };
                stored.push(StoredTensor {
                    name: t.name.clone(),
                    dtype,
                    shape: t.shape.clone(),
                    bytes: (elems * dtype.bitsize() / 8) as u64,
                    source: i,
                    part: Part::Plain,
                });
            }
        }
    }
    Ok((model, stored))
}

/// The config.json text of the model `opts` describes.
pub fn config_json(opts: &SynthOptions) -> Result<String> {
    let dims = opts.dims()?;
    let v = shapes::config(opts.like, &dims, opts.dtype.torch_name());
    let text = pretty(&v)?;
    // What we write must read back as the model we write the weights of.
    let cfg = LlavaConfig::from_json(&text, "config.json")?;
    debug_assert_eq!(cfg.text.hidden_size, dims.text_hidden);
    Ok(text)
}

fn pretty(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::invalid(e.to_string()))
}

/// Where a synthetic checkpoint goes: a directory ([`synth_checkpoint`]) or memory
/// ([`synth_in_memory`]).
trait Destination {
    /// A whole (small) file.
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
    /// A shard of `len` bytes, written by `write` in order.
    fn shard(
        &mut self,
        name: &str,
        len: u64,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()>;
}

struct Dir<'a>(&'a Path);

impl Destination for Dir<'_> {
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::file(path.display(), e))
    }
    fn shard(
        &mut self,
        name: &str,
        _len: u64,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = self.0.join(name);
        let io = |e: std::io::Error| Error::file(path.display(), format!("cannot write: {e}"));
        let file = std::fs::File::create(&path).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
        write(&mut w)?;
        w.flush().map_err(io)
    }
}

impl Destination for MemoryFiles {
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.insert(name, bytes.to_vec());
        Ok(())
    }
    fn shard(
        &mut self,
        name: &str,
        len: u64,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let mut bytes = Vec::with_capacity(len as usize);
        write(&mut bytes)?;
        self.insert(name, bytes);
        Ok(())
    }
}

/// Write the checkpoint `opts` describes into `out` (created if missing).
pub fn synth_checkpoint(opts: &SynthOptions, out: &Path) -> Result<SynthReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out.display(), e))?;
    let report = synth_into(opts, &mut Dir(out))?;
    let index_path = out.join(crate::files::INDEX_FILE);
    if report.shards.len() < 2 && index_path.exists() {
        std::fs::remove_file(&index_path).map_err(|e| Error::file(index_path.display(), e))?;
    }
    Ok(report)
}

/// The checkpoint `opts` describes, in memory (for benchmarks: no files).
pub fn synth_in_memory(opts: &SynthOptions, source: &str) -> Result<(MemoryFiles, SynthReport)> {
    let mut files = MemoryFiles::new(source);
    let report = synth_into(opts, &mut files)?;
    Ok((files, report))
}

fn synth_into(opts: &SynthOptions, out: &mut dyn Destination) -> Result<SynthReport> {
    let dims = opts.dims()?;
    let config = config_json(opts)?;
    let (model, stored) = plan(opts)?;
    let mut files = Vec::new();
    out.file("config.json", config.as_bytes())?;
    files.push("config.json".to_string());
    for (name, text) in shapes::side_files(opts.like, &dims)? {
        out.file(&name, text.as_bytes())?;
        files.push(name);
    }
    let (tok, tok_config) = tokenizer::tokenizer_files(opts.like)?;
    out.file("tokenizer.json", &tok)?;
    out.file("tokenizer_config.json", tok_config.as_bytes())?;
    files.extend(["tokenizer.json".into(), "tokenizer_config.json".into()]);

    // Shards: greedy in file order.
    let header_bytes = |t: &StoredTensor| t.name.len() as u64 + 120;
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 512u64;
    for (i, t) in stored.iter().enumerate() {
        let add = t.bytes + header_bytes(t);
        let last = shards.last_mut().expect("one shard");
        if !last.is_empty() && size + add > opts.max_shard_bytes {
            shards.push(vec![i]);
            size = 512 + add;
        } else {
            last.push(i);
            size += add;
        }
    }
    let count = shards.len();
    let file_name = |k: usize| {
        if count == 1 {
            crate::files::WEIGHTS_FILE.to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", k + 1)
        }
    };
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    if opts.dtype.scheme().is_some() {
        metadata.insert(META_QUANT.to_string(), opts.dtype.name().to_string());
        metadata.insert(META_GROUP.to_string(), GROUP.to_string());
    }
    let mut weight_map = serde_json::Map::new();
    let mut shard_names = Vec::new();
    // Scales of a quantized weight, made with its codes and written right after them.
    let mut pending_scales: Option<(usize, Vec<u16>)> = None;
    for (k, members) in shards.iter().enumerate() {
        let name = file_name(k);
        let mut offset = 0usize;
        let infos = members
            .iter()
            .map(|&i| {
                let t = &stored[i];
                let start = offset;
                offset += t.bytes as usize;
                (
                    t.name.clone(),
                    TensorInfo {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        data_offsets: (start, offset),
                    },
                )
            })
            .collect();
        let header = Metadata::new(Some(metadata.clone()), infos)
            .map_err(|e| Error::file(&name, format!("header: {e}")))?;
        // The `__metadata__` map is a HashMap: sort it, so the same options give the same bytes.
        let mut header = serde_json::to_value(&header).map_err(|e| Error::file(&name, e))?;
        if let Some(meta) = header.get_mut("__metadata__") {
            let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_value(meta.take()).map_err(|e| Error::file(&name, e))?;
            *meta = serde_json::to_value(sorted).map_err(|e| Error::file(&name, e))?;
        }
        let mut header = serde_json::to_vec(&header).map_err(|e| Error::file(&name, e))?;
        header.resize(header.len().next_multiple_of(8), b' ');
        let len = 8 + header.len() as u64 + members.iter().map(|&i| stored[i].bytes).sum::<u64>();
        let shard_name = name.clone();
        let io = |e: std::io::Error| Error::file(&shard_name, format!("cannot write: {e}"));
        out.shard(&name, len, &mut |w: &mut dyn Write| {
            w.write_all(&(header.len() as u64).to_le_bytes())
                .map_err(io)?;
            w.write_all(&header).map_err(io)?;
            for &i in members {
                let t = &stored[i];
                let m = &model[t.source];
                let mut written = 0u64;
                match t.part {
                    Part::Plain => {
                        for_row_blocks(opts.seed, m, |rows| {
                            let bytes = encode(t.dtype, rows);
                            written += bytes.len() as u64;
                            w.write_all(&bytes).map_err(io)
                        })?;
                    }
                    Part::Codes => {
                        let scheme = opts.dtype.scheme().ok_or_else(|| {
                            Error::invalid(format!("codes of {} in a plain checkpoint", m.name))
                        })?;
                        let cols = m.shape[1];
                        let mut scales = Vec::with_capacity(m.shape[0] * blocks_per_row(cols));
                        for_row_blocks(opts.seed, m, |rows| {
                            for q in quantize_rows(scheme, rows, cols) {
                                scales.extend_from_slice(&q.scales);
                                written += q.qs.len() as u64;
                                w.write_all(&q.qs).map_err(io)?;
                            }
                            Ok(())
                        })?;
                        pending_scales = Some((t.source, scales));
                    }
                    Part::Scales => {
                        let scales = match pending_scales.take() {
                            Some((s, scales)) if s == t.source => scales,
                            _ => {
                                return Err(Error::invalid(format!(
                                    "scales of {} before its codes",
                                    m.name
                                )))
                            }
                        };
                        let bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                        written += bytes.len() as u64;
                        w.write_all(&bytes).map_err(io)?;
                    }
                }
                if written != t.bytes {
                    return Err(Error::file(
                        &name,
                        format!(
                            "tensor {}: wrote {written} bytes, planned {}",
                            t.name, t.bytes
                        ),
                    ));
                }
                weight_map.insert(t.name.clone(), name.clone().into());
            }
            Ok(())
        })?;
        shard_names.push(name);
    }
    if count > 1 {
        let mut meta = serde_json::json!({
            "total_size": stored.iter().map(|t| t.bytes).sum::<u64>(),
        });
        if opts.dtype.scheme().is_some() {
            meta[META_QUANT] = opts.dtype.name().into();
            meta[META_GROUP] = GROUP.to_string().into();
        }
        let index = serde_json::json!({ "metadata": meta, "weight_map": weight_map });
        let text = pretty(&index)?;
        out.file(crate::files::INDEX_FILE, text.as_bytes())?;
        files.push(crate::files::INDEX_FILE.to_string());
    }
    files.extend(shard_names.iter().cloned());
    Ok(SynthReport {
        like: opts.like.name(),
        dtype: opts.dtype.name(),
        parameters: model
            .iter()
            .map(|m| m.shape.iter().product::<usize>() as u64)
            .sum(),
        tensors: model.len(),
        shards: shard_names,
        weight_bytes: stored.iter().map(|t| t.bytes).sum(),
        files,
    })
}

/// Rows per block so that a block of f32 values stays around 32 MiB.
const BLOCK_BYTES: usize = 32 << 20;

/// Call `f` with the tensor's values, a block of whole rows at a time, in order. Row `r` of tensor
/// `m` is a function of (seed, name, r) only; rows are made in parallel.
fn for_row_blocks(
    seed: u64,
    m: &shapes::ModelTensor,
    mut f: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let (rows, cols) = match m.shape.len() {
        0 | 1 => (1, m.shape.iter().product::<usize>()),
        _ => (m.shape[0], m.shape[1..].iter().product()),
    };
    let per_block = (BLOCK_BYTES / (cols.max(1) * 4)).max(1);
    let base = name_hash(seed, &m.name);
    let mut buf = vec![0f32; per_block.min(rows) * cols];
    let mut r0 = 0;
    while r0 < rows {
        let n = per_block.min(rows - r0);
        let block = &mut buf[..n * cols];
        block
            .par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(i, row)| fill_row(m.kind, base, (r0 + i) as u64, row));
        f(block)?;
        r0 += n;
    }
    Ok(())
}

/// Quantize a block of rows, in parallel pieces of a few rows (in order). q4 codes use GGML's plain
/// `Q4_0` encoder ([`BlockQ4::quantize_max`]): the same blocks as `QuantMatrix::quantize` writes,
/// without its per-group search for a better scale, which costs ~40x more and buys nothing for
/// random weights (a full 7B checkpoint would take most of an hour on two cores).
fn quantize_rows(scheme: Scheme, rows: &[f32], cols: usize) -> Vec<QuantMatrix> {
    const PIECE: usize = 16;
    rows.par_chunks(PIECE * cols)
        .map(|piece| {
            let n = piece.len() / cols;
            match scheme {
                Scheme::Q8 => QuantMatrix::quantize(scheme, piece, n, cols),
                Scheme::Q4 => {
                    let nb = blocks_per_row(cols);
                    let mut qs = Vec::with_capacity(n * nb * scheme.block_bytes());
                    let mut scales = Vec::with_capacity(n * nb);
                    for row in piece.chunks(cols) {
                        for g in row.chunks(GROUP) {
                            let b = BlockQ4::quantize_max(g);
                            scales.push(b.d);
                            qs.extend_from_slice(&b.qs);
                        }
                    }
                    QuantMatrix {
                        scheme,
                        rows: n,
                        cols,
                        qs,
                        scales,
                    }
                }
            }
        })
        .collect()
}

fn name_hash(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h ^ splitmix(seed))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Standard deviation of the random weights (transformers' `initializer_range`).
const STD: f32 = 0.02;

fn fill_row(kind: TensorKind, base: u64, row: u64, out: &mut [f32]) {
    if kind == TensorKind::Norm {
        out.fill(1.0);
        return;
    }
    // xorshift64* seeded per row; each value is an Irwin-Hall sum of four 16-bit uniforms,
    // centred and scaled to unit variance (normal-ish, bounded by +-3.5 std).
    let mut s = splitmix(base ^ row.wrapping_mul(0xa076_1d64_78bd_642f)) | 1;
    const MEAN: f32 = 2.0 * 65535.0;
    const SCALE: f32 = STD * 1.732_050_8 / 65536.0;
    for v in out.iter_mut() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let x = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let sum = (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
        *v = (sum as f32 - MEAN) * SCALE;
    }
}

fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}
