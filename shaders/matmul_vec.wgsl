// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for the rows i < m of x
// (m = 1: decoding; m <= 64: a speculation tree, a short prompt), with the weight format supplied
// by a loader snippet (shaders/weights_{f32,f16,q8,q4}.wgsl, appended when the pipeline is built).
//
// Batch-invariant: every output is summed in one fixed order, whatever m is and whichever row of x
// it belongs to. Invocation t of a group walks the steps t, t + TPR, ... of its weight rows with
// one fma chain per (x row, weight row); then the TPR partial sums are added as a binary tree,
// adjacent lanes first (with subgroups, its lower levels are shuffles: the same sums). So a tree
// node verified in a batch gets exactly the logits of a one-token pass (src/speculative: greedy
// speculative output equals plain decoding bit for bit). XR (x rows held in registers, 1 for
// decoding, up to MAX_XR for batches) changes how many rows share each weight load, never the
// order of an output's sum.
//
// Each workgroup computes RPW = GROUPS * RPT weight rows (output columns) for CHUNKS * XR rows
// of x, XR rows at a time.
//
// NORM (matmul_x.wgsl): x is RMS-normalised as it is read, the pre-norm block's norm fused into
// this kernel's prologue; each workgroup sums its x rows' squares across a group's lanes in the
// norm kernel's order, so the normalised x is bit for bit the norm kernel's.
//
// GATED (a stacked gate/up projection, weight rows [gate; up], n = 2 * half): the workgroup's
// 32 weight rows are 16 gate rows and the 16 up rows that pair with them, and the epilogue writes
// out[i, j] = activate(gate_ij) * up_ij (activation_fns_f32.wgsl) for j < half: the gated kernel
// fused in, on sums that are bit for bit the ones the plain kernel would store.
//
// The snippet's interface is described in weights_f32.wgsl: a step of a weight row (a vec4, or a
// whole block of 32 for q8 / q4) is loaded once and used in XS parts of 4 weights. How a lane
// multiplies and sums its steps is a second snippet: f32 fma chains on the dequantized weights
// (dot_float.wgsl), or packed 8-bit dot products of q8 / q4 codes with x quantized per block
// (dot_int8.wgsl, optional, GpuOptions::int8_dot).

override HAS_BIAS: bool = false;
// out += x W^T (+ bias): a residual add fused into the epilogue (out holds the residual; the sum
// is residual + y, as the separate add kernel computes it).
override ACCUMULATE: bool = false;
// out[i, j] = activate(gate) * up of a stacked gate/up weight (see above; col_offset is 0).
override GATED: bool = false;
// Rows of x per pass over the weights (1..=MAX_XR).
override XR: u32 = 1u;
// Passes (of XR rows of x) per workgroup; the grid's z covers the rest. GPUs take every row in one
// workgroup, so the weight block comes from memory once and from cache after; CPU drivers take
// one pass (their caches are shared by all workgroups alike).
override CHUNKS: u32 = 1u;

const WG: u32 = 256u;
// invocations per group (sharing the k axis)
const TPR: u32 = 32u;
// groups per workgroup
const GROUPS: u32 = 8u;
// weight rows per invocation
const RPT: u32 = 4u;
// weight rows per workgroup
const RPW: u32 = 32u;
const MAX_XR: u32 = 4u;

// Params and bindings 0, 1, 4, 5: matmul_io.wgsl; bindings 2, 3: the weight-format snippet.

// A lane's partial sums, [x row][weight row] (dot_*.wgsl's add_step adds a step to them).
alias Acc = array<array<vec4<f32>, RPT>, MAX_XR>;

// Partial sums: [MAX_XR x rows][RPT][WG invocations] (16 KiB, WebGPU's guaranteed minimum).
var<workgroup> red: array<f32, 4096>;

// The binary-tree sum of a group's TPR lane partials at red[base..base + TPR], whose levels below
// `width` lanes_fold has summed already (their sums sit at multiples of width). One invocation
// per output, in place: each output's partials are its own.
fn tree_sum(base: u32, width: u32) -> f32 {
    for (var w = width; w < TPR; w *= 2u) {
        for (var s = 0u; s < TPR; s += 2u * w) {
            red[base + s] = red[base + s] + red[base + s + w];
        }
    }
    return red[base];
}

// One pass: x rows i0..i0 + XR against this invocation's weight rows (outputs of rows past m are
// not written). Called from workgroup-uniform control flow only (it has a barrier).
fn rows_pass(i0: u32, j0: u32, g: u32, t: u32, lid: u32, rows: array<u32, RPT>) {
    // x rows past m redo row m - 1 and write nothing.
    var xi: array<u32, MAX_XR>;
    for (var i = 0u; i < XR; i++) {
        xi[i] = min(i0 + i, p.m - 1u);
    }
    // NORM: group i < XR sums the squares of x row i (invocation t: partial t, TPR ==
    // NORM_PARTS), then every invocation adds the partials in order (matmul_x.wgsl).
    var inv: array<f32, MAX_XR>;
    if NORM {
        if g < XR {
            red[g * TPR + t] = norm_partial(xi[g], t);
        }
        workgroupBarrier();
        for (var i = 0u; i < XR; i++) {
            var sum = 0.0;
            for (var s = 0u; s < NORM_PARTS; s++) {
                sum += red[i * TPR + s];
            }
            inv[i] = norm_inv(sum);
        }
        // `red` is the partial sums' next.
        workgroupBarrier();
    }
    // This lane's partial sums over the steps t, t + TPR, ... of its weight rows.
    var acc: Acc;
    for (var q = t; q < p.steps; q += TPR) {
        var ws: array<WStep, RPT>;
        for (var r = 0u; r < RPT; r++) {
            ws[r] = w_load(rows[r], q);
        }
        add_step(&acc, &ws, q, &xi, &inv);
    }
    // Each output's TPR lane partials are summed as a binary tree (adjacent lanes first): the
    // levels inside a subgroup in registers (lanes_*.wgsl), the rest from workgroup memory.
    let width = lanes_width();
    for (var i = 0u; i < XR; i++) {
        for (var r = 0u; r < RPT; r++) {
            let a = acc[i][r];
            let v = lanes_fold((a.x + a.y) + (a.z + a.w), width);
            if t % width == 0u {
                red[(i * RPT + r) * WG + lid] = v;
            }
        }
    }
    workgroupBarrier();
    if GATED {
        // Invocation t < XR * 2 of each group sums gate (slot r) and up (slot r + 2) of output
        // column j (x row t / 2, r = t % 2), each in the order the branch below sums one.
        if t < XR * 2u {
            let half = p.n / 2u;
            let i = i0 + t / 2u;
            let r = t % 2u;
            let j = j0 + r * GROUPS;
            if i < p.m && j < half {
                let il = t / 2u;
                let gbase = (il * RPT + r) * WG + g * TPR;
                let ubase = (il * RPT + r + 2u) * WG + g * TPR;
                var yg = tree_sum(gbase, width);
                var yu = tree_sum(ubase, width);
                if HAS_BIAS {
                    yg += bias[j];
                    yu += bias[half + j];
                }
                out[i * p.out_stride + j] = activate(yg) * yu;
            }
        }
        return;
    }
    // Invocation t < XR * RPT of each group sums (x row t / RPT, weight row t % RPT).
    if t < XR * RPT {
        let i = i0 + t / RPT;
        let r = t % RPT;
        let j = j0 + r * GROUPS;
        if i < p.m && j < p.n {
            var y = tree_sum(t * WG + g * TPR, width);
            if HAS_BIAS {
                y += bias[p.col_offset + j];
            }
            let o = i * p.out_stride + p.col_offset + j;
            if ACCUMULATE {
                y = out[o] + y;
            }
            out[o] = y;
        }
    }
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
    // Rows j0, j0 + GROUPS, ... of this workgroup's block (clamped to the last row: the duplicates
    // are computed but never written).
    var j0 = block * RPW + g;
    var rows: array<u32, RPT>;
    if GATED {
        // Output columns j0 and j0 + GROUPS of 16 a block: gate rows in slots 0, 1 and their up
        // rows (half further down) in slots 2, 3.
        let half = p.n / 2u;
        j0 = block * (RPW / 2u) + g;
        for (var r = 0u; r < RPT; r++) {
            rows[r] = min(j0 + (r % 2u) * GROUPS, half - 1u) + (r / 2u) * half;
        }
    } else {
        for (var r = 0u; r < RPT; r++) {
            rows[r] = min(j0 + r * GROUPS, p.n - 1u);
        }
    }
    // A loop around a barrier costs a CPU driver (lavapipe) 2-3x even when it runs once: one
    // pass is a straight call.
    if CHUNKS == 1u {
        rows_pass(wid.z * XR, j0, g, t, lid, rows);
    } else {
        for (var c = 0u; c < CHUNKS; c++) {
            let i0 = (wid.z * CHUNKS + c) * XR;
            if i0 >= p.m {
                break;
            }
            rows_pass(i0, j0, g, t, lid, rows);
            workgroupBarrier();
        }
    }
}
