// Merge the key chunks of a split-K attention (attention_tree_f32.wgsl with SPLIT): for every
// (token i, head h, vec4 d of the head), out = sum_s acc_s w_s / sum_s l_s w_s with
// w_s = exp(m_s - M) and M the largest m_s, both sums taken in chunk order. A chunk the token saw
// nothing of (m = NEG, l = 0, acc = 0) adds exactly 0, so the result depends only on the chunks
// that hold its keys: a tree node gets the bits of the one-token pass that would decode it.

const NEG: f32 = -3.0e38;

struct Params {
    // tokens in the partials (rows row0.. of out)
    n: u32,
    q_heads: u32,
    // head_dim / 4
    hd4: u32,
    // key chunks
    splits: u32,
    // first row of out written
    row0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// part: [splits, n, q_heads, 1 + hd4] vec4s: (m, l, 0, 0), then the accumulator
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
// out: [row0 + n.., q_heads * hd4] vec4s
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wid.y * nwg.x + wid.x) * 64u + lid;
    if e >= p.n * p.q_heads * p.hd4 {
        return;
    }
    // e = (i * q_heads + h) * hd4 + d
    let row = e / p.hd4;
    let d = e - row * p.hd4;
    let rows = p.n * p.q_heads;
    let stride = 1u + p.hd4;
    var big = NEG;
    for (var s = 0u; s < p.splits; s++) {
        big = max(big, part[(s * rows + row) * stride].x);
    }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        let base = (s * rows + row) * stride;
        let ml = part[base];
        let w = exp(ml.x - big);
        l += ml.y * w;
        acc += part[base + 1u + d] * w;
    }
    out[p.row0 * p.q_heads * p.hd4 + e] = acc / l;
}
