// Weight format snippet for matmul_vec.wgsl: q4 (src/quant.rs: GGML Q4_0 blocks of 32 4-bit codes
// and one f16 scale, value = scale * (code - 8), stored planar: codes row-major, scales
// separately). A step is one code word: word i (0..4) of block b holds elements 32b + 4i.. in its
// low nibbles and 32b + 16 + 4i.. in its high nibbles, so it pairs with x vec4s 8b + i (s = 0)
// and 8b + 4 + i (s = 1). (code - 8) * scale is exact in f32.

// w: [n, steps] u32, each 8 nibble codes (this chunk)
@group(0) @binding(2) var<storage, read> w: array<u32>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;

// x vec4s per step
const XS: u32 = 2u;
// code words per block of 32
const WPB: u32 = 4u;

fn x_vec(q: u32, s: u32) -> u32 {
    return (q / WPB) * 8u + s * 4u + q % WPB;
}

fn w_step(row: u32, q: u32, s: u32) -> vec4<f32> {
    let wd = w[row * p.steps + q] >> (4u * s);
    let si = row * p.nb + q / WPB;
    let scale = unpack2x16float(scales[si >> 1u])[si & 1u];
    let c = vec4<u32>(wd, wd >> 8u, wd >> 16u, wd >> 24u) & vec4<u32>(15u);
    return (vec4<f32>(c) - 8.0) * scale;
}
