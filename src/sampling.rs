//! Choosing the next token from logits: greedy, or sampled with temperature / top-p and a seed.
//!
//! Sampling follows transformers' logits processors: divide by the temperature, keep the smallest
//! set of most likely tokens whose probability mass reaches `top_p` (at least one), renormalise,
//! draw. Greedy picks the first maximal logit, like `torch.argmax`. Plain decoding
//! ([`crate::generate`]) and speculative verification ([`crate::speculative`]) share these, so the
//! two draw from exactly the same distribution.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::backend::{Backend, TopK};
use crate::error::{Error, Result};

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

/// The argmax a `top_k(_, 1)` read-back holds, or `None` when the row had no finite maximum or a
/// finite log-sum-exp (NaN or +inf logits) or the id is outside the vocabulary.
pub fn greedy_token(top: &TopK, vocab: usize) -> Option<u32> {
    let (&id, &value) = (top.ids.first()?, top.values.first()?);
    (value.is_finite() && top.lse.is_finite() && (id as usize) < vocab).then_some(id)
}

/// Whether a logits row can be sampled from: no NaN, no +inf, and some finite value (-inf entries
/// are masked tokens and fine).
pub fn row_is_finite(row: &[f32]) -> bool {
    row.iter().all(|v| !v.is_nan() && *v != f32::INFINITY) && row.iter().any(|v| v.is_finite())
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
    crate::backend::math::softmax_in_place(&mut p);
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
    /// (`Backend::top_k`), sampling the whole row. `None` when the logits are not finite (NaN or
    /// +inf: a broken model), so that no NaN ever becomes a token id.
    pub async fn pick_from<B: Backend>(&mut self, b: &B, logits: &B::Tensor) -> Option<u32> {
        let vocab = b.dims(logits).1;
        if self.opts.is_greedy() {
            let top = TopK::parse(&b.read(&b.top_k(logits, 1)).await, 1, vocab);
            return top.first().and_then(|t| greedy_token(t, vocab));
        }
        let row = b.read(logits).await;
        row_is_finite(&row).then(|| self.pick(&row))
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
    fn non_finite_rows_give_no_token() {
        let top = |v: f32, id: u32, lse: f32| TopK {
            ids: vec![id],
            values: vec![v],
            lse,
        };
        assert_eq!(greedy_token(&top(2.0, 7, 3.0), 10), Some(7));
        assert_eq!(greedy_token(&top(f32::NAN, 7, 3.0), 10), None);
        assert_eq!(greedy_token(&top(2.0, 7, f32::NAN), 10), None);
        assert_eq!(greedy_token(&top(f32::MIN, u32::MAX, f32::NAN), 10), None);
        assert_eq!(greedy_token(&top(2.0, 10, 3.0), 10), None);
        assert!(row_is_finite(&[1.0, f32::NEG_INFINITY]));
        assert!(!row_is_finite(&[1.0, f32::NAN]));
        assert!(!row_is_finite(&[1.0, f32::INFINITY]));
        assert!(!row_is_finite(&[f32::NEG_INFINITY]));
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
