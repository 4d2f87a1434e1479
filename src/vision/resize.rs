//! PIL's `Image.resize` for 8-bit RGB images, bit for bit.
//!
//! As Pillow does it: separable passes (horizontal, then vertical, or the other way round where
//! Pillow 13 does), each rounded to 8 bits, with PIL's filters, support widened when downscaling
//! (antialiasing) and 22-bit fixed-point coefficients; NEAREST goes through PIL's affine "scale"
//! transform instead. transformers' slow image processors resize this way (see `super::preprocess`).

/// PIL resampling filters, by their PIL/transformers numbers (`resample` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

/// An 8-bit RGB raster, row-major, 3 bytes per pixel.
pub(super) struct Pixels {
    pub(super) data: Vec<u8>,
    pub(super) width: usize,
    pub(super) height: usize,
}

/// PIL's `Image.resize((out_w, out_h), resample)` for an RGB image.
pub(super) fn resize(src: Pixels, out_w: usize, out_h: usize, filter: Resample) -> Pixels {
    if (src.width, src.height) == (out_w, out_h) {
        return src; // PIL returns a copy
    }
    if filter == Resample::Nearest {
        return resize_nearest(&src, out_w, out_h);
    }
    // Like PIL, each axis is resampled only when its size changes. The pass order matters (the
    // intermediate is rounded to 8 bits): Pillow 13 goes vertical first when the height shrinks
    // by more than twice as many pixels as the width does (python-pillow/Pillow#9549; we
    // measured the exact rule on Pillow 13.0.0), horizontal first otherwise, as older Pillow always did.
    let (in_w, in_h) = (src.width as i64, src.height as i64);
    let vertical_first = (out_h as i64) < in_h && 2 * (in_w - out_w as i64) < in_h - out_h as i64;
    let horizontal = |img: Pixels| {
        if img.width == out_w {
            return img;
        }
        resample_pass(&img, &Taps::new(img.width, out_w, filter), true)
    };
    let vertical = |img: Pixels| {
        if img.height == out_h {
            return img;
        }
        resample_pass(&img, &Taps::new(img.height, out_h, filter), false)
    };
    if vertical_first {
        horizontal(vertical(src))
    } else {
        vertical(horizontal(src))
    }
}

/// PIL resizes with NEAREST through its affine "scale" transform: the source coordinate is
/// accumulated in f64 from `scale / 2` in steps of `scale` and truncated.
fn resize_nearest(src: &Pixels, out_w: usize, out_h: usize) -> Pixels {
    let index = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
        let step = f64::from(in_size as f32) / out_size as f64;
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let i = (pos >= 0.0)
                    .then_some(pos as usize)
                    .filter(|&i| i < in_size);
                pos += step;
                i
            })
            .collect()
    };
    let (xs, ys) = (index(src.width, out_w), index(src.height, out_h));
    let mut data = vec![0u8; out_w * out_h * 3];
    for (y, sy) in ys.iter().enumerate() {
        for (x, sx) in xs.iter().enumerate() {
            if let (Some(sx), Some(sy)) = (sx, sy) {
                let s = (sy * src.width + sx) * 3;
                data[(y * out_w + x) * 3..][..3].copy_from_slice(&src.data[s..s + 3]);
            }
        }
    }
    Pixels {
        data,
        width: out_w,
        height: out_h,
    }
}

/// PIL's fixed-point precision for 8-bit resampling: 32 bits minus 8 for the value and 2 for
/// overshoot of the negative-lobed filters.
const PRECISION_BITS: u32 = 22;

/// The filter taps of one resampling pass: for each output index, the first input index and
/// its integer weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    /// As PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`.
    fn new(in_size: usize, out_size: usize, filter: Resample) -> Taps {
        // PIL passes the box edges as C floats; widening the f32 keeps its arithmetic.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0); // downscaling widens the filter (antialiasing)
        let support = filter_support(filter) * filterscale;
        let inv = 1.0 / filterscale;
        let mut first = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; the bounds are then clamped to the image.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter_weight(filter, (x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let scaled = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            first.push(xmin as usize);
            weights.push(fixed);
        }
        Taps { first, weights }
    }
}

/// One separable pass, rounding each result to 8 bits as PIL does between the passes.
fn resample_pass(src: &Pixels, taps: &Taps, horizontal: bool) -> Pixels {
    let (out_w, out_h) = if horizontal {
        (taps.first.len(), src.height)
    } else {
        (src.width, taps.first.len())
    };
    let mut data = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            let (o, fixed) = if horizontal { (x, y) } else { (y, x) };
            let (start, k) = (taps.first[o], &taps.weights[o]);
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3]; // + 0.5 for rounding
            for (i, &w) in k.iter().enumerate() {
                let s = if horizontal {
                    (fixed * src.width + start + i) * 3
                } else {
                    ((start + i) * src.width + fixed) * 3
                };
                for (a, &v) in acc.iter_mut().zip(&src.data[s..s + 3]) {
                    *a += i64::from(v) * i64::from(w);
                }
            }
            let d = (y * out_w + x) * 3;
            for (out, a) in data[d..d + 3].iter_mut().zip(acc) {
                *out = (a >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    Pixels {
        data,
        width: out_w,
        height: out_h,
    }
}

fn filter_support(filter: Resample) -> f64 {
    match filter {
        Resample::Nearest | Resample::Box => 0.5,
        Resample::Bilinear | Resample::Hamming => 1.0,
        Resample::Bicubic => 2.0,
        Resample::Lanczos => 3.0,
    }
}

/// PIL's filter kernels (bicubic with a = -0.5), evaluated in f64 in PIL's operation order.
fn filter_weight(filter: Resample, x: f64) -> f64 {
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            (x * std::f64::consts::PI).sin() / (x * std::f64::consts::PI)
        }
    };
    match filter {
        Resample::Nearest | Resample::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
        Resample::Bilinear => (1.0 - x.abs()).max(0.0),
        Resample::Hamming => {
            let x = x.abs();
            if x == 0.0 {
                1.0
            } else if x >= 1.0 {
                0.0
            } else {
                let x = x * std::f64::consts::PI;
                // PIL writes the constants as C floats.
                x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
            }
        }
        Resample::Bicubic => {
            const A: f64 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
        Resample::Lanczos => {
            if (-3.0..3.0).contains(&x) {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 336), (20, 53), (7, 3), (3, 7)] {
            let taps = Taps::new(i, o, Resample::Bicubic);
            for k in &taps.weights {
                let sum: i32 = k.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i32,
                    "{i}->{o}: {sum}"
                );
            }
        }
    }
}
