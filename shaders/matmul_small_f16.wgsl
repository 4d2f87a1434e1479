// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for a few rows of x
// (2..=64: speculation trees, short prompts). Each workgroup computes RPW weight rows x TM rows of
// x, so every weight vec4 it loads is used TM times; TPR invocations share one weight row (coalesced
// vec4 loads) and reduce in workgroup memory. x rows are read from global memory (small, cached).
// This is matmul_small_f32 with f16 weights packed two per u32 (no shader-f16: unpack2x16float).

override HAS_BIAS: bool = false;

struct Params {
    // rows of x
    m: u32,
    // weight rows in this chunk
    n: u32,
    // input features
    k: u32,
    // vec2<u32> (4 halves) per weight row (rows are zero-padded to a multiple of 4 halves)
    k4: u32,
    // floats per output row
    out_stride: u32,
    // first output column written by this dispatch
    col_offset: u32,
    // workgroups along the weight rows (grid.x * grid.y covers them; grid.z covers row blocks)
    col_groups: u32,
    _pad: u32,
}

const WG: u32 = 256u;
const TPR: u32 = 32u;
const RPW: u32 = 8u;
// rows of x per workgroup
const TM: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [m, k]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [n, k4] vec2<u32>, each 4 f16 (element 4q + 2c + h in half h of component c) (this chunk)
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// out: [m, out_stride]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 2048>; // TM * WG

fn halves(v: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
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
        let row = j * p.k4;
        for (var q = t; q < p.k4; q += TPR) {
            let wv = halves(w[row + q]);
            for (var r = 0u; r < rows; r++) {
                acc[r] = fma(x4(i0 + r, q), wv, acc[r]);
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
