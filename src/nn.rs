//! The layer vocabulary the stages are written in: a prefixing weight loader ([`Weights`]) and the
//! layers LLaVA is made of ([`Linear`], [`LayerNorm`], [`RmsNorm`]), each a few weights plus the
//! backend ops that apply them. The shape follows candle-nn (`linear` + `VarBuilder`): a stage
//! says *which* tensor by a name relative to its prefix and *what shape* it must have; the loader
//! checks the shape and uploads the weight as the checkpoint stores it (f32, f16, q8/q4 blocks).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::quant::WeightData;
use crate::weights::WeightStore;

/// Weights under one name prefix of a checkpoint (e.g. `language_model.model.layers.3.`), uploaded
/// to one backend.
pub struct Weights<'a, B: Backend> {
    backend: &'a B,
    store: &'a WeightStore,
    prefix: String,
}

impl<'a, B: Backend> Weights<'a, B> {
    /// The tensors whose names start with `prefix` (`""` for the whole checkpoint).
    pub fn new(backend: &'a B, store: &'a WeightStore, prefix: &str) -> Self {
        Weights {
            backend,
            store,
            prefix: prefix.to_string(),
        }
    }

    /// The sub-tree `name.` below this prefix (`layers.3` -> `...layers.3.`).
    pub fn pp(&self, name: &str) -> Self {
        Weights {
            backend: self.backend,
            store: self.store,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    /// The full tensor name of `name` under this prefix.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.name(name))
    }

    /// Tensor `name` with the expected `shape`, uploaded as stored (quantized or f16 where the
    /// checkpoint, or quantize-on-load, says so; see `WeightStore::weight_data`).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        self.upload(&self.name(name), shape)
    }

    /// Tensor `name` widened to f32 on the host (for weights a stage reshapes before upload).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.store.f32(&self.name(name), shape)
    }

    /// Tensor `name` read with `shape` and uploaded as a matrix of `as_shape` (same element count:
    /// a conv kernel `[D, C, p, p]` used as `[D, C*p*p]`).
    pub fn get_reshaped(
        &self,
        name: &str,
        shape: &[usize],
        as_shape: &[usize],
    ) -> Result<B::Weight> {
        Ok(self.backend.weight(self.get_f32(name, shape)?, as_shape))
    }

    fn upload(&self, full_name: &str, shape: &[usize]) -> Result<B::Weight> {
        let keep_f16 = self.backend.reads_f16();
        let data = self
            .store
            .weight_data_keeping_f16(full_name, shape, keep_f16)?;
        Ok(self.backend.weight_data(data, shape))
    }

    /// Tensors `names` (each `[rows[i], cols...]`, or `[rows[i]]` for biases) stacked by rows
    /// into one weight, each part as stored (see [`WeightData::stack_rows`]); `None` when their
    /// formats differ.
    pub fn get_stacked(
        &self,
        names: &[String],
        rows: &[usize],
        cols: Option<usize>,
    ) -> Result<Option<B::Weight>> {
        let keep_f16 = self.backend.reads_f16();
        let shape = |r: usize| cols.map_or(vec![r], |c| vec![r, c]);
        let parts = names
            .iter()
            .zip(rows)
            .map(|(n, &r)| {
                self.store
                    .weight_data_keeping_f16(&self.name(n), &shape(r), keep_f16)
            })
            .collect::<Result<Vec<_>>>()?;
        let stacked = shape(rows.iter().sum());
        Ok(WeightData::stack_rows(parts).map(|d| self.backend.weight_data(d, &stacked)))
    }
}

/// `x W^T + b`, `W: [out, in]` (transformers' `nn.Linear`).
pub struct Linear<B: Backend> {
    pub weight: B::Weight,
    pub bias: Option<B::Weight>,
}

impl<B: Backend> Linear<B> {
    /// `weight` `[out, in]` under `w`, and `bias` `[out]` when `bias` is set.
    pub fn load(w: &Weights<B>, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.get("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(w.get("bias", &[out_dim])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        b.linear(x, &self.weight, self.bias.as_ref())
    }

    /// `residual + forward(x)` (see [`Backend::linear_add`]).
    pub fn forward_add(&self, b: &B, x: &B::Tensor, residual: B::Tensor) -> B::Tensor {
        b.linear_add(x, &self.weight, self.bias.as_ref(), residual)
    }
}

/// `N` linears of one input (q/k/v; gate/up), loaded as one weight stacked by rows when the
/// backend asks for it ([`Backend::stacks_projections`]): then one matmul computes every part's
/// outputs, side by side in one tensor in the order the parts were named, each output bit for bit
/// what its own linear gives (a matmul sums each output alone, whatever the others are).
pub enum Projections<B: Backend, const N: usize> {
    Stacked(Linear<B>),
    Separate([Linear<B>; N]),
}

impl<B: Backend, const N: usize> Projections<B, N> {
    /// The linears `parts` (name under `w`, output size), each `[out, in_dim]` with a bias when
    /// `bias` is set; stacked when the backend asks and their formats agree.
    pub fn load(
        w: &Weights<B>,
        parts: [(&str, usize); N],
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        if w.backend.stacks_projections() {
            let names = |what: &str| parts.map(|(n, _)| format!("{n}.{what}"));
            let rows = parts.map(|(_, out)| out);
            let weight = w.get_stacked(&names("weight"), &rows, Some(in_dim))?;
            let bias = match bias {
                true => w.get_stacked(&names("bias"), &rows, None)?.map(Some),
                false => Some(None),
            };
            if let (Some(weight), Some(bias)) = (weight, bias) {
                return Ok(Projections::Stacked(Linear { weight, bias }));
            }
        }
        let linears = parts
            .iter()
            .map(|&(name, out)| Linear::load(&w.pp(name), out, in_dim, bias))
            .collect::<Result<Vec<_>>>()?;
        let linears = linears
            .try_into()
            .map_err(|_| Error::invalid("projections: a part went missing"))?;
        Ok(Projections::Separate(linears))
    }
}

/// Layer normalisation with weight and bias (CLIP, SigLIP).
pub struct LayerNorm<B: Backend> {
    pub weight: B::Weight,
    pub bias: B::Weight,
    pub eps: f32,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(w: &Weights<B>, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get("weight", &[dim])?,
            bias: w.get("bias", &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        b.layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// RMS normalisation with a weight (Llama, Qwen2).
pub struct RmsNorm<B: Backend> {
    pub weight: B::Weight,
    pub eps: f32,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(w: &Weights<B>, dim: usize, eps: f32) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get("weight", &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        b.rms_norm(x, &self.weight, self.eps)
    }

    /// `next.forward(self.forward(x))`, where the norm's one consumer is `next` (see
    /// [`Backend::rms_norm_linear`]).
    pub fn forward_into(&self, b: &B, x: &B::Tensor, next: &Linear<B>) -> B::Tensor {
        b.rms_norm_linear(x, &self.weight, self.eps, &next.weight, next.bias.as_ref())
    }

    /// `act(gate) * up` of `gate_up.forward(self.forward(x))`, a stacked gate/up projection
    /// (see [`Backend::rms_norm_gated`]).
    pub fn forward_gated(
        &self,
        b: &B,
        x: &B::Tensor,
        gate_up: &Linear<B>,
        act: crate::config::Activation,
    ) -> B::Tensor {
        let (w, bias) = (&gate_up.weight, gate_up.bias.as_ref());
        b.rms_norm_gated(x, &self.weight, self.eps, w, bias, act)
    }
}
