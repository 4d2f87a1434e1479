//! Settings (tree shape, adaptive, sampling, max tokens, prompt, backend) and loading your own
//! LLaVA checkpoints (a local folder or a base URL) for target and draft.

use leptos::ev;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{AppState, ProgressRow};
use crate::app::bridge;
use crate::app::fetch::{js_text, MAX_CHECKPOINT_BYTES};
use crate::app::messages::{BackendKind, ModelRole, Request, Settings};

/// A numeric field bound to one settings value.
fn number_field<T>(
    st: AppState,
    label: &'static str,
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

/// Read every file of a picked folder and send it to the worker as a checkpoint.
fn load_folder(st: AppState, role: ModelRole, files: web_sys::FileList) {
    let total: f64 = (0..files.length())
        .filter_map(|i| files.get(i))
        .map(|f| f.size())
        .sum();
    if total > MAX_CHECKPOINT_BYTES as f64 {
        st.fail(format!(
            "the folder holds {:.0} MiB, more than this browser can hold ({} MiB); quantize the checkpoint first (spec-llava quantize --format q4)",
            total / 1048576.0,
            MAX_CHECKPOINT_BYTES >> 20
        ));
        return;
    }
    let list: Vec<web_sys::File> = (0..files.length()).filter_map(|i| files.get(i)).collect();
    spawn_local(async move {
        let mut names = Vec::new();
        let mut buffers = Vec::new();
        let mut done = 0.0;
        for f in list {
            match JsFuture::from(f.array_buffer()).await {
                Ok(buf) => {
                    done += f.size();
                    names.push(f.name());
                    buffers.push(js_sys::Uint8Array::new(&buf).to_vec());
                    st.progress.set(vec![ProgressRow {
                        task: "reading your folder".into(),
                        done: done as u64,
                        total: total as u64,
                    }]);
                }
                Err(e) => {
                    st.fail(format!("{}: cannot read ({})", f.name(), js_text(&e)));
                    return;
                }
            }
        }
        bridge::send(
            &Request::LoadModel {
                role,
                url: None,
                names,
            },
            buffers,
        );
    });
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
                <span>"or base URL"</span>
                <input
                    type="url"
                    data-testid=format!("{name}-url")
                    placeholder="https://…/llava-checkpoint"
                    prop:value=move || url.get()
                    on:input=move |e: ev::Event| url.set(event_target_value(&e))
                />
            </label>
            <button
                type="button"
                data-testid=format!("{name}-load")
                on:click=move |_| {
                    let u = url.get_untracked();
                    if !u.trim().is_empty() {
                        bridge::send(
                            &Request::LoadModel {
                                role,
                                url: Some(super::absolute(u.trim())),
                                names: Vec::new(),
                            },
                            Vec::new(),
                        );
                    }
                }
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
                view! {
                    <li>
                        {format!("{:?}: ", m.role).to_lowercase()}
                        <code>{m.source.clone()}</code>
                        {format!(" — {:.1} MB, {}", m.bytes as f64 / 1e6, m.summary)}
                    </li>
                }
            })
            .collect::<Vec<_>>()
    };
    view! {
        <details class="settings" open=true>
            <summary>"Settings"</summary>
            <div class="grid">
                {number_field(st, "tree budget (nodes)", "1", |s| s.budget, |s, v| s.budget = v)}
                {number_field(st, "max depth", "1", |s| s.depth, |s, v| s.depth = v)}
                {number_field(st, "top-k", "1", |s| s.top_k, |s, v| s.top_k = v)}
                {number_field(st, "threshold", "0.01", |s| s.threshold, |s, v| s.threshold = v)}
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
                {number_field(st, "temperature (0 = greedy)", "0.1", |s| s.temperature, |s, v| s.temperature = v)}
                {number_field(st, "top-p", "0.05", |s| s.top_p, |s, v| s.top_p = v)}
                {number_field(st, "seed", "1", |s| s.seed, |s, v| s.seed = v)}
                {number_field(st, "max tokens", "1", |s| s.max_new_tokens, |s, v| s.max_new_tokens = v)}
                <label class="field wide">
                    <span>"prompt"</span>
                    <input
                        type="text"
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
            </div>
            <h3>"Models"</h3>
            <ul class="models">{models}</ul>
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
                    bridge::send(&Request::LoadModel { role: ModelRole::Target, url: Some(t), names: Vec::new() }, Vec::new());
                    if let Some(d) = d {
                        bridge::send(&Request::LoadModel { role: ModelRole::Draft, url: Some(d), names: Vec::new() }, Vec::new());
                    }
                }
            >
                "back to the demo models"
            </button>
        </details>
    }
}
