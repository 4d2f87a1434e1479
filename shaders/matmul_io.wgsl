// The parameters and the x / bias / out bindings every matmul algorithm shares (matmul_vec.wgsl,
// matmul_small.wgsl, matmul_tiled.wgsl; prepended when the pipeline is built). Bindings 2 and 3,
// the weights, come from the weight-format snippet (weights_f32.wgsl).

struct Params {
    // rows of x (and of out)
    m: u32,
    // weight rows in this chunk (outputs written per row of x)
    n: u32,
    // input features
    k: u32,
    // steps per weight row (the loader's unit: f32 vec4s, f16 vec2<u32>s, q8 / q4 blocks); also
    // the weight row stride in those units
    steps: u32,
    // floats per output row
    out_stride: u32,
    // first output column written by this dispatch (the chunk's first weight row)
    col_offset: u32,
    // blocks (scales) per weight row: ceil(k / 32) (block formats only)
    nb: u32,
    // matmul_small: workgroups along the weight rows (grid.x * grid.y covers them, grid.z the
    // row tiles); unused by the others
    col_groups: u32,
    // RMSNorm epsilon (read only when NORM, matmul_x.wgsl)
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x: [m, k] (as vec4s; read through x4, matmul_x.wgsl)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// binding 2: w, binding 3: scales (the weight-format snippet)
// bias: [out_stride] (read only when HAS_BIAS)
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// out: [m, out_stride]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// norm_w: [k], the RMSNorm weight applied to x as it is read (read only when NORM)
@group(0) @binding(6) var<storage, read> norm_w: array<f32>;
