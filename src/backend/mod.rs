//! The op set the model needs, and the executors that implement it.
//!
//! The model (`model`, `vision::tower`, `projector`, `text::decoder`) is written once against the
//! [`Backend`] trait; backends implement ops, never models. `cpu` is the plain-Rust reference used
//! by tests and as the fallback; the WGSL engine implements the same trait.
//!
//! Tensors are row-major matrices `[rows, cols]`: one row per token. Weights are uploaded once.

pub mod cpu;
pub mod gpu;
pub mod math;

pub use math::Rope;

use crate::config::Activation;
use crate::quant::WeightData;

/// Which cache slots each new token may attend to, for `n` new tokens written at slots
/// `start..start + n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttnMask {
    /// Token i sees every slot before it: `0..=start + i` (prefill, plain decoding).
    Causal,
    /// A speculation tree. The *region* is the last `ctx` slots before the new tokens plus the new
    /// tokens: slots `start - ctx..start + n`. Slots before the region are always visible; inside
    /// it, `allowed[i * (ctx + n) + j]` says whether new token `i` sees region slot `j`.
    /// Target verification uses `ctx = 0` (the tree is all new); draft expansion uses `ctx > 0`
    /// (tree nodes drafted in earlier passes sit in the cache, visible to their descendants only).
    Tree {
        ctx: usize,
        n: usize,
        allowed: Vec<bool>,
    },
}

impl AttnMask {
    /// Whether new token `i` (of `n`, written at `start`) sees absolute cache slot `slot`.
    pub fn sees(&self, start: usize, i: usize, slot: usize) -> bool {
        match self {
            AttnMask::Causal => slot <= start + i,
            AttnMask::Tree { ctx, n, allowed } => {
                let region = start - ctx;
                slot < region || (slot < start + n && allowed[i * (ctx + n) + (slot - region)])
            }
        }
    }
}

/// The queries, keys and values of one attention call, `[n, heads * head_dim]` each.
pub struct Qkv<'a, T> {
    pub q: &'a T,
    pub k: &'a T,
    pub v: &'a T,
}

// Manual impls: a derive would require `T: Copy`, but only the references are copied.
impl<T> Clone for Qkv<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Qkv<'_, T> {}

/// Where the new tokens of a decoder pass go and how they attend: cache slots `start..start + n`,
/// their position ids (for the rotary embedding) and the mask.
#[derive(Clone, Copy)]
pub struct CacheStep<'a> {
    pub start: usize,
    pub positions: &'a [u32],
    pub rope: Rope,
    pub mask: &'a AttnMask,
}

/// Shapes of the attention heads of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Most entries `Backend::top_k` keeps per row (the kernel's `MAX_K`).
pub const MAX_TOP_K: usize = 16;

/// One row of [`Backend::top_k`]'s output.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Best first; fewer than asked when the row is shorter.
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
    /// log(sum(exp(row))): `value - lse` is a log-probability.
    pub lse: f32,
}

impl TopK {
    /// Rows of `[rows, 2k + 1]` data as `Backend::top_k` lays them out; `vocab` caps `k`.
    pub fn parse(data: &[f32], k: usize, vocab: usize) -> Vec<TopK> {
        let kept = k.min(vocab);
        data.chunks(2 * k + 1)
            .filter(|c| c.len() == 2 * k + 1)
            .map(|c| TopK {
                values: c[..kept].to_vec(),
                ids: c[k..k + kept].iter().map(|&i| i as u32).collect(),
                lse: c[2 * k],
            })
            .collect()
    }

    /// (token, log-probability) pairs, best first.
    pub fn logprobs(&self) -> Vec<(u32, f32)> {
        self.ids
            .iter()
            .zip(&self.values)
            .map(|(&i, &v)| (i, v - self.lse))
            .collect()
    }
}

/// An executor of the model's ops.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Activations `[rows, cols]` (`'static`: a tensor can be recognised as another backend's
    /// type when both are the same).
    type Tensor: 'static;
    /// A constant uploaded once (matrix `[out, in]` or vector).
    type Weight;
    /// Key/value storage for every decoder layer.
    type Cache;

    /// Upload a weight given as f32 (already widened) with its logical shape.
    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> Self::Weight;
    /// Upload a weight as the checkpoint stores it (f32, f16 bits, or q8/q4 blocks; see
    /// [`crate::quant`]). The default widens it to f32; the CPU and GPU engines keep f16 and
    /// quantized matrices as they are and compute with exactly the widened values.
    fn weight_data(&self, data: WeightData, shape: &[usize]) -> Self::Weight {
        self.weight(data.into_f32(), shape)
    }
    /// Whether a matrix the checkpoint stores as f16 should arrive as f16 bits even when nothing
    /// asked to keep it so: the engine reads f16 as fast as f32, from half the memory, and
    /// computes with exactly the widened values. Default: no (it arrives as f32).
    fn reads_f16(&self) -> bool {
        false
    }
    /// Whether the model should load the projections that read one input (q/k/v; gate/up) as one
    /// weight stacked by rows, so that a pass runs one matmul where it ran three (or two), and
    /// hand their side-by-side output to [`Self::rope_cached_attention_stacked`] and
    /// [`Self::gated_stacked`]. An engine that pays per kernel launch says yes (the GPU engine);
    /// default: no.
    fn stacks_projections(&self) -> bool {
        false
    }
    /// Upload activations from the host.
    fn tensor(&self, data: Vec<f32>, rows: usize, cols: usize) -> Self::Tensor;
    /// `(rows, cols)` of a tensor.
    fn dims(&self, x: &Self::Tensor) -> (usize, usize);
    /// Copy a tensor back to the host (asynchronous on the GPU; immediate on the CPU).
    async fn read(&self, x: &Self::Tensor) -> Vec<f32>;
    /// Kernel dispatches recorded so far, on executors that dispatch kernels (the GPU); `None`
    /// elsewhere. What a pass costs in launches, where each one has a fixed price.
    fn dispatches(&self) -> Option<u64> {
        None
    }
    /// Start the work recorded so far without waiting for it (a device backend submits its
    /// commands; the CPU engine computed them already): host work done next overlaps the device's.
    fn submit(&self) {}

    /// The `k` (1..=[`MAX_TOP_K`]) largest entries of every row of `logits` `[rows, vocab]` (ties:
    /// the lower index first) and the row's log-sum-exp, as `[rows, 2k + 1]`: values, indices (as
    /// f32), lse ([`TopK::parse`]). What greedy decoding and tree drafting read back instead of
    /// whole vocabulary rows.
    fn top_k(&self, logits: &Self::Tensor, k: usize) -> Self::Tensor {
        self.top_k_scaled(logits, k, 1.0)
    }
    /// [`Self::top_k`] of `logits * scale` (scale = 1 / temperature: what nucleus sampling reads
    /// back instead of whole rows). Scale 1 gives `top_k`'s values bit for bit.
    fn top_k_scaled(&self, logits: &Self::Tensor, k: usize, scale: f32) -> Self::Tensor;

    /// `x W^T + b` for `W: [out, in]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Weight, b: Option<&Self::Weight>) -> Self::Tensor;
    /// `residual + (x W^T + b)`: a step of a residual stream. Bit for bit `add(residual,
    /// linear(x, w, b))`; an engine may compute it in one kernel (the GPU engine adds in the
    /// matmul's epilogue, in place: `residual` is consumed).
    fn linear_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        residual: Self::Tensor,
    ) -> Self::Tensor {
        self.add(&residual, &self.linear(x, w, b))
    }
    /// `linear(rms_norm(x, norm, eps), w, b)`: a pre-norm block's first projection. Bit for bit
    /// the two ops; an engine may normalise x as the matmul reads it (the GPU engine: one kernel
    /// where two ran).
    fn rms_norm_linear(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
    ) -> Self::Tensor {
        self.linear(&self.rms_norm(x, norm, eps), w, b)
    }
    /// `gated_stacked(rms_norm_linear(x, norm, eps, gate_up, b), act)`: a SwiGLU block's first
    /// half, from a stacked gate/up weight `[2 * inter, in]` to `[rows, inter]`. Bit for bit the
    /// ops it names; an engine may apply the activation in the matmul's epilogue (the GPU
    /// engine: one kernel where three, or on CPU drivers two, ran).
    fn rms_norm_gated(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        gate_up: &Self::Weight,
        b: Option<&Self::Weight>,
        act: Activation,
    ) -> Self::Tensor {
        self.gated_stacked(&self.rms_norm_linear(x, norm, eps, gate_up, b), act)
    }
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        b: &Self::Weight,
        eps: f32,
    ) -> Self::Tensor;
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Weight, eps: f32) -> Self::Tensor;
    fn activate(&self, x: &Self::Tensor, act: Activation) -> Self::Tensor;
    /// `act(gate) * up` (SwiGLU).
    fn gated(&self, gate: &Self::Tensor, up: &Self::Tensor, act: Activation) -> Self::Tensor;
    /// [`Self::gated`] with gate and up side by side in one tensor `[n, 2 * cols]` (a stacked
    /// gate/up projection's output): bit for bit the same. The default splits the columns; an
    /// engine may read both halves in place.
    fn gated_stacked(&self, gate_up: &Self::Tensor, act: Activation) -> Self::Tensor {
        let cols = self.dims(gate_up).1 / 2;
        let gate = self.slice_cols(gate_up, 0, cols);
        let up = self.slice_cols(gate_up, cols, 2 * cols);
        self.gated(&gate, &up, act)
    }
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// `x + w` for a weight of the same shape as `x` (learned position embeddings).
    fn add_weight(&self, x: &Self::Tensor, w: &Self::Weight) -> Self::Tensor;
    /// Rows of an embedding table `[vocab, dim]`.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Self::Tensor;
    /// Put a weight row (e.g. CLIP's class embedding) before the rows of `x`.
    fn prepend_row(&self, x: &Self::Tensor, row: &Self::Weight) -> Self::Tensor;
    fn slice_rows(&self, x: &Self::Tensor, start: usize, end: usize) -> Self::Tensor;
    /// Columns `start..end` of every row.
    fn slice_cols(&self, x: &Self::Tensor, start: usize, end: usize) -> Self::Tensor;
    /// Concatenate along columns (same row count).
    fn concat_cols(&self, parts: &[&Self::Tensor]) -> Self::Tensor;
    /// `dst` with `dst[rows[i]] = src[i]`.
    fn scatter_rows(&self, dst: &Self::Tensor, rows: &[usize], src: &Self::Tensor) -> Self::Tensor;
    /// Apply RoPE to `x: [n, heads * head_dim]` at the given positions.
    fn rope(
        &self,
        x: &Self::Tensor,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> Self::Tensor;
    /// Bidirectional multi-head attention over the rows of one sequence (vision tower).
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: Heads,
    ) -> Self::Tensor;

    fn new_cache(&self, layers: usize, kv_dim: usize, capacity: usize) -> Self::Cache;
    /// Write `k, v` (`[n, kv_heads * head_dim]`) of `layer` at cache slots `start..start + n`, then
    /// attend from each new query `i` over the slots `mask.sees(start, i, slot)` allows.
    fn cached_attention(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        start: usize,
        qkv: Qkv<'_, Self::Tensor>,
        mask: &AttnMask,
        heads: Heads,
    ) -> Self::Tensor;
    /// [`Self::rope`] on `q` and `k` at `step.positions`, then [`Self::cached_attention`]: one call
    /// so that an engine can rotate as it writes the cache (the GPU engine: one kernel rotates the
    /// queries and keys and writes keys and values, where three ran). Bit for bit the same.
    fn rope_cached_attention(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        qkv: Qkv<'_, Self::Tensor>,
        step: CacheStep<'_>,
        heads: Heads,
    ) -> Self::Tensor {
        let (positions, rope) = (step.positions, step.rope);
        let q = self.rope(qkv.q, positions, heads.q_heads, heads.head_dim, rope);
        let k = self.rope(qkv.k, positions, heads.kv_heads, heads.head_dim, rope);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: qkv.v,
        };
        self.cached_attention(cache, layer, step.start, qkv, step.mask, heads)
    }
    /// [`Self::rope_cached_attention`] with q, k and v side by side in one tensor `[n, q_heads *
    /// head_dim + 2 * kv_heads * head_dim]` (a stacked q/k/v projection's output): bit for bit
    /// the same. The default splits the columns; an engine may read them in place.
    fn rope_cached_attention_stacked(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        qkv: &Self::Tensor,
        step: CacheStep<'_>,
        heads: Heads,
    ) -> Self::Tensor {
        let (q_cols, kv_cols) = (
            heads.q_heads * heads.head_dim,
            heads.kv_heads * heads.head_dim,
        );
        let q = self.slice_cols(qkv, 0, q_cols);
        let k = self.slice_cols(qkv, q_cols, q_cols + kv_cols);
        let v = self.slice_cols(qkv, q_cols + kv_cols, q_cols + 2 * kv_cols);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        self.rope_cached_attention(cache, layer, qkv, step, heads)
    }
    /// Copy cache slots `from[i]` to `to_start + i` in every layer (keep an accepted tree path).
    fn compact_cache(&self, cache: &mut Self::Cache, from: &[usize], to_start: usize);
}
