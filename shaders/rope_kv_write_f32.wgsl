// What rope (queries), rope (keys) and kv_write do, in one dispatch: the rotary embedding
// (rope_fns_f32.wgsl, the same arithmetic as rope_rows_f32.wgsl) of the n new tokens' queries,
// written to q_out, and of their keys, written with their values into one layer's KV cache at
// slots start..start + n. One invocation per element of q (first) or of k and v (after).
//
// q, k and v are read through strides and column offsets, so they may be three tensors or one
// stacked projection's output [n, q_cols + 2 kv_dim] bound three times (q at column 0, k at
// q_cols, v at q_cols + kv_dim): the same arithmetic on the same values either way.

struct Params {
    // new tokens
    n: u32,
    // q_heads * head_dim
    q_cols: u32,
    // kv_heads * head_dim
    kv_dim: u32,
    head_dim: u32,
    // head_dim / 2: rotated pairs per head
    half: u32,
    // first cache slot written
    start: u32,
    // floats per row of the q binding
    q_stride: u32,
    // floats per row of the k and v bindings
    kv_stride: u32,
    // first column of k in its binding's rows
    k_off: u32,
    // first column of v in its binding's rows
    v_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// q: [n, q_stride], q in columns 0..q_cols
@group(0) @binding(1) var<storage, read> q: array<f32>;
// k: [n, kv_stride], k in columns k_off..k_off + kv_dim
@group(0) @binding(2) var<storage, read> k: array<f32>;
// v: [n, kv_stride], v in columns v_off..v_off + kv_dim
@group(0) @binding(3) var<storage, read> v: array<f32>;
// cs: [n, half] of (cos, sin) for each token's position
@group(0) @binding(4) var<storage, read> cs: array<vec2<f32>>;
// q_out: [n, q_cols]
@group(0) @binding(5) var<storage, read_write> q_out: array<f32>;
// k_cache: [capacity, kv_dim]
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>;
// v_cache: [capacity, kv_dim]
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let nq = p.n * p.q_cols;
    if i >= nq + p.n * p.kv_dim {
        return;
    }
    let is_q = i < nq;
    let e = select(i - nq, i, is_q);
    let cols = select(p.kv_dim, p.q_cols, is_q);
    let row = e / cols;
    let c = e - row * cols;
    let d = c % p.head_dim;
    if is_q {
        // This element and the first of its head in the q binding.
        let src = row * p.q_stride + c;
        let base = src - d;
        var y = q[src];
        if d < 2u * p.half {
            let t = cs[row * p.half + d % p.half];
            y = rope_rotated(y, q[base + rope_partner(d, p.half)], t, d, p.half);
        }
        q_out[e] = y;
        return;
    }
    let src = row * p.kv_stride + c;
    let base = src + p.k_off - d;
    var y = k[src + p.k_off];
    if d < 2u * p.half {
        let t = cs[row * p.half + d % p.half];
        y = rope_rotated(y, k[base + rope_partner(d, p.half)], t, d, p.half);
    }
    let dst = p.start * p.kv_dim + e;
    k_cache[dst] = y;
    v_cache[dst] = v[src + p.v_off];
}
