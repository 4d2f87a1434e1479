//! Numerics both executors share, so the CPU reference and the GPU engine start from the same
//! numbers: softmax (as transformers' eager path computes it, in f32) and the RoPE inverse
//! frequencies (rotate-half convention, Su et al. 2021, as transformers' Llama computes them).
//! Nothing here knows a tensor type; the backends and the sampler call these on plain slices.

/// Rotary position embedding parameters (rotate-half convention, as in transformers' Llama).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Linear scaling: positions are divided by this factor.
    pub linear_factor: f64,
}

/// `softmax` in place over `xs`, ignoring entries equal to `-inf`.
pub fn softmax_in_place(xs: &mut [f32]) {
    let max = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in xs.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in xs.iter_mut() {
        *x /= sum;
    }
}

/// Inverse frequencies as transformers computes them (in f32).
pub fn rope_inv_freq(head_dim: usize, rope: Rope) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let inv = 1.0 / (rope.theta as f32).powf(exponent);
            (inv as f64 / rope.linear_factor) as f32
        })
        .collect()
}
