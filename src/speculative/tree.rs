//! The draft tree of one speculation round (EAGLE-2's dynamic tree).
//!
//! Node 0 is the root: the last accepted token, not yet in the target's cache. Each drafting depth
//! expands the current frontier: every frontier node proposes its `top_k` most likely children,
//! scored by cumulative draft log-probability; all candidates are kept, and the next frontier is
//! the global `top_k` of the new candidates. Finally the candidates are reranked to the node
//! budget. A child's cumulative score never exceeds its parent's (log-probabilities are <= 0) and
//! ties go to the older node, so the top-`budget` set is always a connected tree.

use serde::{Deserialize, Serialize};

/// What happened to a node by the end of its round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Drafted and sent to verification, but never decided: an ancestor was rejected.
    Expanded,
    /// Drafted but cut by the rerank to the node budget (never verified).
    Pruned,
    /// On the accepted path (the root counts as accepted: it was accepted last round).
    Accepted,
    /// Verified and refused: its parent was accepted but the target chose another token.
    Rejected,
    /// The target's own token after the last accepted node (free with every round).
    Bonus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub parent: Option<usize>,
    pub token: u32,
    /// 0 for the root.
    pub depth: usize,
    /// Draft probability of `token` given its parent (1 for the root).
    pub prob: f32,
    /// Cumulative draft log-probability of the path root -> this node.
    pub score: f32,
    pub status: NodeStatus,
    /// Cache slot of this node in the draft's cache, when the draft has run on it.
    pub draft_slot: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftTree {
    pub nodes: Vec<Node>,
}

/// The `k` largest entries of `logprobs` as (index, value), best first (ties: lower index first).
pub fn top_k(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in logprobs.iter().enumerate() {
        if best.len() == k && best.last().is_some_and(|&(_, w)| v <= w) {
            continue;
        }
        let at = best.partition_point(|&(_, w)| w >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// `log_softmax` of logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    logits.iter().map(|&l| l - lse).collect()
}

impl DraftTree {
    pub fn new(root_token: u32) -> Self {
        DraftTree {
            nodes: vec![Node {
                parent: None,
                token: root_token,
                depth: 0,
                prob: 1.0,
                score: 0.0,
                status: NodeStatus::Accepted,
                draft_slot: None,
            }],
        }
    }

    /// Add the `top_k` children of `parent` from the draft's log-probabilities; returns their ids.
    pub fn add_children(&mut self, parent: usize, logprobs: &[f32], k: usize) -> Vec<usize> {
        self.add_children_top(parent, &top_k(logprobs, k))
    }

    /// Add children of `parent` given as (token, log-probability), best first (what
    /// `Backend::top_k` gives); returns their ids.
    pub fn add_children_top(&mut self, parent: usize, best: &[(u32, f32)]) -> Vec<usize> {
        let (depth, base) = (self.nodes[parent].depth + 1, self.nodes[parent].score);
        best.iter()
            .map(|&(token, lp)| {
                self.nodes.push(Node {
                    parent: Some(parent),
                    token,
                    depth,
                    prob: lp.exp(),
                    score: base + lp,
                    status: NodeStatus::Pruned,
                    draft_slot: None,
                });
                self.nodes.len() - 1
            })
            .collect()
    }

    /// The `k` best of `candidates` by cumulative score (ties: older node first).
    pub fn best(&self, candidates: &[usize], k: usize) -> Vec<usize> {
        let mut c = candidates.to_vec();
        c.sort_by(|&a, &b| {
            self.nodes[b]
                .score
                .total_cmp(&self.nodes[a].score)
                .then(a.cmp(&b))
        });
        c.truncate(k);
        c
    }

    /// Rerank every non-root node to the budget: the root followed by the selected nodes in
    /// creation order (so parents come before children). Selected nodes become `Expanded`.
    pub fn select(&mut self, budget: usize) -> Vec<usize> {
        let all: Vec<usize> = (1..self.nodes.len()).collect();
        let mut chosen = self.best(&all, budget);
        chosen.sort_unstable();
        for &i in &chosen {
            self.nodes[i].status = NodeStatus::Expanded;
        }
        let mut order = vec![0];
        order.extend(chosen);
        order
    }

    /// The ancestor-closure mask of the nodes `order` (root first): `allowed[i * n + j]` iff
    /// node `order[j]` is `order[i]` or one of its ancestors.
    pub fn ancestor_mask(&self, order: &[usize]) -> Vec<bool> {
        let n = order.len();
        let mut allowed = vec![false; n * n];
        for (i, &node) in order.iter().enumerate() {
            for a in self.path_to_root(node) {
                if let Some(j) = order.iter().position(|&o| o == a) {
                    allowed[i * n + j] = true;
                }
            }
        }
        allowed
    }

    /// `node`, then its parent, and so on up to the root.
    pub fn path_to_root(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(node), |&c| self.nodes[c].parent)
    }

    /// The mask of one draft pass over `frontier` (an [`crate::backend::AttnMask::Tree`] with
    /// region `ctx + n`): the tree's nodes drafted in earlier passes sit at draft cache slots
    /// `tree_start..tree_start + ctx`; frontier node `i` sees itself and those of its ancestors.
    /// (The root and the accepted context lie before the region: always visible.)
    pub fn draft_mask(&self, frontier: &[usize], tree_start: usize, ctx: usize) -> Vec<bool> {
        let n = frontier.len();
        let width = ctx + n;
        let mut allowed = vec![false; n * width];
        for (i, &f) in frontier.iter().enumerate() {
            allowed[i * width + ctx + i] = true;
            for a in self.path_to_root(f).skip(1) {
                if let Some(slot) = self.nodes[a].draft_slot.filter(|&s| s >= tree_start) {
                    allowed[i * width + slot - tree_start] = true;
                }
            }
        }
        allowed
    }

    /// Children of `node` among `order`, best draft score first (the order they are verified in).
    pub fn children_in(&self, node: usize, order: &[usize]) -> Vec<usize> {
        let kids: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&c| self.nodes[c].parent == Some(node))
            .collect();
        self.best(&kids, kids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.5, -1.0, 0.7], 3),
            vec![(4, 0.7), (1, 0.5), (2, 0.5)]
        );
        assert_eq!(top_k(&[1.0], 4), vec![(0, 1.0)]);
    }

    #[test]
    fn selection_is_connected_within_budget_and_masks_ancestors() {
        let mut t = DraftTree::new(7);
        let lp = log_softmax(&[2.0, 1.0, 0.5, -1.0]);
        let kids = t.add_children(0, &lp, 3);
        let grand = t.add_children(kids[0], &log_softmax(&[0.0, 3.0, 0.0, 0.0]), 2);
        t.add_children(grand[0], &log_softmax(&[5.0, 0.0, 0.0, 0.0]), 1);
        let order = t.select(4);
        assert_eq!(order.len(), 5);
        for &i in &order[1..] {
            let p = t.nodes[i].parent.unwrap();
            assert!(order.contains(&p), "node {i}'s parent {p} must be selected");
            assert!(t.nodes[i].score <= t.nodes[p].score);
            assert_eq!(t.nodes[i].depth, t.nodes[p].depth + 1);
        }
        let mask = t.ancestor_mask(&order);
        let n = order.len();
        for i in 0..n {
            assert!(
                mask[i * n] && mask[i * n + i],
                "every node sees the root and itself"
            );
            for j in 0..n {
                let mut is_anc = false;
                let mut c = Some(order[i]);
                while let Some(x) = c {
                    is_anc |= x == order[j];
                    c = t.nodes[x].parent;
                }
                assert_eq!(mask[i * n + j], is_anc);
            }
        }
    }
}
