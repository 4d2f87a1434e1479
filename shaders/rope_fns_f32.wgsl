// The rotate-half rotary embedding of one element (transformers' Llama convention), shared by the
// kernels that rotate (WGSL has no imports: prepended when the pipeline is built). Element d of a
// head pairs with d + half (d < half) or d - half (half <= d < 2 * half); t = (cos, sin) of the
// pair's angle at the token's position (a host-made table: see rope_rows_f32.wgsl).

fn rope_partner(d: u32, half: u32) -> u32 {
    return select(d - half, d + half, d < half);
}

fn rope_rotated(own: f32, partner: f32, t: vec2<f32>, d: u32, half: u32) -> f32 {
    if d < half {
        return own * t.x - partner * t.y;
    }
    return own * t.x + partner * t.y;
}
