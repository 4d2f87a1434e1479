//! The WGSL kernels (shaders/*.wgsl), their binding layouts, and caches of compiled pipelines and
//! bind groups.
//!
//! Every kernel binds a uniform `Params` block at binding 0 (a 64-byte window into the per-submit
//! uniform arena, selected by a dynamic offset) and then storage buffers at bindings 1.. in the
//! order [`Kernel::bindings`] lists. One explicit layout per kernel lets every specialisation of
//! that kernel (pipeline-overridable constants such as `HAS_BIAS`, `CAUSAL`, `ACT`) share bind
//! groups. Bind groups are cached by the ids of the buffers they bind: decoding reuses the same
//! pooled buffers step after step, so after the first step almost every lookup hits.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;

use super::pool::{GpuBuf, Graveyard};

/// Bytes of the uniform window each dispatch sees (its `Params` struct is at most this big).
pub const PARAM_BYTES: u64 = 64;

/// How a kernel uses one storage binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

use Access::{Read, Write};

/// The kernels, one per shader file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    MatmulVec,
    MatmulSmall,
    MatmulSmallF16,
    MatmulSmallQ8,
    MatmulSmallQ4,
    MatmulTiled,
    MatmulVecQ8,
    MatmulTiledQ8,
    MatmulVecQ4,
    MatmulTiledQ4,
    MatmulVecF16,
    MatmulTiledF16,
    AttentionTree,
    /// `attention_tree` for head dims it cannot keep in registers.
    AttentionTreeBlock,
    AttentionCombine,
    AttentionFull,
    RmsNorm,
    LayerNorm,
    Rope,
    Activation,
    Gated,
    Add,
    Embed,
    RowsCopy,
    KvWrite,
    /// `rope` of queries and keys and `kv_write`, fused (decoder passes).
    RopeKvWrite,
    KvCompact,
    /// Plain vec4 buffer copy: the bandwidth reference of `spec-llava bench-kernels`.
    CopyVec4,
    /// Top-k and log-sum-exp of logits rows.
    TopK,
}

/// Shared activation functions, prepended to the two kernels that use them (WGSL has no imports).
const ACTIVATION_FNS: &str = include_str!("../../../shaders/activation_fns_f32.wgsl");

/// The rotary embedding of one element, prepended to the kernels that rotate.
const ROPE_FNS: &str = include_str!("../../../shaders/rope_fns_f32.wgsl");

/// The two batch-invariant matmul algorithms (GPUs: `matmul_vec`, k split over a group of lanes;
/// CPU drivers: `matmul_small`, a register tile per lane), how they read x, and the weight-format
/// snippets appended to them (each defines the weight bindings and how a step of a weight row is
/// read and dequantized).
const MATMUL_VEC: &str = include_str!("../../../shaders/matmul_vec.wgsl");
/// The tiled GEMM for prefill-sized batches (above 64 rows), with the same snippets.
const MATMUL_TILED: &str = include_str!("../../../shaders/matmul_tiled.wgsl");
const MATMUL_SMALL: &str = include_str!("../../../shaders/matmul_small.wgsl");
const MATMUL_X: &str = include_str!("../../../shaders/matmul_x.wgsl");
/// Their shared parameters and x / bias / out bindings.
const MATMUL_IO: &str = include_str!("../../../shaders/matmul_io.wgsl");
/// How `matmul_vec` sums a group's lane partials: in workgroup memory, or its lowest levels by
/// subgroup shuffles (the same tree, so the same bits).
const LANES_PORTABLE: &str = include_str!("../../../shaders/lanes_portable.wgsl");
const LANES_SUBGROUP: &str = include_str!("../../../shaders/lanes_subgroup.wgsl");
/// How a lane of `matmul_vec` multiplies and sums its steps: f32 fma chains, or packed 8-bit dot
/// products of q8 / q4 codes with x quantized per block.
const DOT_FLOAT: &str = include_str!("../../../shaders/dot_float.wgsl");
const DOT_INT8: &str = include_str!("../../../shaders/dot_int8.wgsl");
const WEIGHTS_F32: &str = include_str!("../../../shaders/weights_f32.wgsl");
const WEIGHTS_F16: &str = include_str!("../../../shaders/weights_f16.wgsl");
const WEIGHTS_F16_NATIVE: &str = include_str!("../../../shaders/weights_f16_native.wgsl");
const WEIGHTS_Q8: &str = include_str!("../../../shaders/weights_q8.wgsl");
const WEIGHTS_Q4: &str = include_str!("../../../shaders/weights_q4.wgsl");

impl Kernel {
    pub const ALL: [Kernel; 29] = [
        Kernel::MatmulVec,
        Kernel::MatmulSmall,
        Kernel::MatmulSmallF16,
        Kernel::MatmulSmallQ8,
        Kernel::MatmulSmallQ4,
        Kernel::MatmulTiled,
        Kernel::MatmulVecQ8,
        Kernel::MatmulTiledQ8,
        Kernel::MatmulVecQ4,
        Kernel::MatmulTiledQ4,
        Kernel::MatmulVecF16,
        Kernel::MatmulTiledF16,
        Kernel::AttentionTree,
        Kernel::AttentionTreeBlock,
        Kernel::AttentionCombine,
        Kernel::AttentionFull,
        Kernel::RmsNorm,
        Kernel::LayerNorm,
        Kernel::Rope,
        Kernel::Activation,
        Kernel::Gated,
        Kernel::Add,
        Kernel::Embed,
        Kernel::RowsCopy,
        Kernel::KvWrite,
        Kernel::RopeKvWrite,
        Kernel::KvCompact,
        Kernel::CopyVec4,
        Kernel::TopK,
    ];

    /// The shader file's stem (for `matmul_vec_*`: the algorithm's file and the weight format).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::MatmulVec => "matmul_vec_f32",
            Kernel::MatmulSmall => "matmul_small_f32",
            Kernel::MatmulSmallF16 => "matmul_small_f16",
            Kernel::MatmulSmallQ8 => "matmul_small_q8",
            Kernel::MatmulSmallQ4 => "matmul_small_q4",
            Kernel::MatmulTiled => "matmul_tiled_f32",
            Kernel::MatmulVecQ8 => "matmul_vec_q8",
            Kernel::MatmulTiledQ8 => "matmul_tiled_q8",
            Kernel::MatmulVecQ4 => "matmul_vec_q4",
            Kernel::MatmulTiledQ4 => "matmul_tiled_q4",
            Kernel::MatmulVecF16 => "matmul_vec_f16",
            Kernel::MatmulTiledF16 => "matmul_tiled_f16",
            Kernel::AttentionTree => "attention_tree_f32",
            Kernel::AttentionTreeBlock => "attention_treeblock_f32",
            Kernel::AttentionCombine => "attention_combine_f32",
            Kernel::AttentionFull => "attention_full_f32",
            Kernel::RmsNorm => "rmsnorm_rows_f32",
            Kernel::LayerNorm => "layernorm_rows_f32",
            Kernel::Rope => "rope_rows_f32",
            Kernel::Activation => "activation_elementwise_f32",
            Kernel::Gated => "gated_elementwise_f32",
            Kernel::Add => "add_elementwise_f32",
            Kernel::Embed => "embed_gather_f32",
            Kernel::RowsCopy => "rows_copy_f32",
            Kernel::KvWrite => "kv_write_f32",
            Kernel::RopeKvWrite => "rope_kv_write_f32",
            Kernel::KvCompact => "kv_compact_f32",
            Kernel::CopyVec4 => "copy_vec4_f32",
            Kernel::TopK => "topk_rows_f32",
        }
    }

    /// The kernel as the engine compiles it on a device with `features` (the portable kernels:
    /// [`DeviceKernels::PORTABLE`]).
    pub fn source_for(self, features: DeviceKernels) -> String {
        let own = match self {
            Kernel::MatmulVec => return matmul(MATMUL_VEC, WEIGHTS_F32, features),
            Kernel::MatmulSmall => return matmul(MATMUL_SMALL, WEIGHTS_F32, features),
            Kernel::MatmulSmallF16 => return matmul(MATMUL_SMALL, WEIGHTS_F16, features),
            Kernel::MatmulSmallQ8 => return matmul(MATMUL_SMALL, WEIGHTS_Q8, features),
            Kernel::MatmulSmallQ4 => return matmul(MATMUL_SMALL, WEIGHTS_Q4, features),
            Kernel::MatmulTiled => return matmul(MATMUL_TILED, WEIGHTS_F32, features),
            Kernel::MatmulVecQ8 => return matmul(MATMUL_VEC, WEIGHTS_Q8, features),
            Kernel::MatmulTiledQ8 => return matmul(MATMUL_TILED, WEIGHTS_Q8, features),
            Kernel::MatmulVecQ4 => return matmul(MATMUL_VEC, WEIGHTS_Q4, features),
            Kernel::MatmulTiledQ4 => return matmul(MATMUL_TILED, WEIGHTS_Q4, features),
            Kernel::MatmulVecF16 => return matmul(MATMUL_VEC, WEIGHTS_F16, features),
            Kernel::MatmulTiledF16 => return matmul(MATMUL_TILED, WEIGHTS_F16, features),
            Kernel::AttentionTree => include_str!("../../../shaders/attention_tree_f32.wgsl"),
            Kernel::AttentionTreeBlock => {
                include_str!("../../../shaders/attention_treeblock_f32.wgsl")
            }
            Kernel::AttentionCombine => {
                include_str!("../../../shaders/attention_combine_f32.wgsl")
            }
            Kernel::AttentionFull => include_str!("../../../shaders/attention_full_f32.wgsl"),
            Kernel::RmsNorm => include_str!("../../../shaders/rmsnorm_rows_f32.wgsl"),
            Kernel::LayerNorm => include_str!("../../../shaders/layernorm_rows_f32.wgsl"),
            Kernel::Rope => include_str!("../../../shaders/rope_rows_f32.wgsl"),
            Kernel::Activation => include_str!("../../../shaders/activation_elementwise_f32.wgsl"),
            Kernel::Gated => include_str!("../../../shaders/gated_elementwise_f32.wgsl"),
            Kernel::Add => include_str!("../../../shaders/add_elementwise_f32.wgsl"),
            Kernel::Embed => include_str!("../../../shaders/embed_gather_f32.wgsl"),
            Kernel::RowsCopy => include_str!("../../../shaders/rows_copy_f32.wgsl"),
            Kernel::KvWrite => include_str!("../../../shaders/kv_write_f32.wgsl"),
            Kernel::RopeKvWrite => include_str!("../../../shaders/rope_kv_write_f32.wgsl"),
            Kernel::KvCompact => include_str!("../../../shaders/kv_compact_f32.wgsl"),
            Kernel::CopyVec4 => include_str!("../../../shaders/copy_vec4_f32.wgsl"),
            Kernel::TopK => include_str!("../../../shaders/topk_rows_f32.wgsl"),
        };
        match self {
            Kernel::Activation | Kernel::Gated => format!("{ACTIVATION_FNS}\n{own}"),
            Kernel::Rope | Kernel::RopeKvWrite => format!("{ROPE_FNS}\n{own}"),
            _ => own.to_string(),
        }
    }

    /// The portable kernel (every WebGPU device).
    pub fn source(self) -> String {
        self.source_for(DeviceKernels::PORTABLE)
    }

    /// Storage bindings 1.. in order (binding 0 is the uniform `Params`).
    pub fn bindings(self) -> &'static [Access] {
        match self {
            // x, weights (codes), scales (a dummy for f32 / f16), bias, out, norm weight (a dummy
            // without NORM)
            Kernel::MatmulTiled
            | Kernel::MatmulTiledF16
            | Kernel::MatmulVec
            | Kernel::MatmulSmall
            | Kernel::MatmulSmallF16
            | Kernel::MatmulSmallQ8
            | Kernel::MatmulSmallQ4
            | Kernel::MatmulVecF16
            | Kernel::MatmulVecQ8
            | Kernel::MatmulVecQ4
            | Kernel::MatmulTiledQ8
            | Kernel::MatmulTiledQ4 => &[Read, Read, Read, Read, Write, Read],
            Kernel::AttentionTree | Kernel::AttentionTreeBlock => &[Read, Read, Read, Read, Write],
            Kernel::AttentionFull => &[Read, Read, Read, Write],
            Kernel::RmsNorm => &[Read, Read, Write],
            Kernel::LayerNorm => &[Read, Read, Read, Write],
            Kernel::Rope => &[Read, Read, Write],
            Kernel::Activation | Kernel::CopyVec4 | Kernel::TopK | Kernel::AttentionCombine => {
                &[Read, Write]
            }
            Kernel::Gated | Kernel::Add | Kernel::Embed | Kernel::RowsCopy => &[Read, Read, Write],
            Kernel::KvWrite => &[Read, Read, Write, Write],
            // q, k, v, (cos, sin) table, q out, k cache, v cache
            Kernel::RopeKvWrite => &[Read, Read, Read, Read, Write, Write, Write],
            Kernel::KvCompact => &[Read, Read, Read, Write],
        }
    }
}

/// A matmul kernel's source on a device with `features`: the shared parameters and bindings,
/// the algorithm, how it reads x, the weight-format snippet (f16: read as f16 with
/// `shader-f16`, whose directive must open the module) and, for the mat-vec, how lanes fold
/// their partial sums (with subgroups: shuffles) and how they multiply (f32, or packed 8-bit
/// dot products of q8 / q4 codes).
fn matmul(algorithm: &str, weights: &str, features: DeviceKernels) -> String {
    let native_f16 = features.native_f16 && weights == WEIGHTS_F16;
    let (enable, weights) = match native_f16 {
        true => ("enable f16;\n", WEIGHTS_F16_NATIVE),
        false => ("", weights),
    };
    // The batch-invariant algorithms can end in the gated activation (GATED).
    let act = if algorithm == MATMUL_TILED {
        ""
    } else {
        ACTIVATION_FNS
    };
    let vec = algorithm == MATMUL_VEC;
    let lanes = match (vec, features.subgroups) {
        (false, _) => "",
        (true, false) => LANES_PORTABLE,
        (true, true) => LANES_SUBGROUP,
    };
    let block_format = weights == WEIGHTS_Q8 || weights == WEIGHTS_Q4;
    let dot = match (vec, features.int8_dot && block_format) {
        (false, _) => "",
        (true, false) => DOT_FLOAT,
        (true, true) => DOT_INT8,
    };
    format!("{enable}{MATMUL_IO}\n{act}\n{algorithm}\n{lanes}\n{dot}\n{MATMUL_X}\n{weights}")
}

/// A pipeline-overridable constant and its value (WGSL bools take 0.0 / 1.0).
/// Optional WebGPU features the kernels use where the device has them (each kernel also has a
/// portable form that needs none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceKernels {
    /// `shader-f16`: f16 weights load as `vec4<f16>` instead of being unpacked from u32 pairs
    /// (the same values).
    pub native_f16: bool,
    /// `subgroups` (wgpu's SUBGROUP; native adapters only, as wgpu does not map it in the
    /// browser): `matmul_vec` sums its lane partials with shuffles instead of workgroup memory
    /// (the same sums).
    pub subgroups: bool,
    /// Packed 8-bit dot products (WGSL's `packed_4x8_integer_dot_product`, opted into with
    /// `GpuOptions::int8_dot`): `matmul_vec` multiplies q8 / q4 codes with x quantized per block
    /// of 32 instead of widening the weights to f32 (`crate::quant::int8`; not the default, as
    /// it rounds x to 7 bits).
    pub int8_dot: bool,
}

impl DeviceKernels {
    /// What every WebGPU device runs.
    pub const PORTABLE: DeviceKernels = DeviceKernels {
        native_f16: false,
        subgroups: false,
        int8_dot: false,
    };
}

pub type Constant = (&'static str, f64);

/// A kernel and the bit patterns of its constants: one compiled pipeline.
type PipelineKey = (Kernel, Vec<(&'static str, u64)>);

struct KernelLayout {
    bind_group_layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    module: wgpu::ShaderModule,
}

/// Compiled pipelines and bind groups, created on first use.
pub struct Pipelines {
    device: wgpu::Device,
    features: DeviceKernels,
    /// Storage bindings larger than this bind only their first `max_binding` bytes.
    max_binding: u64,
    uniform_arena: wgpu::Buffer,
    layouts: HashMap<Kernel, KernelLayout>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
    bind_groups: HashMap<(Kernel, Vec<u64>), wgpu::BindGroup>,
    graveyard: Graveyard,
}

/// Past this many cached bind groups the cache starts over (they are cheap to recreate).
const MAX_BIND_GROUPS: usize = 8192;

impl Pipelines {
    pub fn new(
        device: wgpu::Device,
        features: DeviceKernels,
        max_binding: u64,
        uniform_arena: wgpu::Buffer,
        graveyard: Graveyard,
    ) -> Self {
        Pipelines {
            device,
            features,
            max_binding,
            uniform_arena,
            layouts: HashMap::new(),
            pipelines: HashMap::new(),
            bind_groups: HashMap::new(),
            graveyard,
        }
    }

    fn layout(&mut self, kernel: Kernel) -> &KernelLayout {
        let (device, features) = (&self.device, self.features);
        self.layouts.entry(kernel).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(PARAM_BYTES),
                },
                count: None,
            }];
            for (i, access) in kernel.bindings().iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *access == Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bind_group_layout =
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(kernel.name()),
                    entries: &entries,
                });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.name()),
                bind_group_layouts: &[Some(&bind_group_layout)],
                immediate_size: 0,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name()),
                source: wgpu::ShaderSource::Wgsl(kernel.source_for(features).into()),
            });
            KernelLayout {
                bind_group_layout,
                pipeline_layout,
                module,
            }
        })
    }

    /// The pipeline of `kernel` specialised with `constants`.
    pub fn pipeline(&mut self, kernel: Kernel, constants: &[Constant]) -> wgpu::ComputePipeline {
        let key: PipelineKey = (
            kernel,
            constants
                .iter()
                .map(|(n, v)| (*n, v.to_bits()))
                .collect::<Vec<_>>(),
        );
        if let Some(p) = self.pipelines.get(&key) {
            return p.clone();
        }
        let device = self.device.clone();
        let layout = self.layout(kernel);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name()),
            layout: Some(&layout.pipeline_layout),
            module: &layout.module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.pipelines.insert(key, pipeline.clone());
        pipeline
    }

    /// The bind group of `kernel` over `bufs` (storage bindings 1.. in order).
    pub fn bind_group(&mut self, kernel: Kernel, bufs: &[&GpuBuf]) -> wgpu::BindGroup {
        self.purge_dead();
        let key = (kernel, bufs.iter().map(|b| b.id).collect::<Vec<_>>());
        if let Some(g) = self.bind_groups.get(&key) {
            return g.clone();
        }
        if self.bind_groups.len() >= MAX_BIND_GROUPS {
            self.bind_groups.clear();
        }
        let max_binding = self.max_binding;
        let layout = self.layout(kernel).bind_group_layout.clone();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.uniform_arena,
                offset: 0,
                size: NonZeroU64::new(PARAM_BYTES),
            }),
        }];
        for (i, b) in bufs.iter().enumerate() {
            // Pool buckets can round a buffer past the binding limit; bind only what is allowed.
            let size = if b.size() > max_binding {
                NonZeroU64::new(max_binding & !3)
            } else {
                None
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &b.buffer,
                    offset: 0,
                    size,
                }),
            });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &layout,
            entries: &entries,
        });
        self.bind_groups.insert(key, group.clone());
        group
    }

    /// Drop cached bind groups that bind a destroyed buffer (they would keep its memory alive).
    fn purge_dead(&mut self) {
        let dead: HashSet<u64> = match self.graveyard.try_borrow_mut() {
            Ok(mut g) if !g.is_empty() => g.drain(..).collect(),
            _ => return,
        };
        self.bind_groups
            .retain(|(_, ids), _| !ids.iter().any(|id| dead.contains(id)));
    }

    /// Compile every kernel in its default specialisation (used by tests to catch WGSL errors).
    pub fn compile_all(&mut self) {
        for k in Kernel::ALL {
            self.pipeline(k, &[]);
        }
    }
}
