//! The text decoder: Llama / Qwen2 (transformers' `LlamaModel` / `Qwen2Model` + `lm_head`).
//!
//! Pre-norm blocks: `h += o(attn(rope(q), rope(k), v))` on `rms_norm(h)`, then
//! `h += down(silu(gate x) * up x)` on `rms_norm(h)`; grouped-query attention; Qwen2 adds biases to
//! q/k/v. Every forward takes explicit position ids and an attention mask over the new tokens, so
//! the same code runs prefill, plain decoding and a speculation tree (positions prefix + depth).

use crate::backend::{AttnMask, Backend, Heads, Rope};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::vision::tower::load;
use crate::weights::{NameStyle, WeightStore};

struct Linear<B: Backend> {
    w: B::Weight,
    b: Option<B::Weight>,
}

struct DecoderLayer<B: Backend> {
    input_norm: B::Weight,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    post_norm: B::Weight,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

pub struct Decoder<B: Backend> {
    pub cfg: TextConfig,
    embed_tokens: B::Weight,
    layers: Vec<DecoderLayer<B>>,
    norm: B::Weight,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<B::Weight>,
}

/// Which rows of the final hidden states get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last new token (prefill, plain decoding).
    Last,
    /// Every new token (tree verification).
    All,
}

impl<B: Backend> Decoder<B> {
    pub fn load(b: &B, store: &WeightStore, names: &NameStyle, cfg: &TextConfig) -> Result<Self> {
        let p = &names.text;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let lin = |name: &str, o: usize, i: usize, bias: bool| -> Result<Linear<B>> {
            Ok(Linear {
                w: load(b, store, &format!("{name}.weight"), &[o, i])?,
                b: if bias {
                    Some(load(b, store, &format!("{name}.bias"), &[o])?)
                } else {
                    None
                },
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{p}layers.{i}.");
            let inter = cfg.intermediate_size;
            layers.push(DecoderLayer {
                input_norm: load(b, store, &format!("{l}input_layernorm.weight"), &[d])?,
                q: lin(&format!("{l}self_attn.q_proj"), qd, d, cfg.attention_bias)?,
                k: lin(&format!("{l}self_attn.k_proj"), kvd, d, cfg.attention_bias)?,
                v: lin(&format!("{l}self_attn.v_proj"), kvd, d, cfg.attention_bias)?,
                // Qwen2 has no bias on o_proj; Llama's `attention_bias` covers o_proj too.
                o: lin(
                    &format!("{l}self_attn.o_proj"),
                    d,
                    qd,
                    cfg.attention_bias && cfg.kind == crate::config::TextKind::Llama,
                )?,
                post_norm: load(
                    b,
                    store,
                    &format!("{l}post_attention_layernorm.weight"),
                    &[d],
                )?,
                gate: lin(&format!("{l}mlp.gate_proj"), inter, d, cfg.mlp_bias)?,
                up: lin(&format!("{l}mlp.up_proj"), inter, d, cfg.mlp_bias)?,
                down: lin(&format!("{l}mlp.down_proj"), d, inter, cfg.mlp_bias)?,
            });
        }
        let embed_name = format!("{p}embed_tokens.weight");
        let lm_head = if store.contains(&names.lm_head) {
            Some(load(b, store, &names.lm_head, &[cfg.vocab_size, d])?)
        } else if cfg.tie_word_embeddings {
            None
        } else {
            return Err(Error::file(
                "model.safetensors",
                format!(
                    "missing tensor {} (and tie_word_embeddings is false)",
                    names.lm_head
                ),
            ));
        };
        Ok(Decoder {
            cfg: cfg.clone(),
            embed_tokens: load(b, store, &embed_name, &[cfg.vocab_size, d])?,
            layers,
            norm: load(b, store, &format!("{p}norm.weight"), &[d])?,
            lm_head,
        })
    }

    pub fn heads(&self) -> Heads {
        Heads {
            q_heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    pub fn new_cache(&self, b: &B, capacity: usize) -> B::Cache {
        b.new_cache(
            self.cfg.num_hidden_layers,
            self.cfg.num_key_value_heads * self.cfg.head_dim,
            capacity,
        )
    }

    pub fn embed(&self, b: &B, ids: &[u32]) -> B::Tensor {
        b.embed(&self.embed_tokens, ids)
    }

    /// Run the decoder over new token embeddings `x: [n, hidden]` placed at cache slots
    /// `start..start + n`, with the given position ids and mask; returns logits for `rows`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        b: &B,
        cache: &mut B::Cache,
        start: usize,
        x: B::Tensor,
        positions: &[u32],
        mask: &AttnMask,
        rows: LogitRows,
    ) -> B::Tensor {
        let cfg = &self.cfg;
        let heads = self.heads();
        let rope = Rope {
            theta: cfg.rope_theta,
            linear_factor: cfg.rope_linear_factor,
        };
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let x = b.rms_norm(&h, &layer.input_norm, cfg.rms_norm_eps);
            let q = b.linear(&x, &layer.q.w, layer.q.b.as_ref());
            let k = b.linear(&x, &layer.k.w, layer.k.b.as_ref());
            let v = b.linear(&x, &layer.v.w, layer.v.b.as_ref());
            let q = b.rope(&q, positions, heads.q_heads, heads.head_dim, rope);
            let k = b.rope(&k, positions, heads.kv_heads, heads.head_dim, rope);
            let a = b.cached_attention(cache, i, start, &q, &k, &v, mask, heads);
            h = b.add(&h, &b.linear(&a, &layer.o.w, layer.o.b.as_ref()));
            let x = b.rms_norm(&h, &layer.post_norm, cfg.rms_norm_eps);
            let gate = b.linear(&x, &layer.gate.w, layer.gate.b.as_ref());
            let up = b.linear(&x, &layer.up.w, layer.up.b.as_ref());
            let m = b.gated(&gate, &up, cfg.hidden_act);
            h = b.add(&h, &b.linear(&m, &layer.down.w, layer.down.b.as_ref()));
        }
        let n = b.dims(&h).0;
        if rows == LogitRows::Last && n > 1 {
            h = b.slice_rows(&h, n - 1, n);
        }
        let h = b.rms_norm(&h, &self.norm, cfg.rms_norm_eps);
        b.linear(
            &h,
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            None,
        )
    }
}
