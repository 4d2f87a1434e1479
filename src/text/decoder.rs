//! The text decoder: Llama / Qwen2 (transformers' `LlamaModel` / `Qwen2Model` + `lm_head`).
//!
//! Pre-norm blocks: `h += o(attn(rope(q), rope(k), v))` on `rms_norm(h)`, then
//! `h += down(silu(gate x) * up x)` on `rms_norm(h)`; grouped-query attention; Qwen2 adds biases to
//! q/k/v. Every forward takes explicit position ids and an attention mask over the new tokens, so
//! the same code runs prefill, plain decoding and a speculation tree (positions prefix + depth).
//! q/k/v and gate/up are [`Projections`]: one stacked matmul each where the backend asks for it.

use crate::backend::{AttnMask, Backend, CacheStep, Heads, Qkv, Rope};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::nn::{Linear, Projections, RmsNorm, Weights};
use crate::weights::{NameStyle, WeightStore};

struct DecoderLayer<B: Backend> {
    input_norm: RmsNorm<B>,
    /// q_proj, k_proj, v_proj.
    qkv: Projections<B, 3>,
    o: Linear<B>,
    post_norm: RmsNorm<B>,
    /// gate_proj, up_proj.
    gate_up: Projections<B, 2>,
    down: Linear<B>,
}

pub struct Decoder<B: Backend> {
    pub cfg: TextConfig,
    embed_tokens: B::Weight,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
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

/// Where one forward pass writes and what it sees: new tokens go to cache slots
/// `start..start + n` at the given position ids, attend as `mask` allows, and get logits for
/// `rows`. Prefill, a plain decoding step and a speculation tree are all one `Step`.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub start: usize,
    pub positions: &'a [u32],
    pub mask: &'a AttnMask,
    pub rows: LogitRows,
}

impl<'a> Step<'a> {
    /// Causal tokens at slots `start..` whose positions equal their slots (prefill, plain decoding):
    /// logits for the last one.
    pub fn causal(start: usize, positions: &'a [u32]) -> Self {
        Step {
            start,
            positions,
            mask: &AttnMask::Causal,
            rows: LogitRows::Last,
        }
    }
}

impl<B: Backend> DecoderLayer<B> {
    fn load(w: &Weights<B>, cfg: &TextConfig) -> Result<Self> {
        let (d, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let (qd, kvd) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let (attn, mlp) = (w.pp("self_attn"), w.pp("mlp"));
        let bias = cfg.attention_bias;
        Ok(DecoderLayer {
            input_norm: RmsNorm::load(&w.pp("input_layernorm"), d, eps)?,
            qkv: Projections::load(
                &attn,
                [("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)],
                d,
                bias,
            )?,
            // Qwen2 has no bias on o_proj; Llama's `attention_bias` covers o_proj too.
            o: Linear::load(
                &attn.pp("o_proj"),
                d,
                qd,
                bias && cfg.kind == crate::config::TextKind::Llama,
            )?,
            post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), d, eps)?,
            gate_up: Projections::load(
                &mlp,
                [("gate_proj", inter), ("up_proj", inter)],
                d,
                cfg.mlp_bias,
            )?,
            down: Linear::load(&mlp.pp("down_proj"), d, inter, cfg.mlp_bias)?,
        })
    }

    /// Attention of the hidden states `h`: input norm, q/k/v projections, rotary embedding,
    /// cache write and attention (when q/k/v are stacked: one matmul, the norm in its prologue
    /// where the engine fuses it).
    fn attend(
        &self,
        b: &B,
        cache: &mut B::Cache,
        layer: usize,
        h: &B::Tensor,
        step: CacheStep,
        heads: Heads,
    ) -> B::Tensor {
        match &self.qkv {
            Projections::Stacked(qkv) => {
                let qkv = self.input_norm.forward_into(b, h, qkv);
                b.rope_cached_attention_stacked(cache, layer, &qkv, step, heads)
            }
            Projections::Separate([q, k, v]) => {
                let x = self.input_norm.forward(b, h);
                let (q, k, v) = (q.forward(b, &x), k.forward(b, &x), v.forward(b, &x));
                let qkv = Qkv {
                    q: &q,
                    k: &k,
                    v: &v,
                };
                b.rope_cached_attention(cache, layer, qkv, step, heads)
            }
        }
    }

    /// `act(gate x) * up x` on `x = post_norm(h)` (when gate and up are stacked: one matmul,
    /// with the norm in its prologue and the activation in its epilogue where the engine fuses
    /// them).
    fn gated(&self, b: &B, h: &B::Tensor, act: crate::config::Activation) -> B::Tensor {
        match &self.gate_up {
            Projections::Stacked(gate_up) => self.post_norm.forward_gated(b, h, gate_up, act),
            Projections::Separate([gate, up]) => {
                let x = self.post_norm.forward(b, h);
                b.gated(&gate.forward(b, &x), &up.forward(b, &x), act)
            }
        }
    }
}

impl<B: Backend> Decoder<B> {
    pub fn load(b: &B, store: &WeightStore, names: &NameStyle, cfg: &TextConfig) -> Result<Self> {
        let w = Weights::new(b, store, &names.text);
        let d = cfg.hidden_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&w.pp(&format!("layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let root = Weights::new(b, store, "");
        let lm_head = if root.contains(&names.lm_head) {
            Some(root.get(&names.lm_head, &[cfg.vocab_size, d])?)
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
            embed_tokens: w.get("embed_tokens.weight", &[cfg.vocab_size, d])?,
            layers,
            norm: RmsNorm::load(&w.pp("norm"), d, cfg.rms_norm_eps)?,
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

    /// Run the decoder over new token embeddings `x: [n, hidden]` as `step` places them; returns
    /// logits for `step.rows`.
    pub fn forward(&self, b: &B, cache: &mut B::Cache, x: B::Tensor, step: &Step) -> B::Tensor {
        let cfg = &self.cfg;
        let heads = self.heads();
        let rope = Rope {
            theta: cfg.rope_theta,
            linear_factor: cfg.rope_linear_factor,
        };
        let positions = step.positions;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let at = CacheStep {
                start: step.start,
                positions,
                rope,
                mask: step.mask,
            };
            let a = layer.attend(b, cache, i, &h, at, heads);
            // After the last layer's attention, only the rows whose logits are asked for matter
            // (its keys and values, for the cache, are written): with the last row asked for (a
            // prompt), o_proj and the MLP run on that row alone. Every op from here is row by
            // row, so the row gets bit for bit what it got among the others; a prompt's pass
            // costs ~80% of a layer less (the layer's o_proj and MLP for all but one row).
            let (a, h_in) = match i + 1 == self.layers.len() && step.rows == LogitRows::Last {
                true => (last_row(b, a), last_row(b, h)),
                false => (a, h),
            };
            h = layer.o.forward_add(b, &a, h_in);
            let m = layer.gated(b, &h, cfg.hidden_act);
            h = layer.down.forward_add(b, &m, h);
        }
        if step.rows == LogitRows::Last {
            h = last_row(b, h);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        b.rms_norm_linear(&h, &self.norm.weight, self.norm.eps, head, None)
    }
}

/// The last row of `x` (`x` itself when it has one row).
fn last_row<B: Backend>(b: &B, x: B::Tensor) -> B::Tensor {
    match b.dims(&x).0 {
        n if n > 1 => b.slice_rows(&x, n - 1, n),
        _ => x,
    }
}
