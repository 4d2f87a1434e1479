//! Matmul dispatch: which kernel shape (`matmul_{vec,small,tiled}`) and dtype variant `linear`
//! uses for a weight chunk, with its parameters and grid.

use super::pipelines::Kernel;
use super::pool::GpuBuf;
use super::{GpuBackend, GpuTensor, GpuWeight, WeightChunk, WeightDType};

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

impl GpuBackend {
    /// Whether `m` rows of x against a packed (`f16`, `q8`, `q4`) weight run as `m` mat-vecs.
    ///
    /// On CPU Vulkan/WebGPU drivers (lavapipe, SwiftShader) the batched kernels for packed weights
    /// cost about 3x as much per row as the mat-vec (`bench-kernels --filter q4 --rows 1,16`:
    /// 16 rows in 366 ms against 7 ms for one), so a prompt or a tree there is faster row by row;
    /// and each row's logits then come from exactly the one-row kernel (batch-invariant).
    /// Needs x rows of whole vec4s (`k % 4 == 0`, true of every LLaVA width).
    pub fn rows_as_vec(&self, m: usize, k: usize, dtype: WeightDType) -> bool {
        self.dev.cpu && m > 1 && m <= SMALL_ROWS && dtype != WeightDType::F32 && k.is_multiple_of(4)
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
    /// `x W^T + b` over one weight chunk, written at its output columns.
    pub(super) fn linear_chunk(
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
        if shape == MatmulShape::Vec || self.rows_as_vec(m, k, w.dtype) {
            let mut params = vec![n as u32, k as u32, k4, out_stride, col_offset];
            if quant {
                params.push(nb);
            }
            // `x_row`: which row of x (and out) the dispatch computes.
            let x_row = params.len();
            params.push(0);
            for row in 0..m {
                params[x_row] = row as u32;
                self.run(
                    vec,
                    &consts,
                    &params,
                    &bufs,
                    self.grid(n.div_ceil(VEC_ROWS_PER_WORKGROUP)),
                );
            }
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
}
