//! Image -> `pixel_values`: the Hugging Face CLIP and SigLIP image processors.
//!
//! Follows transformers' *slow* (PIL-based) `CLIPImageProcessor` and `SiglipImageProcessor`
//! (4.57): read `preprocessor_config.json` with the classes' defaults for missing fields, then
//! - resize (CLIP: shortest edge to `size.shortest_edge`, the long edge `int(s * long / short)`;
//!   SigLIP: to `size.height` x `size.width`) exactly as PIL's `Image.resize` does it: separable
//!   passes (horizontal, then vertical), each rounded to 8 bits, with PIL's filters, support
//!   widened when downscaling (antialiasing) and 22-bit fixed-point coefficients;
//! - center crop (CLIP) as `transformers.image_transforms.center_crop`, zero-padding a smaller image;
//! - rescale (`x * rescale_factor`, in f64 then f32) and normalize (`(x - mean) / std` in f32);
//! - lay out channel-major (CHW).
//!
//! The result matches transformers bit for bit (the same integer arithmetic); the `Fast`
//! (torchvision) processor variants resize differently and are treated as their slow twins.
//! The PIL resize itself is in `super::resize`.

use image::RgbImage;
use serde::Deserialize;
use serde_json::Value;

pub use super::resize::Resample;
use super::resize::{resize, Pixels};
use crate::error::{Error, Result};

/// Which transformers class the config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessorKind {
    Clip,
    Siglip,
}

/// Where the resize goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTo {
    /// Shortest edge to this length, aspect ratio kept (CLIP).
    ShortestEdge(usize),
    /// Exactly this size.
    Exact { height: usize, width: usize },
}

/// A parsed `preprocessor_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    pub kind: ProcessorKind,
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Resample,
    /// Always false for SigLIP, which has no crop step.
    pub do_center_crop: bool,
    /// (height, width).
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Informational: [`ImageProcessor::preprocess`] takes RGB already (see `image_io`).
    pub do_convert_rgb: bool,
}

// transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, digits as written there.
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The config as written; every field may be missing (sparse configs take class defaults).
#[derive(Deserialize)]
struct RawConfig {
    image_processor_type: Option<String>,
    feature_extractor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<i64>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    do_convert_rgb: Option<bool>,
}

impl ImageProcessor {
    /// Parses `preprocessor_config.json` text; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let fail = |msg: String| Error::file(file, msg);
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
        let kind = processor_kind(&raw).map_err(fail)?;
        let clip = kind == ProcessorKind::Clip;
        let size = match &raw.size {
            None if clip => ResizeTo::ShortestEdge(224),
            None => ResizeTo::Exact {
                height: 224,
                width: 224,
            },
            Some(v) => parse_size(v, clip).map_err(|m| fail(format!("size: {m}")))?,
        };
        if !clip && matches!(size, ResizeTo::ShortestEdge(_)) {
            return Err(fail(
                "size: SiglipImageProcessor needs {height, width}".into(),
            ));
        }
        let crop_size = match &raw.crop_size {
            None => (224, 224),
            Some(v) => match parse_size(v, false).map_err(|m| fail(format!("crop_size: {m}")))? {
                ResizeTo::Exact { height, width } => (height, width),
                ResizeTo::ShortestEdge(_) => {
                    return Err(fail("crop_size needs {height, width}".into()))
                }
            },
        };
        let (mean, std) = if clip {
            (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        } else {
            ([0.5; 3], [0.5; 3])
        };
        let proc = ImageProcessor {
            kind,
            do_resize: raw.do_resize.unwrap_or(true),
            size,
            resample: parse_resample(raw.resample.unwrap_or(3)).map_err(fail)?,
            do_center_crop: clip && raw.do_center_crop.unwrap_or(true),
            crop_size,
            do_rescale: raw.do_rescale.unwrap_or(true),
            rescale_factor: raw.rescale_factor.unwrap_or(1.0 / 255.0),
            do_normalize: raw.do_normalize.unwrap_or(true),
            image_mean: parse_triple(raw.image_mean.as_ref(), mean)
                .map_err(|m| fail(format!("image_mean: {m}")))?,
            image_std: parse_triple(raw.image_std.as_ref(), std)
                .map_err(|m| fail(format!("image_std: {m}")))?,
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(clip),
        };
        if !proc.has_fixed_output_size() {
            return Err(fail(
                "the output size depends on the input image (no resize to a fixed size and no center crop); \
                 the vision tower needs a fixed size"
                    .into(),
            ));
        }
        // Mean, std and rescale factor: finite and in range (1e308 or a zero std would make
        // every pixel value infinite or NaN, and the logits NaN).
        let root: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        crate::config::validate::image_processor(
            proc.rescale_factor,
            &proc.image_mean,
            &proc.image_std,
            &root,
            file,
        )?;
        Ok(proc)
    }

    fn has_fixed_output_size(&self) -> bool {
        self.do_center_crop || (self.do_resize && matches!(self.size, ResizeTo::Exact { .. }))
    }

    /// (height, width) of every output image.
    pub fn output_size(&self) -> (usize, usize) {
        match (self.do_center_crop, self.size) {
            (true, _) => self.crop_size,
            (false, ResizeTo::Exact { height, width }) => (height, width),
            // Not fixed: `from_json` refuses such configs, and `preprocess` checks the result.
            (false, ResizeTo::ShortestEdge(s)) => (s, s),
        }
    }

    /// (height, width) the resize step produces for an input of `width` x `height`.
    pub fn resize_size(&self, width: usize, height: usize) -> (usize, usize) {
        match self.size {
            ResizeTo::Exact { height, width } => (height, width),
            ResizeTo::ShortestEdge(target) => {
                // transformers' get_resize_output_image_size(default_to_square=False).
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (target.saturating_mul(long) as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, target)
                } else {
                    (target, new_long)
                }
            }
        }
    }

    /// Resize, crop, rescale, normalize: `pixel_values` for one image, CHW, `3 * H * W` values.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::invalid(format!(
                "cannot preprocess an empty {w}x{h} image"
            )));
        }
        let mut pixels = Pixels {
            data: img.as_raw().clone(),
            width: w,
            height: h,
        };
        if self.do_resize {
            let (out_h, out_w) = self.resize_size(w, h);
            // A very long, thin image would resize to a huge one (its short side grows to the
            // target): refuse rather than run out of memory.
            let out_pixels = (out_h as u64).saturating_mul(out_w as u64);
            if out_pixels == 0 || out_pixels > crate::image_io::DEFAULT_MAX_PIXELS {
                return Err(Error::invalid(format!(
                    "cannot preprocess a {w}x{h} image: resizing it gives {out_w}x{out_h} (aspect ratio too extreme)"
                )));
            }
            pixels = resize(pixels, out_w, out_h, self.resample);
        }
        if self.do_center_crop {
            pixels = center_crop(&pixels, self.crop_size.0, self.crop_size.1);
        }
        if (pixels.height, pixels.width) != self.output_size() {
            return Err(Error::invalid(format!(
                "preprocessing a {w}x{h} image gave {}x{}, not the model's {:?} (height, width)",
                pixels.width,
                pixels.height,
                self.output_size()
            )));
        }
        Ok(self.to_chw(&pixels))
    }

    /// Rescale and normalize in the order and precision transformers uses.
    fn to_chw(&self, p: &Pixels) -> Vec<f32> {
        let plane = p.width * p.height;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in p.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let mut v = if self.do_rescale {
                    (f64::from(px[c]) * self.rescale_factor) as f32
                } else {
                    f32::from(px[c])
                };
                if self.do_normalize {
                    v = (v - self.image_mean[c]) / self.image_std[c];
                }
                out[c * plane + i] = v;
            }
        }
        out
    }
}

fn processor_kind(raw: &RawConfig) -> std::result::Result<ProcessorKind, String> {
    let name = raw
        .image_processor_type
        .as_deref()
        .or(raw.feature_extractor_type.as_deref());
    match name {
        Some("CLIPImageProcessor" | "CLIPImageProcessorFast" | "CLIPFeatureExtractor") => Ok(ProcessorKind::Clip),
        Some("SiglipImageProcessor" | "SiglipImageProcessorFast") => Ok(ProcessorKind::Siglip),
        Some(other) => Err(format!(
            "unsupported image_processor_type \"{other}\" (supported: CLIPImageProcessor, SiglipImageProcessor)"
        )),
        None => Err("no image_processor_type (expected CLIPImageProcessor or SiglipImageProcessor)".into()),
    }
}

/// Largest accepted `size`/`crop_size` side: far above any vision tower's input, small enough
/// that a mistyped config cannot ask for gigabytes.
const MAX_SIDE: usize = 8192;

/// `size`/`crop_size`: an int (shortest edge for CLIP's `size`, else square) or a dict.
fn parse_size(v: &Value, int_is_shortest_edge: bool) -> std::result::Result<ResizeTo, String> {
    let int = |v: &Value| {
        v.as_u64()
            .filter(|&n| n > 0 && n <= MAX_SIDE as u64)
            .map(|n| n as usize)
            .ok_or(format!("must be an integer in 1..={MAX_SIDE}, got {v}"))
    };
    if v.is_number() {
        let n = int(v)?;
        return Ok(if int_is_shortest_edge {
            ResizeTo::ShortestEdge(n)
        } else {
            ResizeTo::Exact {
                height: n,
                width: n,
            }
        });
    }
    let field = |k: &str| v.get(k).map(|x| int(x).map_err(|m| format!("{k} {m}")));
    match (field("shortest_edge"), field("height"), field("width")) {
        (Some(s), _, _) => Ok(ResizeTo::ShortestEdge(s?)),
        (None, Some(h), Some(w)) => Ok(ResizeTo::Exact {
            height: h?,
            width: w?,
        }),
        _ => Err(format!(
            "expected an integer, {{shortest_edge}} or {{height, width}}, got {v}"
        )),
    }
}

fn parse_resample(code: i64) -> std::result::Result<Resample, String> {
    Ok(match code {
        0 => Resample::Nearest,
        1 => Resample::Lanczos,
        2 => Resample::Bilinear,
        3 => Resample::Bicubic,
        4 => Resample::Box,
        5 => Resample::Hamming,
        _ => {
            return Err(format!(
                "unsupported resample {code} (PIL filters are 0..=5)"
            ))
        }
    })
}

/// `image_mean`/`image_std`: one number for all channels or three.
fn parse_triple(v: Option<&Value>, default: [f32; 3]) -> std::result::Result<[f32; 3], String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let nums: Option<Vec<f32>> = match v {
        Value::Array(a) => a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect(),
        other => other.as_f64().map(|f| vec![f as f32; 3]),
    };
    match nums.as_deref() {
        Some(&[a, b, c]) => Ok([a, b, c]),
        _ => Err(format!("expected a number or 3 numbers, got {v}")),
    }
}

/// transformers' `center_crop`: top = (h - crop_h) // 2; a smaller image is first zero-padded,
/// which puts it at ceil((crop_h - h) / 2) in the output.
fn center_crop(src: &Pixels, crop_h: usize, crop_w: usize) -> Pixels {
    let offset = |size: usize, crop: usize| -> isize {
        if size >= crop {
            ((size - crop) / 2) as isize
        } else {
            -(((crop - size).div_ceil(2)) as isize)
        }
    };
    let (oy, ox) = (offset(src.height, crop_h), offset(src.width, crop_w));
    let mut data = vec![0u8; crop_h * crop_w * 3];
    for y in 0..crop_h {
        let sy = y as isize + oy;
        if sy < 0 || sy >= src.height as isize {
            continue;
        }
        for x in 0..crop_w {
            let sx = x as isize + ox;
            if sx >= 0 && sx < src.width as isize {
                let s = (sy as usize * src.width + sx as usize) * 3;
                data[(y * crop_w + x) * 3..][..3].copy_from_slice(&src.data[s..s + 3]);
            }
        }
    }
    Pixels {
        data,
        width: crop_w,
        height: crop_h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_clip_config_takes_class_defaults() {
        let p = ImageProcessor::from_json(
            r#"{"image_processor_type": "CLIPImageProcessor"}"#,
            "p.json",
        )
        .unwrap();
        assert_eq!(p.size, ResizeTo::ShortestEdge(224));
        assert_eq!(p.crop_size, (224, 224));
        assert_eq!(p.resample, Resample::Bicubic);
        assert!(p.do_center_crop && p.do_rescale && p.do_normalize && p.do_convert_rgb);
        assert_eq!(p.image_mean, OPENAI_CLIP_MEAN);
        assert_eq!(p.output_size(), (224, 224));
    }

    #[test]
    fn siglip_defaults_and_int_forms() {
        let p = ImageProcessor::from_json(
            r#"{"image_processor_type": "SiglipImageProcessor", "size": 384, "image_mean": 0.5}"#,
            "s.json",
        )
        .unwrap();
        assert_eq!(
            p.size,
            ResizeTo::Exact {
                height: 384,
                width: 384
            }
        );
        assert_eq!((p.image_mean, p.image_std), ([0.5; 3], [0.5; 3]));
        assert!(!p.do_center_crop);
        assert_eq!(p.output_size(), (384, 384));
    }

    #[test]
    fn bad_configs_name_the_file() {
        for (json, needle) in [
            (
                r#"{"image_processor_type": "LlavaNextImageProcessor"}"#,
                "LlavaNextImageProcessor",
            ),
            (r#"{}"#, "no image_processor_type"),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "resample": 9}"#,
                "resample 9",
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "size": {"longest_edge": 3}}"#,
                "size",
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "do_center_crop": false}"#,
                "fixed size",
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "image_std": [1, 2]}"#,
                "image_std",
            ),
            ("not json", "invalid JSON"),
        ] {
            let msg = ImageProcessor::from_json(json, "cfg/preprocessor_config.json")
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("cfg/preprocessor_config.json: "), "{msg}");
            assert!(msg.contains(needle), "{msg} should mention {needle}");
        }
    }

    #[test]
    fn absurd_sizes_are_refused_not_allocated() {
        let json = r#"{"image_processor_type": "CLIPImageProcessor", "size": 100000000000}"#;
        let msg = ImageProcessor::from_json(json, "p.json")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("size: expected") || msg.contains("1..=8192"),
            "{msg}"
        );
        // A 1-pixel-tall strip would grow to 336 x 13 440 000 pixels.
        let p = ImageProcessor::from_json(
            r#"{"image_processor_type": "CLIPImageProcessor", "size": 336}"#,
            "p",
        )
        .unwrap();
        let strip = RgbImage::new(40_000, 1);
        let msg = p.preprocess(&strip).unwrap_err().to_string();
        assert!(msg.contains("aspect ratio"), "{msg}");
    }

    #[test]
    fn shortest_edge_rounds_the_long_side_down() {
        let p = ImageProcessor::from_json(
            r#"{"image_processor_type": "CLIPImageProcessor", "size": 32}"#,
            "p",
        )
        .unwrap();
        assert_eq!(p.resize_size(45, 70), (49, 32)); // 32 * 70 / 45 = 49.78
        assert_eq!(p.resize_size(640, 480), (32, 42)); // 42.67
        assert_eq!(p.resize_size(32, 32), (32, 32));
    }

    #[test]
    fn center_crop_pads_a_small_image_like_transformers() {
        // 1x3 image into a 4-wide crop: pad = ceil(3/2)... here width 3 -> 4 puts it at column 1.
        let src = Pixels {
            data: vec![10, 10, 10, 20, 20, 20, 30, 30, 30],
            width: 3,
            height: 1,
        };
        let out = center_crop(&src, 1, 4);
        assert_eq!(out.data, vec![0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30]);
        let out = center_crop(&src, 1, 2);
        assert_eq!(out.data, vec![10, 10, 10, 20, 20, 20]); // left = (3 - 2) // 2 = 0
    }
}
