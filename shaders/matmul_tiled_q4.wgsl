// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for many rows of x
// (prefill, the vision tower): a classic workgroup-memory tiled GEMM. Each workgroup computes a
// BM x BN output tile in BK-wide steps over k; each of its 256 invocations owns a 4x4 block.
// This is matmul_tiled_f32 with q4 weights (src/quant.rs: GGML Q4_0 blocks of 32, planar:
// codes row-major, f16 scales separately), dequantized as the weight tile is loaded into workgroup
// memory (each weight is then used BM times).

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
    // blocks (scales) per weight row: ceil(k / 32)
    nb: u32,
    _pad0: u32,
}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [m, k]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [n, row_words] u32, 4 words per block; word i of block b holds elements 32b + 4i.. in its
// low nibbles and 32b + 16 + 4i.. in its high nibbles (this chunk)
@group(0) @binding(2) var<storage, read> w: array<u32>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// out: [m, out_stride]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// Weight (j, kk) dequantized: scale * (nibble - 8).
fn wval(j: u32, kk: u32) -> f32 {
    let b = kk / 32u;
    let e = kk % 32u;
    let wd = w[j * p.row_words + b * 4u + (e % 16u) / 4u];
    let code = (wd >> (8u * (e % 4u) + 4u * (e / 16u))) & 15u;
    let i = j * p.nb + b;
    return unpack2x16float(scales[i >> 1u])[i & 1u] * (f32(code) - 8.0);
}

// Tiles stored k-major so the inner loop reads consecutive rows/columns.
var<workgroup> xs: array<f32, 1024>; // [BK][BM]
var<workgroup> ws: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tx = lid3.x;
    let ty = lid3.y;
    var acc: array<vec4<f32>, 4>;
    for (var a = 0u; a < 4u; a++) {
        acc[a] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 256 invocations load 1024 values of each tile: 4 each.
        for (var e = lid; e < BM * BK; e += 256u) {
            let r = e / BK;
            let kk = e - r * BK;
            let gi = row0 + r;
            let gk = k0 + kk;
            var xv = 0.0;
            if gi < p.m && gk < p.k {
                xv = x[gi * p.k + gk];
            }
            xs[kk * BM + r] = xv;
            let gj = col0 + r;
            var wv = 0.0;
            if gj < p.n && gk < p.k {
                wv = wval(gj, gk);
            }
            ws[kk * BN + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let xv = vec4<f32>(xs[kk * BM + ty * 4u], xs[kk * BM + ty * 4u + 1u], xs[kk * BM + ty * 4u + 2u],
                xs[kk * BM + ty * 4u + 3u]);
            let wv = vec4<f32>(ws[kk * BN + tx * 4u], ws[kk * BN + tx * 4u + 1u], ws[kk * BN + tx * 4u + 2u],
                ws[kk * BN + tx * 4u + 3u]);
            acc[0] = fma(vec4<f32>(xv.x), wv, acc[0]);
            acc[1] = fma(vec4<f32>(xv.y), wv, acc[1]);
            acc[2] = fma(vec4<f32>(xv.z), wv, acc[2]);
            acc[3] = fma(vec4<f32>(xv.w), wv, acc[3]);
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        let i = row0 + ty * 4u + a;
        if i >= p.m {
            break;
        }
        for (var b = 0u; b < 4u; b++) {
            let j = col0 + tx * 4u + b;
            if j < p.n {
                var y = acc[a][b];
                if HAS_BIAS {
                    y += bias[p.col_offset + j];
                }
                out[i * p.out_stride + p.col_offset + j] = y;
            }
        }
    }
}
