// Write the keys and values of n new tokens into one layer's cache at slots start..start + n.

struct Params {
    n: u32,
    kv_dim: u32,
    start: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// k: [n, kv_dim]
@group(0) @binding(1) var<storage, read> k: array<f32>;
// v: [n, kv_dim]
@group(0) @binding(2) var<storage, read> v: array<f32>;
// k_cache: [capacity, kv_dim]
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
// v_cache: [capacity, kv_dim]
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.n * p.kv_dim {
        return;
    }
    let dst = p.start * p.kv_dim + i;
    k_cache[dst] = k[i];
    v_cache[dst] = v[i];
}
