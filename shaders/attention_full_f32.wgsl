// Bidirectional multi-head attention over the n rows of one sequence (the vision tower): every query
// sees every key. Same flash-style online softmax as attention_tree_f32.wgsl, without a cache or a
// mask. One workgroup per (query row, head); head_dim <= DPT * WG.

struct Params {
    n: u32,
    heads: u32,
    head_dim: u32,
    // 1 / sqrt(head_dim)
    scale: f32,
}

const WG: u32 = 64u;
const DPT: u32 = 4u;
const NEG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
// q: [n, heads * head_dim]
@group(0) @binding(1) var<storage, read> q: array<f32>;
// k: [n, heads * head_dim]
@group(0) @binding(2) var<storage, read> k: array<f32>;
// v: [n, heads * head_dim]
@group(0) @binding(3) var<storage, read> v: array<f32>;
// out: [n, heads * head_dim]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, 256>; // DPT * WG
var<workgroup> ps: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * nwg.x + wid.x;
    if wg >= p.n * p.heads {
        return;
    }
    let i = wg / p.heads;
    let h = wg - i * p.heads;
    let hd = p.head_dim;
    let stride = p.heads * hd;
    let off = h * hd;
    for (var d = lid; d < hd; d += WG) {
        qs[d] = q[i * stride + off + d];
    }
    workgroupBarrier();

    var m = NEG;
    var l = 0.0;
    var acc = array<f32, DPT>(0.0, 0.0, 0.0, 0.0);
    for (var kb = 0u; kb < p.n; kb += WG) {
        let j = kb + lid;
        let seen = j < p.n;
        var s = NEG;
        if seen {
            let k_base = j * stride + off;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot = fma(qs[d], k[k_base + d], dot);
            }
            s = dot * p.scale;
        }
        ps[lid] = s;
        workgroupBarrier();
        var block_max = NEG;
        for (var t = 0u; t < WG; t++) {
            block_max = max(block_max, ps[t]);
        }
        let m_new = max(m, block_max);
        workgroupBarrier();
        ps[lid] = select(0.0, exp(s - m_new), seen);
        workgroupBarrier();
        let corr = exp(m - m_new);
        l *= corr;
        for (var dd = 0u; dd < DPT; dd++) {
            acc[dd] *= corr;
        }
        let count = min(WG, p.n - kb);
        for (var t = 0u; t < count; t++) {
            let pt = ps[t];
            l += pt;
            let v_base = (kb + t) * stride + off;
            for (var dd = 0u; dd < DPT; dd++) {
                let d = lid + dd * WG;
                if d < hd {
                    acc[dd] = fma(pt, v[v_base + d], acc[dd]);
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var dd = 0u; dd < DPT; dd++) {
        let d = lid + dd * WG;
        if d < hd {
            out[i * stride + off + d] = acc[dd] / l;
        }
    }
}
