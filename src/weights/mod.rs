//! Safetensors weights of a LLaVA checkpoint: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, in f32, f16 or bf16 (widened to f32 here; WGSL has no bf16).
//!
//! Parsing and validation of each file (header length, JSON, offsets, overlaps) is done by the
//! `safetensors` crate; this module adds the checks that need the model: every tensor the config
//! implies exists, with the shape the config implies. Every tensor-name style that transformers has
//! written is accepted (see [`NameStyle`]): `language_model.model.*` or `model.language_model.*`,
//! with the vision tower under `vision_tower.vision_model.*` (4.x) or `vision_tower.*` (5.x, no
//! `vision_model.` level), each with or without a leading `model.`.

mod file;
mod header;

use std::borrow::Cow;
use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::Arc;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::quant::{self, Format, QuantMatrix, Scheme, WeightData};

#[cfg(target_arch = "wasm32")]
pub use file::BlobFile;
pub use file::{FileBytes, WeightFile};
pub use header::{read_header, Header, TensorPlace};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Codes of a quantized weight (`NAME.q4`; see `quant`).
    U8,
    /// Codes of a quantized weight (`NAME.q8`; see `quant`).
    I8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 | DType::I8 => 1,
        }
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// A typed view of one tensor's raw bytes (borrowed from a mapped file, or read on demand).
pub struct RawTensor<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: Cow<'a, [u8]>,
}

/// All tensors of a checkpoint, indexed by name, without copying their data.
pub struct WeightStore {
    files: Vec<(String, FileBytes)>,
    entries: HashMap<String, Entry>,
    /// Safetensors `__metadata__` of the first file (quantized checkpoints name their scheme here).
    pub metadata: HashMap<String, String>,
    /// The scheme of a quantized checkpoint (`spec_llava.quant` in the metadata).
    format: Option<Format>,
    /// Quantize plain checkpoints' linear weights as they are loaded (`caption --quant`).
    quantize_on_load: Option<Format>,
}

impl WeightStore {
    /// Index the given safetensors files (name used in errors, bytes).
    pub fn from_files(files: Vec<(String, FileBytes)>) -> Result<Self> {
        let mut entries = HashMap::new();
        let mut metadata = HashMap::new();
        let mut format = None;
        for (index, (name, file)) in files.iter().enumerate() {
            let header = read_header(file.as_ref())
                .map_err(|e| Error::file(name, format!("not a valid safetensors file: {e}")))?;
            let file_format = quant::format_from_metadata(&header.metadata, name)?;
            if index == 0 {
                metadata = header.metadata.clone();
                format = file_format;
            } else if file_format != format {
                return Err(Error::file(
                    name,
                    format!(
                        "quantization scheme {:?} differs from the first shard's {:?}",
                        file_format.map(Format::name),
                        format.map(Format::name)
                    ),
                ));
            }
            for t in header.tensors {
                let dtype = match t.dtype.as_str() {
                    "F32" => DType::F32,
                    "F16" => DType::F16,
                    "BF16" => DType::BF16,
                    "U8" if format.is_some() => DType::U8,
                    "I8" if format.is_some() => DType::I8,
                    other => {
                        return Err(Error::file(
                            name,
                            format!(
                            "tensor {} has unsupported dtype {other} (expected F32, F16 or BF16)",
                            t.name
                        ),
                        ))
                    }
                };
                let entry = Entry {
                    file: index,
                    dtype,
                    shape: t.shape,
                    start: t.start,
                    end: t.end,
                };
                if entries.insert(t.name.clone(), entry).is_some() {
                    return Err(Error::file(
                        name,
                        format!("tensor {} appears in more than one shard", t.name),
                    ));
                }
            }
        }
        Ok(WeightStore {
            files,
            entries,
            metadata,
            format,
            quantize_on_load: None,
        })
    }

    /// Open a checkpoint directory: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`. Files are memory-mapped.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let names = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error::file(index_path.display(), e))?;
            shard_names(&text, &index_path.display().to_string())?
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut files = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let file = std::fs::File::open(&path)
                .map_err(|e| Error::file(path.display(), format!("cannot open weights: {e}")))?;
            // SAFETY: the map is read-only; a checkpoint changed on disk while we run is outside
            // what we promise (as for every mmap-based loader).
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| Error::file(path.display(), format!("cannot map: {e}")))?;
            files.push((path.display().to_string(), Arc::new(map) as FileBytes));
        }
        Self::from_files(files)
    }

    /// A hash of every tensor under `prefix` (names without the prefix, dtypes, shapes, bytes):
    /// equal fingerprints mean byte-identical weights, e.g. a draft sharing the target's tower.
    pub fn fingerprint(&self, prefix: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut names: Vec<&String> = self
            .entries
            .keys()
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for name in names {
            let e = &self.entries[name];
            name[prefix.len()..].hash(&mut h);
            (e.dtype, &e.shape).hash(&mut h);
            match self.files[e.file].1.read(e.start, e.end) {
                Ok(bytes) => bytes.hash(&mut h),
                // Unreadable now: never equal to a readable tower.
                Err(err) => err.hash(&mut h),
            }
        }
        h.finish()
    }

    /// Whether the weight `name` exists (plain, or quantized as `name.q4` / `name.q8`).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name) || self.quantized_name(name).is_some()
    }

    /// The scheme of a quantized checkpoint (`None`: a plain one).
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// Quantize (or halve) the big linear weights of a plain checkpoint as they are loaded
    /// ([`quant::quantizable`]); `None` loads them as stored. Ignored for quantized checkpoints.
    pub fn set_quantize_on_load(&mut self, format: Option<Format>) {
        self.quantize_on_load = format;
    }

    /// `(codes tensor name, scheme)` when `name` is stored quantized.
    fn quantized_name(&self, name: &str) -> Option<(String, Scheme)> {
        [Scheme::Q4, Scheme::Q8].into_iter().find_map(|s| {
            let n = format!("{name}{}", s.suffix());
            self.entries.contains_key(&n).then_some((n, s))
        })
    }

    /// A weight as the backend should receive it: quantized blocks or f16 bits when the checkpoint
    /// stores it so (or `set_quantize_on_load` asks for it), else f32; shape checked as in
    /// [`Self::f32`].
    pub fn weight_data(&self, name: &str, shape: &[usize]) -> Result<WeightData> {
        self.weight_data_keeping_f16(name, shape, false)
    }

    /// [`Self::weight_data`], and with `keep_f16` a big linear weight stored as f16 arrives as
    /// its f16 bits even when nothing asked for f16 (for an engine that reads them as fast).
    pub fn weight_data_keeping_f16(
        &self,
        name: &str,
        shape: &[usize],
        keep_f16: bool,
    ) -> Result<WeightData> {
        if let Some((codes_name, scheme)) = self.quantized_name(name) {
            return self
                .quantized(name, &codes_name, scheme, shape)
                .map(WeightData::Quant);
        }
        let want = match self.format {
            Some(f) => Some(f),
            None => self.quantize_on_load,
        };
        let cols: usize = shape.iter().skip(1).product();
        if keep_f16 && want.is_none() && quant::quantizable(name, shape) {
            let raw = self.raw(name)?;
            if raw.dtype == DType::F16 && raw.shape == shape {
                return Ok(WeightData::F16(f16_bits(&raw.bytes)));
            }
        }
        match want {
            Some(format) if quant::quantizable(name, shape) => {
                let raw = self.raw(name)?;
                if format == Format::F16 && raw.dtype == DType::F16 && raw.shape == shape {
                    return Ok(WeightData::F16(f16_bits(&raw.bytes)));
                }
                if self.format.is_some() && format != Format::F16 {
                    // A q4/q8 checkpoint stores every quantizable weight quantized.
                    return Err(Error::file(
                        self.file_of(name),
                        format!(
                            "tensor {name} is not quantized in a {} checkpoint (expected {name}.{} and {name}.scales)",
                            format.name(),
                            format.name()
                        ),
                    ));
                }
                match format.scheme() {
                    Some(scheme) => self
                        .quantize_plain(name, shape, scheme)
                        .map(WeightData::Quant),
                    None => {
                        let data = self.f32(name, shape)?;
                        Ok(WeightData::convert(data, shape[0], cols, format))
                    }
                }
            }
            _ => self.f32(name, shape).map(WeightData::F32),
        }
    }

    /// A plain matrix quantized to `scheme` by rounding to nearest, a piece of rows at a time (a
    /// block never spans rows), so a big matrix is never widened whole: the same blocks as
    /// quantizing its f32 copy at once.
    pub fn quantize_plain(
        &self,
        name: &str,
        shape: &[usize],
        scheme: Scheme,
    ) -> Result<QuantMatrix> {
        // About 16 MiB of f32 per piece.
        let piece_rows = (4usize << 20) / shape.get(1).copied().unwrap_or(1).max(1);
        self.quantize_plain_in_pieces(name, shape, scheme, piece_rows)
    }

    /// [`Self::quantize_plain`] with `piece_rows` rows a piece.
    pub fn quantize_plain_in_pieces(
        &self,
        name: &str,
        shape: &[usize],
        scheme: Scheme,
        piece_rows: usize,
    ) -> Result<QuantMatrix> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::file(self.file_of(name), format!("missing tensor {name}")))?;
        if e.shape != shape || shape.len() != 2 {
            return Err(Error::file(
                self.file_of(name),
                format!(
                    "tensor {name} has shape {:?}, but config.json implies {shape:?}",
                    e.shape
                ),
            ));
        }
        let (rows, cols) = (shape[0], shape[1]);
        let (file, bytes) = &self.files[e.file];
        let row_bytes = (cols * e.dtype.size()) as u64;
        let piece_rows = piece_rows.clamp(1, rows.max(1));
        let mut out = QuantMatrix {
            scheme,
            rows,
            cols,
            qs: Vec::new(),
            scales: Vec::new(),
        };
        let mut r = 0;
        while r < rows {
            let n = piece_rows.min(rows - r);
            let start = e.start + r as u64 * row_bytes;
            let raw = bytes
                .read(start, start + n as u64 * row_bytes)
                .map_err(|err| Error::file(file, format!("tensor {name}: {err}")))?;
            let q = QuantMatrix::quantize(scheme, &widen(e.dtype, &raw), n, cols);
            out.qs.extend_from_slice(&q.qs);
            out.scales.extend_from_slice(&q.scales);
            r += n;
        }
        Ok(out)
    }

    /// Read and check `name` stored as `codes_name` + `name.scales`.
    fn quantized(
        &self,
        name: &str,
        codes_name: &str,
        scheme: Scheme,
        shape: &[usize],
    ) -> Result<QuantMatrix> {
        let file = self.file_of(codes_name);
        let bad = |msg: String| Error::file(file, format!("tensor {codes_name}: {msg}"));
        if self.format.and_then(Format::scheme) != Some(scheme) {
            return Err(bad(format!(
                "a {} tensor in a checkpoint whose metadata says {}",
                scheme.suffix().trim_start_matches('.'),
                self.format
                    .map_or("nothing (no spec_llava.quant)", Format::name)
            )));
        }
        if shape.len() != 2 {
            return Err(bad(format!(
                "quantized, but the weight has shape {shape:?} (only matrices are)"
            )));
        }
        let (rows, cols) = (shape[0], shape[1]);
        let nb = quant::blocks_per_row(cols);
        let codes = self.raw(codes_name)?;
        let want_dtype = match scheme {
            Scheme::Q8 => DType::I8,
            Scheme::Q4 => DType::U8,
        };
        let want_shape = [rows, nb * scheme.block_bytes()];
        if codes.dtype != want_dtype || codes.shape != want_shape {
            return Err(bad(format!(
                "{:?} {:?}, but a {}x{} weight needs {want_dtype:?} {want_shape:?}",
                codes.dtype, codes.shape, rows, cols
            )));
        }
        let scales_name = format!("{name}{}", quant::SCALES_SUFFIX);
        let scales = self.raw(&scales_name)?;
        if scales.dtype != DType::F16 || scales.shape != [rows, nb] {
            return Err(Error::file(
                self.file_of(&scales_name),
                format!(
                    "tensor {scales_name}: {:?} {:?}, but a {rows}x{cols} weight needs F16 [{rows}, {nb}]",
                    scales.dtype, scales.shape
                ),
            ));
        }
        let q = QuantMatrix {
            scheme,
            rows,
            cols,
            qs: codes.bytes.into_owned(),
            scales: scales
                .bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        };
        q.check().map_err(bad)?;
        Ok(q)
    }

    /// Bytes the weights take once loaded, by the rules of [`Self::weight_data`]: quantized
    /// matrices as their blocks and scales, f16 matrices of an f16 checkpoint as f16, the rest
    /// (vectors, embedding tables, plain weights) widened to f32. An upper bound: a tensor the
    /// model never reads (e.g. a vision layer past the one LLaVA takes features from) counts too.
    /// Known from the safetensors headers alone, so a model can be refused before its weights are
    /// downloaded.
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded_bytes_as(self.quantize_on_load)
    }

    /// [`Self::loaded_bytes`] if the plain weights were quantized on load to `quantize_on_load`.
    pub fn loaded_bytes_as(&self, quantize_on_load: Option<Format>) -> u64 {
        self.loaded_bytes_of(quantize_on_load, &|_| true)
    }

    /// [`Self::loaded_bytes`] of the tensors whose names pass `keep` (e.g. what one decoding
    /// pass reads).
    pub fn loaded_bytes_where(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.loaded_bytes_of(self.quantize_on_load, &keep)
    }

    fn loaded_bytes_of(
        &self,
        quantize_on_load: Option<Format>,
        keep: &dyn Fn(&str) -> bool,
    ) -> u64 {
        let want = self.format.or(quantize_on_load);
        self.entries
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, e)| {
                let elems: u64 = e.shape.iter().map(|&d| d as u64).product();
                if matches!(e.dtype, DType::U8 | DType::I8) || name.ends_with(quant::SCALES_SUFFIX)
                {
                    // Codes and scales of a stored quantized weight: loaded as they are.
                    return e.end - e.start;
                }
                if !quant::quantizable(name, &e.shape) {
                    return 4 * elems;
                }
                match want.map(Format::scheme) {
                    None => 4 * elems,
                    Some(None) => 2 * elems,
                    Some(Some(s)) => {
                        let blocks = e.shape[0] as u64 * quant::blocks_per_row(e.shape[1]) as u64;
                        blocks * (s.block_bytes() as u64 + 2)
                    }
                }
            })
            .sum()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.entries.keys().map(|s| s.as_str())
    }

    /// The file a tensor comes from, or the first file (for messages about missing tensors).
    pub fn file_of(&self, name: &str) -> &str {
        let index = self.entries.get(name).map(|e| e.file).unwrap_or(0);
        self.files
            .get(index)
            .map(|f| f.0.as_str())
            .unwrap_or("weights")
    }

    /// A tensor's dtype, shape and byte length, from the header (nothing is read).
    pub fn info(&self, name: &str) -> Option<(DType, &[usize], u64)> {
        self.entries
            .get(name)
            .map(|e| (e.dtype, e.shape.as_slice(), e.end - e.start))
    }

    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::file(self.file_of(name), format!("missing tensor {name}")))?;
        let (file, bytes) = &self.files[e.file];
        let bytes = bytes
            .read(e.start, e.end)
            .map_err(|err| Error::file(file, format!("tensor {name}: {err}")))?;
        Ok(RawTensor {
            dtype: e.dtype,
            shape: &e.shape,
            bytes,
        })
    }

    /// A tensor widened to f32 (dequantized if stored quantized), after checking it has exactly
    /// the expected shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some((codes_name, scheme)) = self.quantized_name(name) {
            return Ok(self
                .quantized(name, &codes_name, scheme, shape)?
                .dequantize());
        }
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::file(self.file_of(name), format!("missing tensor {name}")))?;
        if e.shape != shape {
            return Err(Error::file(
                self.file_of(name),
                format!(
                    "tensor {name} has shape {:?}, but config.json implies {shape:?}",
                    e.shape
                ),
            ));
        }
        // Widened a piece at a time: the raw bytes of a big tensor (read on demand in the browser)
        // are never held whole beside their f32 copy.
        const PIECE: u64 = 16 << 20;
        let (file, bytes) = &self.files[e.file];
        let element = e.dtype.size() as u64;
        let mut out = Vec::with_capacity(((e.end - e.start) / element) as usize);
        let mut at = e.start;
        while at < e.end {
            let end = (at + PIECE - PIECE % element).min(e.end);
            let piece = bytes
                .read(at, end)
                .map_err(|err| Error::file(file, format!("tensor {name}: {err}")))?;
            out.extend(widen(e.dtype, &piece));
            at = end;
        }
        Ok(out)
    }
}

/// Decode little-endian f32/f16/bf16 bytes to f32 (byte slices need not be aligned).
pub fn widen(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        DType::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
    }
}

/// Shard file names from `model.safetensors.index.json`, in first-seen order, checked to be plain
/// file names (an index must not point outside the checkpoint directory).
pub fn shard_names(index_json: &str, file: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(index_json)
        .map_err(|e| Error::file(file, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(file, "missing \"weight_map\" object"))?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::file(
                file,
                format!("weight_map entry for {tensor} is not a file name"),
            )
        })?;
        if shard.is_empty() || shard.contains(['/', '\\']) || shard.starts_with('.') {
            return Err(Error::file(
                file,
                format!("weight_map names an invalid shard file \"{shard}\""),
            ));
        }
        if !names.iter().any(|n| n == shard) {
            names.push(shard.to_string());
        }
    }
    if names.is_empty() {
        return Err(Error::file(file, "weight_map is empty"));
    }
    Ok(names)
}

/// The prefixes under which one checkpoint stores each part of the model.
///
/// `vision` is the prefix of the vision tower's `embeddings.` / `encoder.` tensors (CLIP and
/// SigLIP alike). transformers 4.x nests them one level deeper than 5.x, whose `CLIPVisionModel` /
/// `SiglipVisionModel` have no `vision_model` submodule: 4.x writes
/// `vision_tower.vision_model.embeddings.*`, 5.24 writes `vision_tower.embeddings.*` (next to
/// `language_model.model.*`; in memory 5.x names them `model.vision_tower.embeddings.*`). The level
/// is found from the names present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameStyle {
    pub vision: String,
    pub projector: String,
    pub text: String,
    pub lm_head: String,
}

impl NameStyle {
    /// Detect the naming style from the tensor names present.
    pub fn detect(store: &WeightStore) -> NameStyle {
        Self::from_names(store.names())
    }

    /// [`Self::detect`] over a list of tensor names.
    pub fn from_names<'a>(names: impl Iterator<Item = &'a str> + Clone) -> NameStyle {
        let has = |prefix: &str| names.clone().any(|n| n.starts_with(prefix));
        let (tower, projector, text, lm_head) = if has("model.language_model.") {
            (
                "model.vision_tower.",
                "model.multi_modal_projector.",
                "model.language_model.",
                "lm_head.weight",
            )
        } else if has("language_model.model.") {
            (
                "vision_tower.",
                "multi_modal_projector.",
                "language_model.model.",
                "language_model.lm_head.weight",
            )
        } else {
            // A bare LlavaModel (no LM head wrapper): `language_model.layers.*`.
            (
                "vision_tower.",
                "multi_modal_projector.",
                "language_model.",
                "lm_head.weight",
            )
        };
        // CLIP and SigLIP both keep `embeddings.` right under the vision model.
        let nested = format!("{tower}vision_model.");
        let vision = if has(&format!("{nested}embeddings.")) {
            nested
        } else {
            tower.to_string()
        };
        NameStyle {
            vision,
            projector: projector.into(),
            text: text.into(),
            lm_head: lm_head.into(),
        }
    }
}

/// Little-endian f16 bytes as f16 bits.
fn f16_bits(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_index_rejects_paths_outside_the_checkpoint() {
        let bad = r#"{"weight_map": {"a": "../../etc/passwd"}}"#;
        let err = shard_names(bad, "idx.json").unwrap_err().to_string();
        assert!(
            err.starts_with("idx.json: weight_map names an invalid shard"),
            "{err}"
        );
        let ok = r#"{"metadata": {}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#;
        assert_eq!(
            shard_names(ok, "idx.json").unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
    }

    fn style(names: &[&str]) -> NameStyle {
        NameStyle::from_names(names.iter().copied())
    }

    #[test]
    fn vision_prefix_with_and_without_the_vision_model_level() {
        // transformers 4.x (llava-hf checkpoints): CLIP, legacy names.
        let s = style(&[
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "multi_modal_projector.linear_1.weight",
            "vision_tower.vision_model.embeddings.class_embedding",
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "vision_tower.vision_model.pre_layrnorm.weight",
            "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        ]);
        assert_eq!(s.vision, "vision_tower.vision_model.");
        assert_eq!(s.projector, "multi_modal_projector.");
        assert_eq!(s.text, "language_model.model.");
        assert_eq!(s.lm_head, "language_model.lm_head.weight");
        // New prefixes, still nested (4.52+ in memory, rewritten checkpoints): SigLIP.
        let s = style(&[
            "model.language_model.embed_tokens.weight",
            "model.multi_modal_projector.linear_1.weight",
            "model.vision_tower.vision_model.embeddings.patch_embedding.bias",
            "model.vision_tower.vision_model.embeddings.patch_embedding.weight",
            "model.vision_tower.vision_model.post_layernorm.weight",
        ]);
        assert_eq!(s.vision, "model.vision_tower.vision_model.");
        assert_eq!(s.text, "model.language_model.");
        assert_eq!(s.lm_head, "lm_head.weight");
        // transformers 5.24 `save_pretrained`: 4.x prefixes, no `vision_model.` level.
        let s = style(&[
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "multi_modal_projector.linear_1.weight",
            "vision_tower.embeddings.class_embedding",
            "vision_tower.embeddings.patch_embedding.weight",
            "vision_tower.pre_layrnorm.weight",
            "vision_tower.encoder.layers.0.self_attn.q_proj.weight",
            "vision_tower.post_layernorm.weight",
        ]);
        assert_eq!(s.vision, "vision_tower.");
        assert_eq!(s.text, "language_model.model.");
        assert_eq!(s.lm_head, "language_model.lm_head.weight");
        // transformers 5.x in-memory names (a state dict saved as is): CLIP and SigLIP.
        for tower in [
            &[
                "model.vision_tower.embeddings.class_embedding",
                "model.vision_tower.embeddings.patch_embedding.weight",
                "model.vision_tower.pre_layrnorm.weight",
            ][..],
            &[
                "model.vision_tower.embeddings.patch_embedding.weight",
                "model.vision_tower.embeddings.patch_embedding.bias",
                "model.vision_tower.post_layernorm.weight",
            ][..],
        ] {
            let mut names = vec![
                "model.language_model.layers.0.input_layernorm.weight",
                "lm_head.weight",
                "model.multi_modal_projector.linear_2.weight",
            ];
            names.extend_from_slice(tower);
            let s = style(&names);
            assert_eq!(s.vision, "model.vision_tower.");
            assert_eq!(s.projector, "model.multi_modal_projector.");
            assert_eq!(s.text, "model.language_model.");
        }
        // A bare LlavaModel either way.
        let s = style(&[
            "language_model.layers.0.mlp.up_proj.weight",
            "vision_tower.embeddings.patch_embedding.weight",
        ]);
        assert_eq!(s.vision, "vision_tower.");
        assert_eq!(s.text, "language_model.");
    }

    #[test]
    fn widening_matches_half() {
        let vals = [1.5f32, -2.25, 65504.0];
        let f16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(widen(DType::F16, &f16_bytes), vals);
        let bf_bytes: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(widen(DType::BF16, &bf_bytes), vec![1.5, -2.25]);
    }
}
