//! One safetensors file as the loader sees it: a length and byte ranges read on demand.
//!
//! Natively a file is memory-mapped and a range is a borrowed slice. In the browser a file is a
//! `Blob` (a picked file, or a download kept in the origin-private file system) or a URL read with
//! HTTP range requests, and a range is copied out when a tensor is loaded: so the wasm heap holds
//! one tensor at a time, never a shard, and a 7B checkpoint loads into a tab whose heap is 4 GiB
//! at most.

use std::borrow::Cow;
use std::sync::Arc;

/// Bytes of one file, read by range. `read` answers exactly `end - start` bytes or says why not
/// (the caller names the file in the message).
pub trait WeightFile: Send + Sync {
    fn len(&self) -> u64;
    fn read(&self, start: u64, end: u64) -> std::result::Result<Cow<'_, [u8]>, String>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared handle to one file of a checkpoint.
pub type FileBytes = Arc<dyn WeightFile>;

/// The slice `start..end` of `bytes`, or why it is not there.
fn slice(bytes: &[u8], start: u64, end: u64) -> std::result::Result<Cow<'_, [u8]>, String> {
    let (s, e) = (usize::try_from(start), usize::try_from(end));
    match (s, e) {
        (Ok(s), Ok(e)) if s <= e && e <= bytes.len() => Ok(Cow::Borrowed(&bytes[s..e])),
        _ => Err(format!(
            "bytes {start}..{end} are past the end of the file ({} bytes)",
            bytes.len()
        )),
    }
}

impl WeightFile for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read(&self, start: u64, end: u64) -> std::result::Result<Cow<'_, [u8]>, String> {
        slice(self, start, end)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl WeightFile for memmap2::Mmap {
    fn len(&self) -> u64 {
        self.as_ref().len() as u64
    }
    fn read(&self, start: u64, end: u64) -> std::result::Result<Cow<'_, [u8]>, String> {
        slice(self, start, end)
    }
}

/// A file the browser holds (`Blob`: a picked `File`, or a download kept in the origin-private
/// file system), read one range at a time with `FileReaderSync` (dedicated workers only).
#[cfg(target_arch = "wasm32")]
pub struct BlobFile {
    blob: web_sys::Blob,
}

// SAFETY: the wasm build is single-threaded (no atomics): a `Blob` is never touched from another
// thread. `WeightFile` is `Send + Sync` for the native loaders that share a store across threads.
#[cfg(target_arch = "wasm32")]
unsafe impl Send for BlobFile {}
#[cfg(target_arch = "wasm32")]
unsafe impl Sync for BlobFile {}

#[cfg(target_arch = "wasm32")]
impl BlobFile {
    pub fn new(blob: web_sys::Blob) -> Self {
        BlobFile { blob }
    }
}

#[cfg(target_arch = "wasm32")]
impl WeightFile for BlobFile {
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }
    fn read(&self, start: u64, end: u64) -> std::result::Result<Cow<'_, [u8]>, String> {
        use wasm_bindgen::JsCast;
        let text = |e: wasm_bindgen::JsValue| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_else(|| format!("{e:?}"))
        };
        if end > self.len() || start > end {
            return Err(format!(
                "bytes {start}..{end} are past the end of the file ({} bytes)",
                self.len()
            ));
        }
        let part = self
            .blob
            .slice_with_f64_and_f64(start as f64, end as f64)
            .map_err(text)?;
        let reader = web_sys::FileReaderSync::new().map_err(text)?;
        let buffer = reader
            .read_as_array_buffer(&part)
            .map_err(|e| format!("cannot read ({})", text(e)))?;
        Ok(Cow::Owned(js_sys::Uint8Array::new(&buffer).to_vec()))
    }
}
