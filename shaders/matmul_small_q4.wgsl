// out[i, col_offset + j] = dot(x[i, :], dequant(w[j, :])) + bias[col_offset + j] for a few rows of
// x (2..=64: speculation trees, short prompts), with q4 weights (src/quant.rs: GGML Q4_0 blocks,
// value = scale * (code - 8), planar: codes row-major, f16 scales separately).
// Layout as matmul_small_f32: each workgroup computes RPW weight rows x TM rows of x; TPR
// invocations share one weight row, walking its code words (word i of block b: elements 32b + 4i..
// in the low nibbles, 32b + 16 + 4i.. in the high ones); each word is dequantized once and used TM
// times; partial sums reduce in workgroup memory.

override HAS_BIAS: bool = false;

struct Params {
    // rows of x
    m: u32,
    // weight rows in this chunk
    n: u32,
    // input features
    k: u32,
    // u32 code words per weight row (blocks per row * 4)
    row_words: u32,
    // floats per output row
    out_stride: u32,
    // first output column written by this dispatch
    col_offset: u32,
    // workgroups along the weight rows (grid.x * grid.y covers them; grid.z covers row blocks)
    col_groups: u32,
    // blocks (scales) per weight row: ceil(k / 32)
    nb: u32,
}

const WG: u32 = 256u;
const TPR: u32 = 32u;
const RPW: u32 = 8u;
// rows of x per workgroup
const TM: u32 = 8u;
// code words per block of 32
const WPB: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [m, k]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [n, row_words] u32, each 8 nibble codes (see above) (this chunk)
@group(0) @binding(2) var<storage, read> w: array<u32>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// out: [m, out_stride]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 2048>; // TM * WG

fn scale(i: u32) -> f32 {
    return unpack2x16float(scales[i >> 1u])[i & 1u];
}

// The low (elements 4i..4i+3 of the block) and high (16 + 4i..) nibbles of a word, minus 8.
fn lo(wd: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(wd, wd >> 8u, wd >> 16u, wd >> 24u) & vec4<u32>(15u)) - 8.0;
}
fn hi(wd: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(wd >> 4u, wd >> 12u, wd >> 20u, wd >> 28u) & vec4<u32>(15u)) - 8.0;
}

// x[row, 4q..4q+4], zero past k.
fn x4(row: u32, q: u32) -> vec4<f32> {
    let e = q * 4u;
    let base = row * p.k;
    if e + 3u < p.k {
        return vec4<f32>(x[base + e], x[base + e + 1u], x[base + e + 2u], x[base + e + 3u]);
    }
    var v = vec4<f32>(0.0);
    if e < p.k {
        v.x = x[base + e];
    }
    if e + 1u < p.k {
        v.y = x[base + e + 1u];
    }
    if e + 2u < p.k {
        v.z = x[base + e + 2u];
    }
    return v;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    if group >= p.col_groups {
        return;
    }
    let g = lid / TPR;
    let t = lid % TPR;
    let j = group * RPW + g;
    let i0 = wid.z * TM;
    let rows = min(TM, p.m - i0);
    var acc: array<vec4<f32>, TM>;
    for (var r = 0u; r < TM; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    if j < p.n {
        for (var q = t; q < p.row_words; q += TPR) {
            let b = q / WPB;
            let i = q % WPB;
            let s = scale(j * p.nb + b);
            let wd = w[j * p.row_words + q];
            let wl = s * lo(wd);
            let wh = s * hi(wd);
            for (var r = 0u; r < rows; r++) {
                acc[r] = fma(x4(i0 + r, b * 8u + i), wl, fma(x4(i0 + r, b * 8u + 4u + i), wh, acc[r]));
            }
        }
    }
    for (var r = 0u; r < TM; r++) {
        red[r * WG + lid] = (acc[r].x + acc[r].y) + (acc[r].z + acc[r].w);
    }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
        if t < s {
            for (var r = 0u; r < TM; r++) {
                red[r * WG + lid] += red[r * WG + lid + s];
            }
        }
        workgroupBarrier();
    }
    // Invocation t < rows of each group writes row i0 + t of its output column.
    if t < rows && j < p.n {
        var y = red[t * WG + g * TPR];
        if HAS_BIAS {
            y += bias[p.col_offset + j];
        }
        out[(i0 + t) * p.out_stride + p.col_offset + j] = y;
    }
}
