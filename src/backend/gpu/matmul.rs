//! Matmul dispatch: which kernel shape (`matmul_{vec,small,tiled}`) and weight format `linear`
//! uses for a weight chunk, with its parameters and grid.
//!
//! `matmul_vec` (one algorithm, `shaders/matmul_vec.wgsl`, with the weight format as a loader
//! snippet) serves every batch up to 64 rows and is batch-invariant: what speculative
//! verification needs to be exact (the same reduction order per output as a one-token pass, the
//! way batch-invariant kernels make LLM inference deterministic).

use super::pipelines::Kernel;
use super::pool::GpuBuf;
use super::{GpuBackend, GpuTensor, GpuWeight, WeightChunk, WeightDType};

/// Outputs per workgroup of `matmul_vec` (RPW in the shader).
const VEC_ROWS_PER_WORKGROUP: usize = 32;

/// Rows of x up to which the batch-invariant `matmul_vec` is used (speculation trees, short
/// prompts); above, `matmul_small` (f32 on CPU drivers) or `matmul_tiled`.
const VEC_ROWS: usize = 64;

/// Rows of x `matmul_vec` holds in registers per pass over the weights (XR; MAX_XR in the shader).
const VEC_X_ROWS: usize = 4;

/// Rows of x and weight rows (output columns) per invocation of `matmul_small_f32` (TR, TC).
const SMALL_F32_TILE: (usize, usize) = (4, 8);
/// Largest workgroup of `matmul_small_f32` (WG).
const SMALL_F32_WG: usize = 32;

/// The three matmul kernel shapes (`shaders/matmul_vec.wgsl` with a weight-format snippet,
/// `shaders/matmul_small_f32.wgsl`, `shaders/matmul_tiled_*.wgsl`).
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
    ///
    /// Up to 64 rows (every speculation tree) it is the batch-invariant mat-vec, so a verified
    /// node's logits are bit for bit those of a one-token pass, on every device and weight format
    /// (exactness first: on lavapipe the f32 batch costs about what `matmul_small` did, see the
    /// README's kernel table). Prefill-sized batches use the faster GEMMs.
    pub fn matmul_shape(&self, m: usize, dtype: WeightDType) -> MatmulShape {
        if m <= VEC_ROWS {
            MatmulShape::Vec
        } else if self.dev.cpu && dtype == WeightDType::F32 {
            // On CPU drivers the lane-per-tile kernel beats the workgroup-memory GEMM at any m
            // (4x at 75 rows on lavapipe); the grid's z covers the row tiles.
            MatmulShape::Small
        } else {
            MatmulShape::Tiled
        }
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl GpuBackend {
    /// `x W^T + b` over one weight chunk, written at its output columns (added to what `out`
    /// holds there when `accumulate`: the mat-vec only).
    pub(super) fn linear_chunk(
        &self,
        x: &GpuTensor,
        w: &GpuWeight,
        chunk: &WeightChunk,
        bias: Option<&GpuBuf>,
        out: &GpuTensor,
        accumulate: bool,
    ) {
        let (m, k) = (x.rows, x.cols);
        let n = chunk.rows;
        let consts = [("HAS_BIAS", flag(bias.is_some()))];
        let bias = bias.unwrap_or(&self.dummy);
        let (vec, tiled) = match w.dtype {
            WeightDType::F32 => (Kernel::MatmulVec, Kernel::MatmulTiled),
            WeightDType::F16 => (Kernel::MatmulVecF16, Kernel::MatmulTiledF16),
            WeightDType::Q8 => (Kernel::MatmulVecQ8, Kernel::MatmulTiledQ8),
            WeightDType::Q4 => (Kernel::MatmulVecQ4, Kernel::MatmulTiledQ4),
        };
        // Quantized kernels bind the chunk's scales after its codes and take the blocks per row
        // as their last parameter; the f32 / f16 GEMMs take neither (the mat-vec binds a dummy).
        let quant = matches!(w.dtype, WeightDType::Q8 | WeightDType::Q4);
        let scales = chunk.scales.as_ref().unwrap_or(&self.dummy);
        let nb = w.cols.div_ceil(crate::quant::GROUP) as u32;
        let (out_stride, col_offset) = (out.cols as u32, chunk.row_start as u32);
        // Per weight row: f32 vec4s / f16 vec2<u32>s (stride / 4), or q8 / q4 code words.
        let steps = if quant {
            w.row_stride as u32
        } else {
            (w.row_stride / 4) as u32
        };
        let shape = self.matmul_shape(m, w.dtype);
        if shape == MatmulShape::Vec {
            let x_rows = m.min(VEC_X_ROWS);
            // GPUs: every row in one workgroup (weights once from memory); CPU drivers: one
            // pass of x_rows per workgroup (no loop around the barrier, more parallel work).
            let chunks = if self.dev.cpu { 1 } else { m.div_ceil(x_rows) };
            let consts = [
                consts[0],
                ("XR", x_rows as f64),
                ("CHUNKS", chunks as f64),
                ("ACCUMULATE", flag(accumulate)),
            ];
            let params = [
                m as u32, n as u32, k as u32, steps, out_stride, col_offset, nb, 0,
            ];
            let bufs = [x.buffer(), &chunk.buf, scales, bias, out.buffer()];
            let mut grid = self.grid(n.div_ceil(VEC_ROWS_PER_WORKGROUP));
            grid[2] = m.div_ceil(x_rows * chunks) as u32;
            self.run(vec, &consts, &params, &bufs, grid);
            return;
        }
        let mut bufs = vec![x.buffer(), &chunk.buf];
        if quant {
            bufs.push(scales);
        }
        bufs.extend([bias, out.buffer()]);
        if shape == MatmulShape::Small {
            // f32 only: SMALL_F32_WG lanes a workgroup, each a tile of SMALL_F32_TILE rows x
            // columns.
            let (tile_rows, tile_cols) = SMALL_F32_TILE;
            let lanes = n.div_ceil(tile_cols);
            let wg = SMALL_F32_WG.min(lanes.next_power_of_two().max(8));
            let consts = [consts[0], ("WG", wg as f64)];
            let col_groups = lanes.div_ceil(wg);
            let mut grid = self.grid(col_groups);
            grid[2] = m.div_ceil(tile_rows) as u32;
            let params = [
                m as u32,
                n as u32,
                k as u32,
                steps,
                out_stride,
                col_offset,
                col_groups as u32,
            ];
            self.run(Kernel::MatmulSmall, &consts, &params, &bufs, grid);
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
}
