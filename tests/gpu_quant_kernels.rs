//! The q8 / q4 / f16 matmul kernels (`shaders/matmul_vec.wgsl` with `weights_{q8,q4,f16}.wgsl`,
//! `shaders/matmul_tiled.wgsl`) against
//! the CPU reference, which computes with the same weights dequantized to f32 (so the two see
//! identical weight values and differ only in the order and grouping of the sums).
//!
//! Shapes: x rows 1..=64 (mat-vec), 65.. (tiled); input widths that are whole groups
//! of 32, a partial last group (70, 688 as in the demo target's MLP) and odd widths (1, 7, 45);
//! output widths odd and not multiples of the workgroup tiles; with and without bias; weights split
//! over several storage bindings.
//!
//! Tolerance: max |gpu - cpu| <= 1e-5 x max |cpu| over the output, as for the f32 kernels (the
//! quantized kernels scale each word's partial dot product instead of each weight, which moves
//! rounding by a few ulps).
//!
//! Without an adapter these tests FAIL, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;
use common::{gpu_each_kernel_choice, gpu_with};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::gpu::{DeviceKernels, GpuBackend, GpuOptions, WeightDType};
use spec_llava::backend::Backend;
use spec_llava::config::Activation;
use spec_llava::quant::{Format, WeightData};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn read<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    pollster::block_on(b.read(t))
}

/// max |got - want| / max |want|, after checking it is <= tol.
fn check(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    let err = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(
            0f32,
            |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        );
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} > {tol:e} x {scale:e}"
    );
    err / scale
}

const FORMATS: [(Format, WeightDType); 3] = [
    (Format::Q8, WeightDType::Q8),
    (Format::Q4, WeightDType::Q4),
    (Format::F16, WeightDType::F16),
];

/// One linear on both backends with the weight stored in `format`; returns the relative error.
#[allow(clippy::too_many_arguments)]
fn compare(
    g: &GpuBackend,
    rng: &mut StdRng,
    format: Format,
    dtype: WeightDType,
    m: usize,
    k: usize,
    n: usize,
    with_bias: bool,
) -> f32 {
    let cpu = CpuBackend;
    let data = WeightData::convert(random(rng, n * k), n, k, format);
    let wc = cpu.weight_data(data.clone(), &[n, k]);
    let wg = g.weight_data(data, &[n, k]);
    assert_eq!(wg.dtype(), dtype);
    let x = random(rng, m * k);
    let b = random(rng, n);
    let (bc, bg) = (cpu.weight(b.clone(), &[n]), g.weight(b, &[n]));
    let c = cpu.linear(&cpu.tensor(x.clone(), m, k), &wc, with_bias.then_some(&bc));
    let gt = g.linear(&g.tensor(x, m, k), &wg, with_bias.then_some(&bg));
    let got = read(g, &gt);
    if let Some(e) = g.take_error() {
        panic!("{e}");
    }
    let what = format!(
        "{} linear m={m} k={k} n={n} bias={with_bias}",
        format.name()
    );
    check(&what, &got, &c.data, 1e-5)
}

#[test]
fn quantized_and_f16_linear_match_cpu_for_every_kernel_and_odd_shape() {
    let Some(g) = gpu_with(GpuOptions::default()) else {
        return;
    };
    g.compile_all().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let rows = [1, 2, 3, 17, 64, 65, 130];
    // (k, n): whole groups, a partial last group, odd widths, a long row for matmul_vec.
    let shapes = [
        (32, 5),
        (64, 33),
        (70, 17),
        (45, 64),
        (7, 3),
        (1, 1),
        (688, 70),
        (2080, 9),
    ];
    for (format, dtype) in FORMATS {
        let mut worst = 0f32;
        for (i, &m) in rows.iter().enumerate() {
            for (s, &(k, n)) in shapes.iter().enumerate() {
                let e = compare(&g, &mut rng, format, dtype, m, k, n, (i + s) % 2 == 0);
                worst = worst.max(e);
            }
        }
        println!("{}: worst relative error {worst:e}", format.name());
    }
}

#[test]
fn quantized_weights_split_over_bindings_give_the_same_results() {
    // 1 KiB chunks: a [257, 96] q8 weight (3 blocks = 96 code bytes per row) becomes 26 chunks,
    // q4 (48 bytes per row) 13, f16 (192 bytes per row) 52.
    let Some(g) = gpu_with(GpuOptions {
        max_binding_bytes: Some(1024),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(12);
    let (n, k) = (257, 96);
    for ((format, dtype), chunks) in FORMATS.into_iter().zip([26, 13, 52]) {
        let data = WeightData::convert(random(&mut rng, n * k), n, k, format);
        assert_eq!(g.weight_data(data, &[n, k]).chunks(), chunks, "{format:?}");
        for m in [1, 5, 100] {
            compare(&g, &mut rng, format, dtype, m, k, n, true);
        }
    }
}

#[test]
fn packed_weights_stay_packed_and_vectors_are_widened() {
    let Some(g) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let cpu = CpuBackend;
    let mut rng = StdRng::seed_from_u64(13);
    // A 1-D weight given as f16 is widened to f32 (only matrices are kept packed).
    let v = random(&mut rng, 40);
    let data = WeightData::convert(v.clone(), 1, 40, Format::F16);
    let wg = g.weight_data(data.clone(), &[40]);
    assert_eq!(wg.dtype(), WeightDType::F32);
    let x = random(&mut rng, 3 * 40);
    let want = cpu.rms_norm(
        &cpu.tensor(x.clone(), 3, 40),
        &cpu.weight_data(data, &[40]),
        1e-5,
    );
    let got = read(&g, &g.rms_norm(&g.tensor(x, 3, 40), &wg, 1e-5));
    assert!(g.take_error().is_none());
    check("rms_norm with an f16 weight", &got, &want.data, 1e-5);
}

/// Every batch of up to 64 rows, in every weight format (f32 included), on both kernel choices
/// (CPU drivers and GPUs), gives each row exactly what that row alone gives, bit for bit: the
/// mat-vec sums every output in one order whatever the batch (`shaders/matmul_vec.wgsl`). So a
/// verified tree node's logits are exactly a one-token pass's, which is what makes greedy
/// speculative output equal plain decoding. Odd widths take the gathered-x path.
#[test]
fn batches_equal_their_rows_bit_for_bit() {
    for (cpu_kernels, g) in gpu_each_kernel_choice() {
        let mut rng = StdRng::seed_from_u64(11);
        for (k, n) in [(256, 96), (45, 33), (688, 70)] {
            let formats = FORMATS.iter().map(|&(f, _)| Some(f)).chain([None]);
            for format in formats {
                let values = random(&mut rng, n * k);
                let w = match format {
                    Some(f) => g.weight_data(WeightData::convert(values, n, k, f), &[n, k]),
                    None => g.weight(values, &[n, k]),
                };
                let bias = g.weight(random(&mut rng, n), &[n]);
                for m in [2, 3, 5, 17, 64] {
                    let x = random(&mut rng, m * k);
                    let batch = read(&g, &g.linear(&g.tensor(x.clone(), m, k), &w, Some(&bias)));
                    for row in [0, m / 2, m - 1] {
                        let one = g.tensor(x[row * k..(row + 1) * k].to_vec(), 1, k);
                        let one = read(&g, &g.linear(&one, &w, Some(&bias)));
                        let same = batch[row * n..(row + 1) * n]
                            .iter()
                            .zip(&one)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{format:?} k={k} n={n}: row {row} of {m} differs from the row alone \
                             (cpu kernels: {cpu_kernels})"
                        );
                    }
                }
            }
        }
        assert!(g.take_error().is_none());
    }
}

/// `linear_add` (the residual add fused into the mat-vec's epilogue up to 64 rows, a separate add
/// above) equals `add(residual, linear(x))` bit for bit, in every weight format, with and without
/// bias, with weights split over several bindings.
#[test]
fn linear_add_equals_add_of_linear_bit_for_bit() {
    for (cpu_kernels, g) in gpu_each_kernel_choice() {
        let split = gpu_with(GpuOptions {
            cpu_kernels: Some(cpu_kernels),
            max_binding_bytes: Some(4096),
            ..GpuOptions::default()
        });
        let mut rng = StdRng::seed_from_u64(12);
        let (k, n) = (96, 70);
        for g in [Some(g), split].iter().flatten() {
            let formats = FORMATS.iter().map(|&(f, _)| Some(f)).chain([None]);
            for format in formats {
                let values = random(&mut rng, n * k);
                let w = match format {
                    Some(f) => g.weight_data(WeightData::convert(values, n, k, f), &[n, k]),
                    None => g.weight(values, &[n, k]),
                };
                let bias = g.weight(random(&mut rng, n), &[n]);
                for (m, with_bias) in [(1, true), (5, false), (64, true), (100, false)] {
                    let b = with_bias.then_some(&bias);
                    let x = g.tensor(random(&mut rng, m * k), m, k);
                    let r = random(&mut rng, m * n);
                    let want = g.add(&g.tensor(r.clone(), m, n), &g.linear(&x, &w, b));
                    let got = g.linear_add(&x, &w, b, g.tensor(r, m, n));
                    let (got, want) = (read(g, &got), read(g, &want));
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{format:?} m={m} bias={with_bias} (cpu kernels: {cpu_kernels})"
                    );
                }
            }
            assert!(g.take_error().is_none());
        }
    }
}

/// One weight of a norm-then-linear test on both engines: the matrix in a format (`None`: f32),
/// an RMSNorm weight around 1 and a bias, drawn from `rng` in that order.
struct NormCase {
    w: <GpuBackend as Backend>::Weight,
    wc: <CpuBackend as Backend>::Weight,
    nw: <GpuBackend as Backend>::Weight,
    nc: <CpuBackend as Backend>::Weight,
    bw: <GpuBackend as Backend>::Weight,
    bc: <CpuBackend as Backend>::Weight,
}

impl NormCase {
    fn new(g: &GpuBackend, rng: &mut StdRng, k: usize, n: usize, format: Option<Format>) -> Self {
        let cpu = CpuBackend;
        let values = random(rng, n * k);
        let data = match format {
            Some(f) => WeightData::convert(values, n, k, f),
            None => WeightData::F32(values),
        };
        let w = g.weight_data(data.clone(), &[n, k]);
        let wc = cpu.weight_data(data, &[n, k]);
        let norm: Vec<f32> = random(rng, k).iter().map(|v| 1.0 + v).collect();
        let (nw, nc) = (g.weight(norm.clone(), &[k]), cpu.weight(norm, &[k]));
        let bias = random(rng, n);
        let (bw, bc) = (g.weight(bias.clone(), &[n]), cpu.weight(bias, &[n]));
        NormCase {
            w,
            wc,
            nw,
            nc,
            bw,
            bc,
        }
    }

    /// `m` rows of x, wide enough that the norm matters.
    fn x(rng: &mut StdRng, m: usize, k: usize) -> Vec<f32> {
        random(rng, m * k).iter().map(|v| v * 3.0).collect()
    }
}

/// `rms_norm_linear` (the norm fused into the mat-vec's prologue up to 64 rows with the GPU
/// kernels; the norm kernel, then the tiled GEMM, above, and `matmul_small` on CPU drivers) equals
/// `linear(rms_norm(x))` bit for bit, in every weight format, at widths that are not whole
/// vec4s, with weights split over several bindings; and stays within the f32 tolerance of the
/// CPU reference.
#[test]
fn rms_norm_linear_equals_linear_of_rms_norm_bit_for_bit() {
    let cpu = CpuBackend;
    for (cpu_kernels, g) in gpu_each_kernel_choice() {
        let split = gpu_with(GpuOptions {
            cpu_kernels: Some(cpu_kernels),
            max_binding_bytes: Some(4096),
            ..GpuOptions::default()
        });
        let mut rng = StdRng::seed_from_u64(13);
        for g in [Some(g), split].iter().flatten() {
            for (k, n) in [(96, 70), (45, 33), (688, 9)] {
                let formats = FORMATS.iter().map(|&(f, _)| Some(f)).chain([None]);
                for format in formats {
                    let c = NormCase::new(g, &mut rng, k, n, format);
                    let (w, wc, nw, nc, bw, bc) = (&c.w, &c.wc, &c.nw, &c.nc, &c.bw, &c.bc);
                    for (m, with_bias) in [(1, true), (5, false), (64, true), (100, false)] {
                        let (b, bcpu) = match with_bias {
                            true => (Some(bw), Some(bc)),
                            false => (None, None),
                        };
                        let values = NormCase::x(&mut rng, m, k);
                        let x = g.tensor(values.clone(), m, k);
                        let want = g.linear(&g.rms_norm(&x, nw, 1e-5), w, b);
                        let got = g.rms_norm_linear(&x, nw, 1e-5, w, b);
                        let (got, want) = (read(g, &got), read(g, &want));
                        let what = format!(
                            "{format:?} k={k} m={m} bias={with_bias} (cpu kernels: {cpu_kernels})"
                        );
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{what}"
                        );
                        let xc = cpu.tensor(values, m, k);
                        let reference = cpu.rms_norm_linear(&xc, nc, 1e-5, wc, bcpu);
                        check(&what, &got, &reference.data, 1e-5);
                    }
                }
            }
            assert!(g.take_error().is_none());
        }
    }
}

/// The SwiGLU block's first half in one kernel (`rms_norm_gated`: the norm in the mat-vec's
/// prologue and the activation in its epilogue on the GPU kernels; the norm kernel, then
/// `matmul_small` ending in the activation, on CPU drivers; the three ops for the tiled GEMM and
/// for gate/up weights split over bindings) equals `gated_stacked(rms_norm_linear(x))` bit for bit,
/// for every activation and weight format, at output widths that fill no tile; launches one
/// kernel (two on CPU drivers) where three ran; and stays within the f32 tolerance of the CPU.
#[test]
fn rms_norm_gated_equals_gated_of_rms_norm_linear_bit_for_bit() {
    let cpu = CpuBackend;
    let acts = [
        Activation::Silu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::QuickGelu,
        Activation::Relu,
    ];
    for (cpu_kernels, g) in gpu_each_kernel_choice() {
        let split = gpu_with(GpuOptions {
            cpu_kernels: Some(cpu_kernels),
            max_binding_bytes: Some(4096),
            ..GpuOptions::default()
        });
        let mut rng = StdRng::seed_from_u64(17);
        let mut case = 0;
        for (g, whole) in [(Some(g), true), (split, false)] {
            let Some(g) = &g else { continue };
            // (k, gate/up rows): 35, 17 and 9 output columns.
            for (k, n) in [(96, 70), (45, 34), (688, 18)] {
                let formats = FORMATS.iter().map(|&(f, _)| Some(f)).chain([None]);
                for format in formats {
                    let c = NormCase::new(g, &mut rng, k, n, format);
                    let (w, wc, nw, nc, bw, bc) = (&c.w, &c.wc, &c.nw, &c.nc, &c.bw, &c.bc);
                    for (m, with_bias) in [(1, true), (5, false), (64, true), (100, false)] {
                        let act = acts[case % acts.len()];
                        case += 1;
                        let (b, bcpu) = match with_bias {
                            true => (Some(bw), Some(bc)),
                            false => (None, None),
                        };
                        let values = NormCase::x(&mut rng, m, k);
                        let x = g.tensor(values.clone(), m, k);
                        let want = g.gated_stacked(&g.rms_norm_linear(&x, nw, 1e-5, w, b), act);
                        let before = g.dispatches().unwrap_or(0);
                        let got = g.rms_norm_gated(&x, nw, 1e-5, w, b, act);
                        let launches = g.dispatches().unwrap_or(0) - before;
                        let what = format!(
                            "{format:?} {act:?} k={k} m={m} bias={with_bias} whole={whole} \
                             (cpu kernels: {cpu_kernels})"
                        );
                        // One launch on the mat-vec, two on CPU drivers (the norm first).
                        if whole && m <= 64 {
                            let expected = if cpu_kernels { 2 } else { 1 };
                            assert_eq!(launches, expected, "{what}: launches");
                        }
                        assert_eq!(g.dims(&got), (m, n / 2), "{what}");
                        let (got, want) = (read(g, &got), read(g, &want));
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{what}"
                        );
                        let xc = cpu.tensor(values, m, k);
                        let reference = cpu.rms_norm_gated(&xc, nc, 1e-5, wc, bcpu, act);
                        check(&what, &got, &reference.data, 1e-5);
                    }
                }
            }
            assert!(g.take_error().is_none());
        }
    }
}

/// Two engines on the first adapter, one using an optional feature and one not (`opts(true)`,
/// `opts(false)`; `uses` says whether an engine's kernels use it). `None`, with a notice, where the
/// adapter does not offer the feature.
fn with_and_without(
    opts: impl Fn(bool) -> GpuOptions,
    uses: impl Fn(DeviceKernels) -> bool,
    feature: &str,
) -> Option<(GpuBackend, GpuBackend)> {
    let (with, without) = (gpu_with(opts(true))?, gpu_with(opts(false))?);
    assert!(
        !uses(without.device_kernels()),
        "{feature} was not turned off"
    );
    if !uses(with.device_kernels()) {
        eprintln!("skipping: {} has no {feature}", with.adapter_info());
        return None;
    }
    Some((with, without))
}

/// Where the adapter offers `shader-f16`, f16 weights load as `vec4<f16>`; the portable loader
/// unpacks u32 pairs from the same buffer. Every matmul kernel (mat-vec, `matmul_small`, the
/// tiled GEMM) must give the same bits either way, with and without bias, at widths that are not
/// whole vec4s.
#[test]
fn native_f16_loads_equal_the_packed_ones_bit_for_bit() {
    for cpu_kernels in [true, false] {
        let opts = |native_f16| GpuOptions {
            cpu_kernels: Some(cpu_kernels),
            native_f16: Some(native_f16),
            ..GpuOptions::default()
        };
        let Some((native, packed)) = with_and_without(opts, |k| k.native_f16, "shader-f16") else {
            continue;
        };
        let mut rng = StdRng::seed_from_u64(19);
        for (k, n) in [(96, 70), (45, 33), (688, 9)] {
            let data = WeightData::convert(random(&mut rng, n * k), n, k, Format::F16);
            let bias = random(&mut rng, n);
            for (m, with_bias) in [(1, true), (5, false), (64, true), (100, false)] {
                let x = random(&mut rng, m * k);
                let outs = [&native, &packed].map(|g| {
                    let w = g.weight_data(data.clone(), &[n, k]);
                    let b = g.weight(bias.clone(), &[n]);
                    let y = g.linear(&g.tensor(x.clone(), m, k), &w, with_bias.then_some(&b));
                    read(g, &y)
                });
                let what =
                    format!("k={k} n={n} m={m} bias={with_bias} (cpu kernels: {cpu_kernels})");
                assert_eq!(outs[0].len(), m * n, "{what}");
                assert!(
                    outs[0]
                        .iter()
                        .zip(&outs[1])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}"
                );
            }
        }
        assert!(native.take_error().is_none() && packed.take_error().is_none());
    }
}

/// `matmul_vec` with subgroups (its lane partials folded by shuffles inside each subgroup, the rest
/// in workgroup memory) equals the portable kernel (all in workgroup memory) bit for bit: both sum
/// the same binary tree. Every weight format, one row and batches (one and several passes of x
/// rows), and every epilogue and prologue (bias, the residual add, the norm, the gated
/// activation). lavapipe offers subgroups of 8, so its kernels mix shuffles and memory.
#[test]
fn subgroup_sums_equal_the_portable_ones_bit_for_bit() {
    let opts = |subgroups| GpuOptions {
        cpu_kernels: Some(false),
        subgroups: Some(subgroups),
        ..GpuOptions::default()
    };
    let Some((sub, portable)) = with_and_without(opts, |k| k.subgroups, "subgroups") else {
        return;
    };
    assert!(sub.adapter_info().ends_with("[subgroups]"));
    let eps = 1e-5;
    for format in [None, Some(Format::F16), Some(Format::Q8), Some(Format::Q4)] {
        for (k, n) in [(45, 34), (688, 18)] {
            for m in [1, 5, 64] {
                let what = format!("{format:?} k={k} n={n} m={m}");
                let outs = [&sub, &portable].map(|g| {
                    let mut rng = StdRng::seed_from_u64(23);
                    let c = NormCase::new(g, &mut rng, k, n, format);
                    let x = g.tensor(NormCase::x(&mut rng, m, k), m, k);
                    let residual = g.tensor(random(&mut rng, m * n), m, n);
                    let outs = [
                        g.linear(&x, &c.w, Some(&c.bw)),
                        g.linear_add(&x, &c.w, None, residual),
                        g.rms_norm_linear(&x, &c.nw, eps, &c.w, Some(&c.bw)),
                        g.rms_norm_gated(&x, &c.nw, eps, &c.w, None, Activation::Silu),
                    ];
                    outs.map(|y| read(g, &y))
                });
                for (op, (a, b)) in ["linear", "linear_add", "rms_norm_linear", "rms_norm_gated"]
                    .iter()
                    .zip(outs[0].iter().zip(&outs[1]))
                {
                    assert!(!a.is_empty() && a.len() == b.len(), "{what} {op}");
                    let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "{what} {op}: the subgroup sums differ");
                }
            }
        }
    }
    assert!(sub.take_error().is_none() && portable.take_error().is_none());
}
