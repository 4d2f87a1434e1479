//! Download a checkpoint's files from a base URL (worker side), with byte progress, through the
//! Cache API so that a model fetched once loads offline (and the demo models load without the
//! server after one visit).
//!
//! Which files: the ones `Checkpoint::from_files` reads — required `config.json`,
//! `tokenizer.json` and the weights (`model.safetensors`, or the shards named by
//! `model.safetensors.index.json`); optional tokenizer/chat-template/processor/generation configs
//! (the image processor config is `preprocessor_config.json` or, as transformers 5.x saves it,
//! inside `processor_config.json`: `Checkpoint::from_files` says when neither has it). An absent optional file is remembered in the cache as a 404 so offline loads see the
//! same file set.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Response};

use crate::error::{Error, Result};
use crate::files::{MemoryFiles, INDEX_FILE, WEIGHTS_FILE};
use crate::weights::shard_names;

/// Cache API bucket for model files (the service worker serves from it too).
pub const MODEL_CACHE: &str = "spec-llava-models-v1";

/// The largest checkpoint (sum of files) a browser tab can hold: wasm32 addresses 4 GiB and the
/// weights are held once as downloaded bytes and once as engine tensors.
pub const MAX_CHECKPOINT_BYTES: u64 = 1536 << 20;

const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "preprocessor_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "generation_config.json",
];

/// Progress callback: (task, bytes done, bytes total or 0 when unknown).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Fetch every file of the checkpoint at `base`.
pub async fn fetch_checkpoint(
    base: &str,
    label: &str,
    progress: Progress<'_>,
) -> Result<MemoryFiles> {
    let base = base.trim_end_matches('/');
    let cache = open_cache().await;
    let mut files = MemoryFiles::new(base);
    let mut total = 0u64;
    for name in REQUIRED {
        let bytes = get(&cache, base, name, false, label, progress, &mut total).await?;
        files.insert(name, bytes.unwrap_or_default());
    }
    for name in OPTIONAL {
        if let Some(bytes) = get(&cache, base, name, true, label, progress, &mut total).await? {
            files.insert(name, bytes);
        }
    }
    let shards = match get(&cache, base, INDEX_FILE, true, label, progress, &mut total).await? {
        Some(index) => {
            let text = String::from_utf8(index.clone())
                .map_err(|_| Error::file(format!("{base}/{INDEX_FILE}"), "not UTF-8 text"))?;
            let names = shard_names(&text, &format!("{base}/{INDEX_FILE}"))?;
            files.insert(INDEX_FILE, index);
            names
        }
        None => vec![WEIGHTS_FILE.to_string()],
    };
    for name in shards {
        let bytes = get(&cache, base, &name, false, label, progress, &mut total).await?;
        files.insert(&name, bytes.unwrap_or_default());
    }
    Ok(files)
}

async fn open_cache() -> Option<Cache> {
    let caches = Reflect::get(&js_sys::global(), &"caches".into()).ok()?;
    let caches: web_sys::CacheStorage = caches.dyn_into().ok()?;
    JsFuture::from(caches.open(MODEL_CACHE))
        .await
        .ok()?
        .dyn_into()
        .ok()
}

/// One file: from the cache when there, else from the network (then cached). `Ok(None)` for an
/// optional file that does not exist.
async fn get(
    cache: &Option<Cache>,
    base: &str,
    name: &str,
    optional: bool,
    label: &str,
    progress: Progress<'_>,
    total: &mut u64,
) -> Result<Option<Vec<u8>>> {
    let url = format!("{base}/{name}");
    let task = format!("{label}: {name}");
    let mut response = None;
    if let Some(cache) = cache {
        if let Ok(hit) = JsFuture::from(cache.match_with_str(&url)).await {
            if let Ok(r) = hit.dyn_into::<Response>() {
                response = Some((r, true));
            }
        }
    }
    let (response, cached) = match response {
        Some(r) => r,
        None => {
            let promise = fetch_promise(&url)?;
            let r = JsFuture::from(promise).await.map_err(|e| {
                Error::file(
                    &url,
                    format!("cannot download ({}); are you offline?", js_text(&e)),
                )
            })?;
            (
                r.dyn_into::<Response>()
                    .map_err(|_| Error::file(&url, "not a response"))?,
                false,
            )
        }
    };
    if response.status() == 404 && optional {
        if let (Some(cache), false) = (cache, cached) {
            if let Ok(missing) = Response::new_with_opt_str_and_init(None, &{
                let init = web_sys::ResponseInit::new();
                init.set_status(404);
                init
            }) {
                let _ = JsFuture::from(cache.put_with_str(&url, &missing)).await;
            }
        }
        return Ok(None);
    }
    if !response.ok() {
        return Err(Error::file(
            &url,
            format!("HTTP {} {}", response.status(), response.status_text()),
        ));
    }
    let length: u64 = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if *total + length > MAX_CHECKPOINT_BYTES {
        return Err(Error::file(
            &url,
            format!(
                "the checkpoint is larger than this browser can hold ({} MiB at most); quantize it first (spec-llava quantize --format q4)",
                MAX_CHECKPOINT_BYTES >> 20
            ),
        ));
    }
    let bytes = read_body(&response, &url, &task, length, progress).await?;
    *total += bytes.len() as u64;
    if *total > MAX_CHECKPOINT_BYTES {
        return Err(Error::file(
            &url,
            format!("the checkpoint exceeds {} MiB", MAX_CHECKPOINT_BYTES >> 20),
        ));
    }
    if let (Some(cache), false) = (cache, cached) {
        let copy = Uint8Array::from(bytes.as_slice());
        if let Ok(stored) = Response::new_with_opt_buffer_source(Some(&copy)) {
            let _ = JsFuture::from(cache.put_with_str(&url, &stored)).await;
        }
    }
    Ok(Some(bytes))
}

fn fetch_promise(url: &str) -> Result<js_sys::Promise> {
    let global = js_sys::global();
    if let Some(w) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        return Ok(w.fetch_with_str(url));
    }
    if let Some(w) = global.dyn_ref::<web_sys::Window>() {
        return Ok(w.fetch_with_str(url));
    }
    Err(Error::file(url, "this context cannot fetch"))
}

/// Read a body chunk by chunk, reporting bytes as they arrive.
async fn read_body(
    response: &Response,
    url: &str,
    task: &str,
    length: u64,
    progress: Progress<'_>,
) -> Result<Vec<u8>> {
    let Some(body) = response.body() else {
        return Ok(Vec::new());
    };
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|_| Error::file(url, "cannot read the response"))?;
    let mut out = Vec::with_capacity(length as usize);
    progress(task, 0, length);
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| Error::file(url, format!("download interrupted ({})", js_text(&e))))?;
        let done = Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(|_| Error::file(url, "bad chunk"))?
            .unchecked_into();
        let start = out.len();
        out.resize(start + value.length() as usize, 0);
        value.copy_to(&mut out[start..]);
        if out.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(Error::file(
                url,
                format!("the file exceeds {} MiB", MAX_CHECKPOINT_BYTES >> 20),
            ));
        }
        progress(task, out.len() as u64, length.max(out.len() as u64));
    }
    Ok(out)
}

/// A JS exception as text.
pub fn js_text(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// Store a checkpoint picked from a local folder in the model cache under `base` (a same-origin
/// URL), absent optional files as 404s, so it loads again offline and on the next visit.
pub async fn cache_checkpoint(base: &str, files: &MemoryFiles) -> Result<()> {
    let cache = open_cache().await.ok_or_else(|| {
        Error::invalid("this browser has no Cache API: the model is not kept for offline use")
    })?;
    for (name, bytes) in &files.files {
        let copy = Uint8Array::from(bytes.as_slice());
        let stored = Response::new_with_opt_buffer_source(Some(&copy))
            .map_err(|e| Error::invalid(js_text(&e)))?;
        JsFuture::from(cache.put_with_str(&format!("{base}/{name}"), &stored))
            .await
            .map_err(|e| {
                Error::file(
                    name,
                    format!("cannot keep for offline use: {}", js_text(&e)),
                )
            })?;
    }
    for name in OPTIONAL.iter().chain([&INDEX_FILE]) {
        if !files.files.contains_key(*name) {
            let init = web_sys::ResponseInit::new();
            init.set_status(404);
            if let Ok(missing) = Response::new_with_opt_str_and_init(None, &init) {
                let _ =
                    JsFuture::from(cache.put_with_str(&format!("{base}/{name}"), &missing)).await;
            }
        }
    }
    Ok(())
}
