//! Shared helpers for the integration tests: fixture checkpoints as directories, and a
//! random-weight copy of a checkpoint (a draft whose guesses the target rejects).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use spec_llava::backend::gpu::{GpuBackend, GpuOptions};

/// The GPU engine on the first adapter (lavapipe here), with `opts`. Without an adapter the test
/// FAILS, unless `SPEC_LLAVA_SKIP_GPU=1` is set: then it is skipped (None) with a note.
pub fn gpu_with(opts: GpuOptions) -> Option<GpuBackend> {
    match pollster::block_on(GpuBackend::with_options(opts)) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("SPEC_LLAVA_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("skipping: {e} (SPEC_LLAVA_SKIP_GPU=1)");
            None
        }
        Err(e) => {
            panic!("{e}: install Mesa lavapipe (mesa-vulkan-drivers) or set SPEC_LLAVA_SKIP_GPU=1")
        }
    }
}

/// The GPU engine twice, with the kernels chosen for CPU drivers (`true`) and for GPUs (`false`),
/// whatever adapter runs the test; empty when [`gpu_with`] skips.
pub fn gpu_each_kernel_choice() -> Vec<(bool, GpuBackend)> {
    [true, false]
        .into_iter()
        .filter_map(|cpu_kernels| {
            let opts = GpuOptions {
                cpu_kernels: Some(cpu_kernels),
                ..GpuOptions::default()
            };
            gpu_with(opts).map(|g| (cpu_kernels, g))
        })
        .collect()
}

/// [`gpu_with`] the default options.
pub fn gpu() -> Option<GpuBackend> {
    gpu_with(GpuOptions::default())
}

/// One test body run on every engine: `test_each_backend!(name, |b| { ... })` makes the tests
/// `name::cpu` and `name::gpu`, with `b` a `&CpuBackend` or a `&GpuBackend` (skipped as
/// [`gpu`] says). The body is expanded once per engine, so it may use `b` at its concrete type.
#[macro_export]
macro_rules! test_each_backend {
    ($name:ident, |$b:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn cpu() {
                let $b = &spec_llava::backend::cpu::CpuBackend;
                $body
            }

            #[test]
            fn gpu() {
                let Some(engine) = $crate::common::gpu() else {
                    return;
                };
                let $b = &engine;
                $body
                if let Some(e) = engine.take_error() {
                    panic!("{e}");
                }
            }
        }
    };
}

/// A bundled demo checkpoint: `web/models/demo/<which>` (`target` or `draft`).
pub fn demo(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("web/models/demo")
        .join(which)
}

/// Every file of a directory, in memory (what the page sends for a picked folder).
pub fn memory_files(dir: &Path, source: &str) -> spec_llava::files::MemoryFiles {
    let mut m = spec_llava::files::MemoryFiles::new(source);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            m.insert(&name, std::fs::read(&path).unwrap());
        }
    }
    m
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A directory of its own under the temporary directory for each call: tests of one binary run
/// on threads side by side (the CPU and GPU variants of a test), and two copying into the same
/// directory read each other's half-written files.
fn temp_dir(stem: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("{stem}-{}-{n}", std::process::id()))
}

fn copy_files(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// The Llama-2 tokenizer as LLaVA-1.5 ships it (tests/fixtures/llama2-tokenizer, MIT).
pub fn llama2_tokenizer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama2-tokenizer")
}

/// The fixture as a checkpoint directory: fixtures that use the Llama-2 tokenizer do not commit a
/// second copy of it (3.6 MB); it is copied in from tests/fixtures/llama2-tokenizer.
pub fn checkpoint_dir(name: &str) -> PathBuf {
    let src = fixtures_dir().join(name);
    if src.join("tokenizer.json").exists() {
        return src;
    }
    let dst = temp_dir(&format!("spec-llava-fixture-{name}"));
    copy_files(&src, &dst);
    std::fs::copy(
        llama2_tokenizer_dir().join("tokenizer.json"),
        dst.join("tokenizer.json"),
    )
    .unwrap();
    dst
}

/// A copy of the checkpoint in `src` whose config.json `edit` has changed.
pub fn config_edited_copy(
    src: &Path,
    stem: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let dst = temp_dir(&format!("spec-llava-{stem}"));
    copy_files(src, &dst);
    let path = dst.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dst
}

/// A copy of checkpoint `name` in which every tensor whose name ends with `suffix` is filled with
/// `value` (e.g. NaN in the final norm: a model whose logits are NaN).
pub fn poisoned_copy(name: &str, suffix: &str, value: f32) -> PathBuf {
    let src = checkpoint_dir(name);
    let dst = temp_dir(&format!(
        "spec-llava-poisoned-{name}-{}",
        suffix.replace('.', "_")
    ));
    copy_files(&src, &dst);
    rewrite_tensors(&dst, |tensor, n, dtype| {
        if !tensor.ends_with(suffix) {
            return None;
        }
        float_bytes(dtype, n, || value)
    });
    dst
}

/// `n` values from `value()` as the bytes of a float tensor of `dtype`; None for other dtypes.
fn float_bytes(
    dtype: safetensors::Dtype,
    n: usize,
    mut value: impl FnMut() -> f32,
) -> Option<Vec<u8>> {
    Some(match dtype {
        safetensors::Dtype::F32 => (0..n).flat_map(|_| value().to_le_bytes()).collect(),
        safetensors::Dtype::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(value()).to_le_bytes())
            .collect(),
        safetensors::Dtype::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(value()).to_le_bytes())
            .collect(),
        _ => return None,
    })
}

/// Rewrite the safetensors files of checkpoint dir `dir`: `f(name, elements, dtype)` gives a
/// tensor's new bytes, or None to keep it.
fn rewrite_tensors(
    dir: &Path,
    mut f: impl FnMut(&str, usize, safetensors::Dtype) -> Option<Vec<u8>>,
) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = st.tensors();
        // `tensors()` comes from a hash map: sort so rewrites are the same in every run.
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let out: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = tensors
            .into_iter()
            .map(|(name, view)| {
                let n: usize = view.shape().iter().product();
                let data = f(&name, n, view.dtype()).unwrap_or_else(|| view.data().to_vec());
                (name, data, view.dtype(), view.shape().to_vec())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = out
            .iter()
            .map(|(n, d, t, s)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &path).unwrap();
    }
}

/// A copy of checkpoint `name` whose weights are replaced by seeded noise of the same shapes and
/// dtypes (tokenizer and configs unchanged).
pub fn random_weights_copy(name: &str, seed: u64) -> PathBuf {
    let src = checkpoint_dir(name);
    let dst = temp_dir(&format!("spec-llava-random-{name}-{seed}"));
    copy_files(&src, &dst);
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    rewrite_tensors(&dst, |_, n, dtype| float_bytes(dtype, n, || next() * 0.5));
    dst
}

/// A JSON number that must be finite and positive (benchmark reports); its value.
pub fn positive(what: &str, v: &serde_json::Value) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what}: {x}");
    x
}
