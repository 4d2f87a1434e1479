// out[0, col_offset + j] = dot(x[0, :], dequant(w[j, :])) + bias[col_offset + j] for one row of x
// (decoding), with q8 weights (src/quant.rs: GGML Q8_0 blocks of 32 int8 codes and one f16 scale,
// stored planar: codes row-major, scales separately).
// Layout as matmul_vec_f32: each workgroup computes RPW = GROUPS * RPT outputs; the TPR
// invocations of a group walk a row's code words together (word q holds elements 4q..4q+3, so it
// pairs with x vec4 q), each serving RPT weight rows. Codes are sign-extended with shifts (no
// unpack4x8snorm), scaled per word, summed in f32.

override HAS_BIAS: bool = false;

struct Params {
    // weight rows in this chunk (outputs written by this dispatch)
    n: u32,
    // input features
    k: u32,
    // u32 code words per weight row (blocks per row * 8)
    row_words: u32,
    // floats per output row
    out_stride: u32,
    // first output column written by this dispatch (the chunk's first weight row)
    col_offset: u32,
    // blocks (scales) per weight row: ceil(k / 32)
    nb: u32,
    // the row of x (and of out) this dispatch computes: 0, or one row of a batch that a CPU
    // driver runs as mat-vecs (x rows then hold a multiple of 4 floats)
    x_row: u32,
    _pad1: u32,
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
// code words per block of 32
const WPB: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
// x: [1, k] as vec4s; the buffer extends to a whole vec4 (pool sizes are multiples of 16 bytes)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// w: [n, row_words] u32, each 4 int8 codes, element 4q + b in byte b of word q (this chunk)
@group(0) @binding(2) var<storage, read> w: array<u32>;
// scales: [n, nb] f16, two per u32 (low half first) (this chunk)
@group(0) @binding(3) var<storage, read> scales: array<u32>;
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// out: [1, out_stride]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 1024>; // RPT * WG

fn scale(i: u32) -> f32 {
    return unpack2x16float(scales[i >> 1u])[i & 1u];
}

// The four int8 codes of a word, sign-extended.
fn codes(wd: u32) -> vec4<f32> {
    let s = bitcast<vec4<i32>>(vec4<u32>(wd << 24u, wd << 16u, wd << 8u, wd));
    return vec4<f32>(s >> vec4<u32>(24u));
}

// x[4q..4q+4], zero past k (past k the buffer holds stale data: the zero codes there would give
// 0 * NaN = NaN).
fn xq(q: u32) -> vec4<f32> {
    let e = q * 4u;
    if e + 4u <= p.k {
        return x[p.x_row * (p.k / 4u) + q];
    }
    return select(vec4<f32>(0.0), x[p.x_row * (p.k / 4u) + q], vec4<u32>(e, e + 1u, e + 2u, e + 3u) < vec4<u32>(p.k));
}

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
    // Rows j0, j0 + GROUPS, ... (clamped to the last row: duplicates are computed, never written).
    let j0 = block * RPW + g;
    var rows: array<u32, RPT>;
    var acc: array<f32, RPT>;
    for (var r = 0u; r < RPT; r++) {
        rows[r] = min(j0 + r * GROUPS, p.n - 1u);
        acc[r] = 0.0;
    }
    for (var q = t; q < p.row_words; q += TPR) {
        let xv = xq(q);
        let b = q / WPB;
        for (var r = 0u; r < RPT; r++) {
            let row = rows[r];
            acc[r] += scale(row * p.nb + b) * dot(xv, codes(w[row * p.row_words + q]));
        }
    }
    for (var r = 0u; r < RPT; r++) {
        red[r * WG + lid] = acc[r];
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
