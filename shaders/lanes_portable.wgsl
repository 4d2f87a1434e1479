// How matmul_vec.wgsl folds a group's lane partials, on every device: nothing is folded in
// registers (width 1), so the whole binary tree of a group's partials is summed in workgroup
// memory (`tree_sum`). shaders/lanes_subgroup.wgsl is the same sum with its first levels done by
// subgroup shuffles.

// Lanes whose partials `lanes_fold` has already summed (a power of two, at most TPR).
fn lanes_width() -> u32 {
    return 1u;
}

// The sum of `v` over the `width` lanes of this lane's aligned block, as the tree sums it.
fn lanes_fold(v: f32, width: u32) -> f32 {
    return v;
}
