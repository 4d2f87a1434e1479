// out[0, col_offset + j] = dot(x[0, :], w[j, :]) + bias[col_offset + j] for one row of x
// (decoding). Each workgroup computes RPW outputs; TPR invocations share one weight row, reading it
// as consecutive vec4s (coalesced on GPUs, contiguous SIMD loads on CPU drivers), then one barrier
// and a short serial sum per row. The main loop has no barriers (lavapipe pays dearly for them).

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
// invocations per weight row
const TPR: u32 = 32u;
// weight rows per workgroup
const RPW: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [1, k]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [n, k4] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// out: [1, out_stride]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    if group * RPW >= p.n {
        return;
    }
    let g = lid / TPR;
    let t = lid % TPR;
    let j = group * RPW + g;
    var acc = vec4<f32>(0.0);
    if j < p.n {
        let row = j * p.k4;
        // Whole vec4s of x; the last partial one (k % 4 != 0) is read with bounds checks, because
        // past k the activation buffer holds stale data (the padded weights there are zeros).
        let full = p.k / 4u;
        for (var q = t; q < full; q += TPR) {
            let e = q * 4u;
            acc = fma(vec4<f32>(x[e], x[e + 1u], x[e + 2u], x[e + 3u]), w[row + q], acc);
        }
        if t == full % TPR && full < p.k4 {
            let e = full * 4u;
            var v = vec4<f32>(x[e], 0.0, 0.0, 0.0);
            if e + 1u < p.k {
                v.y = x[e + 1u];
            }
            if e + 2u < p.k {
                v.z = x[e + 2u];
            }
            acc = fma(v, w[row + full], acc);
        }
    }
    red[lid] = (acc.x + acc.y) + (acc.z + acc.w);
    workgroupBarrier();
    if t == 0u && j < p.n {
        var y = 0.0;
        for (var s = 0u; s < TPR; s++) {
            y += red[lid + s];
        }
        if HAS_BIAS {
            y += bias[p.col_offset + j];
        }
        out[p.col_offset + j] = y;
    }
}
