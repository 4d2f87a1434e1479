//! Rasterises a scene: background pattern, anti-aliased shapes (4x4 supersampling of exact
//! inside/outside tests), then a mild blur and pixel noise so the images are not pixel-identical
//! templates.
//!
//! Only `+ - * /`, `floor` and comparisons are used (IEEE-exact everywhere), and rotations use a
//! Taylor series instead of the platform's `sin`/`cos`, so every platform draws the same bytes.

use super::{Background, ObjectSpec, Pattern, Shape, IMAGE_SIZE};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::Rng;

const SIDE: usize = IMAGE_SIZE as usize;
/// Samples per pixel edge for shapes (16 samples per pixel).
const SUPERSAMPLE: usize = 4;

type Canvas = Vec<[f32; 3]>;

/// Draws `objects` over a `background` and returns the finished image.
pub(super) fn render(rng: &mut StdRng, background: Background, objects: &[ObjectSpec]) -> RgbImage {
    let mut canvas = paint_background(rng, background);
    for object in objects {
        paint_object(&mut canvas, object);
    }
    if rng.random_bool(0.6) {
        let amount = rng.random_range(0.15..0.5);
        blur(&mut canvas, amount);
    }
    let noise = rng.random_range(0.0..5.0f32);
    to_image(rng, &canvas, noise)
}

fn paint_background(rng: &mut StdRng, background: Background) -> Canvas {
    let base = background
        .colour
        .rgb()
        .map(|v| f32::from(v) + rng.random_range(-8.0..=8.0f32));
    let mut canvas = vec![base; SIDE * SIDE];
    // Patterns shift lightness only (the same delta on every channel), so the hue that names the
    // background colour stays put.
    let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    match background.pattern {
        Pattern::Plain => {}
        Pattern::Shaded => {
            let delta = sign * rng.random_range(28.0..42.0f32);
            let (dx, dy) = unit_direction(rng.random_range(0..8));
            for_each_pixel(&mut canvas, |x, y, px| {
                let half = SIDE as f32 / 2.0;
                // |t| <= 1 over the image for every direction (corners reach 1 on diagonals).
                let t = ((x - half) * dx + (y - half) * dy) / (half * 1.42);
                add(px, delta * t);
            });
        }
        Pattern::Striped => {
            let delta = sign * rng.random_range(24.0..36.0f32);
            let period = rng.random_range(6.0..10.0f32);
            let phase = rng.random_range(0.0..period);
            let (dx, dy) = unit_direction(rng.random_range(0..4));
            for_each_pixel(&mut canvas, |x, y, px| {
                // 2x2 supersampling softens the stripe edges.
                let mut on = 0.0;
                for (ox, oy) in [(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)] {
                    let s = ((x + ox) * dx + (y + oy) * dy + phase) / period;
                    if (s - s.floor()) >= 0.5 {
                        on += 0.25;
                    }
                }
                add(px, delta * on);
            });
        }
        Pattern::Noisy => {
            let amplitude = rng.random_range(16.0..26.0f32);
            for px in canvas.iter_mut() {
                let shared = rng.random_range(-amplitude..=amplitude);
                for channel in px.iter_mut() {
                    *channel += shared + rng.random_range(-4.0..=4.0f32);
                }
            }
        }
    }
    canvas
}

/// One of eight directions (0 = +x, counting by 45 degrees); the first four are the distinct
/// stripe orientations.
fn unit_direction(index: usize) -> (f32, f32) {
    const D: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const DIRS: [(f32, f32); 8] = [
        (1.0, 0.0),
        (D, D),
        (0.0, 1.0),
        (-D, D),
        (-1.0, 0.0),
        (-D, -D),
        (0.0, -1.0),
        (D, -D),
    ];
    DIRS[index % DIRS.len()]
}

/// Calls `f(x_centre, y_centre, pixel)` for every pixel.
fn for_each_pixel(canvas: &mut Canvas, mut f: impl FnMut(f32, f32, &mut [f32; 3])) {
    for (i, px) in canvas.iter_mut().enumerate() {
        f((i % SIDE) as f32 + 0.5, (i / SIDE) as f32 + 0.5, px);
    }
}

fn add(px: &mut [f32; 3], delta: f32) {
    for channel in px.iter_mut() {
        *channel += delta;
    }
}

/// Blends the object's colour over the canvas by its coverage of each pixel.
fn paint_object(canvas: &mut Canvas, object: &ObjectSpec) {
    let (sin, cos) = sin_cos_small(object.rotation);
    let [cx, cy] = object.centre;
    let reach = object.radius + 1.0;
    let lo = |c: f32| (c - reach).floor().max(0.0) as usize;
    let hi = |c: f32| ((c + reach).ceil() as usize).min(SIDE);
    let colour = object.rgb.map(f32::from);
    let step = 1.0 / SUPERSAMPLE as f32;
    let per_pixel = (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for y in lo(cy)..hi(cy) {
        for x in lo(cx)..hi(cx) {
            let mut hits = 0u32;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let px = x as f32 + (sx as f32 + 0.5) * step - cx;
                    let py = y as f32 + (sy as f32 + 0.5) * step - cy;
                    // Rotate the sample back into the shape's own frame, in units of the radius.
                    let u = (px * cos + py * sin) / object.radius;
                    let v = (-px * sin + py * cos) / object.radius;
                    if contains(object.shape, u, v) {
                        hits += 1;
                    }
                }
            }
            if hits > 0 {
                let coverage = hits as f32 / per_pixel;
                let px = &mut canvas[y * SIDE + x];
                for (channel, target) in px.iter_mut().zip(colour) {
                    *channel += (target - *channel) * coverage;
                }
            }
        }
    }
}

/// Whether the point (u, v) of the shape's frame is inside it: unit radius, v pointing down, every
/// shape within the unit circle so rotation keeps it inside its cell.
fn contains(shape: Shape, u: f32, v: f32) -> bool {
    let r2 = u * u + v * v;
    match shape {
        Shape::Circle => r2 <= 0.95 * 0.95,
        Shape::Ring => (0.52 * 0.52..=0.95 * 0.95).contains(&r2),
        Shape::Square => u.abs() <= 0.7 && v.abs() <= 0.7,
        // Taller than wide, so it never reads as a rotated square.
        Shape::Diamond => u.abs() / 0.7 + v.abs() / 0.98 <= 1.0,
        Shape::Cross => {
            let (a, b) = (u.abs(), v.abs());
            (a <= 0.3 && b <= 0.92) || (b <= 0.3 && a <= 0.92)
        }
        Shape::Triangle => in_polygon(&TRIANGLE, u, v),
        Shape::Star => in_polygon(&STAR, u, v),
        Shape::Heart => {
            // (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with y up; the scale and shift centre it in the unit
            // circle (largest radius 0.985).
            let x = u * 1.3;
            let y = -v * 1.3 + 0.2;
            let q = x * x + y * y - 1.0;
            q * q * q - x * x * y * y * y <= 0.0
        }
    }
}

/// Upright equilateral triangle inscribed in the unit circle.
const TRIANGLE: [(f32, f32); 3] = [(0.0, -1.0), (0.866_025_4, 0.5), (-0.866_025_4, 0.5)];

/// Five-pointed star, point up: outer radius 1, inner radius 0.45, vertices every 36 degrees.
const STAR: [(f32, f32); 10] = {
    // sin and cos of 0, 36, ..., 324 degrees measured from straight up.
    const S: [f32; 10] = [
        0.0,
        0.587_785_3,
        0.951_056_5,
        0.951_056_5,
        0.587_785_3,
        0.0,
        -0.587_785_3,
        -0.951_056_5,
        -0.951_056_5,
        -0.587_785_3,
    ];
    const C: [f32; 10] = [
        1.0, 0.809_017, 0.309_017, -0.309_017, -0.809_017, -1.0, -0.809_017, -0.309_017, 0.309_017,
        0.809_017,
    ];
    let mut out = [(0.0, 0.0); 10];
    let mut i = 0;
    while i < 10 {
        let r = if i % 2 == 0 { 1.0 } else { 0.45 };
        out[i] = (r * S[i], -r * C[i]);
        i += 1;
    }
    out
};

/// Even-odd point-in-polygon test.
fn in_polygon(vertices: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = vertices.len() - 1;
    for (i, &(xi, yi)) in vertices.iter().enumerate() {
        let (xj, yj) = vertices[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// sin and cos for |angle| <= 0.5 rad by Taylor series (error < 1e-7), so rotation is
/// bit-identical on every platform.
fn sin_cos_small(angle: f32) -> (f32, f32) {
    let a2 = angle * angle;
    let sin = angle * (1.0 - a2 / 6.0 * (1.0 - a2 / 20.0 * (1.0 - a2 / 42.0 * (1.0 - a2 / 72.0))));
    let cos = 1.0 - a2 / 2.0 * (1.0 - a2 / 12.0 * (1.0 - a2 / 30.0 * (1.0 - a2 / 56.0)));
    (sin, cos)
}

/// Mixes each pixel with its 3x3 neighbourhood mean (edges clamped): `amount` 0 = no blur.
fn blur(canvas: &mut Canvas, amount: f32) {
    let source = canvas.clone();
    let at = |x: isize, y: isize| {
        let cx = x.clamp(0, SIDE as isize - 1) as usize;
        let cy = y.clamp(0, SIDE as isize - 1) as usize;
        source[cy * SIDE + cx]
    };
    for (i, px) in canvas.iter_mut().enumerate() {
        let (x, y) = ((i % SIDE) as isize, (i / SIDE) as isize);
        let mut sum = [0.0f32; 3];
        for dy in -1..=1 {
            for dx in -1..=1 {
                for (s, v) in sum.iter_mut().zip(at(x + dx, y + dy)) {
                    *s += v;
                }
            }
        }
        for (channel, s) in px.iter_mut().zip(sum) {
            *channel += (s / 9.0 - *channel) * amount;
        }
    }
}

/// Adds uniform per-channel noise of up to `noise` levels and quantises to 8 bits.
fn to_image(rng: &mut StdRng, canvas: &Canvas, noise: f32) -> RgbImage {
    let mut bytes = Vec::with_capacity(SIDE * SIDE * 3);
    for px in canvas {
        for &channel in px {
            let jitter = if noise > 0.0 {
                rng.random_range(-noise..=noise)
            } else {
                0.0
            };
            bytes.push((channel + jitter + 0.5).clamp(0.0, 255.0) as u8);
        }
    }
    // The buffer always holds SIDE x SIDE x 3 bytes; a blank image stands in rather than a panic.
    RgbImage::from_raw(IMAGE_SIZE, IMAGE_SIZE, bytes)
        .unwrap_or_else(|| RgbImage::new(IMAGE_SIZE, IMAGE_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_fits_in_the_unit_circle_and_covers_a_fair_area() {
        // Scan a fine grid: nothing outside radius 1, and area ratios that keep shapes readable.
        let n = 200;
        for shape in Shape::ALL {
            let (mut inside, mut outside_unit) = (0, 0);
            for iy in 0..n {
                for ix in 0..n {
                    let u = -1.1 + 2.2 * (ix as f32 + 0.5) / n as f32;
                    let v = -1.1 + 2.2 * (iy as f32 + 0.5) / n as f32;
                    if contains(shape, u, v) {
                        inside += 1;
                        if u * u + v * v > 1.0 {
                            outside_unit += 1;
                        }
                    }
                }
            }
            let area = inside as f32 * (2.2 * 2.2) / (n * n) as f32;
            assert_eq!(outside_unit, 0, "{shape:?} leaves the unit circle");
            assert!((0.8..3.0).contains(&area), "{shape:?} area {area}");
        }
    }

    #[test]
    fn taylor_sin_cos_matches_libm() {
        for i in -50..=50 {
            let a = i as f32 / 100.0;
            let (s, c) = sin_cos_small(a);
            assert!(
                (s - a.sin()).abs() < 1e-6 && (c - a.cos()).abs() < 1e-6,
                "angle {a}"
            );
        }
    }
}
