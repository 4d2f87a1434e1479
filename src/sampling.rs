//! Choosing the next token from logits: greedy, or sampled with temperature / top-p and a seed.
//!
//! Sampling follows transformers' logits processors: divide by the temperature, keep the smallest
//! set of most likely tokens whose probability mass reaches `top_p` (at least one), renormalise,
//! draw. Greedy picks the first maximal logit, like `torch.argmax`. Plain decoding
//! ([`crate::generate`]) and speculative verification ([`crate::speculative`]) share these, so the
//! two draw from exactly the same distribution.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::backend::{Backend, TopK, MAX_TOP_K};
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

/// The top-p nucleus from a [`Backend::top_k_scaled`] read-back of one row at scale
/// 1 / temperature: (token, probability) pairs, best first, renormalised over the nucleus, as
/// [`sampling_distribution`] keeps them. `None` when the read-back cannot tell: top-p is 1 (every
/// token stays), the entries run out before their mass reaches top-p, or a value, id or the
/// log-sum-exp is not usable. Then the caller reads the whole row.
pub fn nucleus_from_top(
    top: &TopK,
    opts: &SamplingOptions,
    vocab: usize,
) -> Option<Vec<(u32, f32)>> {
    if opts.top_p >= 1.0 || !top.lse.is_finite() {
        return None;
    }
    let mut kept = Vec::new();
    let mut mass = 0.0f32;
    for (&id, &v) in top.ids.iter().zip(&top.values) {
        if !v.is_finite() || id as usize >= vocab {
            return None;
        }
        let p = (v - top.lse).exp();
        kept.push((id, p));
        mass += p;
        if mass >= opts.top_p {
            let total: f32 = kept.iter().map(|&(_, p)| p).sum();
            return Some(kept.into_iter().map(|(id, p)| (id, p / total)).collect());
        }
    }
    None
}

/// A sparse distribution (token, probability) as a dense vector long enough for its largest id.
pub fn dense(sparse: &[(u32, f32)]) -> Vec<f32> {
    let len = sparse
        .iter()
        .map(|&(id, _)| id as usize + 1)
        .max()
        .unwrap_or(0);
    let mut p = vec![0.0; len];
    for &(id, v) in sparse {
        p[id as usize] = v;
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
    /// (`Backend::top_k`), nucleus sampling the best [`MAX_TOP_K`] at the temperature when the
    /// nucleus is among them, else the whole row. `None` when the logits are not finite (NaN or
    /// +inf: a broken model), so that no NaN ever becomes a token id.
    pub async fn pick_from<B: Backend>(&mut self, b: &B, logits: &B::Tensor) -> Option<u32> {
        let vocab = b.dims(logits).1;
        if self.opts.is_greedy() {
            let top = TopK::parse(&b.read(&b.top_k(logits, 1)).await, 1, vocab);
            return top.first().and_then(|t| greedy_token(t, vocab));
        }
        if let Some(tops) = read_nuclei(b, logits, &self.opts).await {
            let p = dense(tops.first()?);
            let u = self.uniform();
            return Some(draw(&p, u));
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

/// The top-p nucleus of every row of `logits` from one [`Backend::top_k_scaled`] read-back
/// ([`MAX_TOP_K`] entries a row at scale 1 / temperature, not the vocabulary); `None` when top-p
/// is 1 or some row's nucleus is wider (see [`nucleus_from_top`]).
pub async fn read_nuclei<B: Backend>(
    b: &B,
    logits: &B::Tensor,
    opts: &SamplingOptions,
) -> Option<Vec<Vec<(u32, f32)>>> {
    if opts.top_p >= 1.0 || opts.is_greedy() {
        return None;
    }
    let vocab = b.dims(logits).1;
    let top = b.top_k_scaled(logits, MAX_TOP_K, 1.0 / opts.temperature);
    TopK::parse(&b.read(&top).await, MAX_TOP_K, vocab)
        .iter()
        .map(|t| nucleus_from_top(t, opts, vocab))
        .collect()
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
    fn the_nucleus_from_a_top_k_read_back_is_the_sampling_distribution() {
        use crate::backend::cpu::CpuBackend;
        use rand::{Rng, SeedableRng};
        let b = CpuBackend;
        let mut rng = StdRng::seed_from_u64(3);
        let vocab = 300;
        let (mut fitted, mut wide) = (0, 0);
        for trial in 0..200 {
            // Peaked rows (a few tokens hold the mass) and flat ones (the nucleus is wider
            // than the read-back).
            let spread = if trial % 4 == 0 { 0.05 } else { 4.0 };
            let logits: Vec<f32> = (0..vocab)
                .map(|_| rng.random_range(-1.0f32..1.0) * spread * 3.0)
                .collect();
            for (temperature, top_p) in [(0.7, 0.9), (1.0, 0.5), (1.3, 0.95)] {
                let opts = SamplingOptions {
                    temperature,
                    top_p,
                    seed: 0,
                };
                let x = b.tensor(logits.clone(), 1, vocab);
                let top = TopK::parse(
                    &b.top_k_scaled(&x, MAX_TOP_K, 1.0 / temperature).data,
                    MAX_TOP_K,
                    vocab,
                );
                let want = sampling_distribution(&logits, &opts);
                match nucleus_from_top(&top[0], &opts, vocab) {
                    Some(n) => {
                        fitted += 1;
                        let got = dense(&n);
                        let kept = want.iter().filter(|&&p| p > 0.0).count();
                        assert_eq!(n.len(), kept, "nucleus size");
                        for (i, &w) in want.iter().enumerate() {
                            let g = got.get(i).copied().unwrap_or(0.0);
                            assert!((g - w).abs() <= 1e-5, "token {i}: {g} vs {w}");
                        }
                    }
                    None => {
                        wide += 1;
                        assert!(want.iter().filter(|&&p| p > 0.0).count() >= MAX_TOP_K);
                    }
                }
            }
        }
        assert!(
            fitted > 100 && wide > 100,
            "{fitted} fitted, {wide} too wide"
        );
        // Top-p 1 keeps every token: never from a read-back.
        let opts = SamplingOptions {
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
        };
        let x = b.tensor(vec![5.0, 0.0, 0.0], 1, 3);
        let top = TopK::parse(&b.top_k_scaled(&x, MAX_TOP_K, 1.0).data, MAX_TOP_K, 3);
        assert_eq!(nucleus_from_top(&top[0], &opts, 3), None);
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
