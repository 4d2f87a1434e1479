//! Shared helpers for the integration tests: fixture checkpoints as directories, and a
//! random-weight copy of a checkpoint (a draft whose guesses the target rejects).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
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

/// The fixture as a checkpoint directory: fixtures that share the Llama-2 tokenizer do not commit
/// it (3.6 MB); it is copied in from ../shared/data.
pub fn checkpoint_dir(name: &str) -> PathBuf {
    let src = fixtures_dir().join(name);
    if src.join("tokenizer.json").exists() {
        return src;
    }
    let dst =
        std::env::temp_dir().join(format!("spec-llava-fixture-{name}-{}", std::process::id()));
    copy_files(&src, &dst);
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/llama2-tokenizer/tokenizer.json");
    std::fs::copy(&shared, dst.join("tokenizer.json")).unwrap();
    dst
}

/// A copy of checkpoint `name` whose weights are replaced by seeded noise of the same shapes and
/// dtypes (tokenizer and configs unchanged).
pub fn random_weights_copy(name: &str, seed: u64) -> PathBuf {
    let src = checkpoint_dir(name);
    let dst = std::env::temp_dir().join(format!(
        "spec-llava-random-{name}-{seed}-{}",
        std::process::id()
    ));
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
    for entry in std::fs::read_dir(&dst).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut out: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = Vec::new();
        let mut tensors = st.tensors();
        // `tensors()` comes from a hash map: sort so the noise is the same in every run.
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in tensors {
            let n: usize = view.shape().iter().product();
            let data: Vec<u8> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    (0..n).flat_map(|_| (next() * 0.5).to_le_bytes()).collect()
                }
                safetensors::Dtype::F16 => (0..n)
                    .flat_map(|_| half::f16::from_f32(next() * 0.5).to_le_bytes())
                    .collect(),
                safetensors::Dtype::BF16 => (0..n)
                    .flat_map(|_| half::bf16::from_f32(next() * 0.5).to_le_bytes())
                    .collect(),
                _ => view.data().to_vec(),
            };
            out.push((name, data, view.dtype(), view.shape().to_vec()));
        }
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
    dst
}
