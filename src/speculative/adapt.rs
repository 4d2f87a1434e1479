//! Hardware-aware tree size (Sequoia's criterion, with OPT-Tree's acceptance estimate).
//!
//! On the current device we measure what a target verification pass costs for N tree nodes and
//! what one draft pass costs. Each round, with a distilled (calibrated) draft, the expected number
//! of accepted tokens of a tree is the sum over its nodes of their path probability
//! `exp(cumulative draft log-prob)`. We keep deepening only while another draft pass can raise
//! expected tokens per second, then verify the number of nodes n that maximises
//! `(1 + E[accepted](n)) / (draft time + verify time(n + 1))`.

use serde::Serialize;

use crate::backend::{AttnMask, Backend};
use crate::model::LlavaModel;
use crate::text::decoder::{LogitRows, Step};

/// Measured costs on one device, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostModel {
    /// (tokens in the pass, target pass time) in increasing token order.
    pub verify_ms: Vec<(usize, f64)>,
    /// (frontier rows, time of one batched draft pass over them) in increasing row order: a pass
    /// over one row costs well under a full frontier's on a CPU, so the frontier's width is a
    /// cost too (see `Round::draft`).
    pub draft_ms: Vec<(usize, f64)>,
}

impl CostModel {
    /// Target pass time for `n` tokens (piecewise-linear between measured sizes).
    pub fn verify(&self, n: usize) -> f64 {
        along(&self.verify_ms, n)
    }

    /// One draft pass over `rows` frontier nodes (piecewise-linear between measured widths).
    pub fn draft(&self, rows: usize) -> f64 {
        along(&self.draft_ms, rows)
    }

    /// Expected tokens per millisecond of a round whose tree keeps the best `n` of `scores`
    /// (cumulative draft log-probs, best first) after `draft_ms` of drafting.
    pub fn rate(&self, scores: &[f32], n: usize, draft_ms: f64) -> f64 {
        let expected: f64 = scores[..n].iter().map(|&s| (s as f64).exp()).sum();
        (1.0 + expected) / (draft_ms + self.verify(n + 1))
    }

    /// The node count in `0..=max` with the best expected rate.
    pub fn best_budget(&self, scores: &[f32], max: usize, draft_ms: f64) -> (usize, f64) {
        let max = max.min(scores.len());
        (0..=max)
            .map(|n| (n, self.rate(scores, n, draft_ms)))
            .fold((0, f64::MIN), |best, x| if x.1 > best.1 { x } else { best })
    }

    /// Time target passes of 1..=max_nodes+1 tokens on `b` and draft passes on `d`, after a
    /// `prefix`-token context (the prompt's length: attention cost grows with it).
    pub async fn measure<B: Backend, D: Backend>(
        b: &B,
        d: &D,
        models: (&LlavaModel<B>, &LlavaModel<D>),
        prefix: usize,
        max_nodes: usize,
        top_k: usize,
    ) -> Self {
        let (target, draft) = models;
        let mut sizes = vec![1usize];
        while *sizes.last().unwrap_or(&1) < max_nodes + 1 {
            let next = (sizes.last().unwrap_or(&1) * 2).min(max_nodes + 1);
            sizes.push(next);
        }
        // Read back what decoding reads: the argmax per verified node (greedy verification) and
        // the top-k per frontier node (drafting), never whole vocabulary rows.
        let mut verify_ms = Vec::new();
        for &n in &sizes {
            verify_ms.push((n, time_pass(b, target, prefix, n, 1).await));
        }
        let mut draft_ms = vec![(1, time_pass(d, draft, prefix, 1, top_k).await)];
        if top_k > 1 {
            draft_ms.push((top_k, draft_pass_ms(d, draft, prefix, top_k).await));
        }
        CostModel {
            verify_ms,
            draft_ms,
        }
    }
}

/// The time at `n` on a measured curve: piecewise-linear between its points, the first point's
/// time below it, the last segment's slope beyond it (a lone point: its time everywhere).
fn along(pts: &[(usize, f64)], n: usize) -> f64 {
    let Some(&(n0, t0)) = pts.first() else {
        return 0.0;
    };
    if n <= n0 {
        return t0;
    }
    for w in pts.windows(2) {
        let ((a, ta), (b, tb)) = (w[0], w[1]);
        if n <= b {
            return ta + (tb - ta) * (n - a) as f64 / (b - a) as f64;
        }
    }
    let (a, ta) = pts[pts.len().saturating_sub(2)];
    let (b, tb) = pts[pts.len() - 1];
    if b == a {
        return tb;
    }
    tb + (tb - ta) / (b - a) as f64 * (n - b) as f64
}

/// A measured [`CostModel`] kept true while decoding runs: every round's measured verify and
/// draft times correct it, as an exponential average of measured over predicted time applied to
/// the whole verify curve and to the draft pass. What the start-up measurement cannot see — the
/// context growing as the caption does, other work on the device, a cold first pass — then moves
/// the tree size within a few rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveCost {
    measured: CostModel,
    verify_scale: f64,
    draft_scale: f64,
}

/// Weight of the newest round in the running averages.
const NEWEST: f64 = 0.3;

impl LiveCost {
    pub fn new(measured: CostModel) -> Self {
        LiveCost {
            measured,
            verify_scale: 1.0,
            draft_scale: 1.0,
        }
    }

    /// The costs as they stand now: the measured ones, scaled.
    pub fn model(&self) -> CostModel {
        CostModel {
            verify_ms: self
                .measured
                .verify_ms
                .iter()
                .map(|&(n, t)| (n, t * self.verify_scale))
                .collect(),
            draft_ms: self
                .measured
                .draft_ms
                .iter()
                .map(|&(n, t)| (n, t * self.draft_scale))
                .collect(),
        }
    }

    /// Measured time over predicted time so far: (verify, draft).
    pub fn scales(&self) -> (f64, f64) {
        (self.verify_scale, self.draft_scale)
    }

    /// A target pass over `tokens` took `ms`.
    pub fn observe_verify(&mut self, tokens: usize, ms: f64) {
        let predicted = self.measured.verify(tokens);
        if let Some(r) = ratio(ms, predicted) {
            self.verify_scale += NEWEST * (r - self.verify_scale);
        }
    }

    /// Draft passes over `rows` frontier nodes each took `ms` in all.
    pub fn observe_draft(&mut self, rows: &[usize], ms: f64) {
        if rows.is_empty() {
            return;
        }
        let predicted: f64 = rows.iter().map(|&r| self.measured.draft(r)).sum();
        if let Some(r) = ratio(ms, predicted) {
            self.draft_scale += NEWEST * (r - self.draft_scale);
        }
    }
}

/// `measured / predicted` when both are usable times, bounded so one odd round (a stall, a timer
/// hiccup) cannot swing the model by more than 10x.
fn ratio(measured: f64, predicted: f64) -> Option<f64> {
    (measured.is_finite() && measured > 0.0 && predicted.is_finite() && predicted > 0.0)
        .then(|| (measured / predicted).clamp(0.1, 10.0))
}

/// What one draft pass costs on `d`: a pass over a `top_k`-wide frontier after a `prefix`-token
/// context, its `top_k` best logits per row read back (what [`CostModel::measure`] times for the
/// draft; also how the app picks the engine a draft runs on).
pub async fn draft_pass_ms<D: Backend>(
    d: &D,
    draft: &LlavaModel<D>,
    prefix: usize,
    top_k: usize,
) -> f64 {
    time_pass(d, draft, prefix, top_k, top_k).await
}

/// Median time of a chain-shaped pass of `n` tokens after a `prefix`-token cache, with the `k` best
/// logits of every row read back (as decoding reads them).
pub async fn time_pass<B: Backend>(
    b: &B,
    model: &LlavaModel<B>,
    prefix: usize,
    n: usize,
    k: usize,
) -> f64 {
    let mut cache = model.text.new_cache(b, prefix + n);
    let ids: Vec<u32> = (0..prefix as u32).map(|i| i % 7).collect();
    let pos: Vec<u32> = (0..prefix as u32).collect();
    let logits = model.forward(
        b,
        &mut cache,
        model.text.embed(b, &ids),
        &Step::causal(0, &pos),
    );
    b.read(&logits).await;
    let mut times = Vec::new();
    let ids: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
    let pos: Vec<u32> = (prefix as u32..(prefix + n) as u32).collect();
    let allowed: Vec<bool> = (0..n * n).map(|k| k % n <= k / n).collect();
    for _ in 0..3 {
        let t = web_time::Instant::now();
        let mask = AttnMask::Tree {
            ctx: 0,
            n,
            allowed: allowed.clone(),
        };
        let logits = model.forward(
            b,
            &mut cache,
            model.text.embed(b, &ids),
            &Step {
                start: prefix,
                positions: &pos,
                mask: &mask,
                rows: LogitRows::All,
            },
        );
        b.read(&b.top_k(&logits, k)).await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_cost_interpolates_and_extrapolates() {
        let c = CostModel {
            verify_ms: vec![(1, 10.0), (2, 12.0), (4, 16.0)],
            draft_ms: vec![(1, 1.0), (4, 2.5)],
        };
        assert_eq!(c.verify(1), 10.0);
        assert_eq!(c.verify(3), 14.0);
        assert_eq!(c.verify(6), 20.0);
        assert_eq!(c.draft(1), 1.0);
        assert_eq!(c.draft(2), 1.5);
        assert_eq!(c.draft(4), 2.5);
        let lone = CostModel {
            verify_ms: vec![(1, 10.0)],
            draft_ms: vec![(4, 2.0)],
        };
        assert_eq!(
            (lone.verify(9), lone.draft(1), lone.draft(8)),
            (10.0, 2.0, 2.0)
        );
    }

    #[test]
    fn live_costs_follow_the_measured_rounds() {
        let measured = CostModel {
            verify_ms: vec![(1, 10.0), (65, 20.0)],
            draft_ms: vec![(1, 1.0), (4, 2.0)],
        };
        let mut live = LiveCost::new(measured.clone());
        assert_eq!(live.model(), measured);
        // Verify passes now take three times what was measured (a longer context), drafts half.
        for _ in 0..30 {
            live.observe_verify(33, 45.0);
            // Two passes, one row and four: 3 ms predicted.
            live.observe_draft(&[1, 4], 1.5);
        }
        let (v, d) = live.scales();
        assert!((v - 3.0).abs() < 1e-3 && (d - 0.5).abs() < 1e-3, "{v} {d}");
        assert!((live.model().verify(33) - 45.0).abs() < 0.05);
        assert!((live.model().draft(4) - 1.0).abs() < 0.01);
        // Dearer verification, cheaper drafting: a tree of unsure nodes gets smaller.
        let unsure: Vec<f32> = (0..32).map(|i| -1.0 - 0.2 * i as f32).collect();
        let before = measured.best_budget(&unsure, 32, 4.0).0;
        let after = live.model().best_budget(&unsure, 32, 4.0).0;
        assert!(after < before, "{after} vs {before}");
        // Nonsense times change nothing; an outlier moves it by a bounded step.
        let kept = live.clone();
        live.observe_verify(33, f64::NAN);
        live.observe_verify(33, -1.0);
        live.observe_draft(&[], 5.0);
        assert_eq!(live, kept);
        live.observe_verify(33, 1e9);
        assert!(live.scales().0 <= 3.0 + NEWEST * (10.0 - 3.0) + 1e-9);
    }

    #[test]
    fn budget_grows_with_confidence_and_shrinks_with_cost() {
        let flat = CostModel {
            verify_ms: vec![(1, 10.0), (65, 10.5)],
            draft_ms: vec![(4, 1.0)],
        };
        let steep = CostModel {
            verify_ms: vec![(1, 10.0), (65, 300.0)],
            draft_ms: vec![(4, 1.0)],
        };
        let confident: Vec<f32> = (0..32).map(|i| -0.05 * i as f32).collect();
        let unsure: Vec<f32> = (0..32).map(|i| -3.0 - 0.5 * i as f32).collect();
        let (n_flat, _) = flat.best_budget(&confident, 32, 5.0);
        let (n_steep, _) = steep.best_budget(&confident, 32, 5.0);
        let (n_unsure, _) = steep.best_budget(&unsure, 32, 5.0);
        assert!(n_flat > n_steep, "{n_flat} vs {n_steep}");
        assert!(n_steep > n_unsure, "{n_steep} vs {n_unsure}");
        assert_eq!(n_flat, 32);
    }
}
