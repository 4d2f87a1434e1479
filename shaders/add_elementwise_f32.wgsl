// out = a + b, elementwise over [rows, cols]. `b` is either a tensor of the same shape
// (b_stride == cols) or a weight whose rows are padded to b_stride floats (learned position
// embeddings), of which only the first cols of each row are read.

struct Params {
    rows: u32,
    cols: u32,
    b_stride: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// a: [rows, cols]
@group(0) @binding(1) var<storage, read> a: array<f32>;
// b: [rows, b_stride]
@group(0) @binding(2) var<storage, read> b: array<f32>;
// out: [rows, cols]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Grids wider than 65535 workgroups wrap into y.
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.rows * p.cols {
        return;
    }
    let r = i / p.cols;
    let c = i - r * p.cols;
    out[i] = a[i] + b[r * p.b_stride + c];
}
