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

use crate::sampling::{argmax, dense, draw, sampling_distribution, Sampler};
use crate::speculative::tree::{DraftTree, Node, NodeStatus};

/// The target's output at each verified node: its argmax (all greedy verification needs, read
/// back as `Backend::top_k(_, 1)`), its top-p nucleus (token, probability; sampling with top-p,
/// read back as `Backend::top_k_scaled` when every row's nucleus fits), or whole logits rows.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetRows {
    Argmax(Vec<u32>),
    Nucleus(Vec<Vec<(u32, f32)>>),
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
        let target = match rows {
            _ if sampler.options().is_greedy() => None,
            TargetRows::Logits(l) => l
                .get(at)
                .map(|r| sampling_distribution(r, sampler.options())),
            TargetRows::Nucleus(n) => n.get(at).map(|n| dense(n)),
            TargetRows::Argmax(_) => None,
        };
        let next = if let Some(target) = target {
            sample_next(tree, &kids, target, sampler)
        } else {
            let t = match rows {
                TargetRows::Argmax(ids) => ids.get(at).copied().unwrap_or(0),
                TargetRows::Nucleus(n) => n.get(at).and_then(|n| n.first()).map_or(0, |t| t.0),
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
/// distribution `target` (indexed by token; tokens past its end have probability 0); `Ok(child)`
/// accepted, or `Err(token)` drawn from what is left.
fn sample_next(
    tree: &mut DraftTree,
    kids: &[usize],
    target: Vec<f32>,
    sampler: &mut Sampler,
) -> Result<usize, u32> {
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

#[cfg(test)]
mod tests {
    //! Goodness of fit of sampled verification: over many draws, every emitted token is
    //! distributed as the target's own sampling distribution at its position, whatever the draft
    //! proposed, at every depth of the tree.

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::sampling::SamplingOptions;

    const VOCAB: usize = 12;
    const DRAWS: u64 = 100_000;

    /// A tree three deep (3 children at the root, 2 below each node), the children's tokens
    /// from `tokens_for(node)`, and a random logits row per node.
    fn tree(
        rng: &mut rand::rngs::StdRng,
        tokens_for: &dyn Fn(usize, &[f32]) -> Vec<u32>,
    ) -> (DraftTree, Vec<Vec<f32>>) {
        let mut t = DraftTree::new(0);
        let mut rows = vec![random_row(rng)];
        let mut frontier = vec![0];
        for (depth, k) in [(1, 3), (2, 2), (3, 2)] {
            let mut next = Vec::new();
            for &parent in &frontier {
                let tokens = tokens_for(parent, &rows[parent]);
                let best: Vec<(u32, f32)> = tokens
                    .iter()
                    .take(k)
                    .enumerate()
                    .map(|(i, &tok)| (tok, -(i as f32) - 0.1 * depth as f32))
                    .collect();
                for child in t.add_children_top(parent, &best) {
                    rows.push(random_row(rng));
                    next.push(child);
                }
            }
            frontier = next;
        }
        (t, rows)
    }

    fn random_row(rng: &mut rand::rngs::StdRng) -> Vec<f32> {
        (0..VOCAB).map(|_| rng.random_range(-3.0f32..3.0)).collect()
    }

    /// Pearson chi-square of `counts` against probabilities `p` (bins expecting fewer than 10
    /// merged), and whether it is under the 99.9% quantile (Wilson-Hilferty, generous).
    fn fits(counts: &[u64], p: &[f32]) -> (bool, String) {
        let n: u64 = counts.iter().sum();
        let mut bins = Vec::new();
        let mut rest = (0.0, 0.0);
        for (&c, &q) in counts.iter().zip(p) {
            let e = f64::from(q) * n as f64;
            if e < 10.0 {
                rest = (rest.0 + c as f64, rest.1 + e);
            } else {
                bins.push((c as f64, e));
            }
        }
        if rest.1 > 0.0 {
            bins.push(rest);
        } else if rest.0 > 0.0 {
            // Tokens the target never emits were emitted.
            return (false, format!("{} draws of impossible tokens", rest.0));
        }
        let stat: f64 = bins.iter().map(|(o, e)| (o - e).powi(2) / e).sum();
        let dof = bins.len().saturating_sub(1) as f64;
        let limit = dof + 3.1 * (2.0 * dof).sqrt() + 5.0;
        (
            stat < limit,
            format!("chi2 {stat:.1}, {dof} dof, limit {limit:.1}, {n} draws"),
        )
    }

    /// Run verify `DRAWS` times; for each node, the tokens emitted right after it (when the
    /// path went through it) must follow the target's distribution at that node.
    fn check(opts: SamplingOptions, tokens_for: &dyn Fn(usize, &[f32]) -> Vec<u32>, what: &str) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let (tree0, rows) = tree(&mut rng, tokens_for);
        let order: Vec<usize> = (0..tree0.nodes.len()).collect();
        let logits = TargetRows::Logits(rows.clone());
        // counts[node][token]: tokens emitted after reaching `node`.
        let mut counts = vec![vec![0u64; VOCAB]; tree0.nodes.len()];
        let mut deepest = 0;
        for i in 0..DRAWS {
            let mut t = tree0.clone();
            let mut sampler = Sampler::new(SamplingOptions {
                seed: opts.seed * 1_000_003 + i,
                ..opts
            });
            let v = verify(&mut t, &order, &logits, &mut sampler);
            let mut at = 0;
            for &k in &v.accepted {
                counts[at][t.nodes[k].token as usize] += 1;
                at = k;
            }
            counts[at][v.bonus as usize] += 1;
            deepest = deepest.max(v.accepted.len());
        }
        assert!(deepest >= 3, "{what}: paths reached depth {deepest} only");
        let mut tested = 0;
        for (node, c) in counts.iter().enumerate() {
            if c.iter().sum::<u64>() < 2_000 {
                continue;
            }
            let p = sampling_distribution(&rows[node], &opts);
            let (ok, how) = fits(c, &p);
            assert!(
                ok,
                "{what}: after node {node} (depth {}): {how}",
                tree0.nodes[node].depth
            );
            tested += 1;
        }
        assert!(tested >= 4, "{what}: only {tested} nodes had enough draws");
    }

    /// The target's most likely tokens first: a draft that guesses well (paths go deep).
    fn likely(_: usize, row: &[f32]) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..VOCAB as u32).collect();
        ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        ids
    }

    #[test]
    fn sampled_tokens_follow_the_target_at_every_depth() {
        for (temperature, top_p, seed) in [(1.0, 1.0, 1), (0.7, 1.0, 2), (1.0, 0.8, 3)] {
            let opts = SamplingOptions {
                temperature,
                top_p,
                seed,
            };
            check(opts, &likely, &format!("T {temperature}, top-p {top_p}"));
        }
    }

    #[test]
    fn children_outside_the_nucleus_are_all_rejected_and_the_rest_is_drawn_from_p() {
        // At the root the draft proposes only the target's least likely tokens, outside a 0.5
        // nucleus: every one is rejected and the first token is drawn from the nucleus.
        let opts = SamplingOptions {
            temperature: 1.0,
            top_p: 0.5,
            seed: 4,
        };
        let unlikely_at_root = |node: usize, row: &[f32]| {
            let mut ids = likely(node, row);
            if node == 0 {
                ids.reverse();
            }
            ids
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let (tree0, rows) = tree(&mut rng, &unlikely_at_root);
        let order: Vec<usize> = (0..tree0.nodes.len()).collect();
        let logits = TargetRows::Logits(rows.clone());
        let mut counts = vec![0u64; VOCAB];
        for i in 0..DRAWS {
            let mut t = tree0.clone();
            let mut sampler = Sampler::new(SamplingOptions { seed: i, ..opts });
            let v = verify(&mut t, &order, &logits, &mut sampler);
            assert!(
                v.accepted.is_empty(),
                "a child outside the nucleus was accepted"
            );
            counts[v.bonus as usize] += 1;
        }
        let p = sampling_distribution(&rows[0], &opts);
        let (ok, how) = fits(&counts, &p);
        assert!(ok, "the token after rejecting every child: {how}");
    }
}
