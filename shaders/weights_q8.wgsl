// Weight format snippet for matmul_vec.wgsl: q8 (src/quant.rs: GGML Q8_0 blocks of 32 int8 codes
// and one f16 scale, stored planar: codes row-major, scales separately). A step is one code word:
// elements 4q..4q + 3, byte b holding element 4q + b. code * scale is exact in f32.

// w: [n, steps] u32, each 4 int8 codes (this chunk)
@group(0) @binding(2) var<storage, read> w: array<u32>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;

// x vec4s per step
const XS: u32 = 1u;
// code words per block of 32
const WPB: u32 = 8u;

fn x_vec(q: u32, s: u32) -> u32 {
    return q;
}

fn w_step(row: u32, q: u32, s: u32) -> vec4<f32> {
    let wd = w[row * p.steps + q];
    let si = row * p.nb + q / WPB;
    let scale = unpack2x16float(scales[si >> 1u])[si & 1u];
    // Sign-extend each byte with shifts (no unpack4x8snorm: that would scale).
    let c = bitcast<vec4<i32>>(vec4<u32>(wd << 24u, wd << 16u, wd << 8u, wd)) >> vec4<u32>(24u);
    return vec4<f32>(c) * scale;
}
