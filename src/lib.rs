//! spec-llava: caption images with a LLaVA vision-language model, on the CPU (reference engine) or
//! WebGPU, made fast by dynamic-tree speculative decoding.
//!
//! Follow an image through the pipeline in this order:
//! `image_io` (bytes -> RGB) -> `vision::preprocess` (pixel values) -> `vision::tower` (CLIP/SigLIP)
//! -> `projector` -> `text::tokenizer` (prompt ids, `<image>` expansion) -> `text::decoder`
//! (Llama/Qwen2) -> `generate` (greedy / sampled decoding).
//! `config` and `weights` load Hugging Face checkpoints; `model` ties the stages into one model
//! definition that runs on any `backend`.

pub mod app;
pub mod backend;
pub mod caption;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod files;
pub mod generate;
pub mod image_io;
pub mod model;
pub mod nn;
pub mod projector;
pub mod quant;
pub mod quantize;
pub mod sampling;
pub mod scenes;
pub mod speculative;
#[cfg(not(target_arch = "wasm32"))]
pub mod synth;
pub mod text;
pub mod vision;
pub mod weights;

pub use error::{Error, Result};
