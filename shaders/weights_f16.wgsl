// Weight format snippet for matmul_vec.wgsl: f16 packed two per u32 (no shader-f16 needed:
// unpack2x16float), rows zero-padded to whole groups of 4.

// w: [n, steps] vec2<u32>, each 4 f16 (element 4q + 2c + h in half h of component c) (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;

// x vec4s per step
const XS: u32 = 1u;

fn x_vec(q: u32, s: u32) -> u32 {
    return q;
}

fn w_step(row: u32, q: u32, s: u32) -> vec4<f32> {
    let v = w[row * p.steps + q];
    return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
}
