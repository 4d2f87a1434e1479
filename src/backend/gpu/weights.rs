//! Weights on the device: [`GpuWeight`] and its [`WeightDType`], and the uploads that turn f32,
//! f16 and quantized ([`WeightData`]) matrices into storage buffers, split by rows into chunks of
//! at most one storage binding (`EngineLimits::max_chunk`).

use crate::quant::WeightData;

use super::pool::GpuBuf;
use super::GpuBackend;

/// How a weight's elements are stored; each has its own matmul kernels (`matmul_*_{f32,f16,q8,q4}`).
/// Only matrices used by `linear` are ever stored as anything but f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    /// Plain f32, each row zero-padded to a multiple of 4 floats so matmuls read whole vec4s.
    F32,
    /// f16 packed two per u32, each row zero-padded to a multiple of 4 halves.
    F16,
    /// q8 blocks (`crate::quant`): int8 codes, 8 u32 words per block of 32, planar f16 scales in
    /// a second buffer per chunk.
    Q8,
    /// q4 blocks (`crate::quant`): nibble codes, 4 u32 words per block of 32, planar f16 scales in
    /// a second buffer per chunk.
    Q4,
}

/// Rows `row_start..row_start + rows` of a weight, in one buffer (one storage binding).
#[derive(Debug)]
pub(super) struct WeightChunk {
    pub(super) buf: GpuBuf,
    /// The chunk's f16 scales, two per u32 (q8 / q4 only).
    pub(super) scales: Option<GpuBuf>,
    pub(super) row_start: usize,
    pub(super) rows: usize,
}

/// A constant uploaded once: a matrix `[rows, cols]` (`shape[0]`, product of the rest) or a vector
/// (`rows == 1`). Matrices bigger than one storage binding are split by rows into chunks.
#[derive(Debug)]
pub struct GpuWeight {
    pub(super) shape: Vec<usize>,
    pub(super) dtype: WeightDType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// From one row to the next in a chunk: f32: floats (`cols` rounded up to a multiple of 4);
    /// f16: halves (likewise); q8 / q4: u32 code words (8 or 4 per block of 32 columns).
    pub(super) row_stride: usize,
    pub(super) chunks: Vec<WeightChunk>,
}

impl GpuWeight {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }
    /// Number of row chunks (1 unless the weight exceeds one storage binding).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }
    /// The first chunk of an f32 weight (vectors and tables; other dtypes are matmul-only).
    pub(super) fn first(&self) -> Option<&GpuBuf> {
        self.chunks
            .first()
            .filter(|_| self.dtype == WeightDType::F32)
            .map(|c| &c.buf)
    }
}

impl GpuBackend {
    /// Bytes of weight buffers uploaded so far by this backend (padding included; buffers of
    /// dropped models still count).
    pub fn weight_bytes_uploaded(&self) -> u64 {
        self.weight_bytes.get()
    }

    fn create_weight_chunk(&self, data: &[f32], rows: usize, cols: usize, stride: usize) -> GpuBuf {
        let bytes = (rows * stride * 4).max(16);
        if stride == cols {
            return self.upload_bytes(bytemuck::cast_slice(data), bytes);
        }
        let mut padded = vec![0f32; bytes / 4];
        for (dst, src) in padded.chunks_mut(stride).zip(data.chunks(cols)) {
            dst[..cols].copy_from_slice(src);
        }
        self.upload_bytes(bytemuck::cast_slice(&padded), bytes)
    }

    /// A weight buffer holding `bytes` (zero-padded to a whole number of 16-byte vec4s).
    fn create_weight_bytes(&self, bytes: &[u8]) -> GpuBuf {
        self.upload_bytes(bytes, bytes.len().next_multiple_of(16).max(16))
    }

    /// A storage buffer of `size` bytes starting with `data`, the rest zero.
    ///
    /// Natively the buffer is mapped at creation and filled in place. In the browser a mapped
    /// range is a copy in the wasm heap (wgpu's web backend), which for a 7B model's embeddings
    /// would double hundreds of MiB the tab cannot spare: there the bytes go through
    /// `queue.write_buffer` straight from `data` (WebGPU buffers start zeroed), and the queue is
    /// flushed so the browser's staging does not pile up over a whole model.
    fn upload_bytes(&self, data: &[u8], size: usize) -> GpuBuf {
        self.weight_bytes.set(self.weight_bytes.get() + size as u64);
        #[cfg(not(target_arch = "wasm32"))]
        let buffer = {
            let buffer = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("weight"),
                size: size as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            if let Ok(mut view) = buffer.get_mapped_range_mut(..) {
                view.slice(..data.len()).copy_from_slice(data);
                view.slice(data.len()..).fill(0);
            }
            buffer.unmap();
            buffer
        };
        #[cfg(target_arch = "wasm32")]
        let buffer = {
            let buffer = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("weight"),
                size: size as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            // write_buffer wants a multiple of 4 bytes; the last few go padded.
            let whole = data.len() / 4 * 4;
            if whole > 0 {
                self.dev.queue.write_buffer(&buffer, 0, &data[..whole]);
            }
            if whole < data.len() {
                let mut tail = [0u8; 4];
                tail[..data.len() - whole].copy_from_slice(&data[whole..]);
                self.dev.queue.write_buffer(&buffer, whole as u64, &tail);
            }
            self.dev.queue.submit([]);
            buffer
        };
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

    /// [`Backend::weight`](crate::backend::Backend::weight): f32, rows vec4-aligned for matrices.
    pub(super) fn upload_weight(&self, data: Vec<f32>, shape: &[usize]) -> GpuWeight {
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

    /// [`Backend::weight_data`](crate::backend::Backend::weight_data): matrices stay packed (f16, q8, q4).
    pub(super) fn upload_weight_data(&self, data: WeightData, shape: &[usize]) -> GpuWeight {
        let (rows, cols) = match shape {
            [r, c] => (*r, *c),
            // Only matrices are kept packed; anything else is widened.
            _ => return self.upload_weight(data.into_f32(), shape),
        };
        match data {
            WeightData::F32(v) => self.upload_weight(v, shape),
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
                self.upload_weight(other.into_f32(), shape)
            }
        }
    }
}
