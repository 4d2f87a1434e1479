// Weight format snippet (see weights_f32.wgsl): f16 read as f16, for devices that offer
// `shader-f16` (the host puts `enable f16;` at the top of the module). The same buffer as
// weights_f16.wgsl (halves in element order, rows zero-padded to whole groups of 4), typed as
// vec4<f16> instead of unpacked from u32 pairs: widening f16 to f32 is exact either way, so both
// snippets give every kernel the same values bit for bit. A step is 4 halves.

// w: [n, steps] vec4<f16>, element 4q + c in component c (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f16>>;

const XS: u32 = 1u;

alias WStep = vec4<f16>;

fn w_load(row: u32, q: u32) -> WStep {
    return w[row * p.steps + q];
}

fn x_vec(q: u32, s: u32) -> u32 {
    return q;
}

fn w_vec(ws: WStep, s: u32) -> vec4<f32> {
    return vec4<f32>(ws);
}
