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

use crate::app::fetch::{cache_checkpoint, fetch_checkpoint, MAX_CHECKPOINT_BYTES};
use crate::app::messages::{BackendKind, Event, ModelRole, Request};
use crate::app::session::{CaptionJob, Session};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{DeviceLossHandle, GpuBackend};
use crate::error::{Error, Result};
use crate::files::MemoryFiles;

enum Engine {
    Gpu(Session<GpuBackend>),
    Cpu(Session<CpuBackend>),
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
    queue: RefCell<VecDeque<(Request, Vec<Vec<u8>>)>>,
    busy: Cell<bool>,
    /// Runs with an id up to this one are cancelled.
    cancelled_up_to: Cell<u64>,
    /// The checkpoint files behind the loaded models, to rebuild the engine (backend switch,
    /// device loss) without downloading again.
    files: RefCell<Vec<(ModelRole, Rc<MemoryFiles>)>>,
    /// The GPU engine's device, reachable while a run holds the engine (`Request::LoseDevice`).
    gpu_loss: RefCell<Option<DeviceLossHandle>>,
}

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

/// A message is `{json, buffers}`: the request and the bytes transferred with it.
fn decode_request(data: &JsValue) -> Result<(Request, Vec<Vec<u8>>)> {
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
    Ok((req, buffers))
}

fn enqueue(req: Request, buffers: Vec<Vec<u8>>) {
    STATE.with(|s| {
        match &req {
            Request::Cancel { run } => {
                s.cancelled_up_to.set(s.cancelled_up_to.get().max(*run));
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
        s.queue.borrow_mut().push_back((req, buffers));
        if !s.busy.get() {
            s.busy.set(true);
            let s = s.clone();
            wasm_bindgen_futures::spawn_local(async move {
                loop {
                    let job = s.queue.borrow_mut().pop_front();
                    let Some((req, buffers)) = job else { break };
                    handle(&s, req, buffers).await;
                }
                s.busy.set(false);
            });
        }
    });
}

async fn handle(s: &Rc<State>, req: Request, buffers: Vec<Vec<u8>>) {
    match req {
        Request::Init {
            backend,
            target_url,
            draft_url,
        } => {
            if let Err(e) = init(s, backend, &target_url, draft_url.as_deref()).await {
                post(&Event::Error {
                    run: None,
                    message: e.to_string(),
                });
            }
        }
        Request::LoadModel { role, url, names } => {
            if let Err(e) = load_model(s, role, url.as_deref(), names, buffers).await {
                post(&Event::Error {
                    run: None,
                    message: e.to_string(),
                });
            }
        }
        Request::Caption {
            run,
            image_name,
            mode,
            settings,
        } => {
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
        Request::Cancel { .. } | Request::LoseDevice => {}
    }
}

fn progress(task: &str, done: u64, total: u64) {
    post(&Event::Progress {
        task: task.to_string(),
        done,
        total,
    });
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
) -> Result<(Engine, Option<String>)> {
    let (gpu, mut notice) = open_backend(kind).await;
    let mut engine = match gpu {
        Ok(b) => Engine::Gpu(Session::new(b)),
        Err(_) => Engine::Cpu(Session::new(CpuBackend)),
    };
    for (role, f) in files {
        let label = format!("uploading the {} model", role_name(*role));
        progress(&label, 0, 1);
        let loaded = match &mut engine {
            Engine::Gpu(x) => x.load(*role, f.as_ref(), f.total_bytes()),
            Engine::Cpu(x) => x.load(*role, f.as_ref(), f.total_bytes()),
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
        let models = match engine {
            Engine::Gpu(x) => x.models(),
            Engine::Cpu(x) => x.models(),
        };
        post(&Event::Ready {
            backend: engine.kind(),
            notice,
            models,
        });
    }
}

async fn init(s: &Rc<State>, kind: BackendKind, target: &str, draft: Option<&str>) -> Result<()> {
    let mut files = s.files.borrow().clone();
    if files.is_empty() {
        let mut report = |task: &str, done: u64, total: u64| progress(task, done, total);
        let t = fetch_checkpoint(target, "downloading the target", &mut report).await?;
        files.push((ModelRole::Target, Rc::new(t)));
        if let Some(d) = draft {
            let d = fetch_checkpoint(d, "downloading the draft", &mut report).await?;
            files.push((ModelRole::Draft, Rc::new(d)));
        }
    }
    let (engine, notice) = build_engine(kind, &files).await?;
    install(s, engine);
    *s.files.borrow_mut() = files;
    ready(s, notice);
    Ok(())
}

async fn rebuild(s: &Rc<State>, kind: BackendKind) -> Result<()> {
    let files = s.files.borrow().clone();
    let (engine, notice) = build_engine(kind, &files).await?;
    install(s, engine);
    ready(s, notice);
    Ok(())
}

async fn load_model(
    s: &Rc<State>,
    role: ModelRole,
    url: Option<&str>,
    names: Vec<String>,
    buffers: Vec<Vec<u8>>,
) -> Result<()> {
    let mut cache_note = None;
    let files = match url {
        Some(url) => {
            let mut report = |task: &str, done: u64, total: u64| progress(task, done, total);
            let label = format!("downloading the {}", role_name(role));
            fetch_checkpoint(url, &label, &mut report).await?
        }
        None => {
            // Kept in the model cache under a same-origin URL, so the page can reopen it offline.
            let base = local_model_url(role);
            let mut f = MemoryFiles::new(&base);
            for (name, bytes) in names.iter().zip(buffers) {
                f.insert(name, bytes);
            }
            if f.total_bytes() > MAX_CHECKPOINT_BYTES {
                return Err(Error::invalid(format!(
                    "the {} checkpoint is {} MiB, more than this browser can hold ({} MiB); quantize it first (spec-llava quantize --format q4)",
                    role_name(role),
                    f.total_bytes() >> 20,
                    MAX_CHECKPOINT_BYTES >> 20
                )));
            }
            if let Err(e) = cache_checkpoint(&base, &f).await {
                cache_note = Some(e.to_string());
            }
            f
        }
    };
    let files = Rc::new(files);
    let label = format!("uploading the {} model", role_name(role));
    progress(&label, 0, 1);
    let mut guard = s.engine.borrow_mut();
    let engine = guard
        .as_mut()
        .ok_or_else(|| Error::invalid("the engine is still starting"))?;
    let (info, notice) = match engine {
        Engine::Gpu(x) => x.load(role, files.as_ref(), files.total_bytes())?,
        Engine::Cpu(x) => x.load(role, files.as_ref(), files.total_bytes())?,
    };
    drop(guard);
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
    ready(s, notice.or(cache_note));
    Ok(())
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
