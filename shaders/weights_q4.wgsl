// Weight format snippet (see weights_f32.wgsl): q4 (src/quant.rs: GGML Q4_0 blocks of 32 4-bit
// codes and one f16 scale, value = scale * (code - 8), stored planar: codes row-major, scales
// separately). A step is one block: its 4 code words in one 16-byte load and its scale, loaded
// once. Word i holds elements 4i.. in its low nibbles and 16 + 4i.. in its high nibbles, so part
// s (elements 32q + 4s..) is word s % 4, shifted by 4 (s / 4). (code - 8) * scale is exact in f32.

// w: [n, steps] vec4<u32>, a block's 32 nibble codes each (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;

const XS: u32 = 8u;

struct WStep {
    words: vec4<u32>,
    scale: f32,
}

fn w_load(row: u32, q: u32) -> WStep {
    let b = row * p.steps + q;
    let scale = unpack2x16float(scales[b >> 1u])[b & 1u];
    return WStep(w[b], scale);
}

fn x_vec(q: u32, s: u32) -> u32 {
    return q * 8u + s;
}

fn w_vec(ws: WStep, s: u32) -> vec4<f32> {
    let wd = ws.words[s & 3u] >> (4u * (s >> 2u));
    let c = vec4<u32>(wd, wd >> 8u, wd >> 16u, wd >> 24u) & vec4<u32>(15u);
    return (vec4<f32>(c) - 8.0) * ws.scale;
}

// dot_int8.wgsl: part s's 4 codes as bytes (0..15, element 32q + 4s + b in byte b), to be read
// as code - W_ZERO.
const W_ZERO: i32 = 8;

fn w_codes(ws: WStep, s: u32) -> u32 {
    return (ws.words[s & 3u] >> (4u * (s >> 2u))) & 0x0f0f0f0fu;
}
