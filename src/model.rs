//! `LlavaModel`: the one model definition (transformers' `LlavaForConditionalGeneration`), generic
//! over the [`Backend`] that executes it.
//!
//! Image: pixel values -> vision tower hidden states (`vision_feature_layer`, one or several,
//! concatenated) -> select strategy (drop CLS for "default") -> projector -> one embedding per
//! `<image>` token. Text: token embeddings with the image features written at the image-token
//! positions -> decoder -> logits.

use crate::backend::Backend;
use crate::config::{LlavaConfig, SelectStrategy};
use crate::error::{Error, Result};
use crate::projector::Projector;
use crate::text::decoder::{Decoder, Step};
use crate::vision::tower::VisionTower;
use crate::weights::{NameStyle, WeightStore};

pub struct LlavaModel<B: Backend> {
    pub config: LlavaConfig,
    pub vision: VisionTower<B>,
    projector: Projector<B>,
    pub text: Decoder<B>,
}

impl<B: Backend> LlavaModel<B> {
    pub fn load(b: &B, store: &WeightStore, config: &LlavaConfig) -> Result<Self> {
        let names = NameStyle::detect(store);
        let layers = config.feature_layer_indices();
        // Only the encoder layers that feed the selected hidden states are ever run.
        let depth = layers.iter().copied().max().unwrap_or(0);
        Ok(LlavaModel {
            config: config.clone(),
            vision: VisionTower::load(b, store, &names.vision, &config.vision, depth)?,
            projector: Projector::load(b, store, &names.projector, config)?,
            text: Decoder::load(b, store, &names, &config.text)?,
        })
    }

    /// Image features `[num_image_tokens, text_hidden]` for pixel values `[3, H, W]`.
    pub fn encode_image(&self, b: &B, pixels: &[f32]) -> Result<B::Tensor> {
        Ok(self.project(b, &self.vision_features(b, pixels)?))
    }

    /// The selected vision hidden states (before the projector), `[num_image_tokens, D * layers]`.
    /// Two models with byte-identical vision towers can share this (see [`Self::vision_fingerprint`]).
    pub fn vision_features(&self, b: &B, pixels: &[f32]) -> Result<B::Tensor> {
        let v = &self.config.vision;
        let expected = v.num_channels * v.image_size * v.image_size;
        if pixels.len() != expected {
            return Err(Error::invalid(format!(
                "pixel values have {} elements, the vision tower expects 3x{}x{}",
                pixels.len(),
                v.image_size,
                v.image_size
            )));
        }
        let wanted = self.config.feature_layer_indices();
        let states = self.vision.hidden_states(b, pixels, &wanted);
        let selected: Vec<B::Tensor> = wanted
            .iter()
            .filter_map(|w| states.iter().find(|(i, _)| i == w).map(|(_, t)| t))
            .map(|t| match self.config.select_strategy {
                SelectStrategy::Default => b.slice_rows(t, 1, b.dims(t).0),
                SelectStrategy::Full => b.slice_rows(t, 0, b.dims(t).0),
            })
            .collect();
        let refs: Vec<&B::Tensor> = selected.iter().collect();
        Ok(match refs.as_slice() {
            [one] => b.slice_rows(one, 0, b.dims(one).0),
            many => b.concat_cols(many),
        })
    }

    /// Project selected vision features into the text embedding space.
    pub fn project(&self, b: &B, features: &B::Tensor) -> B::Tensor {
        self.projector.forward(b, features)
    }

    /// Embeddings of `ids`, with image features written where `ids` holds the image token.
    pub fn embed_prompt(
        &self,
        b: &B,
        ids: &[u32],
        image_features: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        let vocab = self.config.text.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the model's vocabulary ({vocab})"
            )));
        }
        let image_rows: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == self.config.image_token_index)
            .map(|(i, _)| i)
            .collect();
        let x = self.text.embed(b, ids);
        match image_features {
            None if image_rows.is_empty() => Ok(x),
            None => Err(Error::invalid(
                "the prompt has image tokens but no image was given",
            )),
            Some(f) => {
                let n = b.dims(f).0;
                if n != image_rows.len() {
                    return Err(Error::invalid(format!(
                        "the prompt has {} image tokens but the image has {n} features",
                        image_rows.len()
                    )));
                }
                Ok(b.scatter_rows(&x, &image_rows, f))
            }
        }
    }

    /// Run the decoder over `x` (new token embeddings) as `step` places them; returns logits for
    /// `step.rows`.
    pub fn forward(&self, b: &B, cache: &mut B::Cache, x: B::Tensor, step: &Step) -> B::Tensor {
        self.text.forward(b, cache, x, step)
    }
}
