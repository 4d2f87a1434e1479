//! Numerics both executors share, so the CPU reference and the GPU engine start from the same
//! numbers: softmax (as transformers' eager path computes it, in f32) and the RoPE inverse
//! frequencies (rotate-half convention, Su et al. 2021, as transformers' Llama computes them),
//! and the exponential they and the activations take ([`exp`]).
//! Nothing here knows a tensor type; the backends and the sampler call these on plain slices.

/// Rotary position embedding parameters (rotate-half convention, as in transformers' Llama).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Linear scaling: positions are divided by this factor.
    pub linear_factor: f64,
}

/// `softmax` in place over `xs`, ignoring entries equal to `-inf`.
///
/// The maximum runs in 8 lanes (exact in any order). The sum runs in 16 lanes over the entries
/// that are not masked, taken in order with the masked ones left out: a tree row that sees the
/// keys plain decoding sees, with masked slots (`-inf`) between them, then sums the same sequence
/// in the same lanes, bit for bit what plain decoding sums (in lanes over the slots, the gaps
/// would move entries across lanes). One chain of dependent adds per entry cost a long prompt's
/// rows ~5% of a pass.
#[inline(always)]
pub fn softmax_in_place(xs: &mut [f32]) {
    const LANES: usize = 8;
    let mut top = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (t, &x) in top.iter_mut().zip(c) {
            *t = t.max(x);
        }
    }
    let max = top
        .iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    // A fold, not `any`: without the early exit the loop vectorizes.
    let masked = xs.iter().fold(false, |m, &x| m | (x == f32::NEG_INFINITY));
    // Only a row with masked slots (a tree row) notes where its visible entries are, to sum them
    // gathered once their exponentials are taken.
    let visible: Vec<usize> = match masked {
        true => (0..xs.len())
            .filter(|&i| xs[i] != f32::NEG_INFINITY)
            .collect(),
        false => Vec::new(),
    };
    // The exponentials in a loop of their own: it vectorizes.
    for x in xs.iter_mut() {
        *x = exp(*x - max);
    }
    let sum = match masked {
        true => lanes_sum(&visible.iter().map(|&i| xs[i]).collect::<Vec<_>>()),
        false => lanes_sum(xs),
    };
    for x in xs.iter_mut() {
        *x /= sum;
    }
}

/// `xs` summed in 16 lanes (lane `l` takes entries `16 c + l` in order), the lanes by halves, then
/// the leftover entries in order.
#[inline(always)]
fn lanes_sum(xs: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            acc[l] += acc[l + half];
        }
        half /= 2;
    }
    chunks.remainder().iter().fold(acc[0], |a, &x| a + x)
}

/// `e^x` within one ulp (Cody-Waite reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, then
/// the degree-7 polynomial of Cephes' `expf`), `0` below `-87.34` (where f32 turns subnormal:
/// `exp(-inf)` is exactly 0, as a masked softmax entry needs), `inf` above `88.72`, NaN for NaN.
///
/// Written without branches or library calls so that a loop over it vectorizes: libm's `expf` is
/// one call per element, and the silu of a decoder's MLP and its attention softmax spent ~10% of
/// a 32-row CPU pass there. The same operations run in every lane, so a vectorized loop computes
/// what the scalar function does, bit for bit.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const HI: f32 = 88.722_84;
    const LO: f32 = -87.336_55;
    // `1.5 * 2^23`: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that `n * LN2_HI` is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let c = x.clamp(LO, HI);
    let t = c * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // n from t's bits (it sits in the mantissa, offset by ROUND's); 2^n as 2^(n/2) 2^(n - n/2)
    // so that n = 128 (x just below HI) and n = -126 both scale by normal powers of two.
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = e * pow2(n >> 1) * pow2(n - (n >> 1));
    if x.is_nan() {
        x
    } else if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Units in the last place between two positive finite floats.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_is_within_one_ulp_of_the_correctly_rounded_value_over_its_range() {
        let mut worst = 0;
        let mut x = -87.3f32;
        while x < 88.7 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 0.000_731;
        }
        assert!(worst <= 1, "{worst} ulps");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_ends_in_zero_infinity_and_nan() {
        assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn a_vectorized_loop_of_exp_equals_it_element_by_element() {
        let xs: Vec<f32> = (0..4099).map(|i| (i as f32 - 2000.0) * 0.043).collect();
        let mut v = xs.clone();
        v.iter_mut().for_each(|x| *x = exp(*x));
        let one_by_one: Vec<u32> = xs
            .iter()
            .map(|&x| exp(std::hint::black_box(x)).to_bits())
            .collect();
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            one_by_one
        );
    }

    #[test]
    fn softmax_ignores_minus_infinity_and_sums_to_one() {
        let mut xs = vec![1.0, f32::NEG_INFINITY, 3.0, -2.0];
        softmax_in_place(&mut xs);
        assert_eq!(xs[1], 0.0);
        assert!((xs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((xs[2] / xs[0] - 2f32.exp()).abs() < 1e-5);
    }

    #[test]
    fn masked_gaps_leave_the_visible_probabilities_bit_for_bit_the_same() {
        // What a tree row computes (its ancestors with masked siblings between them) against
        // what plain decoding computes (the same keys side by side).
        let seen: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.173 - 8.0)
            .collect();
        let mut gapped = Vec::new();
        for (i, &x) in seen.iter().enumerate() {
            gapped.push(x);
            gapped.extend(std::iter::repeat_n(f32::NEG_INFINITY, i % 3));
        }
        let mut plain = seen.clone();
        softmax_in_place(&mut plain);
        softmax_in_place(&mut gapped);
        let visible: Vec<u32> = gapped
            .iter()
            .filter(|&&p| p != 0.0)
            .map(|p| p.to_bits())
            .collect();
        assert_eq!(
            visible,
            plain.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
        );
    }
}
