//! Plain autoregressive decoding (the target alone): greedy, or sampled with temperature / top-p
//! and a seed. Stops at an EOS token or after `max_new_tokens`.
//!
//! Sampling follows transformers' logits processors: divide by the temperature, keep the smallest
//! set of most likely tokens whose probability mass reaches `top_p` (at least one), renormalise,
//! draw. Greedy picks the first maximal logit, like `torch.argmax`.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::backend::{AttnMask, Backend};
use crate::error::{Error, Result};
use crate::model::LlavaModel;
use crate::text::decoder::LogitRows;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Index of the first maximal value.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// The distribution sampling draws from: softmax(logits / T) restricted to the top-p nucleus.
pub fn sampling_distribution(logits: &[f32], opts: &SamplingOptions) -> Vec<f32> {
    let mut p: Vec<f32> = logits.iter().map(|&l| l / opts.temperature).collect();
    crate::backend::cpu::softmax_in_place(&mut p);
    if opts.top_p < 1.0 {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut mass = 0.0;
        let mut keep = vec![false; p.len()];
        for &i in &order {
            keep[i] = true;
            mass += p[i];
            if mass >= opts.top_p {
                break;
            }
        }
        let total: f32 = p
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(v, _)| v)
            .sum();
        for (v, k) in p.iter_mut().zip(&keep) {
            *v = if *k { *v / total } else { 0.0 };
        }
    }
    p
}

/// Draw an index from a distribution with the given uniform number in [0, 1).
pub fn draw(p: &[f32], u: f32) -> u32 {
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > 0.0 {
            acc += v;
            last = i;
            if u < acc {
                return i as u32;
            }
        }
    }
    last as u32
}

/// Picks the next token from logits: greedy or seeded sampling.
pub struct Sampler {
    opts: SamplingOptions,
    rng: StdRng,
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Self {
        Sampler {
            opts,
            rng: StdRng::seed_from_u64(opts.seed),
        }
    }
    pub fn options(&self) -> &SamplingOptions {
        &self.opts
    }
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }
    /// The next token from a logits tensor `[1, vocab]` on `b`: greedy reads back only the argmax
    /// (`Backend::top_k`), sampling the whole row.
    pub async fn pick_from<B: Backend>(&mut self, b: &B, logits: &B::Tensor) -> u32 {
        if self.opts.is_greedy() {
            let top = b.read(&b.top_k(logits, 1)).await;
            return top.get(1).map_or(0, |&i| i as u32);
        }
        self.pick(&b.read(logits).await)
    }

    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.opts.is_greedy() {
            return argmax(logits);
        }
        let p = sampling_distribution(logits, &self.opts);
        let u = self.uniform();
        draw(&p, u)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeResult {
    /// Generated ids, EOS excluded.
    pub tokens: Vec<u32>,
    /// Whether decoding stopped at an EOS token.
    pub hit_eos: bool,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Plain decoding: prefill `prompt_ids` (image features at the image tokens), then one target
/// forward per new token. `on_token` sees each token as it lands and may return `false` to cancel.
#[allow(clippy::too_many_arguments)]
pub async fn decode_plain<B: Backend>(
    b: &B,
    model: &LlavaModel<B>,
    prompt_ids: &[u32],
    image_features: Option<&B::Tensor>,
    eos: &[u32],
    max_new_tokens: usize,
    sampling: SamplingOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<DecodeResult> {
    sampling.validate()?;
    let mut sampler = Sampler::new(sampling);
    let t0 = web_time::Instant::now();
    let mut cache = model.text.new_cache(b, prompt_ids.len() + max_new_tokens);
    let x = model.embed_prompt(b, prompt_ids, image_features)?;
    let positions: Vec<u32> = (0..prompt_ids.len() as u32).collect();
    let logits = model.forward(
        b,
        &mut cache,
        0,
        x,
        &positions,
        &AttnMask::Causal,
        LogitRows::Last,
    );
    let mut next = sampler.pick_from(b, &logits).await;
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = web_time::Instant::now();
    let mut out = DecodeResult {
        prefill_ms,
        ..Default::default()
    };
    let mut len = prompt_ids.len();
    while out.tokens.len() < max_new_tokens {
        if eos.contains(&next) {
            out.hit_eos = true;
            break;
        }
        out.tokens.push(next);
        if !on_token(next) {
            return Err(Error::Cancelled);
        }
        if out.tokens.len() == max_new_tokens {
            break;
        }
        let x = model.text.embed(b, &[next]);
        let l = model.forward(
            b,
            &mut cache,
            len,
            x,
            &[len as u32],
            &AttnMask::Causal,
            LogitRows::Last,
        );
        next = sampler.pick_from(b, &l).await;
        len += 1;
    }
    out.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus() {
        let logits = [3.0f32, 2.0, 1.0, -5.0];
        let opts = SamplingOptions {
            temperature: 1.0,
            top_p: 0.8,
            seed: 1,
        };
        let p = sampling_distribution(&logits, &opts);
        // softmax = [0.665, 0.245, 0.090, 0.0002]: 0.665 < 0.8, so two tokens are kept.
        assert!(
            p[0] > 0.7 && p[1] > 0.2 && p[2] == 0.0 && p[3] == 0.0,
            "{p:?}"
        );
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let opts = SamplingOptions {
            temperature: 0.9,
            top_p: 0.95,
            seed: 42,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(opts);
            (0..20).map(|_| s.pick(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(opts);
            (0..20).map(|_| s.pick(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&t| t != a[0]),
            "sampling should not be constant: {a:?}"
        );
    }
}
