// out[i, col_offset + j] = dot(x[i, :], w[j, :]) + bias[col_offset + j] for every row of x, on
// CPU drivers (lavapipe, SwiftShader), with the weight format supplied by a loader snippet
// (shaders/weights_{f32,f16,q8,q4}.wgsl) and x read by matmul_x.wgsl.
//
// Laid out for devices where a workgroup's invocations are the SIMD lanes of one thread and every
// buffer load is paid per lane: each invocation computes a register tile of TR rows of x by TC
// weight rows (output columns) over the whole k axis, so per step it loads TR + TC vec4s and does
// TR * TC four-term dot products. No k split, no workgroup memory, no barriers.
//
// Batch-invariant: every output is one scalar fma chain over k in order, whatever m and TR are
// (TR = 1 for one row: no redundant rows), so a verified tree node gets exactly the logits of a
// one-token pass. CPU drivers run this kernel at every m (GPUs run matmul_vec up to 64 rows).

override HAS_BIAS: bool = false;
// out += x W^T (+ bias): the residual add fused into the epilogue (residual + y, as the add kernel).
override ACCUMULATE: bool = false;
// invocations per workgroup
override WG: u32 = 32u;
// rows of x per invocation (1..=MAX_TR)
override TR: u32 = 4u;

const MAX_TR: u32 = 4u;
// weight rows (output columns) per invocation
const TC: u32 = 8u;

// out[i, j] = activate(gate) * up of a stacked gate/up weight (rows [gate; up], n = 2 * half;
// col_offset 0): each invocation's 8 weight rows are 4 gate rows (columns 0..3 of its tile) and
// their up rows (4..7), and the epilogue applies activation_fns_f32.wgsl to sums that are bit for
// bit the ones the plain kernel would store. The gated kernel fused in.
override GATED: bool = false;

// Params and bindings 0, 1, 4, 5: matmul_io.wgsl; bindings 2, 3: the weight-format snippet.

// acc + dot(a, b) as one fma chain in a fixed order (a dot builtin may be lowered differently).
fn fma4(a: vec4<f32>, b: vec4<f32>, acc: f32) -> f32 {
    return fma(a.w, b.w, fma(a.z, b.z, fma(a.y, b.y, fma(a.x, b.x, acc))));
}

// Weight row of column c of a lane's tile, clamped into range (the copies are never written).
fn weight_row(lane: u32, c: u32) -> u32 {
    if GATED {
        let half = p.n / 2u;
        return min(lane * (TC / 2u) + c % (TC / 2u), half - 1u) + (c / (TC / 2u)) * half;
    }
    return min(lane * TC + c, p.n - 1u);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    if group >= p.col_groups {
        return;
    }
    let lane = group * WG + lid;
    let i0 = wid.z * TR;
    // Tiles past n or m compute copies of the last row / column and write nothing. The tile is
    // written out by hand (32 named accumulators): loops over arrays here are not unrolled by
    // every CPU driver, and a spilled array costs 2x. Rows r >= TR are constant-folded away.
    let wr0 = weight_row(lane, 0u);
    let wr1 = weight_row(lane, 1u);
    let wr2 = weight_row(lane, 2u);
    let wr3 = weight_row(lane, 3u);
    let wr4 = weight_row(lane, 4u);
    let wr5 = weight_row(lane, 5u);
    let wr6 = weight_row(lane, 6u);
    let wr7 = weight_row(lane, 7u);
    let xr0 = min(i0 + 0u, p.m - 1u);
    let xr1 = min(i0 + 1u, p.m - 1u);
    let xr2 = min(i0 + 2u, p.m - 1u);
    let xr3 = min(i0 + 3u, p.m - 1u);
    var a0_0 = 0.0;
    var a0_1 = 0.0;
    var a0_2 = 0.0;
    var a0_3 = 0.0;
    var a0_4 = 0.0;
    var a0_5 = 0.0;
    var a0_6 = 0.0;
    var a0_7 = 0.0;
    var a1_0 = 0.0;
    var a1_1 = 0.0;
    var a1_2 = 0.0;
    var a1_3 = 0.0;
    var a1_4 = 0.0;
    var a1_5 = 0.0;
    var a1_6 = 0.0;
    var a1_7 = 0.0;
    var a2_0 = 0.0;
    var a2_1 = 0.0;
    var a2_2 = 0.0;
    var a2_3 = 0.0;
    var a2_4 = 0.0;
    var a2_5 = 0.0;
    var a2_6 = 0.0;
    var a2_7 = 0.0;
    var a3_0 = 0.0;
    var a3_1 = 0.0;
    var a3_2 = 0.0;
    var a3_3 = 0.0;
    var a3_4 = 0.0;
    var a3_5 = 0.0;
    var a3_6 = 0.0;
    var a3_7 = 0.0;
    for (var q = 0u; q < p.steps; q++) {
        let ws0 = w_load(wr0, q);
        let ws1 = w_load(wr1, q);
        let ws2 = w_load(wr2, q);
        let ws3 = w_load(wr3, q);
        let ws4 = w_load(wr4, q);
        let ws5 = w_load(wr5, q);
        let ws6 = w_load(wr6, q);
        let ws7 = w_load(wr7, q);
        for (var s = 0u; s < XS; s++) {
            let v = x_vec(q, s);
            let x0 = x4(xr0, v);
            var x1 = vec4<f32>(0.0);
            var x2 = vec4<f32>(0.0);
            var x3 = vec4<f32>(0.0);
            if TR > 1u {
                x1 = x4(xr1, v);
            }
            if TR > 2u {
                x2 = x4(xr2, v);
            }
            if TR > 3u {
                x3 = x4(xr3, v);
            }
            let w0 = w_vec(ws0, s);
            a0_0 = fma4(x0, w0, a0_0);
            if TR > 1u {
                a1_0 = fma4(x1, w0, a1_0);
                if TR > 2u {
                    a2_0 = fma4(x2, w0, a2_0);
                    if TR > 3u {
                        a3_0 = fma4(x3, w0, a3_0);
                    }
                }
            }
            let w1 = w_vec(ws1, s);
            a0_1 = fma4(x0, w1, a0_1);
            if TR > 1u {
                a1_1 = fma4(x1, w1, a1_1);
                if TR > 2u {
                    a2_1 = fma4(x2, w1, a2_1);
                    if TR > 3u {
                        a3_1 = fma4(x3, w1, a3_1);
                    }
                }
            }
            let w2 = w_vec(ws2, s);
            a0_2 = fma4(x0, w2, a0_2);
            if TR > 1u {
                a1_2 = fma4(x1, w2, a1_2);
                if TR > 2u {
                    a2_2 = fma4(x2, w2, a2_2);
                    if TR > 3u {
                        a3_2 = fma4(x3, w2, a3_2);
                    }
                }
            }
            let w3 = w_vec(ws3, s);
            a0_3 = fma4(x0, w3, a0_3);
            if TR > 1u {
                a1_3 = fma4(x1, w3, a1_3);
                if TR > 2u {
                    a2_3 = fma4(x2, w3, a2_3);
                    if TR > 3u {
                        a3_3 = fma4(x3, w3, a3_3);
                    }
                }
            }
            let w4 = w_vec(ws4, s);
            a0_4 = fma4(x0, w4, a0_4);
            if TR > 1u {
                a1_4 = fma4(x1, w4, a1_4);
                if TR > 2u {
                    a2_4 = fma4(x2, w4, a2_4);
                    if TR > 3u {
                        a3_4 = fma4(x3, w4, a3_4);
                    }
                }
            }
            let w5 = w_vec(ws5, s);
            a0_5 = fma4(x0, w5, a0_5);
            if TR > 1u {
                a1_5 = fma4(x1, w5, a1_5);
                if TR > 2u {
                    a2_5 = fma4(x2, w5, a2_5);
                    if TR > 3u {
                        a3_5 = fma4(x3, w5, a3_5);
                    }
                }
            }
            let w6 = w_vec(ws6, s);
            a0_6 = fma4(x0, w6, a0_6);
            if TR > 1u {
                a1_6 = fma4(x1, w6, a1_6);
                if TR > 2u {
                    a2_6 = fma4(x2, w6, a2_6);
                    if TR > 3u {
                        a3_6 = fma4(x3, w6, a3_6);
                    }
                }
            }
            let w7 = w_vec(ws7, s);
            a0_7 = fma4(x0, w7, a0_7);
            if TR > 1u {
                a1_7 = fma4(x1, w7, a1_7);
                if TR > 2u {
                    a2_7 = fma4(x2, w7, a2_7);
                    if TR > 3u {
                        a3_7 = fma4(x3, w7, a3_7);
                    }
                }
            }
        }
    }
    let acc = array<array<f32, TC>, MAX_TR>(array<f32, TC>(a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7), array<f32, TC>(a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7), array<f32, TC>(a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7), array<f32, TC>(a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7));
    if GATED {
        let half = p.n / 2u;
        let j0 = lane * (TC / 2u);
        for (var r = 0u; r < TR; r++) {
            let i = i0 + r;
            if i >= p.m {
                break;
            }
            for (var c = 0u; c < TC / 2u; c++) {
                let j = j0 + c;
                if j < half {
                    var yg = acc[r][c];
                    var yu = acc[r][c + TC / 2u];
                    if HAS_BIAS {
                        yg += bias[j];
                        yu += bias[half + j];
                    }
                    out[i * p.out_stride + j] = activate(yg) * yu;
                }
            }
        }
        return;
    }
    let j0 = lane * TC;
    for (var r = 0u; r < TR; r++) {
        let i = i0 + r;
        if i >= p.m {
            break;
        }
        let ob = i * p.out_stride + p.col_offset;
        for (var c = 0u; c < TC; c++) {
            let j = j0 + c;
            if j < p.n {
                var y = acc[r][c];
                if HAS_BIAS {
                    y += bias[p.col_offset + j];
                }
                if ACCUMULATE {
                    y = out[ob + j] + y;
                }
                out[ob + j] = y;
            }
        }
    }
}
