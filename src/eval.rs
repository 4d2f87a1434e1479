//! Evaluation on the scene world (`spec-llava eval`) and the plain-vs-speculative benchmark
//! (`spec-llava bench`), both on generated scenes with seeds the demo models never trained on.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backend::Backend;
use crate::caption::{CaptionRequest, Captioner, Drafter};
use crate::error::Result;
use crate::scenes::{self, AttributeScores};
use crate::spec::SpecOptions;

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
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub target_passes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub plain: Speed,
    pub spec: Speed,
    pub speedup: f64,
    pub tau: f64,
    pub tau_without_bonus: f64,
    pub draft_passes: usize,
    pub identical: usize,
    pub total: usize,
    pub options: BenchOptions,
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

/// Plain and speculative decoding of the same scenes, in one run. Times count the whole caption
/// (image encoding, prefill, drafting, verification).
pub async fn bench<B: Backend>(
    b: &B,
    target: &Captioner<B>,
    drafter: &Drafter<B>,
    count: usize,
    seed: u64,
    options: SpecOptions,
    max_new_tokens: usize,
) -> Result<BenchReport> {
    let shared = drafter.shared_vision;
    let req = CaptionRequest {
        max_new_tokens,
        ..Default::default()
    };
    let (mut plain, mut spec) = (Speed::default(), Speed::default());
    let (mut identical, mut accepted, mut draft_passes) = (0, 0, 0);
    for i in 0..count as u64 {
        let scene = scenes::generate(seed + i);
        let p = target.caption(b, &scene.image, &req, |_| true).await?;
        let s = target
            .caption_speculative(b, drafter, &scene.image, &req, options, |_| true)
            .await?;
        plain.tokens += p.tokens.len();
        plain.seconds += p.timings_ms.total_ms / 1e3;
        plain.target_passes += p.tokens.len() + usize::from(p.hit_eos);
        spec.tokens += s.tokens.len();
        spec.seconds += s.timings_ms.total_ms / 1e3;
        if let Some(st) = &s.spec {
            // Prefill gives the first token; every round is one more target pass.
            spec.target_passes += st.rounds + 1;
            accepted += st.accepted_per_round.iter().sum::<usize>();
            draft_passes += st.draft_passes;
        }
        identical += usize::from(p.tokens == s.tokens);
    }
    for s in [&mut plain, &mut spec] {
        s.tokens_per_s = s.tokens as f64 / s.seconds.max(1e-9);
    }
    let rounds = (spec.target_passes.saturating_sub(count)).max(1) as f64;
    Ok(BenchReport {
        speedup: spec.tokens_per_s / plain.tokens_per_s.max(1e-9),
        tau: (accepted as f64 + rounds) / rounds,
        tau_without_bonus: accepted as f64 / rounds,
        draft_passes,
        identical,
        total: count,
        options: BenchOptions {
            budget: options.budget,
            depth: options.depth,
            top_k: options.top_k,
            threshold: options.threshold,
            shared_vision: shared,
            max_new_tokens,
        },
        plain,
        spec,
    })
}
