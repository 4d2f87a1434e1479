// How a lane of matmul_vec.wgsl adds a step to its sums with packed 8-bit dot products (q8 / q4
// weights, GpuOptions::int8_dot; src/quant/int8.rs is the reference and says why each step is
// exact): per block of 32, x is quantized to 8-bit codes with a power-of-two scale, each
// (x row, weight row) pair takes 8 dot4I8Packed of code words, and the block's term is
// fma(f32(dot), d_w * s_x, acc). Needs the weight snippet's w_codes / W_ZERO. Appended when the
// pipeline is built.
//
// Only the .x lane of each vec4 partial is used: (x + 0) + (0 + 0) = x, so matmul_vec's
// reduction and epilogues are unchanged.

// A block of x row i, step q: its 8 code words, scale and code sum.
struct XBlock {
    words: array<u32, 8>,
    scale: f32,
    sum: i32,
}

// Biased exponents of a block's largest |x| below this quantize to zero (a subnormal scale).
const MIN_EXPONENT: u32 = 7u;

fn x_block(i: u32, q: u32, inv: f32) -> XBlock {
    var xv: array<vec4<f32>, 8>;
    var amax = 0.0;
    // Inf and NaN, found by their exponent bits (max() may drop a NaN); `special` keeps one.
    var found = false;
    var special = 0.0;
    let exponent = vec4<u32>(0x7f800000u);
    for (var s = 0u; s < 8u; s++) {
        xv[s] = xn4(i, x_vec(q, s), inv);
        let a = abs(xv[s]);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
        let hit = (bitcast<vec4<u32>>(a) & exponent) == exponent;
        if any(hit) {
            found = true;
            special = dot(select(vec4<f32>(0.0), a, hit), vec4<f32>(1.0));
        }
    }
    var b: XBlock;
    if found {
        // Zero codes and an Inf or NaN scale make every term NaN (0 * Inf is NaN), as f32 sums
        // would be NaN or Inf. (A NaN literal is not valid WGSL.)
        b.scale = special;
        return b;
    }
    // amax = 1.f * 2^(e - 127): x * 2^(133 - e) lies in (-128, 128), exactly.
    let e = bitcast<u32>(amax) >> 23u;
    if e < MIN_EXPONENT {
        return b;
    }
    let up = bitcast<f32>((260u - e) << 23u);
    for (var s = 0u; s < 8u; s++) {
        let c = vec4<i32>(clamp(round(xv[s] * up), vec4<f32>(-127.0), vec4<f32>(127.0)));
        b.words[s] = pack4xI8(c);
        b.sum += dot4I8Packed(b.words[s], 0x01010101u);
    }
    b.scale = bitcast<f32>((e - 6u) << 23u);
    return b;
}

// Adds to `acc` step q (one block) of the weight rows loaded in `ws`, for x rows xi[0..XR].
fn add_step(
    acc: ptr<function, Acc>,
    ws: ptr<function, array<WStep, RPT>>,
    q: u32,
    xi: ptr<function, array<u32, MAX_XR>>,
    inv: ptr<function, array<f32, MAX_XR>>,
) {
    var xb: array<XBlock, MAX_XR>;
    for (var i = 0u; i < XR; i++) {
        xb[i] = x_block((*xi)[i], q, (*inv)[i]);
    }
    for (var r = 0u; r < RPT; r++) {
        for (var i = 0u; i < XR; i++) {
            var dot = -W_ZERO * xb[i].sum;
            for (var s = 0u; s < 8u; s++) {
                dot += dot4I8Packed(xb[i].words[s], w_codes((*ws)[r], s));
            }
            (*acc)[i][r].x = fma(f32(dot), (*ws)[r].scale * xb[i].scale, (*acc)[i][r].x);
        }
    }
}
