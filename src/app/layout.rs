//! Where each node of a speculation tree goes in the tree view: a tidy layered layout.
//!
//! Depth is the row. Leaves take consecutive columns in depth-first order (children in id order,
//! which is the draft's ranking), and a parent sits midway between its first and last child. Two
//! subtrees never share a column range, so nodes on one row are at least one column apart for
//! any tree (the view handles 1–128 nodes; the tests check up to 256).

use crate::speculative::events::NodeEvent;

/// Column and row of every node (same order as the input), and the grid's size.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeLayout {
    pub positions: Vec<(f32, usize)>,
    pub columns: usize,
    pub rows: usize,
}

/// Lay out nodes given as (parent) links: node 0 is the root (no parent), every parent id is
/// smaller than its child's. Nodes whose parent is missing are placed as extra roots.
pub fn layout(nodes: &[NodeEvent]) -> TreeLayout {
    let n = nodes.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        match node.parent {
            Some(p) if p < i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let mut positions = vec![(0.0f32, 0usize); n];
    let mut next_leaf = 0usize;
    // Iterative post-order (trees can be deep chains; no recursion limits).
    for &root in &roots {
        let mut stack = vec![(root, 0usize, false)];
        while let Some((v, depth, visited)) = stack.pop() {
            if visited || children[v].is_empty() {
                let x = if children[v].is_empty() {
                    next_leaf += 1;
                    (next_leaf - 1) as f32
                } else {
                    let first = positions[children[v][0]].0;
                    let last = positions[*children[v].last().unwrap()].0;
                    (first + last) / 2.0
                };
                positions[v] = (x, depth);
                continue;
            }
            stack.push((v, depth, true));
            for &c in children[v].iter().rev() {
                stack.push((c, depth + 1, false));
            }
        }
    }
    let rows = positions.iter().map(|p| p.1 + 1).max().unwrap_or(0);
    TreeLayout {
        positions,
        columns: next_leaf,
        rows,
    }
}

/// Acceptance by depth over rounds: for each depth d >= 1, the share of rounds whose tree reached
/// depth d in which the target accepted at least d tokens.
pub fn acceptance_by_depth(rounds: &[crate::speculative::events::RoundEvent]) -> Vec<f64> {
    let max_depth = rounds
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| n.depth))
        .max()
        .unwrap_or(0);
    (1..=max_depth)
        .map(|d| {
            let reached: Vec<_> = rounds
                .iter()
                .filter(|r| r.nodes.iter().any(|n| n.depth >= d))
                .collect();
            if reached.is_empty() {
                0.0
            } else {
                reached.iter().filter(|r| r.accepted >= d).count() as f64 / reached.len() as f64
            }
        })
        .collect()
}
