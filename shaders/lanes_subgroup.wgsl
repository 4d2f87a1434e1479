// How matmul_vec.wgsl folds a group's lane partials where the device has subgroups (wgpu's
// SUBGROUP feature, native adapters): the lowest levels of the binary tree, the ones inside one
// subgroup, are subgroup shuffles (`subgroupShuffleXor`), and only what crosses subgroups goes
// through workgroup memory (`tree_sum`). At level `off`, lane t adds the partial of lane t ^ off:
// a + b and b + a are the same float, so both lanes of a pair hold the tree's sum bit for bit,
// and the result equals shaders/lanes_portable.wgsl's whatever the subgroup size (8 on lavapipe,
// 32 on NVIDIA, up to 64 on AMD; Intel's may differ between pipelines).
//
// Assumes subgroups are runs of consecutive local invocation indices (lane t of a group is
// subgroup invocation t % size), as Vulkan, Metal and D3D12 drivers lay out a one-dimensional
// workgroup; the tests compare both forms bit for bit on every adapter they run on.

// Lanes whose partials `lanes_fold` sums in registers: the subgroup, up to a whole group. Called
// from uniform control flow, with every invocation active.
fn lanes_width() -> u32 {
    return min(subgroupAdd(1u), TPR);
}

// The sum of `v` over the `width` lanes of this lane's aligned block, as the tree sums it.
fn lanes_fold(v: f32, width: u32) -> f32 {
    var s = v;
    for (var off = 1u; off < width; off *= 2u) {
        s = s + subgroupShuffleXor(s, off);
    }
    return s;
}
