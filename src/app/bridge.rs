//! The page's side of the worker: start it, send typed requests (with byte buffers transferred,
//! not copied), and hand every typed event to the UI.

use std::cell::RefCell;

use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::app::messages::{Event, Request};

/// The worker script, relative to the page.
const WORKER_URL: &str = "web/worker.js";

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Start the engine worker; `on_event` receives every event (and worker failures as errors).
pub fn start(on_event: impl Fn(Event) + 'static) -> Result<(), String> {
    let options = WorkerOptions::new();
    options.set_type(WorkerType::Module);
    let worker = Worker::new_with_options(WORKER_URL, &options)
        .map_err(|e| format!("cannot start the engine worker: {e:?}"))?;
    let on_event = std::rc::Rc::new(on_event);
    let handler = on_event.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let event = match e.data().as_string().map(|t| Event::from_json(&t)) {
            Some(Ok(event)) => event,
            Some(Err(err)) => Event::Error {
                run: None,
                message: err.to_string(),
            },
            None => return,
        };
        handler(event);
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        let message = Reflect::get(&e, &"message".into())
            .ok()
            .and_then(|m| m.as_string())
            .unwrap_or_else(|| "the engine worker failed to start".into());
        on_event(Event::Error {
            run: None,
            message: format!("engine worker: {message}"),
        });
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    WORKER.with(|w| *w.borrow_mut() = Some(worker));
    Ok(())
}

/// Send a request with the given byte buffers (moved to the worker).
pub fn send(req: &Request, buffers: Vec<Vec<u8>>) {
    let msg = Object::new();
    let _ = Reflect::set(&msg, &"json".into(), &req.to_json().into());
    let list = Array::new();
    let transfer = Array::new();
    for b in buffers {
        let arr = Uint8Array::from(b.as_slice());
        list.push(&arr.buffer());
        transfer.push(&arr.buffer());
    }
    let _ = Reflect::set(&msg, &"buffers".into(), &list);
    WORKER.with(|w| {
        if let Some(w) = w.borrow().as_ref() {
            let _ = w.post_message_with_transfer(&msg, &transfer);
        }
    });
}

/// Send a request with browser files (handles, not bytes: the worker reads them on demand).
pub fn send_files(req: &Request, files: Vec<web_sys::File>) {
    let msg = Object::new();
    let _ = Reflect::set(&msg, &"json".into(), &req.to_json().into());
    let list = Array::new();
    for f in files {
        list.push(&f);
    }
    let _ = Reflect::set(&msg, &"files".into(), &list);
    WORKER.with(|w| {
        if let Some(w) = w.borrow().as_ref() {
            let _ = w.post_message(&msg);
        }
    });
}

/// Destroy the engine's WebGPU device, as a driver reset or a reclaimed GPU would: the running
/// caption fails and the engine re-initialises. For the e2e suite, which calls it from the page
/// (`(await import('./web/pkg/spec_llava.js')).lose_gpu_device()`); the UI never does.
#[wasm_bindgen]
pub fn lose_gpu_device() {
    send(&Request::LoseDevice, Vec::new());
}
