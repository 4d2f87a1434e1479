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
//! one bit for bit, as [`super::tile`]'s orders. f16 panels are widened in registers (exact); q8/q4
//! blocks are regrouped by panel ([`PanelData::Quant`]) and decoded in registers, each weight `d *
//! q` as the checkpoint's block decodes it, so a packed matrix computes what its widened copy does.
//!
//! Panels are used where the CPU has the 16-lane kernel (AVX-512F with VL, F16C: [`applies`]), for
//! f32, f16 and q8/q4 matrices (q8/q4 with rows of whole blocks). Elsewhere (AVX2, wasm), or with
//! `SPEC_LLAVA_CPU_PANELS=0`, matrices stay row-major in the lanes order (a matrix's order is fixed
//! by its storage, so each matrix is batch-invariant).

use std::sync::OnceLock;

use half::f16;

use super::tile::{order, Elem, Order};
use crate::quant::{QuantMatrix, Scheme, GROUP};

/// Outputs per panel: one AVX-512 register of f32.
pub const WIDTH: usize = 16;

/// Multiply-adds per task, about (as [`super::matmul`]'s).
const PER_TASK_WORK: usize = 1 << 18;

/// Whether this process stores matrices as panels: the CPU has the 16-lane kernel, and neither
/// `SPEC_LLAVA_CPU_PANELS=0` nor `SPEC_LLAVA_CPU_KERNEL` (naming a lanes order, to compare the
/// orders) says otherwise.
pub fn applies() -> bool {
    static APPLIES: OnceLock<bool> = OnceLock::new();
    *APPLIES.get_or_init(|| {
        let off = std::env::var("SPEC_LLAVA_CPU_PANELS").is_ok_and(|v| v == "0")
            || std::env::var("SPEC_LLAVA_CPU_KERNEL").is_ok();
        !off && order() == Order::Lanes16Fused && Order::Lanes16Fused.has_simd()
    })
}

/// Whether a q8/q4 matrix can be stored as panels here: [`applies`], and rows of whole blocks.
pub fn applies_to(q: &QuantMatrix) -> bool {
    applies() && q.cols.is_multiple_of(GROUP)
}

/// The panels' values.
#[derive(Debug, Clone, PartialEq)]
pub enum PanelData {
    F32(Vec<f32>),
    /// f16 bits, widened in registers (exact).
    F16(Vec<u16>),
    /// q8/q4 blocks (GGML `Q8_0`/`Q4_0`, [`crate::quant`]) regrouped by panel: for panel `p` and
    /// block `b` of 32 elements, the 16 outputs' f16 scales (`scales[(p * nb + b) * 16 + lane]`),
    /// then each code byte of the block for the 16 outputs side by side (`codes[((p * nb + b) *
    /// bytes + t) * 16 + lane]`: byte `t` of the checkpoint's block, so a q4 byte holds element
    /// `t` low and `t + 16` high). A weight is `d * q`, rounded as
    /// [`QuantMatrix::dequantize`] rounds it.
    Quant {
        scheme: Scheme,
        scales: Vec<u16>,
        codes: Vec<u8>,
    },
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

    /// From q8/q4 blocks whose rows are whole blocks ([`applies_to`]); padding outputs have
    /// scale 0.
    pub fn quant(q: &QuantMatrix) -> Self {
        let (n, nb, bytes) = (q.rows, q.cols / GROUP, q.scheme.block_bytes());
        let count = n.div_ceil(WIDTH);
        let mut scales = vec![0u16; count * nb * WIDTH];
        let mut codes = vec![0u8; count * nb * bytes * WIDTH];
        for r in 0..n {
            let (p, lane) = (r / WIDTH, r % WIDTH);
            for b in 0..nb {
                scales[(p * nb + b) * WIDTH + lane] = q.scales[r * nb + b];
                let block = &q.qs[(r * nb + b) * bytes..][..bytes];
                for (t, &c) in block.iter().enumerate() {
                    codes[((p * nb + b) * bytes + t) * WIDTH + lane] = c;
                }
            }
        }
        Panels {
            data: PanelData::Quant {
                scheme: q.scheme,
                scales,
                codes,
            },
            n,
            k: q.cols,
        }
    }

    /// Row `j` (`dst.len() == k`), exactly the values the kernels compute with.
    pub fn row(&self, j: usize, dst: &mut [f32]) {
        let (p, lane) = (j / WIDTH, j % WIDTH);
        let k = self.k;
        match &self.data {
            PanelData::F32(v) => Plain(&v[p * k * WIDTH..], k).row(lane, dst),
            PanelData::F16(v) => Plain(&v[p * k * WIDTH..], k).row(lane, dst),
            PanelData::Quant { .. } => self.quant_source(p).row(lane, dst),
        }
    }

    /// The q8/q4 panels from `p0` as a tile source.
    fn quant_source(&self, p0: usize) -> Quant<'_> {
        let PanelData::Quant {
            scheme,
            scales,
            codes,
        } = &self.data
        else {
            unreachable!("quant_source is called on q8/q4 panels only")
        };
        let (nb, bytes) = (self.k / GROUP, scheme.block_bytes());
        Quant {
            q4: *scheme == Scheme::Q4,
            k: self.k,
            scales: &scales[p0 * nb * WIDTH..],
            codes: &codes[p0 * nb * bytes * WIDTH..],
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
            PanelData::Quant { scales, codes, .. } => scales.len() * 2 + codes.len(),
        }
    }

    /// Address of the stored values (identifies the matrix while it lives).
    pub fn address(&self) -> usize {
        match &self.data {
            PanelData::F32(v) => v.as_ptr() as usize,
            PanelData::F16(v) => v.as_ptr() as usize,
            PanelData::Quant { codes, .. } => codes.as_ptr() as usize,
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
    // Panels per task: whole tiles (of 3 panels for f32/f16, 2 for blocks; a task of one panel
    // would run 8×1 tiles, a third of the work per weight load).
    let per_task = (PER_TASK_WORK / (m * k * WIDTH).max(1))
        .next_multiple_of(6)
        .clamp(6, count.next_multiple_of(6));
    // Panel-major output `[panel][m][16]`: each task owns a contiguous block of it.
    let mut t = vec![0f32; count * m * WIDTH];
    let task = |bi: usize, out: &mut [f32]| {
        let p0 = bi * per_task;
        match &w.data {
            PanelData::F32(v) => block(x, m, k, &Plain(&v[p0 * k * WIDTH..], k), out),
            PanelData::F16(v) => block(x, m, k, &Plain(&v[p0 * k * WIDTH..], k), out),
            PanelData::Quant { .. } => block(x, m, k, &w.quant_source(p0), out),
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

/// Where a tile reads its weights: the panels of one task, from its first.
trait Source {
    /// Panels side by side in a full tile (as many as leave registers for the weights).
    const PANELS: usize;
    /// Element `e` of output `lane` of panel `p`, exactly as the kernels use it.
    fn value(&self, p: usize, e: usize, lane: usize) -> f32;
    /// Rows `i..i + R` of x against panels `p..p + P`, into `out` (`[panel][m][16]`).
    fn tile<const R: usize, const P: usize>(&self, at: Tile, x: &[f32], out: &mut [f32]);

    /// Output `lane` of panel 0 (`dst.len()` elements).
    fn row(&self, lane: usize, dst: &mut [f32]) {
        for (e, d) in dst.iter_mut().enumerate() {
            *d = self.value(0, e, lane);
        }
    }
}

/// f32 or f16 panels `[p][k][16]`, and `k`.
struct Plain<'a, W>(&'a [W], usize);

impl<W: Elem> Source for Plain<'_, W> {
    const PANELS: usize = 3;

    #[inline(always)]
    fn value(&self, p: usize, e: usize, lane: usize) -> f32 {
        self.0[(p * self.1 + e) * WIDTH + lane].value()
    }

    #[inline(always)]
    fn tile<const R: usize, const P: usize>(&self, at: Tile, x: &[f32], out: &mut [f32]) {
        assert!(at.k == self.1 && self.0.len() >= (at.p + P) * at.k * WIDTH);
        #[cfg(target_arch = "x86_64")]
        if Order::Lanes16Fused.has_simd() {
            // SAFETY: AVX-512F, VL and F16C are present; the panels are in bounds (asserted),
            // and `block` checked x and `out` for the tile's rows and panels.
            return unsafe { x86::tile::<R, P, W>(at, x, self.0, out) };
        }
        portable::<R, P>(at, x, |p, e, lane| self.value(p, e, lane), out)
    }
}

/// q8/q4 panels (see [`PanelData::Quant`]).
struct Quant<'a> {
    q4: bool,
    k: usize,
    scales: &'a [u16],
    codes: &'a [u8],
}

impl Source for Quant<'_> {
    // 2 × 8 accumulators, 2 scales and 2 decoded chunks: 3 panels would spill.
    const PANELS: usize = 2;

    #[inline(always)]
    fn value(&self, p: usize, e: usize, lane: usize) -> f32 {
        let nb = self.k / GROUP;
        let (b, t) = (e / GROUP, e % GROUP);
        let d = f16::from_bits(self.scales[(p * nb + b) * WIDTH + lane]).to_f32();
        match self.q4 {
            true => {
                let c = self.codes[((p * nb + b) * (GROUP / 2) + t % (GROUP / 2)) * WIDTH + lane];
                let q = if t < GROUP / 2 { c & 15 } else { c >> 4 };
                d * (f32::from(q) - 8.0)
            }
            false => d * f32::from(self.codes[((p * nb + b) * GROUP + t) * WIDTH + lane] as i8),
        }
    }

    #[inline(always)]
    fn tile<const R: usize, const P: usize>(&self, at: Tile, x: &[f32], out: &mut [f32]) {
        let (nb, bytes) = (at.k / GROUP, if self.q4 { GROUP / 2 } else { GROUP });
        assert!(at.k == self.k && at.k.is_multiple_of(GROUP));
        assert!(self.scales.len() >= (at.p + P) * nb * WIDTH);
        assert!(self.codes.len() >= (at.p + P) * nb * bytes * WIDTH);
        #[cfg(target_arch = "x86_64")]
        if Order::Lanes16Fused.has_simd() {
            // SAFETY: AVX-512F, VL and F16C are present; scales and codes are in bounds
            // (asserted), and `block` checked x and `out` for the tile's rows and panels.
            return unsafe {
                match self.q4 {
                    true => x86::tile_quant::<R, P, true>(at, x, self.scales, self.codes, out),
                    false => x86::tile_quant::<R, P, false>(at, x, self.scales, self.codes, out),
                }
            };
        }
        portable::<R, P>(at, x, |p, e, lane| self.value(p, e, lane), out)
    }
}

/// The `out.len() / (m * 16)` panels of `src` against every row of x, into `out`
/// (`[panel][m][16]`): `S::PANELS` panels × 8 rows at a time (up to 24 accumulators, a weight
/// register per panel, a broadcast), then fewer.
fn block<S: Source>(x: &[f32], m: usize, k: usize, src: &S, out: &mut [f32]) {
    let count = out.len() / (m * WIDTH);
    assert!(x.len() >= m * k);
    let mut p = 0;
    while p < count {
        let np = (count - p).min(S::PANELS);
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
                (8, 3) => src.tile::<8, 3>(at, x, out),
                (8, 2) => src.tile::<8, 2>(at, x, out),
                (8, _) => src.tile::<8, 1>(at, x, out),
                (4, 3) => src.tile::<4, 3>(at, x, out),
                (4, 2) => src.tile::<4, 2>(at, x, out),
                (4, _) => src.tile::<4, 1>(at, x, out),
                (2, 3) => src.tile::<2, 3>(at, x, out),
                (2, 2) => src.tile::<2, 2>(at, x, out),
                (2, _) => src.tile::<2, 1>(at, x, out),
                (_, 3) => src.tile::<1, 3>(at, x, out),
                (_, 2) => src.tile::<1, 2>(at, x, out),
                (_, _) => src.tile::<1, 1>(at, x, out),
            }
            i += nr;
        }
        p += np;
    }
}

/// Where a tile sits: rows `i..i + R` of x (`[m, k]`), panels `p..p + P` of the task's.
#[derive(Clone, Copy)]
struct Tile {
    i: usize,
    p: usize,
    m: usize,
    k: usize,
}

/// A tile in plain Rust: one fused multiply-add per element, in order of `k`; `w(p, e, lane)`
/// gives the weights.
fn portable<const R: usize, const P: usize>(
    at: Tile,
    x: &[f32],
    w: impl Fn(usize, usize, usize) -> f32,
    out: &mut [f32],
) {
    let Tile { i, p, m, k } = at;
    let mut acc = [[[0f32; WIDTH]; P]; R];
    for e in 0..k {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = x[(i + r) * k + e];
            for (q, acc) in acc.iter_mut().enumerate() {
                for (lane, a) in acc.iter_mut().enumerate() {
                    *a = xv.mul_add(w(p + q, e, lane), *a);
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

    use super::{Elem, Tile, GROUP, WIDTH};

    /// The portable tile over f32/f16 panels with one register per 16 outputs of a row: each
    /// step loads `P` weight chunks and broadcasts one element of x per row.
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
            steps::<R, P>(&mut acc, xs, k, e, &wv);
        }
        store::<R, P>(&acc, at, out);
    }

    /// The portable tile over q8/q4 panels: each block's 16 scales are widened once, each code
    /// chunk is decoded (`d * q`, one rounding, as the portable value) as it is loaded.
    ///
    /// # Safety
    /// As [`tile`], with the scales and codes of panels `p..p + P` in bounds and `k` a multiple of
    /// 32.
    #[target_feature(enable = "avx512f,avx512vl,f16c,fma")]
    pub(super) unsafe fn tile_quant<const R: usize, const P: usize, const Q4: bool>(
        at: Tile,
        x: &[f32],
        scales: &[u16],
        codes: &[u8],
        out: &mut [f32],
    ) {
        let Tile { i, p, k, .. } = at;
        let nb = k / GROUP;
        let bytes = if Q4 { GROUP / 2 } else { GROUP };
        debug_assert!(x.len() >= (i + R) * k && scales.len() >= (p + P) * nb * WIDTH);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let xs = x.as_ptr().add(i * k);
        let (fifteen, eight) = (_mm512_set1_epi32(15), _mm512_set1_epi32(8));
        for b in 0..nb {
            let mut d = [_mm512_setzero_ps(); P];
            for (q, d) in d.iter_mut().enumerate() {
                let at = scales.as_ptr().add(((p + q) * nb + b) * WIDTH);
                *d = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
            }
            let chunk = |q: usize, t: usize| {
                let at = codes.as_ptr().add((((p + q) * nb + b) * bytes + t) * WIDTH);
                _mm_loadu_si128(at as *const __m128i)
            };
            let mut wv = [_mm512_setzero_ps(); P];
            if Q4 {
                // Byte t holds element t (low nibble) and t + 16 (high): the low halves first.
                for high in [false, true] {
                    for t in 0..GROUP / 2 {
                        for (q, wv) in wv.iter_mut().enumerate() {
                            let c = _mm512_cvtepu8_epi32(chunk(q, t));
                            let c = match high {
                                false => _mm512_and_si512(c, fifteen),
                                true => _mm512_srli_epi32(c, 4),
                            };
                            let c = _mm512_cvtepi32_ps(_mm512_sub_epi32(c, eight));
                            *wv = _mm512_mul_ps(d[q], c);
                        }
                        let e = b * GROUP + usize::from(high) * GROUP / 2 + t;
                        steps::<R, P>(&mut acc, xs, k, e, &wv);
                    }
                }
            } else {
                for t in 0..GROUP {
                    for (q, wv) in wv.iter_mut().enumerate() {
                        let c = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(chunk(q, t)));
                        *wv = _mm512_mul_ps(d[q], c);
                    }
                    steps::<R, P>(&mut acc, xs, k, b * GROUP + t, &wv);
                }
            }
        }
        store::<R, P>(&acc, at, out);
    }

    /// One element `e` of every row against the decoded weights: a fused multiply-add each.
    #[inline(always)]
    unsafe fn steps<const R: usize, const P: usize>(
        acc: &mut [[__m512; P]; R],
        xs: *const f32,
        k: usize,
        e: usize,
        wv: &[__m512; P],
    ) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*xs.add(r * k + e));
            for (acc, wv) in acc.iter_mut().zip(wv) {
                *acc = _mm512_fmadd_ps(xv, *wv, *acc);
            }
        }
    }

    #[inline(always)]
    unsafe fn store<const R: usize, const P: usize>(
        acc: &[[__m512; P]; R],
        at: Tile,
        out: &mut [f32],
    ) {
        let Tile { i, p, m, .. } = at;
        debug_assert!(out.len() >= ((p + P - 1) * m + i + R) * WIDTH);
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

    /// A matrix `[n, k]` in every panel format, with the values each computes with.
    fn formats(n: usize, k: usize, seed: u64) -> Vec<(Panels, Vec<f32>)> {
        let v = random(n * k, seed);
        let h: Vec<u16> = v.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let mut out = vec![
            (Panels::f32(&v, n, k), v.clone()),
            (
                Panels::f16(&h, n, k),
                h.iter().map(|&h| f16::from_bits(h).to_f32()).collect(),
            ),
        ];
        if k.is_multiple_of(GROUP) {
            for scheme in [Scheme::Q8, Scheme::Q4] {
                let q = QuantMatrix::quantize(scheme, &v, n, k);
                out.push((Panels::quant(&q), q.dequantize()));
            }
        }
        out
    }

    #[test]
    fn panels_give_back_their_rows_and_values() {
        // n = 37: a partial last panel; k = 64: two q8/q4 blocks.
        let (n, k) = (37, 64);
        for (p, wide) in formats(n, k, 1) {
            assert_eq!(p.values(), wide);
            let mut row = vec![0f32; k];
            p.row(20, &mut row);
            assert_eq!(row, wide[20 * k..21 * k]);
        }
        let (p, _) = &formats(n, 5, 2)[0];
        assert_eq!(p.stored_bytes(), 3 * WIDTH * 5 * 4);
    }

    #[test]
    fn every_row_and_output_follows_the_written_out_order_bit_for_bit() {
        // n = 37: a partial last panel; m up to 19: every row tile (8, 4, 2, 1); 50 panels: several
        // tasks when m is large; k = 70 and 1: no q8/q4 (not whole blocks).
        for (n, k) in [(37, 64), (37, 70), (800, 32), (5, 1)] {
            let bias = random(n, 7);
            for (p, wide) in formats(n, k, n as u64) {
                for m in [1, 2, 3, 7, 8, 19] {
                    let x = random(m * k, m as u64);
                    let got = linear(&x, m, &p, Some(&bias));
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
    fn the_simd_tiles_equal_the_portable_tile() {
        let (m, k) = (8, 96);
        let x = random(m * k, 3);
        let at = Tile { i: 0, p: 0, m, k };
        let check = |src: &dyn Fn(&mut [f32]), value: &dyn Fn(usize, usize, usize) -> f32| {
            let mut a = vec![0f32; 3 * m * WIDTH];
            let mut b = a.clone();
            src(&mut a);
            portable::<8, 2>(at, &x, value, &mut b);
            assert_eq!(a[..2 * m * WIDTH], b[..2 * m * WIDTH]);
        };
        for (p, _) in formats(3 * WIDTH, k, 4) {
            match &p.data {
                PanelData::F32(v) => {
                    let src = Plain(v, k);
                    check(&|o| src.tile::<8, 2>(at, &x, o), &|p, e, l| {
                        src.value(p, e, l)
                    });
                }
                PanelData::F16(v) => {
                    let src = Plain(v, k);
                    check(&|o| src.tile::<8, 2>(at, &x, o), &|p, e, l| {
                        src.value(p, e, l)
                    });
                }
                PanelData::Quant { .. } => {
                    let src = p.quant_source(0);
                    check(&|o| src.tile::<8, 2>(at, &x, o), &|p, e, l| {
                        src.value(p, e, l)
                    });
                }
            }
        }
    }
}
