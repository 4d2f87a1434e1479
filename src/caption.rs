//! Image in, caption out: the whole pipeline for one image, on any backend.
//! RGB image -> `vision::preprocess` -> `LlavaModel::encode_image` -> prompt ids (`<image>`
//! expanded) -> `generate::decode_plain`.

use serde::Serialize;

use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::generate::{decode_plain, SamplingOptions};
use crate::model::LlavaModel;

/// What the user asks for; the defaults are what the CLI and the app use.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRequest {
    /// Literal prompt containing the image token; `None`: the checkpoint's chat template.
    pub prompt: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
}

impl Default for CaptionRequest {
    fn default() -> Self {
        CaptionRequest { prompt: None, max_new_tokens: 64, sampling: SamplingOptions::default() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Caption {
    pub text: String,
    /// Generated ids, EOS excluded.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    #[serde(skip)]
    pub hit_eos: bool,
    pub timings_ms: Timings,
}

pub struct Captioner<B: Backend> {
    pub checkpoint: Checkpoint,
    pub model: LlavaModel<B>,
}

/// The user text of the default prompt.
pub const DEFAULT_INSTRUCTION: &str = "Describe the image.";

impl<B: Backend> Captioner<B> {
    pub fn new(b: &B, checkpoint: Checkpoint) -> Result<Self> {
        let model = LlavaModel::load(b, &checkpoint.weights, &checkpoint.config)?;
        Ok(Captioner { checkpoint, model })
    }

    /// The prompt text for a request.
    pub fn prompt_text(&self, req: &CaptionRequest) -> Result<String> {
        match &req.prompt {
            Some(p) => Ok(p.clone()),
            None => self.checkpoint.default_prompt(DEFAULT_INSTRUCTION),
        }
    }

    /// Pixel values for an image, and their prompt ids.
    pub fn prepare(&self, image: &image::RgbImage, req: &CaptionRequest) -> Result<(Vec<f32>, Vec<u32>)> {
        let pixels = self.checkpoint.processor.preprocess(image)?;
        let ids = self.checkpoint.prompt_ids(&self.prompt_text(req)?)?;
        Ok((pixels, ids))
    }

    pub async fn caption(
        &self,
        b: &B,
        image: &image::RgbImage,
        req: &CaptionRequest,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Caption> {
        let t0 = web_time::Instant::now();
        let (pixels, ids) = self.prepare(image, req)?;
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = web_time::Instant::now();
        let features = self.model.encode_image(b, &pixels)?;
        let vision_ms = t1.elapsed().as_secs_f64() * 1e3;
        let eos = self.checkpoint.tokenizer.eos_ids();
        let out =
            decode_plain(b, &self.model, &ids, Some(&features), &eos, req.max_new_tokens, req.sampling, on_token)
                .await?;
        let text = self.checkpoint.tokenizer.decode(&out.tokens)?;
        Ok(Caption {
            text,
            tokens: out.tokens,
            prompt_tokens: ids.len(),
            hit_eos: out.hit_eos,
            timings_ms: Timings {
                preprocess_ms,
                vision_ms,
                prefill_ms: out.prefill_ms,
                decode_ms: out.decode_ms,
                total_ms: t0.elapsed().as_secs_f64() * 1e3,
            },
        })
    }
}
