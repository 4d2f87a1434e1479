//! Adapter and device setup for the WebGPU engine.
//!
//! Limits are requested explicitly: WebGPU's guaranteed defaults (`Limits::default()`: 8 storage
//! buffers per stage, 16 KiB workgroup memory, 256 invocations, 256-byte uniform offset alignment),
//! plus the adapter's storage-binding and buffer sizes up to 1 GiB / 2 GiB. Nothing assumes more
//! than 128 MiB per storage binding (lavapipe's limit): big weight matrices are split by rows into
//! chunks that each fit one binding. One optional feature is requested where the adapter offers
//! it: `shader-f16`, for the f16 weight loader that reads halves directly (the portable one,
//! which SwiftShader needs, unpacks u32 pairs; both give the same values).
//!
//! wgpu reports validation and out-of-memory errors through a callback rather than return values;
//! they are collected in [`ErrorLog`] and surfaced by `GpuBackend::take_error`.

use std::sync::{Arc, Mutex};

use super::pipelines::DeviceKernels;
use crate::error::{Error, Result};

/// Knobs for tests and experiments; `Default` is what the app uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Cap on the bytes of one weight chunk (and so of one storage binding of a weight), below
    /// the device's own limit. Tests set it small to exercise the row-split paths.
    pub max_binding_bytes: Option<u64>,
    /// Use (true) or avoid (false) the kernels chosen for CPU drivers whatever the adapter is;
    /// `None` detects it (natively, `SPEC_LLAVA_GPU_CPU_KERNELS=0|1` decides first). Tests force
    /// both ways so every kernel runs on lavapipe.
    pub cpu_kernels: Option<bool>,
    /// Load q/k/v and gate/up as separate weights instead of stacked ones
    /// (`Backend::stacks_projections`). Tests compare both ways.
    pub separate_projections: bool,
    /// Read f16 weights as f16 where the adapter offers `shader-f16` (`None`: yes); `Some(false)`
    /// keeps the portable u32-packed loads. Both give the same values; tests compare them.
    pub native_f16: Option<bool>,
    /// Sum `matmul_vec`'s lane partials with subgroup shuffles where the adapter offers
    /// subgroups (`None`: yes on GPUs); `Some(false)` keeps workgroup memory. Both give the same
    /// sums; tests compare them.
    pub subgroups: Option<bool>,
    /// Multiply q8 / q4 weights with x quantized to 8 bits per block of 32, by packed 8-bit dot
    /// products (`matmul_vec`, where WGSL offers `packed_4x8_integer_dot_product`; not with the
    /// kernels for CPU drivers, `matmul_small`, which has no int8 form). `None`: no,
    /// unless `SPEC_LLAVA_GPU_INT8_DOT=1` natively. Off by default because x rounded to 7 bits
    /// moves the logits away from the f32 reference (`crate::quant::int8`); speculative output
    /// still equals plain decoding with it on.
    pub int8_dot: Option<bool>,
    /// Split-K attention: keys per chunk once a pass's context exceeds one chunk (`None`: 128 on
    /// GPUs, never on CPU drivers, where one workgroup per head already fills every core;
    /// `Some(0)`: never; `None` also reads `SPEC_LLAVA_GPU_ATTENTION_CHUNK` natively). Tests set
    /// it small to split the demo models' short contexts.
    pub attention_chunk: Option<usize>,
    /// Cap on the bytes of split-K partials one dispatch writes (`None`: 16 MiB); a pass with more
    /// tokens goes in slices. Tests set it small to slice short prompts.
    pub attention_partial_bytes: Option<usize>,
}

/// The limits the engine works within (a subset of what was granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Largest storage binding the device accepts.
    pub max_binding: u64,
    /// Largest weight chunk the engine creates (`max_binding`, or the `GpuOptions` cap).
    pub max_chunk: u64,
    pub max_buffer: u64,
    /// Alignment of dynamic uniform offsets.
    pub uniform_align: u64,
    pub max_workgroups_per_dim: u32,
}

/// Errors reported asynchronously by wgpu, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ErrorLog(Arc<Mutex<Vec<String>>>);

impl ErrorLog {
    pub fn push(&self, msg: impl Into<String>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(msg.into());
        }
    }
    /// All errors so far, joined; clears the log.
    pub fn take(&self) -> Option<String> {
        let mut v = self.0.lock().ok()?;
        if v.is_empty() {
            return None;
        }
        let all = v.join("; ");
        v.clear();
        Some(all)
    }
}

/// Destroys a device from outside a run, as a driver reset or the browser reclaiming the GPU
/// would, and records it as a lost device (so `take_error` reports it and callers rebuild). What
/// the app's recovery tests use; cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceLossHandle {
    device: wgpu::Device,
    errors: ErrorLog,
}

impl DeviceLossHandle {
    pub fn lose(&self, why: &str) {
        self.errors.push(format!("the GPU device was lost ({why})"));
        self.device.destroy();
    }
}

/// An opened device with its queue and what the engine needs to know about it.
pub struct GpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: String,
    /// A software rasterizer on the CPU (lavapipe, SwiftShader): workgroups run as SIMD lanes of a
    /// CPU thread, so the engine prefers its lane-per-row kernels even for long inputs.
    pub cpu: bool,
    /// The optional features opened with the device, and so the kernel forms the engine builds.
    pub kernels: DeviceKernels,
    pub limits: EngineLimits,
    pub errors: ErrorLog,
}

impl GpuDevice {
    pub fn loss_handle(&self) -> DeviceLossHandle {
        DeviceLossHandle {
            device: self.device.clone(),
            errors: self.errors.clone(),
        }
    }
}

const GIB: u64 = 1 << 30;

/// The limits to request from an adapter offering `adapter`.
fn wanted_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    // More than the defaults only where the adapter offers it; never more than the caps.
    wgpu::Limits {
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size.min(GIB),
        max_buffer_size: adapter.max_buffer_size.min(2 * GIB),
        ..wgpu::Limits::default()
    }
}

/// Open the first adapter the platform offers (a discrete GPU if there is a choice).
pub async fn open(opts: &GpuOptions) -> Result<GpuDevice> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::invalid(format!("no WebGPU adapter: {e}")))?;
    let a = adapter.get_info();
    let info = format!(
        "{} ({:?}, {:?}, {} {})",
        a.name, a.backend, a.device_type, a.driver, a.driver_info
    );
    // In the browser wgpu reports only the adapter's description, which Chrome leaves empty.
    #[cfg(target_arch = "wasm32")]
    let info = match browser_adapter_words().await {
        words if words.is_empty() => info,
        words => words,
    };
    let cpu = opts
        .cpu_kernels
        .or_else(cpu_kernels_from_env)
        .unwrap_or(a.device_type == wgpu::DeviceType::Cpu || is_software(&info));
    let required_limits = wanted_limits(&adapter.limits());
    let offered = adapter.features();
    // Native f16 loads by default on GPUs only: llvmpipe emulates f16 and its f16 mat-vec ran
    // 1.4-1.5x slower with them (bench-kernels, alternated runs).
    // Subgroups serve `matmul_vec`, which CPU drivers do not run (they take `matmul_small`).
    let on_gpus = !cpu && !portable_only();
    let kernels = DeviceKernels {
        native_f16: opts.native_f16.unwrap_or(on_gpus)
            && offered.contains(wgpu::Features::SHADER_F16),
        subgroups: opts.subgroups.unwrap_or(on_gpus) && offered.contains(wgpu::Features::SUBGROUP),
        // CPU drivers run `matmul_small`, which has no int8 form.
        int8_dot: opts.int8_dot.unwrap_or_else(int8_dot_from_env)
            && !cpu
            && !portable_only()
            && instance
                .wgsl_language_features()
                .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct),
    };
    let mut required_features = wgpu::Features::empty();
    if kernels.native_f16 {
        required_features |= wgpu::Features::SHADER_F16;
    }
    if kernels.subgroups {
        required_features |= wgpu::Features::SUBGROUP;
    }
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("spec-llava"),
            required_features,
            required_limits: required_limits.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::invalid(format!("{info}: could not open the device: {e}")))?;
    let errors = ErrorLog::default();
    let log = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| log.push(e.to_string())));
    // A lost device (driver reset, browser reclaiming the GPU) surfaces like any error, so the
    // caller (the app's worker) re-initialises the engine.
    let lost = errors.clone();
    device.set_device_lost_callback(move |reason, msg| {
        if reason != wgpu::DeviceLostReason::Destroyed {
            lost.push(format!("the GPU device was lost ({reason:?}): {msg}"));
        }
    });
    let max_binding = required_limits
        .max_storage_buffer_binding_size
        .min(required_limits.max_buffer_size);
    let max_chunk = opts
        .max_binding_bytes
        .map_or(max_binding, |c| c.clamp(16, max_binding));
    Ok(GpuDevice {
        device,
        queue,
        info,
        cpu,
        kernels,
        limits: EngineLimits {
            max_binding,
            max_chunk,
            max_buffer: required_limits.max_buffer_size,
            uniform_align: u64::from(required_limits.min_uniform_buffer_offset_alignment),
            max_workgroups_per_dim: required_limits.max_compute_workgroups_per_dimension,
        },
        errors,
    })
}

/// The engine switch `SPEC_LLAVA_GPU_<name>` of a native run (benchmarks, `cargo xtask
/// gpu-report`); the browser has none.
fn switch(name: &str) -> Option<String> {
    #[cfg(not(target_arch = "wasm32"))]
    return std::env::var(format!("SPEC_LLAVA_GPU_{name}")).ok();
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        None
    }
}

/// `SPEC_LLAVA_GPU_ATTENTION_CHUNK=N`: split-K attention's keys per chunk where
/// `GpuOptions::attention_chunk` leaves it to the engine (0: never split), to measure split
/// against unsplit attention on one device.
pub(super) fn attention_chunk_from_env() -> Option<usize> {
    switch("ATTENTION_CHUNK").and_then(|v| v.trim().parse().ok())
}

/// `SPEC_LLAVA_GPU_CPU_KERNELS=0|1`: the kernels chosen for GPUs (0) or for CPU drivers (1)
/// where `GpuOptions::cpu_kernels` leaves it to detection, to time the GPU kernels on lavapipe.
fn cpu_kernels_from_env() -> Option<bool> {
    match switch("CPU_KERNELS").as_deref() {
        Some("0") => Some(false),
        Some("1") => Some(true),
        _ => None,
    }
}

/// `SPEC_LLAVA_GPU_INT8_DOT=1`: packed 8-bit dot products where `GpuOptions::int8_dot` leaves
/// it open.
fn int8_dot_from_env() -> bool {
    switch("INT8_DOT").as_deref() == Some("1")
}

/// `SPEC_LLAVA_GPU_PORTABLE=1`: build only the portable kernels, whatever the adapter offers, to
/// measure one form against the other.
fn portable_only() -> bool {
    switch("PORTABLE").as_deref() == Some("1")
}

/// The page's own adapter info (`navigator.gpu.requestAdapter()`): vendor, architecture,
/// device and description, e.g. "google swiftshader" for Chrome's CPU implementation.
#[cfg(target_arch = "wasm32")]
async fn browser_adapter_words() -> String {
    use wasm_bindgen::{JsCast, JsValue};
    let get = |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).ok();
    let navigator = get(&js_sys::global(), "navigator");
    let Some(gpu) = navigator.and_then(|n| get(&n, "gpu")) else {
        return String::new();
    };
    let Some(request) =
        get(&gpu, "requestAdapter").and_then(|f| f.dyn_into::<js_sys::Function>().ok())
    else {
        return String::new();
    };
    let Some(promise) = request
        .call0(&gpu)
        .ok()
        .and_then(|p| p.dyn_into::<js_sys::Promise>().ok())
    else {
        return String::new();
    };
    let Ok(adapter) = wasm_bindgen_futures::JsFuture::from(promise).await else {
        return String::new();
    };
    let Some(info) = get(&adapter, "info").filter(|i| i.is_object()) else {
        return String::new();
    };
    ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|k| get(&info, k).and_then(|v| v.as_string()))
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether an adapter description names a CPU implementation (browsers report no device type).
fn is_software(info: &str) -> bool {
    let info = info.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader", "warp"]
        .iter()
        .any(|name| info.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stay_within_the_adapter_and_the_caps() {
        let lavapipe = wgpu::Limits {
            max_storage_buffer_binding_size: 128 << 20,
            max_buffer_size: 2 * GIB,
            ..wgpu::Limits::default()
        };
        let w = wanted_limits(&lavapipe);
        assert_eq!(w.max_storage_buffer_binding_size, 128 << 20);
        assert_eq!(w.max_buffer_size, 2 * GIB);
        let big = wgpu::Limits {
            max_storage_buffer_binding_size: 4 * GIB,
            max_buffer_size: 16 * GIB,
            ..lavapipe.clone()
        };
        let w = wanted_limits(&big);
        assert_eq!(w.max_storage_buffer_binding_size, GIB);
        assert_eq!(w.max_buffer_size, 2 * GIB);
        assert_eq!(w.max_compute_workgroup_storage_size, 16384);
    }
}
