//! Packed 8-bit dot products: the reference of the GPU engine's optional int8 mat-vec
//! (`shaders/dot_int8.wgsl`, `GpuOptions::int8_dot`).
//!
//! Instead of widening q8 / q4 weights to f32, the kernel quantizes x too, in blocks of
//! [`GROUP`] aligned with the weight blocks, and multiplies 4 pairs of 8-bit codes at a time
//! (WGSL's `dot4I8Packed`, a DP4A instruction on most GPUs): the weight stream stays 8 or 4 bits
//! wide through the arithmetic, as in llama.cpp's q8_1 activations for its MMVQ kernels.
//!
//! Every step is exact but one, so the engine and this reference compute the same per-block terms
//! bit for bit, whatever the device:
//!
//! - **x codes:** each block's scale is a power of two, `s = 2^(floor(log2 amax) - 6)`, so
//!   `x / s` is exact and lands in [-128, 128); the codes are `clamp(round_half_even(x / s), -127,
//!   127)` (7 significant bits, against GGML's `amax / 127` which costs a division that GPUs round
//!   differently). Blocks with `amax < 2^-120` (below every useful activation) are zero; a block
//!   holding Inf or NaN makes its terms NaN, as f32 sums would.
//! - **one block's term:** `dot = Σ code_x * (code_w - zero)` in i32 (exact: |dot| < 2^19), then
//!   `fma(f32(dot), d_w * s, acc)`: `d_w * s` is exact (a power of two times an f16 value), the
//!   fma rounds once.
//!
//! What differs between engines is only the order in which the block terms are added (the
//! engine: 32 lane chains and a binary tree, `shaders/matmul_vec.wgsl`; here: block order).
//!
//! Not the default: x rounded to 7 bits moves every logit away from the f32 reference
//! (Hugging Face transformers) by ~1%, so greedy output can differ from it near ties. Speculative
//! output still equals plain decoding bit for bit with it on: both run the same kernel.

use super::{QuantMatrix, GROUP};

/// One block of x as 8-bit codes: `x ≈ scale * code`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationBlock {
    pub codes: [i8; GROUP],
    /// A power of two (0 for a block quantized to zero; NaN where x holds Inf or NaN).
    pub scale: f32,
}

/// Biased f32 exponents below this quantize to zero (their scale would be subnormal).
const MIN_EXPONENT: u32 = 7;

impl ActivationBlock {
    /// Quantize up to 32 values (fewer: zero-padded), as `shaders/dot_int8.wgsl` does.
    pub fn quantize(x: &[f32]) -> ActivationBlock {
        let g = super::group(x);
        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        // amax = 1.f * 2^(e - 127); up = 2^(133 - e) puts it in [64, 128).
        let e = amax.to_bits() >> 23;
        let special = g.iter().any(|v| !v.is_finite());
        if special || e < MIN_EXPONENT {
            // Inf or NaN: a NaN scale, so that every term is NaN, as f32 sums would be NaN or
            // Inf.
            let scale = if special { f32::NAN } else { 0.0 };
            return ActivationBlock {
                codes: [0; GROUP],
                scale,
            };
        }
        let up = f32::from_bits((260 - e) << 23);
        let codes = g.map(|v| (v * up).round_ties_even().clamp(-127.0, 127.0) as i8);
        ActivationBlock {
            codes,
            scale: f32::from_bits((e - 6) << 23),
        }
    }

    /// Blocks covering a row of x (the last zero-padded).
    pub fn quantize_row(x: &[f32]) -> Vec<ActivationBlock> {
        x.chunks(GROUP).map(ActivationBlock::quantize).collect()
    }
}

impl QuantMatrix {
    /// `x W^T` for the rows of `x` (`[m, cols]`, row-major) with x quantized in blocks: the
    /// int8 mat-vec's arithmetic, block terms added in block order.
    pub fn linear_int8(&self, x: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len() / self.cols.max(1) * self.rows);
        for row in x.chunks(self.cols.max(1)) {
            let blocks = ActivationBlock::quantize_row(row);
            for r in 0..self.rows {
                let mut acc = 0f32;
                for (b, xb) in blocks.iter().enumerate() {
                    let (codes, scale) = self.block_codes(r, b);
                    let dot: i32 = codes
                        .iter()
                        .zip(&xb.codes)
                        .map(|(&w, &x)| i32::from(w) * i32::from(x))
                        .sum();
                    acc = (dot as f32).mul_add(scale * xb.scale, acc);
                }
                out.push(acc);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Scheme;

    #[test]
    fn codes_use_seven_bits_and_the_scale_is_a_power_of_two() {
        let x: Vec<f32> = (0..GROUP).map(|i| (i as f32 - 13.3) * 0.37).collect();
        let b = ActivationBlock::quantize(&x);
        assert_eq!(b.scale.to_bits() & 0x7f_ffff, 0, "a power of two");
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let top = b.codes.iter().map(|c| c.unsigned_abs()).max().unwrap_or(0);
        assert!((64..=127).contains(&top), "{top}");
        assert!((amax / b.scale - f32::from(top)).abs() <= 0.5);
        for (v, c) in x.iter().zip(b.codes) {
            assert!(
                (v - b.scale * f32::from(c)).abs() <= b.scale / 2.0,
                "{v} {c}"
            );
        }
    }

    #[test]
    fn ties_round_to_even_and_the_top_clamps_to_127() {
        // amax = 127.75 * 2^-6 * 2^k: codes 127.75 -> 127 (clamped from 128), 2.5 -> 2, 3.5 -> 4.
        let s = 0.25f32;
        let b = ActivationBlock::quantize(&[127.75 * s, 2.5 * s, -3.5 * s, -127.5 * s]);
        assert_eq!(b.scale, s);
        assert_eq!(&b.codes[..4], &[127, 2, -4, -127]);
        assert!(b.codes[4..].iter().all(|&c| c == 0));
    }

    #[test]
    fn tiny_and_zero_blocks_are_zero() {
        for x in [[0.0f32; 3], [1e-37, -2e-38, 0.0]] {
            let b = ActivationBlock::quantize(&x);
            assert_eq!(b.scale, 0.0);
            assert!(b.codes.iter().all(|&c| c == 0));
        }
    }

    #[test]
    fn inf_and_nan_make_the_outputs_nan() {
        let q = QuantMatrix::quantize(Scheme::Q4, &[0.5; 2 * 64], 2, 64);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.25f32; 64];
            x[40] = bad;
            assert!(q.linear_int8(&x).iter().all(|v| v.is_nan()), "{bad}");
        }
    }

    #[test]
    fn the_int8_linear_stays_near_the_f32_one() {
        let (rows, cols) = (7, 70);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
            .collect();
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 2.0)
            .collect();
        for scheme in [Scheme::Q8, Scheme::Q4] {
            let q = QuantMatrix::quantize(scheme, &w, rows, cols);
            let dense = q.dequantize();
            let got = q.linear_int8(&x);
            assert_eq!(got.len(), 2 * rows);
            for (i, row) in x.chunks(cols).enumerate() {
                for r in 0..rows {
                    let want: f32 = row
                        .iter()
                        .zip(&dense[r * cols..(r + 1) * cols])
                        .map(|(a, b)| a * b)
                        .sum();
                    let scale: f32 = row
                        .iter()
                        .zip(&dense[r * cols..(r + 1) * cols])
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    let err = (got[i * rows + r] - want).abs();
                    assert!(err <= 0.02 * scale, "{scheme:?} {i} {r}: {err} of {scale}");
                }
            }
        }
    }
}
