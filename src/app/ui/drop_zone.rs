//! Where images come in: drag-and-drop, the file picker (keyboard: focus the zone, press Enter),
//! paste, and "random scene" (the procedural scene world the demo models were trained on).

use leptos::ev;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::AppState;
use crate::app::fetch::js_text;
use crate::scenes;

/// Images larger than this are refused before reading (the decoder also caps pixels).
const MAX_IMAGE_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// A blob URL showing these bytes.
pub fn object_url(bytes: &[u8]) -> Option<String> {
    let parts = js_sys::Array::new();
    parts.push(&js_sys::Uint8Array::from(bytes));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).ok()?;
    web_sys::Url::create_object_url_with_blob(&blob).ok()
}

/// Read a picked or dropped file, then caption it.
pub fn take_file(st: AppState, file: web_sys::File) {
    let name = file.name();
    if file.size() > MAX_IMAGE_BYTES {
        st.fail(format!(
            "{name}: {:.0} MB is too large for an image (at most {:.0} MB)",
            file.size() / 1e6,
            MAX_IMAGE_BYTES / 1e6
        ));
        return;
    }
    spawn_local(async move {
        match JsFuture::from(file.array_buffer()).await {
            Ok(buf) => {
                let bytes = js_sys::Uint8Array::new(&buf).to_vec();
                st.submit_image(name, bytes);
            }
            Err(e) => st.fail(format!("{name}: cannot read the file ({})", js_text(&e))),
        }
    });
}

fn first_file(list: Option<web_sys::FileList>) -> Option<web_sys::File> {
    list.and_then(|l| l.get(0))
}

fn random_scene(st: AppState) {
    let seed = (js_sys::Math::random() * 1e9) as u64;
    let scene = scenes::generate(seed);
    match scenes::png_bytes(&scene.image) {
        Ok(bytes) => st.submit_image(format!("scene-{seed}.png"), bytes),
        Err(e) => st.fail(e.to_string()),
    }
}

#[component]
pub fn DropZone() -> impl IntoView {
    let st = expect_context::<AppState>();
    let input: NodeRef<leptos::html::Input> = NodeRef::new();
    let dragging = RwSignal::new(false);
    let ready = move || !matches!(st.status.get(), super::Status::Loading);

    // Paste an image anywhere on the page.
    // (The drop zone lives as long as the page, so the listener is never removed.)
    let _paste = window_event_listener(ev::paste, move |e: web_sys::ClipboardEvent| {
        if let Some(file) = first_file(e.clipboard_data().and_then(|d| d.files())) {
            e.prevent_default();
            take_file(st, file);
        }
    });

    let open_picker = move || {
        if let Some(i) = input.get_untracked() {
            i.click();
        }
    };

    view! {
        <div
            class="dropzone"
            class:dragging=move || dragging.get()
            tabindex="0"
            role="button"
            aria-label="Drop an image here, paste one, or press Enter to choose a file"
            on:dragover=move |e: ev::DragEvent| {
                e.prevent_default();
                dragging.set(true);
            }
            on:dragleave=move |_| dragging.set(false)
            on:drop=move |e: ev::DragEvent| {
                e.prevent_default();
                dragging.set(false);
                if let Some(file) = first_file(e.data_transfer().and_then(|d| d.files())) {
                    take_file(st, file);
                }
            }
            on:keydown=move |e: ev::KeyboardEvent| {
                if e.key() == "Enter" || e.key() == " " {
                    e.prevent_default();
                    open_picker();
                }
            }
        >
            <p>"Drop an image here, paste one, or "</p>
            <label class="picker">
                "choose a file"
                <input
                    type="file"
                    accept="image/*"
                    data-testid="drop-input"
                    node_ref=input
                    on:change=move |e: ev::Event| {
                        let Some(target) = e.target() else { return };
                        let target: web_sys::HtmlInputElement = target.unchecked_into();
                        if let Some(file) = first_file(target.files()) {
                            take_file(st, file);
                        }
                        target.set_value("");
                    }
                />
            </label>
            <button
                type="button"
                data-testid="random-scene"
                prop:disabled=move || !ready()
                on:click=move |_| random_scene(st)
            >
                "random scene"
            </button>
        </div>
    }
}
