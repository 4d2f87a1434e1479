// out[0, col_offset + j] = dot(x[0, :], w[j, :]) + bias[col_offset + j] for one row of x
// (decoding). Each workgroup computes RPW outputs; TPR invocations share one weight row and read it
// as consecutive vec4s (coalesced), then reduce their partial sums in workgroup memory. x is staged
// in workgroup memory tile by tile, zero-padded past k, so the padded weight columns multiply zeros.

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
// vec4s of x per workgroup-memory tile
const XT: u32 = 512u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [1, k]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [n, k4] vec4s (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// out: [1, out_stride]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> xs: array<vec4<f32>, XT>;
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
    for (var q0 = 0u; q0 < p.k4; q0 += XT) {
        for (var q = lid; q < XT; q += WG) {
            let e = (q0 + q) * 4u;
            var v = vec4<f32>(0.0);
            if e + 3u < p.k {
                v = vec4<f32>(x[e], x[e + 1u], x[e + 2u], x[e + 3u]);
            } else if e < p.k {
                v.x = x[e];
                if e + 1u < p.k {
                    v.y = x[e + 1u];
                }
                if e + 2u < p.k {
                    v.z = x[e + 2u];
                }
            }
            xs[q] = v;
        }
        workgroupBarrier();
        if j < p.n {
            let q_end = min(XT, p.k4 - q0);
            let row = j * p.k4 + q0;
            for (var q = t; q < q_end; q += TPR) {
                acc = fma(xs[q], w[row + q], acc);
            }
        }
        workgroupBarrier();
    }
    red[lid] = (acc.x + acc.y) + (acc.z + acc.w);
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
        if t < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    if t == 0u && j < p.n {
        var y = red[lid];
        if HAS_BIAS {
            y += bias[p.col_offset + j];
        }
        out[p.col_offset + j] = y;
    }
}
