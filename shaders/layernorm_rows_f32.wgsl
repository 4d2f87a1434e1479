// LayerNorm over each row: out = (x - mean) / sqrt(var + eps) * w + b, with the biased variance
// computed in a second pass over (x - mean), as the CPU reference does. One workgroup per row.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [rows, cols]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [cols]
@group(0) @binding(2) var<storage, read> w: array<f32>;
// b: [cols]
@group(0) @binding(3) var<storage, read> b: array<f32>;
// out: [rows, cols]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, WG>;

// Sum of `v` over the workgroup, returned to every invocation.
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += x[base + c];
    }
    let mean = workgroup_sum(s, lid) / n;
    var sq = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = x[base + c] - mean;
        sq += d * d;
    }
    let variance = workgroup_sum(sq, lid) / n;
    let inv = 1.0 / sqrt(variance + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = (x[base + c] - mean) * inv * w[c] + b[c];
    }
}
