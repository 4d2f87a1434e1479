//! The WebGPU engine: the [`Backend`](crate::backend::Backend) ops as our own WGSL kernels
//! (shaders/*.wgsl), run through wgpu natively (Vulkan, e.g. Mesa lavapipe) and in the browser
//! (WebGPU).
//!
//! - `device`: adapter/device setup with explicit limits; errors collected from wgpu's callback.
//! - `pool`: recycled activation buffers.
//! - `pipelines`: kernel sources and layouts, pipeline and bind-group caches.
//! - `encoder`: the pending command encoder, uniform and upload arenas, submits.
//! - `weights`: weight uploads (f32, f16, q8 / q4) split over storage bindings; [`WeightDType`].
//! - `matmul`: which matmul kernel `linear` dispatches, with its parameters and grid.
//! - `attention`: rope, tree masks, the KV cache and the attention dispatches.
//! - `ops`: the `Backend` implementation, one function per op (delegating to the three above).
//! - `bench`: kernel timing against a plain copy kernel (`spec-llava bench-kernels`).
//!
//! Ops only record commands; nothing runs until [`Backend::read`](crate::backend::Backend::read)
//! submits the step and awaits `map_async` (natively by polling the device, in the browser by
//! yielding to the event loop; never a blocking wait there). Decoding reads back only what the
//! host decides with: `top_k` rows (argmax, top-k log-probabilities, log-sum-exp;
//! shaders/topk_rows_f32.wgsl), whole logits rows only when sampling.
//!
//! The trait's ops cannot return errors, so shape mismatches and wgpu validation errors are logged
//! and surfaced by [`GpuBackend::take_error`]; a failed read returns NaNs of the expected length.

mod attention;
pub mod bench;
mod device;
mod encoder;
mod matmul;
mod ops;
mod pipelines;
mod pool;
mod weights;

use std::cell::RefCell;
use std::rc::Rc;

pub use device::{DeviceLossHandle, EngineLimits, GpuOptions};
pub use matmul::MatmulShape;
pub use pipelines::{DeviceKernels, Kernel};
pub use weights::{GpuWeight, WeightDType};

use crate::backend::{AttnMask, Heads};
use crate::error::{Error, Result};
use device::{ErrorLog, GpuDevice};
use encoder::Recorder;
use pipelines::{Constant, Pipelines};
use pool::{GpuBuf, Graveyard, Pool, PoolBuf};
use weights::WeightChunk;

/// Activations `[rows, cols]`, row-major f32, in a pooled buffer.
#[derive(Debug)]
pub struct GpuTensor {
    buf: PoolBuf,
    rows: usize,
    cols: usize,
}

impl GpuTensor {
    fn buffer(&self) -> &GpuBuf {
        self.buf.get()
    }
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// Keys and values of every decoder layer: per layer two buffers `[capacity, kv_dim]`, grown
/// (doubling, contents copied) when a forward pass writes past the end.
#[derive(Debug)]
pub struct GpuCache {
    kv_dim: usize,
    capacity: usize,
    k: Vec<GpuBuf>,
    v: Vec<GpuBuf>,
}

impl GpuCache {
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The (cos, sin) table of the last rope call, keyed by what determines it.
struct RopeTable {
    positions: Vec<u32>,
    head_dim: usize,
    theta: u64,
    factor: u64,
    buf: PoolBuf,
}

/// Keys per chunk of split-K attention on GPUs: a 576-token image and its prompt make 5 chunks,
/// so a one-token pass of a 32-head model runs ~160 workgroups instead of 32.
const ATTENTION_CHUNK: usize = 128;

/// Bytes of split-K partials one attention dispatch writes at most, by default.
const SPLIT_PARTIAL_BYTES: usize = 16 << 20;

/// Largest head dim `attention_tree_f32.wgsl` keeps in registers (its `MAX_HD4` * 4).
const MAX_LANE_HEAD_DIM: usize = 128;

/// Per kernel key: dispatches, total ms, fastest ms.
#[cfg(not(target_arch = "wasm32"))]
type ProfileTable = std::collections::BTreeMap<String, (usize, f64, f64)>;

/// The WebGPU executor.
pub struct GpuBackend {
    dev: GpuDevice,
    pool: Rc<RefCell<Pool>>,
    pipelines: RefCell<Pipelines>,
    rec: RefCell<Recorder>,
    graveyard: Graveyard,
    /// Bound where a kernel's optional input is unused (no bias, causal mask, ...).
    dummy: GpuBuf,
    /// Every layer of a forward pass ropes and masks with the same positions and mask: upload once.
    rope_table: RefCell<Option<RopeTable>>,
    mask_bits: RefCell<Option<(AttnMask, PoolBuf)>>,
    /// Bytes copied back to the host so far (decoding reads token ids and top-k, not logits).
    bytes_read: std::cell::Cell<u64>,
    /// Kernel dispatches recorded so far (`Backend::dispatches`).
    dispatches: std::cell::Cell<u64>,
    /// Bytes of weight buffers created so far (with their row padding), never decreased.
    weight_bytes: std::cell::Cell<u64>,
    /// Per-kernel wall time when `SPEC_LLAVA_GPU_PROFILE` is set (native only): every dispatch is
    /// submitted and waited for on its own, so the totals show where a step's time goes.
    #[cfg(not(target_arch = "wasm32"))]
    profile: Option<RefCell<ProfileTable>>,
    /// `Backend::stacks_projections`: every launch has a fixed price, so projections that read
    /// one input run as one matmul (q/k/v: 3 dispatches -> 1, gate/up: 2 -> 1).
    stack_projections: bool,
    /// Keys per chunk of split-K attention (`GpuOptions::attention_chunk`); `None`: never split.
    attention_chunk: Option<usize>,
    /// Bytes of split-K partials one dispatch writes at most (tokens go in slices).
    attention_partial_bytes: usize,
}

impl GpuBackend {
    /// Open the default adapter. Fails when there is none (the caller falls back to the CPU).
    pub async fn new() -> Result<Self> {
        Self::with_options(GpuOptions::default()).await
    }

    pub async fn with_options(opts: GpuOptions) -> Result<Self> {
        let dev = device::open(&opts).await?;
        let graveyard: Graveyard = Rc::default();
        let rec = Recorder::new(
            dev.device.clone(),
            dev.queue.clone(),
            dev.limits.uniform_align,
        );
        let pipelines = Pipelines::new(
            dev.device.clone(),
            dev.kernels,
            dev.limits.max_binding,
            rec.uniform_arena().clone(),
            graveyard.clone(),
        );
        let dummy = GpuBuf::new(
            dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unused binding"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }),
            &graveyard,
        );
        let pool = Pool::new(dev.device.clone(), graveyard.clone());
        let default_chunk = if dev.cpu { 0 } else { ATTENTION_CHUNK };
        let chunk = opts
            .attention_chunk
            .or_else(device::attention_chunk_from_env)
            .unwrap_or(default_chunk);
        let attention_chunk = Some(chunk).filter(|&c| c > 0);
        let backend = GpuBackend {
            dev,
            pool,
            pipelines: RefCell::new(pipelines),
            rec: RefCell::new(rec),
            graveyard,
            dummy,
            rope_table: RefCell::new(None),
            mask_bits: RefCell::new(None),
            bytes_read: std::cell::Cell::new(0),
            dispatches: std::cell::Cell::new(0),
            weight_bytes: std::cell::Cell::new(0),
            #[cfg(not(target_arch = "wasm32"))]
            profile: std::env::var_os("SPEC_LLAVA_GPU_PROFILE").map(|_| RefCell::default()),
            stack_projections: !opts.separate_projections,
            attention_chunk,
            attention_partial_bytes: opts.attention_partial_bytes.unwrap_or(SPLIT_PARTIAL_BYTES),
        };
        match backend.take_error() {
            Some(e) => Err(e),
            None => Ok(backend),
        }
    }

    /// The optional WebGPU features this device's kernels use.
    pub fn device_kernels(&self) -> DeviceKernels {
        self.dev.kernels
    }

    /// The adapter: name, API backend, device type, driver; and the optional features the
    /// kernels use (`[shader-f16]`, `[subgroups]`, `[int8 dot]`).
    pub fn adapter_info(&self) -> String {
        let k = self.dev.kernels;
        let mut info = self.dev.info.clone();
        for (used, name) in [
            (k.native_f16, " [shader-f16]"),
            (k.subgroups, " [subgroups]"),
            (k.int8_dot, " [int8 dot]"),
        ] {
            if used {
                info += name;
            }
        }
        info
    }

    /// Whether the kernels chosen for CPU drivers (lavapipe, SwiftShader) are in use.
    pub fn cpu_kernels(&self) -> bool {
        self.dev.cpu
    }

    pub fn limits(&self) -> EngineLimits {
        self.dev.limits
    }

    /// Errors since the last call (wgpu validation / out-of-memory, shape mismatches), if any.
    /// A handle that destroys this engine's device when asked (see [`DeviceLossHandle`]).
    pub fn loss_handle(&self) -> DeviceLossHandle {
        self.dev.loss_handle()
    }

    /// Catch the device's out-of-memory errors from now until the guard is popped (loading a
    /// model: a refused allocation is reported asynchronously, after the upload).
    pub fn watch_memory(&self) -> wgpu::ErrorScopeGuard {
        self.dev
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory)
    }

    pub fn take_error(&self) -> Option<Error> {
        self.dev
            .errors
            .take()
            .map(|e| Error::invalid(format!("GPU: {e}")))
    }

    /// Compile every kernel now (instead of on first use); reports WGSL errors.
    pub fn compile_all(&self) -> Result<()> {
        self.pipelines.borrow_mut().compile_all();
        match self.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Bytes held by pooled activation buffers (in use or free).
    pub fn pooled_bytes(&self) -> u64 {
        self.pool.borrow().allocated
    }

    /// Release pooled buffers that no tensor uses.
    pub fn trim(&self) {
        self.pool.borrow_mut().trim();
    }

    /// Bytes read back to the host so far.
    /// Kernel dispatches recorded so far.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches.get()
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.get()
    }

    /// Submits so far (each `read` submits the pending step once).
    pub fn submits(&self) -> usize {
        self.rec.borrow().submits
    }

    fn errors(&self) -> &ErrorLog {
        &self.dev.errors
    }

    /// A tensor `[rows, cols]` with undefined contents.
    fn alloc(&self, rows: usize, cols: usize) -> GpuTensor {
        let bytes = (rows * cols * 4) as u64;
        if bytes > self.dev.limits.max_binding {
            self.errors().push(format!(
                "a [{rows}, {cols}] tensor needs {bytes} bytes, over the {} bytes of one storage binding",
                self.dev.limits.max_binding
            ));
        }
        GpuTensor {
            buf: PoolBuf::alloc(&self.pool, bytes),
            rows,
            cols,
        }
    }

    /// A pooled buffer holding `data`.
    fn upload_pod<T: bytemuck::Pod>(&self, data: &[T]) -> PoolBuf {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = PoolBuf::alloc(&self.pool, bytes.len() as u64);
        self.rec.borrow_mut().upload(bytes, &buf.get().buffer);
        buf
    }

    /// Workgroup grid for `groups` workgroups: wraps into y past the per-dimension limit (kernels
    /// compute their linear index as `wid.y * num_workgroups.x + wid.x` and skip the overhang).
    fn grid(&self, groups: usize) -> [u32; 3] {
        let max = self.dev.limits.max_workgroups_per_dim as usize;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            [max as u32, groups.div_ceil(max) as u32, 1]
        }
    }

    /// Record one dispatch of `kernel` over `bufs` (storage bindings 1.. in order).
    fn run(
        &self,
        kernel: Kernel,
        constants: &[Constant],
        params: &[u32],
        bufs: &[&GpuBuf],
        grid: [u32; 3],
    ) {
        if grid.contains(&0) {
            return;
        }
        let (pipeline, group) = {
            let mut p = self.pipelines.borrow_mut();
            (p.pipeline(kernel, constants), p.bind_group(kernel, bufs))
        };
        self.rec
            .borrow_mut()
            .dispatch(&pipeline, &group, params, grid);
        self.dispatches.set(self.dispatches.get() + 1);
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(profile) = &self.profile {
            self.rec.borrow_mut().flush();
            let start = std::time::Instant::now();
            let _ = self.dev.device.poll(wgpu::PollType::wait_indefinitely());
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let key = format!("{} {:?}", kernel.name(), params.get(..3).unwrap_or(params));
            let mut table = profile.borrow_mut();
            let entry = table.entry(key).or_insert((0, 0.0, f64::MAX));
            entry.0 += 1;
            entry.1 += ms;
            entry.2 = entry.2.min(ms);
        }
    }

    /// The profile table (kernel and first params, dispatches, total ms, dispatches x fastest ms:
    /// the total without first-use compilation), most expensive first.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_report(&self) -> Option<String> {
        let table = self.profile.as_ref()?.borrow();
        let mut rows: Vec<_> = table.iter().collect();
        let steady = |r: &(usize, f64, f64)| r.0 as f64 * r.2;
        rows.sort_by(|a, b| steady(b.1).total_cmp(&steady(a.1)));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        let total_steady: f64 = rows.iter().map(|r| steady(r.1)).sum();
        let mut out = format!(
            "GPU profile: {total:.1} ms in all, {total_steady:.1} ms without compilation\n"
        );
        for (key, r) in rows {
            out += &format!("{:10.2} ms {:10.2} ms {:6}x  {key}\n", steady(r), r.1, r.0);
        }
        Some(out)
    }

    /// Whether `attention_tree_f32.wgsl` (query and accumulator in registers) handles `heads`.
    fn lane_attention(heads: Heads) -> bool {
        heads.head_dim.is_multiple_of(4) && heads.head_dim <= MAX_LANE_HEAD_DIM
    }

    /// Tokens per workgroup (TQ) of attention_tree_f32 for `n` tokens, and its constants for
    /// `mode` = (causal, full).
    fn lane_attention_consts(n: usize, heads: Heads, mode: (bool, bool)) -> (usize, [Constant; 4]) {
        let (causal, full) = mode;
        let tq = [8, 16, 32, 64].into_iter().find(|&t| t >= n).unwrap_or(64);
        let consts = [
            ("CAUSAL", if causal { 1.0 } else { 0.0 }),
            ("FULL", if full { 1.0 } else { 0.0 }),
            ("TQ", tq as f64),
            ("HD4", (heads.head_dim / 4) as f64),
        ];
        (tq, consts)
    }

    /// Record one attention_tree_f32 dispatch (`lane_attention(heads)` must hold) over `bufs` =
    /// [q, k cache, v cache, mask, out] with `params` as the shader lays them out.
    fn dispatch_lane_attention(
        &self,
        n: usize,
        heads: Heads,
        mode: (bool, bool),
        params: &[u32],
        bufs: &[&GpuBuf; 5],
    ) {
        let (tq, consts) = Self::lane_attention_consts(n, heads, mode);
        let groups = n.div_ceil(tq) * heads.q_heads;
        self.run(
            Kernel::AttentionTree,
            &consts,
            params,
            bufs,
            self.grid(groups),
        );
    }

    /// Record one tree/causal attention over `bufs` = [q, k cache, v cache, mask, out] with
    /// `params` as attention_tree_f32.wgsl lays them out (but its chunk and splits); picks the
    /// kernel variant. Past one chunk of keys (`end` slots: the last token's), and where the lane
    /// kernel serves, the keys are split into chunks by logical index and merged after (two
    /// launches; the same bits whichever pass a token is in).
    fn dispatch_attention(
        &self,
        n: usize,
        end: usize,
        heads: Heads,
        causal: bool,
        params: &[u32],
        bufs: &[&GpuBuf; 5],
    ) {
        let chunk = self.attention_chunk.filter(|&c| end > c);
        if let (Some(chunk), true) = (chunk, Self::lane_attention(heads)) {
            let splits = end.div_ceil(chunk);
            let hd4 = heads.head_dim / 4;
            // Tokens per slice: the partials stay under `attention_partial_bytes` (a long prompt
            // takes a few slices; a tree or a decoding step, one).
            let row_bytes = splits * heads.q_heads * (1 + hd4) * 16;
            let slice = (self.attention_partial_bytes / row_bytes).clamp(1, n);
            let part = self.alloc(splits * slice * heads.q_heads, (1 + hd4) * 4);
            let (tq, lane) = Self::lane_attention_consts(slice, heads, (causal, false));
            let consts = [&lane[..], &[("SPLIT", 1.0)]].concat();
            let split_bufs = [bufs[0], bufs[1], bufs[2], bufs[3], part.buffer()];
            for row0 in (0..n).step_by(slice) {
                let rows = slice.min(n - row0);
                let extra = [chunk, splits, row0, rows].map(|v| v as u32);
                let params = [params, &extra].concat();
                let grid = self.grid(rows.div_ceil(tq) * heads.q_heads * splits);
                self.run(Kernel::AttentionTree, &consts, &params, &split_bufs, grid);
                let merge = [rows, heads.q_heads, hd4, splits, row0].map(|v| v as u32);
                let grid = self.grid((rows * heads.q_heads * hd4).div_ceil(64));
                let merge_bufs = [part.buffer(), bufs[4]];
                self.run(Kernel::AttentionCombine, &[], &merge, &merge_bufs, grid);
            }
            return;
        }
        if Self::lane_attention(heads) {
            self.dispatch_lane_attention(n, heads, (causal, false), params, bufs);
        } else {
            let causal = if causal { 1.0 } else { 0.0 };
            self.run(
                Kernel::AttentionTreeBlock,
                &[("CAUSAL", causal)],
                params,
                bufs,
                self.grid(n * heads.q_heads),
            );
        }
    }

    fn copy(&self, src: &GpuBuf, src_offset: usize, dst: &GpuBuf, dst_offset: usize, bytes: usize) {
        self.rec.borrow_mut().copy(
            &src.buffer,
            src_offset as u64,
            &dst.buffer,
            dst_offset as u64,
            bytes as u64,
        );
    }
}
