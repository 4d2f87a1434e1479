//! LLaVA's multi-modal projector: `linear_2(act(linear_1(features)))`, mapping vision features
//! (one or more selected hidden states, concatenated) into the text decoder's embedding space.

use crate::backend::Backend;
use crate::config::LlavaConfig;
use crate::error::Result;
use crate::nn::{Linear, Weights};
use crate::weights::WeightStore;

pub struct Projector<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Linear<B>,
    act: crate::config::Activation,
}

impl<B: Backend> Projector<B> {
    pub fn load(b: &B, store: &WeightStore, prefix: &str, cfg: &LlavaConfig) -> Result<Self> {
        let in_dim = cfg.vision.hidden_size * cfg.vision_feature_layers.len();
        let out_dim = cfg.text.hidden_size;
        let w = Weights::new(b, store, prefix);
        let bias = cfg.projector_bias;
        Ok(Projector {
            linear_1: Linear::load(&w.pp("linear_1"), out_dim, in_dim, bias)?,
            linear_2: Linear::load(&w.pp("linear_2"), out_dim, out_dim, bias)?,
            act: cfg.projector_hidden_act,
        })
    }

    pub fn forward(&self, b: &B, features: &B::Tensor) -> B::Tensor {
        let x = self.linear_1.forward(b, features);
        self.linear_2.forward(b, &b.activate(&x, self.act))
    }
}
