//! CPU weights as the checkpoint stores them: f32, f16 bits, or q8/q4 blocks (see [`crate::quant`]).
//!
//! Matrices stay packed (a 7B q4 checkpoint stays ~4 GB instead of ~28 GB widened); `linear`
//! ([`super::matmul`]) widens a panel of rows at a time into a small per-task buffer, with exactly
//! the values [`WeightData::into_f32`] would give (`d * q` for a block, the f16 value widened), so
//! a packed matrix computes the same numbers as its widened copy. Where the CPU has AVX-512,
//! matrices are stored as column panels instead ([`super::panel`]), which their kernel reads as
//! one stream; an embedding lookup widens one row of any layout ([`CpuWeight::widen_rows`]).
//! Vectors (norms, biases) and embedding tables arrive as f32 (only [`crate::quant::quantizable`]
//! matrices are packed).

use std::borrow::Cow;

use half::f16;

use super::panel::{self, PanelData, Panels};
use crate::quant::{QuantMatrix, Scheme, WeightData, GROUP};

/// How a [`CpuWeight`] holds its values.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuData {
    F32(Vec<f32>),
    /// Row-major f16 bits.
    F16(Vec<u16>),
    /// q8 / q4 blocks, planar as in the checkpoint.
    Quant(QuantMatrix),
    /// A matrix (f32, f16, or q8/q4 of whole blocks) as column panels, where the CPU has their
    /// kernel ([`super::panel`]).
    Panels(Panels),
}

#[derive(Debug, Clone)]
pub struct CpuWeight {
    pub data: CpuData,
    pub shape: Vec<usize>,
}

impl CpuWeight {
    /// f32 values; a matrix as panels where the CPU has their kernel.
    pub fn f32(data: Vec<f32>, shape: &[usize]) -> Self {
        let data = match shape {
            [n, k] if panel::applies() => CpuData::Panels(Panels::f32(&data, *n, *k)),
            _ => CpuData::F32(data),
        };
        CpuWeight {
            data,
            shape: shape.to_vec(),
        }
    }

    /// f32 values, row-major whatever the CPU (to compare the layouts' orders).
    #[cfg(test)]
    pub(super) fn f32_rows(data: Vec<f32>, shape: &[usize]) -> Self {
        CpuWeight {
            data: CpuData::F32(data),
            shape: shape.to_vec(),
        }
    }

    /// Keep matrices packed; anything else (vectors) is widened.
    pub fn from_data(data: WeightData, shape: &[usize]) -> Self {
        let data = match data {
            WeightData::F32(v) => return CpuWeight::f32(v, shape),
            WeightData::F16(v) if shape.len() == 2 && panel::applies() => {
                CpuData::Panels(Panels::f16(&v, shape[0], shape[1]))
            }
            WeightData::F16(v) if shape.len() == 2 => CpuData::F16(v),
            WeightData::Quant(q)
                if shape.len() == 2 && q.rows == shape[0] && panel::applies_to(&q) =>
            {
                CpuData::Panels(Panels::quant(&q))
            }
            WeightData::Quant(q) if shape.len() == 2 && q.rows == shape[0] => CpuData::Quant(q),
            other => CpuData::F32(other.into_f32()),
        };
        CpuWeight {
            data,
            shape: shape.to_vec(),
        }
    }

    /// The f32 values: borrowed when stored as f32, widened otherwise.
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.data {
            CpuData::F32(v) => Cow::Borrowed(v),
            CpuData::F16(v) => Cow::Owned(v.iter().map(|&h| f16::from_bits(h).to_f32()).collect()),
            CpuData::Quant(q) => Cow::Owned(q.dequantize()),
            CpuData::Panels(p) => Cow::Owned(p.values()),
        }
    }

    /// The values when stored as f32 (what calibration reads).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            CpuData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the values are kept as f16 bits (row-major or as panels).
    pub fn keeps_f16(&self) -> bool {
        matches!(
            &self.data,
            CpuData::F16(_)
                | CpuData::Panels(Panels {
                    data: PanelData::F16(_),
                    ..
                })
        )
    }

    /// Address of the stored values: stable while the weight lives (identifies it).
    pub fn address(&self) -> usize {
        match &self.data {
            CpuData::F32(v) => v.as_ptr() as usize,
            CpuData::F16(v) => v.as_ptr() as usize,
            CpuData::Quant(q) => q.qs.as_ptr() as usize,
            CpuData::Panels(p) => p.address(),
        }
    }

    /// Bytes holding the values (codes and scales for blocks).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            CpuData::F32(v) => v.len() * 4,
            CpuData::F16(v) => v.len() * 2,
            CpuData::Quant(q) => q.qs.len() + q.scales.len() * 2,
            CpuData::Panels(p) => p.stored_bytes(),
        }
    }

    /// Widen rows `rows` of a matrix `[out, k]` into `dst` (`rows.len() * k`, row-major).
    pub(super) fn widen_rows(&self, rows: std::ops::Range<usize>, k: usize, dst: &mut [f32]) {
        match &self.data {
            CpuData::F32(v) => dst.copy_from_slice(&v[rows.start * k..rows.end * k]),
            CpuData::F16(v) => widen_f16(&v[rows.start * k..rows.end * k], dst),
            CpuData::Quant(q) => {
                for (i, r) in rows.enumerate() {
                    dequantize_row(q, r, &mut dst[i * k..(i + 1) * k]);
                }
            }
            CpuData::Panels(p) => {
                for (i, r) in rows.enumerate() {
                    p.row(r, &mut dst[i * k..(i + 1) * k]);
                }
            }
        }
    }
}

fn widen_f16(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: F16C and AVX are present.
        return unsafe { widen_f16_f16c(src, dst) };
    }
    use half::slice::HalfFloatSliceExt;
    // Exact (every f16 is an f32); vectorised with F16C where the CPU has it.
    let src: &[f16] = bytemuck::cast_slice(src);
    src.convert_to_f32_slice(dst);
}

/// Eight f16 values per instruction (`vcvtph2ps`, exact), the rest one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(src.len(), dst.len());
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    for (d, &h) in dst[n..].iter_mut().zip(&src[n..]) {
        *d = f16::from_bits(h).to_f32();
    }
}

/// Row `r` of `q` as `d * q` per element (as [`QuantMatrix::dequantize`]), `dst.len()` = cols.
fn dequantize_row(q: &QuantMatrix, r: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        return unsafe { dequantize_row_avx2(q, r, dst) };
    }
    dequantize_row_portable(q, r, dst)
}

/// [`dequantize_row_portable`] with the blocks decoded 8 values per instruction (AVX2): codes
/// widened to i32, converted (exactly) to f32, multiplied by the block's scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_row_avx2(q: &QuantMatrix, r: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let nb = q.blocks_per_row();
    let bytes = q.scheme.block_bytes();
    let full = dst.len() / GROUP;
    let mut scales = [0f32; 64];
    for b in 0..full {
        let i = r * nb + b;
        if b % 64 == 0 {
            let end = (i + 64).min((r + 1) * nb);
            widen_f16(&q.scales[i..end], &mut scales[..end - i]);
        }
        let d = _mm256_set1_ps(scales[b % 64]);
        let codes = q.qs[i * bytes..(i + 1) * bytes].as_ptr();
        let out = dst[b * GROUP..(b + 1) * GROUP].as_mut_ptr();
        match q.scheme {
            Scheme::Q8 => {
                for h in 0..4 {
                    let c = _mm_loadl_epi64(codes.add(8 * h) as *const __m128i);
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
                    _mm256_storeu_ps(out.add(8 * h), _mm256_mul_ps(d, v));
                }
            }
            Scheme::Q4 => {
                let c = _mm_loadu_si128(codes as *const __m128i);
                let m = _mm_set1_epi8(15);
                let lo = _mm_and_si128(c, m);
                let hi = _mm_and_si128(_mm_srli_epi16(c, 4), m);
                let eight = _mm256_set1_epi32(8);
                for (h, half) in [lo, hi].into_iter().enumerate() {
                    for part in 0..2 {
                        let p = if part == 0 {
                            half
                        } else {
                            _mm_srli_si128(half, 8)
                        };
                        let v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(p), eight);
                        let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(v));
                        _mm256_storeu_ps(out.add(16 * h + 8 * part), v);
                    }
                }
            }
        }
    }
    if full * GROUP < dst.len() {
        // The last, partial group.
        let mut tail = vec![0f32; GROUP];
        dequantize_row_portable_from(q, r, full, &mut tail);
        let n = dst.len() - full * GROUP;
        dst[full * GROUP..].copy_from_slice(&tail[..n]);
    }
}

fn dequantize_row_portable(q: &QuantMatrix, r: usize, dst: &mut [f32]) {
    dequantize_row_portable_from(q, r, 0, dst)
}

/// Blocks `first..` of row `r` into `dst` (from block `first`'s first value).
fn dequantize_row_portable_from(q: &QuantMatrix, r: usize, first: usize, dst: &mut [f32]) {
    let nb = q.blocks_per_row();
    let bytes = q.scheme.block_bytes();
    // The row's scales widened together (F16C where present; one at a time is a slow path).
    let mut scales = [0f32; 64];
    for (b, out) in dst.chunks_mut(GROUP).enumerate() {
        let i = r * nb + first + b;
        if b % 64 == 0 {
            let end = (i + 64).min((r + 1) * nb);
            widen_f16(&q.scales[i..end], &mut scales[..end - i]);
        }
        let d = scales[b % 64];
        let codes = &q.qs[i * bytes..(i + 1) * bytes];
        let mut block = [0f32; GROUP];
        match q.scheme {
            Scheme::Q8 => dequantize_q8(d, codes, &mut block),
            Scheme::Q4 => dequantize_q4(d, codes, &mut block),
        }
        // The last group may be partial: its padding is dropped.
        out.copy_from_slice(&block[..out.len()]);
    }
}

/// GGML `Q8_0` decoding, as `BlockQ8::dequantize`.
#[inline(always)]
fn dequantize_q8(d: f32, codes: &[u8], out: &mut [f32; GROUP]) {
    let codes: &[u8; GROUP] = codes.try_into().expect("a q8 block has 32 codes");
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = d * f32::from(c as i8);
    }
}

/// GGML `Q4_0` decoding, as `BlockQ4::dequantize`.
#[inline(always)]
fn dequantize_q4(d: f32, codes: &[u8], out: &mut [f32; GROUP]) {
    let codes: &[u8; GROUP / 2] = codes.try_into().expect("a q4 block has 16 bytes");
    for (i, &c) in codes.iter().enumerate() {
        out[i] = d * (f32::from(c & 15) - 8.0);
        out[i + GROUP / 2] = d * (f32::from(c >> 4) - 8.0);
    }
}
