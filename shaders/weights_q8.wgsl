// Weight format snippet (see weights_f32.wgsl): q8 (src/quant.rs: GGML Q8_0 blocks of 32 int8
// codes and one f16 scale, stored planar: codes row-major, scales separately). A step is one
// block: its 8 code words in two 16-byte loads and its scale, loaded once; part s is word s,
// elements 32q + 4s.. (byte b holding element 32q + 4s + b). code * scale is exact in f32.

// w: [n, steps * 2] vec4<u32>, a block's 32 int8 codes in two (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;

const XS: u32 = 8u;

struct WStep {
    lo: vec4<u32>,
    hi: vec4<u32>,
    scale: f32,
}

fn w_load(row: u32, q: u32) -> WStep {
    let b = row * p.steps + q;
    let scale = unpack2x16float(scales[b >> 1u])[b & 1u];
    return WStep(w[2u * b], w[2u * b + 1u], scale);
}

fn x_vec(q: u32, s: u32) -> u32 {
    return q * 8u + s;
}

fn w_vec(ws: WStep, s: u32) -> vec4<f32> {
    let wd = select(ws.hi[s & 3u], ws.lo[s & 3u], s < 4u);
    // Sign-extend each byte with shifts (no unpack4x8snorm: that would scale).
    let c = bitcast<vec4<i32>>(vec4<u32>(wd << 24u, wd << 16u, wd << 8u, wd)) >> vec4<u32>(24u);
    return vec4<f32>(c) * ws.scale;
}

// dot_int8.wgsl: part s's 4 int8 codes as they are stored (element 32q + 4s + b in byte b).
const W_ZERO: i32 = 0;

fn w_codes(ws: WStep, s: u32) -> u32 {
    return select(ws.hi[s & 3u], ws.lo[s & 3u], s < 4u);
}
