//! Quantized copies kept in the model store (worker side): a plain (f32/f16/bf16) checkpoint that
//! the page quantizes while loading is written once, as the q4/q8 checkpoint `spec-llava quantize`
//! would write without calibration (round to nearest: the same blocks quantizing while loading
//! makes), into the store folder of its URL, and loaded from there as stored. The next visit
//! loads those packed weights offline instead of the originals, whose kept copies are removed to
//! free the quota for the smaller one.
//!
//! Files in the store folder: `q4.model.safetensors` (or `q4.model-0000k-of-0000n.safetensors`
//! and `q4.model.safetensors.index.json`), and the marker `q4.packed.json` written last.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::app::fetch::Download;
use crate::app::messages::QuantChoice;
use crate::app::store::{KeepError, ModelStore};
use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::files::{MemoryFiles, INDEX_FILE};
use crate::quant::Format;
use crate::quantize::Packing;
use crate::weights::BlobFile;

/// Shards of a kept copy: small, so making one holds little wasm memory.
const SHARD_BYTES: u64 = 64 << 20;

/// What `<format>.packed.json` says about a kept copy.
#[derive(Serialize, Deserialize)]
struct Marker {
    /// Bytes of the original checkpoint's files (what "auto" decides on).
    source_bytes: u64,
    shards: Vec<String>,
    has_index: bool,
}

fn kept_name(format: Format, name: &str) -> String {
    format!("{}.{name}", format.name())
}

fn marker_name(format: Format) -> String {
    format!("{}.packed.json", format.name())
}

/// The formats a kept copy may have.
const FORMATS: [Format; 2] = [Format::Q4, Format::Q8];

/// The checkpoint `small` (its configs and tokenizer) with the weights of a kept copy in the
/// format `quantize` asks for, when the store holds a complete one.
pub async fn reopen(
    store: &ModelStore,
    small: &MemoryFiles,
    quantize: QuantChoice,
) -> Option<MemoryFiles> {
    for format in FORMATS {
        let Some(marker) = store.read_complete(&marker_name(format)).await else {
            continue;
        };
        let Ok(marker) = serde_json::from_slice::<Marker>(&marker) else {
            continue;
        };
        if quantize.format(marker.source_bytes) != Some(format) {
            continue;
        }
        let mut files = without_weights(small);
        if marker.has_index {
            let index = store.read_complete(&kept_name(format, INDEX_FILE)).await?;
            files.insert(INDEX_FILE, index);
        }
        for shard in &marker.shards {
            let file = store.complete(&kept_name(format, shard)).await?;
            files.insert_file(shard, Arc::new(BlobFile::new(file.into())));
        }
        return Some(files);
    }
    None
}

/// `files` without its weights and shard index (the configs and tokenizer).
fn without_weights(files: &MemoryFiles) -> MemoryFiles {
    let mut out = MemoryFiles::new(&files.source);
    for (name, file) in &files.files {
        if !name.ends_with(".safetensors") && name != INDEX_FILE {
            out.insert_file(name, file.clone());
        }
    }
    out
}

/// Write the `format` copy of the plain checkpoint `files` into `store` a shard at a time, then
/// remove the kept originals (`original_shards`); the checkpoint to load. `Ok(None)` when
/// `files` is already quantized (nothing to do). On an error nothing of the copy stays.
pub async fn keep(
    store: &ModelStore,
    files: &MemoryFiles,
    original_shards: &[String],
    format: Format,
    dl: &mut Download<'_>,
) -> std::result::Result<Option<MemoryFiles>, KeepError> {
    let checkpoint = Checkpoint::from_files(files)?;
    if checkpoint.weights.format().is_some() {
        return Ok(None);
    }
    // A copy half made by an earlier visit is not used: its marker is written last.
    let _ = store.remove(&marker_name(format)).await;
    let packing = Packing::new(&checkpoint.weights, format, SHARD_BYTES, None)?;
    let names = packing.shard_names();
    match write(store, files, packing, format, dl).await {
        Ok(out) => {
            for shard in original_shards {
                let _ = store.remove(shard).await;
            }
            Ok(Some(out))
        }
        Err(e) => {
            // Nothing half made stays behind to fill the quota.
            for name in names.iter().map(String::as_str).chain([INDEX_FILE]) {
                let _ = store.remove(&kept_name(format, name)).await;
            }
            Err(e)
        }
    }
}

/// Write the shards, the index and last the marker; the checkpoint they make.
async fn write(
    store: &ModelStore,
    files: &MemoryFiles,
    mut packing: Packing<'_>,
    format: Format,
    dl: &mut Download<'_>,
) -> std::result::Result<MemoryFiles, KeepError> {
    let names = packing.shard_names();
    let total = packing.tensor_bytes();
    let task = format!("{}: keeping the {} weights", dl.label, format.name());
    let mut out = without_weights(files);
    let mut done = 0u64;
    (dl.progress)(&task, 0, total);
    while let Some(shard) = packing.next_shard() {
        if (dl.cancelled)() {
            return Err(KeepError::Fail(Error::Cancelled));
        }
        let (name, bytes) = shard?;
        let kept = store.put(&kept_name(format, &name), &bytes).await?;
        done += bytes.len() as u64;
        (dl.progress)(&task, done.min(total), total);
        out.insert_file(&name, Arc::new(BlobFile::new(kept.into())));
    }
    let index = packing.index_json();
    if let Some(text) = &index {
        store
            .put(&kept_name(format, INDEX_FILE), text.as_bytes())
            .await?;
        out.insert(INDEX_FILE, text.clone().into_bytes());
    }
    let marker = Marker {
        source_bytes: files.total_bytes(),
        shards: names,
        has_index: index.is_some(),
    };
    let marker = serde_json::to_vec(&marker).map_err(|e| Error::invalid(e.to_string()))?;
    store.put(&marker_name(format), &marker).await?;
    Ok(out)
}
