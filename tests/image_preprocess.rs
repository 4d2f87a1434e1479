//! Decoding and preprocessing against transformers' slow (PIL) image processors.
//!
//! Fixtures: tests/fixtures/images/, made by tools/reference/make_image_fixtures.py (cases.json
//! lists the images, processors and expected tensors in expected.safetensors).
//! Tolerances: the brief asks for 1e-5 without a resize and 2/255 in pixel units after one; we
//! replicate PIL's integer arithmetic, so on identical input pixels we require (and get) equality
//! up to f32 rounding (1e-6) in both cases. Lossless formats must decode exactly as PIL does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use image::RgbImage;
use safetensors::SafeTensors;
use serde_json::Value;
use spec_llava::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};
use spec_llava::vision::preprocess::ImageProcessor;

/// zune-jpeg differs from PIL's libjpeg-turbo by a few levels (IDCT and chroma upsampling
/// rounding; measured up to 7 on these fixtures): the allowed decode gap, in 1/255 levels.
const LOSSY_DECODE_TOL: u8 = 8;
/// Identical input pixels give identical pixel_values up to f32 rounding.
const EXACT: f32 = 1e-6;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

struct Fixtures {
    manifest: Value,
    tensors: Vec<u8>,
}

impl Fixtures {
    fn load() -> Self {
        let manifest = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
        let tensors =
            std::fs::read(dir().join("expected.safetensors")).expect("expected.safetensors");
        Fixtures {
            manifest: serde_json::from_str(&manifest).expect("cases.json parses"),
            tensors,
        }
    }

    fn get(&self, key: &str) -> Option<(Vec<usize>, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.tensors).expect("safetensors");
        let t = st.tensor(key).ok()?;
        Some((t.shape().to_vec(), t.data().to_vec()))
    }

    fn f32s(&self, key: &str) -> Vec<f32> {
        let (_, bytes) = self
            .get(key)
            .unwrap_or_else(|| panic!("missing tensor {key}"));
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// PIL's RGB pixels for an image (absent for the large 336 input).
    fn pil_rgb(&self, image: &str) -> Option<RgbImage> {
        let (shape, bytes) = self.get(&format!("decoded/{image}"))?;
        RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes)
    }

    fn images(&self) -> Vec<(String, Value)> {
        let map = self.manifest["images"].as_object().expect("images");
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn processor(&self, name: &str) -> ImageProcessor {
        let file = self.manifest["processors"][name]
            .as_str()
            .expect("processor file");
        let text = std::fs::read_to_string(dir().join(file)).expect("processor config");
        ImageProcessor::from_json(&text, file).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn decode(image: &str) -> RgbImage {
    let bytes = std::fs::read(dir().join(image)).expect("fixture image");
    decode_rgb(&bytes, image, DEFAULT_MAX_PIXELS).unwrap_or_else(|e| panic!("{e}"))
}

fn max_level_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn every_format_decodes_like_pil() {
    let fx = Fixtures::load();
    let mut report = Vec::new();
    for (name, info) in fx.images() {
        let ours = decode(&name);
        let size = (
            info["width"].as_u64().unwrap() as u32,
            info["height"].as_u64().unwrap() as u32,
        );
        assert_eq!(ours.dimensions(), size, "{name}: size differs from PIL's");
        let Some(pil) = fx.pil_rgb(&name) else {
            continue;
        };
        let diff = max_level_diff(&ours, &pil);
        let lossy = info["lossy"].as_bool().unwrap();
        report.push(format!(
            "{name}: max decode diff {diff}/255 ({})",
            if lossy { "lossy" } else { "lossless" }
        ));
        let tol = if lossy { LOSSY_DECODE_TOL } else { 0 };
        assert!(
            diff <= tol,
            "{name}: decoded pixels differ from PIL's by {diff} levels (allowed {tol})"
        );
    }
    println!("{}", report.join("\n"));
}

/// Max |ours - expected| over one case, in raw pixel_values units and in 1/255 pixel levels.
struct Diff {
    raw: f32,
    levels: f32,
}

fn compare(proc: &ImageProcessor, ours: &[f32], expected: &[f32], stride: usize) -> Diff {
    let (h, w) = proc.output_size();
    let mut d = Diff {
        raw: 0.0,
        levels: 0.0,
    };
    let (sh, sw) = (h.div_ceil(stride), w.div_ceil(stride));
    assert_eq!(expected.len(), 3 * sh * sw, "expected tensor shape");
    for c in 0..3 {
        // pixel_values = (p * rescale - mean) / std, so one level is rescale / std.
        let mut level = 1.0f32;
        if proc.do_rescale {
            level *= proc.rescale_factor as f32;
        }
        if proc.do_normalize {
            level /= proc.image_std[c];
        }
        for y in 0..sh {
            for x in 0..sw {
                let a = ours[c * h * w + y * stride * w + x * stride];
                let b = expected[c * sh * sw + y * sw + x];
                d.raw = d.raw.max((a - b).abs());
                d.levels = d.levels.max((a - b).abs() / level);
            }
        }
    }
    d
}

#[test]
fn processors_match_transformers() {
    let fx = Fixtures::load();
    let mut worst: BTreeMap<&str, f32> = BTreeMap::new();
    let mut at_size_worst = 0f32;
    for case in fx.manifest["cases"].as_array().unwrap() {
        let (image, pname, key) = (
            case["image"].as_str().unwrap(),
            case["processor"].as_str().unwrap(),
            case["key"].as_str().unwrap(),
        );
        let resized = case["resized"].as_bool().unwrap();
        let stride = case["stride"].as_u64().unwrap() as usize;
        let proc = fx.processor(pname);
        let expected_key = if stride == 1 {
            key.to_string()
        } else {
            format!("{key}/sub7")
        };
        let expected = fx.f32s(&expected_key);
        assert_eq!(
            case["shape"][1].as_u64().unwrap() as usize,
            proc.output_size().0,
            "{key}: height"
        );
        assert_eq!(
            case["shape"][2].as_u64().unwrap() as usize,
            proc.output_size().1,
            "{key}: width"
        );

        // The processor alone, on exactly PIL's pixels (absent for the 336 input, whose PNG decodes
        // exactly anyway); then the whole path from the file through our decoder.
        let lossy = fx.manifest["images"][image]["lossy"].as_bool().unwrap();
        let mut inputs = vec![("pil pixels", fx.pil_rgb(image))];
        if !lossy {
            inputs.push(("our decode", Some(decode(image))));
        }
        for (what, input) in inputs {
            let Some(input) = input else { continue };
            let ours = proc
                .preprocess(&input)
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(ours.len(), 3 * proc.output_size().0 * proc.output_size().1);
            let d = compare(&proc, &ours, &expected, stride);
            println!(
                "{key} ({what}): max diff {:.2e} = {:.3}/255{}",
                d.raw,
                d.levels,
                if resized { "" } else { " (no resize)" }
            );
            assert!(
                d.raw <= EXACT,
                "{key} ({what}): {:.2e} = {:.3}/255 off",
                d.raw,
                d.levels
            );
            if resized {
                let e = worst.entry(pname).or_default();
                *e = e.max(d.levels);
            } else {
                at_size_worst = at_size_worst.max(d.raw);
            }
            if stride > 1 {
                let mean = fx.f32s(&format!("{key}/mean"));
                let plane = ours.len() / 3;
                for c in 0..3 {
                    let m = ours[c * plane..(c + 1) * plane]
                        .iter()
                        .map(|&v| f64::from(v))
                        .sum::<f64>()
                        / plane as f64;
                    assert!(
                        (m as f32 - mean[c]).abs() < 1e-3,
                        "{key}: channel {c} mean {m} vs {}",
                        mean[c]
                    );
                }
            }
        }
    }
    println!(
        "worst after resize, in 1/255 levels: {worst:?}; worst without resize: {at_size_worst:.2e}"
    );
}

#[test]
fn lossy_formats_stay_close_end_to_end() {
    // Through our own JPEG/WebP decoders the inputs differ slightly from PIL's; the result must
    // still be close (the decode gap, smoothed by the resize).
    let fx = Fixtures::load();
    for case in fx.manifest["cases"].as_array().unwrap() {
        let image = case["image"].as_str().unwrap();
        if !fx.manifest["images"][image]["lossy"].as_bool().unwrap() {
            continue;
        }
        let (pname, key) = (
            case["processor"].as_str().unwrap(),
            case["key"].as_str().unwrap(),
        );
        let proc = fx.processor(pname);
        let ours = proc.preprocess(&decode(image)).unwrap();
        let d = compare(&proc, &ours, &fx.f32s(key), 1);
        println!("{key} (our decode): max diff {:.3}/255", d.levels);
        assert!(
            d.levels <= f32::from(LOSSY_DECODE_TOL),
            "{key}: {} levels off",
            d.levels
        );
    }
}
