//! Error-compensated q4 quantization: GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ:
//! Accurate Post-Training Quantization for Generative Pre-trained Transformers",
//! arXiv:2210.17323), in the existing group-32 `Q4_0` layout.
//!
//! For a linear `y = x W^T` with calibration inputs `X` (one row per token), GPTQ minimises the
//! output error `||X W^T - X Q^T||²` rather than the weight error `||W - Q||²`. Its Hessian is
//! `H = 2 X^T X` (plus `damp * I`, `damp` = [`DAMP`] of the mean diagonal, so rarely used inputs
//! cannot make it singular). Columns (input channels) are quantized left to right; the error of
//! column `i` is spread over the columns not yet quantized, weighted by row `i` of the upper
//! Cholesky factor `U` of `H^-1` (`W[:, j] -= (w_i - q_i) / U[i, i] * U[i, j]`, `j > i`), so
//! inputs correlated with channel `i` absorb what its rounding lost. Each group's f16 scale is
//! chosen when the group starts, from the error-updated weights (the paper's group-wise variant,
//! without activation reordering, which would break the contiguous groups). Rows are independent,
//! so they run in parallel.
//!
//! Two additions fit the fixed block format better. With the codes chosen, each row's group scales
//! are refitted jointly to minimise the same output error `(w - q)^T H (w - q)` (a least-squares
//! problem with one unknown per group; kept only if it still helps once the scales are rounded to
//! f16), and GPTQ then chooses the codes again for the refitted scales: [`GptqOptions::rounds`]
//! alternations, keeping the best. Scales are GPTQ's only free parameters besides the codes, and
//! the greedy per-group choice ignores how the groups' errors interact through `H`.
//!
//! The result is an ordinary [`QuantMatrix`] of `Q4_0` blocks ([`super::BlockQ4`]): loaders and GPU kernels are the same
//! as for round-to-nearest.

use half::f16;

use crate::quant::{blocks_per_row, q4_scale, QuantMatrix, Scheme, GROUP};

/// Dampening added to the Hessian's diagonal, as a fraction of its mean (the paper's 1%).
pub const DAMP: f64 = 0.01;

/// Running `X^T X` of one linear's inputs (`dim` = input width), in f64. (The paper's `2 X^T X`,
/// or a mean over samples, differ only by a factor, which the relative dampening and the GPTQ
/// updates do not see.)
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    pub dim: usize,
    /// Row-major `[dim, dim]`; only the upper triangle (`j >= i`) is filled.
    upper: Vec<f64>,
    /// Input rows added so far.
    pub samples: usize,
}

/// `sum a[k] * b[k]` in f32 with eight accumulators (vectorises; at most a few hundred terms).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl Hessian {
    pub fn new(dim: usize) -> Hessian {
        Hessian {
            dim,
            upper: vec![0.0; dim * dim],
            samples: 0,
        }
    }

    /// Add the rows of `x` (`[rows, dim]`, row-major).
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let dim = self.dim;
        assert_eq!(x.len(), rows * dim, "Hessian::add: x is not [rows, dim]");
        if rows == 0 {
            return;
        }
        // Columns of x as contiguous rows, so each entry is one dot product.
        let mut xt = vec![0f32; dim * rows];
        for (r, row) in x.chunks_exact(dim).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                xt[c * rows + r] = v;
            }
        }
        let fill = |i: usize, out: &mut [f64]| {
            let a = &xt[i * rows..(i + 1) * rows];
            for j in i..dim {
                out[j] += f64::from(dot(a, &xt[j * rows..(j + 1) * rows]));
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            self.upper
                .par_chunks_mut(dim)
                .enumerate()
                .for_each(|(i, out)| fill(i, out));
        }
        #[cfg(target_arch = "wasm32")]
        self.upper
            .chunks_mut(dim)
            .enumerate()
            .for_each(|(i, out)| fill(i, out));
        self.samples += rows;
    }

    /// The full symmetric matrix, dampened: dead inputs (zero diagonal: never active in the
    /// calibration data) get a unit diagonal, then `damp * mean(diag)` is added to every diagonal
    /// entry.
    fn dampened(&self, damp: f64) -> Vec<f64> {
        let n = self.dim;
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let v = self.upper[i * n + j];
                h[i * n + j] = v;
                h[j * n + i] = v;
            }
        }
        for i in 0..n {
            if h[i * n + i] <= 0.0 {
                h[i * n + i] = 1.0;
            }
        }
        let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n.max(1) as f64;
        for i in 0..n {
            h[i * n + i] += damp * mean;
        }
        h
    }
}

/// Lower Cholesky factor `L` (`a = L L^T`) of a symmetric `[n, n]` matrix, or `None` if it is not
/// positive definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            let v = a[i * n + j] - s;
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// The upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), row-major, for a positive-definite
/// `H`: `L = chol(H)`, `H^-1 = L^-T L^-1`, `U = chol(H^-1)^T`.
fn inverse_upper_cholesky(h: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky(h, n)?;
    // M = L^-1 (lower) by forward substitution, stored transposed (`mt[c * n + i] = M[i, c]`) so
    // both sums below run over contiguous memory.
    let mut mt = vec![0f64; n * n];
    for c in 0..n {
        mt[c * n + c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let s: f64 = (c..i).map(|k| l[i * n + k] * mt[c * n + k]).sum();
            mt[c * n + i] = -s / l[i * n + i];
        }
    }
    // H^-1 = M^T M: entry (i, j) = sum over k >= max(i, j) of M[k, i] M[k, j].
    let mut inv = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            let s: f64 = (j..n).map(|k| mt[i * n + k] * mt[j * n + k]).sum();
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    let l2 = cholesky(&inv, n)?;
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = l2[j * n + i];
        }
    }
    Some(u)
}

/// Knobs of [`quantize_q4_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Diagonal dampening as a fraction of the mean diagonal.
    pub damp: f64,
    /// After choosing the codes, refit each row's group scales jointly to minimise the output
    /// error `(w - q)^T H (w - q)` with the codes fixed (a small least-squares problem per row).
    pub refit_scales: bool,
    /// Alternations of choosing codes (GPTQ) and refitting scales.
    pub rounds: usize,
}

impl Default for GptqOptions {
    /// What `spec-llava quantize` uses. On the demo target (identical greedy captions on scenes
    /// 0..50 / 50..150): plain GPTQ 45/50 and 90/100; one scale refit 44/50 and 95/100; three
    /// rounds 48/50 and 94/100 (round-to-nearest: 37/50 and 81/100).
    fn default() -> Self {
        GptqOptions {
            damp: DAMP,
            refit_scales: true,
            rounds: 3,
        }
    }
}

/// [`quantize_q4_with`] with the default options.
pub fn quantize_q4(data: &[f32], rows: usize, cols: usize, h: &Hessian) -> QuantMatrix {
    quantize_q4_with(data, rows, cols, h, GptqOptions::default())
}

/// The f16 scale of a zero-padded group, as [`super::BlockQ4::quantize`] chooses it.
fn group_scale(w: &[f64]) -> f16 {
    let mut g = [0f32; GROUP];
    for (k, v) in w.iter().enumerate() {
        g[k] = *v as f32;
    }
    f16::from_f32(q4_scale(&g))
}

/// `sum a[k] * b[k]` in f64 with four accumulators (vectorises).
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `(w - q)^T H (w - q)` for the row `w` and its decoded values `q`.
fn quadratic_error(h: &[f64], w: &[f64], q: &[f64]) -> f64 {
    let n = w.len();
    let e: Vec<f64> = w.iter().zip(q).map(|(a, b)| a - b).collect();
    (0..n)
        .map(|i| e[i] * dot64(&h[i * n..(i + 1) * n], &e))
        .sum()
}

/// The group scales minimising `(w - q(s))^T H (w - q(s))` for fixed codes `c` (`q_k = s_g c_k`,
/// `g` the group of column `k`): the normal equations `A s = b` with
/// `A[g, h] = sum_{k in g, l in h} c_k H[k, l] c_l` and `b[g] = sum_{k in g} c_k (H w)_k`, plus a
/// tiny ridge towards the current scales `s0` (a group whose codes are all zero has no say).
/// `None` if the system is singular anyway.
fn refit(h: &[f64], w: &[f64], c: &[f64], s0: &[f64]) -> Option<Vec<f64>> {
    let n = w.len();
    let nb = s0.len();
    // t[k * nb + g] = sum_{l in g} H[k, l] c_l, and H w.
    let mut t = vec![0f64; n * nb];
    let mut hw = vec![0f64; n];
    for k in 0..n {
        let hk = &h[k * n..(k + 1) * n];
        for (g, (hg, cg)) in hk.chunks(GROUP).zip(c.chunks(GROUP)).enumerate() {
            t[k * nb + g] = dot64(hg, cg);
        }
        hw[k] = dot64(hk, w);
    }
    let mut a = vec![0f64; nb * nb];
    let mut b = vec![0f64; nb];
    for k in 0..n {
        let g = k / GROUP;
        for hh in 0..nb {
            a[g * nb + hh] += c[k] * t[k * nb + hh];
        }
        b[g] += c[k] * hw[k];
    }
    let trace = (0..nb).map(|g| a[g * nb + g]).sum::<f64>() / nb as f64;
    for g in 0..nb {
        let ridge = 1e-9 * trace.max(f64::MIN_POSITIVE);
        a[g * nb + g] += ridge;
        b[g] += ridge * s0[g];
    }
    let l = cholesky(&a, nb)?;
    // L y = b, then L^T s = y.
    let mut y = vec![0f64; nb];
    for i in 0..nb {
        let s: f64 = (0..i).map(|k| l[i * nb + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * nb + i];
    }
    let mut x = vec![0f64; nb];
    for i in (0..nb).rev() {
        let s: f64 = (i + 1..nb).map(|k| l[k * nb + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * nb + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// GPTQ's column loop over one row `w0` with `u` the upper Cholesky factor of `H^-1`: writes the
/// codes, and the group scales unless `keep_scales`.
fn gptq_row(u: &[f64], w0: &[f64], codes: &mut [u8], scales: &mut [u16], keep_scales: bool) {
    let cols = w0.len();
    let mut w = w0.to_vec();
    let (mut d, mut inv) = (0f32, 0f32);
    for i in 0..cols {
        if i.is_multiple_of(GROUP) {
            if !keep_scales {
                // The group's scale, from the weights as updated by the errors of all earlier
                // columns (the group's own later columns still move a little, which clamping
                // to the code range absorbs).
                scales[i / GROUP] = group_scale(&w[i..(i + GROUP).min(cols)]).to_bits();
            }
            d = f16::from_bits(scales[i / GROUP]).to_f32();
            inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        }
        // Exactly BlockQ4::quantize's rounding, so the decoded value is d * (code - 8).
        let code = ((w[i] as f32 * inv).round() + 8.0).clamp(0.0, 15.0);
        codes[i] = code as u8;
        let deq = f64::from(d * (code - 8.0));
        let err = (w[i] - deq) / u[i * cols + i];
        let urow = &u[i * cols + i + 1..(i + 1) * cols];
        for (wj, &uij) in w[i + 1..].iter_mut().zip(urow) {
            *wj -= err * uij;
        }
    }
}

/// Quantize a row-major f32 matrix `[rows, cols]` to q4 with GPTQ, given the Hessian of its
/// inputs (`h.dim == cols`). Falls back to round-to-nearest ([`QuantMatrix::quantize`]) when there
/// is no calibration data or the dampened Hessian is numerically not positive definite even with
/// 100x the dampening.
pub fn quantize_q4_with(
    data: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    opts: GptqOptions,
) -> QuantMatrix {
    assert_eq!(data.len(), rows * cols, "gptq: data is not [rows, cols]");
    assert_eq!(h.dim, cols, "gptq: Hessian width differs from the matrix");
    let factored = (h.samples > 0)
        .then(|| {
            [opts.damp, opts.damp * 10.0, opts.damp * 100.0]
                .into_iter()
                .find_map(|damp| {
                    let hd = h.dampened(damp);
                    inverse_upper_cholesky(&hd, cols).map(|u| (hd, u))
                })
        })
        .flatten();
    let Some((hd, u)) = factored else {
        return QuantMatrix::quantize(Scheme::Q4, data, rows, cols);
    };
    let nb = blocks_per_row(cols);
    let mut qs = vec![0u8; rows * nb * GROUP / 2];
    let mut scales = vec![0u16; rows * nb];
    let row_job = |r: usize, codes_out: &mut [u8], scales_out: &mut [u16]| {
        let w0: Vec<f64> = data[r * cols..(r + 1) * cols]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        // Padding past `cols` keeps code 8, which decodes to 0 (as round-to-nearest's zero padding).
        let mut codes = vec![8u8; nb * GROUP];
        // The best (output error, codes, scales) of the rounds so far.
        let mut best: Option<(f64, Vec<u8>, Vec<u16>)> = None;
        for round in 0..opts.rounds.max(1) {
            // Round 0 picks each group's scale when it starts; later rounds keep the refitted
            // scales and only choose the codes again.
            gptq_row(&u, &w0, &mut codes, scales_out, round > 0);
            if !opts.refit_scales {
                break;
            }
            let c: Vec<f64> = codes[..cols].iter().map(|&q| f64::from(q) - 8.0).collect();
            let decode = |s: &[u16]| -> Vec<f64> {
                (0..cols)
                    .map(|k| f64::from(f16::from_bits(s[k / GROUP]).to_f32()) * c[k])
                    .collect()
            };
            let s0: Vec<f64> = scales_out
                .iter()
                .map(|&b| f64::from(f16::from_bits(b).to_f32()))
                .collect();
            let mut e = quadratic_error(&hd, &w0, &decode(scales_out));
            if let Some(s) = refit(&hd, &w0, &c, &s0) {
                let new: Vec<u16> = s
                    .iter()
                    .map(|&v| f16::from_f32(v as f32).to_bits())
                    .collect();
                // Keep the refit only where it helps after rounding the scales to f16.
                let e_new = quadratic_error(&hd, &w0, &decode(&new));
                if e_new < e {
                    scales_out.copy_from_slice(&new);
                    e = e_new;
                }
            }
            if best.as_ref().is_none_or(|b| e < b.0) {
                best = Some((e, codes.clone(), scales_out.to_vec()));
            }
        }
        if let Some((_, c, s)) = best {
            codes = c;
            scales_out.copy_from_slice(&s);
        }
        for (b, out) in codes_out.chunks_exact_mut(GROUP / 2).enumerate() {
            let c = &codes[b * GROUP..(b + 1) * GROUP];
            for (k, byte) in out.iter_mut().enumerate() {
                *byte = c[k] | (c[k + GROUP / 2] << 4);
            }
        }
    };
    let (qrow, srow) = (nb * GROUP / 2, nb);
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        qs.par_chunks_mut(qrow.max(1))
            .zip(scales.par_chunks_mut(srow.max(1)))
            .enumerate()
            .for_each(|(r, (q, s))| row_job(r, q, s));
    }
    #[cfg(target_arch = "wasm32")]
    qs.chunks_mut(qrow.max(1))
        .zip(scales.chunks_mut(srow.max(1)))
        .enumerate()
        .for_each(|(r, (q, s))| row_job(r, q, s));
    QuantMatrix {
        scheme: Scheme::Q4,
        rows,
        cols,
        qs,
        scales,
    }
}

/// The Hessians of one checkpoint's quantizable weights, by tensor name.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub hessians: std::collections::HashMap<String, Hessian>,
    pub scenes: usize,
}

impl Calibration {
    /// What the safetensors metadata records (`spec_llava.calibration`).
    pub fn describe(&self) -> String {
        format!("gptq, {} scenes", self.scenes)
    }
}
