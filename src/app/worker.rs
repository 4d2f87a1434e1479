//! The engine worker (a dedicated Web Worker, started by `web/worker.js`): owns the backend and
//! the models, serves [`Request`]s one at a time and posts [`Event`]s back.
//!
//! Requests queue up; a new caption cancels the running one (the run checks its cancel flag at
//! every token or round, and both backends yield to the event loop at every read, so the message
//! is seen). A GPU error during a run re-initialises the engine from the files already held.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use js_sys::{Array, ArrayBuffer, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::app::fetch::{cache_small_files, fetch_checkpoint, Check, Download, Plan};
use crate::app::messages::{
    BackendKind, DraftEngineChoice, Event, ModelRole, QuantChoice, Request,
};
use crate::app::packed;
use crate::app::session::{CaptionJob, MemoryBudget, Session};
use crate::app::store::{KeepError, ModelStore};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{DeviceLossHandle, GpuBackend};
use crate::error::{Error, Result};
use crate::files::MemoryFiles;
use crate::weights::BlobFile;

enum Engine {
    // Boxed: a session is a few KiB, and the engine moves in and out of the worker's state.
    Gpu(Box<Session<GpuBackend>>),
    Cpu(Box<Session<CpuBackend>>),
}

impl Engine {
    fn kind(&self) -> BackendKind {
        match self {
            Engine::Gpu(_) => BackendKind::Webgpu,
            Engine::Cpu(_) => BackendKind::Cpu,
        }
    }
}

#[derive(Default)]
struct State {
    engine: RefCell<Option<Engine>>,
    queue: RefCell<VecDeque<(Request, Payload)>>,
    busy: Cell<bool>,
    /// Runs with an id up to this one are cancelled.
    cancelled_up_to: Cell<u64>,
    /// Set by `CancelLoad`: the download or load in progress stops; cleared when the next starts.
    load_cancelled: Cell<bool>,
    /// How plain checkpoints are quantized while loading (the page's setting).
    quantize: Cell<QuantChoice>,
    /// The GPU memory the page may fill with weights (`?gpu_memory_mib=`; `None`: no limit).
    memory_budget_mib: Cell<Option<u64>>,
    /// Where the draft runs beside a WebGPU target (the page's setting).
    draft_engine: Cell<DraftEngineChoice>,
    /// The checkpoint files behind the loaded models, to rebuild the engine (backend switch,
    /// device loss) without downloading again.
    files: RefCell<Vec<(ModelRole, Rc<MemoryFiles>)>>,
    /// The GPU engine's device, reachable while a run holds the engine (`Request::LoseDevice`).
    gpu_loss: RefCell<Option<DeviceLossHandle>>,
}

/// What the CPU engine's weights may take in the browser: wasm32 memory ends at 4 GiB, and the
/// activations, files and the app need some of it.
const CPU_ENGINE_BYTES: u64 = 3 << 30;

thread_local! {
    static STATE: Rc<State> = Rc::default();
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(event: &Event) {
    let _ = scope().post_message(&JsValue::from_str(&event.to_json()));
}

/// Entry point of the worker: listen for requests.
#[wasm_bindgen]
pub fn start_worker() {
    std::panic::set_hook(Box::new(|info| {
        post(&Event::Error {
            run: None,
            message: format!("internal error in the engine worker: {info}"),
        });
    }));
    let on_message =
        Closure::<dyn FnMut(MessageEvent)>::new(|e: MessageEvent| {
            match decode_request(&e.data()) {
                Ok((req, buffers)) => enqueue(req, buffers),
                Err(err) => post(&Event::Error {
                    run: None,
                    message: err.to_string(),
                }),
            }
        });
    scope().set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
}

/// What comes with a request: byte buffers (an image) and browser files (a picked checkpoint).
#[derive(Default)]
struct Payload {
    buffers: Vec<Vec<u8>>,
    files: Vec<web_sys::File>,
}

/// A message is `{json, buffers, files}`: the request and what was sent with it.
fn decode_request(data: &JsValue) -> Result<(Request, Payload)> {
    let json = Reflect::get(data, &"json".into())
        .ok()
        .and_then(|j| j.as_string())
        .ok_or_else(|| Error::invalid("a message without a request"))?;
    let req = Request::from_json(&json)?;
    let mut buffers = Vec::new();
    if let Ok(list) = Reflect::get(data, &"buffers".into()) {
        if let Some(list) = list.dyn_ref::<Array>() {
            for b in list.iter() {
                if let Some(buf) = b.dyn_ref::<ArrayBuffer>() {
                    buffers.push(Uint8Array::new(buf).to_vec());
                }
            }
        }
    }
    let mut files = Vec::new();
    if let Ok(list) = Reflect::get(data, &"files".into()) {
        if let Some(list) = list.dyn_ref::<Array>() {
            files.extend(
                list.iter()
                    .filter_map(|f| f.dyn_into::<web_sys::File>().ok()),
            );
        }
    }
    Ok((req, Payload { buffers, files }))
}

fn enqueue(req: Request, payload: Payload) {
    STATE.with(|s| {
        match &req {
            Request::Cancel { run } => {
                s.cancelled_up_to.set(s.cancelled_up_to.get().max(*run));
                return;
            }
            Request::CancelLoad => {
                s.load_cancelled.set(true);
                return;
            }
            Request::LoseDevice => {
                if let Some(handle) = s.gpu_loss.borrow().as_ref() {
                    handle.lose("destroyed on request");
                }
                return;
            }
            Request::Caption { run, .. } => {
                // A new image supersedes every earlier run, running or queued.
                s.cancelled_up_to
                    .set(s.cancelled_up_to.get().max(run.saturating_sub(1)));
                s.queue
                    .borrow_mut()
                    .retain(|(r, _)| !matches!(r, Request::Caption { .. }));
            }
            _ => {}
        }
        if matches!(req, Request::Init { .. } | Request::LoadModel { .. }) {
            s.load_cancelled.set(false);
        }
        s.queue.borrow_mut().push_back((req, payload));
        if !s.busy.get() {
            s.busy.set(true);
            let s = s.clone();
            wasm_bindgen_futures::spawn_local(async move {
                loop {
                    let job = s.queue.borrow_mut().pop_front();
                    let Some((req, payload)) = job else { break };
                    handle(&s, req, payload).await;
                    post_memory();
                }
                s.busy.set(false);
            });
        }
    });
}

/// The worker's wasm memory in bytes (it only grows, so this is the peak so far).
fn wasm_memory_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory
        .buffer()
        .dyn_into::<ArrayBuffer>()
        .map(|b| b.byte_length() as u64)
        .unwrap_or(0)
}

fn post_memory() {
    post(&Event::EngineMemory {
        wasm_bytes: wasm_memory_bytes(),
    });
}

/// A failed load: "cancelled" reads as a notice-like error, everything else as it is.
fn load_failed(e: Error) {
    let message = match e {
        Error::Cancelled => "loading cancelled: the models already loaded stay; loading the same model again resumes the download".to_string(),
        e => e.to_string(),
    };
    post(&Event::Error { run: None, message });
}

async fn handle(s: &Rc<State>, req: Request, payload: Payload) {
    let buffers = payload.buffers;
    match req {
        Request::Init {
            backend,
            target_url,
            draft_url,
            quantize,
            memory_budget_mib,
        } => {
            s.quantize.set(quantize);
            s.memory_budget_mib.set(memory_budget_mib);
            if let Err(e) = init(s, backend, &target_url, draft_url.as_deref()).await {
                load_failed(e);
            }
        }
        Request::LoadModel {
            role,
            url,
            names,
            quantize,
        } => {
            s.quantize.set(quantize);
            if let Err(e) = load_model(s, role, url.as_deref(), names, payload.files).await {
                load_failed(e);
            }
        }
        Request::SetDraftEngine { choice } => {
            s.draft_engine.set(choice);
            let Some(mut engine) = s.engine.borrow_mut().take() else {
                // The engine places the draft as it starts.
                return;
            };
            place_draft(&mut engine, choice).await;
            *s.engine.borrow_mut() = Some(engine);
            ready(s, None);
        }
        Request::Caption {
            run,
            image_name,
            mode,
            settings,
        } => {
            s.draft_engine.set(settings.draft_engine);
            if s.cancelled_up_to.get() >= run {
                post(&Event::Cancelled { run });
                return;
            }
            let image = buffers.into_iter().next().unwrap_or_default();
            let Some(mut engine) = s.engine.borrow_mut().take() else {
                post(&Event::Error {
                    run: Some(run),
                    message: "the engine is still starting".into(),
                });
                return;
            };
            let state = s.clone();
            let cancelled = move || state.cancelled_up_to.get() >= run;
            let mut emit = |e: Event| post(&e);
            let job = CaptionJob {
                run,
                image_bytes: &image,
                image_name: &image_name,
                mode,
                settings: &settings,
            };
            let out = match &mut engine {
                Engine::Gpu(x) => x.caption(job, &cancelled, &mut emit).await,
                Engine::Cpu(x) => x.caption(job, &cancelled, &mut emit).await,
            };
            let gpu_failure = match &engine {
                Engine::Gpu(x) => x.backend.take_error(),
                Engine::Cpu(_) => None,
            };
            *s.engine.borrow_mut() = Some(engine);
            match out {
                // A GPU failure explains whatever the run reported (a lost device reads back
                // NaN): only the failure is shown, below.
                _ if gpu_failure.is_some() => {}
                Ok(result) => post(&Event::Done { run, mode, result }),
                Err(Error::Cancelled) => post(&Event::Cancelled { run }),
                Err(e) => post(&Event::Error {
                    run: Some(run),
                    message: e.to_string(),
                }),
            }
            if let Some(e) = gpu_failure {
                post(&Event::Error {
                    run: Some(run),
                    message: format!("{e}; the GPU engine is being re-initialised"),
                });
                if let Err(e) = rebuild(s, BackendKind::Webgpu).await {
                    post(&Event::Error {
                        run: None,
                        message: e.to_string(),
                    });
                }
            }
        }
        // Handled as they arrive (`enqueue`), never queued.
        Request::Cancel { .. } | Request::CancelLoad | Request::LoseDevice => {}
    }
}

fn progress(task: &str, done: u64, total: u64) {
    post(&Event::Progress {
        task: task.to_string(),
        done,
        total,
    });
}

/// What the progress bar says while the draft is measured on each engine.
const PLACING: &str = "measuring where the draft runs faster";

/// Put the engine's draft where `choice` says (measured on each engine beside a WebGPU target).
async fn place_draft(engine: &mut Engine, choice: DraftEngineChoice) {
    let placing = match engine {
        Engine::Gpu(x) => x.has_draft(),
        Engine::Cpu(_) => false,
    };
    if placing {
        progress(PLACING, 0, 1);
    }
    match engine {
        Engine::Gpu(x) => x.place_draft(choice).await,
        Engine::Cpu(x) => x.place_draft(choice).await,
    };
    if placing {
        progress(PLACING, 1, 1);
    }
}

/// Open a backend: WebGPU when asked and available, else the CPU engine with a notice.
async fn open_backend(kind: BackendKind) -> (Result<GpuBackend>, Option<String>) {
    if kind == BackendKind::Cpu {
        return (Err(Error::invalid("CPU engine chosen")), None);
    }
    progress("starting the WebGPU engine", 0, 1);
    let has_gpu = Reflect::get(&js_sys::global(), &"navigator".into())
        .ok()
        .and_then(|n| Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|g| !g.is_undefined() && !g.is_null());
    if !has_gpu {
        return (
            Err(Error::invalid("no WebGPU")),
            Some("This browser has no WebGPU: captions run on the CPU engine (slower).".into()),
        );
    }
    match GpuBackend::new().await {
        Ok(b) => {
            progress("starting the WebGPU engine", 1, 1);
            (Ok(b), None)
        }
        Err(e) => (
            Err(Error::invalid("no adapter")),
            Some(format!(
                "WebGPU could not start ({e}): captions run on the CPU engine (slower)."
            )),
        ),
    }
}

/// A fresh engine with the given files loaded (target first).
async fn build_engine(
    kind: BackendKind,
    files: &[(ModelRole, Rc<MemoryFiles>)],
    quantize: QuantChoice,
    budget_mib: Option<u64>,
    draft_engine: DraftEngineChoice,
) -> Result<(Engine, Option<String>)> {
    let (gpu, mut notice) = open_backend(kind).await;
    let mut engine = match gpu {
        Ok(b) => {
            let mut x = Session::new(b);
            x.set_memory_budget(budget_mib.map(|mib| MemoryBudget {
                bytes: mib << 20,
                what: "GPU memory",
            }));
            x.set_cpu_draft_budget(Some(CPU_ENGINE_BYTES));
            Engine::Gpu(Box::new(x))
        }
        Err(_) => {
            let mut x = Session::new(CpuBackend);
            let cap = budget_mib.map_or(CPU_ENGINE_BYTES, |mib| (mib << 20).min(CPU_ENGINE_BYTES));
            x.set_memory_budget(Some(MemoryBudget {
                bytes: cap,
                what: "memory on the CPU engine (a page's wasm memory stops at 4 GiB)",
            }));
            Engine::Cpu(Box::new(x))
        }
    };
    for (role, f) in files {
        let label = format!("uploading the {} model", role_name(*role));
        progress(&label, 0, 1);
        let loaded = match &mut engine {
            Engine::Gpu(x) => x.load_as(*role, f.as_ref(), f.total_bytes(), quantize),
            Engine::Cpu(x) => x.load_as(*role, f.as_ref(), f.total_bytes(), quantize),
        };
        let (_, n) = loaded?;
        if let Engine::Gpu(x) = &engine {
            if let Some(e) = x.backend.take_error() {
                return Err(e);
            }
        }
        progress(&label, 1, 1);
        notice = notice.or(n);
    }
    place_draft(&mut engine, draft_engine).await;
    if let Engine::Gpu(x) = &engine {
        if let Some(e) = x.backend.take_error() {
            return Err(e);
        }
    }
    Ok((engine, notice))
}

/// Make `engine` the worker's engine (and remember how to lose its GPU device).
fn install(s: &State, engine: Engine) {
    *s.gpu_loss.borrow_mut() = match &engine {
        Engine::Gpu(x) => Some(x.backend.loss_handle()),
        Engine::Cpu(_) => None,
    };
    *s.engine.borrow_mut() = Some(engine);
}

fn role_name(role: ModelRole) -> &'static str {
    match role {
        ModelRole::Target => "target",
        ModelRole::Draft => "draft",
    }
}

fn ready(s: &State, notice: Option<String>) {
    let engine = s.engine.borrow();
    if let Some(engine) = engine.as_ref() {
        let (models, device) = match engine {
            Engine::Gpu(x) => {
                let b = &x.backend;
                let kernels = if b.cpu_kernels() {
                    " (kernels for CPU drivers)"
                } else {
                    ""
                };
                let info = b.adapter_info();
                (x.models(), format!("WebGPU: {}{kernels}", info.trim()))
            }
            Engine::Cpu(x) => (x.models(), "CPU engine (wasm)".to_string()),
        };
        post(&Event::Ready {
            backend: engine.kind(),
            notice,
            models,
            engine: device,
        });
    }
}

/// Download (or reopen from the store) the checkpoint at `url` for `role`.
async fn download(
    s: &Rc<State>,
    role: ModelRole,
    url: &str,
) -> Result<(MemoryFiles, Option<String>)> {
    let mut report = |task: &str, done: u64, total: u64| progress(task, done, total);
    let state = s.clone();
    let cancelled = move || state.load_cancelled.get();
    let label = format!("downloading the {}", role_name(role));
    let mut dl = Download {
        label: &label,
        progress: &mut report,
        cancelled: &cancelled,
    };
    let quantize = s.quantize.get();
    // Before any weight is downloaded: does the model fit beside the loaded ones?
    let check = |files: &MemoryFiles| -> Result<()> {
        match s.engine.borrow().as_ref() {
            Some(Engine::Gpu(x)) => x.check_fits(role, files, files.total_bytes(), quantize),
            Some(Engine::Cpu(x)) => x.check_fits(role, files, files.total_bytes(), quantize),
            None => Ok(()),
        }
    };
    // The first load (the engine starts after it) is checked when it loads.
    let has_engine = s.engine.borrow().is_some();
    let plan = Plan {
        quantize,
        check: has_engine.then_some(&check as Check<'_>),
    };
    let fetched = fetch_checkpoint(url, &mut dl, &plan).await?;
    Ok((fetched.files, fetched.notice))
}

async fn init(s: &Rc<State>, kind: BackendKind, target: &str, draft: Option<&str>) -> Result<()> {
    let mut files = s.files.borrow().clone();
    let mut store_notice = None;
    if files.is_empty() {
        let (t, n) = download(s, ModelRole::Target, target).await?;
        files.push((ModelRole::Target, Rc::new(t)));
        store_notice = n;
        if let Some(d) = draft {
            let (d, n) = download(s, ModelRole::Draft, d).await?;
            files.push((ModelRole::Draft, Rc::new(d)));
            store_notice = store_notice.or(n);
        }
    }
    let (engine, notice) = build_engine(
        kind,
        &files,
        s.quantize.get(),
        s.memory_budget_mib.get(),
        s.draft_engine.get(),
    )
    .await?;
    install(s, engine);
    *s.files.borrow_mut() = files;
    ready(s, notice.or(store_notice));
    Ok(())
}

async fn rebuild(s: &Rc<State>, kind: BackendKind) -> Result<()> {
    let files = s.files.borrow().clone();
    let (engine, notice) = build_engine(
        kind,
        &files,
        s.quantize.get(),
        s.memory_budget_mib.get(),
        s.draft_engine.get(),
    )
    .await?;
    install(s, engine);
    ready(s, notice);
    Ok(())
}

async fn load_model(
    s: &Rc<State>,
    role: ModelRole,
    url: Option<&str>,
    names: Vec<String>,
    picked: Vec<web_sys::File>,
) -> Result<()> {
    let (files, store_notice) = match url {
        Some(url) => download(s, role, url).await?,
        None => keep_picked(s, role, &names, picked).await?,
    };
    if s.load_cancelled.get() {
        return Err(Error::Cancelled);
    }
    let files = Rc::new(files);
    let label = format!("uploading the {} model", role_name(role));
    progress(&label, 0, 1);
    let quantize = s.quantize.get();
    let Some(mut engine) = s.engine.borrow_mut().take() else {
        return Err(Error::invalid("the engine is still starting"));
    };
    let loaded = load_into(&mut engine, role, files.as_ref(), quantize).await;
    if loaded.is_ok() {
        // A new draft, or the draft beside a new target: measured again where it may run.
        place_draft(&mut engine, s.draft_engine.get()).await;
    }
    *s.engine.borrow_mut() = Some(engine);
    let (info, notice) = loaded?;
    progress(&label, 1, 1);
    {
        let mut held = s.files.borrow_mut();
        held.retain(|(r, _)| *r != role);
        if role == ModelRole::Target && notice.is_some() {
            held.retain(|(r, _)| *r != ModelRole::Draft);
        }
        held.push((role, files));
        held.sort_by_key(|(r, _)| *r == ModelRole::Draft);
    }
    post(&Event::ModelLoaded { model: info });
    ready(s, notice.or(store_notice));
    Ok(())
}

/// Load `files` into `engine`'s role; nothing changes on any error.
async fn load_into(
    engine: &mut Engine,
    role: ModelRole,
    files: &MemoryFiles,
    quantize: QuantChoice,
) -> Result<(crate::app::messages::ModelInfo, Option<String>)> {
    match engine {
        Engine::Gpu(x) => {
            // An allocation the device refused is reported asynchronously: catch it in an error
            // scope and drop the half-made model, so the loaded ones stay.
            let scope = x.backend.watch_memory();
            let pending = x.prepare(role, files, files.total_bytes(), quantize);
            let refused = scope
                .pop()
                .await
                .map(|e| e.to_string())
                .or_else(|| x.backend.take_error().map(|e| e.to_string()));
            if let Some(e) = refused {
                drop(pending);
                return Err(Error::invalid(format!(
                    "the {} model does not fit this GPU ({e}); the models already loaded stay. Try q4 (Settings: quantize while loading) or a smaller model",
                    role_name(role)
                )));
            }
            x.commit(pending?)
        }
        Engine::Cpu(x) => x.load_as(role, files, files.total_bytes(), quantize),
    }
}

/// A checkpoint picked from a local folder: small files read into memory, weights kept in the
/// store under a same-origin URL (so the page reopens it offline) and read a tensor at a time;
/// read from the picked files themselves when the store refuses.
async fn keep_picked(
    s: &Rc<State>,
    role: ModelRole,
    names: &[String],
    picked: Vec<web_sys::File>,
) -> Result<(MemoryFiles, Option<String>)> {
    let base = local_model_url(role);
    let mut files = MemoryFiles::new(&base);
    let store = ModelStore::open(&base).await;
    let mut notice = None;
    let label = format!("keeping your {} model", role_name(role));
    for (name, file) in names.iter().zip(picked) {
        if !name.ends_with(".safetensors") {
            let bytes = BlobFile::new(file.clone().into());
            let bytes = crate::weights::WeightFile::read(&bytes, 0, file.size() as u64)
                .map_err(|e| Error::file(name, format!("cannot read: {e}")))?;
            files.insert(name, bytes.into_owned());
            continue;
        }
        let task = format!("{label}: {name}");
        let kept = match &store {
            Some(store) => store
                .keep(name, &file, &mut |done, total| progress(&task, done, total))
                .await
                .map_err(|e| e.0),
            None => Err("this browser has no origin-private file system".to_string()),
        };
        let blob: web_sys::Blob = match kept {
            Ok(copy) => copy.into(),
            Err(why) => {
                notice = Some(format!(
                    "your {} model is not kept for offline use ({why})",
                    role_name(role)
                ));
                file.into()
            }
        };
        files.insert_file(name, std::sync::Arc::new(BlobFile::new(blob)));
    }
    if let Err(e) = cache_small_files(&base, &files).await {
        notice = notice.or(Some(e.to_string()));
    }
    // Keep what quantizing while loading makes, as for a download (see `packed`).
    let format = s.quantize.get().format(files.total_bytes());
    if let (Some(store), None, Some(format)) = (&store, &notice, format) {
        let shards: Vec<String> = names
            .iter()
            .filter(|n| n.ends_with(".safetensors"))
            .cloned()
            .collect();
        let mut report = |task: &str, done: u64, total: u64| progress(task, done, total);
        let state = s.clone();
        let cancelled = move || state.load_cancelled.get();
        let mut dl = Download {
            label: &label,
            progress: &mut report,
            cancelled: &cancelled,
        };
        match packed::keep(store, &files, &shards, format, &mut dl).await {
            Ok(Some(kept)) => return Ok((kept, None)),
            Ok(None) => {}
            Err(KeepError::Store(why)) => {
                notice = Some(format!(
                    "the {} weights are not kept for offline use ({}); your original files are",
                    format.name(),
                    why.0
                ))
            }
            Err(KeepError::Fail(e)) => return Err(e),
        }
    }
    Ok((files, notice))
}

/// Where a checkpoint picked from a folder is kept: `<app>/web/local-models/<role>` (never on the
/// server; only in this browser's model cache).
fn local_model_url(role: ModelRole) -> String {
    let origin = Reflect::get(&js_sys::global(), &"location".into())
        .ok()
        .and_then(|l| Reflect::get(&l, &"href".into()).ok())
        .and_then(|h| h.as_string())
        .unwrap_or_default();
    // The worker script lives in web/: its URL's directory is the app's web/ folder.
    let dir = origin.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    format!("{dir}/local-models/{}", role_name(role))
}
