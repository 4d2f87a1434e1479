// dst[i] = src[i] for i < n4 vec4s: a plain buffer copy, the bandwidth reference of
// `spec-llava bench-kernels` (every kernel's achieved GB/s is reported next to this one's on the
// same device). One vec4 per invocation; grids wider than 65535 workgroups wrap into y.

// Invocations per workgroup (pipeline-overridable; the benchmark uses the default).
override WG: u32 = 256u;

struct Params {
    // vec4s to copy
    n4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// src: [n4] vec4s
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
// dst: [n4] vec4s
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= p.n4 {
        return;
    }
    dst[i] = src[i];
}
