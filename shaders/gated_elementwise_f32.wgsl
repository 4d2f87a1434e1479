// out = act(gate) * up, elementwise (SwiGLU and friends). `activate` and the `ACT` override come
// from activation_fns_f32.wgsl, which the host prepends.
//
// gate and up are read through a row stride and a column offset, so they may be two tensors or
// one stacked gate/up projection's output [rows, 2 cols] bound twice (up at column cols).

struct Params {
    // rows * cols: elements of out
    len: u32,
    cols: u32,
    // floats per row of the gate and up bindings
    in_stride: u32,
    // first column of up in its binding's rows
    up_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// gate: [rows, in_stride], gate in columns 0..cols
@group(0) @binding(1) var<storage, read> gate: array<f32>;
// up: [rows, in_stride], up in columns up_off..up_off + cols
@group(0) @binding(2) var<storage, read> up: array<f32>;
// out: [rows, cols]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    let row = i / p.cols;
    let src = row * p.in_stride + (i - row * p.cols);
    out[i] = activate(gate[src]) * up[src + p.up_off];
}
