//! The pending command encoder: ops record into it, `flush` submits it.
//!
//! A decoding step records all of its dispatches and copies into one encoder (one compute pass
//! between copies) and submits once, when the host reads a result. Two arenas travel with the
//! encoder and are written with `queue.write_buffer` just before the submit, which WebGPU orders
//! after every earlier submission and before this one:
//! - uniforms: each dispatch's `Params`, at a dynamic offset aligned to the device's requirement;
//! - uploads: host data (tokens, positions, masks, activations), copied into its destination by a
//!   copy command recorded in order with the dispatches. Uploads too big for the arena get a buffer
//!   of their own, filled at creation.
//!
//! When an arena fills up, the encoder is submitted early and recording continues in a new one.

use super::pipelines::PARAM_BYTES;

/// Uniform arena size: 4096 dispatches at a 256-byte alignment.
const UNIFORM_ARENA_BYTES: u64 = 1 << 20;
/// Upload arena size; bigger single uploads get a buffer of their own.
const UPLOAD_ARENA_BYTES: u64 = 4 << 20;

pub struct Recorder {
    device: wgpu::Device,
    queue: wgpu::Queue,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    uniform_align: u64,
    uniforms: Vec<u8>,
    uniform_arena: wgpu::Buffer,
    uploads: Vec<u8>,
    upload_arena: wgpu::Buffer,
    /// Dispatches recorded since the last submit (for tests and stats).
    pub dispatches: usize,
    /// Submits so far.
    pub submits: usize,
}

impl Recorder {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, uniform_align: u64) -> Self {
        let uniform_arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform arena"),
            size: UNIFORM_ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let upload_arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload arena"),
            size: UPLOAD_ARENA_BYTES,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Recorder {
            device,
            queue,
            encoder: None,
            pass: None,
            uniform_align: uniform_align.max(PARAM_BYTES),
            uniforms: Vec::new(),
            uniform_arena,
            uploads: Vec::new(),
            upload_arena,
            dispatches: 0,
            submits: 0,
        }
    }

    pub fn uniform_arena(&self) -> &wgpu::Buffer {
        &self.uniform_arena
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        // A copy cannot be recorded while a compute pass is open.
        self.pass = None;
        self.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    /// Record one dispatch of `pipeline` with `params` as its uniform block.
    pub fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        params: &[u32],
        grid: [u32; 3],
    ) {
        if self.uniforms.len() as u64 + self.uniform_align > UNIFORM_ARENA_BYTES {
            self.flush();
        }
        let offset = self.uniforms.len();
        let mut block = [0u32; (PARAM_BYTES / 4) as usize];
        block[..params.len()].copy_from_slice(params);
        self.uniforms
            .extend_from_slice(bytemuck::cast_slice(&block));
        self.uniforms
            .resize(offset + self.uniform_align as usize, 0);
        if self.pass.is_none() {
            let pass = self
                .encoder()
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
            self.pass = Some(pass.forget_lifetime());
        }
        if let Some(pass) = self.pass.as_mut() {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[offset as u32]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
        self.dispatches += 1;
    }

    /// Record a buffer-to-buffer copy (sizes and offsets are multiples of 4).
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        self.encoder()
            .copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Record the upload of `data` (a multiple of 4 bytes) to the start of `dst`.
    pub fn upload(&mut self, data: &[u8], dst: &wgpu::Buffer) {
        let len = data.len() as u64;
        if len == 0 {
            return;
        }
        if len > UPLOAD_ARENA_BYTES / 4 {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload"),
                size: len,
                usage: wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            if let Ok(mut view) = staging.get_mapped_range_mut(..) {
                view.copy_from_slice(data);
            }
            staging.unmap();
            self.copy(&staging, 0, dst, 0, len);
            return;
        }
        if self.uploads.len() as u64 + len > UPLOAD_ARENA_BYTES {
            self.flush();
        }
        let offset = self.uploads.len() as u64;
        self.uploads.extend_from_slice(data);
        let arena = self.upload_arena.clone();
        self.copy(&arena, offset, dst, 0, len);
    }

    /// Submit everything recorded so far.
    pub fn flush(&mut self) {
        self.pass = None;
        let Some(encoder) = self.encoder.take() else {
            return;
        };
        if !self.uniforms.is_empty() {
            self.queue
                .write_buffer(&self.uniform_arena, 0, &self.uniforms);
            self.uniforms.clear();
        }
        if !self.uploads.is_empty() {
            self.queue
                .write_buffer(&self.upload_arena, 0, &self.uploads);
            self.uploads.clear();
        }
        self.queue.submit([encoder.finish()]);
        self.dispatches = 0;
        self.submits += 1;
    }
}
