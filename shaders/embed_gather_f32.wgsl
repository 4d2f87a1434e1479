// Embedding lookup: out[i, :] = table[ids[i], :] for the ids that fall in this chunk of the table
// (tables larger than one storage binding are split by rows; one dispatch per chunk).

struct Params {
    n: u32,
    dim: u32,
    // floats per table row (rows are padded to a multiple of 4)
    table_stride: u32,
    // first table row held by this chunk
    row_start: u32,
    // rows held by this chunk
    rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// ids: [n]
@group(0) @binding(1) var<storage, read> ids: array<u32>;
// table: [rows, table_stride] (this chunk)
@group(0) @binding(2) var<storage, read> table: array<f32>;
// out: [n, dim]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.n * p.dim {
        return;
    }
    let t = i / p.dim;
    let c = i - t * p.dim;
    let id = ids[t];
    if id >= p.row_start && id - p.row_start < p.rows {
        out[i] = table[(id - p.row_start) * p.table_stride + c];
    }
}
