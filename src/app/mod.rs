//! The browser app: drop an image, watch the speculation tree grow, read the caption.
//!
//! The page (`ui`, leptos CSR) never runs the model: it sends typed [`messages::Request`]s to a
//! Web Worker (`worker`) that owns the engine and answers with [`messages::Event`]s — the same
//! round events `--trace` writes. `hub` turns model ids into URLs; `fetch`, `store` and
//! `range_file` bring a checkpoint's files into the worker a tensor at a time, and `packed` keeps
//! what was quantized while loading. `session` is the worker's engine state, backend-agnostic and
//! tested natively; `layout` places tree nodes for the SVG view.

pub mod hub;
pub mod layout;
pub mod messages;
pub mod session;

#[cfg(target_arch = "wasm32")]
mod bridge;
#[cfg(target_arch = "wasm32")]
mod fetch;
#[cfg(target_arch = "wasm32")]
pub(crate) mod packed;
#[cfg(target_arch = "wasm32")]
mod range_file;
#[cfg(target_arch = "wasm32")]
mod store;
#[cfg(target_arch = "wasm32")]
mod ui;
#[cfg(target_arch = "wasm32")]
mod worker;

#[cfg(target_arch = "wasm32")]
pub use bridge::lose_gpu_device;
#[cfg(target_arch = "wasm32")]
pub use ui::start_app;
#[cfg(target_arch = "wasm32")]
pub use worker::start_worker;
