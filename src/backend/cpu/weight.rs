//! CPU weights as the checkpoint stores them: f32, f16 bits, or q8/q4 blocks (see [`crate::quant`]).
//!
//! Matrices stay packed (a 7B q4 checkpoint stays ~4 GB instead of ~28 GB widened); `linear`
//! ([`super::matmul`]) widens a panel of rows at a time into a small per-task buffer, with exactly
//! the values [`WeightData::into_f32`] would give (`d * q` for a block, the f16 value widened), so
//! a packed matrix computes the same numbers as its widened copy. Vectors (norms, biases) and
//! embedding tables arrive as f32 (only [`crate::quant::quantizable`] matrices are packed).

use std::borrow::Cow;

use half::f16;

use crate::quant::{QuantMatrix, Scheme, WeightData, GROUP};

/// How a [`CpuWeight`] holds its values.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuData {
    F32(Vec<f32>),
    /// Row-major f16 bits.
    F16(Vec<u16>),
    /// q8 / q4 blocks, planar as in the checkpoint.
    Quant(QuantMatrix),
}

#[derive(Debug, Clone)]
pub struct CpuWeight {
    pub data: CpuData,
    pub shape: Vec<usize>,
}

impl CpuWeight {
    pub fn f32(data: Vec<f32>, shape: &[usize]) -> Self {
        CpuWeight {
            data: CpuData::F32(data),
            shape: shape.to_vec(),
        }
    }

    /// Keep matrices packed; anything else (vectors) is widened.
    pub fn from_data(data: WeightData, shape: &[usize]) -> Self {
        let data = match data {
            WeightData::F32(v) => CpuData::F32(v),
            WeightData::F16(v) if shape.len() == 2 => CpuData::F16(v),
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
        }
    }

    /// The values when stored as f32 (what calibration reads).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            CpuData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Address of the stored values: stable while the weight lives (identifies it).
    pub fn address(&self) -> usize {
        match &self.data {
            CpuData::F32(v) => v.as_ptr() as usize,
            CpuData::F16(v) => v.as_ptr() as usize,
            CpuData::Quant(q) => q.qs.as_ptr() as usize,
        }
    }

    /// Bytes holding the values (codes and scales for blocks).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            CpuData::F32(v) => v.len() * 4,
            CpuData::F16(v) => v.len() * 2,
            CpuData::Quant(q) => q.qs.len() + q.scales.len() * 2,
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
        }
    }
}

fn widen_f16(src: &[u16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    // Exact (every f16 is an f32); vectorised with F16C where the CPU has it.
    let src: &[f16] = bytemuck::cast_slice(src);
    src.convert_to_f32_slice(dst);
}

/// Row `r` of `q` as `d * q` per element (as [`QuantMatrix::dequantize`]), `dst.len()` = cols.
fn dequantize_row(q: &QuantMatrix, r: usize, dst: &mut [f32]) {
    let nb = q.blocks_per_row();
    let bytes = q.scheme.block_bytes();
    for (b, out) in dst.chunks_mut(GROUP).enumerate() {
        let i = r * nb + b;
        let d = f16::from_bits(q.scales[i]).to_f32();
        let codes = &q.qs[i * bytes..(i + 1) * bytes];
        if out.len() == GROUP {
            dequantize_block(q.scheme, d, codes, out);
        } else {
            // The last, partial group: its padding is dropped.
            let mut tmp = [0f32; GROUP];
            dequantize_block(q.scheme, d, codes, &mut tmp);
            let n = out.len();
            out.copy_from_slice(&tmp[..n]);
        }
    }
}

/// One block of 32 values (GGML `Q8_0` / `Q4_0` decoding, as `BlockQ8::dequantize` and
/// `BlockQ4::dequantize`).
fn dequantize_block(scheme: Scheme, d: f32, codes: &[u8], out: &mut [f32]) {
    match scheme {
        Scheme::Q8 => {
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = d * f32::from(c as i8);
            }
        }
        Scheme::Q4 => {
            let (lo, hi) = out.split_at_mut(GROUP / 2);
            for ((l, h), &c) in lo.iter_mut().zip(hi).zip(codes) {
                *l = d * (f32::from(c & 15) - 8.0);
                *h = d * (f32::from(c >> 4) - 8.0);
            }
        }
    }
}
