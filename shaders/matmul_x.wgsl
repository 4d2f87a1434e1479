// Reading x for the matmul algorithms that take the weight format as a snippet (matmul_vec.wgsl,
// matmul_small.wgsl; prepended when the pipeline is built). Needs the algorithm's `x` binding
// (array<vec4<f32>>) and `p.k`.

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
