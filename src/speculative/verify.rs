//! Verification of a draft tree against the target's logits from one forward pass.
//!
//! Greedy: a child is accepted iff it is the target's argmax at its parent; the longest such path
//! is kept, and the target's argmax after its last node is the bonus token — so the output is
//! token-identical to the target decoding alone.
//!
//! Sampling: recursive rejection matched to how the children were drafted (deterministic top-k,
//! as in EAGLE): at a node with target distribution p, its children are tried best-first; child x
//! is accepted with probability p(x); on rejection p(x) is zeroed and p renormalised; if every
//! child is rejected the next token is drawn from what is left of p. Each emitted token is then
//! distributed exactly as the target's (temperature / top-p applied to p before verifying).

use crate::sampling::{argmax, draw, sampling_distribution, Sampler};
use crate::speculative::tree::{DraftTree, Node, NodeStatus};

/// The target's output at each verified node: its argmax (all greedy verification needs, read
/// back as `Backend::top_k(_, 1)`), or whole logits rows (sampling).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetRows {
    Argmax(Vec<u32>),
    Logits(Vec<Vec<f32>>),
}

/// The outcome of one verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Accepted nodes in path order (root excluded).
    pub accepted: Vec<usize>,
    /// The target's token after the last accepted node.
    pub bonus: u32,
}

/// Verify `tree` restricted to `order` (root first), with `rows` the target's output at each of
/// `order`'s nodes. Marks node statuses and appends the bonus node. Greedy decoding needs only
/// the argmax rows; sampling needs the logits (given argmax rows, sampling falls back to them).
pub fn verify(
    tree: &mut DraftTree,
    order: &[usize],
    rows: &TargetRows,
    sampler: &mut Sampler,
) -> Verdict {
    let mut cur = 0;
    let mut accepted = Vec::new();
    let bonus = loop {
        let at = order.iter().position(|&o| o == cur).unwrap_or(0);
        let kids = tree.children_in(cur, order);
        let row = match rows {
            TargetRows::Logits(l) if !sampler.options().is_greedy() => l.get(at),
            _ => None,
        };
        let next = if let Some(row) = row {
            sample_next(tree, &kids, row, sampler)
        } else {
            let t = match rows {
                TargetRows::Argmax(ids) => ids.get(at).copied().unwrap_or(0),
                TargetRows::Logits(l) => l.get(at).map_or(0, |r| argmax(r)),
            };
            let hit = kids.iter().copied().find(|&k| tree.nodes[k].token == t);
            for &k in &kids {
                if Some(k) != hit {
                    tree.nodes[k].status = NodeStatus::Rejected;
                }
            }
            hit.ok_or(t)
        };
        match next {
            Ok(k) => {
                tree.nodes[k].status = NodeStatus::Accepted;
                accepted.push(k);
                cur = k;
            }
            Err(token) => break token,
        }
    };
    let parent = &tree.nodes[cur];
    let node = Node {
        parent: Some(cur),
        token: bonus,
        depth: parent.depth + 1,
        prob: 0.0,
        score: parent.score,
        status: NodeStatus::Bonus,
        draft_slot: None,
    };
    tree.nodes.push(node);
    Verdict { accepted, bonus }
}

/// Recursive rejection at one node: its children `kids` tried best-first against the target's
/// distribution from `row`; `Ok(child)` accepted, or `Err(token)` drawn from what is left.
fn sample_next(
    tree: &mut DraftTree,
    kids: &[usize],
    row: &[f32],
    sampler: &mut Sampler,
) -> Result<usize, u32> {
    let target = sampling_distribution(row, sampler.options());
    let mut p = target.clone();
    for &k in kids {
        let x = tree.nodes[k].token as usize;
        if sampler.uniform() < p.get(x).copied().unwrap_or(0.0) {
            return Ok(k);
        }
        tree.nodes[k].status = NodeStatus::Rejected;
        let Some(px) = p.get_mut(x) else { continue };
        let left = 1.0 - *px;
        *px = 0.0;
        if left > 0.0 {
            p.iter_mut().for_each(|v| *v /= left);
        }
    }
    if p.iter().all(|&v| v <= 0.0) {
        // Float rounding rejected the whole nucleus (the children held all of its mass): draw
        // from the target's distribution without them, or, if nothing is left, from all of it.
        p = target.clone();
        for &k in kids {
            if let Some(v) = p.get_mut(tree.nodes[k].token as usize) {
                *v = 0.0;
            }
        }
        if p.iter().all(|&v| v <= 0.0) {
            p = target;
        }
    }
    let u = sampler.uniform();
    Err(draw(&p, u))
}
