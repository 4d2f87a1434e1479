//! The CPU engine's dot products: a register tile of `R` rows of x against `C` weight rows, and
//! the one reduction order every output element follows in this process.
//!
//! # One reduction order per process
//!
//! An element `x . w` is reduced with `L` lane accumulators: lane `l` takes `x[L c + l] * w[L c +
//! l]` for chunk `c = 0, 1, ...`, either as a product rounded then added or as one fused
//! multiply-add; then the lanes are summed (in order for the 8-lane separate order, the engine's
//! first; by halves, `l` with `l + L/2` down to one, for the fused orders, so that the SIMD kernels
//! sum in registers); then the `k % L` leftover products are taken one by one the same way.
//!
//! These orders are those of row-major matrices; matrices stored as column panels (where
//! the CPU has AVX-512) have an order of their own, [`super::panel`]'s. A matrix's storage fixes
//! its order for the process, so each matrix stays batch-invariant.
//!
//! [`Order`] names the three orders: 8 lanes separate (any CPU: AVX, or the vectors the compiler
//! makes, e.g. wasm `simd128`), 8 lanes fused (AVX2 + FMA) and 16 lanes fused (AVX-512F with VL).
//! [`order`] picks the fastest the CPU runs, once per process, and every tile of the process uses
//! it, whatever the number of rows: a batch equals its rows one by one bit for bit (tree
//! verification computes what plain decoding would). The SIMD kernel of an order and its portable
//! kernel agree bit for bit (tested), so a CPU without the SIMD kernel computes the same numbers,
//! only slower. A fused multiply-add does the work of a multiply and an add in one instruction,
//! and 16 lanes twice the work of 8: measured here, a 4096x4096 matmul over 32 rows runs 1.5x
//! faster in the 16-lane order than in the 8-lane separate one (`bench-kernels --backend cpu` with
//! `SPEC_LLAVA_CPU_KERNEL`); on a small model's short rows the 8-lane fused order does as well.

use std::sync::OnceLock;

/// How an element's dot product is reduced (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// 8 lanes, each product rounded then added: any CPU.
    Lanes8,
    /// 8 lanes of fused multiply-adds: AVX2 with FMA.
    Lanes8Fused,
    /// 16 lanes of fused multiply-adds: AVX-512F with VL.
    Lanes16Fused,
}

impl Order {
    pub const ALL: [Order; 3] = [Order::Lanes8, Order::Lanes8Fused, Order::Lanes16Fused];

    /// The name `SPEC_LLAVA_CPU_KERNEL` takes and reports show.
    pub fn name(self) -> &'static str {
        match self {
            Order::Lanes8 => "lanes8",
            Order::Lanes8Fused => "lanes8-fma",
            Order::Lanes16Fused => "lanes16-fma",
        }
    }

    /// Whether this CPU runs the order's SIMD kernel (the portable kernel runs every order).
    pub fn has_simd(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                // F16C: the kernels also read f16 weights (every CPU with AVX2 has it).
                Order::Lanes8 => has!("avx") && has!("f16c"),
                Order::Lanes8Fused => has!("avx") && has!("fma") && has!("f16c"),
                // VL: 128/256-bit instructions (loads of f16 halves, the lane sums) may then use
                // all 32 vector registers; without it a 4x4 tile's accumulators spilled to memory.
                Order::Lanes16Fused => has!("avx512f") && has!("avx512vl") && has!("f16c"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Order::Lanes8
        }
    }
}

static ORDER: OnceLock<Order> = OnceLock::new();

/// The order of this process: `SPEC_LLAVA_CPU_KERNEL` when it names one (to compare them; an
/// order without SIMD on this CPU runs its portable kernel), else the fastest with SIMD here.
pub fn order() -> Order {
    *ORDER.get_or_init(|| {
        let asked = std::env::var("SPEC_LLAVA_CPU_KERNEL").ok();
        if let Some(o) = Order::ALL
            .into_iter()
            .find(|o| asked.as_deref() == Some(o.name()))
        {
            return o;
        }
        [Order::Lanes16Fused, Order::Lanes8Fused]
            .into_iter()
            .find(|o| o.has_simd())
            .unwrap_or(Order::Lanes8)
    })
}

/// A weight value as the tiles read it: f32, or f16 bits (`u16`) widened in registers, exactly
/// (every f16 is an f32), so an f16 matrix computes what its widened copy would without the copy.
pub trait Elem: Copy + Send + Sync + 'static {
    fn value(self) -> f32;
    /// Eight values as f32.
    ///
    /// # Safety
    /// AVX and F16C present, 8 values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn v8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen values as f32.
    ///
    /// # Safety
    /// AVX-512F present, 16 values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn v16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Elem for f32 {
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn v8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn v16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl Elem for u16 {
    #[inline(always)]
    fn value(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn v8(p: *const u16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn v16(p: *const u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// Whether this process's tiles read f16 weights with SIMD (F16C or AVX-512 conversions);
/// elsewhere an f16 weight is better widened a panel at a time.
pub fn f16_in_registers() -> bool {
    cfg!(target_arch = "x86_64") && order().has_simd()
}

/// Rows `i..i + R` of x (`x` from row `i`, stride `k`) against every weight row of `panel`
/// (`[jn, k]`), `C` weight rows at a time and then one at a time, into `out[j * m + i + r]`, in
/// this process's order. One dispatch on the order for the whole walk: a tile of a small model is
/// a few hundred instructions, and a call and a feature check per tile were a good part of it.
#[allow(clippy::too_many_arguments)]
pub fn cols<const R: usize, const C: usize, W: Elem>(
    x: &[f32],
    i: usize,
    k: usize,
    panel: &[W],
    jn: usize,
    m: usize,
    out: &mut [f32],
) {
    let order = order();
    assert!(x.len() >= R * k && panel.len() >= jn * k && out.len() >= jn * m);
    #[cfg(target_arch = "x86_64")]
    if order.has_simd() {
        // SAFETY: the order's features are present (`has_simd`), and the bounds were checked.
        unsafe {
            match order {
                Order::Lanes8 => x86::walk8::<R, C, W>(x, i, k, panel, jn, m, out),
                Order::Lanes8Fused => x86::walk8_fma::<R, C, W>(x, i, k, panel, jn, m, out),
                Order::Lanes16Fused => x86::walk16_fma::<R, C, W>(x, i, k, panel, jn, m, out),
            }
        }
        return;
    }
    let full = |w: &[W]| portable_in::<R, C, W>(order, x, w, k);
    let one = |w: &[W]| portable_in::<R, 1, W>(order, x, w, k);
    walk::<R, C, W>((i, k, panel, jn, m), out, full, one);
}

/// The walk of [`cols`] with the tile functions of one order.
#[inline(always)]
fn walk<const R: usize, const C: usize, W: Elem>(
    (i, k, panel, jn, m): (usize, usize, &[W], usize, usize),
    out: &mut [f32],
    full: impl Fn(&[W]) -> [[f32; C]; R],
    one: impl Fn(&[W]) -> [[f32; 1]; R],
) {
    let mut j = 0;
    while j + C <= jn {
        let s = full(&panel[j * k..(j + C) * k]);
        for c in 0..C {
            for (r, row) in s.iter().enumerate() {
                out[(j + c) * m + i + r] = row[c];
            }
        }
        j += C;
    }
    for j in j..jn {
        let s = one(&panel[j * k..(j + 1) * k]);
        for (r, row) in s.iter().enumerate() {
            out[j * m + i + r] = row[0];
        }
    }
}

/// One tile in a given order: its SIMD kernel where the CPU has it, else the portable one.
#[cfg(test)]
pub(super) fn tile_in<const R: usize, const C: usize, W: Elem>(
    order: Order,
    x: &[f32],
    w: &[W],
    k: usize,
) -> [[f32; C]; R] {
    assert!(x.len() >= R * k && w.len() >= C * k);
    #[cfg(target_arch = "x86_64")]
    if order.has_simd() {
        // SAFETY: the order's features are present (`has_simd`), and the bounds were checked.
        return unsafe {
            match order {
                Order::Lanes8 => x86::lanes8(x, w, k),
                Order::Lanes8Fused => x86::lanes8_fma(x, w, k),
                Order::Lanes16Fused => x86::lanes16_fma(x, w, k),
            }
        };
    }
    portable_in::<R, C, W>(order, x, w, k)
}

/// One tile in a given order by the portable kernel (what a CPU without the SIMD kernel runs).
pub(super) fn portable_in<const R: usize, const C: usize, W: Elem>(
    order: Order,
    x: &[f32],
    w: &[W],
    k: usize,
) -> [[f32; C]; R] {
    match order {
        Order::Lanes8 => {
            finish::<R, C, 8, false, W>(&portable::<R, C, 8, false, W>(x, w, k), x, w, k)
        }
        Order::Lanes8Fused => {
            finish::<R, C, 8, true, W>(&portable::<R, C, 8, true, W>(x, w, k), x, w, k)
        }
        Order::Lanes16Fused => {
            finish::<R, C, 16, true, W>(&portable::<R, C, 16, true, W>(x, w, k), x, w, k)
        }
    }
}

/// Lane accumulators of a tile: `[r][c][l]`.
type Lanes<const R: usize, const C: usize, const L: usize> = [[[f32; L]; C]; R];

/// One product-accumulate step: fused, or the product rounded then added.
#[inline(always)]
fn step<const FUSED: bool>(acc: f32, x: f32, w: f32) -> f32 {
    match FUSED {
        true => x.mul_add(w, acc),
        false => acc + x * w,
    }
}

fn portable<const R: usize, const C: usize, const L: usize, const FUSED: bool, W: Elem>(
    x: &[f32],
    w: &[W],
    k: usize,
) -> Lanes<R, C, L> {
    let mut acc = [[[0f32; L]; C]; R];
    for ch in 0..k / L {
        let at = ch * L;
        for (r, acc) in acc.iter_mut().enumerate() {
            let xr = &x[r * k + at..r * k + at + L];
            for (c, acc) in acc.iter_mut().enumerate() {
                let wc = &w[c * k + at..c * k + at + L];
                for l in 0..L {
                    acc[l] = step::<FUSED>(acc[l], xr[l], wc[l].value());
                }
            }
        }
    }
    acc
}

/// The lanes of one element summed: in order (separate), or by halves (fused orders).
#[inline(always)]
fn reduce<const L: usize, const FUSED: bool>(lanes: &[f32; L]) -> f32 {
    if !FUSED {
        return lanes.iter().sum();
    }
    let mut v = *lanes;
    let mut half = L / 2;
    while half > 0 {
        for l in 0..half {
            v[l] += v[l + half];
        }
        half /= 2;
    }
    v[0]
}

/// Lanes summed, then the leftover products one by one.
fn finish<const R: usize, const C: usize, const L: usize, const FUSED: bool, W: Elem>(
    lanes: &Lanes<R, C, L>,
    x: &[f32],
    w: &[W],
    k: usize,
) -> [[f32; C]; R] {
    let sums = lanes.map(|row| row.map(|l| reduce::<L, FUSED>(&l)));
    tail::<R, C, FUSED, W>(sums, x, w, k, L)
}

/// The leftover products (`k % lanes` of them) added one by one to the lane sums. Inlined into
/// the SIMD kernels, so that a fused step is one instruction there, not a call to `fmaf`.
#[inline(always)]
fn tail<const R: usize, const C: usize, const FUSED: bool, W: Elem>(
    mut sums: [[f32; C]; R],
    x: &[f32],
    w: &[W],
    k: usize,
    lanes: usize,
) -> [[f32; C]; R] {
    for e in k / lanes * lanes..k {
        for (r, o) in sums.iter_mut().enumerate() {
            for (c, o) in o.iter_mut().enumerate() {
                *o = step::<FUSED>(*o, x[r * k + e], w[c * k + e].value());
            }
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    //! One register per lane accumulator; the weight chunk loaded once serves `R` rows of x.
    //! One generic kernel ([`kernel`]) over the register type of each order ([`Vector`]), each
    //! compiled for its instruction set by a thin `target_feature` wrapper; each computes the
    //! portable kernel of its order, instruction for instruction.

    use std::arch::x86_64::*;

    use super::{tail, Elem};

    /// A register of lane accumulators and the steps of one order on it.
    trait Vector: Copy {
        const LANES: usize;
        const FUSED: bool;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn load_w<W: Elem>(p: *const W) -> Self;
        /// `acc + x * w`: fused, or the product rounded then added, as the order says.
        unsafe fn step(self, x: Self, w: Self) -> Self;
        /// The lanes summed as the order says (`super::reduce`).
        unsafe fn sum(self) -> f32;
    }

    /// 8 lanes, products rounded then added, lanes summed in order.
    #[derive(Clone, Copy)]
    struct Sep8(__m256);
    /// 8 lanes of fused multiply-adds, lanes summed by halves.
    #[derive(Clone, Copy)]
    struct Fma8(__m256);
    /// 16 lanes of fused multiply-adds, lanes summed by halves.
    #[derive(Clone, Copy)]
    struct Fma16(__m512);

    impl Vector for Sep8 {
        const LANES: usize = 8;
        const FUSED: bool = false;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Sep8(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Sep8(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_w<W: Elem>(p: *const W) -> Self {
            Sep8(W::v8(p))
        }
        #[inline(always)]
        unsafe fn step(self, x: Self, w: Self) -> Self {
            Sep8(_mm256_add_ps(self.0, _mm256_mul_ps(x.0, w.0)))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), self.0);
            lanes.iter().sum()
        }
    }

    impl Vector for Fma8 {
        const LANES: usize = 8;
        const FUSED: bool = true;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Fma8(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Fma8(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_w<W: Elem>(p: *const W) -> Self {
            Fma8(W::v8(p))
        }
        #[inline(always)]
        unsafe fn step(self, x: Self, w: Self) -> Self {
            Fma8(_mm256_fmadd_ps(x.0, w.0, self.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            halves8(self.0)
        }
    }

    impl Vector for Fma16 {
        const LANES: usize = 16;
        const FUSED: bool = true;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Fma16(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Fma16(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_w<W: Elem>(p: *const W) -> Self {
            Fma16(W::v16(p))
        }
        #[inline(always)]
        unsafe fn step(self, x: Self, w: Self) -> Self {
            Fma16(_mm512_fmadd_ps(x.0, w.0, self.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            sum16(self.0)
        }
    }

    /// Sixteen lanes summed by halves (`reduce`): 0-7 + 8-15, then as [`halves8`].
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[inline(always)]
    pub(in crate::backend::cpu) unsafe fn sum16(a: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(a);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
        halves8(_mm256_add_ps(lo, hi))
    }

    /// Eight lanes summed by halves (`reduce`): 0-3 + 4-7, then 0-1 + 2-3, then 0 + 1.
    #[inline(always)]
    unsafe fn halves8(a: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)))
    }

    #[inline(always)]
    unsafe fn kernel<V: Vector, const R: usize, const C: usize, W: Elem>(
        x: &[f32],
        w: &[W],
        k: usize,
    ) -> [[f32; C]; R] {
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [[V::zero(); C]; R];
        let mut wv = [V::zero(); C];
        for ch in 0..k / V::LANES {
            let at = ch * V::LANES;
            for (c, v) in wv.iter_mut().enumerate() {
                *v = V::load_w(wp.add(c * k + at));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = V::load(xp.add(r * k + at));
                for (a, &wc) in acc.iter_mut().zip(&wv) {
                    *a = a.step(xv, wc);
                }
            }
        }
        let mut out = [[0f32; C]; R];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = a.sum();
            }
        }
        match V::FUSED {
            true => tail::<R, C, true, W>(out, x, w, k, V::LANES),
            false => tail::<R, C, false, W>(out, x, w, k, V::LANES),
        }
    }

    macro_rules! walker {
        ($name:ident, $features:literal, $vector:ty) => {
            /// [`super::cols`] with this instruction set's kernel.
            ///
            /// # Safety
            /// The features must be available; the bounds of `super::cols` must hold.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name<const R: usize, const C: usize, W: Elem>(
                x: &[f32],
                i: usize,
                k: usize,
                panel: &[W],
                jn: usize,
                m: usize,
                out: &mut [f32],
            ) {
                // SAFETY (both closures): as this function's.
                let full = |w: &[W]| unsafe { kernel::<$vector, R, C, W>(x, w, k) };
                let one = |w: &[W]| unsafe { kernel::<$vector, R, 1, W>(x, w, k) };
                super::walk::<R, C, W>((i, k, panel, jn, m), out, full, one);
            }
        };
    }
    walker!(walk8, "avx,f16c", Sep8);
    walker!(walk8_fma, "avx,fma,f16c", Fma8);
    walker!(walk16_fma, "avx512f,avx512vl,f16c", Fma16);

    #[cfg(test)]
    /// # Safety
    /// AVX and F16C must be available; `x` must hold `R` rows and `w` `C` rows of `k` values.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn lanes8<const R: usize, const C: usize, W: Elem>(
        x: &[f32],
        w: &[W],
        k: usize,
    ) -> [[f32; C]; R] {
        kernel::<Sep8, R, C, W>(x, w, k)
    }

    #[cfg(test)]
    /// # Safety
    /// AVX, FMA and F16C must be available; `x` must hold `R` rows and `w` `C` rows of `k` values.
    #[target_feature(enable = "avx,fma,f16c")]
    pub unsafe fn lanes8_fma<const R: usize, const C: usize, W: Elem>(
        x: &[f32],
        w: &[W],
        k: usize,
    ) -> [[f32; C]; R] {
        kernel::<Fma8, R, C, W>(x, w, k)
    }

    #[cfg(test)]
    /// # Safety
    /// AVX-512F and VL must be available; `x` must hold `R` rows and `w` `C` rows of `k` values.
    #[target_feature(enable = "avx512f,avx512vl,f16c")]
    pub unsafe fn lanes16_fma<const R: usize, const C: usize, W: Elem>(
        x: &[f32],
        w: &[W],
        k: usize,
    ) -> [[f32; C]; R] {
        kernel::<Fma16, R, C, W>(x, w, k)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use crate::backend::cpu::bench::values as random;

    /// One element in `order`, written out as the module docs say.
    pub(in crate::backend::cpu) fn written_out(order: Order, x: &[f32], w: &[f32]) -> f32 {
        let (lanes, fused) = match order {
            Order::Lanes8 => (8, false),
            Order::Lanes8Fused => (8, true),
            Order::Lanes16Fused => (16, true),
        };
        let f = |acc: f32, a: f32, b: f32| {
            if fused {
                a.mul_add(b, acc)
            } else {
                acc + a * b
            }
        };
        let k = x.len();
        let mut acc = vec![0f32; lanes];
        for e in 0..k / lanes * lanes {
            acc[e % lanes] = f(acc[e % lanes], x[e], w[e]);
        }
        let mut s: f32 = match fused {
            false => acc.iter().sum(),
            true => {
                while acc.len() > 1 {
                    let h = acc.len() / 2;
                    acc = (0..h).map(|l| acc[l] + acc[l + h]).collect();
                }
                acc[0]
            }
        };
        for e in k / lanes * lanes..k {
            s = f(s, x[e], w[e]);
        }
        s
    }

    #[test]
    fn each_orders_simd_and_portable_kernels_agree_bit_for_bit() {
        // k = 77: leftovers for 8 and 16 lanes.
        let k = 77;
        let (x, w) = (random(4 * k, 1), random(8 * k, 2));
        // f16 weights: the same values as f16 bits, read by the f16 kernels.
        let w16: Vec<u16> = w
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let wide: Vec<f32> = w16.iter().map(|&h| h.value()).collect();
        fn both<const R: usize, const C: usize>(o: Order, x: &[f32], w: &[f32], k: usize) {
            let a = tile_in::<R, C, f32>(o, x, w, k);
            let b = portable_in::<R, C, f32>(o, x, w, k);
            assert_eq!(a, b, "{o:?} {R}x{C}");
        }
        fn f16<const R: usize, const C: usize>(o: Order, x: &[f32], w: &[u16], wide: &[f32]) {
            let k = x.len() / 4;
            let want = tile_in::<R, C, f32>(o, x, wide, k);
            assert_eq!(tile_in::<R, C, u16>(o, x, w, k), want, "f16 {o:?} {R}x{C}");
            assert_eq!(
                portable_in::<R, C, u16>(o, x, w, k),
                want,
                "f16 {o:?} {R}x{C}"
            );
        }
        for o in Order::ALL {
            both::<4, 4>(o, &x, &w, k);
            both::<4, 2>(o, &x, &w, k);
            both::<3, 2>(o, &x, &w, k);
            both::<2, 4>(o, &x, &w, k);
            both::<1, 8>(o, &x, &w, k);
            both::<2, 8>(o, &x, &w, k);
            both::<3, 4>(o, &x, &w, k);
            both::<1, 1>(o, &x, &w, k);
            f16::<4, 4>(o, &x, &w16, &wide);
            f16::<1, 8>(o, &x, &w16, &wide);
            f16::<3, 2>(o, &x, &w16, &wide);
        }
    }

    #[test]
    fn the_orders_are_what_the_docs_say() {
        let k = 35;
        let (x, w) = (random(k, 3), random(k, 4));
        for o in Order::ALL {
            let want = written_out(o, &x, &w);
            assert_eq!(
                tile_in::<1, 1, f32>(o, &x, &w, k)[0][0].to_bits(),
                want.to_bits(),
                "{o:?}"
            );
        }
        // The orders differ: a fused step rounds once (else the choice would not matter).
        let sums: Vec<u32> = Order::ALL
            .iter()
            .map(|&o| {
                tile_in::<1, 1, f32>(o, &random(4096, 5), &random(4096, 6), 4096)[0][0].to_bits()
            })
            .collect();
        assert!(sums[0] != sums[1] || sums[1] != sums[2], "{sums:?}");
    }
}
