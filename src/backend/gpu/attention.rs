//! Attention and what feeds it: the rope (cos, sin) table and rope op, tree masks packed to bits,
//! the per-layer KV cache (grow, write, compact) and the attention dispatches over it.

use crate::backend::math::rope_inv_freq;
use crate::backend::{AttnMask, CacheStep, Heads, Qkv, Rope};

use super::pipelines::Kernel;
use super::pool::GpuBuf;
use super::{GpuBackend, GpuCache, GpuTensor, RopeTable};

/// Largest head dimension the attention kernels take (DPT * WG in the shaders).
const MAX_HEAD_DIM: usize = 256;

/// One bit per (new token i, region slot j) of a tree mask over `width` region slots, rows padded
/// to whole u32 words (attention_tree_f32.wgsl). Returns (words per row, bits).
pub fn pack_mask(n: usize, width: usize, allowed: &[bool]) -> (usize, Vec<u32>) {
    let words = width.div_ceil(32).max(1);
    let mut bits = vec![0u32; n * words];
    for i in 0..n {
        for j in 0..width {
            if allowed.get(i * width + j).copied().unwrap_or(false) {
                bits[i * words + j / 32] |= 1 << (j % 32);
            }
        }
    }
    (words, bits)
}

/// Where a cached attention call writes and what it sees, and whether it rotates q and k first.
pub(super) struct Attend<'a> {
    pub start: usize,
    pub mask: &'a AttnMask,
    /// Positions and rotary parameters: rotate q and k as the cache is written.
    pub rotate: Option<(&'a [u32], Rope)>,
}

impl<'a> Attend<'a> {
    /// A decoder step's attention: rotate at `step`'s positions, write at its slots.
    pub fn rotating(step: CacheStep<'a>) -> Self {
        Attend {
            start: step.start,
            mask: step.mask,
            rotate: Some((step.positions, step.rope)),
        }
    }
}

/// The queries, keys and values of a cached attention call: three tensors, or one stacked q/k/v
/// projection's output `[n, q_cols + 2 kv_dim]` (q, then k, then v in each row), read in place.
#[derive(Clone, Copy)]
pub(super) enum QkvIn<'a> {
    Split(Qkv<'a, GpuTensor>),
    Stacked(&'a GpuTensor),
}

/// Where q, k and v sit in their buffers: rows of `q_stride` / `kv_stride` floats, k and v from
/// columns `k_off` / `v_off` (rope_kv_write_f32.wgsl's parameters).
struct QkvLayout<'a> {
    q: &'a GpuTensor,
    k: &'a GpuTensor,
    v: &'a GpuTensor,
    q_stride: usize,
    kv_stride: usize,
    k_off: usize,
    v_off: usize,
}

impl<'a> QkvIn<'a> {
    /// Rows (new tokens) and the layout for a layer of `q_cols` query and `kv_dim` key columns;
    /// `None` when the shapes do not fit them.
    fn layout(self, q_cols: usize, kv_dim: usize) -> Option<(usize, QkvLayout<'a>)> {
        match self {
            QkvIn::Split(Qkv { q, k, v }) => {
                let n = q.rows;
                let ok = q.cols == q_cols && [k, v].iter().all(|t| t.rows == n && t.cols == kv_dim);
                let layout = QkvLayout {
                    q,
                    k,
                    v,
                    q_stride: q_cols,
                    kv_stride: kv_dim,
                    k_off: 0,
                    v_off: 0,
                };
                ok.then_some((n, layout))
            }
            QkvIn::Stacked(t) => {
                let stride = q_cols + 2 * kv_dim;
                let layout = QkvLayout {
                    q: t,
                    k: t,
                    v: t,
                    q_stride: stride,
                    kv_stride: stride,
                    k_off: q_cols,
                    v_off: q_cols + kv_dim,
                };
                (t.cols == stride).then_some((t.rows, layout))
            }
        }
    }

    fn describe(self) -> String {
        match self {
            QkvIn::Split(Qkv { q, k, .. }) => {
                format!("q [{}, {}], k [{}, {}]", q.rows, q.cols, k.rows, k.cols)
            }
            QkvIn::Stacked(t) => format!("stacked q/k/v [{}, {}]", t.rows, t.cols),
        }
    }
}

impl GpuBackend {
    /// The (cos, sin) table for `positions`, uploaded once per distinct set of positions.
    pub(super) fn rope_table(&self, positions: &[u32], head_dim: usize, rope: Rope) {
        let (theta, factor) = (rope.theta.to_bits(), rope.linear_factor.to_bits());
        if let Some(t) = self.rope_table.borrow().as_ref() {
            if t.positions == positions
                && t.head_dim == head_dim
                && t.theta == theta
                && t.factor == factor
            {
                return;
            }
        }
        let inv_freq = rope_inv_freq(head_dim, rope);
        let mut table = Vec::with_capacity(positions.len() * inv_freq.len() * 2);
        for &pos in positions {
            for f in &inv_freq {
                // As the CPU reference: angle in f32, std sin/cos.
                let angle = pos as f32 * f;
                table.push(angle.cos());
                table.push(angle.sin());
            }
        }
        if table.is_empty() {
            table.push(0.0);
        }
        let buf = self.upload_pod(&table);
        *self.rope_table.borrow_mut() = Some(RopeTable {
            positions: positions.to_vec(),
            head_dim,
            theta,
            factor,
            buf,
        });
    }

    /// The packed bits of a tree mask, uploaded once per distinct mask.
    pub(super) fn mask_words(&self, mask: &AttnMask) -> usize {
        let AttnMask::Tree { ctx, n, allowed } = mask else {
            return 1;
        };
        let words = (ctx + n).div_ceil(32).max(1);
        if let Some((m, _)) = self.mask_bits.borrow().as_ref() {
            if m == mask {
                return words;
            }
        }
        let (words, mut bits) = pack_mask(*n, ctx + n, allowed);
        if bits.is_empty() {
            bits.push(0);
        }
        let buf = self.upload_pod(&bits);
        *self.mask_bits.borrow_mut() = Some((mask.clone(), buf));
        words
    }

    /// Make room for slots `0..needed` in every layer of `cache`.
    pub(super) fn grow_cache(&self, cache: &mut GpuCache, needed: usize) {
        if needed <= cache.capacity {
            return;
        }
        let capacity = needed.max(cache.capacity * 2);
        let old_bytes = cache.capacity * cache.kv_dim * 4;
        for store in cache.k.iter_mut().chain(cache.v.iter_mut()) {
            let new = self.cache_buffer(capacity, cache.kv_dim);
            self.copy(store, 0, &new, 0, old_bytes);
            *store = new;
        }
        cache.capacity = capacity;
    }

    pub(super) fn cache_buffer(&self, capacity: usize, kv_dim: usize) -> GpuBuf {
        let bytes = (capacity * kv_dim * 4).max(16) as u64;
        if bytes > self.dev.limits.max_binding {
            self.errors().push(format!(
                "a KV cache of {capacity} slots x {kv_dim} needs {bytes} bytes per layer, over one storage binding"
            ));
        }
        let buffer = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kv cache"),
            size: bytes,
            usage: super::pool::POOL_USAGE,
            mapped_at_creation: false,
        });
        GpuBuf::new(buffer, &self.graveyard)
    }

    pub(super) fn check_heads(&self, op: &str, heads: Heads) -> bool {
        let ok = heads.head_dim > 0
            && heads.head_dim <= MAX_HEAD_DIM
            && heads.kv_heads > 0
            && heads.q_heads.is_multiple_of(heads.kv_heads);
        if !ok {
            self.errors().push(format!(
                "{op}: unsupported heads {heads:?} (head_dim 1..={MAX_HEAD_DIM}, q_heads a multiple of kv_heads)"
            ));
        }
        ok
    }

    /// [`Backend::rope`](crate::backend::Backend::rope).
    pub(super) fn record_rope(
        &self,
        x: &GpuTensor,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> GpuTensor {
        if x.cols != heads * head_dim || positions.len() != x.rows {
            let msg = format!(
                "x [{}, {}], {} positions, {heads} x {head_dim}",
                x.rows,
                x.cols,
                positions.len()
            );
            return self.shape_error("rope", msg, x.rows, x.cols);
        }
        let out = self.alloc(x.rows, x.cols);
        self.rope_table(positions, head_dim, rope);
        let table = self.rope_table.borrow();
        let Some(t) = table.as_ref() else { return out };
        let params = [
            x.rows as u32,
            x.cols as u32,
            head_dim as u32,
            (head_dim / 2) as u32,
        ];
        let bufs = [x.buffer(), t.buf.get(), out.buffer()];
        self.run(
            Kernel::Rope,
            &[],
            &params,
            &bufs,
            self.elementwise_grid(x.len()),
        );
        out
    }

    /// [`Backend::attention`](crate::backend::Backend::attention).
    pub(super) fn record_attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        heads: Heads,
    ) -> GpuTensor {
        let width = heads.q_heads * heads.head_dim;
        let same = [k, v].iter().all(|t| t.rows == q.rows && t.cols == width) && q.cols == width;
        if !same || heads.kv_heads != heads.q_heads || !self.check_heads("attention", heads) {
            return self.shape_error(
                "attention",
                format!("q [{}, {}] with {heads:?}", q.rows, q.cols),
                q.rows,
                width,
            );
        }
        let out = self.alloc(q.rows, width);
        let scale = 1.0 / (heads.head_dim as f32).sqrt();
        if Self::lane_attention(heads) {
            // The tree kernel with every key visible: n queries over this pass's n keys.
            let n = q.rows as u32;
            let h = heads.q_heads as u32;
            let params = [n, 0, 0, h, h, heads.head_dim as u32, 0, scale.to_bits()];
            let bufs = [
                q.buffer(),
                k.buffer(),
                v.buffer(),
                &self.dummy,
                out.buffer(),
            ];
            self.dispatch_lane_attention(q.rows, heads, (false, true), &params, &bufs);
            return out;
        }
        let params = [
            q.rows as u32,
            heads.q_heads as u32,
            heads.head_dim as u32,
            scale.to_bits(),
        ];
        let bufs = [q.buffer(), k.buffer(), v.buffer(), out.buffer()];
        self.run(
            Kernel::AttentionFull,
            &[],
            &params,
            &bufs,
            self.grid(q.rows * heads.q_heads),
        );
        out
    }

    /// [`Backend::new_cache`](crate::backend::Backend::new_cache).
    pub(super) fn create_cache(&self, layers: usize, kv_dim: usize, capacity: usize) -> GpuCache {
        let capacity = capacity.max(1);
        let k = (0..layers)
            .map(|_| self.cache_buffer(capacity, kv_dim))
            .collect();
        let v = (0..layers)
            .map(|_| self.cache_buffer(capacity, kv_dim))
            .collect();
        GpuCache {
            kv_dim,
            capacity,
            k,
            v,
        }
    }

    /// [`Backend::cached_attention`](crate::backend::Backend::cached_attention);
    /// with `rotate` (positions and parameters), [`Backend::rope_cached_attention`]: one kernel
    /// rotates q and k and writes the cache.
    ///
    /// [`Backend::rope_cached_attention`]: crate::backend::Backend::rope_cached_attention
    pub(super) fn record_cached_attention(
        &self,
        cache: &mut GpuCache,
        layer: usize,
        qkv: QkvIn<'_>,
        at: Attend<'_>,
        heads: Heads,
    ) -> GpuTensor {
        let Attend {
            start,
            mask,
            rotate,
        } = at;
        let width = heads.q_heads * heads.head_dim;
        let fits = qkv.layout(width, cache.kv_dim);
        let n = fits.as_ref().map_or(0, |(n, _)| *n);
        let mask_ok = match mask {
            AttnMask::Causal => true,
            AttnMask::Tree {
                ctx,
                n: mn,
                allowed,
            } => *mn == n && *ctx <= start && allowed.len() == n * (ctx + n),
        };
        // The stacked layout is read by the rotating kernel only (what a decoder layer runs).
        let stacked_unrotated = matches!(qkv, QkvIn::Stacked(_)) && rotate.is_none();
        let layout = match fits {
            Some((_, layout))
                if layer < cache.k.len()
                    && cache.kv_dim == heads.kv_heads * heads.head_dim
                    && mask_ok
                    && !stacked_unrotated
                    && rotate.is_none_or(|(positions, _)| positions.len() == n)
                    && self.check_heads("cached_attention", heads) =>
            {
                layout
            }
            _ => {
                let msg = format!("layer {layer}, {}, {heads:?}", qkv.describe());
                return self.shape_error("cached_attention", msg, n, width);
            }
        };
        self.grow_cache(cache, start + n);
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let rotated_q;
        let q = match rotate {
            None => {
                let params = [n as u32, cache.kv_dim as u32, start as u32];
                let bufs = [layout.k.buffer(), layout.v.buffer(), kc, vc];
                let grid = self.elementwise_grid(n * cache.kv_dim);
                self.run(Kernel::KvWrite, &[], &params, &bufs, grid);
                layout.q
            }
            Some((positions, rope)) => {
                rotated_q = self.alloc(n, width);
                self.rope_table(positions, heads.head_dim, rope);
                let table = self.rope_table.borrow();
                let Some(t) = table.as_ref() else {
                    return rotated_q;
                };
                let params = [
                    n as u32,
                    width as u32,
                    cache.kv_dim as u32,
                    heads.head_dim as u32,
                    (heads.head_dim / 2) as u32,
                    start as u32,
                    layout.q_stride as u32,
                    layout.kv_stride as u32,
                    layout.k_off as u32,
                    layout.v_off as u32,
                ];
                let bufs = [
                    layout.q.buffer(),
                    layout.k.buffer(),
                    layout.v.buffer(),
                    t.buf.get(),
                    rotated_q.buffer(),
                    kc,
                    vc,
                ];
                let grid = self.elementwise_grid(n * (width + cache.kv_dim));
                self.run(Kernel::RopeKvWrite, &[], &params, &bufs, grid);
                &rotated_q
            }
        };

        let out = self.alloc(n, width);
        let words = self.mask_words(mask);
        let (causal, ctx) = match mask {
            AttnMask::Causal => (true, 0),
            AttnMask::Tree { ctx, .. } => (false, *ctx),
        };
        let scale = 1.0 / (heads.head_dim as f32).sqrt();
        let params = [
            n as u32,
            start as u32,
            ctx as u32,
            heads.q_heads as u32,
            heads.kv_heads as u32,
            heads.head_dim as u32,
            words as u32,
            scale.to_bits(),
        ];
        let mask_bits = self.mask_bits.borrow();
        let mask_buf = match (causal, mask_bits.as_ref()) {
            (false, Some((_, b))) => b.get(),
            _ => &self.dummy,
        };
        let bufs = [q.buffer(), kc, vc, mask_buf, out.buffer()];
        self.dispatch_attention(n, start + n, heads, causal, &params, &bufs);
        out
    }

    /// [`Backend::compact_cache`](crate::backend::Backend::compact_cache).
    pub(super) fn record_compact_cache(
        &self,
        cache: &mut GpuCache,
        from: &[usize],
        to_start: usize,
    ) {
        let count = from.len();
        if count == 0 {
            return;
        }
        if from.iter().any(|&f| f >= cache.capacity) || to_start + count > cache.capacity {
            self.errors().push(format!(
                "compact_cache: slots {from:?} -> {to_start}.. outside a cache of {} slots",
                cache.capacity
            ));
            return;
        }
        let slots: Vec<u32> = from.iter().map(|&f| f as u32).collect();
        let from_buf = self.upload_pod(&slots);
        let len = count * cache.kv_dim;
        let scratch = super::pool::PoolBuf::alloc(&self.pool, (2 * len * 4) as u64);
        let params = [count as u32, cache.kv_dim as u32];
        for (kc, vc) in cache.k.iter().zip(&cache.v) {
            let bufs = [from_buf.get(), kc, vc, scratch.get()];
            self.run(
                Kernel::KvCompact,
                &[],
                &params,
                &bufs,
                self.elementwise_grid(len),
            );
            let dst = to_start * cache.kv_dim * 4;
            self.copy(scratch.get(), 0, kc, dst, len * 4);
            self.copy(scratch.get(), len * 4, vc, dst, len * 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pack_mask;

    #[test]
    fn mask_bits_follow_rows_and_words() {
        // 33 tokens: two words per row; token 32 sees itself and token 0.
        let n = 33;
        let mut allowed = vec![false; n * n];
        allowed[32 * n + 32] = true;
        allowed[32 * n] = true;
        allowed[1] = true;
        let (words, bits) = pack_mask(n, n, &allowed);
        assert_eq!(words, 2);
        assert_eq!(bits.len(), n * 2);
        assert_eq!(bits[0], 0b10);
        assert_eq!(bits[32 * 2], 1);
        assert_eq!(bits[32 * 2 + 1], 1);
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
    }
}
