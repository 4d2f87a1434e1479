//! The optional int8 mat-vec (`GpuOptions::int8_dot`: `shaders/dot_int8.wgsl`, packed 8-bit dot
//! products of q8 / q4 codes with x quantized per block of 32) against its reference,
//! `spec_llava::quant::int8`, which computes the same per-block terms; and the bit-for-bit
//! promises of the f32 mat-vec, kept with it on: a batch's rows equal the rows alone, the fused
//! epilogues and prologue equal the separate ops, f32 and f16 weights are untouched.
//!
//! The int8 path is `matmul_vec`'s, which CPU drivers do not run by default: the engines here
//! force the GPU kernels (`cpu_kernels: Some(false)`).
//!
//! Without an adapter these tests FAIL, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;
use common::gpu_with;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spec_llava::backend::gpu::{GpuBackend, GpuOptions};
use spec_llava::backend::Backend;
use spec_llava::config::Activation;
use spec_llava::quant::{Format, WeightData};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn read(g: &GpuBackend, t: &<GpuBackend as Backend>::Tensor) -> Vec<f32> {
    pollster::block_on(g.read(t))
}

/// max |a - b| (infinite where either is NaN).
fn max_err(what: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: length");
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(
            0f32,
            |w, e| if e.is_nan() { f32::INFINITY } else { w.max(e) },
        )
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
}

/// An engine on the GPU kernels with (`int8`) or without packed 8-bit dot products; `None` (with a
/// notice) where WGSL lacks them or there is no adapter.
fn engine(int8: bool, subgroups: bool) -> Option<GpuBackend> {
    let g = gpu_with(GpuOptions {
        cpu_kernels: Some(false),
        int8_dot: Some(int8),
        subgroups: Some(subgroups),
        ..GpuOptions::default()
    })?;
    if g.device_kernels().int8_dot != int8 {
        assert!(int8, "int8 dot products were not turned off");
        eprintln!(
            "skipping: {} has no packed 8-bit dot products",
            g.adapter_info()
        );
        return None;
    }
    Some(g)
}

const BLOCK_FORMATS: [Format; 2] = [Format::Q8, Format::Q4];

#[test]
fn int8_linear_matches_its_reference_and_stays_near_the_f32_kernel() {
    let (Some(g), Some(f32_engine)) = (engine(true, false), engine(false, false)) else {
        return;
    };
    assert!(
        g.adapter_info().ends_with("[int8 dot]"),
        "{}",
        g.adapter_info()
    );
    let mut rng = StdRng::seed_from_u64(31);
    // (k, n): whole groups, a partial last group, odd widths, long rows.
    let shapes = [(32, 5), (70, 17), (45, 64), (7, 3), (688, 70), (1040, 9)];
    for format in BLOCK_FORMATS {
        let (mut worst, mut worst_f32) = (0f32, 0f32);
        for (i, &m) in [1, 5, 64].iter().enumerate() {
            for (s, &(k, n)) in shapes.iter().enumerate() {
                let with_bias = (i + s) % 2 == 0;
                let data = WeightData::convert(random(&mut rng, n * k), n, k, format);
                let WeightData::Quant(q) = &data else {
                    panic!("{format:?} is a block format");
                };
                let x: Vec<f32> = random(&mut rng, m * k).iter().map(|v| v * 4.0).collect();
                let bias = random(&mut rng, n);
                let mut want = q.linear_int8(&x);
                if with_bias {
                    for (o, b) in want.iter_mut().zip(bias.iter().cycle()) {
                        *o += b;
                    }
                }
                let [got, dense] = [&g, &f32_engine].map(|e| {
                    let w = e.weight_data(data.clone(), &[n, k]);
                    let b = e.weight(bias.clone(), &[n]);
                    let y = e.linear(&e.tensor(x.clone(), m, k), &w, with_bias.then_some(&b));
                    read(e, &y)
                });
                let what = format!("{format:?} m={m} k={k} n={n} bias={with_bias}");
                let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
                let vs_ref = max_err(&what, &got, &want) / scale;
                assert!(vs_ref <= 1e-5, "{what}: {vs_ref:e} from the int8 reference");
                let vs_f32 = max_err(&what, &got, &dense) / scale;
                // 7-bit x: a few percent of the largest output at most.
                assert!(vs_f32 <= 0.05, "{what}: {vs_f32:e} from the f32 kernel");
                worst = worst.max(vs_ref);
                worst_f32 = worst_f32.max(vs_f32);
            }
        }
        // The int8 kernel really ran: it differs from the f32 kernel by more than f32 noise.
        assert!(worst_f32 > 1e-4, "{format:?}: {worst_f32:e}");
        println!(
            "{format:?}: worst {worst:e} from the int8 reference, {worst_f32:e} from the f32 kernel"
        );
    }
    assert!(g.take_error().is_none() && f32_engine.take_error().is_none());
}

#[test]
fn int8_batches_and_fused_ops_equal_the_plain_ones_bit_for_bit() {
    // The default lanes form: on lavapipe (subgroups of 8) shuffles and workgroup memory.
    let Some(g) = engine(true, true) else {
        return;
    };
    let eps = 1e-5;
    for format in BLOCK_FORMATS {
        // A partial last block (k = 45), 35 and 17 gated columns (n = 70, 34); one row, and two
        // passes of 4 rows.
        for (k, n) in [(96, 70), (45, 34)] {
            for m in [1, 5] {
                let what = format!("{format:?} k={k} n={n} m={m}");
                let mut rng = StdRng::seed_from_u64(37);
                let data = WeightData::convert(random(&mut rng, n * k), n, k, format);
                let w = g.weight_data(data, &[n, k]);
                let bias = g.weight(random(&mut rng, n), &[n]);
                let norm: Vec<f32> = random(&mut rng, k).iter().map(|v| 1.0 + v).collect();
                let nw = g.weight(norm, &[k]);
                let xv: Vec<f32> = random(&mut rng, m * k).iter().map(|v| v * 3.0).collect();
                let x = g.tensor(xv.clone(), m, k);
                let r = random(&mut rng, m * n);

                let batch = read(&g, &g.linear(&x, &w, Some(&bias)));
                for row in [0, m / 2, m - 1] {
                    let one = g.tensor(xv[row * k..(row + 1) * k].to_vec(), 1, k);
                    let one = read(&g, &g.linear(&one, &w, Some(&bias)));
                    assert!(
                        same_bits(&batch[row * n..(row + 1) * n], &one),
                        "{what}: row {row} differs from the row alone"
                    );
                }
                let added = g.linear_add(&x, &w, None, g.tensor(r.clone(), m, n));
                let want = g.add(&g.tensor(r, m, n), &g.linear(&x, &w, None));
                assert!(
                    same_bits(&read(&g, &added), &read(&g, &want)),
                    "{what}: linear_add"
                );
                let normed = read(&g, &g.rms_norm_linear(&x, &nw, eps, &w, Some(&bias)));
                let want = g.linear(&g.rms_norm(&x, &nw, eps), &w, Some(&bias));
                assert!(
                    same_bits(&normed, &read(&g, &want)),
                    "{what}: rms_norm_linear"
                );
                let act = Activation::Silu;
                let gated = read(&g, &g.rms_norm_gated(&x, &nw, eps, &w, None, act));
                let want = g.gated_stacked(&g.rms_norm_linear(&x, &nw, eps, &w, None), act);
                assert!(
                    same_bits(&gated, &read(&g, &want)),
                    "{what}: rms_norm_gated"
                );
            }
        }
    }
    assert!(g.take_error().is_none());
}

#[test]
fn int8_dot_products_leave_f32_and_f16_weights_alone() {
    let (Some(int8), Some(plain)) = (engine(true, false), engine(false, false)) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(41);
    let (m, k, n) = (5, 70, 33);
    for format in [None, Some(Format::F16)] {
        let values = random(&mut rng, n * k);
        let x = random(&mut rng, m * k);
        let outs = [&int8, &plain].map(|g| {
            let w = match format {
                Some(f) => g.weight_data(WeightData::convert(values.clone(), n, k, f), &[n, k]),
                None => g.weight(values.clone(), &[n, k]),
            };
            read(g, &g.linear(&g.tensor(x.clone(), m, k), &w, None))
        });
        assert!(
            !outs[0].is_empty() && same_bits(&outs[0], &outs[1]),
            "{format:?}"
        );
    }
}

#[test]
fn inf_or_nan_in_x_make_the_int8_outputs_nan() {
    let Some(g) = engine(true, false) else {
        return;
    };
    let (k, n) = (64, 8);
    let mut rng = StdRng::seed_from_u64(43);
    let data = WeightData::convert(random(&mut rng, n * k), n, k, Format::Q4);
    let w = g.weight_data(data, &[n, k]);
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = random(&mut rng, k);
        x[40] = bad;
        let y = read(&g, &g.linear(&g.tensor(x, 1, k), &w, None));
        assert!(y.iter().all(|v| v.is_nan()), "{bad}: {y:?}");
    }
}
