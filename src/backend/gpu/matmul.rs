//! Matmul dispatch: which kernel shape (`matmul_{vec,small,tiled}`) and weight format `linear`
//! uses for a weight chunk, with its parameters and grid.
//!
//! Every matmul algorithm takes the weight format as a loader snippet (`shaders/weights_*.wgsl`).
//! The two that serve speculation trees are batch-invariant: each output is summed in one order
//! whatever the batch, so a verified node's logits are bit for bit those of a one-token pass (the way
//! batch-invariant kernels make LLM inference deterministic). GPUs run `matmul_vec` (k split over
//! 32 lanes, reduced in workgroup memory) up to 64 rows and `matmul_tiled` above (prefill); CPU
//! drivers run `matmul_small` (a register tile per lane, whole dot products) at every m.

use super::ops::act_id;
use super::pipelines::Kernel;
use super::pool::GpuBuf;
use super::{GpuBackend, GpuTensor, GpuWeight, WeightChunk, WeightDType};
use crate::config::Activation;

/// Outputs per workgroup of `matmul_vec` (RPW in the shader).
const VEC_ROWS_PER_WORKGROUP: usize = 32;

/// Rows of x up to which GPUs use `matmul_vec` (speculation trees, short prompts); above,
/// `matmul_tiled`.
const VEC_ROWS: usize = 64;

/// Rows of x `matmul_vec` holds in registers per pass over the weights (XR; MAX_XR in the shader).
const VEC_X_ROWS: usize = 4;

/// Rows of x and weight rows (output columns) per invocation of `matmul_small` (MAX_TR, TC).
const SMALL_TILE: (usize, usize) = (4, 8);
/// Largest and smallest workgroup of `matmul_small` (WG): lanes of one SIMD thread on a CPU
/// driver; smaller when there are few columns, so that every core gets a workgroup.
const SMALL_WG: (usize, usize) = (32, 8);

/// The three matmul kernel shapes (`shaders/matmul_{vec,small,tiled}.wgsl`, each with a
/// weight-format snippet).
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
    /// The kernel shape `linear` uses for `m` rows of x on this device.
    ///
    /// CPU drivers: `matmul_small` at every m (it beats the workgroup-memory GEMM at any m: 4x
    /// at 75 rows on lavapipe, and the k-split mat-vec's reduction at small k). GPUs: the
    /// mat-vec up to 64 rows (every speculation tree), the tiled GEMM above.
    pub fn matmul_shape(&self, m: usize) -> MatmulShape {
        if self.dev.cpu {
            MatmulShape::Small
        } else if m <= VEC_ROWS {
            MatmulShape::Vec
        } else {
            MatmulShape::Tiled
        }
    }
}

/// What a batch-invariant matmul does with each output sum `y` (`matmul_vec`, `matmul_small`;
/// the tiled GEMM only stores).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Epilogue {
    /// `out = y`.
    Store,
    /// `out = out + y`: the residual add fused in.
    Accumulate,
    /// The weight is a stacked gate/up projection `[gate; up]` and `out[i, j] = act(gate) * up`
    /// (the gated kernel fused in; `out` has half the weight's rows as columns). Single-chunk
    /// weights only: a column's gate and up rows are in one binding.
    Gated(Activation),
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl GpuBackend {
    /// `x W^T + b` over one weight chunk, written at its output columns as `epilogue` says
    /// (anything but [`Epilogue::Store`]: `matmul_vec` and `matmul_small` only). With `norm` (an
    /// RMSNorm weight and epsilon; `matmul_vec` only), x is normalised as it is read.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_chunk(
        &self,
        x: &GpuTensor,
        w: &GpuWeight,
        chunk: &WeightChunk,
        bias: Option<&GpuBuf>,
        out: &GpuTensor,
        epilogue: Epilogue,
        norm: Option<(&GpuBuf, f32)>,
    ) {
        let (m, k) = (x.rows, x.cols);
        let n = chunk.rows;
        let (accumulate, gated, act) = match epilogue {
            Epilogue::Store => (false, false, 0.0),
            Epilogue::Accumulate => (true, false, 0.0),
            Epilogue::Gated(act) => (false, true, act_id(act)),
        };
        let consts = [
            ("HAS_BIAS", flag(bias.is_some())),
            ("NORM", flag(norm.is_some())),
        ];
        // Only a gated pipeline takes the activation (fewer pipeline variants).
        let gating = [("GATED", 1.0), ("ACT", act)];
        let gating = if gated { &gating[..] } else { &[] };
        let bias = bias.unwrap_or(&self.dummy);
        let (norm_w, eps) = norm.unwrap_or((&self.dummy, 0.0));
        use Kernel::*;
        let (vec, small, tiled) = match w.dtype {
            WeightDType::F32 => (MatmulVec, MatmulSmall, MatmulTiled),
            WeightDType::F16 => (MatmulVecF16, MatmulSmallF16, MatmulTiledF16),
            WeightDType::Q8 => (MatmulVecQ8, MatmulSmallQ8, MatmulTiledQ8),
            WeightDType::Q4 => (MatmulVecQ4, MatmulSmallQ4, MatmulTiledQ4),
        };
        // Block formats bind the chunk's scales after its codes and take the blocks per row; f32
        // and f16 bind a dummy there.
        let quant = matches!(w.dtype, WeightDType::Q8 | WeightDType::Q4);
        let scales = chunk.scales.as_ref().unwrap_or(&self.dummy);
        let nb = w.cols.div_ceil(crate::quant::GROUP) as u32;
        let (out_stride, col_offset) = (out.cols as u32, chunk.row_start as u32);
        // The loader snippets' steps per weight row: f32 vec4s / f16 vec2<u32>s (stride / 4), or
        // q8 / q4 blocks.
        let steps = if quant { nb } else { (w.row_stride / 4) as u32 };
        // Params of every algorithm (`shaders/matmul_io.wgsl`); the last is matmul_small's.
        let params = |col_groups: u32| {
            let (m, n, k) = (m as u32, n as u32, k as u32);
            [
                m,
                n,
                k,
                steps,
                out_stride,
                col_offset,
                nb,
                col_groups,
                eps.to_bits(),
            ]
        };
        let aligned = ("K_ALIGNED", flag(k.is_multiple_of(4)));
        let shape = self.matmul_shape(m);
        let bufs = [x.buffer(), &chunk.buf, scales, bias, out.buffer(), norm_w];
        if shape == MatmulShape::Vec {
            let x_rows = if m == 1 { 1 } else { VEC_X_ROWS };
            // Every row in one workgroup: the weight block comes from memory once.
            let chunks = m.div_ceil(x_rows);
            let consts = [
                &[
                    consts[0],
                    consts[1],
                    ("XR", x_rows as f64),
                    ("CHUNKS", chunks as f64),
                    ("ACCUMULATE", flag(accumulate)),
                    aligned,
                ],
                gating,
            ]
            .concat();
            // One workgroup row (z = 0): the chunks cover every row of x.
            // A gated block is RPW / 2 output columns and their up rows: n / RPW blocks either
            // way (n = 2 * half).
            let grid = self.grid(n.div_ceil(VEC_ROWS_PER_WORKGROUP));
            self.run(vec, &consts, &params(0), &bufs, grid);
        } else if shape == MatmulShape::Small {
            // WG lanes a workgroup, each a tile of tile_rows rows of x by TC columns; fewer lanes
            // a workgroup when that leaves a core without one.
            // One row alone, or tiles of 4 (fewer pipelines to compile than one per m).
            let tile_rows = if m == 1 { 1 } else { SMALL_TILE.0 };
            // A gated lane's tile is TC / 2 output columns (their gate and up rows).
            let lanes = if gated {
                (n / 2).div_ceil(SMALL_TILE.1 / 2)
            } else {
                n.div_ceil(SMALL_TILE.1)
            };
            let (max_wg, min_wg) = SMALL_WG;
            let mut wg = max_wg;
            while wg > min_wg && lanes.div_ceil(wg) < 4 {
                wg /= 2;
            }
            let col_groups = lanes.div_ceil(wg);
            let consts = [
                &[
                    consts[0],
                    consts[1],
                    ("WG", wg as f64),
                    ("TR", tile_rows as f64),
                    ("ACCUMULATE", flag(accumulate)),
                    aligned,
                ],
                gating,
            ]
            .concat();
            let mut grid = self.grid(col_groups);
            grid[2] = m.div_ceil(tile_rows) as u32;
            self.run(small, &consts, &params(col_groups as u32), &bufs, grid);
        } else {
            let consts = [consts[0], aligned];
            let grid = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1];
            self.run(tiled, &consts, &params(0), &bufs, grid);
        }
    }
}
