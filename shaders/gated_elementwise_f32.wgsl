// out = act(gate) * up, elementwise (SwiGLU and friends). `activate` and the `ACT` override come
// from activation_fns_f32.wgsl, which the host prepends.

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// gate: [len] (a [rows, cols] tensor, flattened)
@group(0) @binding(1) var<storage, read> gate: array<f32>;
// up: [len]
@group(0) @binding(2) var<storage, read> up: array<f32>;
// out: [len]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    out[i] = activate(gate[i]) * up[i];
}
