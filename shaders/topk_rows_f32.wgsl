// The K largest entries of each row of logits [rows, vocab] (ties: the lower index first, as a
// first-maximum argmax) and the row's log-sum-exp, so decoding reads back K + K + 1 floats a row
// instead of the vocabulary: greedy decoding needs the argmax (K = 1), tree drafting the top-k
// children with their log-probabilities (value - lse), and softmax(v) = exp(v - lse).
// One workgroup per row: each of the WG invocations scans a strided share of the row keeping its
// own sorted top K (in registers) and an online (max, sum of exp) pair; invocation 0 merges them.
// NaN entries are skipped. Every entry is multiplied by `scale` as it is read (1 / temperature
// for sampling; 1 leaves the logits as they are).

// entries kept (1..=MAX_K)
override K: u32 = 1u;

const WG: u32 = 64u;
const MAX_K: u32 = 16u;
const NONE: u32 = 0xffffffffu;
// f32::MIN, written exactly (browsers reject a literal that rounds to it)
const NEG: f32 = -3.4028234663852886e38;

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// logits: [rows, vocab]
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// out: [rows, 2K + 1]: K values (descending), their K indices (as f32), log-sum-exp
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> cand_v: array<f32, 1024>; // WG * MAX_K
var<workgroup> cand_i: array<u32, 1024>;
var<workgroup> part_m: array<f32, WG>;
var<workgroup> part_s: array<f32, WG>;

// Whether (v, i) ranks before (w, j).
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

fn insert(vals: ptr<function, array<f32, MAX_K>>, ids: ptr<function, array<u32, MAX_K>>, v: f32, i: u32) {
    if !before(v, i, (*vals)[K - 1u], (*ids)[K - 1u]) {
        return;
    }
    var at = K - 1u;
    loop {
        if at == 0u || !before(v, i, (*vals)[at - 1u], (*ids)[at - 1u]) {
            break;
        }
        (*vals)[at] = (*vals)[at - 1u];
        (*ids)[at] = (*ids)[at - 1u];
        at -= 1u;
    }
    (*vals)[at] = v;
    (*ids)[at] = i;
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
    var vals: array<f32, MAX_K>;
    var ids: array<u32, MAX_K>;
    for (var c = 0u; c < K; c++) {
        vals[c] = NEG;
        ids[c] = NONE;
    }
    var m = NEG;
    var s = 0.0;
    let base = row * p.vocab;
    for (var j = lid; j < p.vocab; j += WG) {
        let v = logits[base + j] * p.scale;
        if v == v {
            insert(&vals, &ids, v, j);
            let m_new = max(m, v);
            s = s * exp(m - m_new) + exp(v - m_new);
            m = m_new;
        }
    }
    for (var c = 0u; c < K; c++) {
        cand_v[lid * MAX_K + c] = vals[c];
        cand_i[lid * MAX_K + c] = ids[c];
    }
    part_m[lid] = m;
    part_s[lid] = s;
    workgroupBarrier();
    if lid != 0u {
        return;
    }
    for (var t = 1u; t < WG; t++) {
        for (var c = 0u; c < K; c++) {
            insert(&vals, &ids, cand_v[t * MAX_K + c], cand_i[t * MAX_K + c]);
        }
        let m_new = max(m, part_m[t]);
        s = s * exp(m - m_new) + part_s[t] * exp(part_m[t] - m_new);
        m = m_new;
    }
    let o = row * (2u * K + 1u);
    for (var c = 0u; c < K; c++) {
        out[o + c] = vals[c];
        out[o + K + c] = f32(ids[c]);
    }
    out[o + 2u * K] = m + log(s);
}
