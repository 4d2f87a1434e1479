//! The speculative decoding loop (draft tree -> one target pass -> accept -> compact caches),
//! backend-agnostic: it runs on the CPU reference and on the WebGPU engine unchanged.
//!
//! Invariants between rounds: the target's cache holds exactly the accepted context except the
//! last accepted token (the next root); the draft's cache holds accepted context only, and the
//! accepted tokens it has not run yet wait in `pending` (they go through the draft together with
//! the next root, in one causal pass).

use crate::backend::{AttnMask, Backend, TopK, MAX_TOP_K};
use crate::error::{Error, Result};
use crate::generate::{Sampler, SamplingOptions};
use crate::model::LlavaModel;
use crate::spec::adapt::CostModel;
use crate::spec::events::{RoundEvent, RoundTimings};
use crate::spec::tree::DraftTree;
use crate::spec::verify::{verify, TargetRows};
use crate::spec::SpecOptions;
use crate::text::decoder::LogitRows;

/// What speculative decoding produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecResult {
    /// Generated ids, EOS excluded.
    pub tokens: Vec<u32>,
    pub hit_eos: bool,
    /// Target passes after prefill (one per round).
    pub rounds: usize,
    /// Draft forward passes (prefill excluded).
    pub draft_passes: usize,
    pub accepted_per_round: Vec<usize>,
    /// Draft nodes verified per round (the tree size actually used).
    pub verified_per_round: Vec<usize>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// One model and its cache.
struct Stream<'m, B: Backend> {
    model: &'m LlavaModel<B>,
    cache: B::Cache,
    /// Valid cache slots (= the next position).
    len: usize,
}

impl<'m, B: Backend> Stream<'m, B> {
    /// Prefill the prompt; returns the logits of its last token (on the device, unread).
    async fn prefill(
        b: &B,
        model: &'m LlavaModel<B>,
        ids: &[u32],
        features: Option<&B::Tensor>,
        extra: usize,
    ) -> Result<(Self, B::Tensor)> {
        let mut cache = model.text.new_cache(b, ids.len() + extra);
        let x = model.embed_prompt(b, ids, features)?;
        let pos: Vec<u32> = (0..ids.len() as u32).collect();
        let logits = model.forward(
            b,
            &mut cache,
            0,
            x,
            &pos,
            &AttnMask::Causal,
            LogitRows::Last,
        );
        Ok((
            Stream {
                model,
                cache,
                len: ids.len(),
            },
            logits,
        ))
    }

    /// Run `tokens` at slots `start..` with the given positions and mask; returns the logits
    /// (on the device, unread).
    fn run(
        &mut self,
        b: &B,
        start: usize,
        tokens: &[u32],
        positions: &[u32],
        mask: &AttnMask,
        rows: LogitRows,
    ) -> B::Tensor {
        let x = self.model.text.embed(b, tokens);
        self.model
            .forward(b, &mut self.cache, start, x, positions, mask, rows)
    }

    /// The `k` best tokens of every logits row with their log-probabilities: all the drafting
    /// reads back.
    async fn top_k(&self, b: &B, logits: &B::Tensor, k: usize) -> Vec<Vec<(u32, f32)>> {
        let vocab = self.model.config.text.vocab_size;
        let data = b.read(&b.top_k(logits, k)).await;
        TopK::parse(&data, k.clamp(1, MAX_TOP_K), vocab)
            .iter()
            .map(TopK::logprobs)
            .collect()
    }

    /// What verification reads: the argmax of every row when greedy, else the rows.
    async fn verify_rows(&self, b: &B, logits: &B::Tensor, greedy: bool) -> TargetRows {
        if greedy {
            let data = b.read(&b.top_k(logits, 1)).await;
            let vocab = self.model.config.text.vocab_size;
            return TargetRows::Argmax(
                TopK::parse(&data, 1, vocab)
                    .iter()
                    .map(|t| t.ids.first().copied().unwrap_or(0))
                    .collect(),
            );
        }
        let vocab = self.model.config.text.vocab_size;
        TargetRows::Logits(
            b.read(logits)
                .await
                .chunks(vocab)
                .map(|c| c.to_vec())
                .collect(),
        )
    }
}

/// Inputs of one speculative generation. The draft may run on another backend `D` than the
/// target (e.g. a tiny draft on the CPU engine next to a GPU target).
pub struct SpecInputs<'a, B: Backend, D: Backend = B> {
    pub target: &'a LlavaModel<B>,
    pub draft: &'a LlavaModel<D>,
    pub target_ids: &'a [u32],
    pub draft_ids: &'a [u32],
    pub target_features: Option<&'a B::Tensor>,
    pub draft_features: Option<&'a D::Tensor>,
    pub eos: &'a [u32],
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    pub options: SpecOptions,
    /// Measured device costs: when given, depth and node count are chosen each round to maximise
    /// expected tokens per second (`options` become upper bounds).
    pub cost: Option<&'a CostModel>,
}

/// Generate with speculation, the target on `b` and the draft on `d`. `on_round` receives every
/// round's event (token text via `text`) and may return `false` to cancel.
pub async fn decode_speculative<B: Backend, D: Backend>(
    b: &B,
    d: &D,
    inp: SpecInputs<'_, B, D>,
    text: &dyn Fn(u32) -> String,
    mut on_round: impl FnMut(&RoundEvent) -> bool,
) -> Result<SpecResult> {
    inp.sampling.validate()?;
    inp.options.validate()?;
    let opts = inp.options;
    let mut sampler = Sampler::new(inp.sampling);
    let t0 = web_time::Instant::now();
    let tree_room = opts.budget + 1;
    let (mut target, logits) = Stream::prefill(
        b,
        inp.target,
        inp.target_ids,
        inp.target_features,
        inp.max_new_tokens + tree_room,
    )
    .await?;
    let mut root = sampler.pick_from(b, &logits).await;
    let draft_room = inp.max_new_tokens + opts.depth * opts.top_k + 2;
    // The draft's prompt logits are not needed: its first pass in each round re-runs the root.
    let (mut draft, _) =
        Stream::prefill(d, inp.draft, inp.draft_ids, inp.draft_features, draft_room).await?;
    let greedy = inp.sampling.is_greedy();
    let mut out = SpecResult {
        prefill_ms: t0.elapsed().as_secs_f64() * 1e3,
        ..Default::default()
    };
    let t1 = web_time::Instant::now();

    if inp.eos.contains(&root) {
        out.hit_eos = true;
    } else if inp.max_new_tokens > 0 {
        out.tokens.push(root);
    }
    let mut pending: Vec<u32> = Vec::new();
    let mut reported = 0;
    while !out.hit_eos && out.tokens.len() < inp.max_new_tokens {
        let remaining = inp.max_new_tokens - out.tokens.len();
        let mut timings = RoundTimings::default();
        let td = web_time::Instant::now();

        // Draft: catch up on accepted tokens and run the root in one causal pass.
        pending.push(root);
        let start = draft.len;
        let pos: Vec<u32> = (start as u32..(start + pending.len()) as u32).collect();
        let logits = draft.run(d, start, &pending, &pos, &AttnMask::Causal, LogitRows::Last);
        let rows = draft.top_k(d, &logits, opts.top_k).await;
        out.draft_passes += 1;
        let root_slot = start + pending.len() - 1;
        let mut tree = DraftTree::new(root);
        tree.nodes[0].draft_slot = Some(root_slot);
        // Deeper than the tokens still allowed is wasted work: the bonus covers the last one.
        let max_depth = opts.depth.min(remaining - 1);
        let budget = opts.budget.min(max_depth * opts.top_k);
        let mut frontier = if max_depth > 0 {
            tree.add_children_top(0, rows.first().map_or(&[][..], |r| r))
        } else {
            Vec::new()
        };
        let tree_start = root_slot + 1;
        let mut next_slot = tree_start;
        for _depth in 2..=max_depth {
            let best = frontier
                .iter()
                .map(|&f| tree.nodes[f].score)
                .fold(f32::NEG_INFINITY, f32::max);
            if frontier.is_empty() || best.exp() < opts.threshold {
                break;
            }
            if let Some(cost) = inp.cost {
                // Deepen only if even an optimistic next layer (top_k nodes as likely as the best
                // frontier path) beats the best tree we already have.
                let scores = candidate_scores(&tree);
                let spent = td.elapsed().as_secs_f64() * 1e3;
                let (n, now) = cost.best_budget(&scores, budget, spent);
                let mut hoped = scores.clone();
                hoped.extend(std::iter::repeat_n(best, opts.top_k));
                hoped.sort_by(|a, b| b.total_cmp(a));
                let (_, next) = cost.best_budget(&hoped, budget, spent + cost.draft_pass_ms);
                let _ = n;
                if next <= now {
                    break;
                }
            }
            // One batched draft pass over the frontier; each node sees its ancestors only.
            let (ctx, n) = (next_slot - tree_start, frontier.len());
            let mut allowed = vec![false; n * (ctx + n)];
            for (i, &f) in frontier.iter().enumerate() {
                allowed[i * (ctx + n) + ctx + i] = true;
                let mut cur = tree.nodes[f].parent;
                while let Some(c) = cur {
                    if let Some(slot) = tree.nodes[c].draft_slot.filter(|&s| s >= tree_start) {
                        allowed[i * (ctx + n) + slot - tree_start] = true;
                    }
                    cur = tree.nodes[c].parent;
                }
            }
            let tokens: Vec<u32> = frontier.iter().map(|&f| tree.nodes[f].token).collect();
            let pos: Vec<u32> = frontier
                .iter()
                .map(|&f| (root_slot + tree.nodes[f].depth) as u32)
                .collect();
            let mask = AttnMask::Tree { ctx, n, allowed };
            let logits = draft.run(d, next_slot, &tokens, &pos, &mask, LogitRows::All);
            let rows = draft.top_k(d, &logits, opts.top_k).await;
            out.draft_passes += 1;
            let mut candidates = Vec::new();
            for (i, &f) in frontier.iter().enumerate() {
                tree.nodes[f].draft_slot = Some(next_slot + i);
                candidates.extend(tree.add_children_top(f, rows.get(i).map_or(&[][..], |r| r)));
            }
            next_slot += n;
            frontier = tree.best(&candidates, opts.top_k);
        }
        let budget = match inp.cost {
            Some(cost) => {
                cost.best_budget(
                    &candidate_scores(&tree),
                    budget,
                    td.elapsed().as_secs_f64() * 1e3,
                )
                .0
            }
            None => budget,
        };
        let order = tree.select(budget);
        timings.draft_ms = td.elapsed().as_secs_f64() * 1e3;

        // Verify: one target pass over root + selected nodes at positions prefix + depth.
        let tv = web_time::Instant::now();
        let l = target.len;
        let tokens: Vec<u32> = order.iter().map(|&o| tree.nodes[o].token).collect();
        let pos: Vec<u32> = order
            .iter()
            .map(|&o| (l + tree.nodes[o].depth) as u32)
            .collect();
        let mask = AttnMask::Tree {
            ctx: 0,
            n: order.len(),
            allowed: tree.ancestor_mask(&order),
        };
        let logits = target.run(b, l, &tokens, &pos, &mask, LogitRows::All);
        let rows = target.verify_rows(b, &logits, greedy).await;
        let verdict = verify(&mut tree, &order, &rows, &mut sampler);
        out.rounds += 1;
        out.accepted_per_round.push(verdict.accepted.len());
        out.verified_per_round.push(order.len() - 1);
        timings.verify_ms = tv.elapsed().as_secs_f64() * 1e3;

        // Bookkeeping: emit accepted tokens and the bonus (cut at EOS or the token limit), then
        // compact both caches to the accepted path.
        let tb = web_time::Instant::now();
        let mut stopped = false;
        let path = verdict
            .accepted
            .iter()
            .map(|&a| tree.nodes[a].token)
            .chain(std::iter::once(verdict.bonus));
        for t in path {
            if inp.eos.contains(&t) {
                out.hit_eos = true;
                stopped = true;
                break;
            }
            out.tokens.push(t);
            if out.tokens.len() == inp.max_new_tokens {
                stopped = true;
                break;
            }
        }
        let emitted = out.tokens[reported..].to_vec();
        reported = out.tokens.len();
        if !stopped {
            let slots: Vec<usize> = std::iter::once(l)
                .chain(
                    verdict
                        .accepted
                        .iter()
                        .map(|a| l + order.iter().position(|o| o == a).unwrap_or(0)),
                )
                .collect();
            b.compact_cache(&mut target.cache, &slots, l);
            target.len = l + slots.len();
            // The draft keeps the accepted nodes it has already run (a prefix of the path).
            let ran: Vec<usize> = verdict
                .accepted
                .iter()
                .map_while(|&a| tree.nodes[a].draft_slot)
                .collect();
            let dslots: Vec<usize> = std::iter::once(root_slot)
                .chain(ran.iter().copied())
                .collect();
            d.compact_cache(&mut draft.cache, &dslots, root_slot);
            draft.len = root_slot + dslots.len();
            pending = verdict.accepted[ran.len()..]
                .iter()
                .map(|&a| tree.nodes[a].token)
                .collect();
        }
        timings.bookkeeping_ms = tb.elapsed().as_secs_f64() * 1e3;
        let event = RoundEvent::new(
            out.rounds,
            &tree,
            verdict.accepted.len(),
            emitted,
            timings,
            text,
        );
        if !on_round(&event) {
            return Err(Error::Cancelled);
        }
        if stopped {
            break;
        }
        root = verdict.bonus;
    }
    out.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

/// Cumulative scores of every drafted node, best first.
fn candidate_scores(tree: &DraftTree) -> Vec<f32> {
    let mut s: Vec<f32> = tree.nodes[1..].iter().map(|n| n.score).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}
