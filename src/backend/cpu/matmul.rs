//! `linear` (`x W^T + b`) on the CPU: register tiles that reuse each weight load across rows of x,
//! weights read straight from their packed storage, and one fixed reduction order.
//!
//! Matrices stored as column panels (where the CPU has AVX-512) go to [`super::panel`]; this
//! module runs the row-major layout: every matrix on other CPUs (or with panels turned off), and
//! q8/q4 matrices whose rows end in a partial block.
//!
//! # Method
//!
//! The output `[m, n]` is split into blocks of weight rows (output columns), one task each (rayon
//! natively). A task reads its block of weight rows where they are stored: f32 in place; f16 (and
//! q8/q4 blocks on AVX-512) widened in registers as each chunk is loaded, for up to 32 rows of x;
//! otherwise widened a panel at a time into a small buffer ([`super::weight`]). It walks it in
//! register tiles of `R` rows of x × `C` weight rows (4×4 or 4×2, 2×8, 1×8, ...: [`super::tile`]):
//! every chunk of a weight row loaded into a register serves `R` rows of x, every chunk of x
//! serves `C` weight rows, and the `R * C` accumulators stay in registers for the whole reduction.
//!
//! # One reduction order: batch-invariant
//!
//! Every output element is reduced in the process's one order ([`super::tile::order`]: 8 or 16
//! lanes, fused multiply-adds where the CPU has them) whatever the tile or the number of rows,
//! then the bias is added. So a row's result does not depend on which other rows share the pass
//! (tree verification computes bit for bit the logits plain decoding would). Packed weights are
//! widened to exactly the f32 values [`crate::quant::WeightData::into_f32`] gives, so they compute
//! what their widened copy would.

use super::tile::{cols, f16_in_registers, order, Elem, Order};
use super::weight::{CpuData, CpuWeight};

/// Multiply-adds per task, about: handing a task to a sleeping thread costs tens of microseconds
/// on a loaded machine, so a task must be well above that.
const PER_TASK_WORK: usize = 1 << 18;

/// Rows of x up to which packed weights are widened in registers rather than into a panel: up to
/// 32 rows (tree verification, short prompts) widening each loaded chunk again for every 4 rows
/// measured 15-30% faster than widening a panel once (f16, q8, q4, hidden sizes 128 to 1024, on
/// AVX2 and AVX-512), as fast at 64 rows and above.
const FEW_ROWS: usize = 32;

/// `x W^T + b` for `x: [m, k]` (row-major) and `w: [n, k]`; `[m, n]` row-major.
pub fn linear(x: &[f32], m: usize, w: &CpuWeight, bias: Option<&[f32]>) -> Vec<f32> {
    let (n, k) = (w.shape[0], w.shape[1]);
    debug_assert_eq!(x.len(), m * k);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    if let CpuData::Panels(p) = &w.data {
        return super::panel::linear(x, m, p, bias);
    }
    // Weight rows per task: a multiple of 8 (the one-row tile), about PER_TASK_WORK or more.
    let per_task = (PER_TASK_WORK / (m * k).max(1))
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
            match &w.data {
                CpuData::F32(v) => block(x, m, k, &v[j0 * k..(j0 + jn) * k], jn, out),
                // Up to FEW_ROWS rows: f16 (and, with AVX-512, q8/q4 blocks) widened in registers
                // as each chunk is loaded; more rows share one widened panel.
                CpuData::F16(v) if m <= FEW_ROWS && f16_in_registers() => {
                    block(x, m, k, &v[j0 * k..(j0 + jn) * k], jn, out)
                }
                #[cfg(target_arch = "x86_64")]
                CpuData::Quant(q) if m <= FEW_ROWS && super::quant_tile::applies(q) => {
                    super::quant_tile::block(x, m, q, j0, jn, out)
                }
                _ => {
                    buf.resize(jn * k, 0f32);
                    w.widen_rows(j0..j0 + jn, k, &mut buf);
                    block(x, m, k, &buf, jn, out)
                }
            }
            for (j, col) in out.chunks_mut(m).enumerate() {
                let b = bias.map_or(0.0, |b| b[j0 + j]);
                for v in col {
                    *v += b;
                }
            }
        }
    };
    for_blocks(&mut t, per_task * m, task);
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

/// `task(b, block)` for the blocks of `size` elements of `out` (the last may be shorter): on
/// rayon's threads natively when there are several.
pub(super) fn for_blocks(out: &mut [f32], size: usize, task: impl Fn(usize, &mut [f32]) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    if out.len() > size {
        use rayon::prelude::*;
        out.par_chunks_mut(size)
            .enumerate()
            .for_each(|(b, block)| task(b, block));
        return;
    }
    #[cfg(target_arch = "wasm32")]
    let _ = size;
    task(0, out)
}

/// `out[j * m + i] = x_i . w_j` (no bias) for the `jn` weight rows of `panel` (`[jn, k]`).
///
/// Tiles as large as the registers allow: AVX-512 has 32 vector registers (a 4x4 tile holds 16
/// accumulators, 4 weight chunks and a chunk of x), AVX 16 (4x2: 8 + 2 + 1).
fn block<W: Elem>(x: &[f32], m: usize, k: usize, panel: &[W], jn: usize, out: &mut [f32]) {
    let wide = order() == Order::Lanes16Fused;
    let mut i = 0;
    while i < m {
        let xs = &x[i * k..];
        match (m - i, wide) {
            (1, _) => cols::<1, 8, W>(xs, i, k, panel, jn, m, out),
            (2, false) => cols::<2, 4, W>(xs, i, k, panel, jn, m, out),
            (2, true) => cols::<2, 8, W>(xs, i, k, panel, jn, m, out),
            (3, false) => cols::<3, 2, W>(xs, i, k, panel, jn, m, out),
            (3, true) => cols::<3, 4, W>(xs, i, k, panel, jn, m, out),
            (_, false) => cols::<4, 2, W>(xs, i, k, panel, jn, m, out),
            (_, true) => cols::<4, 4, W>(xs, i, k, panel, jn, m, out),
        }
        i += (m - i).min(4);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tile::tests::written_out;
    use super::*;
    use crate::quant::{Format, WeightData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
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
                // 40 rows: above FEW_ROWS, packed weights widened into panels.
                for m in [2, 3, 5, 8, 32, 40] {
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
    fn packed_weights_compute_what_their_widened_copy_and_the_written_out_order_do() {
        // k = 200: a partial block (widened into a panel); k = 256: whole blocks (q8/q4 decoded
        // in registers up to FEW_ROWS rows where the CPU has AVX-512, into panels above).
        for (n, k, m) in [(45, 200, 6), (45, 256, 3), (21, 256, 6), (21, 256, 40)] {
            let x = random(m * k, 9);
            for w in weights(n, k, 5) {
                let wide = w.values().into_owned();
                let got = linear(&x, m, &w, None);
                // The widened copy in the same layout (panels where the matrix is panels; rows
                // and the lanes order for q8/q4 rows that end in a partial block).
                let panels = matches!(w.data, CpuData::Panels(_));
                let copy = match panels {
                    true => CpuWeight::f32(wide.clone(), &[n, k]),
                    false => CpuWeight::f32_rows(wide.clone(), &[n, k]),
                };
                let widened = linear(&x, m, &copy, None);
                assert_eq!(
                    bits(&got),
                    bits(&widened),
                    "n{n} k{k} m{m} {}",
                    w.stored_bytes()
                );
                for i in 0..m {
                    for j in 0..n {
                        let (xi, wj) = (&x[i * k..(i + 1) * k], &wide[j * k..(j + 1) * k]);
                        let want = match panels {
                            true => xi.iter().zip(wj).fold(0f32, |a, (x, w)| x.mul_add(*w, a)),
                            false => written_out(order(), xi, wj),
                        } + 0.0;
                        assert_eq!(got[i * n + j].to_bits(), want.to_bits(), "({i}, {j})");
                    }
                }
            }
        }
    }
}
