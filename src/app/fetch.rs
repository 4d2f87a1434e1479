//! Download a checkpoint (worker side) with byte progress, resumable and cancellable, and keep it
//! for offline use.
//!
//! Which files: the ones `Checkpoint::from_files` reads — required `config.json`,
//! `tokenizer.json` and the weights (`model.safetensors`, or the shards named by
//! `model.safetensors.index.json`); optional tokenizer/chat-template/processor/generation configs.
//!
//! Two stores, by size. The small files go through the Cache API (an absent optional file is
//! remembered as a 404 so offline loads see the same file set). The weights never pass through
//! the wasm heap whole: each shard is streamed chunk by chunk into the origin-private file system
//! (`store`), resumed with an HTTP range request after a dropped connection or an earlier cancel,
//! and then read one tensor at a time (`weights::BlobFile`). Where that storage is missing or full,
//! the shard is read straight from the network with range requests instead (`RangeFile`): the
//! model still loads, it is just not kept, and the caller is told so.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Response};

use crate::app::messages::QuantChoice;
use crate::app::packed;
use crate::app::range_file::RangeFile;
use crate::app::store::{KeepError, ModelStore, StoreError};
use crate::error::{Error, Result};
use crate::files::{MemoryFiles, INDEX_FILE, WEIGHTS_FILE};
use crate::weights::{read_header, shard_names, BlobFile, FileBytes};

/// Cache API bucket for the small model files (the service worker serves from it too).
pub const MODEL_CACHE: &str = "spec-llava-models-v1";

/// The largest small file (configs, tokenizer) accepted: a bigger one is not a config.
const MAX_SMALL_FILE: u64 = 256 << 20;

/// Attempts at one shard before a dropped connection is reported (each resumes where the last
/// one stopped).
const MAX_ATTEMPTS: u32 = 6;

const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
pub const OPTIONAL: &[&str] = &[
    "preprocessor_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "generation_config.json",
];

/// Progress callback: (task, bytes done, bytes total or 0 when unknown).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// How one download reports and stops.
pub struct Download<'a> {
    /// "downloading the target", for progress rows.
    pub label: &'a str,
    pub progress: Progress<'a>,
    /// Checked between chunks: true stops the download (`Error::Cancelled`); what arrived is kept
    /// and the next load resumes from there.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// A checkpoint ready to load, and a notice when its weights could not be kept offline.
pub struct Fetched {
    pub files: MemoryFiles,
    pub notice: Option<String>,
}

/// A check of a checkpoint before its weights are downloaded ([`Plan::check`]).
pub type Check<'a> = &'a dyn Fn(&MemoryFiles) -> Result<()>;

/// What a fetch does besides downloading.
pub struct Plan<'a> {
    /// How a plain checkpoint is quantized while loading: a kept copy in that format is used
    /// instead of the originals, and one is made when missing (`packed`).
    pub quantize: QuantChoice,
    /// Run on the checkpoint with its configs read and its weights' safetensors headers read
    /// (from the network with range requests), before any weight is downloaded: an error stops
    /// the fetch (e.g. a model that does not fit the device). `None`: no check.
    pub check: Option<Check<'a>>,
}

/// Fetch every file of the checkpoint at `base`.
pub async fn fetch_checkpoint(
    base: &str,
    dl: &mut Download<'_>,
    plan: &Plan<'_>,
) -> Result<Fetched> {
    let base = base.trim_end_matches('/');
    let cache = open_cache().await;
    let mut files = MemoryFiles::new(base);
    for name in REQUIRED {
        let bytes = get_small(&cache, base, name, false, dl).await?;
        files.insert(name, bytes.unwrap_or_default());
    }
    for name in OPTIONAL {
        if let Some(bytes) = get_small(&cache, base, name, true, dl).await? {
            files.insert(name, bytes);
        }
    }
    let store = ModelStore::open(base).await;
    if let Some(store) = &store {
        if let Some(kept) = packed::reopen(store, &files, plan.quantize).await {
            if let Some(check) = plan.check {
                check(&kept)?;
            }
            return Ok(Fetched {
                files: kept,
                notice: None,
            });
        }
    }
    let shards = match get_small(&cache, base, INDEX_FILE, true, dl).await? {
        Some(index) => {
            let text = String::from_utf8(index.clone())
                .map_err(|_| Error::file(format!("{base}/{INDEX_FILE}"), "not UTF-8 text"))?;
            let names = shard_names(&text, &format!("{base}/{INDEX_FILE}"))?;
            files.insert(INDEX_FILE, index);
            names
        }
        None => vec![WEIGHTS_FILE.to_string()],
    };
    if let Some(check) = plan.check {
        check_headers(&files, store.as_ref(), base, &shards, check).await?;
    }
    let mut notice = store
        .is_none()
        .then(|| "the weights are not kept for offline use (this browser's origin-private file system is unavailable or full): they are read from the network each time".to_string());
    for name in &shards {
        let url = format!("{base}/{name}");
        let (file, note) = get_weights(store.as_ref(), &url, name, dl).await?;
        files.insert_file(name, file);
        notice = notice.or(note);
    }
    // Keep what quantizing while loading makes, when the originals were kept.
    if let (Some(store), None, Some(format)) =
        (&store, &notice, plan.quantize.format(files.total_bytes()))
    {
        match packed::keep(store, &files, &shards, format, dl).await {
            Ok(Some(kept)) => {
                return Ok(Fetched {
                    files: kept,
                    notice: None,
                })
            }
            Ok(None) => {}
            Err(KeepError::Store(StoreError(why))) => {
                notice = Some(format!(
                    "the {} weights are not kept for offline use ({why}); the originals are, and are quantized again at each load",
                    format.name()
                ));
            }
            Err(KeepError::Fail(e)) => return Err(e),
        }
    }
    Ok(Fetched { files, notice })
}

/// Run `check` on the checkpoint with its weights' headers: kept shards from the store, the
/// others read from the network with range requests (a few requests per shard).
async fn check_headers(
    small: &MemoryFiles,
    store: Option<&ModelStore>,
    base: &str,
    shards: &[String],
    check: Check<'_>,
) -> Result<()> {
    let mut preview = MemoryFiles::new(base);
    for (name, file) in &small.files {
        preview.insert_file(name, file.clone());
    }
    for name in shards {
        let kept = match store {
            Some(store) => store.complete(name).await,
            None => None,
        };
        let file: FileBytes = match kept {
            Some(file) => std::sync::Arc::new(BlobFile::new(file.into())),
            None => std::sync::Arc::new(RangeFile::open(&format!("{base}/{name}"))?),
        };
        preview.insert_file(name, file);
    }
    check(&preview)
}

/// One weights file: from the store when complete there, else downloaded into it (resuming a
/// partial copy); read from the network when the store is missing or full.
async fn get_weights(
    store: Option<&ModelStore>,
    url: &str,
    name: &str,
    dl: &mut Download<'_>,
) -> Result<(FileBytes, Option<String>)> {
    let Some(store) = store else {
        return Ok((std::sync::Arc::new(RangeFile::open(url)?), None));
    };
    if let Some(file) = store.complete(name).await {
        return Ok((std::sync::Arc::new(BlobFile::new(file.into())), None));
    }
    match download_into(store, url, name, dl).await {
        Ok(file) => Ok((std::sync::Arc::new(BlobFile::new(file.into())), None)),
        Err(KeepError::Store(StoreError(why))) => {
            let _ = store.remove(name).await;
            let notice = format!(
                "{name} is not kept for offline use ({why}); it is read from the network instead"
            );
            Ok((std::sync::Arc::new(RangeFile::open(url)?), Some(notice)))
        }
        Err(KeepError::Fail(e)) => Err(e),
    }
}

/// Stream `url` into the store's file `name`, resuming from what it holds; the finished file.
async fn download_into(
    store: &ModelStore,
    url: &str,
    name: &str,
    dl: &mut Download<'_>,
) -> std::result::Result<web_sys::File, KeepError> {
    let task = format!("{}: {name}", dl.label);
    let mut writer = store.writer(name).await?;
    let mut failures = Vec::new();
    loop {
        let have = writer.len()?;
        let response = fetch_from(url, have).await;
        let outcome = match response {
            Ok(r) => receive(r, &mut writer, url, &task, dl).await,
            Err(e) => Err(Received::Dropped(e)),
        };
        match outcome {
            Ok(()) => break,
            Err(Received::Dropped(why)) => {
                failures.push(why);
                if failures.len() as u32 >= MAX_ATTEMPTS {
                    writer.close();
                    return Err(Error::file(
                        url,
                        format!(
                            "the download broke off {} times ({}); load again to resume from {} MiB",
                            failures.len(),
                            failures.last().cloned().unwrap_or_default(),
                            store.partial_len(name).await >> 20
                        ),
                    )
                    .into());
                }
            }
            Err(Received::Store(e)) => {
                writer.close();
                return Err(e.into());
            }
            Err(Received::Fail(e)) => {
                writer.close();
                return Err(e.into());
            }
        }
    }
    writer.close();
    // A file that arrived whole but is not safetensors must not be kept as a good copy (the next
    // load would reuse it instead of downloading a fixed one).
    let file = store.unfinished(name).await?;
    if let Err(e) = read_header(&BlobFile::new(file.into())) {
        let _ = store.remove(name).await;
        return Err(Error::file(url, format!("not a valid safetensors file: {e}")).into());
    }
    Ok(store.finish(name).await?)
}

/// How receiving one response ended, when it did not finish the file.
enum Received {
    /// The connection dropped or the server sent less: try again from where it stopped.
    Dropped(String),
    Store(StoreError),
    Fail(Error),
}

/// A GET of `url`, from byte `from` on when `from > 0`.
async fn fetch_from(url: &str, from: u64) -> std::result::Result<Response, String> {
    let init = web_sys::RequestInit::new();
    if from > 0 {
        let headers = web_sys::Headers::new().map_err(|e| js_text(&e))?;
        headers
            .set("Range", &format!("bytes={from}-"))
            .map_err(|e| js_text(&e))?;
        init.set_headers(&headers);
    }
    let request = web_sys::Request::new_with_str_and_init(url, &init).map_err(|e| js_text(&e))?;
    let promise = fetch_promise(&request).map_err(|e| e.to_string())?;
    let r = JsFuture::from(promise)
        .await
        .map_err(|e| format!("cannot download ({}); are you offline?", js_text(&e)))?;
    r.dyn_into::<Response>()
        .map_err(|_| "not a response".to_string())
}

/// Write one response's body into the store file; `Ok` when the file is complete.
async fn receive(
    response: Response,
    writer: &mut crate::app::store::Writer,
    url: &str,
    task: &str,
    dl: &mut Download<'_>,
) -> std::result::Result<(), Received> {
    let have = writer.len().map_err(Received::Store)?;
    let status = response.status();
    let header = |name: &str| response.headers().get(name).ok().flatten();
    let total = match status {
        206 => {
            // `bytes A-B/TOTAL`: the part must start where the file stops.
            let range = header("content-range").unwrap_or_default();
            let (start, total) = parse_content_range(&range).ok_or_else(|| {
                Received::Fail(Error::file(url, format!("bad Content-Range \"{range}\"")))
            })?;
            if start != have {
                writer.truncate(0).map_err(Received::Store)?;
                return Err(Received::Dropped(format!(
                    "the server resumed at byte {start}, not {have}"
                )));
            }
            total
        }
        200 => {
            // A server (or cache) that ignores ranges sends the whole file: start over.
            if have > 0 {
                writer.truncate(0).map_err(Received::Store)?;
            }
            header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }
        // Nothing left to send: the file was complete.
        416 if have > 0 => return Ok(()),
        _ => {
            return Err(Received::Fail(Error::file(
                url,
                format!("HTTP {status} {}", response.status_text()),
            )))
        }
    };
    let Some(body) = response.body() else {
        return Err(Received::Dropped("an empty response".into()));
    };
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|_| Received::Fail(Error::file(url, "cannot read the response")))?;
    let mut done = writer.len().map_err(Received::Store)?;
    (dl.progress)(task, done, total);
    loop {
        if (dl.cancelled)() {
            let _ = JsFuture::from(reader.cancel()).await;
            return Err(Received::Fail(Error::Cancelled));
        }
        let Some(value) = next_chunk(&reader).await.map_err(Received::Dropped)? else {
            break;
        };
        writer.append(&value.to_vec()).map_err(Received::Store)?;
        done += value.length() as u64;
        (dl.progress)(task, done, total.max(done));
    }
    if total > 0 && done < total {
        return Err(Received::Dropped(format!(
            "the connection closed at byte {done} of {total}"
        )));
    }
    // A store that took writes it did not keep (seen in private windows near their quota) must not
    // pass for a complete copy.
    let kept = writer.len().map_err(Received::Store)?;
    if kept != done {
        return Err(Received::Store(StoreError(format!(
            "the browser kept {kept} of {done} bytes written"
        ))));
    }
    Ok(())
}

/// The next chunk of a response body (`None` at its end), or why the stream broke.
async fn next_chunk(
    reader: &web_sys::ReadableStreamDefaultReader,
) -> std::result::Result<Option<Uint8Array>, String> {
    let chunk = JsFuture::from(reader.read())
        .await
        .map_err(|e| format!("download interrupted ({})", js_text(&e)))?;
    let finished = Reflect::get(&chunk, &"done".into())
        .ok()
        .and_then(|d| d.as_bool())
        .unwrap_or(true);
    if finished {
        return Ok(None);
    }
    let value = Reflect::get(&chunk, &"value".into()).map_err(|_| "bad chunk".to_string())?;
    Ok(Some(value.unchecked_into()))
}

/// `bytes A-B/TOTAL` -> (A, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
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

/// One small file: from the cache when there, else from the network (then cached). `Ok(None)` for
/// an optional file that does not exist.
async fn get_small(
    cache: &Option<Cache>,
    base: &str,
    name: &str,
    optional: bool,
    dl: &mut Download<'_>,
) -> Result<Option<Vec<u8>>> {
    if (dl.cancelled)() {
        return Err(Error::Cancelled);
    }
    let url = format!("{base}/{name}");
    let task = format!("{}: {name}", dl.label);
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
            let request =
                web_sys::Request::new_with_str(&url).map_err(|e| Error::file(&url, js_text(&e)))?;
            let r = JsFuture::from(fetch_promise(&request)?)
                .await
                .map_err(|e| {
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
            put_missing(cache, &url).await;
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
    if length > MAX_SMALL_FILE {
        return Err(Error::file(
            &url,
            format!("{} MiB: too large for this kind of file", length >> 20),
        ));
    }
    let bytes = read_body(&response, &url, &task, length, dl.progress).await?;
    if let (Some(cache), false) = (cache, cached) {
        let copy = Uint8Array::from(bytes.as_slice());
        if let Ok(stored) = Response::new_with_opt_buffer_source(Some(&copy)) {
            let _ = JsFuture::from(cache.put_with_str(&url, &stored)).await;
        }
    }
    Ok(Some(bytes))
}

async fn put_missing(cache: &Cache, url: &str) {
    let init = web_sys::ResponseInit::new();
    init.set_status(404);
    if let Ok(missing) = Response::new_with_opt_str_and_init(None, &init) {
        let _ = JsFuture::from(cache.put_with_str(url, &missing)).await;
    }
}

fn fetch_promise(request: &web_sys::Request) -> Result<js_sys::Promise> {
    let global = js_sys::global();
    if let Some(w) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        return Ok(w.fetch_with_request(request));
    }
    if let Some(w) = global.dyn_ref::<web_sys::Window>() {
        return Ok(w.fetch_with_request(request));
    }
    Err(Error::file(request.url(), "this context cannot fetch"))
}

/// Read a small body chunk by chunk, reporting bytes as they arrive.
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
        let Some(value) = next_chunk(&reader).await.map_err(|e| Error::file(url, e))? else {
            break;
        };
        let start = out.len();
        out.resize(start + value.length() as usize, 0);
        value.copy_to(&mut out[start..]);
        if out.len() as u64 > MAX_SMALL_FILE {
            return Err(Error::file(url, "too large for this kind of file"));
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

/// Keep the small files of a checkpoint picked from a local folder in the model cache under
/// `base` (a same-origin URL), absent optional files as 404s, so it loads again offline and on the
/// next visit (its weights go to the store: `store::keep_picked`).
pub async fn cache_small_files(base: &str, files: &MemoryFiles) -> Result<()> {
    let cache = open_cache().await.ok_or_else(|| {
        Error::invalid("this browser has no Cache API: the model is not kept for offline use")
    })?;
    for (name, file) in &files.files {
        if name.ends_with(".safetensors") {
            continue;
        }
        let bytes = file.read(0, file.len()).map_err(|e| Error::file(name, e))?;
        let copy = Uint8Array::from(bytes.as_ref());
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
            put_missing(&cache, &format!("{base}/{name}")).await;
        }
    }
    Ok(())
}
