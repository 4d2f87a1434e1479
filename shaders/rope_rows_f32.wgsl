// Rotary position embedding (rotate-half convention, transformers' Llama) on x: [n, heads * head_dim].
// The host computes the per-token (cos, sin) table from each token's position id exactly as the CPU
// reference does (f32 inverse frequencies, angle = pos * inv_freq, std sin/cos): GPU sin/cos lose
// accuracy for the large angles of late positions, and one small table serves every layer.
// The rotation itself is rope_fns_f32.wgsl; an odd trailing element is copied.

struct Params {
    n: u32,
    cols: u32,
    head_dim: u32,
    half: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x: [n, cols]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// cs: [n, half] of (cos, sin) for each token's position
@group(0) @binding(2) var<storage, read> cs: array<vec2<f32>>;
// out: [n, cols]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.n * p.cols {
        return;
    }
    let row = i / p.cols;
    let c = i - row * p.cols;
    let head = c / p.head_dim;
    let d = c - head * p.head_dim;
    let base = row * p.cols + head * p.head_dim;
    if d < 2u * p.half {
        let own = x[base + d];
        let partner = x[base + rope_partner(d, p.half)];
        out[i] = rope_rotated(own, partner, cs[row * p.half + d % p.half], d, p.half);
    } else {
        out[i] = x[i];
    }
}
