//! Kernel timing for `spec-llava bench-kernels --backend cpu`: `linear` straight from f32, f16,
//! q8 and q4 weights (mat-vec and a few rows), next to a plain memory copy's GB/s on the same
//! machine — the same table and figure of merit as the GPU rows (`gpu::bench`): kernel GB/s over
//! copy GB/s says how close a mat-vec comes to streaming its weights as fast as memory moves bytes.
//!
//! Timing is wall-clock, the best of three batches of about `target_s / 3` each after a warm-up
//! run. Bytes are the weight as stored (codes and scales) plus activations read and written; the
//! copy moves `2 * bytes` (read + write). A row's reference is the copy of the smallest buffer at
//! least as big as its weight (the largest copy when none is), so both stream from the same level
//! of the cache hierarchy: a 1 MiB copy runs from a core's L2 cache, several times faster than a
//! weight of many megabytes can be read from anywhere.

use crate::backend::gpu::bench::{KernelRow, Suite};
use crate::quant::{Format, WeightData};

use super::{matmul, CpuWeight};

/// The weight formats the CPU rows cover (`None`: plain f32).
const DTYPES: &[Option<Format>] = &[None, Some(Format::F16), Some(Format::Q8), Some(Format::Q4)];

/// Seconds per call of `f`: best of three batches sized from a first timed call.
pub fn time(target_s: f64, f: &mut dyn FnMut()) -> f64 {
    f();
    let t = web_time::Instant::now();
    f();
    let one = t.elapsed().as_secs_f64().max(1e-9);
    let runs = ((target_s / 3.0 / one) as usize).max(1);
    (0..3)
        .map(|_| {
            let t = web_time::Instant::now();
            for _ in 0..runs {
                f();
            }
            t.elapsed().as_secs_f64() / runs as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// `n` pseudo-random values in [-1, 1) (xorshift: the same on every machine).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn row(kernel: &str, shape: String, dtype: &str, secs: f64, bytes: f64, flops: f64) -> KernelRow {
    KernelRow {
        kernel: kernel.to_string(),
        shape,
        dtype: dtype.to_string(),
        ms: secs * 1e3,
        gb_s: bytes / secs / 1e9,
        gflop_s: (flops > 0.0).then(|| flops / secs / 1e9),
        copy_gb_s: 0.0,
        ratio: 0.0,
    }
}

/// The copy rows, then `linear` for every dtype, weight shape and row count of `suite`; every
/// row's `copy_gb_s` is the fastest copy's.
pub fn run_suite(suite: &Suite) -> Vec<KernelRow> {
    let t = suite.target_s;
    let mut rows = Vec::new();
    let mut copies: Vec<(usize, f64)> = Vec::new();
    for &bytes in &suite.copy_bytes {
        let src = values(bytes / 4, 1);
        let mut dst = vec![0f32; bytes / 4];
        let secs = time(t, &mut || {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        });
        let shape = format!("{} KiB", bytes >> 10);
        let copy = row("cpu_copy", shape, "f32", secs, 2.0 * bytes as f64, 0.0);
        copies.push((bytes, copy.gb_s));
        rows.push(copy);
    }
    copies.sort_by_key(|c| c.0);
    // The copy a weight of `bytes` is measured against (see the module docs).
    let reference = |bytes: usize| {
        let fits = copies.iter().find(|c| c.0 >= bytes);
        fits.or(copies.last()).map_or(0.0, |c| c.1)
    };
    for r in &mut rows {
        // Each copy row against the fastest copy.
        r.copy_gb_s = copies.iter().map(|c| c.1).fold(0.0, f64::max);
        r.ratio = r.gb_s / r.copy_gb_s;
    }
    for &format in DTYPES {
        let dtype = format.map_or("f32", |f| f.name());
        for &(n, k) in &suite.matmul_weights {
            let shape = |m: usize| format!("m{m} n{n} k{k}");
            let wanted: Vec<usize> = (suite.matmul_rows.iter().copied())
                .filter(|&m| suite.wants("cpu_linear", &shape(m), dtype))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let data = values(n * k, (n * k) as u64);
            let w = match format {
                None => CpuWeight::f32(data, &[n, k]),
                Some(f) => CpuWeight::from_data(WeightData::convert(data, n, k, f), &[n, k]),
            };
            for &m in &wanted {
                let x = values(m * k, 7);
                let secs = time(t, &mut || {
                    std::hint::black_box(matmul(std::hint::black_box(&x), m, &w, None));
                });
                let bytes = w.stored_bytes() as f64 + 4.0 * (m * k + m * n) as f64;
                let flops = 2.0 * (m * n * k) as f64;
                let mut r = row("cpu_linear", shape(m), dtype, secs, bytes, flops);
                r.copy_gb_s = reference(w.stored_bytes());
                r.ratio = r.gb_s / r.copy_gb_s;
                rows.push(r);
            }
        }
    }
    rows
}
