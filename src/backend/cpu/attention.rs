//! Scaled dot-product attention on the CPU (eager transformers' `softmax(q k^T / sqrt(d)) v` per
//! head, grouped-query heads sharing their key/value head), for the decoder's cached attention and
//! the vision tower's.
//!
//! The keys come transposed (`[kv_heads * d, stride]`: the decoder's cache keeps them so, the
//! vision tower transposes them per call), so a query's scores are one multiply and one add per
//! dimension across a block of 64 (then 16) keys held in registers, instead of a dot product and
//! its horizontal sum per key. Every score is summed over the dimensions in order
//! (a product rounded, then added) and every output dimension over the keys in order, whatever the
//! number of queries: a batch of queries (a verified tree) gets bit for bit what each query alone
//! gets. The lanes of a vector hold different keys (or dimensions), never parts of one sum, so the
//! AVX-512 and AVX copies of the loops (chosen at run time) compute exactly what the SSE2
//! baseline does. Keys after a query's last visible key are not scored at all (a causal prefill
//! row sees half the keys on average).

use super::{for_rows, CpuTensor};
use crate::backend::math::softmax_in_place;
use crate::backend::Heads;

/// Keys per register block of scores.
const BLOCK: usize = 16;

/// `fn $name(args)` calling `$inner(args)` compiled for the widest vectors the CPU has (AVX-512F,
/// AVX, else the SSE2 baseline): lanes hold different keys or dimensions, never parts of one sum,
/// so every width computes the same numbers.
macro_rules! widest {
    ($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) => $inner:ident) => {
        $(#[$doc])*
        fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: $t),*) {
                    $inner($($a),*)
                }
                #[target_feature(enable = "avx")]
                unsafe fn avx($($a: $t),*) {
                    $inner($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F is present.
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx") {
                    // SAFETY: AVX is present.
                    return unsafe { avx($($a),*) };
                }
            }
            $inner($($a),*)
        }
    };
}

/// Keys `[m, kv_dim]` transposed to `[kv_dim, m]`.
pub(super) fn transpose(keys: &[f32], kv_dim: usize, m: usize) -> Vec<f32> {
    let mut kt = vec![0f32; kv_dim * m];
    for (j, key) in keys.chunks(kv_dim).take(m).enumerate() {
        for (c, &v) in key.iter().enumerate() {
            kt[c * m + j] = v;
        }
    }
    kt
}

/// Attention of `n` queries over `m` keys, where `visible(i, j)` says whether query `i` sees key
/// `j`. q: `[n, q_heads*d]`; kt: the keys transposed, `[kv_heads*d, stride]` (key `j` in column
/// `j`); values: `[m, kv_heads*d]`.
pub(super) fn attend(
    q: &CpuTensor,
    (kt, stride): (&[f32], usize),
    values: &[f32],
    m: usize,
    heads: Heads,
    visible: impl Fn(usize, usize) -> bool + Sync + Send,
) -> CpuTensor {
    let d = heads.head_dim;
    let group = heads.q_heads / heads.kv_heads;
    let kv_dim = heads.kv_heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; q.rows * heads.q_heads * d];
    // One output row per (query, head).
    for_rows(&mut out, d, 2 * m * d, |row, o| {
        let (i, h) = (row / heads.q_heads, row % heads.q_heads);
        let kvh = h / group;
        let qv = &q.data[i * q.cols + h * d..i * q.cols + (h + 1) * d];
        // Keys after the last visible one are skipped: they would add exp(-inf) = 0 to the
        // softmax's sum and nothing to the output, so the result is the same bit for bit.
        let seen = (0..m).rev().find(|&j| visible(i, j)).map_or(0, |j| j + 1);
        let mut scores = vec![0f32; seen];
        head_scores(qv, &kt[kvh * d * stride..], stride, &mut scores);
        for (j, s) in scores.iter_mut().enumerate() {
            *s = match visible(i, j) {
                true => *s * scale,
                false => f32::NEG_INFINITY,
            };
        }
        softmax_in_place(&mut scores);
        weighted_values(&scores, &values[kvh * d..], kv_dim, o);
    });
    CpuTensor {
        data: out,
        rows: q.rows,
        cols: heads.q_heads * d,
    }
}

widest!(
    /// `scores[j] = q . key_j` for the keys of one head, transposed (`kt: [d, stride]`).
    fn head_scores(q: &[f32], kt: &[f32], stride: usize, scores: &mut [f32]) => head_scores_in
);

#[inline(always)]
fn head_scores_in(q: &[f32], kt: &[f32], m: usize, scores: &mut [f32]) {
    // Wide blocks first (independent sums in flight while each waits for its adds), then
    // narrower ones, then key by key: each key's sum is the same chain of steps in every case.
    let j = score_blocks::<{ 4 * BLOCK }>(q, kt, m, scores, 0);
    let j = score_blocks::<BLOCK>(q, kt, m, scores, j);
    for (jj, s) in scores.iter_mut().enumerate().skip(j) {
        let mut a = 0f32;
        for (e, &qe) in q.iter().enumerate() {
            a += qe * kt[e * m + jj];
        }
        *s = a;
    }
}

/// Scores of keys `j..` in blocks of `B` held in registers; returns the first key not done.
#[inline(always)]
fn score_blocks<const B: usize>(
    q: &[f32],
    kt: &[f32],
    m: usize,
    scores: &mut [f32],
    mut j: usize,
) -> usize {
    while j + B <= scores.len() {
        let mut acc = [0f32; B];
        for (e, &qe) in q.iter().enumerate() {
            for (a, &k) in acc.iter_mut().zip(&kt[e * m + j..][..B]) {
                *a += qe * k;
            }
        }
        scores[j..j + B].copy_from_slice(&acc);
        j += B;
    }
    j
}

widest!(
    /// `o += p_j * value_j` over the keys in order (`values` from the head's first value, rows
    /// `stride` apart); keys of probability 0 (masked) are skipped, which adds nothing anyway.
    fn weighted_values(p: &[f32], values: &[f32], stride: usize, o: &mut [f32]) => weighted_values_in
);

#[inline(always)]
fn weighted_values_in(p: &[f32], values: &[f32], stride: usize, o: &mut [f32]) {
    let d = o.len();
    for (j, &p) in p.iter().enumerate() {
        if p != 0.0 {
            for (o, v) in o.iter_mut().zip(&values[j * stride..j * stride + d]) {
                *o += p * v;
            }
        }
    }
}
