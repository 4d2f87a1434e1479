// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for many rows of x
// (prefill, the vision tower): a classic workgroup-memory tiled GEMM, with the weight format
// supplied by a loader snippet (shaders/weights_{f32,f16,q8,q4}.wgsl, appended when the pipeline
// is built; x is read through x4, matmul_x.wgsl). Each workgroup computes a BM x BN output tile
// in BK-wide steps over k; each of its 256 invocations owns a 4x4 block. Weights are dequantized
// as the tile is loaded into workgroup memory, so each is used BM times.
//
// Not batch-invariant (an output's sum order follows the tiles): it runs only above 64 rows of x,
// never for a speculation tree, whose rows take matmul_vec / matmul_small.

override HAS_BIAS: bool = false;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// Params and bindings 0, 1, 4, 5: matmul_io.wgsl; bindings 2, 3: the weight-format snippet.

// Weight row j, elements 4v..4v + 4: zero past k (rows are padded only to the loader's step, and
// 0 * NaN is NaN) and past n.
fn w4(j: u32, v: u32) -> vec4<f32> {
    if j >= p.n || v * 4u >= p.k {
        return vec4<f32>(0.0);
    }
    return w_vec(w_load(j, v / XS), v % XS);
}

// Tiles stored k-major so the inner loop reads consecutive rows / columns.
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
    // Each invocation loads one vec4 of each tile per step: row r of the tile, k part `part`.
    let r = lid / 4u;
    let part = lid % 4u;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let v = k0 / 4u + part;
        let gi = row0 + r;
        var xl = vec4<f32>(0.0);
        if gi < p.m {
            xl = x4(gi, v);
        }
        let wl = w4(col0 + r, v);
        for (var c = 0u; c < 4u; c++) {
            xs[(part * 4u + c) * BM + r] = xl[c];
            ws[(part * 4u + c) * BN + r] = wl[c];
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
