//! The typed messages between the page and the engine worker.
//!
//! Both directions travel as one JSON string plus, where a message carries files (model files, an
//! image), a list of byte buffers transferred alongside it (never copied through JSON). The same
//! types are used natively by the tests, which drive [`super::session::Session`] directly.

use serde::{Deserialize, Serialize};

use crate::caption::{CaptionRequest, SpecSummary};
use crate::error::{Error, Result};
use crate::sampling::SamplingOptions;
use crate::speculative::events::RoundEvent;
use crate::speculative::SpecOptions;

/// Which executor runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Our WGSL kernels on WebGPU.
    Webgpu,
    /// The plain-Rust reference engine (always available; slower).
    Cpu,
}

impl BackendKind {
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Webgpu => "WebGPU",
            BackendKind::Cpu => "CPU",
        }
    }

    /// The engine as the models list names it.
    pub fn engine_label(self) -> &'static str {
        match self {
            BackendKind::Webgpu => "WebGPU",
            BackendKind::Cpu => "CPU engine (wasm)",
        }
    }
}

/// Where the draft runs when the target is on WebGPU (with the target on the CPU engine, both are
/// there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftEngineChoice {
    /// Where one draft pass measures cheaper (a tiny draft can cost less on the CPU engine than
    /// a round trip to the GPU).
    #[default]
    Auto,
    /// On the target's engine.
    Same,
    /// On the CPU engine.
    Cpu,
}

impl DraftEngineChoice {
    pub fn label(self) -> &'static str {
        match self {
            DraftEngineChoice::Auto => "auto (where a draft pass measures faster)",
            DraftEngineChoice::Same => "same engine as the target",
            DraftEngineChoice::Cpu => "CPU engine (wasm)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    Target,
    Draft,
}

/// Plain decoding (the target alone) or speculative decoding (draft tree + target verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Speculative,
    Plain,
}

/// Everything the settings panel controls. The defaults are the CLI's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub budget: usize,
    pub depth: usize,
    pub top_k: usize,
    pub threshold: f32,
    /// Choose the tree size per round from costs measured on this device.
    pub adaptive: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// The user's instruction, put through the checkpoint's chat template.
    pub instruction: String,
    /// How plain checkpoints are stored on the device when they load.
    #[serde(default)]
    pub quantize: QuantChoice,
    /// Where the draft runs beside a WebGPU target.
    #[serde(default)]
    pub draft_engine: DraftEngineChoice,
}

impl Default for Settings {
    fn default() -> Self {
        let spec = SpecOptions::default();
        let sampling = SamplingOptions::default();
        Settings {
            budget: spec.budget,
            depth: spec.depth,
            top_k: spec.top_k,
            threshold: spec.threshold,
            adaptive: false,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            seed: sampling.seed,
            max_new_tokens: CaptionRequest::default().max_new_tokens,
            instruction: crate::caption::DEFAULT_INSTRUCTION.to_string(),
            quantize: QuantChoice::Auto,
            draft_engine: DraftEngineChoice::Auto,
        }
    }
}

impl Settings {
    pub fn spec_options(&self) -> SpecOptions {
        SpecOptions {
            budget: self.budget,
            depth: self.depth,
            top_k: self.top_k,
            threshold: self.threshold,
        }
    }

    pub fn sampling(&self) -> SamplingOptions {
        SamplingOptions {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    /// Check every field, with a message a user can act on.
    pub fn validate(&self) -> Result<()> {
        self.spec_options().validate()?;
        self.sampling().validate()?;
        if self.max_new_tokens == 0 || self.max_new_tokens > 1024 {
            return Err(Error::invalid(format!(
                "max tokens must be between 1 and 1024, got {}",
                self.max_new_tokens
            )));
        }
        if self.instruction.trim().is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        Ok(())
    }
}

/// How a plain (f32/f16/bf16) checkpoint's big matrices are stored on the device while loading.
/// Quantized checkpoints load as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantChoice {
    /// q4 for checkpoints over 1 GiB (a 7B model fits a browser's GPU only so), else as stored.
    #[default]
    Auto,
    AsStored,
    Q8,
    Q4,
}

impl QuantChoice {
    /// The checkpoints `Auto` quantizes: more than this many bytes of files.
    pub const AUTO_Q4_ABOVE: u64 = 1 << 30;

    /// What to quantize to for a plain checkpoint of `bytes` bytes (`None`: as stored).
    pub fn format(self, bytes: u64) -> Option<crate::quant::Format> {
        use crate::quant::Format;
        match self {
            QuantChoice::Auto if bytes > Self::AUTO_Q4_ABOVE => Some(Format::Q4),
            QuantChoice::Auto | QuantChoice::AsStored => None,
            QuantChoice::Q8 => Some(Format::Q8),
            QuantChoice::Q4 => Some(Format::Q4),
        }
    }
}

/// Page -> worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Open the engine on `backend` (WebGPU falls back to the CPU with a notice) and load the
    /// models at these base URLs. Sent again to switch backends or after a device loss.
    Init {
        backend: BackendKind,
        target_url: String,
        draft_url: Option<String>,
        #[serde(default)]
        quantize: QuantChoice,
        /// How much GPU memory the weights may take, in MiB (the page's `?gpu_memory_mib=`):
        /// WebGPU does not say how much a device has. A model that would not fit is refused
        /// before its weights are downloaded. `None`: no limit but the device's own.
        #[serde(default)]
        memory_budget_mib: Option<u64>,
    },
    /// Load a checkpoint for a role from a base URL (files kept for offline use) or from the
    /// files sent with the message (`names[i]` is the i-th file's name; browser `File`s, read a
    /// tensor at a time). The models already loaded stay in place until the new one has loaded
    /// and checked out.
    LoadModel {
        role: ModelRole,
        url: Option<String>,
        names: Vec<String>,
        #[serde(default)]
        quantize: QuantChoice,
    },
    /// Stop the download or load in progress; the models already loaded stay, and the partial
    /// download resumes on the next load of the same model.
    CancelLoad,
    /// Caption the image transferred with the message. A new caption cancels a running one.
    Caption {
        run: u64,
        image_name: String,
        mode: RunMode,
        settings: Settings,
    },
    Cancel {
        run: u64,
    },
    /// Put the draft on this engine (or where a pass measures cheaper); the worker answers with
    /// `Ready`, its models saying where each runs.
    SetDraftEngine {
        choice: DraftEngineChoice,
    },
    /// Destroy the WebGPU device now, as a driver reset or a reclaimed GPU would: the running
    /// caption fails and the engine re-initialises from the files it holds. Not sent by the UI;
    /// the e2e suite sends it (through `lose_gpu_device`) to check that recovery.
    LoseDevice,
}

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Generated tokens per second of decoding (prefill and image encoding excluded).
    pub tokens_per_s: f64,
    pub total_ms: f64,
    pub spec: Option<SpecSummary>,
}

/// A loaded model, as the page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub role: ModelRole,
    pub source: String,
    pub bytes: u64,
    /// What its weights take once loaded (device or wasm memory; see `WeightStore::loaded_bytes`).
    #[serde(default)]
    pub loaded_bytes: u64,
    pub summary: String,
    /// The engine it runs on.
    pub engine: BackendKind,
    /// For a draft beside a WebGPU target: one draft pass as measured on each engine it was
    /// tried on, in milliseconds.
    #[serde(default)]
    pub pass_ms: Vec<(BackendKind, f64)>,
    /// Why it runs there, e.g. "auto: a pass is cheaper there".
    #[serde(default)]
    pub engine_why: String,
}

impl ModelInfo {
    /// Where the model runs, as the models list says it: "CPU engine (wasm), 1.70 ms a pass vs
    /// 4.20 ms on WebGPU (auto: a pass is cheaper there)".
    pub fn engine_line(&self) -> String {
        let mut line = self.engine.engine_label().to_string();
        let here = self.pass_ms.iter().find(|(k, _)| *k == self.engine);
        if let Some((_, ms)) = here {
            line.push_str(&format!(", {ms:.2} ms a pass"));
        }
        let others: Vec<String> = self
            .pass_ms
            .iter()
            .filter(|(k, _)| *k != self.engine)
            .map(|(k, ms)| format!("{ms:.2} ms on {}", k.engine_label()))
            .collect();
        if !others.is_empty() {
            line.push_str(if here.is_some() { " vs " } else { ", " });
            line.push_str(&others.join(", "));
        }
        if !self.engine_why.is_empty() {
            line.push_str(&format!(" ({})", self.engine_why));
        }
        line
    }
}

/// Worker -> page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A long step: `done` of `total` (bytes for downloads, steps otherwise; `total` 0 = unknown).
    Progress {
        task: String,
        done: u64,
        total: u64,
    },
    /// The engine is ready to caption.
    Ready {
        backend: BackendKind,
        /// Why the engine is not on the backend asked for, if it is not.
        notice: Option<String>,
        models: Vec<ModelInfo>,
        /// The engine's device, e.g. "WebGPU: google swiftshader (kernels for CPU drivers)".
        #[serde(default)]
        engine: String,
    },
    /// The engine worker's wasm memory now (it only grows: this is its peak).
    EngineMemory {
        wasm_bytes: u64,
    },
    /// Where the loaded models run changed (the draft moved to another engine).
    Models {
        models: Vec<ModelInfo>,
    },
    /// A model finished loading (it replaced the previous one of its role).
    ModelLoaded {
        model: ModelInfo,
    },
    Started {
        run: u64,
        mode: RunMode,
    },
    /// Something the user should know about this run's input (e.g. a photograph given to the demo
    /// models, which know only generated scenes). The caption still runs.
    InputNotice {
        run: u64,
        message: String,
    },
    /// The caption so far (plain decoding streams token by token).
    Text {
        run: u64,
        text: String,
    },
    /// One speculation round, and the caption so far.
    Round {
        run: u64,
        round: RoundEvent,
        text: String,
    },
    Done {
        run: u64,
        mode: RunMode,
        result: RunResult,
    },
    Cancelled {
        run: u64,
    },
    /// Something failed; `run` names the caption it belongs to, if any. What was loaded before
    /// stays usable.
    Error {
        run: Option<u64>,
        message: String,
    },
}

impl Request {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests serialize")
    }
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid(format!("bad request: {e}")))
    }
}

impl Event {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid(format!("bad event: {e}")))
    }
}
