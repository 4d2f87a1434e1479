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
// SPLIT (split-K, flash-decoding style, for long contexts on GPUs): the keys are cut into chunks of
// `chunk` by *logical* index (a query's n-th visible key, in slot order: a cached slot is its own
// index, a tree slot inside the region counts only if the query sees it), workgroup (.., split s)
// takes chunk s and writes its running max, sum and accumulator to `out` as partials
// [splits, rows, q_heads, 1 + HD4] vec4s ((m, l, 0, 0), then acc) for the tokens row0..row0 + rows
// (a long prompt goes in slices, to bound the partials); attention_combine_f32.wgsl merges them. Chunks by logical index keep a tree node's sums those of the one-token pass that would
// decode it (whose keys are the same sequence in contiguous slots), so verification stays exact.
//
// CAUSAL (prefill): new token i sees slots 0..=start + i. FULL (vision tower): all n slots.
// Otherwise (a speculation tree) the *region* is slots start - ctx..start + n: slots before it are
// always visible, and inside it `mask` holds one bit per (new token i, region slot j), rows padded
// to whole u32 words: bit (j % 32) of mask[i * words_per_row + j / 32].

override CAUSAL: bool = true;
// Bidirectional (the vision tower): every query sees all n keys; the "cache" is this pass's k, v.
override FULL: bool = false;
// Write partials of one key chunk per workgroup (see above) instead of the output.
override SPLIT: bool = false;
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
    // SPLIT: keys per chunk, and chunks (workgroups per (block, head))
    chunk: u32,
    splits: u32,
    // SPLIT: the tokens row0..row0 + rows of the n this dispatch takes (the partials hold rows)
    row0: u32,
    rows: u32,
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
// out: [n, q_heads * head_dim] (as vec4s); SPLIT: the partials [splits, rows, q_heads, 1 + HD4]
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

var<private> m: f32 = NEG;
var<private> l: f32 = 0.0;
var<private> qv: array<vec4<f32>, MAX_HD4>;
var<private> acc: array<vec4<f32>, MAX_HD4>;

// One step of the online softmax over the key in `slot` (a no-op, bit for bit, when not seen:
// the correction is exp(0) = 1 and the new term 0).
fn attend(slot: u32, seen: bool, kv_stride: u32, kv_off: u32) {
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

@compute @workgroup_size(TQ)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var group = wid.y * nwg.x + wid.x;
    // Tokens first..first + count (all n unless SPLIT).
    let first = select(0u, p.row0, SPLIT);
    let count = select(p.n, p.rows, SPLIT);
    let blocks = (count + TQ - 1u) / TQ;
    // Keys of logical index lo..hi (all of them unless SPLIT).
    var split = 0u;
    var lo = 0u;
    var hi = 0xffffffffu;
    if SPLIT {
        if group >= blocks * p.q_heads * p.splits {
            return;
        }
        split = group % p.splits;
        group = group / p.splits;
        lo = split * p.chunk;
        hi = lo + p.chunk;
    }
    if group >= blocks * p.q_heads {
        return;
    }
    let block = group / p.q_heads;
    let h = group - block * p.q_heads;
    // Lanes past n redo token n - 1 and write nothing (no divergent branch around the loads).
    let i_out = first + block * TQ + lid;
    let i = min(i_out, p.n - 1u);
    let kvh = h / (p.q_heads / p.kv_heads);
    let q_base = (i * p.q_heads + h) * HD4;
    let kv_stride = p.kv_heads * HD4;
    let kv_off = kvh * HD4;

    for (var d = 0u; d < HD4; d++) {
        qv[d] = q[q_base + d] * p.scale;
        acc[d] = vec4<f32>(0.0);
    }
    // Keys the whole block walks: up to the last token's own slot when causal.
    var end = p.start + p.n;
    var own_end = end;
    if CAUSAL {
        end = p.start + min(first + block * TQ + TQ, p.n);
        own_end = p.start + i + 1u;
    }
    // Slots whose logical index is the slot itself: all of them, but for a tree's region.
    let tree = !CAUSAL && !FULL;
    let region = p.start - p.ctx;
    let plain_end = select(end, region, tree);
    for (var slot = lo; slot < min(hi, plain_end); slot++) {
        attend(slot, slot < own_end, kv_stride, kv_off);
    }
    if tree && hi > region {
        // The region: the slots this token's mask row allows, counted as they are seen.
        let mask_row = i * p.words_per_row;
        var li = region;
        for (var slot = region; slot < end; slot++) {
            let j = slot - region;
            let bit = ((mask[mask_row + j / 32u] >> (j % 32u)) & 1u) == 1u;
            attend(slot, bit && li >= lo && li < hi, kv_stride, kv_off);
            li += select(0u, 1u, bit);
        }
    }
    if i_out >= first + count || i_out >= p.n {
        return;
    }
    if SPLIT {
        let base = ((split * count + i_out - first) * p.q_heads + h) * (HD4 + 1u);
        out[base] = vec4<f32>(m, l, 0.0, 0.0);
        for (var d = 0u; d < HD4; d++) {
            out[base + 1u + d] = acc[d];
        }
        return;
    }
    let o_base = (i_out * p.q_heads + h) * HD4;
    for (var d = 0u; d < HD4; d++) {
        out[o_base + d] = acc[d] / l;
    }
}
