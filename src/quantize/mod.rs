//! `spec-llava quantize`: writes a quantized copy of a checkpoint (q8 / q4 / f16, the block
//! formats of [`crate::quant`]), tensor by tensor, in shards. q4 codes are chosen by GPTQ
//! (Frantar et al. 2022; [`gptq`]) from the inputs each linear sees while the f32 model captions
//! generated calibration scenes ([`calibrate`]); without calibration, round-to-nearest.
//!
//! This sits above the pipeline (calibration runs the captioner); the formats it writes stay down
//! with the other file formats, so loading a quantized checkpoint never pulls this in.

#[cfg(not(target_arch = "wasm32"))]
pub mod calibrate;
pub mod gptq;

use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use half::f16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

#[cfg(not(target_arch = "wasm32"))]
use self::calibrate::calibrate;
use self::gptq::Calibration;
use crate::error::{Error, Result};
use crate::quant::{
    blocks_per_row, quantizable, Format, QuantMatrix, Scheme, GROUP, META_CALIBRATION, META_GROUP,
    META_QUANT,
};
use crate::weights::{widen, DType, WeightStore};

/// Largest shard `spec-llava quantize` writes by default.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 256 << 20;

/// What `quantize_checkpoint` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeReport {
    pub format: &'static str,
    /// Shard file names, in order.
    pub shards: Vec<String>,
    pub quantized_tensors: usize,
    pub other_tensors: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub copied_files: Vec<String>,
    /// How the q4 codes were chosen, as recorded in the metadata (`None`: round-to-nearest).
    pub calibration: Option<String>,
}

/// One output tensor: name, safetensors dtype, shape, and how to make its bytes.
struct Planned {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: usize,
    source: String,
    part: Part,
}

#[derive(Clone, Copy)]
enum Part {
    /// The source tensor's bytes, unchanged.
    Copy,
    /// Source widened and stored as f16.
    Half,
    /// A quantized weight's codes (the scales follow it in the plan, in the same shard or the
    /// next: codes and scales are consecutive in sorted order).
    Codes,
    Scales,
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::U8 => Dtype::U8,
        DType::I8 => Dtype::I8,
    }
}

fn plan(store: &WeightStore, format: Format) -> Result<Vec<Planned>> {
    let mut names: Vec<&str> = store.names().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        // From the header: planning reads no tensor data.
        let Some((dtype, shape, len)) = store.info(name) else {
            continue;
        };
        let shape = shape.to_vec();
        let elems: usize = shape.iter().product();
        let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
        match format.scheme() {
            Some(s) if float && quantizable(name, &shape) => {
                let (rows, nb) = (shape[0], blocks_per_row(shape[1]));
                let codes_dtype = match s {
                    Scheme::Q8 => Dtype::I8,
                    Scheme::Q4 => Dtype::U8,
                };
                out.push(Planned {
                    name: format!("{name}{}", s.suffix()),
                    dtype: codes_dtype,
                    shape: vec![rows, nb * s.block_bytes()],
                    bytes: rows * nb * s.block_bytes(),
                    source: name.to_string(),
                    part: Part::Codes,
                });
                out.push(Planned {
                    name: format!("{name}{}", crate::quant::SCALES_SUFFIX),
                    dtype: Dtype::F16,
                    shape: vec![rows, nb],
                    bytes: rows * nb * 2,
                    source: name.to_string(),
                    part: Part::Scales,
                });
            }
            None if float && dtype != DType::F16 => out.push(Planned {
                name: name.to_string(),
                dtype: Dtype::F16,
                shape,
                bytes: elems * 2,
                source: name.to_string(),
                part: Part::Half,
            }),
            _ => out.push(Planned {
                name: name.to_string(),
                dtype: st_dtype(dtype),
                shape,
                bytes: len as usize,
                source: name.to_string(),
                part: Part::Copy,
            }),
        }
    }
    Ok(out)
}

/// Conservative bytes of a safetensors header entry for a tensor.
fn header_bytes(name: &str) -> u64 {
    name.len() as u64 + 120
}

/// Header bytes of a shard besides its tensors' entries (metadata, braces, alignment).
const HEADER_BASE: u64 = 512;

/// Quantize the checkpoint in `model` into `out` (created if missing): safetensors shards of at
/// most `max_shard_bytes` each (a single tensor bigger than that gets a shard of its own), plus
/// copies of the checkpoint's other files. Tensors are converted one at a time, so at most one
/// shard's output is in memory.
///
/// For q4, `calibration_scenes > 0` chooses the codes with GPTQ calibrated on that many
/// generated scenes (see [`super::calibrate`]; this loads the model into the f32 CPU engine
/// first); 0 rounds to nearest. q8 and f16 ignore it.
#[cfg(not(target_arch = "wasm32"))]
pub fn quantize_checkpoint(
    model: &Path,
    out: &Path,
    format: Format,
    max_shard_bytes: u64,
    calibration_scenes: usize,
) -> Result<QuantizeReport> {
    if !model.is_dir() {
        return Err(Error::file(model.display(), "not a checkpoint directory"));
    }
    if model.canonicalize().ok() == out.canonicalize().ok() {
        return Err(Error::file(
            out.display(),
            "the output directory must differ from the model directory",
        ));
    }
    // Check the checkpoint opens as a whole (config, tokenizer, weights) before writing.
    let checkpoint = crate::checkpoint::Checkpoint::open(model)?;
    if let Some(f) = checkpoint.weights.format() {
        return Err(Error::file(
            model.display(),
            format!("already a {} checkpoint; quantize the original", f.name()),
        ));
    }
    let store = &checkpoint.weights;
    let planned = plan(store, format)?;
    if format != Format::Q4 || calibration_scenes == 0 {
        return write_checkpoint(model, out, store, format, max_shard_bytes, None);
    }
    // GPTQ on the inputs of the f32 model. (Re-recording them from the quantized model and
    // requantizing, as the paper's sequential variant does, took twice as long and measured
    // no better on the demo target: 42-43/50 identical captions against 45/50, plain GPTQ.)
    let targets: Vec<(String, Vec<usize>)> = planned
        .iter()
        .filter(|p| matches!(p.part, Part::Codes))
        .filter_map(|p| Some((p.source.clone(), store.info(&p.source)?.1.to_vec())))
        .collect();
    let calibration = calibrate(model, &targets, calibration_scenes)?;
    write_checkpoint(
        model,
        out,
        store,
        format,
        max_shard_bytes,
        Some(&calibration),
    )
}

/// A quantized copy of a checkpoint's weights, made one shard at a time so at most one shard's
/// output is in memory: [`quantize_checkpoint`] writes the shards to disk, the page keeps them in
/// its model store.
pub struct Packing<'a> {
    store: &'a WeightStore,
    planned: Vec<Planned>,
    /// Indices into `planned`, per shard.
    shards: Vec<Vec<usize>>,
    next: usize,
    format: Format,
    metadata: HashMap<String, String>,
    calibration: Option<&'a Calibration>,
    report: QuantizeReport,
}

impl<'a> Packing<'a> {
    /// Plan a `format` copy of `store` (a plain checkpoint) in shards of at most
    /// `max_shard_bytes` (a single bigger tensor gets a shard of its own). q4 weights whose
    /// Hessian `calibration` holds are quantized with GPTQ, the rest round to nearest exactly as
    /// quantizing while loading does.
    pub fn new(
        store: &'a WeightStore,
        format: Format,
        max_shard_bytes: u64,
        calibration: Option<&'a Calibration>,
    ) -> Result<Self> {
        let planned = plan(store, format)?;
        // Shards: greedy in sorted-name order.
        let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
        let mut size = HEADER_BASE;
        for (i, p) in planned.iter().enumerate() {
            let add = p.bytes as u64 + header_bytes(&p.name);
            match shards.last_mut() {
                Some(last) if last.is_empty() || size + add <= max_shard_bytes => {
                    last.push(i);
                    size += add;
                }
                _ => {
                    shards.push(vec![i]);
                    size = HEADER_BASE + add;
                }
            }
        }
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        metadata.insert(META_QUANT.to_string(), format.name().to_string());
        metadata.insert(META_GROUP.to_string(), GROUP.to_string());
        if let Some(c) = calibration {
            metadata.insert(META_CALIBRATION.to_string(), c.describe());
        }
        let report = QuantizeReport {
            format: format.name(),
            shards: Vec::new(),
            quantized_tensors: 0,
            other_tensors: 0,
            input_bytes: 0,
            output_bytes: 0,
            copied_files: Vec::new(),
            calibration: calibration.map(Calibration::describe),
        };
        Ok(Packing {
            store,
            planned,
            shards,
            next: 0,
            format,
            metadata,
            calibration,
            report,
        })
    }

    /// The shard file names, in order (`model.safetensors` when there is one).
    pub fn shard_names(&self) -> Vec<String> {
        let count = self.shards.len();
        (0..count)
            .map(|k| {
                if count == 1 {
                    crate::files::WEIGHTS_FILE.to_string()
                } else {
                    format!("model-{:05}-of-{count:05}.safetensors", k + 1)
                }
            })
            .collect()
    }

    /// Bytes of all the shards' tensors.
    pub fn tensor_bytes(&self) -> u64 {
        self.planned.iter().map(|p| p.bytes as u64).sum()
    }

    /// `model.safetensors.index.json` for the copy; `None` when it has a single shard.
    pub fn index_json(&self) -> Option<String> {
        let names = self.shard_names();
        if names.len() < 2 {
            return None;
        }
        let mut weight_map = serde_json::Map::new();
        for (members, shard) in self.shards.iter().zip(&names) {
            for &i in members {
                weight_map.insert(self.planned[i].name.clone(), shard.clone().into());
            }
        }
        let mut index = serde_json::json!({
            "metadata": {
                "total_size": self.tensor_bytes(),
                META_QUANT: self.format.name(),
                META_GROUP: GROUP.to_string(),
            },
            "weight_map": weight_map,
        });
        if let Some(c) = self.calibration {
            index["metadata"][META_CALIBRATION] = c.describe().into();
        }
        serde_json::to_string_pretty(&index).ok()
    }

    /// What was made so far (shards, tensor counts, bytes).
    pub fn report(&self) -> &QuantizeReport {
        &self.report
    }

    /// The next shard: its file name and safetensors bytes; `None` after the last.
    pub fn next_shard(&mut self) -> Option<Result<(String, Vec<u8>)>> {
        let k = self.next;
        let members = self.shards.get(k)?.clone();
        self.next += 1;
        let name = self.shard_names().swap_remove(k);
        Some(self.make_shard(&name, &members).map(|bytes| {
            self.report.output_bytes += bytes.len() as u64;
            self.report.shards.push(name.clone());
            (name, bytes)
        }))
    }

    fn make_shard(&mut self, name: &str, members: &[usize]) -> Result<Vec<u8>> {
        let store = self.store;
        // A quantized weight's codes and scales are made together and reused for the second.
        let mut data: Vec<Vec<u8>> = Vec::with_capacity(members.len());
        let mut cache: Option<(String, QuantMatrix)> = None;
        for &i in members {
            let p = &self.planned[i];
            let (dtype, shape, len) = store.info(&p.source).ok_or_else(|| {
                Error::file(
                    store.file_of(&p.source),
                    format!("missing tensor {}", p.source),
                )
            })?;
            let shape = shape.to_vec();
            self.report.input_bytes += match p.part {
                Part::Scales => 0,
                _ => len,
            };
            let converted = quantizable(&p.source, &shape)
                && matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
            match p.part {
                Part::Scales => {}
                _ if converted => self.report.quantized_tensors += 1,
                _ => self.report.other_tensors += 1,
            }
            let bytes = match p.part {
                Part::Copy => store.raw(&p.source)?.bytes.into_owned(),
                Part::Half => widen(dtype, &store.raw(&p.source)?.bytes)
                    .into_iter()
                    .flat_map(|v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                Part::Codes | Part::Scales => {
                    let q = match cache.take() {
                        Some((n, q)) if n == p.source => q,
                        _ => self.quantize_one(&p.source, &shape)?,
                    };
                    let bytes = match p.part {
                        Part::Codes => q.qs.clone(),
                        _ => q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                    };
                    cache = Some((p.source.clone(), q));
                    bytes
                }
            };
            if bytes.len() != p.bytes {
                return Err(Error::file(
                    store.file_of(&p.source),
                    format!(
                        "tensor {} has {} bytes, expected {}",
                        p.source,
                        bytes.len(),
                        p.bytes
                    ),
                ));
            }
            data.push(bytes);
        }
        let views = members
            .iter()
            .zip(&data)
            .map(|(&i, bytes)| {
                let p = &self.planned[i];
                TensorView::new(p.dtype, p.shape.clone(), bytes)
                    .map(|v| (p.name.clone(), v))
                    .map_err(|e| Error::file(name, format!("tensor {}: {e}", p.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(self.metadata.clone()))
            .map_err(|e| Error::file(name, format!("cannot write: {e}")))
    }

    /// One weight's codes: GPTQ where the calibration has its Hessian, else round to nearest
    /// (the rows a piece at a time, as quantizing while loading does).
    fn quantize_one(&self, source: &str, shape: &[usize]) -> Result<QuantMatrix> {
        let scheme = self.format.scheme().ok_or_else(|| {
            Error::invalid(format!("{} is not a block format", self.format.name()))
        })?;
        let cols = shape.get(1).copied().unwrap_or(0);
        let hessian = self
            .calibration
            .and_then(|c| c.hessians.get(source).filter(|h| h.dim == cols));
        match (scheme, hessian) {
            (Scheme::Q4, Some(h)) => {
                let data = self.store.f32(source, shape)?;
                Ok(gptq::quantize_q4(&data, shape[0], cols, h))
            }
            _ => self.store.quantize_plain(source, shape, scheme),
        }
    }
}

/// Write the planned tensors of `store` (the checkpoint in `model`) into `out`, q4 weights
/// quantized with GPTQ where `calibration` has their Hessian.
#[cfg(not(target_arch = "wasm32"))]
fn write_checkpoint(
    model: &Path,
    out: &Path,
    store: &WeightStore,
    format: Format,
    max_shard_bytes: u64,
    calibration: Option<&Calibration>,
) -> Result<QuantizeReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out.display(), e))?;
    let mut packing = Packing::new(store, format, max_shard_bytes, calibration)?;
    while let Some(shard) = packing.next_shard() {
        let (name, bytes) = shard?;
        let path = out.join(&name);
        std::fs::write(&path, bytes)
            .map_err(|e| Error::file(path.display(), format!("cannot write: {e}")))?;
    }
    let mut report = packing.report().clone();
    let index_path = out.join("model.safetensors.index.json");
    if let Some(text) = packing.index_json() {
        std::fs::write(&index_path, text).map_err(|e| Error::file(index_path.display(), e))?;
    } else if index_path.exists() {
        std::fs::remove_file(&index_path).map_err(|e| Error::file(index_path.display(), e))?;
    }
    // Everything else of the checkpoint (config, tokenizer, processor, templates).
    let entries = std::fs::read_dir(model).map_err(|e| Error::file(model.display(), e))?;
    let mut copied = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(model.display(), e))?;
        let fname = entry.file_name().to_string_lossy().to_string();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || fname.ends_with(".safetensors") || fname == "model.safetensors.index.json" {
            continue;
        }
        let dst = out.join(&fname);
        std::fs::copy(entry.path(), &dst).map_err(|e| Error::file(dst.display(), e))?;
        copied.push(fname);
    }
    copied.sort();
    report.copied_files = copied;
    Ok(report)
}
