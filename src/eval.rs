//! Evaluation on the scene world (`spec-llava eval`) and the plain-vs-speculative benchmark
//! (`spec-llava bench`), both on generated scenes with seeds the demo models never trained on.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backend::Backend;
use crate::caption::{CaptionRequest, Captioner, DraftEngine, Drafter};
use crate::error::Result;
use crate::model::LlavaModel;
use crate::scenes::{self, AttributeScores};
use crate::speculative::adapt::CostModel;
use crate::speculative::SpecOptions;
use crate::text::decoder::Step;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub scenes: usize,
    pub exact_match: f64,
    /// Pooled over shape, colour, size, count, position and relation.
    pub attribute_accuracy: f64,
    pub per_attribute: BTreeMap<&'static str, f64>,
}

impl EvalReport {
    pub fn from_scores(scenes: usize, s: &AttributeScores) -> Self {
        let parts = [
            ("shape", s.shape),
            ("colour", s.colour),
            ("size", s.size),
            ("count", s.count),
            ("position", s.position),
            ("relation", s.relation),
        ];
        let (c, t) = parts
            .iter()
            .fold((0u32, 0u32), |(c, t), (_, x)| (c + x.correct, t + x.total));
        let mut per_attribute: BTreeMap<&'static str, f64> =
            parts.iter().map(|(n, x)| (*n, x.fraction())).collect();
        per_attribute.insert("background", s.background.fraction());
        per_attribute.insert("parsed", s.parsed.fraction());
        EvalReport {
            scenes,
            exact_match: s.exact.fraction(),
            attribute_accuracy: if t == 0 {
                1.0
            } else {
                f64::from(c) / f64::from(t)
            },
            per_attribute,
        }
    }
}

/// Score (true caption, predicted caption) pairs exactly as [`evaluate`] scores captions of
/// scenes: what the demo trainer calls (`spec-llava score`), so there is one scorer.
pub fn score_pairs(pairs: &[(String, String)]) -> Result<EvalReport> {
    let mut total = AttributeScores::default();
    for (i, (truth, predicted)) in pairs.iter().enumerate() {
        total += scenes::caption_scores(predicted, truth).ok_or_else(|| {
            crate::Error::invalid(format!(
                "pair {}: the true caption does not follow the scene grammar: {truth:?}",
                i + 1
            ))
        })?;
    }
    Ok(EvalReport::from_scores(pairs.len(), &total))
}

/// Caption scenes `seed..seed + count` greedily and score them.
pub async fn evaluate<B: Backend>(
    b: &B,
    captioner: &Captioner<B>,
    count: usize,
    seed: u64,
) -> Result<EvalReport> {
    let mut total = AttributeScores::default();
    let req = CaptionRequest::default();
    for i in 0..count as u64 {
        let scene = scenes::generate(seed + i);
        let out = captioner.caption(b, &scene.image, &req, |_| true).await?;
        total += scenes::attribute_scores(&out.text, &scene);
    }
    Ok(EvalReport::from_scores(count, &total))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Speed {
    pub tokens: usize,
    /// Whole captions: image encoding, prefill (both models' when speculating) and decoding.
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The decoding phase only: every token after the first (which prefill yields), over the
    /// time after prefill. This is the phase speculation changes.
    pub decode_tokens: usize,
    pub decode_seconds: f64,
    pub decode_tokens_per_s: f64,
    pub target_passes: usize,
}

impl Speed {
    fn add(&mut self, c: &crate::caption::Caption) {
        self.tokens += c.tokens.len();
        self.seconds += c.timings_ms.total_ms / 1e3;
        self.decode_seconds += c.timings_ms.decode_ms / 1e3;
        self.decode_tokens += c.tokens.len().saturating_sub(1);
    }

    fn finish(&mut self) {
        self.tokens_per_s = self.tokens as f64 / self.seconds.max(1e-9);
        self.decode_tokens_per_s = self.decode_tokens as f64 / self.decode_seconds.max(1e-9);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub plain: Speed,
    pub spec: Speed,
    /// Whole-caption tokens/s, speculative over plain.
    pub speedup: f64,
    /// Decoding-phase tokens/s, speculative over plain.
    pub decode_speedup: f64,
    pub tau: f64,
    pub tau_without_bonus: f64,
    pub draft_passes: usize,
    pub identical: usize,
    pub total: usize,
    /// Mean draft nodes verified per round.
    pub mean_tree_nodes: f64,
    pub options: BenchOptions,
    /// The same scenes with the tree sized each round from measured device costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveReport>,
    /// Kernel dispatches of one decoding pass (one token, logits' top-1 included) of each model,
    /// on engines that dispatch kernels (null on the CPU engine).
    pub dispatches_per_pass: DispatchCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DispatchCounts {
    pub target: Option<u64>,
    pub draft: Option<u64>,
}

/// Kernel dispatches of one one-token decoding pass of `model` on `b` (None: `b` dispatches none).
async fn dispatches_per_pass<B: Backend>(b: &B, model: &LlavaModel<B>) -> Option<u64> {
    let mut cache = model.text.new_cache(b, 1);
    let before = b.dispatches()?;
    let x = model.text.embed(b, &[0]);
    let logits = model.forward(b, &mut cache, x, &Step::causal(0, &[0]));
    b.read(&b.top_k(&logits, 1)).await;
    Some(b.dispatches()? - before)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptiveReport {
    pub spec: Speed,
    pub speedup: f64,
    pub decode_speedup: f64,
    pub tau: f64,
    pub mean_tree_nodes: f64,
    /// Mean rows of a draft pass: the frontier width the costs chose (and catch-up passes).
    pub draft_rows_per_pass: f64,
    pub identical: usize,
    pub cost: CostModel,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchOptions {
    pub budget: usize,
    pub depth: usize,
    pub top_k: usize,
    pub threshold: f32,
    pub shared_vision: bool,
    pub max_new_tokens: usize,
}

/// Totals of speculative runs over many scenes.
#[derive(Default)]
struct SpecTotals {
    speed: Speed,
    rounds: usize,
    accepted: usize,
    verified: usize,
    draft_passes: usize,
    draft_rows: usize,
    identical: usize,
}

impl SpecTotals {
    fn add(&mut self, c: &crate::caption::Caption, plain: &[u32]) {
        self.speed.add(c);
        if let Some(st) = &c.spec {
            // Prefill gives the first token; every round is one more target pass.
            self.speed.target_passes += st.rounds + 1;
            self.rounds += st.rounds;
            self.accepted += st.accepted_per_round.iter().sum::<usize>();
            self.verified += (st.mean_tree_nodes * st.rounds as f64).round() as usize;
            self.draft_passes += st.draft_passes;
            self.draft_rows += st.draft_rows;
        }
        self.identical += usize::from(c.tokens == plain);
    }
    fn finish(&mut self) {
        self.speed.finish();
    }
    fn per_round(&self, x: usize) -> f64 {
        x as f64 / self.rounds.max(1) as f64
    }
}

/// Plain and speculative decoding of the same scenes, in one run (and, with `adaptive`, the tree
/// sized from costs measured on this device). Times count the whole caption: image encoding,
/// prefill, drafting, verification.
pub async fn bench<B: Backend>(
    b: &B,
    target: &Captioner<B>,
    drafter: &mut Drafter<B>,
    run: Bench,
) -> Result<BenchReport> {
    bench_with(b, b, target, drafter, run).await
}

/// What `bench` runs.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    pub count: usize,
    pub seed: u64,
    pub options: SpecOptions,
    pub max_new_tokens: usize,
    pub adaptive: bool,
}

/// `bench` with the draft on backend `d`.
pub async fn bench_with<B: Backend, D: Backend>(
    b: &B,
    d: &D,
    target: &Captioner<B>,
    drafter: &mut Drafter<D>,
    run: Bench,
) -> Result<BenchReport> {
    let Bench {
        count,
        seed,
        options,
        max_new_tokens,
        adaptive,
    } = run;
    let req = CaptionRequest {
        max_new_tokens,
        ..Default::default()
    };
    let saved = drafter.cost.take();
    let cost = if adaptive {
        target.calibrate_with(b, d, drafter, options).await;
        drafter.cost.take()
    } else {
        None
    };
    // One untimed caption of each kind first: kernels compile on first use (seconds on a CPU
    // driver), which would be charged to whichever run came first.
    let warm = scenes::generate(seed.wrapping_add(count as u64));
    target.caption(b, &warm.image, &req, |_| true).await?;
    drafter.cost = None;
    let draft = DraftEngine::new(d, drafter);
    target
        .caption_speculative_with(b, draft, &warm.image, &req, options, |_| true)
        .await?;
    let mut plain = Speed::default();
    let (mut spec, mut adapt) = (SpecTotals::default(), SpecTotals::default());
    for i in 0..count as u64 {
        let scene = scenes::generate(seed + i);
        let p = target.caption(b, &scene.image, &req, |_| true).await?;
        plain.add(&p);
        plain.target_passes += p.tokens.len() + usize::from(p.hit_eos);
        drafter.cost = None;
        let s = target
            .caption_speculative_with(
                b,
                DraftEngine::new(d, drafter),
                &scene.image,
                &req,
                options,
                |_| true,
            )
            .await?;
        spec.add(&s, &p.tokens);
        if let Some(c) = &cost {
            drafter.cost = Some(c.clone());
            let s = target
                .caption_speculative_with(
                    b,
                    DraftEngine::new(d, drafter),
                    &scene.image,
                    &req,
                    options,
                    |_| true,
                )
                .await?;
            adapt.add(&s, &p.tokens);
        }
    }
    drafter.cost = saved;
    plain.finish();
    spec.finish();
    adapt.finish();
    let speedup = |s: &SpecTotals| s.speed.tokens_per_s / plain.tokens_per_s.max(1e-9);
    let decode_speedup =
        |s: &SpecTotals| s.speed.decode_tokens_per_s / plain.decode_tokens_per_s.max(1e-9);
    let dispatches_per_pass = DispatchCounts {
        target: dispatches_per_pass(b, &target.model).await,
        draft: dispatches_per_pass(d, &drafter.captioner.model).await,
    };
    Ok(BenchReport {
        dispatches_per_pass,
        speedup: speedup(&spec),
        decode_speedup: decode_speedup(&spec),
        tau: 1.0 + spec.per_round(spec.accepted),
        tau_without_bonus: spec.per_round(spec.accepted),
        draft_passes: spec.draft_passes,
        identical: spec.identical,
        total: count,
        mean_tree_nodes: spec.per_round(spec.verified),
        options: BenchOptions {
            budget: options.budget,
            depth: options.depth,
            top_k: options.top_k,
            threshold: options.threshold,
            shared_vision: drafter.shared_vision,
            max_new_tokens,
        },
        adaptive: cost.map(|cost| AdaptiveReport {
            speedup: speedup(&adapt),
            decode_speedup: decode_speedup(&adapt),
            tau: 1.0 + adapt.per_round(adapt.accepted),
            mean_tree_nodes: adapt.per_round(adapt.verified),
            draft_rows_per_pass: adapt.draft_rows as f64 / adapt.draft_passes.max(1) as f64,
            identical: adapt.identical,
            spec: adapt.speed.clone(),
            cost,
        }),
        plain,
        spec: spec.speed,
    })
}

/// Plain greedy decoding speed (`spec-llava bench-kernels`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodeSpeed {
    pub scenes: usize,
    pub tokens: usize,
    /// Generated tokens per second of whole captions (image encoding and prefill included), as
    /// `bench` counts its plain run.
    pub tokens_per_s: f64,
    /// One-token decoder passes per second of the decoding loop alone (after prefill).
    pub decode_tokens_per_s: f64,
}

/// Caption scenes `seed..seed + count` with plain greedy decoding and time them.
pub async fn plain_speed<B: Backend>(
    b: &B,
    captioner: &Captioner<B>,
    count: usize,
    seed: u64,
    max_new_tokens: usize,
) -> Result<DecodeSpeed> {
    let req = CaptionRequest {
        max_new_tokens,
        ..Default::default()
    };
    let (mut tokens, mut passes, mut total_ms, mut decode_ms) = (0, 0, 0.0, 0.0);
    for i in 0..count as u64 {
        let scene = scenes::generate(seed + i);
        let c = captioner.caption(b, &scene.image, &req, |_| true).await?;
        tokens += c.tokens.len();
        // Prefill yields the first token; each later token, and the EOS check, one pass.
        passes += (c.tokens.len() + usize::from(c.hit_eos)).saturating_sub(1);
        total_ms += c.timings_ms.total_ms;
        decode_ms += c.timings_ms.decode_ms;
    }
    let per_s = |n: usize, ms: f64| n as f64 / (ms / 1e3).max(1e-9);
    Ok(DecodeSpeed {
        scenes: count,
        tokens,
        tokens_per_s: per_s(tokens, total_ms),
        decode_tokens_per_s: per_s(passes, decode_ms),
    })
}
