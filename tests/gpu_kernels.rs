//! Every op of the WebGPU engine against the CPU reference, on random inputs with odd sizes, on
//! whatever adapter the machine has (Mesa lavapipe in CI).
//!
//! Tolerances (f32 everywhere):
//! - exact (bit-identical): copies, gathers, scatters, add, and the cache contents after KV
//!   write + compaction (probed by attending to one slot at a time);
//! - matmul (every kernel: vec, small, tiled, row-split weights) and attention: max |gpu - cpu|
//!   <= 1e-5 x max |cpu| over the output (sums run in a different order);
//! - elementwise activations, RoPE: |gpu - cpu| <= 1e-6 x max(1, |cpu|) per element (GELU here is
//!   the erf check: the WGSL erf must stay within 1e-6);
//! - norms: |gpu - cpu| <= 1e-5 x max(1, |cpu|) per element (one reduction in a different order).
//!
//! Without an adapter these tests FAIL, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;
use common::{gpu, gpu_each_kernel_choice, gpu_with};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::gpu::{GpuBackend, GpuOptions};
use spec_llava::backend::{AttnMask, Backend, CacheStep, Heads, Qkv, Rope, TopK};
use spec_llava::config::Activation;

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn read<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    pollster::block_on(b.read(t))
}

/// Both backends' copies of the same data.
struct Pair<'a> {
    cpu: &'a CpuBackend,
    gpu: &'a GpuBackend,
}

impl Pair<'_> {
    fn tensor(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> (
        <CpuBackend as Backend>::Tensor,
        <GpuBackend as Backend>::Tensor,
    ) {
        (
            self.cpu.tensor(data.to_vec(), rows, cols),
            self.gpu.tensor(data.to_vec(), rows, cols),
        )
    }
    fn weight(
        &self,
        data: &[f32],
        shape: &[usize],
    ) -> (
        <CpuBackend as Backend>::Weight,
        <GpuBackend as Backend>::Weight,
    ) {
        (
            self.cpu.weight(data.to_vec(), shape),
            self.gpu.weight(data.to_vec(), shape),
        )
    }
    /// Both results, after checking shapes agree and the GPU reported no error.
    fn results(
        &self,
        c: &<CpuBackend as Backend>::Tensor,
        g: &<GpuBackend as Backend>::Tensor,
    ) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(self.cpu.dims(c), self.gpu.dims(g), "shapes");
        let got = read(self.gpu, g);
        if let Some(e) = self.gpu.take_error() {
            panic!("{e}");
        }
        (got, c.data.clone())
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// max |got - want| <= tol * max |want|.
fn assert_rel_to_max(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = max_abs(want).max(f32::MIN_POSITIVE);
    let err = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} > {tol:e} x {scale:e}"
    );
    err / scale
}

/// |got - want| <= tol * max(1, |want|) elementwise.
fn assert_elementwise(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: gpu {g} vs cpu {w} (tolerance {tol:e})"
        );
    }
}

fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: gpu {g} vs cpu {w}");
    }
}

const ROWS: [usize; 5] = [1, 3, 17, 64, 130];
const COLS: [usize; 4] = [1, 7, 33, 257];

#[test]
fn every_kernel_compiles() {
    let Some(g) = gpu() else { return };
    g.compile_all().unwrap();
    assert!(!g.adapter_info().is_empty());
    println!("adapter: {}", g.adapter_info());
}

#[test]
fn linear_matches_cpu_for_every_kernel_and_odd_shape() {
    // With and without the CPU-driver choice: every m > 64 goes to matmul_small, or to
    // matmul_tiled, whatever adapter runs the test.
    for (_, g) in gpu_each_kernel_choice() {
        linear_matches_cpu_on(&g);
    }
}

fn linear_matches_cpu_on(g: &GpuBackend) {
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: g };
    let mut rng = StdRng::seed_from_u64(1);
    // Rows 1 (vec), 2..=64 (small), 65.. (tiled); k = 2100 spans several of matmul_vec's x tiles.
    let rows = [1, 2, 3, 8, 9, 17, 64, 65, 130];
    let shapes = [(1, 1), (7, 33), (33, 7), (257, 130), (1030, 65), (2100, 9)];
    let mut worst = 0f32;
    for (case, &m) in rows.iter().enumerate() {
        for (s, &(k, n)) in shapes.iter().enumerate() {
            let with_bias = (case + s) % 2 == 0;
            let (xc, xg) = p.tensor(&random(&mut rng, m * k), m, k);
            let (wc, wg) = p.weight(&random(&mut rng, n * k), &[n, k]);
            let (bc, bg) = p.weight(&random(&mut rng, n), &[n]);
            let c = cpu.linear(&xc, &wc, with_bias.then_some(&bc));
            let gt = g.linear(&xg, &wg, with_bias.then_some(&bg));
            let (got, want) = p.results(&c, &gt);
            let what = format!("linear m={m} k={k} n={n} bias={with_bias}");
            worst = worst.max(assert_rel_to_max(&what, &got, &want, 1e-5));
        }
    }
    println!("linear: worst relative error {worst:e}");
}

#[test]
fn weights_split_over_bindings_give_the_same_results() {
    // 1 KiB chunks: a [257, 33] weight (36 floats = 144 bytes per padded row) becomes 37 chunks.
    let Some(g) = gpu_with(GpuOptions {
        max_binding_bytes: Some(1024),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(2);
    let (n, k) = (257, 33);
    let (wc, wg) = p.weight(&random(&mut rng, n * k), &[n, k]);
    let (bc, bg) = p.weight(&random(&mut rng, n), &[n]);
    assert_eq!(wg.chunks(), 37);
    for m in [1, 5, 100] {
        let (xc, xg) = p.tensor(&random(&mut rng, m * k), m, k);
        let (got, want) = p.results(
            &cpu.linear(&xc, &wc, Some(&bc)),
            &g.linear(&xg, &wg, Some(&bg)),
        );
        assert_rel_to_max(&format!("split linear m={m}"), &got, &want, 1e-5);
    }
    // The same table as embeddings: ids from every chunk.
    let ids: Vec<u32> = (0..40)
        .map(|_| rng.random_range(0..n as u32))
        .chain([0, 256])
        .collect();
    let (got, want) = p.results(&cpu.embed(&wc, &ids), &g.embed(&wg, &ids));
    assert_exact("split embed", &got, &want);
}

#[test]
fn norms_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(3);
    for &rows in &ROWS {
        for &cols in COLS.iter().chain(&[1030]) {
            let x: Vec<f32> = random(&mut rng, rows * cols)
                .iter()
                .map(|v| v * 3.0 + 0.5)
                .collect();
            let (xc, xg) = p.tensor(&x, rows, cols);
            let (wc, wg) = p.weight(&random(&mut rng, cols), &[cols]);
            let (bc, bg) = p.weight(&random(&mut rng, cols), &[cols]);
            let (got, want) = p.results(&cpu.rms_norm(&xc, &wc, 1e-6), &g.rms_norm(&xg, &wg, 1e-6));
            assert_elementwise(&format!("rms_norm {rows}x{cols}"), &got, &want, 1e-5);
            let (got, want) = p.results(
                &cpu.layer_norm(&xc, &wc, &bc, 1e-5),
                &g.layer_norm(&xg, &wg, &bg, 1e-5),
            );
            assert_elementwise(&format!("layer_norm {rows}x{cols}"), &got, &want, 1e-5);
        }
    }
}

const ACTIVATIONS: [Activation; 5] = [
    Activation::Silu,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::QuickGelu,
    Activation::Relu,
];

#[test]
fn activations_are_within_1e6_on_a_dense_grid() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    // [-12, 12] in steps of 1e-3 (every branch of the erf port), plus tiny and huge values.
    let mut x: Vec<f32> = (-12000..=12000).map(|i| i as f32 * 1e-3).collect();
    x.extend([
        1e-30, -1e-30, 3e-9, -3e-9, 0.84375, 1.25, 2.857_143, 6.0, -6.0, 30.0, -30.0, 1e4, -1e4,
    ]);
    let (xc, xg) = p.tensor(&x, 1, x.len());
    for act in ACTIVATIONS {
        let (got, want) = p.results(&cpu.activate(&xc, act), &g.activate(&xg, act));
        assert_elementwise(&format!("{act:?}"), &got, &want, 1e-6);
    }
}

#[test]
fn gated_add_and_add_weight_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(4);
    for &rows in &ROWS {
        for &cols in &COLS {
            let n = rows * cols;
            let a: Vec<f32> = random(&mut rng, n).iter().map(|v| v * 6.0).collect();
            let (ac, ag) = p.tensor(&a, rows, cols);
            let (bc, bg) = p.tensor(&random(&mut rng, n), rows, cols);
            for act in ACTIVATIONS {
                let (got, want) = p.results(&cpu.gated(&ac, &bc, act), &g.gated(&ag, &bg, act));
                assert_elementwise(&format!("gated {act:?} {rows}x{cols}"), &got, &want, 1e-6);
            }
            let (got, want) = p.results(&cpu.add(&ac, &bc), &g.add(&ag, &bg));
            assert_exact(&format!("add {rows}x{cols}"), &got, &want);
            // A 2-D weight: rows padded to a multiple of 4 on the GPU.
            let (wc, wg) = p.weight(&random(&mut rng, n), &[rows, cols]);
            let (got, want) = p.results(&cpu.add_weight(&ac, &wc), &g.add_weight(&ag, &wg));
            assert_exact(&format!("add_weight {rows}x{cols}"), &got, &want);
        }
    }
}

#[test]
fn stacked_gate_up_and_column_slices_equal_their_parts() {
    // `gated_stacked` reads gate and up side by side in one tensor (a stacked gate/up
    // projection's output): bit for bit `gated` on the two halves, on both engines; and
    // `slice_cols` (what the trait's default splits with) is an exact copy.
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(14);
    for &rows in &ROWS {
        for &cols in &COLS {
            let gate: Vec<f32> = random(&mut rng, rows * cols)
                .iter()
                .map(|v| v * 6.0)
                .collect();
            let up = random(&mut rng, rows * cols);
            let both: Vec<f32> = (0..rows)
                .flat_map(|i| {
                    let row = i * cols..(i + 1) * cols;
                    gate[row.clone()].iter().chain(&up[row]).copied()
                })
                .collect();
            let (gc, gg) = p.tensor(&gate, rows, cols);
            let (uc, ug) = p.tensor(&up, rows, cols);
            let (bc, bg) = p.tensor(&both, rows, 2 * cols);
            let what = format!("{rows}x{cols}");
            let (got, want) = p.results(
                &cpu.slice_cols(&bc, cols, 2 * cols),
                &g.slice_cols(&bg, cols, 2 * cols),
            );
            assert_exact(&format!("slice_cols {what}"), &got, &want);
            assert_exact(&format!("slice_cols {what} (cpu)"), &want, &up);
            for act in ACTIVATIONS {
                let (sep_c, sep_g) = (cpu.gated(&gc, &uc, act), g.gated(&gg, &ug, act));
                let (st_c, st_g) = (cpu.gated_stacked(&bc, act), g.gated_stacked(&bg, act));
                let (got, want) = p.results(&st_c, &st_g);
                let (sep_got, sep_want) = p.results(&sep_c, &sep_g);
                assert_exact(
                    &format!("gated_stacked {act:?} {what} (gpu)"),
                    &got,
                    &sep_got,
                );
                assert_exact(
                    &format!("gated_stacked {act:?} {what} (cpu)"),
                    &want,
                    &sep_want,
                );
            }
        }
    }
}

#[test]
fn stacked_qkv_attention_equals_split_qkv_bit_for_bit() {
    // `rope_cached_attention_stacked` takes q, k, v side by side in one tensor (a stacked q/k/v
    // projection's output): on each engine, the output and the cache it leaves (seen through a
    // second step) are bit for bit those of the three tensors.
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let mut rng = StdRng::seed_from_u64(15);
    let rope = Rope {
        theta: 10000.0,
        linear_factor: 1.0,
    };
    for (h, n) in [
        (
            Heads {
                q_heads: 4,
                kv_heads: 2,
                head_dim: 32,
            },
            5,
        ),
        (
            Heads {
                q_heads: 3,
                kv_heads: 3,
                head_dim: 6,
            },
            1,
        ),
    ] {
        let (qw, kw) = (h.q_heads * h.head_dim, h.kv_heads * h.head_dim);
        let (q, k, v) = (
            random(&mut rng, n * qw),
            random(&mut rng, n * kw),
            random(&mut rng, n * kw),
        );
        let rows = |t: &[f32], w: usize, i: usize| t[i * w..(i + 1) * w].to_vec();
        let both: Vec<f32> = (0..n)
            .flat_map(|i| [rows(&q, qw, i), rows(&k, kw, i), rows(&v, kw, i)].concat())
            .collect();
        let positions: Vec<u32> = (0..n as u32).map(|i| 3 + i).collect();
        let next: Vec<u32> = vec![3 + n as u32];
        let step = |start, positions| CacheStep {
            start,
            positions,
            rope,
            mask: &AttnMask::Causal,
        };
        let (q1, k1, v1) = (
            random(&mut rng, qw),
            random(&mut rng, kw),
            random(&mut rng, kw),
        );
        macro_rules! both_ways {
            ($b:expr) => {{
                let b = $b;
                let (qt, kt, vt) = (
                    b.tensor(q.clone(), n, qw),
                    b.tensor(k.clone(), n, kw),
                    b.tensor(v.clone(), n, kw),
                );
                let st = b.tensor(both.clone(), n, qw + 2 * kw);
                let (mut split_cache, mut stacked_cache) =
                    (b.new_cache(1, kw, 8), b.new_cache(1, kw, 8));
                let split = b.rope_cached_attention(
                    &mut split_cache,
                    0,
                    Qkv {
                        q: &qt,
                        k: &kt,
                        v: &vt,
                    },
                    step(0, &positions),
                    h,
                );
                let stacked = b.rope_cached_attention_stacked(
                    &mut stacked_cache,
                    0,
                    &st,
                    step(0, &positions),
                    h,
                );
                // A step after: it reads the keys and values each way left in its cache.
                let (qn, kn, vn) = (
                    b.tensor(q1.clone(), 1, qw),
                    b.tensor(k1.clone(), 1, kw),
                    b.tensor(v1.clone(), 1, kw),
                );
                let after = |cache: &mut _| {
                    read(
                        b,
                        &b.rope_cached_attention(
                            cache,
                            0,
                            Qkv {
                                q: &qn,
                                k: &kn,
                                v: &vn,
                            },
                            step(n, &next),
                            h,
                        ),
                    )
                };
                let (a_split, a_stacked) = (after(&mut split_cache), after(&mut stacked_cache));
                (read(b, &split), read(b, &stacked), a_split, a_stacked)
            }};
        }
        for (engine, (split, stacked, a_split, a_stacked)) in
            [("cpu", both_ways!(&cpu)), ("gpu", both_ways!(&g))]
        {
            let what = format!("{engine} {h:?} n={n}");
            assert_exact(&format!("stacked q/k/v, {what}"), &stacked, &split);
            assert_exact(
                &format!("step after stacked q/k/v, {what}"),
                &a_stacked,
                &a_split,
            );
        }
        if let Some(e) = g.take_error() {
            panic!("{e}");
        }
    }
}

#[test]
fn rope_matches_cpu_at_large_positions() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(5);
    let ropes = [
        Rope {
            theta: 10000.0,
            linear_factor: 1.0,
        },
        Rope {
            theta: 1e6,
            linear_factor: 2.0,
        },
    ];
    for (n, heads, head_dim) in [(1, 1, 2), (3, 4, 16), (17, 3, 7), (130, 2, 128), (5, 6, 72)] {
        for rope in ropes {
            let positions: Vec<u32> = (0..n).map(|_| rng.random_range(0..40_000)).collect();
            let (xc, xg) = p.tensor(&random(&mut rng, n * heads * head_dim), n, heads * head_dim);
            let c = cpu.rope(&xc, &positions, heads, head_dim, rope);
            let (got, want) = p.results(&c, &g.rope(&xg, &positions, heads, head_dim, rope));
            assert_elementwise(&format!("rope n={n} {heads}x{head_dim}"), &got, &want, 1e-6);
        }
    }
}

#[test]
fn row_ops_and_embed_are_exact() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(6);
    for &rows in &ROWS {
        for &cols in &COLS {
            let (xc, xg) = p.tensor(&random(&mut rng, rows * cols), rows, cols);
            let (rc, rg) = p.weight(&random(&mut rng, cols), &[cols]);
            let (got, want) = p.results(&cpu.prepend_row(&xc, &rc), &g.prepend_row(&xg, &rg));
            assert_exact("prepend_row", &got, &want);
            let (s, e) = (rows / 3, rows - rows / 4);
            let (got, want) = p.results(&cpu.slice_rows(&xc, s, e), &g.slice_rows(&xg, s, e));
            assert_exact("slice_rows", &got, &want);
            let (yc, yg) = p.tensor(&random(&mut rng, rows * 5), rows, 5);
            let (got, want) = p.results(
                &cpu.concat_cols(&[&xc, &yc, &xc]),
                &g.concat_cols(&[&xg, &yg, &xg]),
            );
            assert_exact("concat_cols", &got, &want);
            let picked: Vec<usize> = (0..rows).filter(|_| rng.random_bool(0.4)).collect();
            let (sc, sg) = p.tensor(&random(&mut rng, picked.len() * cols), picked.len(), cols);
            let (got, want) = p.results(
                &cpu.scatter_rows(&xc, &picked, &sc),
                &g.scatter_rows(&xg, &picked, &sg),
            );
            assert_exact("scatter_rows", &got, &want);
        }
    }
    let (vocab, dim) = (1000, 33);
    let (tc, tg) = p.weight(&random(&mut rng, vocab * dim), &[vocab, dim]);
    for n in [1, 3, 130] {
        let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
        let (got, want) = p.results(&cpu.embed(&tc, &ids), &g.embed(&tg, &ids));
        assert_exact("embed", &got, &want);
    }
}

#[test]
fn vision_attention_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(7);
    for (n, heads, head_dim) in [
        (1, 1, 1),
        (3, 2, 7),
        (17, 4, 16),
        (130, 3, 64),
        (65, 2, 72),
        (20, 1, 256),
    ] {
        let w = heads * head_dim;
        let (qc, qg) = p.tensor(&random(&mut rng, n * w), n, w);
        let (kc, kg) = p.tensor(&random(&mut rng, n * w), n, w);
        let (vc, vg) = p.tensor(&random(&mut rng, n * w), n, w);
        let h = Heads {
            q_heads: heads,
            kv_heads: heads,
            head_dim,
        };
        let (got, want) = p.results(
            &cpu.attention(&qc, &kc, &vc, h),
            &g.attention(&qg, &kg, &vg, h),
        );
        assert_rel_to_max(
            &format!("attention n={n} {heads}x{head_dim}"),
            &got,
            &want,
            1e-5,
        );
    }
}

/// A random tree over `nodes` nodes (node 0 is a root; each later node hangs under an earlier one
/// or is another root) as ancestor-or-self sets.
fn random_tree(rng: &mut StdRng, nodes: usize) -> Vec<Vec<bool>> {
    let mut anc = vec![vec![false; nodes]; nodes];
    for i in 0..nodes {
        if i > 0 && rng.random_bool(0.85) {
            let parent = rng.random_range(0..i);
            anc[i] = anc[parent].clone();
        }
        anc[i][i] = true;
    }
    anc
}

/// The mask of the last `n` of `nodes` tree nodes, `ctx = nodes - n` of them already cached.
fn tree_mask(anc: &[Vec<bool>], n: usize) -> AttnMask {
    let nodes = anc.len();
    let ctx = nodes - n;
    let allowed = anc[ctx..]
        .iter()
        .flat_map(|row| row.iter().copied())
        .collect();
    AttnMask::Tree { ctx, n, allowed }
}

/// One cached-attention step on both backends with fresh random q, k, v.
#[allow(clippy::too_many_arguments)]
fn step(
    p: &Pair,
    rng: &mut StdRng,
    caches: (
        &mut <CpuBackend as Backend>::Cache,
        &mut <GpuBackend as Backend>::Cache,
    ),
    layer: usize,
    start: usize,
    n: usize,
    mask: &AttnMask,
    h: Heads,
    what: &str,
) {
    let (qw, kw) = (h.q_heads * h.head_dim, h.kv_heads * h.head_dim);
    let (qc, qg) = p.tensor(&random(rng, n * qw), n, qw);
    let (kc, kg) = p.tensor(&random(rng, n * kw), n, kw);
    let (vc, vg) = p.tensor(&random(rng, n * kw), n, kw);
    let c = p.cpu.cached_attention(
        caches.0,
        layer,
        start,
        Qkv {
            q: &qc,
            k: &kc,
            v: &vc,
        },
        mask,
        h,
    );
    let gt = p.gpu.cached_attention(
        caches.1,
        layer,
        start,
        Qkv {
            q: &qg,
            k: &kg,
            v: &vg,
        },
        mask,
        h,
    );
    let (got, want) = p.results(&c, &gt);
    assert_rel_to_max(what, &got, &want, 1e-5);
}

#[test]
fn cached_attention_with_random_tree_masks_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(8);
    let configs = [
        Heads {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 16,
        },
        Heads {
            q_heads: 6,
            kv_heads: 1,
            head_dim: 72,
        },
        Heads {
            q_heads: 3,
            kv_heads: 3,
            head_dim: 7,
        },
        Heads {
            q_heads: 2,
            kv_heads: 1,
            head_dim: 128,
        },
    ];
    for (c, h) in configs.into_iter().enumerate() {
        let layers = 2;
        let kv_dim = h.kv_heads * h.head_dim;
        // A small capacity: the GPU cache has to grow (the CPU one grows on demand).
        let mut cc = cpu.new_cache(layers, kv_dim, 4);
        let mut gc = g.new_cache(layers, kv_dim, 4);
        let mut needed = 0;
        for layer in 0..layers {
            let prompt = [1, 17, 130][(c + layer) % 3];
            needed = needed.max(prompt + 1 + 15);
            step(
                &p,
                &mut rng,
                (&mut cc, &mut gc),
                layer,
                0,
                prompt,
                &AttnMask::Causal,
                h,
                "prefill",
            );
            step(
                &p,
                &mut rng,
                (&mut cc, &mut gc),
                layer,
                prompt,
                1,
                &AttnMask::Causal,
                h,
                "decode",
            );
            let start = prompt + 1;
            // Target verification: a whole tree of new tokens (ctx = 0), 33+ nodes spans two words.
            for n in [1, 5, 40] {
                let anc = random_tree(&mut rng, n);
                step(
                    &p,
                    &mut rng,
                    (&mut cc, &mut gc),
                    layer,
                    start,
                    n,
                    &tree_mask(&anc, n),
                    h,
                    "tree ctx=0",
                );
            }
            // Draft expansion: 6 tree nodes written in one pass, then 9 more below them with the
            // first 6 as cached context (ctx = 6).
            let anc = random_tree(&mut rng, 15);
            let first: Vec<Vec<bool>> = anc[..6].iter().map(|r| r[..6].to_vec()).collect();
            step(
                &p,
                &mut rng,
                (&mut cc, &mut gc),
                layer,
                start,
                6,
                &tree_mask(&first, 6),
                h,
                "tree nodes",
            );
            step(
                &p,
                &mut rng,
                (&mut cc, &mut gc),
                layer,
                start + 6,
                9,
                &tree_mask(&anc, 9),
                h,
                "tree ctx=6",
            );
        }
        assert!(
            gc.capacity() >= needed,
            "the GPU cache grew to {}, {needed} slots were written",
            gc.capacity()
        );
    }
}

#[test]
fn kv_compaction_keeps_the_accepted_path() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(9);
    let h = Heads {
        q_heads: 4,
        kv_heads: 2,
        head_dim: 24,
    };
    let layers = 3;
    let kv_dim = h.kv_heads * h.head_dim;
    let mut cc = cpu.new_cache(layers, kv_dim, 64);
    let mut gc = g.new_cache(layers, kv_dim, 64);
    let prompt = 10;
    let anc = random_tree(&mut rng, 12);
    for layer in 0..layers {
        step(
            &p,
            &mut rng,
            (&mut cc, &mut gc),
            layer,
            0,
            prompt,
            &AttnMask::Causal,
            h,
            "prefill",
        );
        step(
            &p,
            &mut rng,
            (&mut cc, &mut gc),
            layer,
            prompt,
            12,
            &tree_mask(&anc, 12),
            h,
            "tree",
        );
    }
    // Keep the path to the deepest node (its ancestors, in order); then an overlapping case where
    // a source slot is also a later destination (to 0..3 from 2, 3, 5).
    let leaf = (0..12)
        .max_by_key(|&i| anc[i].iter().filter(|&&a| a).count())
        .unwrap();
    let path: Vec<usize> = (0..12)
        .filter(|&j| anc[leaf][j])
        .map(|j| prompt + j)
        .collect();
    assert!(
        path.len() >= 3,
        "the random tree should have a real path: {path:?}"
    );
    for (from, to_start) in [(path.clone(), prompt), (vec![2, 3, 5], 0)] {
        cpu.compact_cache(&mut cc, &from, to_start);
        g.compact_cache(&mut gc, &from, to_start);
        let len = to_start + from.len();
        for layer in 0..layers {
            for slot in 0..len {
                probe_slot(&p, (&mut cc, &mut gc), layer, len, slot, h);
            }
        }
        // Attention after compaction reads the moved slots: one decode step per layer.
        for layer in 0..layers {
            step(
                &p,
                &mut rng,
                (&mut cc, &mut gc),
                layer,
                len,
                1,
                &AttnMask::Causal,
                h,
                "after compaction",
            );
        }
    }
}

/// The cached values of `slot` must be bit-identical on both backends: a query whose mask shows it
/// that one slot gets softmax weight exactly 1 there, so attention returns the slot's values as
/// they are stored. (The probe itself writes zeros at slot `len`, past what is checked.)
fn probe_slot(
    p: &Pair,
    caches: (
        &mut <CpuBackend as Backend>::Cache,
        &mut <GpuBackend as Backend>::Cache,
    ),
    layer: usize,
    len: usize,
    slot: usize,
    h: Heads,
) {
    let (qw, kw) = (h.q_heads * h.head_dim, h.kv_heads * h.head_dim);
    let mut allowed = vec![false; len + 1];
    allowed[slot] = true;
    let mask = AttnMask::Tree {
        ctx: len,
        n: 1,
        allowed,
    };
    let (qc, qg) = p.tensor(&vec![0.5; qw], 1, qw);
    let (kc, kg) = p.tensor(&vec![0.0; kw], 1, kw);
    let (vc, vg) = p.tensor(&vec![0.0; kw], 1, kw);
    let c = p.cpu.cached_attention(
        caches.0,
        layer,
        len,
        Qkv {
            q: &qc,
            k: &kc,
            v: &vc,
        },
        &mask,
        h,
    );
    let gt = p.gpu.cached_attention(
        caches.1,
        layer,
        len,
        Qkv {
            q: &qg,
            k: &kg,
            v: &vg,
        },
        &mask,
        h,
    );
    let (got, want) = p.results(&c, &gt);
    assert_exact(
        &format!("layer {layer} slot {slot} after compaction"),
        &got,
        &want,
    );
}

#[test]
fn a_step_is_one_submit_and_buffers_are_recycled() {
    let Some(g) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(10);
    let w = g.weight(random(&mut rng, 64 * 64), &[64, 64]);
    let n = g.weight(random(&mut rng, 64), &[64]);
    let run = |x: Vec<f32>| {
        let mut h = g.tensor(x, 1, 64);
        for _ in 0..20 {
            let y = g.rms_norm(&h, &n, 1e-5);
            let y = g.linear(&y, &w, None);
            h = g.add(&h, &g.activate(&y, Activation::Silu));
        }
        let before = g.submits();
        let out = read(&g, &h);
        (out, g.submits() - before)
    };
    let (_, submits) = run(random(&mut rng, 64));
    assert_eq!(submits, 1, "a read submits the pending step exactly once");
    let pooled = g.pooled_bytes();
    let (out, _) = run(random(&mut rng, 64));
    assert_eq!(
        g.pooled_bytes(),
        pooled,
        "the second step reuses the first step's buffers"
    );
    assert!(out.iter().all(|v| v.is_finite()));
    assert!(g.take_error().is_none());
}

#[test]
fn top_k_and_log_sum_exp_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend;
    let p = Pair { cpu: &cpu, gpu: &g };
    let mut rng = StdRng::seed_from_u64(11);
    for (rows, vocab) in [(1, 1), (3, 5), (25, 447), (2, 1000), (4, 32000)] {
        let mut data = random(&mut rng, rows * vocab);
        // Ties (the lower index must win) and NaNs (skipped) in every row.
        for r in 0..rows {
            let row = &mut data[r * vocab..(r + 1) * vocab];
            if vocab > 3 {
                row[vocab - 1] = 9.0;
                row[1] = 9.0;
                row[2] = f32::NAN;
            }
        }
        let (xc, xg) = p.tensor(&data, rows, vocab);
        for k in [1, 4, 16] {
            let (got, want) = p.results(&cpu.top_k(&xc, k), &g.top_k(&xg, k));
            let (got, want) = (TopK::parse(&got, k, vocab), TopK::parse(&want, k, vocab));
            assert_eq!(got.len(), rows);
            for (r, (a, b)) in got.iter().zip(&want).enumerate() {
                let what = format!("top_k rows={rows} vocab={vocab} k={k} row {r}");
                assert_eq!(a.ids, b.ids, "{what}");
                assert_eq!(a.values, b.values, "{what}");
                assert!(
                    (a.lse - b.lse).abs() <= 1e-5 * b.lse.abs().max(1.0),
                    "{what}: lse {} vs {}",
                    a.lse,
                    b.lse
                );
                if vocab > 3 {
                    assert_eq!(a.ids[0], 1, "{what}: ties go to the lower index");
                }
                // The CPU's own argmax and log-softmax agree with the parsed output.
                let row = &data[r * vocab..(r + 1) * vocab];
                let finite: Vec<f32> = row
                    .iter()
                    .map(|v| if v.is_nan() { f32::NEG_INFINITY } else { *v })
                    .collect();
                assert_eq!(b.ids[0], spec_llava::sampling::argmax(&finite), "{what}");
                let lse = spec_llava::speculative::tree::log_softmax(&finite);
                assert!(
                    (b.values[0] - b.lse - lse[b.ids[0] as usize]).abs() < 1e-4,
                    "{what}"
                );
            }
        }
        // Scaled (1 / temperature for nucleus sampling): both engines rank and sum `v * scale`,
        // and scale 1 is `top_k` bit for bit.
        for scale in [1.0f32, 1.0 / 0.7, 4.0] {
            let (got, want) = p.results(
                &cpu.top_k_scaled(&xc, 16, scale),
                &g.top_k_scaled(&xg, 16, scale),
            );
            if scale == 1.0 {
                let plain = p.results(&cpu.top_k(&xc, 16), &g.top_k(&xg, 16));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&plain.0), "scale 1 is top_k (gpu)");
                assert_eq!(bits(&want), bits(&plain.1), "scale 1 is top_k (cpu)");
            }
            let (got, want) = (TopK::parse(&got, 16, vocab), TopK::parse(&want, 16, vocab));
            let scaled: Vec<f32> = data.iter().map(|v| v * scale).collect();
            let (sc, _) = p.tensor(&scaled, rows, vocab);
            let plain = TopK::parse(&cpu.top_k(&sc, 16).data, 16, vocab);
            for (r, ((a, b), c)) in got.iter().zip(&want).zip(&plain).enumerate() {
                let what = format!("top_k_scaled {scale} rows={rows} vocab={vocab} row {r}");
                assert_eq!((&a.ids, &a.values), (&b.ids, &b.values), "{what}");
                assert_eq!((&b.ids, &b.values), (&c.ids, &c.values), "{what}");
                assert!(
                    (a.lse - b.lse).abs() <= 1e-5 * b.lse.abs().max(1.0),
                    "{what}"
                );
            }
        }
    }
}

/// `rope_cached_attention` (the GPU engine rotates q and k and writes the cache in one kernel)
/// equals `rope`, `rope`, `cached_attention` bit for bit: its output, and the keys and values it
/// leaves in the cache (a later step over both caches gives the same output). GQA heads, a head
/// dim with an odd element past the rotated pairs (copied), a prompt then a tree step.
#[test]
fn fused_rope_and_cache_write_equal_the_separate_ops_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(13);
    let rope = Rope {
        theta: 10000.0,
        linear_factor: 1.0,
    };
    for h in [
        Heads {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
        },
        Heads {
            q_heads: 3,
            kv_heads: 1,
            head_dim: 5,
        },
    ] {
        let (qw, kw) = (h.q_heads * h.head_dim, h.kv_heads * h.head_dim);
        let mut fused = g.new_cache(1, kw, 8);
        let mut separate = g.new_cache(1, kw, 8);
        let anc = random_tree(&mut rng, 9);
        let prompt = 7;
        let steps = [
            (0, prompt, AttnMask::Causal),
            (prompt, 9, tree_mask(&anc, 9)),
            (prompt + 9, 1, AttnMask::Causal),
        ];
        for (start, n, mask) in steps {
            let positions: Vec<u32> = (0..n as u32).map(|i| 1000 + start as u32 + i).collect();
            let q = g.tensor(random(&mut rng, n * qw), n, qw);
            let k = g.tensor(random(&mut rng, n * kw), n, kw);
            let v = g.tensor(random(&mut rng, n * kw), n, kw);
            let qkv = Qkv {
                q: &q,
                k: &k,
                v: &v,
            };
            let at = spec_llava::backend::CacheStep {
                start,
                positions: &positions,
                rope,
                mask: &mask,
            };
            let one = g.rope_cached_attention(&mut fused, 0, qkv, at, h);
            let qr = g.rope(&q, &positions, h.q_heads, h.head_dim, rope);
            let kr = g.rope(&k, &positions, h.kv_heads, h.head_dim, rope);
            let qkv = Qkv {
                q: &qr,
                k: &kr,
                v: &v,
            };
            let three = g.cached_attention(&mut separate, 0, start, qkv, &mask, h);
            let what = format!("{h:?}, {n} tokens at {start}");
            assert_exact(&what, &read(&g, &one), &read(&g, &three));
        }
    }
    assert!(g.take_error().is_none());
}
