// out[0, col_offset + j] = dot(x[0, :], w[j, :]) + bias[col_offset + j] for one row of x
// (decoding): a bandwidth-bound matrix-vector product.
// Each workgroup computes RPW = GROUPS * RPT outputs. The TPR invocations of a group walk the k
// axis together in vec4 steps (consecutive invocations read consecutive vec4s: coalesced on GPUs,
// contiguous SIMD loads on CPU drivers); each invocation serves RPT weight rows, so every x vec4
// it loads is used RPT times. One barrier, then a short serial sum per output row.

override HAS_BIAS: bool = false;

struct Params {
    // weight rows in this chunk (outputs written by this dispatch)
    n: u32,
    // input features
    k: u32,
    // vec4s per weight row (row stride / 4; rows are zero-padded to a multiple of 4)
    k4: u32,
    // floats per output row
    out_stride: u32,
    // first output column written by this dispatch (the chunk's first weight row)
    col_offset: u32,
    // the row of x (and of out) this dispatch computes: 0, or one row of a batch that a CPU
    // driver runs as mat-vecs (x rows then hold a multiple of 4 floats)
    x_row: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
// invocations per group (sharing the k axis)
const TPR: u32 = 32u;
// groups per workgroup
const GROUPS: u32 = 8u;
// weight rows per invocation
const RPT: u32 = 4u;
// weight rows per workgroup
const RPW: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [1, k] as vec4s; the buffer extends to a whole vec4 (pool sizes are multiples of 16 bytes)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// w: [n, k4] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// out: [1, out_stride]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 1024>; // RPT * WG

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wid.y * nwg.x + wid.x;
    if block * RPW >= p.n {
        return;
    }
    let g = lid / TPR;
    let t = lid % TPR;
    // Rows j0, j0 + GROUPS, j0 + 2 * GROUPS, ... of this workgroup's block (clamped to the last
    // row: the duplicates are computed but never written).
    let j0 = block * RPW + g;
    var rows: array<u32, RPT>;
    for (var r = 0u; r < RPT; r++) {
        rows[r] = min(j0 + r * GROUPS, p.n - 1u) * p.k4;
    }
    var acc: array<vec4<f32>, RPT>;
    for (var r = 0u; r < RPT; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    // Whole vec4s of x, then the last partial one masked: past k the activation buffer holds
    // stale data (the padded weight columns there are zeros, but 0 * NaN is NaN).
    let full = p.k / 4u;
    for (var q = t; q < full; q += TPR) {
        let xv = x[p.x_row * (p.k / 4u) + q];
        for (var r = 0u; r < RPT; r++) {
            acc[r] = fma(xv, w[rows[r] + q], acc[r]);
        }
    }
    if t == full % TPR && full < p.k4 {
        let rem = p.k - full * 4u;
        let xv = select(vec4<f32>(0.0), x[p.x_row * (p.k / 4u) + full], vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(rem));
        for (var r = 0u; r < RPT; r++) {
            acc[r] = fma(xv, w[rows[r] + full], acc[r]);
        }
    }
    for (var r = 0u; r < RPT; r++) {
        red[r * WG + lid] = (acc[r].x + acc[r].y) + (acc[r].z + acc[r].w);
    }
    workgroupBarrier();
    // Invocation t < RPT of each group sums row r = t of that group.
    if t < RPT {
        let j = j0 + t * GROUPS;
        if j < p.n {
            let base = t * WG + g * TPR;
            var y = 0.0;
            for (var s = 0u; s < TPR; s++) {
                y += red[base + s];
            }
            if HAS_BIAS {
                y += bias[p.col_offset + j];
            }
            out[p.x_row * p.out_stride + p.col_offset + j] = y;
        }
    }
}
