//! The vision tower: CLIP or SigLIP ViT (transformers' `CLIPVisionModel` / `SiglipVisionModel`),
//! run only as deep as the hidden states LLaVA selects (`vision_feature_layer`).
//!
//! Patch embedding is a stride-`p` convolution, computed as im2col (on the host, where the pixels
//! are) followed by one matmul, so backends need no convolution op.

use crate::backend::{Backend, Heads};
use crate::config::{VisionConfig, VisionKind};
use crate::error::Result;
use crate::weights::WeightStore;

struct EncoderLayer<B: Backend> {
    ln1: (B::Weight, B::Weight),
    q: (B::Weight, B::Weight),
    k: (B::Weight, B::Weight),
    v: (B::Weight, B::Weight),
    o: (B::Weight, B::Weight),
    ln2: (B::Weight, B::Weight),
    fc1: (B::Weight, B::Weight),
    fc2: (B::Weight, B::Weight),
}

pub struct VisionTower<B: Backend> {
    cfg: VisionConfig,
    patch_w: B::Weight,
    patch_b: Option<B::Weight>,
    class_embedding: Option<B::Weight>,
    position_embedding: B::Weight,
    pre_norm: Option<(B::Weight, B::Weight)>,
    /// SigLIP only, and only when the last layer is run and `tie_last_hidden_states` says so:
    /// transformers 4.57 reports `hidden_states[-1]` of `SiglipVisionModel` after
    /// `post_layernorm`, 5.x before it (see `VisionConfig::tie_last_hidden_states`).
    post_norm: Option<(B::Weight, B::Weight)>,
    layers: Vec<EncoderLayer<B>>,
}

/// Load `name` from the store with the expected shape and upload it (quantized or f16 where the
/// checkpoint, or quantize-on-load, says so; see `WeightStore::weight_data`).
pub(crate) fn load<B: Backend>(
    b: &B,
    store: &WeightStore,
    name: &str,
    shape: &[usize],
) -> Result<B::Weight> {
    Ok(b.weight_data(store.weight_data(name, shape)?, shape))
}

/// Weight + bias of a linear layer `prefix.{weight,bias}`.
pub(crate) fn load_linear<B: Backend>(
    b: &B,
    store: &WeightStore,
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
) -> Result<(B::Weight, B::Weight)> {
    Ok((
        load(b, store, &format!("{prefix}.weight"), &[out_dim, in_dim])?,
        load(b, store, &format!("{prefix}.bias"), &[out_dim])?,
    ))
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
        let p = prefix;
        let (d, c, ps) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let emb = format!("{p}embeddings.");
        // The conv weight [D, C, p, p] is used as a [D, C*p*p] matrix.
        let patch_w = b.weight(
            store.f32(&format!("{emb}patch_embedding.weight"), &[d, c, ps, ps])?,
            &[d, c * ps * ps],
        );
        let (patch_b, class_embedding, pre_norm) = match cfg.kind {
            VisionKind::Clip => (
                None,
                Some(load(b, store, &format!("{emb}class_embedding"), &[d])?),
                Some((
                    load(b, store, &format!("{p}pre_layrnorm.weight"), &[d])?,
                    load(b, store, &format!("{p}pre_layrnorm.bias"), &[d])?,
                )),
            ),
            VisionKind::Siglip => (
                Some(load(b, store, &format!("{emb}patch_embedding.bias"), &[d])?),
                None,
                None,
            ),
        };
        let post_norm = if cfg.tie_last_hidden_states && depth == cfg.num_hidden_layers {
            Some((
                load(b, store, &format!("{p}post_layernorm.weight"), &[d])?,
                load(b, store, &format!("{p}post_layernorm.bias"), &[d])?,
            ))
        } else {
            None
        };
        let position_embedding = load(
            b,
            store,
            &format!("{emb}position_embedding.weight"),
            &[cfg.num_positions(), d],
        )?;
        let mut layers = Vec::with_capacity(depth);
        for i in 0..depth {
            let l = format!("{p}encoder.layers.{i}.");
            let norm = |n: &str| -> Result<(B::Weight, B::Weight)> {
                Ok((
                    load(b, store, &format!("{l}{n}.weight"), &[d])?,
                    load(b, store, &format!("{l}{n}.bias"), &[d])?,
                ))
            };
            layers.push(EncoderLayer {
                ln1: norm("layer_norm1")?,
                q: load_linear(b, store, &format!("{l}self_attn.q_proj"), d, d)?,
                k: load_linear(b, store, &format!("{l}self_attn.k_proj"), d, d)?,
                v: load_linear(b, store, &format!("{l}self_attn.v_proj"), d, d)?,
                o: load_linear(b, store, &format!("{l}self_attn.out_proj"), d, d)?,
                ln2: norm("layer_norm2")?,
                fc1: load_linear(b, store, &format!("{l}mlp.fc1"), cfg.intermediate_size, d)?,
                fc2: load_linear(b, store, &format!("{l}mlp.fc2"), d, cfg.intermediate_size)?,
            });
        }
        Ok(VisionTower {
            cfg: cfg.clone(),
            patch_w,
            patch_b,
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
        let mut h = b.linear(&x, &self.patch_w, self.patch_b.as_ref());
        if let Some(cls) = &self.class_embedding {
            h = b.prepend_row(&h, cls);
        }
        h = b.add_weight(&h, &self.position_embedding);
        if let Some((w, bias)) = &self.pre_norm {
            h = b.layer_norm(&h, w, bias, cfg.layer_norm_eps);
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
            let x = b.layer_norm(&h, &layer.ln1.0, &layer.ln1.1, cfg.layer_norm_eps);
            let q = b.linear(&x, &layer.q.0, Some(&layer.q.1));
            let k = b.linear(&x, &layer.k.0, Some(&layer.k.1));
            let v = b.linear(&x, &layer.v.0, Some(&layer.v.1));
            let a = b.attention(&q, &k, &v, heads);
            h = b.add(&h, &b.linear(&a, &layer.o.0, Some(&layer.o.1)));
            let x = b.layer_norm(&h, &layer.ln2.0, &layer.ln2.1, cfg.layer_norm_eps);
            let x = b.activate(
                &b.linear(&x, &layer.fc1.0, Some(&layer.fc1.1)),
                cfg.hidden_act,
            );
            h = b.add(&h, &b.linear(&x, &layer.fc2.0, Some(&layer.fc2.1)));
        }
        if keep.contains(&self.layers.len()) {
            if let Some((w, bias)) = &self.post_norm {
                h = b.layer_norm(&h, w, bias, cfg.layer_norm_eps);
            }
            out.push((self.layers.len(), h));
        }
        out
    }
}
