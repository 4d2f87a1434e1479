// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for a few rows of x
// (2..=64: speculation trees, short prompts). Laid out for CPU drivers (lavapipe: a workgroup is
// one thread's task, invocations are SIMD lanes): invocation i of a workgroup owns row i of x and
// CPW consecutive weight rows, so every weight vec4 it loads is the same for all lanes (uniform
// address: one load broadcast to the SIMD vector) and each lane's x vec4 is reused CPW times.
// No workgroup memory, no barriers. TM (the workgroup size) is the rows of x per workgroup, chosen
// by the host as the smallest of 8 / 16 / 32 / 64 that covers m.

override HAS_BIAS: bool = false;
// rows of x per workgroup (= invocations per workgroup)
override TM: u32 = 16u;

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
    // workgroups along the weight rows (grid.x * grid.y covers them; grid.z covers row blocks)
    col_groups: u32,
    _pad: u32,
}

// weight rows (output columns) per workgroup
const CPW: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [m, k] (as vec4s; rows are vec4-aligned only when k is a multiple of 4)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// w: [n, k4] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// out: [m, out_stride]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn wrow(j: u32) -> u32 {
    return min(j, p.n - 1u) * p.k4;
}

@compute @workgroup_size(TM)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    if group >= p.col_groups {
        return;
    }
    // Rows past m compute a copy of row m - 1 and write nothing (no divergent branches around
    // the loads, which would keep the driver from treating the weight addresses as uniform).
    let i_out = wid.z * TM + lid;
    let i = min(i_out, p.m - 1u);
    let j0 = group * CPW;
    let r0 = wrow(j0 + 0u);
    let r1 = wrow(j0 + 1u);
    let r2 = wrow(j0 + 2u);
    let r3 = wrow(j0 + 3u);
    let r4 = wrow(j0 + 4u);
    let r5 = wrow(j0 + 5u);
    let r6 = wrow(j0 + 6u);
    let r7 = wrow(j0 + 7u);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    // Whole vec4 steps when x rows are vec4-aligned (k % 4 == 0); otherwise everything goes
    // through the scalar loop below.
    let kv = select(0u, p.k / 4u, p.k % 4u == 0u);
    let xrow = i * kv;
    for (var q = 0u; q < kv; q++) {
        let xv = x[xrow + q];
        a0 += dot(xv, w[r0 + q]);
        a1 += dot(xv, w[r1 + q]);
        a2 += dot(xv, w[r2 + q]);
        a3 += dot(xv, w[r3 + q]);
        a4 += dot(xv, w[r4 + q]);
        a5 += dot(xv, w[r5 + q]);
        a6 += dot(xv, w[r6 + q]);
        a7 += dot(xv, w[r7 + q]);
    }
    for (var e = kv * 4u; e < p.k; e++) {
        let xe = i * p.k + e;
        let xs = x[xe / 4u][xe % 4u];
        let q = e / 4u;
        let c = e % 4u;
        a0 = fma(xs, w[r0 + q][c], a0);
        a1 = fma(xs, w[r1 + q][c], a1);
        a2 = fma(xs, w[r2 + q][c], a2);
        a3 = fma(xs, w[r3 + q][c], a3);
        a4 = fma(xs, w[r4 + q][c], a4);
        a5 = fma(xs, w[r5 + q][c], a5);
        a6 = fma(xs, w[r6 + q][c], a6);
        a7 = fma(xs, w[r7 + q][c], a7);
    }
    if i_out >= p.m {
        return;
    }
    let acc = array<f32, CPW>(a0, a1, a2, a3, a4, a5, a6, a7);
    let ob = i_out * p.out_stride + p.col_offset;
    for (var c = 0u; c < CPW; c++) {
        let j = j0 + c;
        if j < p.n {
            var y = acc[c];
            if HAS_BIAS {
                y += bias[p.col_offset + j];
            }
            out[ob + j] = y;
        }
    }
}
