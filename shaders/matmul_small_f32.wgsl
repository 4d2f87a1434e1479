// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for a few rows of x
// (2..=64: speculation trees, short prompts; more rows take more z blocks). Laid out for CPU
// drivers, where a workgroup's invocations are the SIMD lanes of one thread and every buffer load
// is paid per lane: each invocation computes a register tile of TR rows x TC weight rows (output
// columns), so per vec4 step it loads TR + TC vec4s and does TR * TC vec4 dot products. Lanes of
// a workgroup take consecutive column tiles of the same row tile (their x loads share addresses).
// No workgroup memory, no barriers.

override HAS_BIAS: bool = false;
// invocations per workgroup
override WG: u32 = 32u;

struct Params {
    // rows of x
    m: u32,
    // weight rows in this chunk
    n: u32,
    // input features
    k: u32,
    // vec4s per weight row (rows are zero-padded to a multiple of 4)
    k4: u32,
    // floats per output row
    out_stride: u32,
    // first output column written by this dispatch
    col_offset: u32,
    // workgroups along the weight rows (grid.x * grid.y covers them; grid.z covers row tiles)
    col_groups: u32,
    _pad: u32,
}

// rows of x per invocation
const TR: u32 = 4u;
// weight rows (output columns) per invocation
const TC: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [m, k] (as vec4s; rows are vec4-aligned only when k is a multiple of 4)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// w: [n, k4] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// out: [m, out_stride]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

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
    let j0 = (group * WG + lid) * TC;
    let i0 = wid.z * TR;
    // Tiles past n or m compute copies of the last row / column and write nothing.
    let kv = select(0u, p.k / 4u, p.k % 4u == 0u);
    let wr0 = min(j0 + 0u, p.n - 1u) * p.k4;
    let wr1 = min(j0 + 1u, p.n - 1u) * p.k4;
    let wr2 = min(j0 + 2u, p.n - 1u) * p.k4;
    let wr3 = min(j0 + 3u, p.n - 1u) * p.k4;
    let wr4 = min(j0 + 4u, p.n - 1u) * p.k4;
    let wr5 = min(j0 + 5u, p.n - 1u) * p.k4;
    let wr6 = min(j0 + 6u, p.n - 1u) * p.k4;
    let wr7 = min(j0 + 7u, p.n - 1u) * p.k4;
    let xr0 = min(i0 + 0u, p.m - 1u) * kv;
    let xr1 = min(i0 + 1u, p.m - 1u) * kv;
    let xr2 = min(i0 + 2u, p.m - 1u) * kv;
    let xr3 = min(i0 + 3u, p.m - 1u) * kv;
    var a0_0 = 0.0;
    var a0_1 = 0.0;
    var a0_2 = 0.0;
    var a0_3 = 0.0;
    var a0_4 = 0.0;
    var a0_5 = 0.0;
    var a0_6 = 0.0;
    var a0_7 = 0.0;
    var a1_0 = 0.0;
    var a1_1 = 0.0;
    var a1_2 = 0.0;
    var a1_3 = 0.0;
    var a1_4 = 0.0;
    var a1_5 = 0.0;
    var a1_6 = 0.0;
    var a1_7 = 0.0;
    var a2_0 = 0.0;
    var a2_1 = 0.0;
    var a2_2 = 0.0;
    var a2_3 = 0.0;
    var a2_4 = 0.0;
    var a2_5 = 0.0;
    var a2_6 = 0.0;
    var a2_7 = 0.0;
    var a3_0 = 0.0;
    var a3_1 = 0.0;
    var a3_2 = 0.0;
    var a3_3 = 0.0;
    var a3_4 = 0.0;
    var a3_5 = 0.0;
    var a3_6 = 0.0;
    var a3_7 = 0.0;
    for (var q = 0u; q < kv; q++) {
        let x0 = x[xr0 + q];
        let x1 = x[xr1 + q];
        let x2 = x[xr2 + q];
        let x3 = x[xr3 + q];
        let w0 = w[wr0 + q];
        a0_0 += dot(x0, w0);
        a1_0 += dot(x1, w0);
        a2_0 += dot(x2, w0);
        a3_0 += dot(x3, w0);
        let w1 = w[wr1 + q];
        a0_1 += dot(x0, w1);
        a1_1 += dot(x1, w1);
        a2_1 += dot(x2, w1);
        a3_1 += dot(x3, w1);
        let w2 = w[wr2 + q];
        a0_2 += dot(x0, w2);
        a1_2 += dot(x1, w2);
        a2_2 += dot(x2, w2);
        a3_2 += dot(x3, w2);
        let w3 = w[wr3 + q];
        a0_3 += dot(x0, w3);
        a1_3 += dot(x1, w3);
        a2_3 += dot(x2, w3);
        a3_3 += dot(x3, w3);
        let w4 = w[wr4 + q];
        a0_4 += dot(x0, w4);
        a1_4 += dot(x1, w4);
        a2_4 += dot(x2, w4);
        a3_4 += dot(x3, w4);
        let w5 = w[wr5 + q];
        a0_5 += dot(x0, w5);
        a1_5 += dot(x1, w5);
        a2_5 += dot(x2, w5);
        a3_5 += dot(x3, w5);
        let w6 = w[wr6 + q];
        a0_6 += dot(x0, w6);
        a1_6 += dot(x1, w6);
        a2_6 += dot(x2, w6);
        a3_6 += dot(x3, w6);
        let w7 = w[wr7 + q];
        a0_7 += dot(x0, w7);
        a1_7 += dot(x1, w7);
        a2_7 += dot(x2, w7);
        a3_7 += dot(x3, w7);
    }
    for (var e = kv * 4u; e < p.k; e++) {
        let q = e / 4u;
        let comp = e % 4u;
        let xe0 = min(i0 + 0u, p.m - 1u) * p.k + e;
        let x0 = x[xe0 / 4u][xe0 % 4u];
        let xe1 = min(i0 + 1u, p.m - 1u) * p.k + e;
        let x1 = x[xe1 / 4u][xe1 % 4u];
        let xe2 = min(i0 + 2u, p.m - 1u) * p.k + e;
        let x2 = x[xe2 / 4u][xe2 % 4u];
        let xe3 = min(i0 + 3u, p.m - 1u) * p.k + e;
        let x3 = x[xe3 / 4u][xe3 % 4u];
        let w0 = w[wr0 + q][comp];
        a0_0 = fma(x0, w0, a0_0);
        a1_0 = fma(x1, w0, a1_0);
        a2_0 = fma(x2, w0, a2_0);
        a3_0 = fma(x3, w0, a3_0);
        let w1 = w[wr1 + q][comp];
        a0_1 = fma(x0, w1, a0_1);
        a1_1 = fma(x1, w1, a1_1);
        a2_1 = fma(x2, w1, a2_1);
        a3_1 = fma(x3, w1, a3_1);
        let w2 = w[wr2 + q][comp];
        a0_2 = fma(x0, w2, a0_2);
        a1_2 = fma(x1, w2, a1_2);
        a2_2 = fma(x2, w2, a2_2);
        a3_2 = fma(x3, w2, a3_2);
        let w3 = w[wr3 + q][comp];
        a0_3 = fma(x0, w3, a0_3);
        a1_3 = fma(x1, w3, a1_3);
        a2_3 = fma(x2, w3, a2_3);
        a3_3 = fma(x3, w3, a3_3);
        let w4 = w[wr4 + q][comp];
        a0_4 = fma(x0, w4, a0_4);
        a1_4 = fma(x1, w4, a1_4);
        a2_4 = fma(x2, w4, a2_4);
        a3_4 = fma(x3, w4, a3_4);
        let w5 = w[wr5 + q][comp];
        a0_5 = fma(x0, w5, a0_5);
        a1_5 = fma(x1, w5, a1_5);
        a2_5 = fma(x2, w5, a2_5);
        a3_5 = fma(x3, w5, a3_5);
        let w6 = w[wr6 + q][comp];
        a0_6 = fma(x0, w6, a0_6);
        a1_6 = fma(x1, w6, a1_6);
        a2_6 = fma(x2, w6, a2_6);
        a3_6 = fma(x3, w6, a3_6);
        let w7 = w[wr7 + q][comp];
        a0_7 = fma(x0, w7, a0_7);
        a1_7 = fma(x1, w7, a1_7);
        a2_7 = fma(x2, w7, a2_7);
        a3_7 = fma(x3, w7, a3_7);
    }
    let acc = array<array<f32, TC>, TR>(array<f32, TC>(a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7), array<f32, TC>(a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7), array<f32, TC>(a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7), array<f32, TC>(a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7));
    for (var r = 0u; r < TR; r++) {
        let i = i0 + r;
        if i >= p.m {
            break;
        }
        let ob = i * p.out_stride + p.col_offset;
        for (var c = 0u; c < TC; c++) {
            let j = j0 + c;
            if j < p.n {
                var y = acc[r][c];
                if HAS_BIAS {
                    y += bias[p.col_offset + j];
                }
                out[ob + j] = y;
            }
        }
    }
}
