//! `linear` (`x W^T + b`) on the CPU: register tiles that reuse each weight load across rows of x,
//! weights read straight from their packed storage, and one fixed reduction order.
//!
//! # Method
//!
//! The output `[m, n]` is split into blocks of weight rows (output columns), one task each (rayon
//! natively). A task widens its block of weight rows into a small buffer once when they are stored
//! packed (f16, q8, q4 blocks: [`super::weight`]; f32 rows are read in place), then walks it in
//! register tiles of `R` rows of x × `C` weight rows (4×2, 2×4, 1×8, ...): every 8-wide chunk of a
//! weight row loaded into a register serves `R` rows of x, every chunk of x serves `C` weight rows,
//! and the `R * C` accumulators stay in registers for the whole reduction. On x86-64 the tile
//! kernel is an AVX function chosen at run time (`is_x86_feature_detected!`); elsewhere (and on
//! CPUs without AVX) a portable kernel that the compiler vectorises.
//!
//! # One reduction order: batch-invariant and unchanged
//!
//! Every output element is reduced the same way whatever the tile, the kernel or the number of
//! rows: eight lane accumulators, lane `l` adding `x[8c + l] * w[8c + l]` for chunk `c = 0, 1, ...`
//! (a product rounded, then added: never fused), then the lanes summed in order, then the
//! `k % 8` leftover products one by one, then the bias. So a row's result does not depend on which
//! other rows share the pass (tree verification computes bit for bit the logits plain decoding
//! would), the AVX and portable kernels agree bit for bit, and the order is the one the engine
//! always used, so one-row decoding is unchanged. Packed weights are widened to exactly the f32
//! values [`crate::quant::WeightData::into_f32`] gives, so they compute what their widened copy
//! would.

use super::weight::{CpuData, CpuWeight};

/// Lanes of one accumulator (one AVX register).
const LANES: usize = 8;

/// `x W^T + b` for `x: [m, k]` (row-major) and `w: [n, k]`; `[m, n]` row-major.
pub fn linear(x: &[f32], m: usize, w: &CpuWeight, bias: Option<&[f32]>) -> Vec<f32> {
    let (n, k) = (w.shape[0], w.shape[1]);
    debug_assert_eq!(x.len(), m * k);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    // Weight rows per task: a multiple of 8 (the one-row tile), about 256K multiply-adds or more
    // (a few microseconds: well above the cost of handing a task to another thread).
    let per_task = ((256 << 10) / (m * k).max(1))
        .next_multiple_of(8)
        .clamp(8, 1024);
    // Packed rows are widened this many at a time (about 64 KB: the buffer stays in cache).
    let panel_rows = (16 << 10) / k.max(1) / 8 * 8;
    let panel_rows = panel_rows.max(8);
    // Transposed output [n, m]: each task owns a contiguous block of it.
    let mut t = vec![0f32; n * m];
    let task = |bi: usize, out: &mut [f32]| {
        let mut buf = Vec::new();
        for (pi, out) in out.chunks_mut(panel_rows * m).enumerate() {
            let j0 = bi * per_task + pi * panel_rows;
            let jn = out.len() / m;
            let panel: &[f32] = match &w.data {
                CpuData::F32(v) => &v[j0 * k..(j0 + jn) * k],
                _ => {
                    buf.resize(jn * k, 0f32);
                    w.widen_rows(j0..j0 + jn, k, &mut buf);
                    &buf
                }
            };
            block(x, m, k, panel, jn, out);
            for (j, col) in out.chunks_mut(m).enumerate() {
                let b = bias.map_or(0.0, |b| b[j0 + j]);
                for v in col {
                    *v += b;
                }
            }
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    if n > per_task {
        use rayon::prelude::*;
        t.par_chunks_mut(per_task * m)
            .enumerate()
            .for_each(|(bi, out)| task(bi, out));
    } else {
        task(0, &mut t);
    }
    #[cfg(target_arch = "wasm32")]
    task(0, &mut t);
    if m == 1 {
        return t;
    }
    let mut data = vec![0f32; m * n];
    for (j, col) in t.chunks(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            data[i * n + j] = v;
        }
    }
    data
}

/// `out[j * m + i] = x_i . w_j` (no bias) for the `jn` weight rows of `panel` (`[jn, k]`).
fn block(x: &[f32], m: usize, k: usize, panel: &[f32], jn: usize, out: &mut [f32]) {
    let mut i = 0;
    while i < m {
        let xs = &x[i * k..];
        match m - i {
            1 => cols::<1, 8>(xs, i, k, panel, jn, m, out),
            2 => cols::<2, 4>(xs, i, k, panel, jn, m, out),
            3 => cols::<3, 2>(xs, i, k, panel, jn, m, out),
            _ => cols::<4, 2>(xs, i, k, panel, jn, m, out),
        }
        i += (m - i).min(4);
    }
}

/// Rows `i..i + R` of x against every weight row of the panel, `C` weight rows at a time.
fn cols<const R: usize, const C: usize>(
    x: &[f32],
    i: usize,
    k: usize,
    panel: &[f32],
    jn: usize,
    m: usize,
    out: &mut [f32],
) {
    let mut j = 0;
    while j < jn {
        let w = &panel[j * k..];
        if j + C <= jn {
            let s = tile::<R, C>(x, w, k);
            for (c, col) in (0..C).map(|c| (c, (j + c) * m + i)) {
                for (r, row) in s.iter().enumerate() {
                    out[col + r] = row[c];
                }
            }
            j += C;
        } else {
            let s = tile::<R, 1>(x, w, k);
            for (r, row) in s.iter().enumerate() {
                out[j * m + i + r] = row[0];
            }
            j += 1;
        }
    }
}

/// The `R x C` dot products of rows of `x` and `w` (both stride `k`), in the one reduction order.
#[inline]
fn tile<const R: usize, const C: usize>(x: &[f32], w: &[f32], k: usize) -> [[f32; C]; R] {
    assert!(x.len() >= R * k && w.len() >= C * k);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present, and the bounds were checked above.
        let lanes = unsafe { avx::tile::<R, C>(x.as_ptr(), w.as_ptr(), k) };
        return finish(&lanes, x, w, k);
    }
    finish(&portable::<R, C>(x, w, k), x, w, k)
}

/// Lane accumulators of a tile: `[r][c][l]`.
type Lanes<const R: usize, const C: usize> = [[[f32; LANES]; C]; R];

fn portable<const R: usize, const C: usize>(x: &[f32], w: &[f32], k: usize) -> Lanes<R, C> {
    let mut acc = [[[0f32; LANES]; C]; R];
    for ch in 0..k / LANES {
        let at = ch * LANES;
        for (r, acc) in acc.iter_mut().enumerate() {
            let xr = &x[r * k + at..r * k + at + LANES];
            for (c, acc) in acc.iter_mut().enumerate() {
                let wc = &w[c * k + at..c * k + at + LANES];
                for l in 0..LANES {
                    acc[l] += xr[l] * wc[l];
                }
            }
        }
    }
    acc
}

/// Lanes summed in order, then the leftover products one by one.
fn finish<const R: usize, const C: usize>(
    lanes: &Lanes<R, C>,
    x: &[f32],
    w: &[f32],
    k: usize,
) -> [[f32; C]; R] {
    let mut out = [[0f32; C]; R];
    let tail = k / LANES * LANES;
    for (r, (o, l)) in out.iter_mut().zip(lanes).enumerate() {
        for (c, (o, l)) in o.iter_mut().zip(l).enumerate() {
            let mut s: f32 = l.iter().sum();
            for e in tail..k {
                s += x[r * k + e] * w[c * k + e];
            }
            *o = s;
        }
    }
    out
}

/// The reduction order for one pair of vectors (attention scores use it too).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    finish(&portable::<1, 1>(a, b, a.len()), a, b, a.len())[0][0]
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{Lanes, LANES};

    /// The tile kernel with one AVX register per accumulator: `mul` then `add` (never FMA, which
    /// would round once instead of twice and break the agreement with the portable kernel).
    ///
    /// # Safety
    /// AVX must be available; `x` must hold `R` rows and `w` `C` rows of `k` floats.
    #[target_feature(enable = "avx")]
    pub unsafe fn tile<const R: usize, const C: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
    ) -> Lanes<R, C> {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut wv = [_mm256_setzero_ps(); C];
        for ch in 0..k / LANES {
            let at = ch * LANES;
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(c * k + at));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * k + at));
                for (a, &wc) in acc.iter_mut().zip(&wv) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(xv, wc));
                }
            }
        }
        let mut out = [[[0f32; LANES]; C]; R];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, a) in o.iter_mut().zip(a) {
                _mm256_storeu_ps(o.as_mut_ptr(), *a);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Format, WeightData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// The engine's dot product before tiling (eight lanes, summed in order, then the tail).
    fn old_dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let chunks = a.len() / 8;
        for c in 0..chunks {
            for l in 0..8 {
                acc[l] += a[c * 8 + l] * b[c * 8 + l];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for i in chunks * 8..a.len() {
            s += a[i] * b[i];
        }
        s
    }

    fn weights(n: usize, k: usize, seed: u64) -> Vec<CpuWeight> {
        let data = random(n * k, seed);
        let mut out = vec![CpuWeight::f32(data.clone(), &[n, k])];
        for f in [Format::F16, Format::Q8, Format::Q4] {
            let d = WeightData::convert(data.clone(), n, k, f);
            out.push(CpuWeight::from_data(d, &[n, k]));
        }
        out
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn a_batch_of_rows_equals_its_rows_one_by_one_bit_for_bit() {
        // k = 70: a partial q4/q8 group and a 6-element tail; n odd: leftover weight rows.
        for (n, k) in [(37, 70), (19, 256), (600, 64)] {
            for w in weights(n, k, n as u64) {
                let bias = random(n, 3);
                for m in [2, 3, 5, 8, 32] {
                    let x = random(m * k, m as u64);
                    let batch = linear(&x, m, &w, Some(&bias));
                    let rows: Vec<f32> = x
                        .chunks(k)
                        .flat_map(|r| linear(r, 1, &w, Some(&bias)))
                        .collect();
                    assert_eq!(bits(&batch), bits(&rows), "{:?} m{m} n{n} k{k}", w.shape);
                }
            }
        }
    }

    #[test]
    fn packed_weights_compute_what_their_widened_copy_and_the_old_dot_do() {
        let (n, k, m) = (45, 200, 6);
        let x = random(m * k, 9);
        for w in weights(n, k, 5) {
            let wide = w.values().into_owned();
            let got = linear(&x, m, &w, None);
            let widened = linear(&x, m, &CpuWeight::f32(wide.clone(), &[n, k]), None);
            assert_eq!(bits(&got), bits(&widened));
            for i in 0..m {
                for j in 0..n {
                    let want = old_dot(&x[i * k..(i + 1) * k], &wide[j * k..(j + 1) * k]) + 0.0;
                    assert_eq!(got[i * n + j].to_bits(), want.to_bits(), "({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn the_simd_and_portable_kernels_agree_bit_for_bit() {
        let k = 77;
        let (x, w) = (random(4 * k, 1), random(8 * k, 2));
        fn both<const R: usize, const C: usize>(x: &[f32], w: &[f32], k: usize) {
            let a = tile::<R, C>(x, w, k);
            let b = finish(&portable::<R, C>(x, w, k), x, w, k);
            assert_eq!(a, b, "{R}x{C}");
        }
        both::<4, 2>(&x, &w, k);
        both::<3, 2>(&x, &w, k);
        both::<2, 4>(&x, &w, k);
        both::<1, 8>(&x, &w, k);
        both::<1, 1>(&x, &w, k);
    }
}
