//! Plain autoregressive decoding (the target alone): greedy, or sampled with temperature / top-p
//! and a seed ([`crate::sampling`]). Stops at an EOS token or after `max_new_tokens`. The baseline
//! speculative decoding must reproduce token for token.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::LlavaModel;
use crate::sampling::{Sampler, SamplingOptions};
use crate::text::decoder::Step;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeResult {
    /// Generated ids, EOS excluded.
    pub tokens: Vec<u32>,
    /// Whether decoding stopped at an EOS token.
    pub hit_eos: bool,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// What plain decoding runs: the model, the prompt (image features at the image tokens) and when
/// to stop.
pub struct PlainInputs<'a, B: Backend> {
    pub model: &'a LlavaModel<B>,
    pub prompt_ids: &'a [u32],
    pub image_features: Option<&'a B::Tensor>,
    pub eos: &'a [u32],
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
}

/// Plain decoding: prefill the prompt, then one target forward per new token. `on_token` sees
/// each token as it lands and may return `false` to cancel.
pub async fn decode_plain<B: Backend>(
    b: &B,
    inp: PlainInputs<'_, B>,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<DecodeResult> {
    let PlainInputs {
        model,
        prompt_ids,
        image_features,
        eos,
        max_new_tokens,
        sampling,
    } = inp;
    sampling.validate()?;
    let mut sampler = Sampler::new(sampling);
    let t0 = web_time::Instant::now();
    let mut cache = model.text.new_cache(b, prompt_ids.len() + max_new_tokens);
    let x = model.embed_prompt(b, prompt_ids, image_features)?;
    let positions: Vec<u32> = (0..prompt_ids.len() as u32).collect();
    let logits = model.forward(b, &mut cache, x, &Step::causal(0, &positions));
    let mut next = sampler
        .pick_from(b, &logits)
        .await
        .ok_or(Error::NonFinite { token: 0 })?;
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = web_time::Instant::now();
    let mut out = DecodeResult {
        prefill_ms,
        ..Default::default()
    };
    let mut len = prompt_ids.len();
    while out.tokens.len() < max_new_tokens {
        if eos.contains(&next) {
            out.hit_eos = true;
            break;
        }
        out.tokens.push(next);
        if !on_token(next) {
            return Err(Error::Cancelled);
        }
        if out.tokens.len() == max_new_tokens {
            break;
        }
        let x = model.text.embed(b, &[next]);
        let l = model.forward(b, &mut cache, x, &Step::causal(len, &[len as u32]));
        next = sampler.pick_from(b, &l).await.ok_or(Error::NonFinite {
            token: out.tokens.len(),
        })?;
        len += 1;
    }
    out.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}
