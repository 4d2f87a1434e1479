//! q8 / q4 weights (GGML `Q8_0` / `Q4_0` blocks, [`crate::quant`]) decoded in registers as a tile
//! reads them, for passes over few rows of x on CPUs with AVX-512: a mat-vec then reads each
//! block once, as stored (~0.56 bytes per weight for q4), instead of widening it to f32 in a buffer
//! and reading that back.
//!
//! A block of 32 weights is two 16-lane chunks: the first 16 codes (q8) or the low nibbles (q4)
//! are chunk `2b`, the rest chunk `2b + 1`, exactly the elements chunk `2b` and `2b + 1` of the
//! widened row. A q4 chunk is decoded by one permutation of a 16-entry table `d * (j - 8)` made
//! per block, a q8 chunk by a conversion and one multiply by `d`. Each weight is `d * q` rounded as
//! [`crate::quant::QuantMatrix::dequantize`] rounds it (the product is exact: an f16 scale times a
//! small integer), and the products are accumulated in the 16-lane fused order of
//! [`super::tile`], so the results are bit for bit those of the widened copy (tested in
//! [`super::matmul`]).

use super::tile::{order, Order};
use crate::quant::{QuantMatrix, Scheme, GROUP};

/// Whether [`block`] runs for this matrix and this process: AVX-512 (the 16-lane fused order)
/// and rows made of whole blocks.
pub(super) fn applies(q: &QuantMatrix) -> bool {
    order() == Order::Lanes16Fused && Order::Lanes16Fused.has_simd() && q.cols.is_multiple_of(GROUP)
}

/// `out[j * m + i] = x_i . w_{j0 + j}` (no bias) for `jn` rows of `q` from `j0`; only where
/// [`applies`] says so.
pub(super) fn block(x: &[f32], m: usize, q: &QuantMatrix, j0: usize, jn: usize, out: &mut [f32]) {
    assert!(applies(q) && x.len() >= m * q.cols && j0 + jn <= q.rows);
    assert!(q.qs.len() >= q.rows * q.cols / GROUP * q.scheme.block_bytes());
    assert!(q.scales.len() >= q.rows * q.cols / GROUP);
    match q.scheme {
        Scheme::Q4 => rows::<true>(x, m, q, j0, jn, out),
        Scheme::Q8 => rows::<false>(x, m, q, j0, jn, out),
    }
}

fn rows<const Q4: bool>(
    x: &[f32],
    m: usize,
    q: &QuantMatrix,
    j0: usize,
    jn: usize,
    out: &mut [f32],
) {
    let k = q.cols;
    let mut i = 0;
    while i < m {
        let xs = &x[i * k..];
        match m - i {
            1 => cols::<1, 8, Q4>(xs, i, q, j0, jn, m, out),
            2 => cols::<2, 4, Q4>(xs, i, q, j0, jn, m, out),
            3 => cols::<3, 4, Q4>(xs, i, q, j0, jn, m, out),
            _ => cols::<4, 4, Q4>(xs, i, q, j0, jn, m, out),
        }
        i += (m - i).min(4);
    }
}

/// Rows `i..i + R` of x against weight rows `j0..j0 + jn`, `C` at a time, then one at a time.
fn cols<const R: usize, const C: usize, const Q4: bool>(
    x: &[f32],
    i: usize,
    q: &QuantMatrix,
    j0: usize,
    jn: usize,
    m: usize,
    out: &mut [f32],
) {
    let mut j = 0;
    while j + C <= jn {
        // SAFETY: AVX-512F and VL are present and rows are whole blocks (`applies`, asserted in `block`);
        // x holds R rows and q the rows j0 + j .. + C (asserted in `block`).
        let s = unsafe { avx512::tile::<R, C, Q4>(x, q, j0 + j) };
        for (r, row) in s.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                out[(j + c) * m + i + r] = v;
            }
        }
        j += C;
    }
    for j in j..jn {
        // SAFETY: as above, for one weight row.
        let s = unsafe { avx512::tile::<R, 1, Q4>(x, q, j0 + j) };
        for (r, row) in s.iter().enumerate() {
            out[j * m + i + r] = row[0];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::tile::x86::sum16;
    use crate::quant::{QuantMatrix, GROUP};

    /// The `R x C` dot products of rows of x and weight rows `row0..row0 + C` of `q` (`Q4`: q4
    /// blocks, else q8), 16 lanes fused, lanes summed by halves (the order of `tile`).
    ///
    /// # Safety
    /// AVX-512F and VL must be available; x must hold `R` rows of `q.cols`, and `q` the weight rows,
    /// of whole blocks.
    #[target_feature(enable = "avx512f,avx512vl,f16c")]
    pub unsafe fn tile<const R: usize, const C: usize, const Q4: bool>(
        x: &[f32],
        q: &QuantMatrix,
        row0: usize,
    ) -> [[f32; C]; R] {
        let k = q.cols;
        let nb = k / GROUP;
        let bytes = if Q4 { 16 } else { 32 };
        let (xp, qs, scales) = (x.as_ptr(), q.qs.as_ptr(), q.scales.as_ptr());
        let steps = _mm512_setr_ps(
            -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
        );
        let nibble = _mm_set1_epi8(15);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut w = [[_mm512_setzero_ps(); 2]; C];
        for b in 0..nb {
            for (c, w) in w.iter_mut().enumerate() {
                let i = (row0 + c) * nb + b;
                let scale = _mm_cvtph_ps(_mm_set1_epi16(*scales.add(i) as i16));
                let d = _mm512_broadcastss_ps(scale);
                let codes = qs.add(i * bytes) as *const __m128i;
                if Q4 {
                    let table = _mm512_mul_ps(d, steps);
                    let c = _mm_loadu_si128(codes);
                    let lo = _mm_and_si128(c, nibble);
                    let hi = _mm_and_si128(_mm_srli_epi16(c, 4), nibble);
                    w[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(lo), table);
                    w[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(hi), table);
                } else {
                    for (h, w) in w.iter_mut().enumerate() {
                        let c = _mm512_cvtepi8_epi32(_mm_loadu_si128(codes.add(h)));
                        *w = _mm512_mul_ps(d, _mm512_cvtepi32_ps(c));
                    }
                }
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = xp.add(r * k + b * GROUP);
                let (x0, x1) = (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)));
                for (a, w) in acc.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(x1, w[1], _mm512_fmadd_ps(x0, w[0], *a));
                }
            }
        }
        let mut out = [[0f32; C]; R];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, &a) in o.iter_mut().zip(a) {
                *o = sum16(a);
            }
        }
        out
    }
}
