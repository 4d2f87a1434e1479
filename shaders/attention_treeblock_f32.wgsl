// Fallback of attention_tree_f32.wgsl for head dimensions it cannot hold in registers (not a
// multiple of 4, or over 128): one workgroup per (query token, head), keys spread over its lanes.
//
// Decoder attention over one layer's KV cache: n new query tokens (already written to cache slots
// start..start + n) attend to the slots their mask allows (src/backend/mod.rs `AttnMask::sees`).
// Flash-style: keys are visited in blocks of WG with an online softmax (running max m, running sum
// l, rescaled accumulator), so no score matrix is stored. Grouped-query: query head h reads kv head
// h / (q_heads / kv_heads). One workgroup per (query token, head); each invocation scores one key of
// a block, then accumulates head dimensions lid, lid + WG, ... (head_dim <= DPT * WG).
//
// CAUSAL (fast path): new token i sees slots 0..=start + i; the loop stops there.
// Otherwise (a speculation tree) the *region* is slots start - ctx..start + n: slots before it are
// always visible, and inside it `mask` holds one bit per (new token i, region slot j), rows padded
// to whole u32 words: bit (j % 32) of mask[i * words_per_row + j / 32].

override CAUSAL: bool = true;

struct Params {
    // new tokens (queries)
    n: u32,
    // cached slots before the new tokens
    start: u32,
    // cached slots inside the masked region (tree nodes from earlier passes)
    ctx: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    // u32 words per mask row
    words_per_row: u32,
    // 1 / sqrt(head_dim)
    scale: f32,
}

const WG: u32 = 64u;
// head dimensions per invocation
const DPT: u32 = 4u;
const NEG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
// q: [n, q_heads * head_dim]
@group(0) @binding(1) var<storage, read> q: array<f32>;
// k_cache: [capacity, kv_heads * head_dim]
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
// v_cache: [capacity, kv_heads * head_dim]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
// mask: [n, words_per_row] bits over the ctx + n region slots (read only when !CAUSAL)
@group(0) @binding(4) var<storage, read> mask: array<u32>;
// out: [n, q_heads * head_dim]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, 256>; // DPT * WG
var<workgroup> ps: array<f32, WG>;

// Whether new token i sees cache slot `slot` (< start + n).
fn visible(i: u32, slot: u32) -> bool {
    if CAUSAL {
        return slot <= p.start + i;
    }
    let region = p.start - p.ctx;
    if slot < region {
        return true;
    }
    let j = slot - region;
    return ((mask[i * p.words_per_row + j / 32u] >> (j % 32u)) & 1u) == 1u;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * nwg.x + wid.x;
    if wg >= p.n * p.q_heads {
        return;
    }
    let i = wg / p.q_heads;
    let h = wg - i * p.q_heads;
    let kvh = h / (p.q_heads / p.kv_heads);
    let hd = p.head_dim;
    let q_base = i * p.q_heads * hd + h * hd;
    let kv_stride = p.kv_heads * hd;
    let kv_off = kvh * hd;
    for (var d = lid; d < hd; d += WG) {
        qs[d] = q[q_base + d];
    }
    workgroupBarrier();

    var end = p.start + p.n;
    if CAUSAL {
        end = p.start + i + 1u;
    }
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, DPT>(0.0, 0.0, 0.0, 0.0);
    for (var kb = 0u; kb < end; kb += WG) {
        let slot = kb + lid;
        let seen = slot < end && visible(i, slot);
        var s = NEG;
        if seen {
            let k_base = slot * kv_stride + kv_off;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot = fma(qs[d], k_cache[k_base + d], dot);
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
        let count = min(WG, end - kb);
        for (var t = 0u; t < count; t++) {
            let pt = ps[t];
            l += pt;
            let v_base = (kb + t) * kv_stride + kv_off;
            for (var dd = 0u; dd < DPT; dd++) {
                let d = lid + dd * WG;
                if d < hd {
                    acc[dd] = fma(pt, v_cache[v_base + d], acc[dd]);
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var dd = 0u; dd < DPT; dd++) {
        let d = lid + dd * WG;
        if d < hd {
            out[q_base + d] = acc[dd] / l;
        }
    }
}
