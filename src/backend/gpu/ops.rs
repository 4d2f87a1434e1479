//! The [`Backend`] ops on the GPU: host-side shapes, parameters and dispatch sizes for each kernel.
//! Numerics follow the CPU reference (src/backend/cpu.rs); where the two differ it is only in the
//! order of floating-point sums.
//!
//! Weight uploads live in `weights`, matmul dispatch in `matmul`, rope, masks, the KV cache and
//! attention in `attention`; the trait methods for those delegate there.

use crate::backend::{AttnMask, Backend, CacheStep, Heads, Qkv, Rope};
use crate::config::Activation;
use crate::quant::WeightData;

use super::attention::{Attend, QkvIn};
use super::matmul::{Epilogue, MatmulShape};
use super::pipelines::Kernel;
use super::{GpuBackend, GpuCache, GpuTensor, GpuWeight, WeightDType};

/// Whether `linear(rms_norm(x, norm), w, b)` has consistent shapes.
fn norm_linear_fits(x: &GpuTensor, norm: &GpuWeight, w: &GpuWeight, b: Option<&GpuWeight>) -> bool {
    w.shape.len() == 2
        && w.cols == x.cols
        && norm.cols == x.cols
        && b.is_none_or(|b| b.cols == w.rows)
}

pub(super) fn act_id(act: Activation) -> f64 {
    match act {
        Activation::Silu => 0.0,
        Activation::Gelu => 1.0,
        Activation::GeluTanh => 2.0,
        Activation::QuickGelu => 3.0,
        Activation::Relu => 4.0,
    }
}

impl GpuBackend {
    /// Columns `src_col..src_col + dst.cols` (or all of `src` past `src_col`, whichever is
    /// fewer) of every row of `src` into `dst` from column `dst_col`: one strided row copy.
    fn copy_cols(&self, src: &GpuTensor, src_col: usize, dst: &GpuTensor, dst_col: usize) {
        let cols = src
            .cols
            .saturating_sub(src_col)
            .min(dst.cols.saturating_sub(dst_col));
        let params = [
            src.rows as u32,
            cols as u32,
            src.cols as u32,
            src_col as u32,
            dst.cols as u32,
            dst_col as u32,
            0,
        ];
        let bufs = [src.buffer(), &self.dummy, dst.buffer()];
        let grid = self.elementwise_grid(src.rows * cols);
        self.run(Kernel::RowsCopy, &[("INDEXED", 0.0)], &params, &bufs, grid);
    }

    pub(super) fn elementwise_grid(&self, len: usize) -> [u32; 3] {
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

    pub(super) fn shape_error(&self, op: &str, msg: String, rows: usize, cols: usize) -> GpuTensor {
        self.errors().push(format!("{op}: {msg}"));
        self.zeros(rows, cols)
    }
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;
    type Cache = GpuCache;
    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> GpuWeight {
        self.upload_weight(data, shape)
    }

    fn weight_data(&self, data: WeightData, shape: &[usize]) -> GpuWeight {
        self.upload_weight_data(data, shape)
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

    fn stacks_projections(&self) -> bool {
        self.stack_projections
    }

    fn dims(&self, x: &GpuTensor) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn dispatches(&self) -> Option<u64> {
        Some(self.dispatch_count())
    }

    fn submit(&self) {
        self.rec.borrow_mut().flush();
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

    fn top_k_scaled(&self, logits: &GpuTensor, k: usize, scale: f32) -> GpuTensor {
        let k = k.clamp(1, crate::backend::MAX_TOP_K);
        let out = self.alloc(logits.rows, 2 * k + 1);
        let params = [logits.rows as u32, logits.cols as u32, scale.to_bits()];
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
            self.linear_chunk(x, w, chunk, bias, &out, Epilogue::Store, None);
        }
        out
    }

    fn rms_norm_linear(
        &self,
        x: &GpuTensor,
        norm: &GpuWeight,
        eps: f32,
        w: &GpuWeight,
        b: Option<&GpuWeight>,
    ) -> GpuTensor {
        let fits = norm_linear_fits(x, norm, w, b);
        // The mat-vec (GPUs, up to 64 rows) normalises in its prologue, each workgroup summing
        // its rows' squares across its lanes. Elsewhere the norm kernel runs first (it sums in
        // the same order): before the tiled GEMM of a long prompt, and on CPU drivers, where
        // every lane of `matmul_small` would redo the sum (measured slower on lavapipe than the
        // launch it saves).
        let fused = fits && x.rows > 0 && self.matmul_shape(x.rows) == MatmulShape::Vec;
        let Some(norm_w) = norm.first().filter(|_| fused) else {
            return self.linear(&self.rms_norm(x, norm, eps), w, b);
        };
        let out = self.alloc(x.rows, w.rows);
        let bias = b.and_then(GpuWeight::first);
        for chunk in &w.chunks {
            self.linear_chunk(
                x,
                w,
                chunk,
                bias,
                &out,
                Epilogue::Store,
                Some((norm_w, eps)),
            );
        }
        out
    }

    fn rms_norm_gated(
        &self,
        x: &GpuTensor,
        norm: &GpuWeight,
        eps: f32,
        gate_up: &GpuWeight,
        b: Option<&GpuWeight>,
        act: Activation,
    ) -> GpuTensor {
        let w = gate_up;
        let fits = norm_linear_fits(x, norm, w, b) && w.rows.is_multiple_of(2);
        // The batch-invariant kernels end in the activation when a column's gate and up rows
        // share one binding (a single chunk: every demo and 7B/13B gate/up in q4/q8; f16 at
        // 7B splits and takes the separate gated kernel). The mat-vec also normalises in its
        // prologue; on CPU drivers the norm kernel runs first (see `rms_norm_linear`).
        let shape = self.matmul_shape(x.rows);
        let fused = fits && x.rows > 0 && shape != MatmulShape::Tiled;
        let (true, [chunk], Some(norm_w)) = (fused, w.chunks.as_slice(), norm.first()) else {
            return self.gated_stacked(&self.rms_norm_linear(x, norm, eps, w, b), act);
        };
        let out = self.alloc(x.rows, w.rows / 2);
        let bias = b.and_then(GpuWeight::first);
        if shape == MatmulShape::Vec {
            let norm = Some((norm_w, eps));
            self.linear_chunk(x, w, chunk, bias, &out, Epilogue::Gated(act), norm);
        } else {
            let xn = self.rms_norm(x, norm, eps);
            self.linear_chunk(&xn, w, chunk, bias, &out, Epilogue::Gated(act), None);
        }
        out
    }

    fn linear_add(
        &self,
        x: &GpuTensor,
        w: &GpuWeight,
        b: Option<&GpuWeight>,
        residual: GpuTensor,
    ) -> GpuTensor {
        let fits = w.shape.len() == 2
            && w.cols == x.cols
            && b.is_none_or(|b| b.cols == w.rows)
            && (residual.rows, residual.cols) == (x.rows, w.rows);
        // The batch-invariant kernels add in their epilogue; the tiled GEMM (prefill-sized
        // batches on GPUs) does not.
        if !fits || x.rows == 0 || self.matmul_shape(x.rows) == MatmulShape::Tiled {
            return self.add(&residual, &self.linear(x, w, b));
        }
        let bias = b.and_then(GpuWeight::first);
        for chunk in &w.chunks {
            self.linear_chunk(x, w, chunk, bias, &residual, Epilogue::Accumulate, None);
        }
        residual
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
        let params = [gate.len() as u32, gate.cols as u32, gate.cols as u32, 0];
        let grid = self.elementwise_grid(gate.len());
        let bufs = [gate.buffer(), up.buffer(), out.buffer()];
        self.run(Kernel::Gated, &[("ACT", act_id(act))], &params, &bufs, grid);
        out
    }

    fn gated_stacked(&self, gate_up: &GpuTensor, act: Activation) -> GpuTensor {
        let (rows, cols) = (gate_up.rows, gate_up.cols / 2);
        if !gate_up.cols.is_multiple_of(2) {
            let msg = format!("gate/up [{rows}, {}]: odd width", gate_up.cols);
            return self.shape_error("gated_stacked", msg, rows, cols);
        }
        // The same kernel as `gated`, reading both halves of each row in place.
        let out = self.alloc(rows, cols);
        let params = [
            (rows * cols) as u32,
            cols as u32,
            gate_up.cols as u32,
            cols as u32,
        ];
        let grid = self.elementwise_grid(rows * cols);
        let bufs = [gate_up.buffer(), gate_up.buffer(), out.buffer()];
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

    fn slice_cols(&self, x: &GpuTensor, start: usize, end: usize) -> GpuTensor {
        if start > end || end > x.cols {
            let msg = format!("columns {start}..{end} of {}", x.cols);
            return self.shape_error("slice_cols", msg, x.rows, end.saturating_sub(start));
        }
        let out = self.alloc(x.rows, end - start);
        self.copy_cols(x, start, &out, 0);
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
            self.copy_cols(p, 0, &out, col);
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
        self.record_rope(x, positions, heads, head_dim, rope)
    }

    fn attention(&self, q: &GpuTensor, k: &GpuTensor, v: &GpuTensor, heads: Heads) -> GpuTensor {
        self.record_attention(q, k, v, heads)
    }

    fn new_cache(&self, layers: usize, kv_dim: usize, capacity: usize) -> GpuCache {
        self.create_cache(layers, kv_dim, capacity)
    }

    fn cached_attention(
        &self,
        cache: &mut GpuCache,
        layer: usize,
        start: usize,
        qkv: Qkv<'_, GpuTensor>,
        mask: &AttnMask,
        heads: Heads,
    ) -> GpuTensor {
        let at = Attend {
            start,
            mask,
            rotate: None,
        };
        self.record_cached_attention(cache, layer, QkvIn::Split(qkv), at, heads)
    }

    fn rope_cached_attention(
        &self,
        cache: &mut GpuCache,
        layer: usize,
        qkv: Qkv<'_, GpuTensor>,
        step: CacheStep<'_>,
        heads: Heads,
    ) -> GpuTensor {
        let at = Attend::rotating(step);
        self.record_cached_attention(cache, layer, QkvIn::Split(qkv), at, heads)
    }

    fn rope_cached_attention_stacked(
        &self,
        cache: &mut GpuCache,
        layer: usize,
        qkv: &GpuTensor,
        step: CacheStep<'_>,
        heads: Heads,
    ) -> GpuTensor {
        let at = Attend::rotating(step);
        self.record_cached_attention(cache, layer, QkvIn::Stacked(qkv), at, heads)
    }

    fn compact_cache(&self, cache: &mut GpuCache, from: &[usize], to_start: usize) {
        self.record_compact_cache(cache, from, to_start)
    }
}
