// Weight format snippet (see weights_f32.wgsl): f16 packed two per u32 (no shader-f16 needed:
// unpack2x16float), rows zero-padded to whole groups of 4. A step is 4 halves.

// w: [n, steps] vec2<u32>, each 4 f16 (element 4q + 2c + h in half h of component c) (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;

const XS: u32 = 1u;

alias WStep = vec2<u32>;

fn w_load(row: u32, q: u32) -> WStep {
    return w[row * p.steps + q];
}

fn x_vec(q: u32, s: u32) -> u32 {
    return q;
}

fn w_vec(ws: WStep, s: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(ws.x), unpack2x16float(ws.y));
}
