//! The vision tower: CLIP or SigLIP ViT (transformers' `CLIPVisionModel` / `SiglipVisionModel`),
//! run only as deep as the hidden states LLaVA selects (`vision_feature_layer`).
//!
//! Patch embedding is a stride-`p` convolution, computed as im2col (on the host, where the pixels
//! are) followed by one matmul, so backends need no convolution op.

use crate::backend::{Backend, Heads};
use crate::config::{VisionConfig, VisionKind};
use crate::error::Result;
use crate::nn::{LayerNorm, Linear, Weights};
use crate::weights::WeightStore;

struct EncoderLayer<B: Backend> {
    ln1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    ln2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> EncoderLayer<B> {
    fn load(w: &Weights<B>, cfg: &VisionConfig) -> Result<Self> {
        let (d, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let (attn, mlp) = (w.pp("self_attn"), w.pp("mlp"));
        Ok(EncoderLayer {
            ln1: LayerNorm::load(&w.pp("layer_norm1"), d, eps)?,
            q: Linear::load(&attn.pp("q_proj"), d, d, true)?,
            k: Linear::load(&attn.pp("k_proj"), d, d, true)?,
            v: Linear::load(&attn.pp("v_proj"), d, d, true)?,
            o: Linear::load(&attn.pp("out_proj"), d, d, true)?,
            ln2: LayerNorm::load(&w.pp("layer_norm2"), d, eps)?,
            fc1: Linear::load(&mlp.pp("fc1"), inter, d, true)?,
            fc2: Linear::load(&mlp.pp("fc2"), d, inter, true)?,
        })
    }
}

pub struct VisionTower<B: Backend> {
    cfg: VisionConfig,
    /// The patch convolution as a matrix `[D, C*p*p]` (+ bias for SigLIP).
    patch: Linear<B>,
    class_embedding: Option<B::Weight>,
    position_embedding: B::Weight,
    pre_norm: Option<LayerNorm<B>>,
    /// SigLIP only, and only when the last layer is run and `tie_last_hidden_states` says so:
    /// transformers 4.57 reports `hidden_states[-1]` of `SiglipVisionModel` after
    /// `post_layernorm`, 5.x before it (see `VisionConfig::tie_last_hidden_states`).
    post_norm: Option<LayerNorm<B>>,
    layers: Vec<EncoderLayer<B>>,
}

/// Pixel values `[3, H, W]` (CHW) -> patches `[P, 3*p*p]` in the conv weight's (c, ky, kx) order.
pub fn im2col(pixels: &[f32], channels: usize, image: usize, patch: usize) -> Vec<f32> {
    let side = image / patch;
    let mut out = Vec::with_capacity(side * side * channels * patch * patch);
    for py in 0..side {
        for px in 0..side {
            for c in 0..channels {
                for ky in 0..patch {
                    let row = (c * image + py * patch + ky) * image + px * patch;
                    out.extend_from_slice(&pixels[row..row + patch]);
                }
            }
        }
    }
    out
}

impl<B: Backend> VisionTower<B> {
    /// Load the tower's weights under `prefix`, the level that holds `embeddings.` and `encoder.`
    /// (`vision_tower.vision_model.` as transformers 4.x saves it, `vision_tower.` as 5.x does; see
    /// `NameStyle`), only the first `depth` encoder layers (deeper ones never feed LLaVA's features).
    pub fn load(
        b: &B,
        store: &WeightStore,
        prefix: &str,
        cfg: &VisionConfig,
        depth: usize,
    ) -> Result<Self> {
        let w = Weights::new(b, store, prefix);
        let (d, c, ps, eps) = (
            cfg.hidden_size,
            cfg.num_channels,
            cfg.patch_size,
            cfg.layer_norm_eps,
        );
        let emb = w.pp("embeddings");
        let clip = cfg.kind == VisionKind::Clip;
        let patch = Linear {
            // The conv weight [D, C, p, p] is used as a [D, C*p*p] matrix.
            weight: emb.get_reshaped(
                "patch_embedding.weight",
                &[d, c, ps, ps],
                &[d, c * ps * ps],
            )?,
            bias: match cfg.kind {
                VisionKind::Clip => None,
                VisionKind::Siglip => Some(emb.get("patch_embedding.bias", &[d])?),
            },
        };
        let (class_embedding, pre_norm) = if clip {
            (
                Some(emb.get("class_embedding", &[d])?),
                Some(LayerNorm::load(&w.pp("pre_layrnorm"), d, eps)?),
            )
        } else {
            (None, None)
        };
        let post_norm = if cfg.tie_last_hidden_states && depth == cfg.num_hidden_layers {
            Some(LayerNorm::load(&w.pp("post_layernorm"), d, eps)?)
        } else {
            None
        };
        let position_embedding = emb.get("position_embedding.weight", &[cfg.num_positions(), d])?;
        let layers = (0..depth)
            .map(|i| EncoderLayer::load(&w.pp(&format!("encoder.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTower {
            cfg: cfg.clone(),
            patch,
            class_embedding,
            position_embedding,
            pre_norm,
            post_norm,
            layers,
        })
    }

    /// Hidden states `0..=depth` (0 = embeddings) for pixel values `[3, H, W]`; `keep[i]` says
    /// whether state `i` is returned (others are dropped as soon as the next one exists).
    pub fn hidden_states(&self, b: &B, pixels: &[f32], keep: &[usize]) -> Vec<(usize, B::Tensor)> {
        let cfg = &self.cfg;
        let patches = im2col(pixels, cfg.num_channels, cfg.image_size, cfg.patch_size);
        let n = cfg.num_patches();
        let x = b.tensor(
            patches,
            n,
            cfg.num_channels * cfg.patch_size * cfg.patch_size,
        );
        let mut h = self.patch.forward(b, &x);
        if let Some(cls) = &self.class_embedding {
            h = b.prepend_row(&h, cls);
        }
        h = b.add_weight(&h, &self.position_embedding);
        if let Some(norm) = &self.pre_norm {
            h = norm.forward(b, &h);
        }
        let heads = Heads {
            q_heads: cfg.num_attention_heads,
            kv_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        };
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if keep.contains(&i) {
                out.push((i, b.slice_rows(&h, 0, b.dims(&h).0)));
            }
            let x = layer.ln1.forward(b, &h);
            let (q, k, v) = (
                layer.q.forward(b, &x),
                layer.k.forward(b, &x),
                layer.v.forward(b, &x),
            );
            let a = b.attention(&q, &k, &v, heads);
            h = layer.o.forward_add(b, &a, h);
            let x = layer.ln2.forward(b, &h);
            let x = b.activate(&layer.fc1.forward(b, &x), cfg.hidden_act);
            h = layer.fc2.forward_add(b, &x, h);
        }
        if keep.contains(&self.layers.len()) {
            if let Some(norm) = &self.post_norm {
                h = norm.forward(b, &h);
            }
            out.push((self.layers.len(), h));
        }
        out
    }
}
