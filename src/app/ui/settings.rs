//! Settings (tree shape, adaptive, sampling, max tokens, prompt, backend) and loading your own
//! LLaVA checkpoints (a local folder or a base URL) for target and draft.

use leptos::ev;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::AppState;
use crate::app::bridge;
use crate::app::hub::SUGGESTED_PAIRS;
use crate::app::messages::{
    BackendKind, DraftEngineChoice, ModelRole, QuantChoice, Request, Settings,
};

/// A numeric field bound to one settings value.
fn number_field<T>(
    st: AppState,
    label: &'static str,
    testid: &'static str,
    step: &'static str,
    get: fn(&Settings) -> T,
    set: fn(&mut Settings, T),
) -> impl IntoView
where
    T: std::str::FromStr + std::fmt::Display + 'static,
{
    view! {
        <label class="field">
            <span>{label}</span>
            <input
                type="number"
                data-testid=testid
                step=step
                prop:value=move || st.settings.with(|s| get(s).to_string())
                on:change=move |e: ev::Event| {
                    if let Ok(v) = event_target_value(&e).parse::<T>() {
                        st.settings.update(|s| set(s, v));
                    }
                }
            />
        </label>
    }
}

/// A new load makes an earlier failure's message stale (its own error, if any, replaces it).
fn clear_load_error(st: AppState) {
    if matches!(st.status.get_untracked(), super::Status::Error) {
        st.error.set(None);
        st.status.set(super::Status::Ready);
    }
}

/// Send a picked folder's files to the worker as a checkpoint: the `File` handles, not their
/// bytes (the worker reads the weights a tensor at a time).
fn load_folder(st: AppState, role: ModelRole, files: web_sys::FileList) {
    let list: Vec<web_sys::File> = (0..files.length()).filter_map(|i| files.get(i)).collect();
    let names = list.iter().map(|f| f.name()).collect();
    clear_load_error(st);
    bridge::send_files(
        &Request::LoadModel {
            role,
            url: None,
            names,
            quantize: st.settings.with_untracked(|s| s.quantize),
        },
        list,
    );
}

/// Load a model by id or URL into a role.
fn load_url(st: AppState, role: ModelRole, input: &str) {
    let Some(url) = super::model_url(input) else {
        return;
    };
    clear_load_error(st);
    bridge::send(
        &Request::LoadModel {
            role,
            url: Some(url),
            names: Vec::new(),
            quantize: st.settings.with_untracked(|s| s.quantize),
        },
        Vec::new(),
    );
}

#[component]
fn ModelLoader(role: ModelRole) -> impl IntoView {
    let st = expect_context::<AppState>();
    let url = RwSignal::new(String::new());
    let name = match role {
        ModelRole::Target => "target",
        ModelRole::Draft => "draft",
    };
    view! {
        <fieldset class="loader">
            <legend>{format!("your {name} model")}</legend>
            <label class="field">
                <span>"folder (config.json, *.safetensors, tokenizer.json, preprocessor_config.json or processor_config.json)"</span>
                <input
                    type="file"
                    multiple=true
                    prop:webkitdirectory=true
                    data-testid=format!("{name}-folder")
                    on:change=move |e: ev::Event| {
                        let Some(input) = e.target() else { return };
                        let input: web_sys::HtmlInputElement = input.unchecked_into();
                        if let Some(files) = input.files() {
                            if files.length() > 0 {
                                load_folder(st, role, files);
                            }
                        }
                    }
                />
            </label>
            <label class="field">
                <span>"or model id (org/name[@revision]) or base URL"</span>
                <input
                    type="text"
                    data-testid=format!("{name}-url")
                    placeholder="llava-hf/llava-1.5-7b-hf or https://…/checkpoint"
                    prop:value=move || url.get()
                    on:input=move |e: ev::Event| url.set(event_target_value(&e))
                />
            </label>
            <button
                type="button"
                data-testid=format!("{name}-load")
                on:click=move |_| load_url(st, role, &url.get_untracked())
            >
                "load"
            </button>
        </fieldset>
    }
}

#[component]
pub fn SettingsPanel() -> impl IntoView {
    let st = expect_context::<AppState>();
    let models = move || {
        st.models
            .get()
            .into_iter()
            .map(|m| {
                let role = format!("{:?}", m.role).to_lowercase();
                view! {
                    <li>
                        {format!("{role}: ")}
                        <code>{m.source.clone()}</code>
                        {format!(" — {:.1} MB, {}", m.bytes as f64 / 1e6, m.summary)}
                        <br/>
                        <span
                            class="model-engine"
                            data-testid=format!("model-engine-{role}")
                            data-engine=format!("{:?}", m.engine).to_lowercase()
                        >
                            {format!("{role} runs on: {}", m.engine_line())}
                        </span>
                    </li>
                }
            })
            .collect::<Vec<_>>()
    };
    view! {
        <details class="settings" open=true>
            <summary>"Settings"</summary>
            <div class="grid">
                {number_field(st, "tree budget (nodes)", "budget", "1", |s| s.budget, |s, v| s.budget = v)}
                {number_field(st, "max depth", "depth", "1", |s| s.depth, |s, v| s.depth = v)}
                {number_field(st, "top-k", "top-k", "1", |s| s.top_k, |s, v| s.top_k = v)}
                {number_field(st, "threshold", "threshold", "0.01", |s| s.threshold, |s, v| s.threshold = v)}
                <label class="field check">
                    <input
                        type="checkbox"
                        prop:checked=move || st.settings.with(|s| s.adaptive)
                        on:change=move |e: ev::Event| {
                            let Some(input) = e.target() else { return };
                        let input: web_sys::HtmlInputElement = input.unchecked_into();
                            st.settings.update(|s| s.adaptive = input.checked());
                        }
                    />
                    <span>"adaptive tree size (measured on this device)"</span>
                </label>
                {number_field(st, "temperature (0 = greedy)", "temperature", "0.1", |s| s.temperature, |s, v| s.temperature = v)}
                {number_field(st, "top-p", "top-p", "0.05", |s| s.top_p, |s, v| s.top_p = v)}
                {number_field(st, "seed", "seed", "1", |s| s.seed, |s, v| s.seed = v)}
                {number_field(st, "max tokens", "max-tokens", "1", |s| s.max_new_tokens, |s, v| s.max_new_tokens = v)}
                <label class="field wide">
                    <span>"prompt"</span>
                    <input
                        type="text"
                        data-testid="prompt"
                        prop:value=move || st.settings.with(|s| s.instruction.clone())
                        on:change=move |e: ev::Event| {
                            let v = event_target_value(&e);
                            st.settings.update(|s| s.instruction = v);
                        }
                    />
                </label>
                <label class="field">
                    <span>"engine"</span>
                    <select
                        data-testid="backend"
                        on:change=move |e: ev::Event| {
                            let kind = if event_target_value(&e) == "cpu" { BackendKind::Cpu } else { BackendKind::Webgpu };
                            st.backend_choice.set(kind);
                            st.init_engine();
                        }
                    >
                        <option value="webgpu" selected=move || st.backend_choice.get() == BackendKind::Webgpu>"WebGPU"</option>
                        <option value="cpu" selected=move || st.backend_choice.get() == BackendKind::Cpu>"CPU"</option>
                    </select>
                </label>
                <label class="field">
                    <span>"draft engine (beside a WebGPU target)"</span>
                    <select
                        data-testid="draft-engine"
                        on:change=move |e: ev::Event| {
                            let choice = match event_target_value(&e).as_str() {
                                "same" => DraftEngineChoice::Same,
                                "cpu" => DraftEngineChoice::Cpu,
                                _ => DraftEngineChoice::Auto,
                            };
                            st.settings.update(|s| s.draft_engine = choice);
                            bridge::send(&Request::SetDraftEngine { choice }, Vec::new());
                        }
                    >
                        {[
                            ("auto", DraftEngineChoice::Auto),
                            ("same", DraftEngineChoice::Same),
                            ("cpu", DraftEngineChoice::Cpu),
                        ]
                            .into_iter()
                            .map(|(value, choice)| {
                                view! {
                                    <option
                                        value=value
                                        selected=move || st.settings.with(|s| s.draft_engine == choice)
                                    >
                                        {choice.label()}
                                    </option>
                                }
                            })
                            .collect::<Vec<_>>()}
                    </select>
                </label>
            </div>
            <h3>"Models"</h3>
            <ul class="models" data-testid="models">{models}</ul>
            <p class="memory" data-testid="engine-device">{move || st.engine_device.get()}</p>
            <p class="memory" data-testid="engine-memory">
                {move || st.engine_memory.get().map(|b| format!("wasm memory {} MiB", b >> 20)).unwrap_or_default()}
            </p>
            <label class="field">
                <span>"quantize while loading (plain checkpoints)"</span>
                <select
                    data-testid="quantize"
                    on:change=move |e: ev::Event| {
                        let q = match event_target_value(&e).as_str() {
                            "q4" => QuantChoice::Q4,
                            "q8" => QuantChoice::Q8,
                            "none" => QuantChoice::AsStored,
                            _ => QuantChoice::Auto,
                        };
                        st.settings.update(|s| s.quantize = q);
                    }
                >
                    <option value="auto" selected=true>"auto (q4 over 1 GiB)"</option>
                    <option value="q4">"q4"</option>
                    <option value="q8">"q8"</option>
                    <option value="none">"as stored"</option>
                </select>
            </label>
            <div class="suggested">
                <span>"suggested pairs: "</span>
                {SUGGESTED_PAIRS
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        view! {
                            <button
                                type="button"
                                data-testid=format!("suggest-{i}")
                                title=format!("{} + {}: download {}, {} on the GPU", p.target, p.draft, p.download, p.device)
                                on:click=move |_| {
                                    load_url(st, ModelRole::Target, p.target);
                                    load_url(st, ModelRole::Draft, p.draft);
                                }
                            >
                                {format!("{} ({})", p.label, p.download)}
                            </button>
                        }
                    })
                    .collect::<Vec<_>>()}
            </div>
            <button
                type="button"
                data-testid="load-cancel"
                on:click=move |_| bridge::send(&Request::CancelLoad, Vec::new())
            >
                "cancel loading"
            </button>
            <ModelLoader role=ModelRole::Target/>
            <ModelLoader role=ModelRole::Draft/>
            <button
                type="button"
                on:click=move |_| {
                    if let Some(s) = super::storage() {
                        let _ = s.remove_item(super::STORED_TARGET);
                        let _ = s.remove_item(super::STORED_DRAFT);
                    }
                    let (t, d) = super::demo_urls();
                    load_url(st, ModelRole::Target, &t);
                    if let Some(d) = d {
                        load_url(st, ModelRole::Draft, &d);
                    }
                }
            >
                "back to the demo models"
            </button>
        </details>
    }
}
