//! Kernel timing for `spec-llava bench-kernels`: achieved GB/s and GFLOP/s of the engine's kernels
//! next to a plain buffer copy's GB/s on the same device (shaders/copy_vec4_f32.wgsl). The ratio
//! kernel GB/s / copy GB/s is the figure of merit: how close a kernel comes to moving its bytes as
//! fast as the device can move bytes at all.
//!
//! Timing is wall-clock around one submit of many recorded dispatches (after a warm-up that also
//! compiles the pipeline), until the device reports the work done: natively by polling the device,
//! in the browser by awaiting `on_submitted_work_done`. Recording is not timed. No timestamp
//! queries (an optional feature). Each measurement takes the best of three batches.
//!
//! Covered: the copy; matmul in its three shapes (mat-vec, small-M, tiled) for every weight dtype
//! (f32, f16, q8, q4: [`DTYPES`]); tree-masked attention; RMSNorm. Bytes moved are the bytes a
//! kernel must touch at least once: weights as stored on the device (codes and scales) +
//! activations read + written. FLOPs are `2 M N K` for a matmul.

use serde::Serialize;

use crate::backend::{AttnMask, Backend, Heads, Qkv};
use crate::error::{Error, Result};
use crate::quant::{Format, WeightData};

use super::pipelines::Kernel;
use super::{GpuBackend, GpuWeight};

/// Dispatches recorded per timed batch at most (the uniform arena holds 4096 per submit).
const MAX_BATCH: usize = 2000;

/// One measured kernel at one size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelRow {
    /// The kernel (shader family; the dtype is its own column).
    pub kernel: String,
    /// The problem size, e.g. `m16 n1024 k1024`.
    pub shape: String,
    /// Weight storage (`f32`, ...); `f32` for kernels without weights.
    pub dtype: String,
    /// Milliseconds per dispatch.
    pub ms: f64,
    /// Bytes moved / time.
    pub gb_s: f64,
    /// Arithmetic / time; `None` (null) for the copy, which does none.
    pub gflop_s: Option<f64>,
    /// The reference copy's GB/s on this device.
    pub copy_gb_s: f64,
    /// `gb_s / copy_gb_s`.
    pub ratio: f64,
}

/// Sizes and time per measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// Seconds spent per measurement (split over three batches).
    pub target_s: f64,
    /// Bytes of the copied buffers; the fastest copy is the reference.
    pub copy_bytes: Vec<usize>,
    /// Rows of x (1: mat-vec, 2..=64: small-M, more: tiled).
    pub matmul_rows: Vec<usize>,
    /// Weights `[n, k]`.
    pub matmul_weights: Vec<(usize, usize)>,
    /// Cached prefix slots, tree nodes, heads.
    pub attention: (usize, usize, Heads),
    /// Rows of the RMSNorm input, and its width.
    pub norm_rows: Vec<usize>,
    pub norm_cols: usize,
    /// Only rows whose `kernel shape dtype` contains this (the copy rows always run).
    pub filter: Option<String>,
}

impl Suite {
    pub(crate) fn wants(&self, kernel: &str, shape: &str, dtype: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| format!("{kernel} {shape} {dtype}").contains(f))
    }
}

impl Suite {
    /// Sizes of a 7B decoder's layers and this project's speculation trees.
    pub fn full() -> Self {
        Suite {
            target_s: 0.3,
            copy_bytes: vec![1 << 20, 16 << 20, 64 << 20],
            matmul_rows: vec![1, 16, 256],
            matmul_weights: vec![(256, 256), (1024, 1024), (4096, 1024)],
            attention: (
                128,
                24,
                Heads {
                    q_heads: 32,
                    kv_heads: 32,
                    head_dim: 128,
                },
            ),
            norm_rows: vec![1, 24, 256],
            norm_cols: 4096,
            filter: None,
        }
    }

    /// Tiny sizes and few iterations: a smoke test that takes about a second.
    pub fn quick() -> Self {
        Suite {
            target_s: 0.005,
            copy_bytes: vec![64 << 10, 1 << 20],
            matmul_rows: vec![1, 16, 80],
            matmul_weights: vec![(64, 64), (256, 128)],
            attention: (
                16,
                8,
                Heads {
                    q_heads: 4,
                    kv_heads: 2,
                    head_dim: 32,
                },
            ),
            norm_rows: vec![1, 8],
            norm_cols: 256,
            filter: None,
        }
    }
}

/// The weight formats the matmul rows cover (`None`: plain f32); a new format is one more entry.
pub const DTYPES: &[Option<Format>] =
    &[None, Some(Format::F16), Some(Format::Q8), Some(Format::Q4)];

/// A random `[n, k]` weight stored in `format`, and its dtype's name (`f32`, `f16`, `q8`, `q4`).
fn bench_weight(
    gpu: &GpuBackend,
    n: usize,
    k: usize,
    format: Option<Format>,
) -> (GpuWeight, String) {
    let data = values(n * k, (n * k) as u64);
    let w = match format {
        None => gpu.weight(data, &[n, k]),
        Some(f) => gpu.weight_data(WeightData::convert(data, n, k, f), &[n, k]),
    };
    let name = format!("{:?}", w.dtype()).to_lowercase();
    (w, name)
}

/// Deterministic pseudo-random values in [-1, 1) (no RNG state to carry around).
fn values(n: usize, seed: u64) -> Vec<f32> {
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

impl GpuWeight {
    /// Bytes of device memory holding this weight, codes and scales (what a matmul must read).
    fn device_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.buf.size() + c.scales.as_ref().map_or(0, |s| s.size()))
            .sum()
    }
}

impl GpuBackend {
    /// Submit what is recorded and wait until the device has run it.
    async fn finish(&self) -> Result<()> {
        self.rec.borrow_mut().flush();
        let (tx, rx) = futures_channel::oneshot::channel();
        self.dev.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        if let Err(e) = self.dev.device.poll(wgpu::PollType::wait_indefinitely()) {
            return Err(Error::invalid(format!("GPU: waiting for the device: {e}")));
        }
        rx.await
            .map_err(|_| Error::invalid("GPU: the device dropped the request"))?;
        match self.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Seconds for `runs` calls of `record` (each recording one kernel run), submitted at once.
    async fn time_batch(&self, runs: usize, record: &mut dyn FnMut()) -> Result<f64> {
        for _ in 0..runs {
            record();
        }
        let t = web_time::Instant::now();
        self.finish().await?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Seconds per call of `record`, which records one run of a kernel: a warm-up run (compiles
    /// the pipeline, faults the buffers in), one timed run to size the batches, then the best of
    /// three batches of about `target_s / 3` each (a kernel slower than that: the best of two runs).
    pub async fn time_kernel(&self, target_s: f64, record: &mut dyn FnMut()) -> Result<f64> {
        self.finish().await?;
        self.time_batch(1, record).await?;
        let once = self.time_batch(1, record).await?.max(1e-7);
        let runs = ((target_s / 3.0 / once).ceil() as usize).clamp(1, MAX_BATCH);
        // A kernel slower than a batch's share of the time gets one more run, not three.
        let batches = if runs == 1 { 1 } else { 3 };
        let mut best = once;
        for _ in 0..batches {
            best = best.min(self.time_batch(runs, record).await? / runs as f64);
        }
        Ok(best)
    }

    /// Seconds per copy of `bytes` (a multiple of 16) with copy_vec4_f32.
    pub async fn time_copy(&self, bytes: usize, target_s: f64) -> Result<f64> {
        let n4 = bytes / 16;
        let src = self.tensor(values(n4 * 4, 1), n4, 4);
        let dst = self.alloc(n4, 4);
        let grid = self.grid(n4.div_ceil(256));
        self.time_kernel(target_s, &mut || {
            let bufs = [src.buffer(), dst.buffer()];
            self.run(
                Kernel::CopyVec4,
                &[("WG", 256.0)],
                &[n4 as u32],
                &bufs,
                grid,
            );
        })
        .await
    }

    /// Seconds per `x W^T` for x `[m, k]` and `w: [n, k]` (the kernel `linear` picks for `m`).
    pub async fn time_linear(&self, m: usize, w: &GpuWeight, target_s: f64) -> Result<f64> {
        let x = self.tensor(values(m * w.cols, 2), m, w.cols);
        self.time_kernel(target_s, &mut || {
            let _ = self.linear(&x, w, None);
        })
        .await
    }

    /// Seconds per run of attention_tree_f32 for `n` tree nodes after `start` cached slots, with
    /// the ancestor mask of `parents` (`parents[i] < i`, `None` for a root). Returns the seconds
    /// and the number of (query, key) pairs the mask lets through.
    pub async fn time_tree_attention(
        &self,
        start: usize,
        parents: &[Option<usize>],
        heads: Heads,
        target_s: f64,
    ) -> Result<(f64, usize)> {
        let n = parents.len();
        let (width, kv_dim) = (
            heads.q_heads * heads.head_dim,
            heads.kv_heads * heads.head_dim,
        );
        let mut allowed = vec![false; n * n];
        for i in 0..n {
            let mut a = Some(i);
            while let Some(j) = a {
                allowed[i * n + j] = true;
                a = parents[j];
            }
        }
        let pairs = n * start + allowed.iter().filter(|&&b| b).count();
        let mask = AttnMask::Tree { ctx: 0, n, allowed };
        // Fill the cache: the prefix causally, then the tree (which also uploads the mask bits).
        let mut cache = self.new_cache(1, kv_dim, start + n);
        let kv = |rows: usize, seed: u64| self.tensor(values(rows * kv_dim, seed), rows, kv_dim);
        let q = |rows: usize, seed: u64| self.tensor(values(rows * width, seed), rows, width);
        if start > 0 {
            let (qp, kp, vp) = (q(start, 3), kv(start, 4), kv(start, 5));
            let _ = self.cached_attention(
                &mut cache,
                0,
                0,
                Qkv {
                    q: &qp,
                    k: &kp,
                    v: &vp,
                },
                &AttnMask::Causal,
                heads,
            );
        }
        let (qt, kt, vt) = (q(n, 6), kv(n, 7), kv(n, 8));
        let _ = self.cached_attention(
            &mut cache,
            0,
            start,
            Qkv {
                q: &qt,
                k: &kt,
                v: &vt,
            },
            &mask,
            heads,
        );
        let words = n.div_ceil(32).max(1);
        let out = self.alloc(n, width);
        let scale = 1.0 / (heads.head_dim as f32).sqrt();
        let params = [
            n as u32,
            start as u32,
            0,
            heads.q_heads as u32,
            heads.kv_heads as u32,
            heads.head_dim as u32,
            words as u32,
            scale.to_bits(),
        ];
        // Held here while timing (no RefCell borrow across the awaits).
        let Some((_, mask_buf)) = self.mask_bits.borrow_mut().take() else {
            return Err(Error::invalid("GPU: the tree mask was not uploaded"));
        };
        let bufs = [
            qt.buffer(),
            &cache.k[0],
            &cache.v[0],
            mask_buf.get(),
            out.buffer(),
        ];
        let secs = self
            .time_kernel(target_s, &mut || {
                self.dispatch_attention(n, start + n, heads, false, &params, &bufs);
            })
            .await?;
        Ok((secs, pairs))
    }

    /// Seconds per RMSNorm of `[rows, cols]`.
    pub async fn time_rms_norm(&self, rows: usize, cols: usize, target_s: f64) -> Result<f64> {
        let x = self.tensor(values(rows * cols, 9), rows, cols);
        let w = self.weight(values(cols, 10), &[cols]);
        self.time_kernel(target_s, &mut || {
            let _ = self.rms_norm(&x, &w, 1e-6);
        })
        .await
    }
}

/// A row before the reference copy is known.
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

/// A random tree of `n` nodes (node 0 the root; each later node's parent an earlier node), shaped
/// like a speculation tree: mostly chains with some branching.
fn tree_parents(n: usize) -> Vec<Option<usize>> {
    let r = values(n, 11);
    (0..n)
        .map(|i| match i {
            0 => None,
            // Half the nodes extend the previous node, the rest hang off a random earlier one.
            _ if r[i] < 0.0 => Some(i - 1),
            _ => Some(((r[i] * i as f32) as usize).min(i - 1)),
        })
        .collect()
}

/// Measure every kernel of `suite`; the copy rows come first, and every row's `copy_gb_s` is the
/// fastest copy's GB/s (the most this device moved with a plain copy).
pub async fn run_suite(gpu: &GpuBackend, suite: &Suite) -> Result<Vec<KernelRow>> {
    let t = suite.target_s;
    let mut rows = Vec::new();
    for &bytes in &suite.copy_bytes {
        let secs = gpu.time_copy(bytes, t).await?;
        let shape = format!("{} KiB", bytes >> 10);
        rows.push(row(
            "copy_vec4",
            shape,
            "f32",
            secs,
            2.0 * bytes as f64,
            0.0,
        ));
    }
    for &format in DTYPES {
        for &(n, k) in &suite.matmul_weights {
            let name = format.map_or("f32", |f| f.name());
            let kernel = |m: usize| gpu.matmul_shape(m).name();
            let shape = |m: usize| format!("m{m} n{n} k{k}");
            let wanted: Vec<usize> = (suite.matmul_rows.iter().copied())
                .filter(|&m| suite.wants(kernel(m), &shape(m), name))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let (w, dtype) = bench_weight(gpu, n, k, format);
            if format.is_some_and(|f| f.name() != dtype) {
                return Err(Error::invalid(format!(
                    "GPU: a {dtype} weight, asked for {format:?}"
                )));
            }
            let w_bytes = w.device_bytes() as f64;
            for &m in &wanted {
                let secs = gpu.time_linear(m, &w, t).await?;
                let bytes = w_bytes + 4.0 * (m * k + m * n) as f64;
                let flops = 2.0 * (m * n * k) as f64;
                rows.push(row(kernel(m), shape(m), &dtype, secs, bytes, flops));
            }
            drop(w);
            gpu.trim();
        }
    }
    let (start, n, heads) = suite.attention;
    let shape = format!(
        "ctx{start} + {n} nodes, {}/{} heads x {}",
        heads.q_heads, heads.kv_heads, heads.head_dim
    );
    if suite.wants("attention_tree", &shape, "f32") {
        let (secs, pairs) = gpu
            .time_tree_attention(start, &tree_parents(n), heads, t)
            .await?;
        let (width, kv_dim) = (
            heads.q_heads * heads.head_dim,
            heads.kv_heads * heads.head_dim,
        );
        let bytes = 4 * (2 * n * width + 2 * (start + n) * kv_dim + n * (n.div_ceil(32)));
        let flops = 4 * pairs * heads.q_heads * heads.head_dim;
        rows.push(row(
            "attention_tree",
            shape,
            "f32",
            secs,
            bytes as f64,
            flops as f64,
        ));
    }
    let cols = suite.norm_cols;
    for &r in &suite.norm_rows {
        let shape = format!("{r}x{cols}");
        if !suite.wants("rmsnorm", &shape, "f32") {
            continue;
        }
        let secs = gpu.time_rms_norm(r, cols, t).await?;
        let bytes = 4 * (2 * r * cols + cols);
        rows.push(row(
            "rmsnorm",
            shape,
            "f32",
            secs,
            bytes as f64,
            (4 * r * cols) as f64,
        ));
    }
    gpu.trim();
    let copy = rows[..suite.copy_bytes.len()]
        .iter()
        .map(|r| r.gb_s)
        .fold(0.0, f64::max);
    for r in &mut rows {
        r.copy_gb_s = copy;
        r.ratio = r.gb_s / copy;
    }
    Ok(rows)
}

/// The rows as an aligned text table.
pub fn table(rows: &[KernelRow]) -> String {
    let mut s = format!(
        "{:<15} {:<34} {:<5} {:>10} {:>9} {:>9} {:>9} {:>6}\n",
        "kernel", "shape", "dtype", "ms", "GB/s", "GFLOP/s", "copy GB/s", "ratio"
    );
    for r in rows {
        let gflops = r.gflop_s.map_or("-".to_string(), |g| format!("{g:.2}"));
        s += &format!(
            "{:<15} {:<34} {:<5} {:>10.4} {:>9.2} {:>9} {:>9.2} {:>6.2}\n",
            r.kernel, r.shape, r.dtype, r.ms, r.gb_s, gflops, r.copy_gb_s, r.ratio
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_connected_and_values_in_range() {
        let p = tree_parents(24);
        assert_eq!(p[0], None);
        assert!(p
            .iter()
            .enumerate()
            .skip(1)
            .all(|(i, q)| q.is_some_and(|q| q < i)));
        assert!(values(1000, 3).iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
