// Decoder attention over one layer's KV cache: n new query tokens (already written to cache slots
// start..start + n) attend to the slots their mask allows (src/backend/mod.rs `AttnMask::sees`).
// Flash-style online softmax (running max m, running sum l, rescaled accumulator): no score
// matrix is stored. Grouped-query: query head h reads kv head h / (q_heads / kv_heads).
//
// Laid out for every driver, CPU ones included (lavapipe / SwiftShader run a workgroup's
// invocations as SIMD lanes of one thread): a workgroup is (a block of TQ query tokens, one head)
// and invocation i owns query token i of the block, with its query and accumulator in registers
// (head_dim / 4 vec4s). All lanes walk the same keys in the same order, so every K and V load has
// the same address on every lane (one load, broadcast) and the mask is the only per-lane load. No
// workgroup memory and no barriers. Head dims that are not a multiple of 4 or exceed 128 use
// attention_treeblock_f32.wgsl.
//
// CAUSAL (prefill): new token i sees slots 0..=start + i. FULL (vision tower): all n slots.
// Otherwise (a speculation tree) the *region* is slots start - ctx..start + n: slots before it are
// always visible, and inside it `mask` holds one bit per (new token i, region slot j), rows padded
// to whole u32 words: bit (j % 32) of mask[i * words_per_row + j / 32].

override CAUSAL: bool = true;
// Bidirectional (the vision tower): every query sees all n keys; the "cache" is this pass's k, v.
override FULL: bool = false;
// query tokens per workgroup (= invocations per workgroup)
override TQ: u32 = 16u;
// head_dim / 4 (at most MAX_HD4)
override HD4: u32 = 8u;

const MAX_HD4: u32 = 32u;
const NEG: f32 = -3.0e38;

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

@group(0) @binding(0) var<uniform> p: Params;
// q: [n, q_heads * head_dim] (as vec4s)
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
// k_cache: [capacity, kv_heads * head_dim] (as vec4s)
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<f32>>;
// v_cache: [capacity, kv_heads * head_dim] (as vec4s)
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<f32>>;
// mask: [n, words_per_row] bits over the ctx + n region slots (read only when !CAUSAL)
@group(0) @binding(4) var<storage, read> mask: array<u32>;
// out: [n, q_heads * head_dim] (as vec4s)
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(TQ)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    let blocks = (p.n + TQ - 1u) / TQ;
    if group >= blocks * p.q_heads {
        return;
    }
    let block = group / p.q_heads;
    let h = group - block * p.q_heads;
    // Lanes past n redo token n - 1 and write nothing (no divergent branch around the loads).
    let i_out = block * TQ + lid;
    let i = min(i_out, p.n - 1u);
    let kvh = h / (p.q_heads / p.kv_heads);
    let q_base = (i * p.q_heads + h) * HD4;
    let kv_stride = p.kv_heads * HD4;
    let kv_off = kvh * HD4;

    var qv: array<vec4<f32>, MAX_HD4>;
    var acc: array<vec4<f32>, MAX_HD4>;
    for (var d = 0u; d < HD4; d++) {
        qv[d] = q[q_base + d] * p.scale;
        acc[d] = vec4<f32>(0.0);
    }
    // Keys the whole block walks: up to the last token's own slot when causal.
    var end = p.start + p.n;
    var own_end = end;
    if CAUSAL {
        end = p.start + min(block * TQ + TQ, p.n);
        own_end = p.start + i + 1u;
    }
    let region = p.start - p.ctx;
    let mask_row = i * p.words_per_row;
    var m = NEG;
    var l = 0.0;
    for (var slot = 0u; slot < end; slot++) {
        var seen = slot < own_end;
        if !CAUSAL && !FULL && slot >= region {
            let j = slot - region;
            seen = ((mask[mask_row + j / 32u] >> (j % 32u)) & 1u) == 1u;
        }
        let kv_base = slot * kv_stride + kv_off;
        var s = 0.0;
        for (var d = 0u; d < HD4; d++) {
            s += dot(qv[d], k_cache[kv_base + d]);
        }
        let m_new = select(m, max(m, s), seen);
        let corr = exp(m - m_new);
        let pr = select(0.0, exp(s - m_new), seen);
        l = l * corr + pr;
        for (var d = 0u; d < HD4; d++) {
            acc[d] = acc[d] * corr + pr * v_cache[kv_base + d];
        }
        m = m_new;
    }
    if i_out >= p.n {
        return;
    }
    let o_base = (i_out * p.q_heads + h) * HD4;
    for (var d = 0u; d < HD4; d++) {
        out[o_base + d] = acc[d] / l;
    }
}
