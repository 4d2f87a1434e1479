//! The page (leptos, client-side rendering): progress while the engine starts → drop zone →
//! preview → caption streaming → tree view and stats. Everything it knows arrives as
//! [`Event`]s from the worker; everything it asks goes out as [`Request`]s (`bridge`).
//!
//! Test hooks (`data-testid`): drop-input, caption, status, error, tree (nodes carry
//! `data-status`; see `tree_view` for the rest), round-scrubber, round-strip, follow-latest,
//! show-pruned, compare (+ compare-result, plain-caption).

mod drop_zone;
mod settings;
mod stats;
mod tree_view;

use drop_zone::DropZone;
use settings::SettingsPanel;
use stats::Stats;
use tree_view::TreeView;

use std::cell::{Cell, RefCell};

use leptos::prelude::*;
use wasm_bindgen::prelude::*;

use crate::app::bridge;
use crate::app::messages::{BackendKind, Event, ModelInfo, Request, RunMode, RunResult, Settings};
use crate::speculative::events::RoundEvent;

/// What the status hook reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Loading,
    Ready,
    Generating,
    Done,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Loading => "loading",
            Status::Ready => "ready",
            Status::Generating => "generating",
            Status::Done => "done",
            Status::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgressRow {
    pub task: String,
    pub done: u64,
    pub total: u64,
}

/// All reactive state of the page.
#[derive(Clone, Copy)]
pub struct AppState {
    pub status: RwSignal<Status>,
    pub progress: RwSignal<Vec<ProgressRow>>,
    pub error: RwSignal<Option<String>>,
    /// About the current image (e.g. a photograph given to the demo models); cleared per image.
    pub input_notice: RwSignal<Option<String>>,
    pub notice: RwSignal<Option<String>>,
    pub backend: RwSignal<Option<BackendKind>>,
    pub models: RwSignal<Vec<ModelInfo>>,
    pub preview: RwSignal<Option<String>>,
    pub caption: RwSignal<String>,
    pub rounds: RwSignal<Vec<RoundEvent>>,
    /// Round shown by the tree view (index); `None` follows the latest.
    pub shown: RwSignal<Option<usize>>,
    /// What the tree view's details line says (the hovered or focused node or badge).
    pub hovered: RwSignal<Option<String>>,
    /// The caption before the latest round's words (those fly in), and when they start to.
    pub caption_before: RwSignal<String>,
    pub fly_at_ms: RwSignal<u32>,
    pub result: RwSignal<Option<RunResult>>,
    pub plain: RwSignal<Option<RunResult>>,
    pub plain_text: RwSignal<String>,
    pub settings: RwSignal<Settings>,
    pub backend_choice: RwSignal<BackendKind>,
    /// The speculative run being shown, and the plain run of "compare".
    pub run: RwSignal<u64>,
    pub compare_run: RwSignal<u64>,
    pub has_image: RwSignal<bool>,
    /// The engine worker's wasm memory (bytes), as it last reported.
    pub engine_memory: RwSignal<Option<u64>>,
    /// What the engine runs on ("WebGPU: ...", "CPU engine").
    pub engine_device: RwSignal<String>,
}

thread_local! {
    static NEXT_RUN: Cell<u64> = const { Cell::new(0) };
    /// The last image (name, bytes), for "compare".
    static LAST_IMAGE: RefCell<Option<(String, Vec<u8>)>> = const { RefCell::new(None) };
}

fn next_run() -> u64 {
    NEXT_RUN.with(|n| {
        n.set(n.get() + 1);
        n.get()
    })
}

/// localStorage keys remembering the user's own models.
const STORED_TARGET: &str = "spec-llava.model.target";
const STORED_DRAFT: &str = "spec-llava.model.draft";

fn absolute(url: &str) -> String {
    let base = window().location().href().unwrap_or_default();
    web_sys::Url::new_with_base(url, &base)
        .map(|u| u.href())
        .unwrap_or_else(|_| url.to_string())
}

/// The hub model ids resolve on: the page's `?hub=URL`, else huggingface.co.
pub fn hub() -> String {
    query("hub")
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| crate::app::hub::DEFAULT_HUB.to_string())
}

/// A parameter of the page's query string.
fn query(name: &str) -> Option<String> {
    window()
        .location()
        .search()
        .ok()
        .and_then(|q| web_sys::UrlSearchParams::new_with_str(&q).ok())
        .and_then(|p| p.get(name))
}

/// A model field's text as a base URL: a hub id resolved on [`hub`], a URL or path made absolute.
pub fn model_url(input: &str) -> Option<String> {
    use crate::app::hub::ModelRef;
    match ModelRef::parse(input)? {
        r @ ModelRef::Hub { .. } => Some(r.base_url(&hub())),
        ModelRef::Url(u) => Some(absolute(&u)),
    }
}

fn storage() -> Option<web_sys::Storage> {
    window().local_storage().ok().flatten()
}

/// The models to open: the user's remembered ones, else the bundled demo pair.
fn model_urls() -> (String, Option<String>) {
    let stored = |k: &str| storage().and_then(|s| s.get_item(k).ok().flatten());
    match stored(STORED_TARGET) {
        Some(t) => (t, stored(STORED_DRAFT)),
        None => demo_urls(),
    }
}

fn demo_urls() -> (String, Option<String>) {
    (
        absolute("web/models/demo/target"),
        Some(absolute("web/models/demo/draft")),
    )
}

impl AppState {
    fn new() -> Self {
        AppState {
            status: RwSignal::new(Status::Loading),
            progress: RwSignal::new(Vec::new()),
            error: RwSignal::new(None),
            notice: RwSignal::new(None),
            input_notice: RwSignal::new(None),
            backend: RwSignal::new(None),
            models: RwSignal::new(Vec::new()),
            preview: RwSignal::new(None),
            caption: RwSignal::new(String::new()),
            rounds: RwSignal::new(Vec::new()),
            shown: RwSignal::new(None),
            hovered: RwSignal::new(None),
            caption_before: RwSignal::new(String::new()),
            fly_at_ms: RwSignal::new(0),
            result: RwSignal::new(None),
            plain: RwSignal::new(None),
            plain_text: RwSignal::new(String::new()),
            settings: RwSignal::new(Settings::default()),
            backend_choice: RwSignal::new(BackendKind::Webgpu),
            run: RwSignal::new(0),
            compare_run: RwSignal::new(0),
            has_image: RwSignal::new(false),
            engine_memory: RwSignal::new(None),
            engine_device: RwSignal::new(String::new()),
        }
    }

    /// (Re)open the engine on the chosen backend.
    pub fn init_engine(self) {
        let (target_url, draft_url) = model_urls();
        self.status.set(Status::Loading);
        bridge::send(
            &Request::Init {
                backend: self.backend_choice.get_untracked(),
                target_url,
                draft_url,
                quantize: self.settings.with_untracked(|s| s.quantize),
                memory_budget_mib: query("gpu_memory_mib").and_then(|v| v.trim().parse().ok()),
            },
            Vec::new(),
        );
    }

    /// Caption an image (a new one cancels the running caption).
    pub fn submit_image(self, name: String, bytes: Vec<u8>) {
        let blob_url = drop_zone::object_url(&bytes);
        if let Some(old) = self.preview.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old);
        }
        self.preview.set(blob_url);
        LAST_IMAGE.with(|l| *l.borrow_mut() = Some((name.clone(), bytes.clone())));
        self.has_image.set(true);
        let run = next_run();
        self.run.set(run);
        self.compare_run.set(0);
        self.caption.set(String::new());
        self.caption_before.set(String::new());
        self.rounds.set(Vec::new());
        self.shown.set(None);
        self.hovered.set(None);
        self.result.set(None);
        self.plain.set(None);
        self.plain_text.set(String::new());
        self.error.set(None);
        self.input_notice.set(None);
        self.status.set(Status::Generating);
        bridge::send(
            &Request::Caption {
                run,
                image_name: name,
                mode: RunMode::Speculative,
                settings: self.settings.get_untracked(),
            },
            vec![bytes],
        );
    }

    /// Run plain decoding on the last image, to compare with the speculative caption.
    pub fn compare(self) {
        let Some((name, bytes)) = LAST_IMAGE.with(|l| l.borrow().clone()) else {
            return;
        };
        let run = next_run();
        self.compare_run.set(run);
        self.plain.set(None);
        self.plain_text.set(String::new());
        self.status.set(Status::Generating);
        bridge::send(
            &Request::Caption {
                run,
                image_name: name,
                mode: RunMode::Plain,
                settings: self.settings.get_untracked(),
            },
            vec![bytes],
        );
    }

    pub fn fail(self, message: String) {
        self.error.set(Some(message));
        self.status.set(Status::Error);
    }

    fn on_event(self, event: Event) {
        match event {
            Event::Progress { task, done, total } => {
                self.progress
                    .update(|rows| match rows.iter_mut().find(|r| r.task == task) {
                        Some(r) => {
                            r.done = done;
                            r.total = total;
                        }
                        None => rows.push(ProgressRow { task, done, total }),
                    })
            }
            Event::Ready {
                backend,
                notice,
                models,
                engine,
            } => {
                self.backend.set(Some(backend));
                self.engine_device.set(engine);
                self.backend_choice.set(backend);
                if notice.is_some() {
                    self.notice.set(notice);
                }
                self.models.set(models);
                self.progress.set(Vec::new());
                if matches!(self.status.get_untracked(), Status::Loading) {
                    self.status.set(Status::Ready);
                }
            }
            Event::ModelLoaded { model } => {
                // An earlier failed load's error no longer describes the page.
                if matches!(self.status.get_untracked(), Status::Error) {
                    self.error.set(None);
                    self.status.set(Status::Ready);
                }
                if let Some(s) = storage() {
                    let key = match model.role {
                        crate::app::messages::ModelRole::Target => STORED_TARGET,
                        crate::app::messages::ModelRole::Draft => STORED_DRAFT,
                    };
                    if model.source.contains("://") {
                        let _ = s.set_item(key, &model.source);
                    }
                }
            }
            Event::Models { models } => self.models.set(models),
            Event::EngineMemory { wasm_bytes } => self.engine_memory.set(Some(wasm_bytes)),
            Event::Started { .. } | Event::Cancelled { .. } => {}
            Event::InputNotice { run, message } => {
                if run == self.run.get_untracked() {
                    self.input_notice.set(Some(message));
                }
            }
            Event::Text { run, text } => {
                if run == self.run.get_untracked() {
                    self.caption_before.set(text.clone());
                    self.caption.set(text);
                } else if run == self.compare_run.get_untracked() {
                    self.plain_text.set(text);
                }
            }
            Event::Round { run, round, text } => {
                if run == self.run.get_untracked() {
                    self.fly_at_ms
                        .set(crate::app::layout::round_phase_times(&round.nodes).fly_at_ms);
                    self.rounds.update(|r| r.push(round));
                    self.caption_before.set(self.caption.get_untracked());
                    self.caption.set(text);
                }
            }
            Event::Done { run, result, .. } => {
                if run == self.run.get_untracked() {
                    // Redraw the caption only if it changed (the last round's words may still
                    // be flying in).
                    if self.caption.get_untracked() != result.text {
                        self.caption_before.set(result.text.clone());
                        self.caption.set(result.text.clone());
                    }
                    self.result.set(Some(result));
                    self.status.set(Status::Done);
                } else if run == self.compare_run.get_untracked() {
                    self.plain_text.set(result.text.clone());
                    self.plain.set(Some(result));
                    self.status.set(Status::Done);
                }
            }
            Event::Error { run, message } => {
                let current = run.is_none()
                    || run == Some(self.run.get_untracked())
                    || run == Some(self.compare_run.get_untracked());
                if current {
                    self.progress.set(Vec::new());
                    self.fail(message);
                }
            }
        }
    }
}

/// Mount the page (called by index.html once the wasm module is ready).
#[wasm_bindgen]
pub fn start_app() {
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let st = AppState::new();
    provide_context(st);
    if let Err(e) = bridge::start(move |e| st.on_event(e)) {
        st.fail(e);
    } else {
        st.init_engine();
    }
    view! {
        <header>
            <h1>"spec-llava"</h1>
            <p class="tagline">
                "Image captions from a LLaVA model in your browser, on WebGPU, sped up by dynamic-tree speculative decoding."
            </p>
            <p class="status-line">
                <span class="status" data-testid="status" data-run=move || st.run.get()>{move || st.status.get().as_str()}</span>
                <span class="backend">
                    {move || st.backend.get().map(|b| format!("engine: {}", b.label())).unwrap_or_default()}
                </span>
            </p>
        </header>
        <ProgressBars/>
        <Show when=move || st.notice.get().is_some()>
            <p class="notice" role="status" data-testid="notice">{move || st.notice.get().unwrap_or_default()}</p>
        </Show>
        <Show when=move || st.input_notice.get().is_some()>
            <p class="notice" role="status" data-testid="input-notice">
                {move || st.input_notice.get().unwrap_or_default()}
            </p>
        </Show>
        <Show when=move || st.error.get().is_some()>
            <p class="error" role="alert" data-testid="error">{move || st.error.get().unwrap_or_default()}</p>
        </Show>
        <main>
            <section class="left">
                <DropZone/>
                <Show when=move || st.preview.get().is_some()>
                    <img class="preview" alt="the image being captioned" src=move || st.preview.get().unwrap_or_default()/>
                </Show>
                <h2>"Caption"</h2>
                <p class="caption" data-testid="caption" aria-live="polite">{move || caption_words(st)}</p>
                <Stats/>
            </section>
            <section class="right">
                <TreeView/>
                <SettingsPanel/>
            </section>
        </main>
    }
}

/// The caption, the latest round's words in their own span (they fly in from the tree).
fn caption_words(st: AppState) -> impl IntoView {
    let text = st.caption.get();
    let before = st.caption_before.get();
    let (old, new) = match text.strip_prefix(before.as_str()) {
        Some(new) => (before.clone(), new.to_string()),
        None => (text.clone(), String::new()),
    };
    view! {
        <span class="old-words">{old}</span>
        <span class="new-words" style=format!("--fly-at: {}ms", st.fly_at_ms.get_untracked())>{new}</span>
    }
}

#[component]
fn ProgressBars() -> impl IntoView {
    let st = expect_context::<AppState>();
    view! {
        <div class="progress" aria-live="polite">
            {move || {
                st.progress
                    .get()
                    .into_iter()
                    .map(|r| {
                        let label = if r.total > 1 {
                            format!("{} — {:.1} / {:.1} MB", r.task, r.done as f64 / 1e6, r.total as f64 / 1e6)
                        } else {
                            r.task.clone()
                        };
                        let (value, max) = if r.total > 0 { (r.done as f64, r.total as f64) } else { (0.0, 1.0) };
                        view! {
                            <label class="bar">
                                <span>{label}</span>
                                <progress value=value max=max></progress>
                            </label>
                        }
                    })
                    .collect::<Vec<_>>()
            }}
        </div>
    }
}
