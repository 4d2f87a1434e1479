//! Matrices stored as column panels, and `linear` over them: 16 outputs per vector register, each
//! output summed along `k` in plain order, the classic GEMM micro-kernel (BLIS, Goto & van de
//! Geijn 2008: a register block of rows × outputs, weights packed so that a block's weights are
//! one contiguous stream).
//!
//! # Why a second layout
//!
//! The lanes order ([`super::tile`]) puts 16 consecutive `k` of one output in a register, so every
//! step loads a chunk of x *and* a chunk of w and every output ends in a 16-lane sum. Here a
//! register holds one `k` of 16 consecutive outputs: a step loads one chunk of weights per 16
//! outputs and broadcasts one element of x per row, and nothing is summed across lanes. Measured
//! here on one core (a 32×1024×1024 f32 product): 8 rows × 3 panels reach ~130 GFLOP/s, the lanes
//! kernel's best tile 45-70.
//!
//! # Layout and order
//!
//! A matrix `[n, k]` becomes `ceil(n / 16)` panels of `[k][16]`: element `(j, e)` at
//! `(j / 16) * k * 16 + e * 16 + j % 16`, the last panel's missing outputs zero. Each output is
//! `fma(x[k-1], w[k-1], ... fma(x[1], w[1], fma(x[0], w[0], 0)))`, one fused multiply-add per
//! element in order of `k`, whatever the tile or the number of rows: a batch equals its rows one by
//! one bit for bit, as [`super::tile`]'s orders. f16 panels are widened in registers (exact).
//!
//! Panels are used where the CPU has the 16-lane kernel (AVX-512F with VL, F16C: [`applies`]), for
//! f32 and f16 matrices; q8/q4 blocks keep their own layout and the lanes order (a matrix's order
//! is fixed by its storage, so each matrix is still batch-invariant). Elsewhere (AVX2, wasm)
//! matrices stay row-major.

use std::sync::OnceLock;

use half::f16;

use super::tile::{order, Elem, Order};

/// Outputs per panel: one AVX-512 register of f32.
pub const WIDTH: usize = 16;

/// Multiply-adds per task, about (as [`super::matmul`]'s).
const PER_TASK_WORK: usize = 1 << 18;

/// Whether this process stores f32/f16 matrices as panels: the CPU has the 16-lane kernel, and
/// neither `SPEC_LLAVA_CPU_PANELS=0` nor `SPEC_LLAVA_CPU_KERNEL` (naming a lanes order, to compare
/// the orders) says otherwise.
pub fn applies() -> bool {
    static APPLIES: OnceLock<bool> = OnceLock::new();
    *APPLIES.get_or_init(|| {
        let off = std::env::var("SPEC_LLAVA_CPU_PANELS").is_ok_and(|v| v == "0")
            || std::env::var("SPEC_LLAVA_CPU_KERNEL").is_ok();
        !off && order() == Order::Lanes16Fused && Order::Lanes16Fused.has_simd()
    })
}

/// The panels' values: f32, or f16 bits widened in registers.
#[derive(Debug, Clone, PartialEq)]
pub enum PanelData {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

/// A matrix `[n, k]` as column panels (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Panels {
    pub data: PanelData,
    pub n: usize,
    pub k: usize,
}

/// Row-major `[n, k]` values into panels, the padding outputs `T::default()` (zero).
fn pack<T: Copy + Default>(rows: &[T], n: usize, k: usize) -> Vec<T> {
    debug_assert_eq!(rows.len(), n * k);
    let mut out = vec![T::default(); n.div_ceil(WIDTH) * k * WIDTH];
    for (j, row) in rows.chunks(k.max(1)).enumerate().take(n) {
        let base = j / WIDTH * k * WIDTH + j % WIDTH;
        for (e, &v) in row.iter().enumerate() {
            out[base + e * WIDTH] = v;
        }
    }
    out
}

impl Panels {
    pub fn f32(rows: &[f32], n: usize, k: usize) -> Self {
        Panels {
            data: PanelData::F32(pack(rows, n, k)),
            n,
            k,
        }
    }

    /// From row-major f16 bits.
    pub fn f16(rows: &[u16], n: usize, k: usize) -> Self {
        Panels {
            data: PanelData::F16(pack(rows, n, k)),
            n,
            k,
        }
    }

    /// Row `j` (`dst.len() == k`), exactly (f16 widened).
    pub fn row(&self, j: usize, dst: &mut [f32]) {
        let base = j / WIDTH * self.k * WIDTH + j % WIDTH;
        for (e, d) in dst.iter_mut().enumerate() {
            *d = match &self.data {
                PanelData::F32(v) => v[base + e * WIDTH],
                PanelData::F16(v) => f16::from_bits(v[base + e * WIDTH]).to_f32(),
            };
        }
    }

    /// Every value, row-major `[n, k]`.
    pub fn values(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for (j, row) in out.chunks_mut(self.k.max(1)).enumerate().take(self.n) {
            self.row(j, row);
        }
        out
    }

    /// Bytes holding the values (the last panel's padding included).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            PanelData::F32(v) => v.len() * 4,
            PanelData::F16(v) => v.len() * 2,
        }
    }

    /// Address of the stored values (identifies the matrix while it lives).
    pub fn address(&self) -> usize {
        match &self.data {
            PanelData::F32(v) => v.as_ptr() as usize,
            PanelData::F16(v) => v.as_ptr() as usize,
        }
    }
}

/// `x W^T + b` for `x: [m, k]` (row-major); `[m, n]` row-major.
pub fn linear(x: &[f32], m: usize, w: &Panels, bias: Option<&[f32]>) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    debug_assert_eq!(x.len(), m * k);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let count = n.div_ceil(WIDTH);
    // Panels per task: whole tiles of 3 panels (a task of one panel would run 8×1 tiles, a third
    // of the work per weight load).
    let per_task = (PER_TASK_WORK / (m * k * WIDTH).max(1))
        .next_multiple_of(3)
        .clamp(3, count.next_multiple_of(3));
    // Panel-major output `[panel][m][16]`: each task owns a contiguous block of it.
    let mut t = vec![0f32; count * m * WIDTH];
    let task = |bi: usize, out: &mut [f32]| {
        let p0 = bi * per_task;
        let pn = out.len() / (m * WIDTH);
        match &w.data {
            PanelData::F32(v) => block(x, m, k, &v[p0 * k * WIDTH..(p0 + pn) * k * WIDTH], out),
            PanelData::F16(v) => block(x, m, k, &v[p0 * k * WIDTH..(p0 + pn) * k * WIDTH], out),
        }
    };
    super::matmul::for_blocks(&mut t, per_task * m * WIDTH, task);
    let mut data = vec![0f32; m * n];
    for (i, row) in data.chunks_mut(n).enumerate() {
        for (p, cols) in row.chunks_mut(WIDTH).enumerate() {
            let at = (p * m + i) * WIDTH;
            cols.copy_from_slice(&t[at..at + cols.len()]);
        }
        match bias {
            Some(b) => row.iter_mut().zip(b).for_each(|(v, b)| *v += b),
            // As the lanes path: a bias of zero (turns -0 into +0, the same for every row).
            None => row.iter_mut().for_each(|v| *v += 0.0),
        }
    }
    data
}

/// The `out.len() / (m * 16)` panels of `panels` against every row of x, into `out` (`[panel][m][16]`):
/// 3 panels × 8 rows at a time (24 accumulators, 3 weight registers, a broadcast), then fewer.
fn block<W: Elem>(x: &[f32], m: usize, k: usize, panels: &[W], out: &mut [f32]) {
    let count = out.len() / (m * WIDTH);
    assert!(x.len() >= m * k && panels.len() >= count * k * WIDTH);
    let mut p = 0;
    while p < count {
        let np = (count - p).min(3);
        let mut i = 0;
        while i < m {
            let nr = match m - i {
                r if r >= 8 => 8,
                r if r >= 4 => 4,
                r if r >= 2 => 2,
                _ => 1,
            };
            let at = Tile { i, p, m, k };
            match (nr, np) {
                (8, 3) => tile::<8, 3, W>(at, x, panels, out),
                (8, 2) => tile::<8, 2, W>(at, x, panels, out),
                (8, _) => tile::<8, 1, W>(at, x, panels, out),
                (4, 3) => tile::<4, 3, W>(at, x, panels, out),
                (4, 2) => tile::<4, 2, W>(at, x, panels, out),
                (4, _) => tile::<4, 1, W>(at, x, panels, out),
                (2, 3) => tile::<2, 3, W>(at, x, panels, out),
                (2, 2) => tile::<2, 2, W>(at, x, panels, out),
                (2, _) => tile::<2, 1, W>(at, x, panels, out),
                (_, 3) => tile::<1, 3, W>(at, x, panels, out),
                (_, 2) => tile::<1, 2, W>(at, x, panels, out),
                (_, _) => tile::<1, 1, W>(at, x, panels, out),
            }
            i += nr;
        }
        p += np;
    }
}

/// Where a tile sits: rows `i..i + R` of x (`[m, k]`), panels `p..p + P` of the block.
#[derive(Clone, Copy)]
struct Tile {
    i: usize,
    p: usize,
    m: usize,
    k: usize,
}

/// One tile: its AVX-512 kernel where the CPU has it, else the portable one (same numbers).
#[inline(always)]
fn tile<const R: usize, const P: usize, W: Elem>(at: Tile, x: &[f32], w: &[W], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Order::Lanes16Fused.has_simd() {
        // SAFETY: AVX-512F, VL and F16C are present; `block` checked the bounds of x and the
        // panels, and the tile's rows and panels lie inside them.
        return unsafe { x86::tile::<R, P, W>(at, x, w, out) };
    }
    portable::<R, P, W>(at, x, w, out)
}

/// The tile in plain Rust: one fused multiply-add per element, in order of `k`.
fn portable<const R: usize, const P: usize, W: Elem>(
    at: Tile,
    x: &[f32],
    w: &[W],
    out: &mut [f32],
) {
    let Tile { i, p, m, k } = at;
    let mut acc = [[[0f32; WIDTH]; P]; R];
    for e in 0..k {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = x[(i + r) * k + e];
            for (q, acc) in acc.iter_mut().enumerate() {
                let ws = &w[((p + q) * k + e) * WIDTH..][..WIDTH];
                for (a, wv) in acc.iter_mut().zip(ws) {
                    *a = xv.mul_add(wv.value(), *a);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, acc) in acc.iter().enumerate() {
            out[((p + q) * m + i + r) * WIDTH..][..WIDTH].copy_from_slice(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Elem, Tile, WIDTH};

    /// [`super::portable`] with one register per 16 outputs of a row: each step loads `P` weight
    /// chunks and broadcasts one element of x per row.
    ///
    /// # Safety
    /// AVX-512F, VL and F16C present; rows `i..i + R` of x and panels `p..p + P` of w in bounds,
    /// and `out` holds `[panel][m][16]` for them.
    #[target_feature(enable = "avx512f,avx512vl,f16c,fma")]
    pub(super) unsafe fn tile<const R: usize, const P: usize, W: Elem>(
        at: Tile,
        x: &[f32],
        w: &[W],
        out: &mut [f32],
    ) {
        let Tile { i, p, m, k } = at;
        debug_assert!(x.len() >= (i + R) * k && w.len() >= (p + P) * k * WIDTH);
        debug_assert!(out.len() >= ((p + P - 1) * m + i + R) * WIDTH);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let xs = x.as_ptr().add(i * k);
        let ws = w.as_ptr().add(p * k * WIDTH);
        for e in 0..k {
            let mut wv = [_mm512_setzero_ps(); P];
            for (q, wv) in wv.iter_mut().enumerate() {
                *wv = W::v16(ws.add((q * k + e) * WIDTH));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xs.add(r * k + e));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_fmadd_ps(xv, *wv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                let at = ((p + q) * m + i + r) * WIDTH;
                _mm512_storeu_ps(out.as_mut_ptr().add(at), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// The order written out: one fused multiply-add per element, in order of `k`, then the bias.
    fn written_out(x: &[f32], w: &[f32], bias: f32) -> f32 {
        x.iter().zip(w).fold(0f32, |a, (x, w)| x.mul_add(*w, a)) + bias
    }

    #[test]
    fn panels_give_back_their_rows_and_values() {
        let (n, k) = (37, 5);
        let v = random(n * k, 1);
        let h: Vec<u16> = v.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let p = Panels::f32(&v, n, k);
        assert_eq!(p.values(), v);
        assert_eq!(p.stored_bytes(), 3 * WIDTH * k * 4);
        let mut row = vec![0f32; k];
        p.row(20, &mut row);
        assert_eq!(row, v[20 * k..21 * k]);
        let wide: Vec<f32> = h.iter().map(|&h| f16::from_bits(h).to_f32()).collect();
        assert_eq!(Panels::f16(&h, n, k).values(), wide);
    }

    #[test]
    fn every_row_and_output_follows_the_written_out_order_bit_for_bit() {
        // n = 37: a partial last panel; m up to 19: every row tile (8, 4, 2, 1); 50 panels: several
        // tasks when m is large.
        for (n, k) in [(37, 70), (800, 33), (5, 1)] {
            let v = random(n * k, n as u64);
            let h: Vec<u16> = v.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            let bias = random(n, 7);
            let cases = [
                (Panels::f32(&v, n, k), v.clone()),
                (
                    Panels::f16(&h, n, k),
                    h.iter().map(|&h| f16::from_bits(h).to_f32()).collect(),
                ),
            ];
            for (p, wide) in &cases {
                for m in [1, 2, 3, 7, 8, 19] {
                    let x = random(m * k, m as u64);
                    let got = linear(&x, m, p, Some(&bias));
                    for i in 0..m {
                        for j in 0..n {
                            let want = written_out(
                                &x[i * k..(i + 1) * k],
                                &wide[j * k..(j + 1) * k],
                                bias[j],
                            );
                            assert_eq!(got[i * n + j].to_bits(), want.to_bits(), "n{n} m{m}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_simd_tile_equals_the_portable_tile() {
        let (m, k) = (8, 45);
        let x = random(m * k, 3);
        let w = pack(&random(3 * WIDTH * k, 4), 3 * WIDTH, k);
        let at = Tile { i: 0, p: 0, m, k };
        let mut a = vec![0f32; 3 * m * WIDTH];
        let mut b = a.clone();
        tile::<8, 3, f32>(at, &x, &w, &mut a);
        portable::<8, 3, f32>(at, &x, &w, &mut b);
        assert_eq!(a, b);
    }
}
