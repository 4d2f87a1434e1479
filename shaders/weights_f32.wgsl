// Weight format snippet for matmul_vec.wgsl: f32, rows zero-padded to whole vec4s.

// w: [n, steps] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

// x vec4s per step
const XS: u32 = 1u;

fn x_vec(q: u32, s: u32) -> u32 {
    return q;
}

fn w_step(row: u32, q: u32, s: u32) -> vec4<f32> {
    return w[row * p.steps + q];
}
