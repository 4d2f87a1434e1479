//! The [`Backend`] ops on the GPU: host-side shapes, parameters and dispatch sizes for each kernel.
//! Numerics follow the CPU reference (src/backend/cpu.rs); where the two differ it is only in the
//! order of floating-point sums.

use crate::backend::math::rope_inv_freq;
use crate::backend::{AttnMask, Backend, Heads, Rope};
use crate::config::Activation;
use crate::quant::WeightData;

use super::pipelines::Kernel;
use super::pool::GpuBuf;
use super::{GpuBackend, GpuCache, GpuTensor, GpuWeight, RopeTable, WeightChunk, WeightDType};

/// Largest head dimension the attention kernels take (DPT * WG in the shaders).
const MAX_HEAD_DIM: usize = 256;

/// Outputs per workgroup of `matmul_vec` (RPW in the shader).
const VEC_ROWS_PER_WORKGROUP: usize = 32;

/// Rows of x up to which `matmul_small` is used (above: `matmul_tiled`).
const SMALL_ROWS: usize = 64;

/// Rows of x and weight rows (output columns) per invocation of `matmul_small_f32` (TR, TC).
const SMALL_F32_TILE: (usize, usize) = (4, 8);
/// Largest workgroup of `matmul_small_f32` (WG).
const SMALL_F32_WG: usize = 32;

/// The three matmul kernel shapes (`shaders/matmul_{vec,small,tiled}_*.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulShape {
    Vec,
    Small,
    Tiled,
}

impl MatmulShape {
    pub fn name(self) -> &'static str {
        match self {
            MatmulShape::Vec => "matmul_vec",
            MatmulShape::Small => "matmul_small",
            MatmulShape::Tiled => "matmul_tiled",
        }
    }
}

impl GpuBackend {
    /// The kernel shape `linear` uses for `m` rows of x against a `dtype` weight.
    pub fn matmul_shape(&self, m: usize, dtype: WeightDType) -> MatmulShape {
        if m == 1 {
            MatmulShape::Vec
        } else if m <= SMALL_ROWS || (self.dev.cpu && dtype == WeightDType::F32) {
            // On CPU drivers the lane-per-tile kernel beats the workgroup-memory GEMM at any m
            // (4x at 75 rows on lavapipe); the grid's z covers the row tiles.
            MatmulShape::Small
        } else {
            MatmulShape::Tiled
        }
    }
}

fn act_id(act: Activation) -> f64 {
    match act {
        Activation::Silu => 0.0,
        Activation::Gelu => 1.0,
        Activation::GeluTanh => 2.0,
        Activation::QuickGelu => 3.0,
        Activation::Relu => 4.0,
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

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

impl GpuBackend {
    fn elementwise_grid(&self, len: usize) -> [u32; 3] {
        self.grid(len.div_ceil(256))
    }

    /// A zero-filled tensor, returned after a shape error so callers keep going.
    fn zeros(&self, rows: usize, cols: usize) -> GpuTensor {
        let t = self.alloc(rows, cols);
        let zeros = vec![0f32; rows * cols];
        self.rec
            .borrow_mut()
            .upload(bytemuck::cast_slice(&zeros), &t.buffer().buffer);
        t
    }

    fn shape_error(&self, op: &str, msg: String, rows: usize, cols: usize) -> GpuTensor {
        self.errors().push(format!("{op}: {msg}"));
        self.zeros(rows, cols)
    }

    fn create_weight_chunk(&self, data: &[f32], rows: usize, cols: usize, stride: usize) -> GpuBuf {
        let bytes = (rows * stride * 4).max(16);
        let buffer = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weight"),
            size: bytes as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        if let Ok(mut view) = buffer.get_mapped_range_mut(..) {
            if stride == cols {
                let mut padded = data.to_vec();
                padded.resize(bytes / 4, 0.0);
                view.copy_from_slice(bytemuck::cast_slice(&padded));
            } else {
                let mut padded = vec![0f32; bytes / 4];
                for (dst, src) in padded.chunks_mut(stride).zip(data.chunks(cols)) {
                    dst[..cols].copy_from_slice(src);
                }
                view.copy_from_slice(bytemuck::cast_slice(&padded));
            }
        }
        buffer.unmap();
        GpuBuf::new(buffer, &self.graveyard)
    }

    /// A weight buffer holding `bytes` (zero-padded to a whole number of 16-byte vec4s).
    fn create_weight_bytes(&self, bytes: &[u8]) -> GpuBuf {
        let size = bytes.len().next_multiple_of(16).max(16);
        let buffer = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weight"),
            size: size as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        if let Ok(mut view) = buffer.get_mapped_range_mut(..) {
            let mut padded = bytes.to_vec();
            padded.resize(size, 0);
            view.copy_from_slice(&padded);
        }
        buffer.unmap();
        GpuBuf::new(buffer, &self.graveyard)
    }

    /// Rows per chunk for rows of `row_bytes` bytes.
    fn rows_per_chunk(&self, row_bytes: usize) -> usize {
        ((self.dev.limits.max_chunk as usize) / row_bytes.max(1)).max(1)
    }

    /// An f16 matrix `[rows, cols]` (bits): rows zero-padded to a multiple of 4 halves, split by
    /// rows into chunks of at most one binding.
    fn weight_f16(&self, bits: &[u16], shape: &[usize], rows: usize, cols: usize) -> GpuWeight {
        let stride = cols.next_multiple_of(4);
        let per_chunk = self.rows_per_chunk(stride * 2);
        let mut chunks = Vec::new();
        let mut row_start = 0;
        while row_start < rows || chunks.is_empty() {
            let n = per_chunk.min(rows - row_start);
            let mut padded = vec![0u16; n * stride];
            for (dst, src) in padded
                .chunks_mut(stride)
                .zip(bits[row_start * cols..(row_start + n) * cols].chunks(cols.max(1)))
            {
                dst[..cols].copy_from_slice(src);
            }
            chunks.push(WeightChunk {
                buf: self.create_weight_bytes(bytemuck::cast_slice(&padded)),
                scales: None,
                row_start,
                rows: n,
            });
            row_start += n;
        }
        GpuWeight {
            shape: shape.to_vec(),
            dtype: WeightDType::F16,
            rows,
            cols,
            row_stride: stride,
            chunks,
        }
    }

    /// A q8 / q4 matrix: per chunk one buffer of codes and one of scales, both planar.
    fn weight_quant(&self, q: &crate::quant::QuantMatrix, shape: &[usize]) -> GpuWeight {
        let nb = q.blocks_per_row();
        let row_bytes = nb * q.scheme.block_bytes();
        let per_chunk = self.rows_per_chunk(row_bytes);
        let mut chunks = Vec::new();
        let mut row_start = 0;
        while row_start < q.rows || chunks.is_empty() {
            let n = per_chunk.min(q.rows - row_start);
            let codes = &q.qs[row_start * row_bytes..(row_start + n) * row_bytes];
            let scales = &q.scales[row_start * nb..(row_start + n) * nb];
            chunks.push(WeightChunk {
                buf: self.create_weight_bytes(codes),
                scales: Some(self.create_weight_bytes(bytemuck::cast_slice(scales))),
                row_start,
                rows: n,
            });
            row_start += n;
        }
        GpuWeight {
            shape: shape.to_vec(),
            dtype: match q.scheme {
                crate::quant::Scheme::Q8 => WeightDType::Q8,
                crate::quant::Scheme::Q4 => WeightDType::Q4,
            },
            rows: q.rows,
            cols: q.cols,
            row_stride: row_bytes / 4,
            chunks,
        }
    }

    /// `x W^T + b` over one weight chunk, written at its output columns.
    fn linear_chunk(
        &self,
        x: &GpuTensor,
        w: &GpuWeight,
        chunk: &WeightChunk,
        bias: Option<&GpuBuf>,
        out: &GpuTensor,
    ) {
        let (m, k) = (x.rows, x.cols);
        let n = chunk.rows;
        let consts = [("HAS_BIAS", flag(bias.is_some()))];
        let bias = bias.unwrap_or(&self.dummy);
        let (vec, small, tiled) = match w.dtype {
            WeightDType::F32 => (Kernel::MatmulVec, Kernel::MatmulSmall, Kernel::MatmulTiled),
            WeightDType::F16 => (
                Kernel::MatmulVecF16,
                Kernel::MatmulSmallF16,
                Kernel::MatmulTiledF16,
            ),
            WeightDType::Q8 => (
                Kernel::MatmulVecQ8,
                Kernel::MatmulSmallQ8,
                Kernel::MatmulTiledQ8,
            ),
            WeightDType::Q4 => (
                Kernel::MatmulVecQ4,
                Kernel::MatmulSmallQ4,
                Kernel::MatmulTiledQ4,
            ),
        };
        // Quantized kernels bind the chunk's scales after its codes and take the blocks per row
        // as their last parameter; f32 / f16 ones take neither.
        let quant = matches!(w.dtype, WeightDType::Q8 | WeightDType::Q4);
        let mut bufs = vec![x.buffer(), &chunk.buf];
        if quant {
            bufs.push(chunk.scales.as_ref().unwrap_or(&self.dummy));
        }
        bufs.extend([bias, out.buffer()]);
        let nb = w.cols.div_ceil(crate::quant::GROUP) as u32;
        let (out_stride, col_offset) = (out.cols as u32, chunk.row_start as u32);
        // Per weight row: f32 vec4s / f16 vec2<u32>s (stride / 4), or q8 / q4 code words.
        let k4 = if quant {
            w.row_stride as u32
        } else {
            (w.row_stride / 4) as u32
        };
        let shape = self.matmul_shape(m, w.dtype);
        if shape == MatmulShape::Vec {
            let mut params = vec![n as u32, k as u32, k4, out_stride, col_offset];
            if quant {
                params.push(nb);
            }
            self.run(
                vec,
                &consts,
                &params,
                &bufs,
                self.grid(n.div_ceil(VEC_ROWS_PER_WORKGROUP)),
            );
        } else if shape == MatmulShape::Small {
            let f32_small = w.dtype == WeightDType::F32;
            let mut consts = consts.to_vec();
            let (col_groups, row_blocks) = if f32_small {
                // SMALL_F32_WG lanes a workgroup, each a tile of SMALL_F32_TILE rows x columns.
                let (tile_rows, tile_cols) = SMALL_F32_TILE;
                let lanes = n.div_ceil(tile_cols);
                let wg = SMALL_F32_WG.min(lanes.next_power_of_two().max(8));
                consts.push(("WG", wg as f64));
                (lanes.div_ceil(wg), m.div_ceil(tile_rows))
            } else {
                (n.div_ceil(8), m.div_ceil(8))
            };
            let mut grid = self.grid(col_groups);
            grid[2] = row_blocks as u32;
            let mut params = vec![
                m as u32,
                n as u32,
                k as u32,
                k4,
                out_stride,
                col_offset,
                col_groups as u32,
            ];
            if quant {
                params.push(nb);
            }
            self.run(small, &consts, &params, &bufs, grid);
        } else {
            // f32: floats per row; f16: halves per row; q8 / q4: code words per row.
            let mut params = vec![
                m as u32,
                n as u32,
                k as u32,
                w.row_stride as u32,
                out_stride,
                col_offset,
            ];
            if quant {
                params.push(nb);
            }
            let grid = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1];
            self.run(tiled, &consts, &params, &bufs, grid);
        }
    }

    /// The (cos, sin) table for `positions`, uploaded once per distinct set of positions.
    fn rope_table(&self, positions: &[u32], head_dim: usize, rope: Rope) {
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
    fn mask_words(&self, mask: &AttnMask) -> usize {
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
    fn grow_cache(&self, cache: &mut GpuCache, needed: usize) {
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

    fn cache_buffer(&self, capacity: usize, kv_dim: usize) -> GpuBuf {
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

    fn check_heads(&self, op: &str, heads: Heads) -> bool {
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
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;
    type Cache = GpuCache;

    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> GpuWeight {
        let (rows, cols) = match shape {
            [] => (1, 1),
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
        };
        let mut data = data;
        if data.len() != rows * cols {
            self.errors().push(format!(
                "weight of shape {shape:?} given {} values",
                data.len()
            ));
            data.resize(rows * cols, 0.0);
        }
        // Matrices get vec4-aligned rows; vectors (biases, norm weights) are stored as they are.
        let row_stride = if shape.len() >= 2 {
            cols.next_multiple_of(4)
        } else {
            cols
        };
        let rows_per_chunk =
            ((self.dev.limits.max_chunk as usize) / (row_stride * 4).max(1)).max(1);
        let mut chunks = Vec::new();
        let mut row_start = 0;
        while row_start < rows || chunks.is_empty() {
            let n = rows_per_chunk.min(rows - row_start);
            let part = &data[row_start * cols..(row_start + n) * cols];
            chunks.push(WeightChunk {
                buf: self.create_weight_chunk(part, n, cols, row_stride),
                scales: None,
                row_start,
                rows: n,
            });
            row_start += n;
        }
        GpuWeight {
            shape: shape.to_vec(),
            dtype: WeightDType::F32,
            rows,
            cols,
            row_stride,
            chunks,
        }
    }

    fn weight_data(&self, data: WeightData, shape: &[usize]) -> GpuWeight {
        let (rows, cols) = match shape {
            [r, c] => (*r, *c),
            // Only matrices are kept packed; anything else is widened.
            _ => return self.weight(data.into_f32(), shape),
        };
        match data {
            WeightData::F32(v) => self.weight(v, shape),
            WeightData::F16(bits) if bits.len() == rows * cols => {
                self.weight_f16(&bits, shape, rows, cols)
            }
            WeightData::Quant(q) if q.rows == rows && q.cols == cols && q.check().is_ok() => {
                self.weight_quant(&q, shape)
            }
            other => {
                self.errors().push(format!(
                    "weight of shape {shape:?} given mismatched packed data"
                ));
                self.weight(other.into_f32(), shape)
            }
        }
    }

    fn tensor(&self, data: Vec<f32>, rows: usize, cols: usize) -> GpuTensor {
        let mut data = data;
        if data.len() != rows * cols {
            self.errors().push(format!(
                "tensor [{rows}, {cols}] given {} values",
                data.len()
            ));
            data.resize(rows * cols, 0.0);
        }
        let t = self.alloc(rows, cols);
        self.rec
            .borrow_mut()
            .upload(bytemuck::cast_slice(&data), &t.buffer().buffer);
        t
    }

    fn dims(&self, x: &GpuTensor) -> (usize, usize) {
        (x.rows, x.cols)
    }

    async fn read(&self, x: &GpuTensor) -> Vec<f32> {
        let len = x.len();
        self.bytes_read.set(self.bytes_read.get() + 4 * len as u64);
        if len == 0 {
            return Vec::new();
        }
        let bytes = (len * 4) as u64;
        let staging = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.rec.borrow_mut();
            rec.copy(&x.buffer().buffer, 0, &staging, 0, bytes);
            rec.flush();
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        if let Err(e) = self.dev.device.poll(wgpu::PollType::wait_indefinitely()) {
            self.errors().push(format!("waiting for the device: {e}"));
        }
        let data = match rx.await {
            Ok(Ok(())) => staging
                .get_mapped_range(..)
                .map(|view| bytemuck::cast_slice::<u8, f32>(&view).to_vec()),
            Ok(Err(e)) => {
                self.errors().push(format!("reading a tensor back: {e}"));
                return vec![f32::NAN; len];
            }
            Err(_) => {
                self.errors()
                    .push("reading a tensor back: the device dropped the request");
                return vec![f32::NAN; len];
            }
        };
        staging.unmap();
        match data {
            Ok(v) => v,
            Err(e) => {
                self.errors().push(format!("reading a tensor back: {e}"));
                vec![f32::NAN; len]
            }
        }
    }

    fn top_k(&self, logits: &GpuTensor, k: usize) -> GpuTensor {
        let k = k.clamp(1, crate::backend::MAX_TOP_K);
        let out = self.alloc(logits.rows, 2 * k + 1);
        let params = [logits.rows as u32, logits.cols as u32];
        self.run(
            Kernel::TopK,
            &[("K", k as f64)],
            &params,
            &[logits.buffer(), out.buffer()],
            self.grid(logits.rows),
        );
        out
    }

    fn linear(&self, x: &GpuTensor, w: &GpuWeight, b: Option<&GpuWeight>) -> GpuTensor {
        if w.shape.len() != 2 || w.cols != x.cols || b.is_some_and(|b| b.cols != w.rows) {
            let msg = format!("x [{}, {}] with weight {:?}", x.rows, x.cols, w.shape);
            return self.shape_error("linear", msg, x.rows, w.rows);
        }
        let out = self.alloc(x.rows, w.rows);
        if x.rows == 0 {
            return out;
        }
        let bias = b.and_then(GpuWeight::first);
        for chunk in &w.chunks {
            self.linear_chunk(x, w, chunk, bias, &out);
        }
        out
    }

    fn layer_norm(&self, x: &GpuTensor, w: &GpuWeight, b: &GpuWeight, eps: f32) -> GpuTensor {
        if w.cols != x.cols || b.cols != x.cols {
            return self.shape_error(
                "layer_norm",
                format!("width {} with weight {:?}", x.cols, w.shape),
                x.rows,
                x.cols,
            );
        }
        let out = self.alloc(x.rows, x.cols);
        let (Some(wb), Some(bb)) = (w.first(), b.first()) else {
            return out;
        };
        let params = [x.rows as u32, x.cols as u32, eps.to_bits()];
        self.run(
            Kernel::LayerNorm,
            &[],
            &params,
            &[x.buffer(), wb, bb, out.buffer()],
            self.grid(x.rows),
        );
        out
    }

    fn rms_norm(&self, x: &GpuTensor, w: &GpuWeight, eps: f32) -> GpuTensor {
        if w.cols != x.cols {
            return self.shape_error(
                "rms_norm",
                format!("width {} with weight {:?}", x.cols, w.shape),
                x.rows,
                x.cols,
            );
        }
        let out = self.alloc(x.rows, x.cols);
        let Some(wb) = w.first() else { return out };
        let params = [x.rows as u32, x.cols as u32, eps.to_bits()];
        self.run(
            Kernel::RmsNorm,
            &[],
            &params,
            &[x.buffer(), wb, out.buffer()],
            self.grid(x.rows),
        );
        out
    }

    fn activate(&self, x: &GpuTensor, act: Activation) -> GpuTensor {
        let out = self.alloc(x.rows, x.cols);
        let params = [x.len() as u32];
        let grid = self.elementwise_grid(x.len());
        self.run(
            Kernel::Activation,
            &[("ACT", act_id(act))],
            &params,
            &[x.buffer(), out.buffer()],
            grid,
        );
        out
    }

    fn gated(&self, gate: &GpuTensor, up: &GpuTensor, act: Activation) -> GpuTensor {
        if (gate.rows, gate.cols) != (up.rows, up.cols) {
            let msg = format!(
                "gate [{}, {}] vs up [{}, {}]",
                gate.rows, gate.cols, up.rows, up.cols
            );
            return self.shape_error("gated", msg, gate.rows, gate.cols);
        }
        let out = self.alloc(gate.rows, gate.cols);
        let params = [gate.len() as u32];
        let grid = self.elementwise_grid(gate.len());
        let bufs = [gate.buffer(), up.buffer(), out.buffer()];
        self.run(Kernel::Gated, &[("ACT", act_id(act))], &params, &bufs, grid);
        out
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        if (a.rows, a.cols) != (b.rows, b.cols) {
            return self.shape_error(
                "add",
                format!("[{}, {}] + [{}, {}]", a.rows, a.cols, b.rows, b.cols),
                a.rows,
                a.cols,
            );
        }
        let out = self.alloc(a.rows, a.cols);
        let params = [a.rows as u32, a.cols as u32, a.cols as u32];
        let grid = self.elementwise_grid(a.len());
        self.run(
            Kernel::Add,
            &[],
            &params,
            &[a.buffer(), b.buffer(), out.buffer()],
            grid,
        );
        out
    }

    fn add_weight(&self, x: &GpuTensor, w: &GpuWeight) -> GpuTensor {
        let fits = w.chunks.len() == 1
            && w.cols == x.cols
            && (w.rows == x.rows || (w.rows == 1 && x.rows <= 1));
        let Some(wb) = w.first().filter(|_| fits) else {
            let msg = format!("x [{}, {}] + weight {:?}", x.rows, x.cols, w.shape);
            return self.shape_error("add_weight", msg, x.rows, x.cols);
        };
        let out = self.alloc(x.rows, x.cols);
        let params = [x.rows as u32, x.cols as u32, w.row_stride as u32];
        let grid = self.elementwise_grid(x.len());
        self.run(
            Kernel::Add,
            &[],
            &params,
            &[x.buffer(), wb, out.buffer()],
            grid,
        );
        out
    }

    fn embed(&self, table: &GpuWeight, ids: &[u32]) -> GpuTensor {
        let dim = table.cols;
        let out = self.alloc(ids.len(), dim);
        if table.dtype != WeightDType::F32 {
            self.errors().push(format!(
                "embed: a {:?} table (only f32 tables are gathered)",
                table.dtype
            ));
            return out;
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            self.errors().push(format!(
                "embed: id {bad} outside a table of {} rows",
                table.rows
            ));
        }
        if ids.is_empty() {
            return out;
        }
        let id_buf = self.upload_pod(ids);
        let grid = self.elementwise_grid(ids.len() * dim);
        for c in &table.chunks {
            let params = [
                ids.len() as u32,
                dim as u32,
                table.row_stride as u32,
                c.row_start as u32,
                c.rows as u32,
            ];
            self.run(
                Kernel::Embed,
                &[],
                &params,
                &[id_buf.get(), &c.buf, out.buffer()],
                grid,
            );
        }
        out
    }

    fn prepend_row(&self, x: &GpuTensor, row: &GpuWeight) -> GpuTensor {
        let Some(rb) = row.first().filter(|_| row.rows == 1 && row.cols == x.cols) else {
            let msg = format!("x [{}, {}] after row {:?}", x.rows, x.cols, row.shape);
            return self.shape_error("prepend_row", msg, x.rows + 1, x.cols);
        };
        let out = self.alloc(x.rows + 1, x.cols);
        self.copy(rb, 0, out.buffer(), 0, x.cols * 4);
        self.copy(x.buffer(), 0, out.buffer(), x.cols * 4, x.len() * 4);
        out
    }

    fn slice_rows(&self, x: &GpuTensor, start: usize, end: usize) -> GpuTensor {
        if start > end || end > x.rows {
            return self.shape_error(
                "slice_rows",
                format!("rows {start}..{end} of {}", x.rows),
                end.saturating_sub(start),
                x.cols,
            );
        }
        let out = self.alloc(end - start, x.cols);
        self.copy(
            x.buffer(),
            start * x.cols * 4,
            out.buffer(),
            0,
            out.len() * 4,
        );
        out
    }

    fn concat_cols(&self, parts: &[&GpuTensor]) -> GpuTensor {
        let rows = parts.first().map_or(0, |p| p.rows);
        let cols: usize = parts.iter().map(|p| p.cols).sum();
        if parts.iter().any(|p| p.rows != rows) {
            return self.shape_error(
                "concat_cols",
                "parts with different row counts".into(),
                rows,
                cols,
            );
        }
        let out = self.alloc(rows, cols);
        let mut col = 0;
        for p in parts {
            let params = [
                rows as u32,
                p.cols as u32,
                p.cols as u32,
                0,
                cols as u32,
                col as u32,
                0,
            ];
            let bufs = [p.buffer(), &self.dummy, out.buffer()];
            self.run(
                Kernel::RowsCopy,
                &[("INDEXED", 0.0)],
                &params,
                &bufs,
                self.elementwise_grid(p.len()),
            );
            col += p.cols;
        }
        out
    }

    fn scatter_rows(&self, dst: &GpuTensor, rows: &[usize], src: &GpuTensor) -> GpuTensor {
        if rows.len() != src.rows || src.cols != dst.cols || rows.iter().any(|&r| r >= dst.rows) {
            let msg = format!(
                "{} rows of [{}, {}] into [{}, {}]",
                rows.len(),
                src.rows,
                src.cols,
                dst.rows,
                dst.cols
            );
            return self.shape_error("scatter_rows", msg, dst.rows, dst.cols);
        }
        let out = self.alloc(dst.rows, dst.cols);
        self.copy(dst.buffer(), 0, out.buffer(), 0, dst.len() * 4);
        if rows.is_empty() {
            return out;
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx_buf = self.upload_pod(&idx);
        let params = [
            src.rows as u32,
            src.cols as u32,
            src.cols as u32,
            0,
            dst.cols as u32,
            0,
            0,
        ];
        let bufs = [src.buffer(), idx_buf.get(), out.buffer()];
        self.run(
            Kernel::RowsCopy,
            &[("INDEXED", 1.0)],
            &params,
            &bufs,
            self.elementwise_grid(src.len()),
        );
        out
    }

    fn rope(
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

    fn attention(&self, q: &GpuTensor, k: &GpuTensor, v: &GpuTensor, heads: Heads) -> GpuTensor {
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

    fn new_cache(&self, layers: usize, kv_dim: usize, capacity: usize) -> GpuCache {
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

    fn cached_attention(
        &self,
        cache: &mut GpuCache,
        layer: usize,
        start: usize,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        mask: &AttnMask,
        heads: Heads,
    ) -> GpuTensor {
        let n = q.rows;
        let width = heads.q_heads * heads.head_dim;
        let kv_ok = [k, v].iter().all(|t| t.rows == n && t.cols == cache.kv_dim);
        let mask_ok = match mask {
            AttnMask::Causal => true,
            AttnMask::Tree {
                ctx,
                n: mn,
                allowed,
            } => *mn == n && *ctx <= start && allowed.len() == n * (ctx + n),
        };
        if layer >= cache.k.len()
            || q.cols != width
            || cache.kv_dim != heads.kv_heads * heads.head_dim
            || !kv_ok
            || !mask_ok
            || !self.check_heads("cached_attention", heads)
        {
            let msg = format!(
                "layer {layer}, q [{}, {}], k [{}, {}], {heads:?}",
                q.rows, q.cols, k.rows, k.cols
            );
            return self.shape_error("cached_attention", msg, n, width);
        }
        self.grow_cache(cache, start + n);
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let params = [n as u32, cache.kv_dim as u32, start as u32];
        let bufs = [k.buffer(), v.buffer(), kc, vc];
        self.run(
            Kernel::KvWrite,
            &[],
            &params,
            &bufs,
            self.elementwise_grid(n * cache.kv_dim),
        );

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
        self.dispatch_attention(n, heads, causal, &params, &bufs);
        out
    }

    fn compact_cache(&self, cache: &mut GpuCache, from: &[usize], to_start: usize) {
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
