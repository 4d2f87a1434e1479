//! Calibration data for [`super::gptq`]: the Hessian `X^T X` of every quantizable linear's inputs,
//! recorded while the f32 CPU reference model (the one model definition, `crate::model`) captions
//! generated scenes greedily.
//!
//! Scenes come from [`crate::scenes::generate`] with seeds from [`FIRST_SEED`] on, disjoint from
//! the evaluation scenes (`spec-llava eval` and the tests use seeds 0..). The inputs are those the
//! model sees when it writes its own greedy captions (prompt prefill, then one row per generated
//! token), which are the activations a quantized model must reproduce.
//!
//! Inputs are captured with [`crate::backend::cpu::with_linear_hook`]. The hook sees a weight, not
//! its name; a weight is recognised by a hash of its values and shape, computed once per weight
//! (two quantizable weights with identical values would share their calibration data, which is
//! what GPTQ would want from them anyway).

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::rc::Rc;

pub use super::gptq::Calibration;
use super::gptq::Hessian;
use crate::backend::cpu::{with_linear_hook, CpuBackend, CpuTensor, CpuWeight};
use crate::caption::{CaptionRequest, Captioner};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Seed of the first calibration scene.
pub const FIRST_SEED: u64 = 10_000;

/// Default number of calibration scenes of `spec-llava quantize`.
pub const DEFAULT_SCENES: usize = 64;

/// Largest checkpoint (as f32) that calibration will load into the CPU reference engine.
pub const MAX_F32_BYTES: u64 = 8 << 30;

fn fingerprint(data: &[f32], shape: &[usize]) -> u64 {
    let mut h = DefaultHasher::new();
    shape.hash(&mut h);
    for v in data {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

/// Record calibration Hessians of the weights `targets` (name, `[out, in]`) from `scenes`
/// generated scenes captioned by the checkpoint in `model` (an original checkpoint, or a quantized
/// one: then the inputs are those the quantized model sees).
pub fn calibrate(
    model: &Path,
    targets: &[(String, Vec<usize>)],
    scenes: usize,
) -> Result<Calibration> {
    let checkpoint = Checkpoint::open(model)?;
    let store = &checkpoint.weights;
    let names: Vec<&String> = targets.iter().map(|(n, _)| n).collect();
    let f32_bytes: u64 = store
        .names()
        .filter_map(|n| store.raw(n).ok())
        .map(|r| r.shape.iter().product::<usize>() as u64 * 4)
        .sum();
    if f32_bytes > MAX_F32_BYTES {
        return Err(Error::file(
            model.display(),
            format!(
                "calibration runs the f32 CPU engine, which needs {:.1} GiB for this checkpoint \
                 (limit {} GiB); pass --calibration-scenes 0 for plain round-to-nearest",
                f32_bytes as f64 / (1u64 << 30) as f64,
                MAX_F32_BYTES >> 30
            ),
        ));
    }
    // Fingerprint -> names with those values (normally exactly one).
    let mut by_print: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, (name, shape)) in targets.iter().enumerate() {
        // What the CPU engine will hold: the stored values widened (dequantized if quantized).
        let data = store.f32(name, shape)?;
        by_print
            .entry(fingerprint(&data, shape))
            .or_default()
            .push(i);
    }

    struct State {
        /// Weight address -> indices into `names` (empty: not a quantizable weight).
        seen: HashMap<usize, Vec<usize>>,
        by_print: HashMap<u64, Vec<usize>>,
        hessians: Vec<Option<Hessian>>,
        /// Input rows not yet added, per target: decoding runs one row per call, and adding
        /// rows in batches is many times faster.
        pending: Vec<Vec<f32>>,
    }
    /// Rows per batch added to a Hessian.
    const BATCH: usize = 64;
    fn flush(h: &mut Option<Hessian>, pending: &mut Vec<f32>, dim: usize) {
        if !pending.is_empty() {
            h.get_or_insert_with(|| Hessian::new(dim))
                .add(pending, pending.len() / dim);
            pending.clear();
        }
    }
    let state = Rc::new(RefCell::new(State {
        seen: HashMap::new(),
        by_print,
        hessians: vec![None; names.len()],
        pending: vec![Vec::new(); names.len()],
    }));
    let hook_state = Rc::clone(&state);
    let hook = Box::new(move |w: &CpuWeight, x: &CpuTensor| {
        let mut s = hook_state.borrow_mut();
        // Weights stay put while the model lives, so the address identifies one.
        let key = w.address();
        if !s.seen.contains_key(&key) {
            let targets = s
                .by_print
                .get(&fingerprint(&w.values(), &w.shape))
                .cloned()
                .unwrap_or_default();
            s.seen.insert(key, targets);
        }
        let targets = s.seen[&key].clone();
        let s = &mut *s;
        for i in targets {
            s.pending[i].extend_from_slice(&x.data);
            if s.pending[i].len() >= BATCH * x.cols {
                flush(&mut s.hessians[i], &mut s.pending[i], x.cols);
            }
        }
    });

    let captioner = Captioner::new(&CpuBackend, checkpoint)?;
    let req = CaptionRequest::default();
    with_linear_hook(hook, || -> Result<()> {
        for seed in FIRST_SEED..FIRST_SEED + scenes as u64 {
            let scene = crate::scenes::generate(seed);
            pollster::block_on(captioner.caption(&CpuBackend, &scene.image, &req, |_| true))?;
        }
        Ok(())
    })?;
    drop(captioner);
    let mut s = state.borrow_mut();
    let s = &mut *s;
    for ((h, pending), (_, shape)) in s.hessians.iter_mut().zip(&mut s.pending).zip(targets) {
        flush(h, pending, shape[1]);
    }
    let hessians = std::mem::take(&mut s.hessians);
    Ok(Calibration {
        hessians: names
            .into_iter()
            .zip(hessians)
            .filter_map(|(n, h)| h.map(|h| (n.clone(), h)))
            .collect(),
        scenes,
    })
}
