// Strided row copy: dst[dst_row(r) * dst_stride + dst_col + c] = src[r * src_stride + src_col + c]
// for r < rows, c < cols. dst_row(r) = idx[r] when INDEXED (scatter_rows), else dst_row0 + r
// (concat_cols writes each part at its column offset). Contiguous slices and prepends are plain
// buffer copies on the host side and do not come here.

override INDEXED: bool = false;

struct Params {
    rows: u32,
    cols: u32,
    src_stride: u32,
    src_col: u32,
    dst_stride: u32,
    dst_col: u32,
    dst_row0: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// src: [rows, src_stride]
@group(0) @binding(1) var<storage, read> src: array<f32>;
// idx: [rows] destination row of each source row (read only when INDEXED)
@group(0) @binding(2) var<storage, read> idx: array<u32>;
// dst: [*, dst_stride]
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.rows * p.cols {
        return;
    }
    let r = i / p.cols;
    let c = i - r * p.cols;
    var dr = p.dst_row0 + r;
    if INDEXED {
        dr = idx[r];
    }
    dst[dr * p.dst_stride + p.dst_col + c] = src[r * p.src_stride + p.src_col + c];
}
