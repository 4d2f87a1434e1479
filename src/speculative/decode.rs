//! The speculative decoding loop (draft tree -> one target pass -> accept -> compact caches),
//! backend-agnostic: it runs on the CPU reference and on the WebGPU engine unchanged.
//!
//! Invariants between rounds: the target's cache holds exactly the accepted context except the
//! last accepted token (the next root); the draft's cache holds accepted context only, and the
//! accepted tokens it has not run yet wait in `pending` (they go through the draft together with
//! the next root, in one causal pass).

use crate::backend::{AttnMask, Backend, TopK, MAX_TOP_K};
use crate::error::{Error, Result};
use crate::model::LlavaModel;
use crate::sampling::{greedy_token, read_nuclei, row_is_finite, Sampler, SamplingOptions};
use crate::speculative::adapt::{CostModel, LiveCost};
use crate::speculative::events::{RoundEvent, RoundTimings};
use crate::speculative::tree::DraftTree;
use crate::speculative::verify::{verify, TargetRows, Verdict};
use crate::speculative::SpecOptions;
use crate::text::decoder::{LogitRows, Step};

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
    /// Rounds in which the target ran the root alone, without drafting (the caption's last
    /// token, or a plain round because speculating did not pay).
    pub plain_rounds: usize,
    /// Rows over all those draft passes (each round's catch-up pass, then one per expanded
    /// frontier node).
    pub draft_rows: usize,
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
        let logits = model.forward(b, &mut cache, x, &Step::causal(0, &pos));
        Ok((
            Stream {
                model,
                cache,
                len: ids.len(),
            },
            logits,
        ))
    }

    /// Run `tokens` as `step` places them; returns the logits (on the device, unread).
    fn run(&mut self, b: &B, tokens: &[u32], step: &Step) -> B::Tensor {
        let x = self.model.text.embed(b, tokens);
        self.model.forward(b, &mut self.cache, x, step)
    }

    /// The `k` best tokens of every logits row with their log-probabilities: all the drafting
    /// reads back. Ids outside the vocabulary and non-finite log-probabilities (a draft that
    /// produced NaN) are dropped: a bad draft costs speed, never correctness. Log-probabilities
    /// are clamped at 0, so rounding in the device's `log` cannot make a child outscore its parent.
    async fn top_k(&self, b: &B, logits: &B::Tensor, k: usize) -> Vec<Vec<(u32, f32)>> {
        let vocab = self.model.config.text.vocab_size;
        let data = b.read(&b.top_k(logits, k)).await;
        TopK::parse(&data, k.clamp(1, MAX_TOP_K), vocab)
            .iter()
            .map(|t| {
                t.logprobs()
                    .into_iter()
                    .filter(|&(id, lp)| (id as usize) < vocab && lp.is_finite())
                    .map(|(id, lp)| (id, lp.min(0.0)))
                    .collect()
            })
            .collect()
    }

    /// What verification reads: the argmax of every row when greedy; with top-p, every row's
    /// nucleus when all fit in one `top_k_scaled` read-back; else the rows. `None` when a row is
    /// not finite (the target produced NaN).
    async fn verify_rows(
        &self,
        b: &B,
        logits: &B::Tensor,
        sampling: &SamplingOptions,
    ) -> Option<TargetRows> {
        let vocab = self.model.config.text.vocab_size;
        if let Some(nuclei) = read_nuclei(b, logits, sampling).await {
            return Some(TargetRows::Nucleus(nuclei));
        }
        if sampling.is_greedy() {
            let data = b.read(&b.top_k(logits, 1)).await;
            let ids = TopK::parse(&data, 1, vocab)
                .iter()
                .map(|t| greedy_token(t, vocab))
                .collect::<Option<Vec<u32>>>()?;
            return Some(TargetRows::Argmax(ids));
        }
        let data = b.read(logits).await;
        let rows: Vec<Vec<f32>> = data.chunks(vocab).map(|c| c.to_vec()).collect();
        rows.iter()
            .all(|r| row_is_finite(r))
            .then_some(TargetRows::Logits(rows))
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
    /// Fold every round's measured times into `cost` and decide with the wall clock (the app,
    /// the CLI). `false`: `cost` is the clock too (a round's time is what the model says its
    /// passes cost), so a test that scripts the costs decides the same on a busy machine.
    pub learn_costs: bool,
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
    let mut run = Speculation::start(b, d, inp).await?;
    let t1 = web_time::Instant::now();
    while !run.finished() {
        let mut round = Round::draft(&mut run).await;
        let verdict = round.verify(&mut run).await?;
        let stopped = round.commit(&mut run, &verdict);
        run.judge(&round);
        let event = RoundEvent::new(
            run.out.rounds,
            &round.tree,
            verdict.accepted.len(),
            round.emitted,
            round.timings,
            text,
        );
        if !on_round(&event) {
            return Err(Error::Cancelled);
        }
        if stopped {
            break;
        }
        run.root = verdict.bonus;
    }
    run.out.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(run.out)
}

/// The state that lives across rounds: both models' caches, the sampler, the next root and the
/// output so far.
struct Speculation<'a, B: Backend, D: Backend> {
    b: &'a B,
    d: &'a D,
    inp: SpecInputs<'a, B, D>,
    target: Stream<'a, B>,
    draft: Stream<'a, D>,
    sampler: Sampler,
    /// The last accepted token: in neither cache yet; the next round's tree grows from it.
    root: u32,
    /// Accepted tokens the draft has not run yet (see the module invariants).
    pending: Vec<u32>,
    out: SpecResult,
    /// Output tokens already reported in a round event.
    reported: usize,
    /// The cost model given in the inputs, corrected by every round's measured times.
    cost: Option<LiveCost>,
    /// Running average of the tokens per millisecond speculative rounds delivered (with a cost
    /// model only).
    spec_rate: Option<f64>,
    /// Plain rounds still to run before speculating again (see [`PLAIN_ROUNDS`]).
    plain_left: usize,
}

/// With a cost model, when speculative rounds deliver fewer tokens per millisecond than a plain
/// target step would (a draft that keeps guessing wrong, a device where verifying costs too
/// much), this many rounds run the target alone on the root (no drafting); then one speculative
/// round measures again. The draft catches up on the tokens it missed in one causal pass.
const PLAIN_ROUNDS: usize = 8;

impl<'a, B: Backend, D: Backend> Speculation<'a, B, D> {
    /// Check the options, prefill both models and pick the first token from the target.
    async fn start(b: &'a B, d: &'a D, inp: SpecInputs<'a, B, D>) -> Result<Self> {
        inp.sampling.validate()?;
        inp.options.validate()?;
        let inp_cost = inp.cost;
        let opts = inp.options;
        let mut sampler = Sampler::new(inp.sampling);
        let t0 = web_time::Instant::now();
        let tree_room = opts.budget + 1;
        let (target, logits) = Stream::prefill(
            b,
            inp.target,
            inp.target_ids,
            inp.target_features,
            inp.max_new_tokens + tree_room,
        )
        .await?;
        // The draft's prefill before the target's logits are read: it does not need the root
        // (its prompt logits are not needed: its first pass in each round re-runs the root), so a
        // GPU target's prefill runs on the device while a CPU-engine draft prefills on the host.
        b.submit();
        let draft_room = inp.max_new_tokens + opts.depth * opts.top_k + 2;
        let (draft, _) =
            Stream::prefill(d, inp.draft, inp.draft_ids, inp.draft_features, draft_room).await?;
        let root = sampler
            .pick_from(b, &logits)
            .await
            .ok_or(Error::NonFinite { token: 0 })?;
        let mut out = SpecResult {
            prefill_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        };
        if inp.eos.contains(&root) {
            out.hit_eos = true;
        } else if inp.max_new_tokens > 0 {
            out.tokens.push(root);
        }
        Ok(Speculation {
            b,
            d,
            inp,
            target,
            draft,
            sampler,
            root,
            pending: Vec::new(),
            out,
            reported: 0,
            cost: inp_cost.map(|c| LiveCost::new(c.clone())),
            spec_rate: None,
            plain_left: 0,
        })
    }

    fn finished(&self) -> bool {
        self.out.hit_eos || self.out.tokens.len() >= self.inp.max_new_tokens
    }

    /// After a round: with a cost model, fold a speculative round's tokens per millisecond into
    /// the running average and, when that falls below a plain step's rate (one token per
    /// one-token target pass, as the live costs stand), run [`PLAIN_ROUNDS`] plain rounds next.
    fn judge(&mut self, round: &Round) {
        let Some(cost) = &self.cost else {
            return;
        };
        if !round.drafted {
            self.plain_left = self.plain_left.saturating_sub(1);
            return;
        }
        let t = &round.timings;
        let ms = match round.scripted_ms {
            Some(draft) => draft + cost.model().verify(round.order.len()),
            None => t.draft_ms + t.verify_ms + t.bookkeeping_ms,
        };
        if !(ms > 0.0 && ms.is_finite()) {
            return;
        }
        let rate = round.emitted.len() as f64 / ms;
        let avg = match self.spec_rate {
            Some(avg) => avg + 0.5 * (rate - avg),
            None => rate,
        };
        self.spec_rate = Some(avg);
        if avg * cost.model().verify(1) < 1.0 {
            self.plain_left = PLAIN_ROUNDS;
        }
    }
}

/// One round: the draft tree, the nodes sent to the target, and what the round added.
struct Round {
    tree: DraftTree,
    /// Draft cache slot of the root; tree nodes drafted this round follow it.
    root_slot: usize,
    /// Most nodes the tree may verify (root excluded), before the cost model's choice.
    budget: usize,
    /// Nodes verified, root first (indices into `tree.nodes`).
    order: Vec<usize>,
    /// The target's cache length when the round started (the root's slot there).
    target_start: usize,
    emitted: Vec<u32>,
    timings: RoundTimings,
    started: web_time::Instant,
    /// With costs that are not learned (`SpecInputs::learn_costs`): the modelled time of the
    /// round's draft passes so far, the clock its decisions read instead of the wall clock.
    scripted_ms: Option<f64>,
    /// Whether the draft ran this round (false: the target alone on the root).
    drafted: bool,
}

impl Round {
    /// Draft: catch up on accepted tokens and run the root in one causal pass, then deepen the
    /// tree one batched pass per level while it is worth it, and select the nodes to verify.
    async fn draft<B: Backend, D: Backend>(run: &mut Speculation<'_, B, D>) -> Round {
        let started = web_time::Instant::now();
        let passes_before = run.out.draft_passes;
        let (d, opts) = (run.d, run.inp.options);
        let remaining = run.inp.max_new_tokens - run.out.tokens.len();
        if remaining == 1 || run.plain_left > 0 {
            // The target's bonus token after the root is the last one allowed, or speculating
            // does not pay now: the target runs the root alone.
            run.out.plain_rounds += 1;
            return Round::root_only(run, started);
        }
        run.pending.push(run.root);
        let start = run.draft.len;
        let pos: Vec<u32> = (start as u32..(start + run.pending.len()) as u32).collect();
        let logits = run.draft.run(d, &run.pending, &Step::causal(start, &pos));
        let rows = run.draft.top_k(d, &logits, opts.top_k).await;
        run.out.draft_passes += 1;
        let root_slot = start + run.pending.len() - 1;
        let mut tree = DraftTree::new(run.root);
        tree.nodes[0].draft_slot = Some(root_slot);
        // Deeper than the tokens still allowed is wasted work: the bonus covers the last one.
        let max_depth = opts.depth.min(remaining - 1);
        // Best first, as `expand` returns each next frontier.
        let mut frontier = match rows.first() {
            Some(best) if max_depth > 0 => {
                let children = tree.add_children_top(0, best);
                tree.best(&children, children.len())
            }
            _ => Vec::new(),
        };
        // The costs as the last round left them.
        let cost = run.cost.as_ref().map(LiveCost::model);
        let scripted_ms = match (&cost, run.inp.learn_costs) {
            (Some(c), false) => Some(c.draft(run.pending.len())),
            _ => None,
        };
        let mut round = Round {
            tree,
            root_slot,
            budget: opts.budget.min(max_depth * opts.top_k),
            order: Vec::new(),
            target_start: run.target.len,
            emitted: Vec::new(),
            timings: RoundTimings::default(),
            started,
            scripted_ms,
            drafted: true,
        };
        let mut next_slot = root_slot + 1;
        // Rows of every draft pass this round, for the cost model.
        let mut widths = vec![run.pending.len()];
        for _depth in 2..=max_depth {
            let width = round.expand_width(&frontier, cost.as_ref(), opts);
            if width == 0 {
                break;
            }
            frontier = round.expand(run, &frontier[..width], next_slot).await;
            if let (Some(ms), Some(c)) = (&mut round.scripted_ms, &cost) {
                *ms += c.draft(width);
            }
            next_slot += width;
            widths.push(width);
        }
        round.order = round.tree.select(round.chosen_budget(cost.as_ref()));
        round.timings.draft_ms = round.elapsed_ms();
        run.out.draft_rows += widths.iter().sum::<usize>();
        if let (Some(cost), true) = (&mut run.cost, run.inp.learn_costs) {
            debug_assert_eq!(widths.len(), run.out.draft_passes - passes_before);
            cost.observe_draft(&widths, round.timings.draft_ms);
        }
        round
    }

    /// A round that verifies the root alone: the caption's last token, or a plain round. The
    /// draft does not run; the root joins its `pending` tokens.
    fn root_only<B: Backend, D: Backend>(
        run: &Speculation<'_, B, D>,
        started: web_time::Instant,
    ) -> Round {
        let mut tree = DraftTree::new(run.root);
        let order = tree.select(0);
        Round {
            tree,
            root_slot: run.draft.len,
            budget: 0,
            order,
            target_start: run.target.len,
            emitted: Vec::new(),
            timings: RoundTimings {
                draft_ms: started.elapsed().as_secs_f64() * 1e3,
                ..RoundTimings::default()
            },
            started,
            scripted_ms: None,
            drafted: false,
        }
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    /// The round's time so far as its decisions see it: modelled when the costs are scripted,
    /// else the wall clock.
    fn spent_ms(&self) -> f64 {
        self.scripted_ms.unwrap_or_else(|| self.elapsed_ms())
    }

    /// How many of `frontier` (best first) to draft one more level below; 0 stops drafting. The
    /// best path must stay above the threshold. Without a cost model the whole frontier goes on
    /// (EAGLE-2's top-k expansion). With one, each width is scored by hoping every expanded node
    /// has a child as likely as itself (optimistic: a child is never likelier than its parent),
    /// and the width with the best expected tokens per millisecond wins if it beats the tree we
    /// already have, the draft pass it costs included: where a pass over one row costs much less
    /// than over four (a CPU), a confident draft grows a narrow, deep tree.
    fn expand_width(
        &self,
        frontier: &[usize],
        cost: Option<&CostModel>,
        opts: SpecOptions,
    ) -> usize {
        let best = frontier
            .iter()
            .map(|&f| self.tree.nodes[f].score)
            .fold(f32::NEG_INFINITY, f32::max);
        if frontier.is_empty() || best.exp() < opts.threshold {
            return 0;
        }
        let Some(cost) = cost else {
            return frontier.len();
        };
        let scores = candidate_scores(&self.tree);
        let spent = self.spent_ms();
        let (_, now) = cost.best_budget(&scores, self.budget, spent);
        let (mut width, mut rate) = (0, now);
        let mut hoped = scores;
        for (w, &f) in frontier.iter().enumerate() {
            let score = self.tree.nodes[f].score;
            let at = hoped.partition_point(|&s| s >= score);
            hoped.insert(at, score);
            let (_, next) = cost.best_budget(&hoped, self.budget, spent + cost.draft(w + 1));
            if next > rate {
                (width, rate) = (w + 1, next);
            }
        }
        width
    }

    /// One batched draft pass over `frontier` (written at draft slots `slot..`; each node sees its
    /// ancestors only); returns the best `top_k` of the new children, the next frontier.
    async fn expand<B: Backend, D: Backend>(
        &mut self,
        run: &mut Speculation<'_, B, D>,
        frontier: &[usize],
        slot: usize,
    ) -> Vec<usize> {
        let (d, top_k) = (run.d, run.inp.options.top_k);
        let tree_start = self.root_slot + 1;
        let (ctx, n) = (slot - tree_start, frontier.len());
        let mask = AttnMask::Tree {
            ctx,
            n,
            allowed: self.tree.draft_mask(frontier, tree_start, ctx),
        };
        let tokens: Vec<u32> = frontier.iter().map(|&f| self.tree.nodes[f].token).collect();
        let pos: Vec<u32> = frontier
            .iter()
            .map(|&f| (self.root_slot + self.tree.nodes[f].depth) as u32)
            .collect();
        let step = Step {
            start: slot,
            positions: &pos,
            mask: &mask,
            rows: LogitRows::All,
        };
        let logits = run.draft.run(d, &tokens, &step);
        let rows = run.draft.top_k(d, &logits, top_k).await;
        run.out.draft_passes += 1;
        let mut candidates = Vec::new();
        for (i, &f) in frontier.iter().enumerate() {
            self.tree.nodes[f].draft_slot = Some(slot + i);
            let best = rows.get(i).map_or(&[][..], |r| r);
            candidates.extend(self.tree.add_children_top(f, best));
        }
        self.tree.best(&candidates, top_k)
    }

    /// The node count to verify: the budget, or what the cost model says pays best.
    fn chosen_budget(&self, cost: Option<&CostModel>) -> usize {
        match cost {
            Some(cost) => {
                let scores = candidate_scores(&self.tree);
                cost.best_budget(&scores, self.budget, self.spent_ms()).0
            }
            None => self.budget,
        }
    }

    /// Verify: one target pass over the root and the selected nodes at positions prefix + depth,
    /// with the tree's ancestor mask; greedy or rejection-sampled acceptance.
    async fn verify<B: Backend, D: Backend>(
        &mut self,
        run: &mut Speculation<'_, B, D>,
    ) -> Result<Verdict> {
        let tv = web_time::Instant::now();
        let (b, l) = (run.b, self.target_start);
        let nodes = &self.tree.nodes;
        let tokens: Vec<u32> = self.order.iter().map(|&o| nodes[o].token).collect();
        let pos: Vec<u32> = self
            .order
            .iter()
            .map(|&o| (l + nodes[o].depth) as u32)
            .collect();
        let mask = AttnMask::Tree {
            ctx: 0,
            n: self.order.len(),
            allowed: self.tree.ancestor_mask(&self.order),
        };
        let step = Step {
            start: l,
            positions: &pos,
            mask: &mask,
            rows: LogitRows::All,
        };
        let logits = run.target.run(b, &tokens, &step);
        let rows = run
            .target
            .verify_rows(b, &logits, &run.inp.sampling)
            .await
            .ok_or(Error::NonFinite {
                token: run.out.tokens.len(),
            })?;
        let verdict = verify(&mut self.tree, &self.order, &rows, &mut run.sampler);
        run.out.rounds += 1;
        run.out.accepted_per_round.push(verdict.accepted.len());
        run.out.verified_per_round.push(self.order.len() - 1);
        self.timings.verify_ms = tv.elapsed().as_secs_f64() * 1e3;
        if let (Some(cost), true) = (&mut run.cost, run.inp.learn_costs) {
            cost.observe_verify(self.order.len(), self.timings.verify_ms);
        }
        Ok(verdict)
    }

    /// Emit the accepted tokens and the bonus (cut at EOS or the token limit), then compact both
    /// caches to the accepted path. Returns whether generation stopped.
    fn commit<B: Backend, D: Backend>(
        &mut self,
        run: &mut Speculation<'_, B, D>,
        verdict: &Verdict,
    ) -> bool {
        let tb = web_time::Instant::now();
        let stopped = self.emit(run, verdict);
        if !stopped {
            self.compact(run, verdict);
        }
        self.timings.bookkeeping_ms = tb.elapsed().as_secs_f64() * 1e3;
        stopped
    }

    /// Append the accepted path and the bonus to the output; true at EOS or the token limit.
    fn emit<B: Backend, D: Backend>(
        &mut self,
        run: &mut Speculation<'_, B, D>,
        verdict: &Verdict,
    ) -> bool {
        let (out, inp) = (&mut run.out, &run.inp);
        let path = verdict
            .accepted
            .iter()
            .map(|&a| self.tree.nodes[a].token)
            .chain(std::iter::once(verdict.bonus));
        let mut stopped = false;
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
        self.emitted = out.tokens[run.reported..].to_vec();
        run.reported = out.tokens.len();
        stopped
    }

    /// Keep the root and the accepted path in both caches; the accepted nodes the draft has not
    /// run yet become `pending`.
    fn compact<B: Backend, D: Backend>(&self, run: &mut Speculation<'_, B, D>, verdict: &Verdict) {
        if !self.drafted {
            // The target kept the root (its slot is the cache's end); the draft never saw it.
            run.target.len = self.target_start + 1;
            run.pending.push(self.tree.nodes[0].token);
            return;
        }
        let l = self.target_start;
        let slots: Vec<usize> = std::iter::once(l)
            .chain(
                verdict
                    .accepted
                    .iter()
                    .map(|a| l + self.order.iter().position(|o| o == a).unwrap_or(0)),
            )
            .collect();
        run.b.compact_cache(&mut run.target.cache, &slots, l);
        run.target.len = l + slots.len();
        // The draft keeps the accepted nodes it has already run (a prefix of the path).
        let ran: Vec<usize> = verdict
            .accepted
            .iter()
            .map_while(|&a| self.tree.nodes[a].draft_slot)
            .collect();
        let dslots: Vec<usize> = std::iter::once(self.root_slot)
            .chain(ran.iter().copied())
            .collect();
        run.d
            .compact_cache(&mut run.draft.cache, &dslots, self.root_slot);
        run.draft.len = self.root_slot + dslots.len();
        run.pending = verdict.accepted[ran.len()..]
            .iter()
            .map(|&a| self.tree.nodes[a].token)
            .collect();
    }
}

/// Cumulative scores of every drafted node, best first.
fn candidate_scores(tree: &DraftTree) -> Vec<f32> {
    let mut s: Vec<f32> = tree.nodes[1..].iter().map(|n| n.score).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}
