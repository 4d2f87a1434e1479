// RMSNorm over each row: out = w * (x * inv), inv = 1 / sqrt(mean(x^2) + eps), as the CPU
// reference computes it. One workgroup per row.
//
// The sum of squares follows the canonical order of the norm fused into the matmuls' prologue
// (matmul_x.wgsl, NORM): NORM_PARTS partial fma chains, chain t over the row's vec4s t,
// t + NORM_PARTS, ..., each reduced (x + y) + (z + w), then added in t order. So a norm run here
// (before the tiled GEMM of a long prompt) and one fused into a mat-vec give the same bits.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 256u;
const NORM_PARTS: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [rows, cols]
@group(0) @binding(1) var<storage, read> x: array<f32>;
// w: [cols]
@group(0) @binding(2) var<storage, read> w: array<f32>;
// out: [rows, cols]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> parts: array<f32, NORM_PARTS>;

// x[row, 4v..4v + 4] from the row starting at `base`, zero past cols.
fn x4(base: u32, v: u32) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if v * 4u + c < p.cols {
            a[c] = x[base + v * 4u + c];
        }
    }
    return a;
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
    if lid < NORM_PARTS {
        var acc = vec4<f32>(0.0);
        for (var v = lid; v < (p.cols + 3u) / 4u; v += NORM_PARTS) {
            let a = x4(base, v);
            acc = fma(a, a, acc);
        }
        parts[lid] = (acc.x + acc.y) + (acc.z + acc.w);
    }
    workgroupBarrier();
    var sum = 0.0;
    for (var t = 0u; t < NORM_PARTS; t++) {
        sum += parts[t];
    }
    let inv = 1.0 / sqrt(sum / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = w[c] * (x[base + c] * inv);
    }
}
