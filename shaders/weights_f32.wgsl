// Weight format snippet for matmul_vec.wgsl, matmul_small.wgsl and matmul_tiled.wgsl: f32, rows
// zero-padded to whole vec4s. A step is one vec4 of a weight row.
//
// Every snippet provides: binding 2 `w` (and binding 3 `scales` for block formats); XS, the x
// vec4s one step covers; `WStep`, a step of one weight row as loaded; `w_load(row, q)`;
// `x_vec(q, s)`, which x vec4 (of a row of x) part s of step q pairs with; and `w_vec(ws, s)`,
// the 4 weights of part s, dequantized exactly (f16 and block-scaled codes are exact in f32).
// The block formats also give their codes for packed 8-bit dot products (dot_int8.wgsl):
// `w_codes(ws, s)`, part s's 4 codes as bytes, and `W_ZERO`, the code of a zero weight.

// w: [n, steps] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

const XS: u32 = 1u;

alias WStep = vec4<f32>;

fn w_load(row: u32, q: u32) -> WStep {
    return w[row * p.steps + q];
}

fn x_vec(q: u32, s: u32) -> u32 {
    return q;
}

fn w_vec(ws: WStep, s: u32) -> vec4<f32> {
    return ws;
}
