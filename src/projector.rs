//! LLaVA's multi-modal projector: `linear_2(act(linear_1(features)))`, mapping vision features
//! (one or more selected hidden states, concatenated) into the text decoder's embedding space.

use crate::backend::Backend;
use crate::config::LlavaConfig;
use crate::error::Result;
use crate::vision::tower::load;
use crate::weights::WeightStore;

pub struct Projector<B: Backend> {
    linear_1: (B::Weight, Option<B::Weight>),
    linear_2: (B::Weight, Option<B::Weight>),
    act: crate::config::Activation,
}

impl<B: Backend> Projector<B> {
    pub fn load(b: &B, store: &WeightStore, prefix: &str, cfg: &LlavaConfig) -> Result<Self> {
        let in_dim = cfg.vision.hidden_size * cfg.vision_feature_layers.len();
        let out_dim = cfg.text.hidden_size;
        let lin = |name: &str, o: usize, i: usize| -> Result<(B::Weight, Option<B::Weight>)> {
            let w = load(b, store, &format!("{prefix}{name}.weight"), &[o, i])?;
            let bias = if cfg.projector_bias {
                Some(load(b, store, &format!("{prefix}{name}.bias"), &[o])?)
            } else {
                None
            };
            Ok((w, bias))
        };
        Ok(Projector {
            linear_1: lin("linear_1", out_dim, in_dim)?,
            linear_2: lin("linear_2", out_dim, out_dim)?,
            act: cfg.projector_hidden_act,
        })
    }

    pub fn forward(&self, b: &B, features: &B::Tensor) -> B::Tensor {
        let x = b.linear(features, &self.linear_1.0, self.linear_1.1.as_ref());
        let x = b.activate(&x, self.act);
        b.linear(&x, &self.linear_2.0, self.linear_2.1.as_ref())
    }
}
