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

use super::CpuTensor;
use crate::backend::math::softmax_in_place;
use crate::backend::Heads;

/// Keys per register block of scores.
const BLOCK: usize = 16;

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

/// Queries attended together per task: the rows of their heads that share a key/value head
/// take each value row loaded once, and their output sums (independent of each other) overlap
/// instead of each waiting on its own previous add: one query's head alone is bound by that wait.
const QUERIES: usize = 4;

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
    let width = heads.q_heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    // One task per block of QUERIES queries and key/value head: its `rows` are (query, head)
    // pairs, each row's probabilities padded with zeros to the block's longest (`seen`).
    let task = |block: usize, kvh: usize| -> Vec<f32> {
        let queries = block * QUERIES..((block + 1) * QUERIES).min(q.rows);
        let rows: Vec<(usize, usize)> = queries
            .clone()
            .flat_map(|i| (kvh * group..(kvh + 1) * group).map(move |h| (i, h)))
            .collect();
        // Keys after a query's last visible one are skipped: they would add exp(-inf) = 0 to
        // the softmax's sum and nothing to the output, so the result is the same bit for bit.
        // Once per query (its heads share it), not per head and again per row.
        let seen: Vec<usize> = queries
            .clone()
            .map(|i| (0..m).rev().find(|&j| visible(i, j)).map_or(0, |j| j + 1))
            .collect();
        let longest = seen.iter().copied().max().unwrap_or(0);
        let mut probs = vec![0f32; rows.len() * longest];
        for (&(i, h), p) in rows.iter().zip(probs.chunks_mut(longest.max(1))) {
            let scores = &mut p[..seen[i - queries.start]];
            let qv = &q.data[i * q.cols + h * d..i * q.cols + (h + 1) * d];
            head_scores(qv, &kt[kvh * d * stride..], stride, scores);
            for (j, s) in scores.iter_mut().enumerate() {
                *s = match visible(i, j) {
                    true => *s * scale,
                    false => f32::NEG_INFINITY,
                };
            }
            softmax(scores);
        }
        let mut o = vec![0f32; rows.len() * d];
        weighted_values(&probs, longest, &values[kvh * d..], kv_dim, &mut o);
        o
    };
    let blocks = q.rows.div_ceil(QUERIES);
    let units: Vec<(usize, usize)> = (0..blocks)
        .flat_map(|b| (0..heads.kv_heads).map(move |kvh| (b, kvh)))
        .collect();
    let run = |&(b, kvh): &(usize, usize)| task(b, kvh);
    #[cfg(not(target_arch = "wasm32"))]
    let results: Vec<Vec<f32>> = if q.rows * heads.q_heads * 2 * m * d >= super::PARALLEL_WORK {
        use rayon::prelude::*;
        units.par_iter().map(run).collect()
    } else {
        units.iter().map(run).collect()
    };
    #[cfg(target_arch = "wasm32")]
    let results: Vec<Vec<f32>> = units.iter().map(run).collect();
    let mut out = vec![0f32; q.rows * width];
    for (&(b, kvh), o) in units.iter().zip(&results) {
        // The task's rows, query by query: each query's `group` heads are adjacent in `out`.
        for (qi, heads_out) in o.chunks(group * d).enumerate() {
            let at = (b * QUERIES + qi) * width + kvh * group * d;
            out[at..at + group * d].copy_from_slice(heads_out);
        }
    }
    CpuTensor {
        data: out,
        rows: q.rows,
        cols: width,
    }
}

widest!(
    /// [`softmax_in_place`] compiled for the widest vectors (its exponentials vectorize).
    fn softmax(scores: &mut [f32]) => softmax_in_place
);

widest!(
    /// `scores[j] = q . key_j` for the keys of one head, transposed (`kt: [d, stride]`).
    fn head_scores(q: &[f32], kt: &[f32], stride: usize, scores: &mut [f32]) => head_scores_in
);

#[inline(always)]
fn head_scores_in(q: &[f32], kt: &[f32], m: usize, scores: &mut [f32]) {
    // Wide blocks first (independent sums in flight while each waits for its adds), then
    // narrower ones, then key by key: each key's sum is the same chain of steps in every case.
    let j = score_blocks::<{ 4 * BLOCK }>(q, kt, m, scores, 0);
    let mut j = score_blocks::<BLOCK>(q, kt, m, scores, j);
    // The last keys (fewer than a block) as a whole block where the columns after them exist
    // (stale or unused slots of the cache, scored and dropped): one key by one, with its stride
    // through memory, cost more than all the blocks before it.
    let left = scores.len() - j;
    if left > 0 && j + BLOCK <= m {
        let mut block = [0f32; BLOCK];
        score_blocks::<BLOCK>(q, &kt[j..], m, &mut block, 0);
        scores[j..].copy_from_slice(&block[..left]);
        j = scores.len();
    }
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
    /// For each row `r` (`p`: rows of `m` probabilities; `o`: rows of `d`), `o_r += p_rj *
    /// value_j` over the keys in order (`values` from the head's first value, rows `stride`
    /// apart); keys of probability 0 (masked, or past the row's last visible key) are skipped,
    /// which adds nothing anyway. Rows are independent: each gets what it would alone.
    fn weighted_values(p: &[f32], m: usize, values: &[f32], stride: usize, o: &mut [f32])
        => weighted_values_in
);

#[inline(always)]
fn weighted_values_in(p: &[f32], m: usize, values: &[f32], stride: usize, o: &mut [f32]) {
    if m == 0 {
        return;
    }
    let rows = p.len() / m;
    let d = o.len() / rows.max(1);
    // Whole chunks of LANES dimensions with the sums in registers, 8 (then fewer) rows at once.
    let mut r = 0;
    while r < rows {
        let at = (p, m, values, stride, d, r);
        r += match rows - r {
            8.. => in_registers::<8>(at, o),
            4..=7 => in_registers::<4>(at, o),
            2..=3 => in_registers::<2>(at, o),
            _ => in_registers::<1>(at, o),
        };
    }
    // The dimensions after the last whole chunk: key j for every row before key j + 1 for any.
    let tail = d / LANES * LANES..d;
    if tail.is_empty() {
        return;
    }
    for j in 0..m {
        let v = &values[j * stride + tail.start..j * stride + tail.end];
        for (r, o) in o.chunks_mut(d).enumerate() {
            let p = p[r * m + j];
            if p != 0.0 {
                for (o, v) in o[tail.clone()].iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    }
}

/// Dimensions summed in registers by [`weighted_values_in`]: a chunk per accumulator.
const LANES: usize = 16;

/// Rows `r0..r0 + R` of [`weighted_values_in`] over its whole chunks of [`LANES`] dimensions,
/// each chunk's `R` sums held in registers across all keys (in memory, each row's sum would wait
/// on its own store of the key before). Returns `R`.
#[inline(always)]
fn in_registers<const R: usize>(
    (p, m, values, stride, d, r0): (&[f32], usize, &[f32], usize, usize, usize),
    o: &mut [f32],
) -> usize {
    for c in (0..d / LANES).map(|c| c * LANES) {
        let mut acc = [[0f32; LANES]; R];
        for (a, r) in acc.iter_mut().zip(r0..) {
            a.copy_from_slice(&o[r * d + c..r * d + c + LANES]);
        }
        for j in 0..m {
            let v = &values[j * stride + c..j * stride + c + LANES];
            for (a, r) in acc.iter_mut().zip(r0..) {
                let p = p[r * m + j];
                if p != 0.0 {
                    for (a, v) in a.iter_mut().zip(v) {
                        *a += p * v;
                    }
                }
            }
        }
        for (a, r) in acc.iter().zip(r0..) {
            o[r * d + c..r * d + c + LANES].copy_from_slice(a);
        }
    }
    R
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::bench::values as random;

    /// Attention written out element by element in the order the module docs give.
    fn written_out(
        q: &CpuTensor,
        k: &[f32],
        v: &[f32],
        m: usize,
        heads: Heads,
        visible: &dyn Fn(usize, usize) -> bool,
    ) -> Vec<f32> {
        let d = heads.head_dim;
        let (group, kv_dim) = (heads.q_heads / heads.kv_heads, heads.kv_heads * d);
        let mut out = vec![0f32; q.rows * heads.q_heads * d];
        for i in 0..q.rows {
            for h in 0..heads.q_heads {
                let kvh = h / group;
                let seen = (0..m).rev().find(|&j| visible(i, j)).map_or(0, |j| j + 1);
                let mut p: Vec<f32> = (0..seen)
                    .map(|j| {
                        let mut a = 0f32;
                        for e in 0..d {
                            a += q.data[i * q.cols + h * d + e] * k[j * kv_dim + kvh * d + e];
                        }
                        match visible(i, j) {
                            true => a * (1.0 / (d as f32).sqrt()),
                            false => f32::NEG_INFINITY,
                        }
                    })
                    .collect();
                softmax_in_place(&mut p);
                let o = &mut out[(i * heads.q_heads + h) * d..][..d];
                for (j, &p) in p.iter().enumerate() {
                    if p != 0.0 {
                        for e in 0..d {
                            o[e] += p * v[j * kv_dim + kvh * d + e];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn queries_together_get_what_each_gets_alone_and_the_written_out_order_gives() {
        // d = 20: not a whole vector; 7 queries: a partial block; 150 keys: all score blocks.
        let heads = Heads {
            q_heads: 6,
            kv_heads: 2,
            head_dim: 20,
        };
        let (n, m, kv_dim) = (7, 150, 40);
        let q = CpuTensor {
            data: random(n * 120, 1),
            rows: n,
            cols: 120,
        };
        let (k, v) = (random(m * kv_dim, 2), random(m * kv_dim, 3));
        let kt = transpose(&k, kv_dim, m);
        // A tree-like mask: query 3 sees nothing, the others a scattered prefix; their last keys
        // are scored as a block over the columns after them, except query 6's, which sees the
        // last key (no columns after it: key by key).
        let visible =
            |i: usize, j: usize| i != 3 && (j <= 100 + 7 * i || i == 6) && (j * (i + 1)) % 5 != 1;
        let all = attend(&q, (&kt, m), &v, m, heads, visible);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&all.data),
            bits(&written_out(&q, &k, &v, m, heads, &visible))
        );
        for i in 0..n {
            let one = CpuTensor {
                data: q.data[i * 120..(i + 1) * 120].to_vec(),
                rows: 1,
                cols: 120,
            };
            let alone = attend(&one, (&kt, m), &v, m, heads, |_, j| visible(i, j));
            assert_eq!(
                bits(&alone.data),
                bits(&all.data[i * 120..(i + 1) * 120]),
                "query {i}"
            );
        }
        assert!(all.data[3 * 120..4 * 120].iter().all(|&x| x == 0.0));
    }
}
