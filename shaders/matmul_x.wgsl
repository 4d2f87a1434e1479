// Reading x for the matmul algorithms that take the weight format as a snippet (matmul_vec.wgsl,
// matmul_small.wgsl; prepended when the pipeline is built). Needs the algorithm's `x` binding
// (array<vec4<f32>>) and `p.k`; with NORM, `norm_w` and `p.eps` (matmul_io.wgsl).

// k % 4 == 0: rows of x are whole vec4s (every LLaVA width). A constant, so that the common case
// is a plain load and a select, with no branch inside the kernels' inner loops.
override K_ALIGNED: bool = true;

// x[i, 4v..4v + 4], zero past k (past k the buffer holds stale data, and 0 * NaN is NaN; block
// formats pad rows to 32). Rows that are not vec4-aligned are gathered by element.
fn x4(i: u32, v: u32) -> vec4<f32> {
    let e = v * 4u;
    if K_ALIGNED {
        let inside = e < p.k;
        let at = i * (p.k / 4u) + select(0u, v, inside);
        return select(vec4<f32>(0.0), x[at], inside);
    }
    var out4 = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if e + c < p.k {
            let j = i * p.k + e + c;
            out4[c] = x[j / 4u][j % 4u];
        }
    }
    return out4;
}

// x RMS-normalised as it is read: the norm fused into matmul_vec's prologue, bit for bit what
// rmsnorm_rows_f32.wgsl writes. Both sum a row's squares in one
// canonical order: NORM_PARTS partial fma chains, chain t over the vec4s t, t + NORM_PARTS, ...,
// each reduced (x + y) + (z + w), then added in t order; inv = 1 / sqrt(sum / k + eps), and
// each element is norm_w * (x * inv).
override NORM: bool = false;
const NORM_PARTS: u32 = 32u;

// Partial t of the sum of squares of row i.
fn norm_partial(i: u32, t: u32) -> f32 {
    var acc = vec4<f32>(0.0);
    for (var v = t; v < (p.k + 3u) / 4u; v += NORM_PARTS) {
        let a = x4(i, v);
        acc = fma(a, a, acc);
    }
    return (acc.x + acc.y) + (acc.z + acc.w);
}

// 1 / sqrt(mean square + eps) from the whole sum of squares.
fn norm_inv(sum: f32) -> f32 {
    return 1.0 / sqrt(sum / f32(p.k) + p.eps);
}

// x4(i, v), normalised with the row's `inv` when NORM (zero past k either way).
fn xn4(i: u32, v: u32, inv: f32) -> vec4<f32> {
    let a = x4(i, v);
    if !NORM {
        return a;
    }
    let e = v * 4u;
    var nw = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if e + c < p.k {
            nw[c] = norm_w[e + c];
        }
    }
    return nw * (a * inv);
}
