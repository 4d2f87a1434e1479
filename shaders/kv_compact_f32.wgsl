// Gather the cache slots of an accepted speculation path (one layer): scratch[0, i] = k_cache[from[i]],
// scratch[1, i] = v_cache[from[i]]. The host then copies scratch back to slots to_start.. — gathering
// first keeps the result independent of the order in which invocations run, even when a source slot
// is also a destination slot.

struct Params {
    count: u32,
    kv_dim: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// from: [count] source slots
@group(0) @binding(1) var<storage, read> from_slots: array<u32>;
// k_cache: [capacity, kv_dim]
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
// v_cache: [capacity, kv_dim]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
// scratch: [2, count, kv_dim] (keys, then values)
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let len = p.count * p.kv_dim;
    if i >= len {
        return;
    }
    let slot = i / p.kv_dim;
    let c = i - slot * p.kv_dim;
    let src = from_slots[slot] * p.kv_dim + c;
    scratch[i] = k_cache[src];
    scratch[len + i] = v_cache[src];
}
