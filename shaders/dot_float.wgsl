// How a lane of matmul_vec.wgsl adds a step to its sums (every weight format): each weight is
// widened to f32 (the weight-format snippet's w_vec) and multiplied into one fma chain per
// (x row, weight row), vec4 by vec4. Appended when the pipeline is built.

// Adds to `acc` step q of the weight rows loaded in `ws`, for x rows xi[0..XR]; `inv` is each x
// row's RMSNorm factor (read only when NORM).
fn add_step(
    acc: ptr<function, Acc>,
    ws: ptr<function, array<WStep, RPT>>,
    q: u32,
    xi: ptr<function, array<u32, MAX_XR>>,
    inv: ptr<function, array<f32, MAX_XR>>,
) {
    for (var s = 0u; s < XS; s++) {
        var xv: array<vec4<f32>, MAX_XR>;
        for (var i = 0u; i < XR; i++) {
            xv[i] = xn4((*xi)[i], x_vec(q, s), (*inv)[i]);
        }
        for (var r = 0u; r < RPT; r++) {
            let wv = w_vec((*ws)[r], s);
            for (var i = 0u; i < XR; i++) {
                (*acc)[i][r] = fma(xv[i], wv, (*acc)[i][r]);
            }
        }
    }
}
