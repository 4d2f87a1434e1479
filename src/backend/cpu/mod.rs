//! The plain-Rust reference executor: computes in f32, written for clarity first and kept fast
//! (rows are spread over threads natively through rayon).
//!
//! Numerics follow transformers' eager PyTorch path: norms and softmax in f32, RoPE tables computed
//! from f32 inverse frequencies, exact erf GELU. Weights stay as the checkpoint stores them
//! ([`weight`]: f32, f16, q8/q4 blocks; matrices as column panels where the CPU has AVX-512,
//! [`panel`]); `linear` ([`matmul`]) reads them packed, in register tiles ([`tile`]: AVX, AVX2+FMA
//! or AVX-512 chosen at run time; [`panel`]'s broadcast tiles), in one reduction order per matrix
//! whatever the number of rows (verification equals plain decoding bit for bit); [`attention`]
//! reads the keys transposed, as the cache keeps them. [`bench`] times its kernels for
//! `spec-llava bench-kernels`.

/// `fn $name(args)` calling `$inner(args)` compiled for the widest vectors the CPU has (AVX-512F
/// with VL, AVX, else the SSE2 baseline): lanes hold different keys or dimensions, never parts of
/// one sum (or elements: an activation), so every width computes the same numbers.
macro_rules! widest {
    ($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) => $inner:ident) => {
        $(#[$doc])*
        fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl")]
                unsafe fn avx512($($a: $t),*) {
                    $inner($($a),*)
                }
                #[target_feature(enable = "avx")]
                unsafe fn avx($($a: $t),*) {
                    $inner($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: AVX-512F and VL are present.
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx") {
                    // SAFETY: AVX is present.
                    return unsafe { avx($($a),*) };
                }
            }
            $inner($($a),*)
        }
    };
}

mod attention;
pub mod bench;
mod matmul;
mod panel;
#[cfg(target_arch = "x86_64")]
mod quant_tile;
pub mod tile;
mod weight;

pub use matmul::linear as matmul;
pub use weight::{CpuData, CpuWeight};

use crate::backend::math::{exp, rope_inv_freq};
use crate::backend::{AttnMask, Backend, Heads, Qkv, Rope};
use crate::config::Activation;
use crate::quant::WeightData;

#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuTensor {
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// A function shown every `linear` this thread runs: the weight and the input rows.
pub type LinearHook = Box<dyn FnMut(&CpuWeight, &CpuTensor)>;

thread_local! {
    // Per thread, so a calibration run sees only its own model's calls (tests run models on
    // several threads at once); `None` outside calibration, which costs one check per matmul.
    static LINEAR_HOOK: std::cell::RefCell<Option<LinearHook>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with `hook` called (on this thread) before every [`Backend::linear`]; the previous hook
/// is restored afterwards, also on panic. Used to record calibration inputs
/// (`quantize::calibrate`); the hook must not run the model itself.
pub fn with_linear_hook<R>(hook: LinearHook, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<LinearHook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            LINEAR_HOOK.with(|h| *h.borrow_mut() = prev);
        }
    }
    let _restore = Restore(LINEAR_HOOK.with(|h| h.replace(Some(hook))));
    f()
}

/// Per layer: values `[slots, kv_dim]`, grown on demand, and keys transposed.
#[derive(Debug, Clone)]
pub struct CpuCache {
    kv_dim: usize,
    v: Vec<Vec<f32>>,
    /// The keys transposed: `[kv_dim, stride]` per layer, key `j` in column `j`, because
    /// attention reads a head's keys one dimension at a time ([`attention`]).
    kt: Vec<Vec<f32>>,
    stride: usize,
}

impl CpuCache {
    /// Make room for `len` keys in the transposed copies (columns kept, stride doubled).
    fn reserve_columns(&mut self, len: usize) {
        if len <= self.stride {
            return;
        }
        let stride = len.max(2 * self.stride);
        for kt in &mut self.kt {
            let mut wider = vec![0f32; self.kv_dim * stride];
            for (c, col) in kt.chunks(self.stride.max(1)).enumerate().take(self.kv_dim) {
                wider[c * stride..c * stride + col.len()].copy_from_slice(col);
            }
            *kt = wider;
        }
        self.stride = stride;
    }
}

/// Work (about one multiply-add per unit) below which an op stays on the calling thread: handing
/// a job to the thread pool and waiting for it costs more than a small op itself.
const PARALLEL_WORK: usize = 1 << 18;

/// Run `f(row_index, row)` over the rows of `out` (each `width` long), in parallel natively when
/// the op does at least [`PARALLEL_WORK`] (`row_cost` units per row).
pub(super) fn for_rows(
    out: &mut [f32],
    width: usize,
    row_cost: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if width == 0 {
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    if out.len() / width * row_cost >= PARALLEL_WORK {
        use rayon::prelude::*;
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
        return;
    }
    #[cfg(target_arch = "wasm32")]
    let _ = (row_cost, PARALLEL_WORK);
    out.chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
}

widest!(
    /// `out_i = silu(gate_i) * up_i`.
    fn silu_gated(gate: &[f32], up: &[f32], out: &mut [f32]) => silu_gated_in
);

#[inline(always)]
fn silu_gated_in(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = activation(g, Activation::Silu) * u;
    }
}

#[inline(always)]
pub fn activation(x: f32, act: Activation) -> f32 {
    match act {
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::QuickGelu => x / (1.0 + exp(-1.702 * x)),
        Activation::Silu => x / (1.0 + exp(-x)),
        Activation::Relu => x.max(0.0),
    }
}

impl CpuBackend {
    fn map(&self, x: &CpuTensor, f: impl Fn(f32) -> f32) -> CpuTensor {
        CpuTensor {
            data: x.data.iter().map(|&v| f(v)).collect(),
            rows: x.rows,
            cols: x.cols,
        }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type Cache = CpuCache;

    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> CpuWeight {
        CpuWeight::f32(data, shape)
    }

    /// Matrices stay packed (f16, q8, q4): `linear` reads the blocks.
    fn weight_data(&self, data: WeightData, shape: &[usize]) -> CpuWeight {
        CpuWeight::from_data(data, shape)
    }

    /// Where the tiles widen f16 in registers (x86 with F16C or AVX-512): an f16 checkpoint then
    /// takes half the memory and a one-token pass reads half the bytes.
    fn reads_f16(&self) -> bool {
        tile::f16_in_registers()
    }

    fn tensor(&self, data: Vec<f32>, rows: usize, cols: usize) -> CpuTensor {
        debug_assert_eq!(data.len(), rows * cols);
        CpuTensor { data, rows, cols }
    }

    fn dims(&self, x: &CpuTensor) -> (usize, usize) {
        (x.rows, x.cols)
    }

    async fn read(&self, x: &CpuTensor) -> Vec<f32> {
        // In the browser the CPU engine runs in a worker: give its event loop a turn at every
        // read so a cancel (or a new image) is seen between tokens.
        #[cfg(target_arch = "wasm32")]
        yield_to_event_loop().await;
        x.data.clone()
    }

    fn top_k_scaled(&self, logits: &CpuTensor, k: usize, scale: f32) -> CpuTensor {
        let k = k.clamp(1, super::MAX_TOP_K);
        let mut data = Vec::with_capacity(logits.rows * (2 * k + 1));
        for row in logits.data.chunks(logits.cols.max(1)).take(logits.rows) {
            let scaled: Vec<f32>;
            let row = match scale == 1.0 {
                true => row,
                false => {
                    scaled = row.iter().map(|&v| v * scale).collect();
                    &scaled[..]
                }
            };
            // Best first, ties by index; NaN skipped (as the kernel).
            let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for (i, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                let at = best.partition_point(|&(_, w)| w >= v);
                if at < k {
                    best.insert(at, (i, v));
                    best.truncate(k);
                }
                max = max.max(v);
            }
            for &v in row.iter().filter(|v| !v.is_nan()) {
                sum += (v - max).exp();
            }
            let pad = k - best.len();
            data.extend(best.iter().map(|b| b.1));
            data.extend(std::iter::repeat_n(f32::MIN, pad));
            data.extend(best.iter().map(|b| b.0 as f32));
            data.extend(std::iter::repeat_n(u32::MAX as f32, pad));
            data.push(max + sum.ln());
        }
        CpuTensor {
            rows: logits.rows,
            cols: 2 * k + 1,
            data,
        }
    }

    fn linear(&self, x: &CpuTensor, w: &CpuWeight, b: Option<&CpuWeight>) -> CpuTensor {
        let out_dim = w.shape[0];
        debug_assert_eq!(x.cols, w.shape[1]);
        LINEAR_HOOK.with(|h| {
            if let Some(hook) = h.borrow_mut().as_mut() {
                hook(w, x);
            }
        });
        let bias = b.map(CpuWeight::values);
        CpuTensor {
            data: matmul::linear(&x.data, x.rows, w, bias.as_deref()),
            rows: x.rows,
            cols: out_dim,
        }
    }

    fn layer_norm(&self, x: &CpuTensor, w: &CpuWeight, b: &CpuWeight, eps: f32) -> CpuTensor {
        let (w, b) = (w.values(), b.values());
        let mut data = x.data.clone();
        for_rows(&mut data, x.cols, x.cols, |_, r| {
            let n = r.len() as f32;
            let mean = r.iter().sum::<f32>() / n;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + eps).sqrt();
            for (k, v) in r.iter_mut().enumerate() {
                *v = (*v - mean) * inv * w[k] + b[k];
            }
        });
        CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        }
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32) -> CpuTensor {
        let w = w.values();
        let mut data = x.data.clone();
        for_rows(&mut data, x.cols, x.cols, |_, r| {
            let ms = r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (k, v) in r.iter_mut().enumerate() {
                *v = w[k] * (*v * inv);
            }
        });
        CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        }
    }

    fn activate(&self, x: &CpuTensor, act: Activation) -> CpuTensor {
        // CLIP's quick_gelu gets a loop of its own, the match outside it, so that it vectorizes.
        match act {
            Activation::QuickGelu => self.map(x, |v| activation(v, Activation::QuickGelu)),
            _ => self.map(x, |v| activation(v, act)),
        }
    }

    fn gated(&self, gate: &CpuTensor, up: &CpuTensor, act: Activation) -> CpuTensor {
        // Llama's silu gets a loop of its own, the match outside it, compiled for the widest
        // vectors: its exponentials vectorize.
        let data = match act {
            Activation::Silu => {
                let mut out = vec![0f32; gate.data.len()];
                silu_gated(&gate.data, &up.data, &mut out);
                out
            }
            _ => gate
                .data
                .iter()
                .zip(&up.data)
                .map(|(&g, &u)| activation(g, act) * u)
                .collect(),
        };
        CpuTensor {
            data,
            rows: gate.rows,
            cols: gate.cols,
        }
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
        let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
        CpuTensor {
            data,
            rows: a.rows,
            cols: a.cols,
        }
    }

    fn add_weight(&self, x: &CpuTensor, w: &CpuWeight) -> CpuTensor {
        let data = x
            .data
            .iter()
            .zip(&*w.values())
            .map(|(x, y)| x + y)
            .collect();
        CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        }
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> CpuTensor {
        let dim = table.shape[1];
        let mut data = vec![0f32; ids.len() * dim];
        for (&id, row) in ids.iter().zip(data.chunks_mut(dim)) {
            table.widen_rows(id as usize..id as usize + 1, dim, row);
        }
        CpuTensor {
            data,
            rows: ids.len(),
            cols: dim,
        }
    }

    fn prepend_row(&self, x: &CpuTensor, row: &CpuWeight) -> CpuTensor {
        let mut data = row.values().into_owned();
        data.extend_from_slice(&x.data);
        CpuTensor {
            data,
            rows: x.rows + 1,
            cols: x.cols,
        }
    }

    fn slice_rows(&self, x: &CpuTensor, start: usize, end: usize) -> CpuTensor {
        CpuTensor {
            data: x.data[start * x.cols..end * x.cols].to_vec(),
            rows: end - start,
            cols: x.cols,
        }
    }

    fn slice_cols(&self, x: &CpuTensor, start: usize, end: usize) -> CpuTensor {
        let (start, end) = (start.min(x.cols), end.clamp(start.min(x.cols), x.cols));
        let data = (0..x.rows)
            .flat_map(|i| &x.row(i)[start..end])
            .copied()
            .collect();
        CpuTensor {
            data,
            rows: x.rows,
            cols: end - start,
        }
    }

    fn concat_cols(&self, parts: &[&CpuTensor]) -> CpuTensor {
        let rows = parts.first().map(|p| p.rows).unwrap_or(0);
        let cols: usize = parts.iter().map(|p| p.cols).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for p in parts {
                data.extend_from_slice(p.row(i));
            }
        }
        CpuTensor { data, rows, cols }
    }

    fn scatter_rows(&self, dst: &CpuTensor, rows: &[usize], src: &CpuTensor) -> CpuTensor {
        let mut out = dst.clone();
        for (i, &r) in rows.iter().enumerate() {
            out.data[r * dst.cols..(r + 1) * dst.cols].copy_from_slice(src.row(i));
        }
        out
    }

    fn rope(
        &self,
        x: &CpuTensor,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> CpuTensor {
        let inv_freq = rope_inv_freq(head_dim, rope);
        let half = head_dim / 2;
        let mut data = x.data.clone();
        for_rows(&mut data, x.cols, x.cols, |i, r| {
            let pos = positions[i] as f32;
            for f in 0..half {
                let angle = pos * inv_freq[f];
                let (sin, cos) = (angle.sin(), angle.cos());
                for h in 0..heads {
                    let base = h * head_dim;
                    let (a, b) = (r[base + f], r[base + f + half]);
                    r[base + f] = a * cos - b * sin;
                    r[base + f + half] = b * cos + a * sin;
                }
            }
        });
        CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        }
    }

    fn attention(&self, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, heads: Heads) -> CpuTensor {
        let kt = attention::transpose(&k.data, k.cols, k.rows);
        attention::attend(q, (&kt, k.rows), &v.data, k.rows, heads, |_, _| true)
    }

    fn new_cache(&self, layers: usize, kv_dim: usize, capacity: usize) -> CpuCache {
        CpuCache {
            kv_dim,
            v: (0..layers)
                .map(|_| Vec::with_capacity(capacity * kv_dim))
                .collect(),
            kt: (0..layers).map(|_| vec![0f32; capacity * kv_dim]).collect(),
            stride: capacity,
        }
    }

    fn cached_attention(
        &self,
        cache: &mut CpuCache,
        layer: usize,
        start: usize,
        qkv: Qkv<'_, CpuTensor>,
        mask: &AttnMask,
        heads: Heads,
    ) -> CpuTensor {
        let Qkv { q, k, v } = qkv;
        let kv_dim = cache.kv_dim;
        let n = k.rows;
        let values = &mut cache.v[layer];
        values.resize((start + n) * kv_dim, 0.0);
        values[start * kv_dim..].copy_from_slice(&v.data);
        cache.reserve_columns(start + n);
        let stride = cache.stride;
        let kt = &mut cache.kt[layer];
        for (i, key) in k.data.chunks(kv_dim).enumerate() {
            for (c, &v) in key.iter().enumerate() {
                kt[c * stride + start + i] = v;
            }
        }
        let (kt, values) = (&cache.kt[layer], &cache.v[layer]);
        attention::attend(q, (kt, stride), values, start + n, heads, |i, slot| {
            mask.sees(start, i, slot)
        })
    }

    fn compact_cache(&self, cache: &mut CpuCache, from: &[usize], to_start: usize) {
        let d = cache.kv_dim;
        for store in &mut cache.v {
            for (i, &src) in from.iter().enumerate() {
                let dst = to_start + i;
                if src != dst {
                    store.copy_within(src * d..(src + 1) * d, dst * d);
                }
            }
            store.truncate((to_start + from.len()) * d);
        }
        let stride = cache.stride;
        for kt in &mut cache.kt {
            for col in kt.chunks_mut(stride.max(1)) {
                for (i, &src) in from.iter().enumerate() {
                    col[to_start + i] = col[src];
                }
            }
        }
    }
}

/// Resolve after a zero-delay timer: lets queued messages be handled (a microtask would not).
#[cfg(target_arch = "wasm32")]
async fn yield_to_event_loop() {
    use wasm_bindgen::JsCast;
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        if let Ok(set_timeout) = js_sys::Reflect::get(&global, &"setTimeout".into()) {
            if let Some(f) = set_timeout.dyn_ref::<js_sys::Function>() {
                let _ = f.call2(&global, &resolve, &0.into());
                return;
            }
        }
        let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

#[cfg(test)]
mod tests {
    use super::bench::values;
    use super::*;

    const HEADS: Heads = Heads {
        q_heads: 4,
        kv_heads: 2,
        head_dim: 16,
    };

    #[test]
    fn the_vectorized_silu_gate_equals_the_activation_element_by_element() {
        // Wide values: both tails of exp (0 and inf) and the polynomial's whole range.
        let (g, u) = (tensor(7, 301, 1), tensor(7, 301, 2));
        let gate = CpuTensor {
            data: g.data.iter().map(|x| x * 120.0).collect(),
            ..g
        };
        let got = CpuBackend.gated(&gate, &u, Activation::Silu);
        for ((&out, &g), &u) in got.data.iter().zip(&gate.data).zip(&u.data) {
            let want = activation(std::hint::black_box(g), Activation::Silu) * u;
            assert_eq!(out.to_bits(), want.to_bits(), "silu({g}) * {u}");
        }
    }

    fn tensor(rows: usize, cols: usize, seed: u64) -> CpuTensor {
        CpuTensor {
            data: values(rows * cols, seed),
            rows,
            cols,
        }
    }

    /// Three steps of 5, 1 and 3 tokens into a cache made for `capacity` tokens; every output.
    fn steps(capacity: usize) -> Vec<Vec<u32>> {
        let b = CpuBackend;
        let kv = HEADS.kv_heads * HEADS.head_dim;
        let mut cache = b.new_cache(1, kv, capacity);
        let mut start = 0;
        let mut outs = Vec::new();
        for (s, n) in [5usize, 1, 3].into_iter().enumerate() {
            let q = tensor(n, HEADS.q_heads * HEADS.head_dim, 10 + s as u64);
            let (k, v) = (tensor(n, kv, 20 + s as u64), tensor(n, kv, 30 + s as u64));
            let qkv = Qkv {
                q: &q,
                k: &k,
                v: &v,
            };
            let out = b.cached_attention(&mut cache, 0, start, qkv, &AttnMask::Causal, HEADS);
            outs.push(out.data.iter().map(|x| x.to_bits()).collect());
            start += n;
        }
        // Keep slots 1, 4 and 7 (as after accepting a path), then one more token sees them.
        b.compact_cache(&mut cache, &[1, 4, 7], 1);
        outs.push(one_more(&mut cache));
        outs
    }

    /// One token at slot 4 (after four kept slots); its output's bits.
    fn one_more(cache: &mut CpuCache) -> Vec<u32> {
        let kv = HEADS.kv_heads * HEADS.head_dim;
        let q = tensor(1, HEADS.q_heads * HEADS.head_dim, 40);
        let (k, v) = (tensor(1, kv, 41), tensor(1, kv, 42));
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        let out = CpuBackend.cached_attention(cache, 0, 4, qkv, &AttnMask::Causal, HEADS);
        out.data.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn the_transposed_keys_grow_and_compact_with_the_cache() {
        // A cache made too small grows its transposed keys; the results are those of a cache
        // made big enough, step for step, also after compaction.
        assert_eq!(steps(0), steps(16));
        assert_eq!(steps(2), steps(16));
        // And compaction keeps what it should: the last step equals attending over the kept
        // slots written afresh.
        let b = CpuBackend;
        let kv = HEADS.kv_heads * HEADS.head_dim;
        let mut fresh = b.new_cache(1, kv, 8);
        let pick = |t: &[(usize, u64)]| -> (CpuTensor, CpuTensor) {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for &(row, seed) in t {
                k.extend_from_slice(&tensor(5, kv, 20 + seed).data[row * kv..(row + 1) * kv]);
                v.extend_from_slice(&tensor(5, kv, 30 + seed).data[row * kv..(row + 1) * kv]);
            }
            let n = t.len();
            (
                CpuTensor {
                    data: k,
                    rows: n,
                    cols: kv,
                },
                CpuTensor {
                    data: v,
                    rows: n,
                    cols: kv,
                },
            )
        };
        // Slot 0: step 0 row 0; kept slots 1 (step 0 row 1), 4 (step 0 row 4), 7 (step 2 row 1).
        let (k, v) = pick(&[(0, 0), (1, 0), (4, 0), (1, 2)]);
        let q = tensor(4, HEADS.q_heads * HEADS.head_dim, 99);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        b.cached_attention(&mut fresh, 0, 0, qkv, &AttnMask::Causal, HEADS);
        assert_eq!(steps(16).last(), Some(&one_more(&mut fresh)));
    }
}
