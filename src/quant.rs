//! Quantized and half-precision weights: the q8 / q4 block formats and the [`WeightData`] a
//! backend receives for each weight. (`spec-llava quantize`, which writes a quantized copy of a
//! checkpoint, is [`crate::quantize`], higher up: it runs the pipeline to calibrate.)
//!
//! # Block formats
//!
//! Both schemes quantize each matrix row `[out, in]` in groups of [`GROUP`] = 32 consecutive input
//! columns (the reduction axis of `x W^T`), one f16 scale per group, symmetric (no zero point).
//! They are GGML's `Q8_0` and `Q4_0`, block for block:
//!
//! - **q8** ([`BlockQ8`], 34 bytes = 8.5 bits/weight): `d = amax / 127`, `q = round(x / d)` as
//!   int8; `x ≈ d * q`.
//! - **q4** ([`BlockQ4`], 18 bytes = 4.5 bits/weight): `d = m / -8` where `m` is the value of
//!   largest magnitude (sign kept, so it maps exactly to code 0 = -8), `q = clamp(round(x / d) + 8,
//!   0, 15)`; `x ≈ d * (q - 8)`. Byte `i` of the block holds element `i` in its low nibble and
//!   element `i + 16` in its high nibble.
//!
//! A row whose width is not a multiple of 32 ends in a partial group, zero-padded (the padding
//! quantizes to exact zeros); `blocks per row = ceil(in / 32)`.
//!
//! # Storage (safetensors and GPU buffers)
//!
//! A [`QuantMatrix`] keeps its blocks *planar*: all quant bytes row-major (`rows * nb * 32` int8 or
//! `rows * nb * 16` packed nibbles), then all scales (`rows * nb` f16). Quant bytes stay 4-byte
//! aligned that way, so the WGSL kernels read them as `u32` words; checkpoint tensors and GPU
//! buffers hold exactly these two arrays. In a checkpoint written by `spec-llava quantize`, a
//! weight `NAME` (2-D, `[out, in]`) is stored as
//!
//! - `NAME.q8`: I8 `[out, nb * 32]` or `NAME.q4`: U8 `[out, nb * 16]`, and
//! - `NAME.scales`: F16 `[out, nb]`,
//!
//! and the file's `__metadata__` says `{"spec_llava.quant": "q4" | "q8" | "f16", "group_size":
//! "32"}`. Only the large linear weights are quantized ([`quantizable`]: 2-D `*.weight` tensors
//! that are not embedding tables: attention q/k/v/o, MLPs, the projector and an untied `lm_head`);
//! norms, biases, embeddings (token, position, patch, class) keep their checkpoint dtype. The f16
//! format stores every floating-point tensor as plain F16 (loadable by any safetensors reader) and
//! the engine keeps the linear weights as f16 on the GPU.
//!
//! # Choosing the q4 codes
//!
//! Round-to-nearest ([`QuantMatrix::quantize`], also what `--quant q4` does on load) minimises each
//! group's own squared error. `spec-llava quantize --format q4` by default instead runs GPTQ
//! (`quantize::gptq`, Frantar et al. 2022): it records the inputs of every linear while the f32 model
//! captions generated calibration scenes (`quantize::calibrate`) and picks codes that minimise the error
//! of the layer's *outputs* on them, writing the same blocks. The metadata then also says
//! `"spec_llava.calibration": "gptq, N scenes"`.

use half::f16;

use crate::error::{Error, Result};

pub mod int8;

/// Input columns per quantization group.
pub const GROUP: usize = 32;

/// Safetensors metadata key naming the scheme.
pub const META_QUANT: &str = "spec_llava.quant";
/// Safetensors metadata key giving the group size.
pub const META_GROUP: &str = "group_size";

/// A weight storage format of a quantized checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q8,
    Q4,
    F16,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Q8 => "q8",
            Format::Q4 => "q4",
            Format::F16 => "f16",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "q8" => Some(Format::Q8),
            "q4" => Some(Format::Q4),
            "f16" => Some(Format::F16),
            _ => None,
        }
    }

    /// The quant scheme, for q8 / q4.
    pub fn scheme(self) -> Option<Scheme> {
        match self {
            Format::Q8 => Some(Scheme::Q8),
            Format::Q4 => Some(Scheme::Q4),
            Format::F16 => None,
        }
    }
}

/// A block quantization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Q8,
    Q4,
}

impl Scheme {
    /// Quant bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Scheme::Q8 => 32,
            Scheme::Q4 => 16,
        }
    }
    /// Suffix of the quant tensor in a checkpoint (`NAME.q8`, `NAME.q4`).
    pub fn suffix(self) -> &'static str {
        match self {
            Scheme::Q8 => ".q8",
            Scheme::Q4 => ".q4",
        }
    }
}

/// Suffix of the scale tensor of a quantized weight.
pub const SCALES_SUFFIX: &str = ".scales";

/// GGML `Q8_0`: one f16 scale and 32 int8 codes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8 {
    /// f16 bits of the scale `d`.
    pub d: u16,
    pub qs: [i8; GROUP],
}

/// GGML `Q4_0`: one f16 scale and 32 4-bit codes (byte i: element i low, element i + 16 high).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4 {
    /// f16 bits of the scale `d`.
    pub d: u16,
    pub qs: [u8; GROUP / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ8>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ4>() == 18);
// 4.5 bits per weight for q4 (32 * 4 + 16 bits over 32 weights), 8.5 for q8.
const _: () = assert!(std::mem::size_of::<BlockQ4>() * 8 * 2 == 9 * GROUP);

/// One group of 32 values, zero-padded past the end of `x`.
fn group(x: &[f32]) -> [f32; GROUP] {
    let mut g = [0f32; GROUP];
    g[..x.len()].copy_from_slice(x);
    g
}

impl BlockQ8 {
    /// Quantize up to 32 values (fewer: zero-padded).
    pub fn quantize(x: &[f32]) -> BlockQ8 {
        let g = group(x);
        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
        let mut qs = [0i8; GROUP];
        for (q, v) in qs.iter_mut().zip(g) {
            *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        BlockQ8 { d: d.to_bits(), qs }
    }

    pub fn dequantize(&self) -> [f32; GROUP] {
        let d = f16::from_bits(self.d).to_f32();
        self.qs.map(|q| d * f32::from(q))
    }
}

impl BlockQ4 {
    /// Quantize up to 32 values (fewer: zero-padded), choosing the scale that minimises the
    /// squared error (see [`q4_scale`]).
    pub fn quantize(x: &[f32]) -> BlockQ4 {
        let g = group(x);
        let d = f16::from_f32(q4_scale(&g));
        let df = d.to_f32();
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        let code = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        let mut qs = [0u8; GROUP / 2];
        for (i, q) in qs.iter_mut().enumerate() {
            *q = code(g[i]) | (code(g[i + GROUP / 2]) << 4);
        }
        BlockQ4 { d: d.to_bits(), qs }
    }

    /// GGML's plain `Q4_0` encoder: `d = m / -8` for the value `m` of largest magnitude.
    pub fn quantize_max(x: &[f32]) -> BlockQ4 {
        let g = group(x);
        let m = g
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = f16::from_f32(m / -8.0);
        let df = d.to_f32();
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        let code = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        let mut qs = [0u8; GROUP / 2];
        for (i, q) in qs.iter_mut().enumerate() {
            *q = code(g[i]) | (code(g[i + GROUP / 2]) << 4);
        }
        BlockQ4 { d: d.to_bits(), qs }
    }

    /// The 32 codes as signed values (`code - 8`, in -8..=7): the value is `d * code`.
    pub fn codes(&self) -> [i8; GROUP] {
        let mut out = [0i8; GROUP];
        for (i, q) in self.qs.iter().enumerate() {
            out[i] = (q & 15) as i8 - 8;
            out[i + GROUP / 2] = (q >> 4) as i8 - 8;
        }
        out
    }

    pub fn dequantize(&self) -> [f32; GROUP] {
        let d = f16::from_bits(self.d).to_f32();
        self.codes().map(|q| d * f32::from(q))
    }
}

/// The q4 scale of one group: the plain `Q4_0` choice `m / -8` and 40 nearby candidates (the
/// codes `round(x / d)` clamped to -8..=7 for `d = m / t`, `t` from -10 to 10 in both signs), each
/// refitted by least squares to its codes; the one with the smallest squared error wins (as in
/// GGML's `make_qx_quants`). Decoding is unchanged: `x = d * (q - 8)`.
pub fn q4_scale(g: &[f32; GROUP]) -> f32 {
    let m = g
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if m == 0.0 {
        return 0.0;
    }
    let error = |d: f32| -> f32 {
        let inv = 1.0 / d;
        g.iter()
            .map(|&v| {
                let q = (v * inv).round().clamp(-8.0, 7.0);
                (v - d * q) * (v - d * q)
            })
            .sum()
    };
    let d0 = f16::from_f32(m / -8.0).to_f32();
    if d0 == 0.0 {
        return 0.0;
    }
    let mut best = (error(d0), d0);
    for step in 0..=40 {
        let t = -10.0 + step as f32 * 0.5;
        if t.abs() < 4.0 {
            continue;
        }
        let inv = t / m;
        let (mut xl, mut ll) = (0f32, 0f32);
        for &v in g {
            let q = (v * inv).round().clamp(-8.0, 7.0);
            xl += v * q;
            ll += q * q;
        }
        if ll == 0.0 {
            continue;
        }
        let d = xl / ll;
        let d16 = f16::from_f32(d).to_f32();
        if d16 == 0.0 || !d16.is_finite() {
            continue;
        }
        let e = error(d16);
        if e < best.0 {
            best = (e, d16);
        }
    }
    best.1
}

/// A quantized matrix `[rows, cols]`, blocks stored planar (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantMatrix {
    pub scheme: Scheme,
    pub rows: usize,
    pub cols: usize,
    /// `rows * blocks_per_row * scheme.block_bytes()` bytes (int8 codes, or packed nibbles).
    pub qs: Vec<u8>,
    /// `rows * blocks_per_row` f16 bits.
    pub scales: Vec<u16>,
}

/// Groups per row of `cols` columns.
pub fn blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(GROUP)
}

impl QuantMatrix {
    /// Quantize a row-major f32 matrix.
    pub fn quantize(scheme: Scheme, data: &[f32], rows: usize, cols: usize) -> QuantMatrix {
        assert_eq!(
            data.len(),
            rows * cols,
            "quantize: data is not [rows, cols]"
        );
        let nb = blocks_per_row(cols);
        let mut qs = Vec::with_capacity(rows * nb * scheme.block_bytes());
        let mut scales = Vec::with_capacity(rows * nb);
        for row in data.chunks(cols.max(1)).take(rows) {
            for g in row.chunks(GROUP) {
                match scheme {
                    Scheme::Q8 => {
                        let b = BlockQ8::quantize(g);
                        scales.push(b.d);
                        qs.extend_from_slice(bytemuck::cast_slice(&b.qs));
                    }
                    Scheme::Q4 => {
                        let b = BlockQ4::quantize(g);
                        scales.push(b.d);
                        qs.extend_from_slice(&b.qs);
                    }
                }
            }
        }
        QuantMatrix {
            scheme,
            rows,
            cols,
            qs,
            scales,
        }
    }

    pub fn blocks_per_row(&self) -> usize {
        blocks_per_row(self.cols)
    }

    /// Check the array sizes against the shape (after reading from a file).
    pub fn check(&self) -> std::result::Result<(), String> {
        let nb = self.blocks_per_row();
        let (want_q, want_s) = (self.rows * nb * self.scheme.block_bytes(), self.rows * nb);
        if self.qs.len() != want_q || self.scales.len() != want_s {
            return Err(format!(
                "{} bytes of codes and {} scales for a [{}, {}] matrix (expected {want_q} and {want_s})",
                self.qs.len(),
                self.scales.len(),
                self.rows,
                self.cols
            ));
        }
        Ok(())
    }

    /// Block `b` of row `r` as signed codes and its scale: the values are `scale * code`.
    fn block_codes(&self, r: usize, b: usize) -> ([i8; GROUP], f32) {
        let i = r * self.blocks_per_row() + b;
        let bytes = self.scheme.block_bytes();
        let q = &self.qs[i * bytes..(i + 1) * bytes];
        let codes = match self.scheme {
            Scheme::Q8 => bytemuck::cast_slice::<u8, i8>(q)
                .try_into()
                .unwrap_or([0; GROUP]),
            Scheme::Q4 => BlockQ4 {
                d: self.scales[i],
                qs: q.try_into().unwrap_or([0; GROUP / 2]),
            }
            .codes(),
        };
        (codes, f16::from_bits(self.scales[i]).to_f32())
    }

    /// Block `b` of row `r`.
    fn block(&self, r: usize, b: usize) -> [f32; GROUP] {
        let (codes, d) = self.block_codes(r, b);
        codes.map(|q| d * f32::from(q))
    }

    /// Widen to a row-major f32 matrix.
    pub fn dequantize(&self) -> Vec<f32> {
        let nb = self.blocks_per_row();
        let mut out = Vec::with_capacity(self.rows * nb * GROUP);
        for r in 0..self.rows {
            let start = out.len();
            for b in 0..nb {
                out.extend_from_slice(&self.block(r, b));
            }
            out.truncate(start + self.cols);
        }
        out
    }
}

/// A weight as a backend receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    F32(Vec<f32>),
    /// Row-major f16 bits.
    F16(Vec<u16>),
    Quant(QuantMatrix),
}

impl WeightData {
    /// Widen to f32 (what the CPU reference computes with).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            WeightData::F32(v) => v,
            WeightData::F16(v) => v.into_iter().map(|h| f16::from_bits(h).to_f32()).collect(),
            WeightData::Quant(q) => q.dequantize(),
        }
    }

    /// Matrices `[rows_i, cols]` (same `cols`) stacked by rows into one `[sum rows_i, cols]`,
    /// each kept in its format: rows are independent in every format (f32, f16 bits, q8/q4 blocks
    /// of one row), so the stacked rows are bit for bit the parts' rows. `None` when the parts'
    /// formats differ (or there are none); f32 and f16 parts give no `cols` to check, their
    /// lengths are the caller's to have checked.
    pub fn stack_rows(parts: Vec<WeightData>) -> Option<WeightData> {
        let mut parts = parts.into_iter();
        let mut acc = parts.next()?;
        for part in parts {
            match (&mut acc, part) {
                (WeightData::F32(a), WeightData::F32(b)) => a.extend_from_slice(&b),
                (WeightData::F16(a), WeightData::F16(b)) => a.extend_from_slice(&b),
                (WeightData::Quant(a), WeightData::Quant(b))
                    if a.scheme == b.scheme && a.cols == b.cols =>
                {
                    a.rows += b.rows;
                    a.qs.extend_from_slice(&b.qs);
                    a.scales.extend_from_slice(&b.scales);
                }
                _ => return None,
            }
        }
        Some(acc)
    }

    /// Store a f32 matrix `[rows, cols]` in `format`.
    pub fn convert(data: Vec<f32>, rows: usize, cols: usize, format: Format) -> WeightData {
        match format.scheme() {
            Some(s) => WeightData::Quant(QuantMatrix::quantize(s, &data, rows, cols)),
            None => WeightData::F16(
                data.into_iter()
                    .map(|v| f16::from_f32(v).to_bits())
                    .collect(),
            ),
        }
    }
}

/// Whether a checkpoint tensor is one of the big linear weights that get quantized: a 2-D
/// `*.weight` that is not an embedding table (token, position or patch embeddings).
pub fn quantizable(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && shape.iter().all(|&d| d > 0)
        && name.ends_with(".weight")
        && !name.contains("embed")
        && !name.contains("norm")
}

/// The scheme a checkpoint's safetensors metadata names, checked (`None`: a plain checkpoint).
pub fn format_from_metadata(
    meta: &std::collections::HashMap<String, String>,
    file: &str,
) -> Result<Option<Format>> {
    let Some(name) = meta.get(META_QUANT) else {
        return Ok(None);
    };
    let format = Format::parse(name).ok_or_else(|| {
        Error::file(
            file,
            format!(
                "unknown quantization scheme \"{name}\" in {META_QUANT} (expected q4, q8 or f16)"
            ),
        )
    })?;
    if let Some(g) = meta.get(META_GROUP) {
        if format != Format::F16 && g.parse::<usize>().ok() != Some(GROUP) {
            return Err(Error::file(
                file,
                format!("unsupported {META_GROUP} \"{g}\" (only {GROUP} is supported)"),
            ));
        }
    }
    Ok(Some(format))
}

/// Safetensors metadata key recording how q4 codes were chosen (absent: round-to-nearest).
pub const META_CALIBRATION: &str = "spec_llava.calibration";

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    #[test]
    fn stacked_rows_are_the_parts_rows_in_every_format() {
        let (a, b) = (random(3 * 40, 7, 1.0), random(5 * 40, 8, 1.0));
        let whole: Vec<f32> = a.iter().chain(&b).copied().collect();
        for format in [Some(Format::Q4), Some(Format::Q8), Some(Format::F16), None] {
            let as_data = |x: &[f32], rows| match format {
                Some(f) => WeightData::convert(x.to_vec(), rows, 40, f),
                None => WeightData::F32(x.to_vec()),
            };
            let stacked = WeightData::stack_rows(vec![as_data(&a, 3), as_data(&b, 5)]).unwrap();
            if let WeightData::Quant(q) = &stacked {
                assert_eq!((q.rows, q.cols), (8, 40));
                assert!(q.check().is_ok());
            }
            let parts: Vec<f32> = [as_data(&a, 3), as_data(&b, 5)]
                .into_iter()
                .flat_map(WeightData::into_f32)
                .collect();
            assert_eq!(stacked.clone().into_f32(), parts, "{format:?}");
            if format.is_none() {
                assert_eq!(stacked.into_f32(), whole);
            }
        }
        // Different formats, or different q4/q8 widths, do not stack.
        let q4 = WeightData::convert(a.clone(), 3, 40, Format::Q4);
        assert!(WeightData::stack_rows(vec![q4.clone(), WeightData::F32(b.clone())]).is_none());
        let narrow = WeightData::convert(random(3 * 64, 9, 1.0), 3, 64, Format::Q4);
        assert!(WeightData::stack_rows(vec![q4, narrow]).is_none());
        assert!(WeightData::stack_rows(Vec::new()).is_none());
    }

    #[test]
    fn q8_round_trip_is_within_half_a_step() {
        for (seed, scale) in [(1, 1.0), (2, 1e-3), (3, 50.0)] {
            let x = random(32, seed, scale);
            let b = BlockQ8::quantize(&x);
            let d = f16::from_bits(b.d).to_f32();
            let y = b.dequantize();
            for (a, b) in x.iter().zip(y) {
                // Half a quantization step, plus the f16 rounding of d (relative 2^-11) times 127.
                assert!(
                    (a - b).abs() <= d * 0.5 + d * 127.0 / 2048.0,
                    "{a} vs {b} (d {d})"
                );
            }
        }
    }

    #[test]
    fn plain_q4_round_trip_is_within_one_step_and_exact_at_the_extreme() {
        for (seed, scale) in [(4, 1.0), (5, 1e-3), (6, 50.0)] {
            let x = random(32, seed, scale);
            let b = BlockQ4::quantize_max(&x);
            let d = f16::from_bits(b.d).to_f32().abs();
            let y = b.dequantize();
            for (a, b) in x.iter().zip(y) {
                // Half a step inside the code range; up to one step where +8 clips to +7.
                assert!(
                    (a - b).abs() <= d * (1.0 + 8.0 / 2048.0),
                    "{a} vs {b} (d {d})"
                );
            }
            let (i, m) = x.iter().enumerate().fold((0, 0f32), |(bi, m), (i, &v)| {
                if v.abs() > m.abs() {
                    (i, v)
                } else {
                    (bi, m)
                }
            });
            assert!((y[i] - m).abs() <= m.abs() / 1024.0, "{} vs {m}", y[i]);
        }
    }

    #[test]
    fn fitted_q4_scale_never_loses_to_the_plain_one() {
        let sq = |x: &[f32], y: &[f32; 32]| -> f32 {
            x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
        };
        let (mut fitted, mut plain) = (0f32, 0f32);
        for seed in 0..200 {
            let x = random(32, 100 + seed, 1.0);
            let b = BlockQ4::quantize(&x);
            let d = f16::from_bits(b.d).to_f32().abs();
            let y = b.dequantize();
            // Clipping is allowed where it pays: still within 2.5 steps of the value.
            for (a, b) in x.iter().zip(y) {
                assert!((a - b).abs() <= d * 2.5, "{a} vs {b} (d {d})");
            }
            let e = sq(&x, &y);
            let e0 = sq(&x, &BlockQ4::quantize_max(&x).dequantize());
            assert!(e <= e0 * (1.0 + 1e-3), "seed {seed}: {e} > {e0}");
            fitted += e;
            plain += e0;
        }
        // On uniform data the fitted scales cut the squared error substantially.
        assert!(fitted < 0.9 * plain, "{fitted} vs {plain}");
    }

    #[test]
    fn zero_blocks_and_padding_stay_zero() {
        let b = BlockQ4::quantize(&[0.0; 32]);
        assert_eq!(b.dequantize(), [0.0; 32]);
        let b = BlockQ8::quantize(&[0.0; 5]);
        assert_eq!(b.dequantize(), [0.0; 32]);
        let b = BlockQ4::quantize(&[1.0, -2.0, 0.5]);
        assert_eq!(&b.dequantize()[3..], &[0.0; 29]);
    }

    #[test]
    fn matrix_round_trip_with_a_partial_group() {
        let (rows, cols) = (3, 70);
        let x = random(rows * cols, 7, 1.0);
        for scheme in [Scheme::Q8, Scheme::Q4] {
            let q = QuantMatrix::quantize(scheme, &x, rows, cols);
            q.check().unwrap();
            assert_eq!(q.blocks_per_row(), 3);
            assert_eq!(q.qs.len(), rows * 3 * scheme.block_bytes());
            let y = q.dequantize();
            assert_eq!(y.len(), rows * cols);
            let step = match scheme {
                Scheme::Q8 => 1.0 / 127.0,
                Scheme::Q4 => 1.0 / 8.0,
            };
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= step * 1.01, "{scheme:?}: {err}");
            // Block layout matches the GGML block: row 1, block 2 is the same as quantizing alone.
            let alone = match scheme {
                Scheme::Q8 => BlockQ8::quantize(&x[cols + 64..2 * cols]).dequantize(),
                Scheme::Q4 => BlockQ4::quantize(&x[cols + 64..2 * cols]).dequantize(),
            };
            assert_eq!(&y[cols + 64..2 * cols], &alone[..6]);
        }
    }

    #[test]
    fn only_big_linear_weights_are_quantizable() {
        assert!(quantizable(
            "model.language_model.layers.0.self_attn.q_proj.weight",
            &[8, 8]
        ));
        assert!(quantizable("lm_head.weight", &[8, 8]));
        assert!(quantizable(
            "model.multi_modal_projector.linear_1.weight",
            &[8, 8]
        ));
        assert!(!quantizable(
            "model.language_model.embed_tokens.weight",
            &[8, 8]
        ));
        assert!(!quantizable(
            "x.embeddings.position_embedding.weight",
            &[8, 8]
        ));
        assert!(!quantizable(
            "x.embeddings.patch_embedding.weight",
            &[8, 3, 2, 2]
        ));
        assert!(!quantizable("x.layers.0.input_layernorm.weight", &[8]));
        assert!(!quantizable("x.q_proj.bias", &[8]));
    }

    #[test]
    fn metadata_schemes_are_checked() {
        let mut m = std::collections::HashMap::new();
        assert_eq!(format_from_metadata(&m, "f").unwrap(), None);
        m.insert(META_QUANT.to_string(), "q4".to_string());
        m.insert(META_GROUP.to_string(), "32".to_string());
        assert_eq!(format_from_metadata(&m, "f").unwrap(), Some(Format::Q4));
        m.insert(META_GROUP.to_string(), "64".to_string());
        let e = format_from_metadata(&m, "f.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.safetensors: unsupported group_size"),
            "{e}"
        );
        m.insert(META_QUANT.to_string(), "q3".to_string());
        let e = format_from_metadata(&m, "f.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown quantization scheme \"q3\""), "{e}");
    }
}
