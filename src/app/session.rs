//! The engine state the worker owns: one backend, the loaded target (and draft), and the runs.
//!
//! Backend-agnostic and free of browser APIs, so the tests drive exactly what the page drives:
//! load checkpoints from files, caption an image in plain or speculative mode, stream
//! [`Event`]s, cancel. Loading never disturbs what is already loaded: a new model replaces the
//! old one only after it has loaded and passed every check.
//!
//! Beside a GPU target the draft may run on the CPU engine instead ([`DraftOn`]): a tiny draft's
//! pass can cost less there than a round trip to the GPU. Where it runs is measured (one draft
//! pass on each engine, as the adaptive cost model times it) or set ([`DraftEngineChoice`]).

use std::any::TypeId;

use crate::app::messages::{
    BackendKind, DraftEngineChoice, Event, ModelInfo, ModelRole, QuantChoice, RunMode, RunResult,
    Settings,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::caption::{Caption, CaptionRequest, Captioner, DraftEngine, Drafter};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::files::CheckpointFiles;
use crate::image_io;
use crate::quant::Format;
use crate::speculative::adapt::draft_pass_ms;
use crate::speculative::events::RoundEvent;
use crate::speculative::SpecOptions;

/// One caption to run: which run it is (events carry it), the image file, the mode and settings.
#[derive(Clone, Copy)]
pub struct CaptionJob<'a> {
    pub run: u64,
    pub image_bytes: &'a [u8],
    /// The file name, for messages.
    pub image_name: &'a str,
    pub mode: RunMode,
    pub settings: &'a Settings,
}

/// A checkpoint read and uploaded, not yet in its role ([`Session::prepare`]).
pub struct PendingLoad<B: Backend> {
    info: ModelInfo,
    captioner: Captioner<B>,
}

pub struct Session<B: Backend> {
    pub backend: B,
    target: Option<(Captioner<B>, ModelInfo)>,
    draft: Option<Draft<B>>,
    /// How much memory the loaded weights may take, and what that memory is called in messages.
    budget: Option<MemoryBudget>,
    /// How much a draft's weights may take on the CPU engine beside a GPU target (`None`: no
    /// limit).
    cpu_draft_budget: Option<u64>,
}

/// A draft on the target's engine or on the CPU engine beside it (boxed: the two differ in size).
pub enum DraftOn<B: Backend> {
    Same(Box<Drafter<B>>),
    Cpu(Box<Drafter<CpuBackend>>),
}

/// Which side of a [`DraftOn`] a draft runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftSide {
    /// The target's engine.
    Same,
    /// The CPU engine.
    Cpu,
}

/// The loaded draft, where it runs, and the choice it was placed for (`None`: not placed since it
/// or the target loaded).
struct Draft<B: Backend> {
    on: DraftOn<B>,
    info: ModelInfo,
    placed_for: Option<DraftEngineChoice>,
}

/// "auto" tries the CPU engine only for drafts whose weights take at most this much once loaded:
/// a copy is loaded there to be measured, and a bigger model is slower on the CPU than on any GPU.
pub const AUTO_CPU_DRAFT_MAX_BYTES: u64 = 1 << 30;

/// Draft passes are timed for placement after at most this many tokens of context (the prompt's
/// length when shorter), so measuring stays quick on the CPU engine.
const PLACE_PREFIX_MAX: usize = 128;

/// Where a draft runs, from the choice and one draft pass's cost in ms on each engine (`None`:
/// not tried there, or it could not load there). "auto" picks the CPU engine only when a pass
/// measured strictly cheaper there; a forced engine is used when the draft loaded there. A draft
/// always runs where it is available.
pub fn draft_side(
    choice: DraftEngineChoice,
    same_ms: Option<f64>,
    cpu_ms: Option<f64>,
) -> DraftSide {
    let usable = |ms: Option<f64>| ms.filter(|t| t.is_finite() && *t >= 0.0);
    match (choice, usable(same_ms), usable(cpu_ms)) {
        (DraftEngineChoice::Cpu, _, Some(_)) => DraftSide::Cpu,
        (DraftEngineChoice::Same, Some(_), _) => DraftSide::Same,
        (DraftEngineChoice::Auto, Some(same), Some(cpu)) if cpu < same => DraftSide::Cpu,
        (_, None, Some(_)) => DraftSide::Cpu,
        _ => DraftSide::Same,
    }
}

/// The engine a session's backend is, as messages name it (known by its tensor type, as
/// `caption_speculative_with` knows a shared engine).
fn engine_kind<B: Backend>() -> BackendKind {
    let cpu = TypeId::of::<<CpuBackend as Backend>::Tensor>();
    if TypeId::of::<B::Tensor>() == cpu {
        BackendKind::Cpu
    } else {
        BackendKind::Webgpu
    }
}

/// A limit on the bytes of loaded weights (see [`Session::set_memory_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub bytes: u64,
    /// "GPU memory", "wasm memory": what runs out.
    pub what: &'static str,
}

/// The lowest score the page is sent: JSON has no infinities.
const SCORE_FLOOR: f32 = -1e30;

impl<B: Backend> Session<B> {
    pub fn new(backend: B) -> Self {
        Session {
            backend,
            target: None,
            draft: None,
            budget: None,
            cpu_draft_budget: None,
        }
    }

    /// Never put a draft whose weights take more than `bytes` on the CPU engine beside a GPU
    /// target (the page: wasm memory ends at 4 GiB). `None`: no limit.
    pub fn set_cpu_draft_budget(&mut self, bytes: Option<u64>) {
        self.cpu_draft_budget = bytes;
    }

    /// Refuse, before reading any weight, a model whose weights would not fit beside the loaded
    /// ones (WebGPU does not tell how much memory a device has: the page takes it from the user,
    /// the CPU engine in the browser from the wasm32 address space). `None`: no limit.
    pub fn set_memory_budget(&mut self, budget: Option<MemoryBudget>) {
        self.budget = budget;
    }

    /// Check that a checkpoint would fit the memory budget: the checkpoint opened and checked, as
    /// [`Self::prepare`] would load it. Reads only configs and safetensors headers, so the page
    /// runs it before downloading the weights.
    pub fn check_fits(
        &self,
        role: ModelRole,
        files: &dyn CheckpointFiles,
        bytes: u64,
        quantize: QuantChoice,
    ) -> Result<()> {
        self.open_checked(role, files, bytes, quantize).map(|_| ())
    }

    /// Open a checkpoint, set how it is quantized while loading, and check it fits the budget.
    fn open_checked(
        &self,
        role: ModelRole,
        files: &dyn CheckpointFiles,
        bytes: u64,
        quantize: QuantChoice,
    ) -> Result<(Checkpoint, ModelInfo)> {
        let mut checkpoint = Checkpoint::from_files(files)?;
        let mut summary = summary(&checkpoint);
        // Only plain checkpoints are quantized while loading; quantized ones load as stored.
        let stored = checkpoint.weights.format();
        let plain = stored.is_none();
        if let Some(f) = stored {
            summary.push_str(&format!(", {} weights", f.name()));
        }
        if plain {
            let on_load = quantize.format(bytes);
            checkpoint.weights.set_quantize_on_load(on_load);
            if let Some(f) = on_load {
                summary.push_str(&format!(", {} on load", f.name()));
            }
        }
        let need = checkpoint.weights.loaded_bytes();
        if let Some(budget) = self.budget {
            // Every loaded model counts, the one being replaced too: it stays until the new one
            // has loaded.
            // A draft on the CPU engine beside a GPU target takes none of the GPU's memory.
            let held: u64 = self
                .models()
                .iter()
                .filter(|m| m.engine == engine_kind::<B>())
                .map(|m| m.loaded_bytes)
                .sum();
            if need + held > budget.bytes {
                let q4 = checkpoint.weights.loaded_bytes_as(Some(Format::Q4));
                let hint = if plain && q4 < need && q4 + held <= budget.bytes {
                    format!(
                        "as q4 it would need {}: choose q4 under Settings, quantize while loading",
                        gib(q4)
                    )
                } else {
                    "try a smaller model".to_string()
                };
                return Err(Error::file(
                    files.source(),
                    format!(
                        "the {} model does not fit: its weights need {} of {} and the models loaded now hold {}, but this device allows {}; {hint}. The loaded models stay",
                        role_label(role),
                        gib(need),
                        budget.what,
                        gib(held),
                        gib(budget.bytes),
                    ),
                ));
            }
        }
        let info = ModelInfo {
            role,
            source: files.source(),
            bytes,
            loaded_bytes: need,
            summary,
            engine: engine_kind::<B>(),
            pass_ms: Vec::new(),
            engine_why: String::new(),
        };
        Ok((checkpoint, info))
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        let t = self.target.as_ref().map(|(_, i)| i.clone());
        let d = self.draft.as_ref().map(|d| d.info.clone());
        t.into_iter().chain(d).collect()
    }

    pub fn has_target(&self) -> bool {
        self.target.is_some()
    }

    pub fn has_draft(&self) -> bool {
        self.draft.is_some()
    }

    /// Which engine the draft runs on, if one is loaded.
    pub fn draft_side(&self) -> Option<DraftSide> {
        self.draft.as_ref().map(|d| match d.on {
            DraftOn::Same(_) => DraftSide::Same,
            DraftOn::Cpu(_) => DraftSide::Cpu,
        })
    }

    /// Put the draft where `choice` says: beside a GPU target, one draft pass is measured on each
    /// engine it may run on (a copy is loaded on the other engine for that; the one not chosen is
    /// dropped) and, for "auto", the cheaper one is kept. Nothing is measured again until the
    /// choice, the draft or the target changes. Returns whether what the draft's [`ModelInfo`]
    /// says changed (where it runs, what a pass cost); with the target on the CPU engine the
    /// draft is simply there too.
    pub async fn place_draft(&mut self, choice: DraftEngineChoice) -> bool {
        let placed = self
            .draft
            .as_ref()
            .is_some_and(|d| d.placed_for == Some(choice));
        if placed || self.target.is_none() {
            return false;
        }
        let Some(draft) = self.draft.take() else {
            return false;
        };
        let before = draft.info.clone();
        let draft = self.placed(draft, choice).await;
        let changed = draft.info != before;
        self.draft = Some(draft);
        changed
    }

    async fn placed(&self, draft: Draft<B>, choice: DraftEngineChoice) -> Draft<B> {
        let Draft { on, mut info, .. } = draft;
        let here = engine_kind::<B>();
        let Some((target, _)) = self.target.as_ref() else {
            return Draft {
                on,
                info,
                placed_for: None,
            };
        };
        if here == BackendKind::Cpu {
            info.engine = BackendKind::Cpu;
            info.pass_ms.clear();
            info.engine_why.clear();
            return Draft {
                on,
                info,
                placed_for: Some(choice),
            };
        }
        let b = &self.backend;
        let prefix = target.default_prompt_len().min(PLACE_PREFIX_MAX);
        let top_k = SpecOptions::default().top_k;
        let small = info.loaded_bytes <= AUTO_CPU_DRAFT_MAX_BYTES;
        let want_cpu =
            choice == DraftEngineChoice::Cpu || (choice == DraftEngineChoice::Auto && small);
        let want_same = choice != DraftEngineChoice::Cpu;
        let mut failed = None;
        let too_big = self
            .cpu_draft_budget
            .filter(|&limit| info.loaded_bytes > limit);
        let want_cpu = match too_big {
            Some(limit) if want_cpu => {
                failed = Some(format!(
                    "it needs {}, more than the CPU engine may hold ({})",
                    gib(info.loaded_bytes),
                    gib(limit)
                ));
                false
            }
            _ => want_cpu,
        };
        // Measure the draft where it is, and a copy on the other engine where it may go.
        let (same_ms, cpu_ms, other) = match &on {
            DraftOn::Same(d) => {
                let same = draft_pass_ms(b, &d.captioner.model, prefix, top_k).await;
                let copy = match want_cpu.then(|| d.load_on(&CpuBackend)) {
                    Some(Ok(m)) => Some(m),
                    Some(Err(e)) => {
                        failed = Some(format!("it could not load on the CPU engine: {e}"));
                        None
                    }
                    None => None,
                };
                let cpu = match &copy {
                    Some(m) => Some(draft_pass_ms(&CpuBackend, m, prefix, top_k).await),
                    None => None,
                };
                (Some(same), cpu, copy.map(|m| OtherCopy::Cpu(Box::new(m))))
            }
            DraftOn::Cpu(d) => {
                let cpu = draft_pass_ms(&CpuBackend, &d.captioner.model, prefix, top_k).await;
                let copy = match want_same.then(|| d.load_on(b)) {
                    Some(Ok(m)) => Some(m),
                    Some(Err(e)) => {
                        failed = Some(format!("it could not load on {}: {e}", here.engine_label()));
                        None
                    }
                    None => None,
                };
                let same = match &copy {
                    Some(m) => Some(draft_pass_ms(b, m, prefix, top_k).await),
                    None => None,
                };
                (same, Some(cpu), copy.map(|m| OtherCopy::Same(Box::new(m))))
            }
        };
        let side = draft_side(choice, same_ms, cpu_ms);
        let on = match (on, other, side) {
            (DraftOn::Same(d), Some(OtherCopy::Cpu(m)), DraftSide::Cpu) => {
                DraftOn::Cpu(Box::new(d.moved(*m)))
            }
            (DraftOn::Cpu(d), Some(OtherCopy::Same(m)), DraftSide::Same) => {
                DraftOn::Same(Box::new(d.moved(*m)))
            }
            (on, _, _) => on,
        };
        info.engine = match on {
            DraftOn::Same(_) => here,
            DraftOn::Cpu(_) => BackendKind::Cpu,
        };
        info.pass_ms = [(here, same_ms), (BackendKind::Cpu, cpu_ms)]
            .into_iter()
            .filter_map(|(k, ms)| ms.map(|ms| (k, ms)))
            .collect();
        info.engine_why = match (choice, failed) {
            (_, Some(why)) => why,
            (DraftEngineChoice::Auto, None) if cpu_ms.is_none() => format!(
                "auto: drafts over {} stay on the target's engine",
                gib(AUTO_CPU_DRAFT_MAX_BYTES)
            ),
            (DraftEngineChoice::Auto, None) => "auto: the cheaper pass".to_string(),
            (_, None) => "as set in Settings".to_string(),
        };
        Draft {
            on,
            info,
            placed_for: Some(choice),
        }
    }

    /// Load a checkpoint into a role, weights as stored. On any error nothing changes. Loading a
    /// target re-pairs the current draft with it; a draft that cannot serve the new target is
    /// unloaded, and the returned notice says why.
    pub fn load(
        &mut self,
        role: ModelRole,
        files: &dyn CheckpointFiles,
        bytes: u64,
    ) -> Result<(ModelInfo, Option<String>)> {
        self.load_as(role, files, bytes, QuantChoice::AsStored)
    }

    /// [`Self::load`], quantizing a plain checkpoint's big matrices while loading as `quantize`
    /// says.
    pub fn load_as(
        &mut self,
        role: ModelRole,
        files: &dyn CheckpointFiles,
        bytes: u64,
        quantize: QuantChoice,
    ) -> Result<(ModelInfo, Option<String>)> {
        let pending = self.prepare(role, files, bytes, quantize)?;
        self.commit(pending)
    }

    /// Read, check and upload a checkpoint without touching the loaded models: the caller may
    /// still refuse it (e.g. when the device reports it ran out of memory) by dropping it.
    pub fn prepare(
        &self,
        role: ModelRole,
        files: &dyn CheckpointFiles,
        bytes: u64,
        quantize: QuantChoice,
    ) -> Result<PendingLoad<B>> {
        let (checkpoint, info) = self.open_checked(role, files, bytes, quantize)?;
        let captioner = Captioner::new(&self.backend, checkpoint)?;
        Ok(PendingLoad { info, captioner })
    }

    /// Put a prepared model in its role (see [`Self::load`]).
    pub fn commit(&mut self, pending: PendingLoad<B>) -> Result<(ModelInfo, Option<String>)> {
        let PendingLoad { info, captioner } = pending;
        match info.role {
            ModelRole::Draft => {
                let (target, _) = self.target.as_ref().ok_or_else(|| {
                    Error::invalid("load a target model before its draft".to_string())
                })?;
                let drafter = target.drafter(captioner)?;
                self.draft = Some(Draft {
                    on: DraftOn::Same(Box::new(drafter)),
                    info: info.clone(),
                    placed_for: None,
                });
                Ok((info, None))
            }
            ModelRole::Target => {
                let mut notice = None;
                if let Some(old) = self.draft.take() {
                    let draft_info = old.info;
                    // Paired again where it runs; placed again for the new target.
                    let paired = match old.on {
                        DraftOn::Same(d) => captioner
                            .drafter(d.captioner)
                            .map(|d| DraftOn::Same(Box::new(d))),
                        DraftOn::Cpu(d) => captioner
                            .drafter(d.captioner)
                            .map(|d| DraftOn::Cpu(Box::new(d))),
                    };
                    match paired {
                        Ok(on) => {
                            self.draft = Some(Draft {
                                on,
                                info: draft_info,
                                placed_for: None,
                            })
                        }
                        Err(e) => {
                            notice = Some(format!(
                            "the draft {} was unloaded: {e}; load a matching draft to speculate",
                            draft_info.source
                        ))
                        }
                    }
                }
                self.target = Some((captioner, info.clone()));
                Ok((info, notice))
            }
        }
    }

    /// Caption an image. Events go to `emit` as they happen; `cancelled` is polled at every
    /// token (plain) or round (speculative). Speculative mode without a draft decodes plainly.
    pub async fn caption(
        &mut self,
        job: CaptionJob<'_>,
        cancelled: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(Event),
    ) -> Result<RunResult> {
        let CaptionJob {
            run,
            image_bytes,
            image_name,
            mode,
            settings,
        } = job;
        settings.validate()?;
        let image = image_io::decode_rgb(image_bytes, image_name, image_io::DEFAULT_MAX_PIXELS)?;
        if mode == RunMode::Speculative && self.place_draft(settings.draft_engine).await {
            emit(Event::Models {
                models: self.models(),
            });
        }
        let (target, _) = self
            .target
            .as_ref()
            .ok_or_else(|| Error::invalid("no model is loaded yet"))?;
        let req = request(target, settings);
        emit(Event::Started { run, mode });
        if let Some(message) = demo_notice(&self.target, &image) {
            emit(Event::InputNotice { run, message });
        }
        let b = &self.backend;
        let spec = SpecRun {
            run,
            image: &image,
            req: &req,
            settings,
            cancelled,
            emit,
        };
        let caption = match (mode, self.draft.as_mut().map(|d| &mut d.on)) {
            (RunMode::Speculative, Some(DraftOn::Same(drafter))) => {
                speculate(target, b, b, drafter, spec).await?
            }
            (RunMode::Speculative, Some(DraftOn::Cpu(drafter))) => {
                speculate(target, b, &CpuBackend, drafter, spec).await?
            }
            _ => {
                let tok = &target.checkpoint.tokenizer;
                let mut tokens = Vec::new();
                let SpecRun {
                    cancelled, emit, ..
                } = spec;
                target
                    .caption(b, &image, &req, |t| {
                        tokens.push(t);
                        let text = tok.decode(&tokens).unwrap_or_default();
                        emit(Event::Text { run, text });
                        !cancelled()
                    })
                    .await?
            }
        };
        Ok(result(&caption))
    }
}

/// One speculative caption's inputs and where its events go.
struct SpecRun<'a> {
    run: u64,
    image: &'a image::RgbImage,
    req: &'a CaptionRequest,
    settings: &'a Settings,
    cancelled: &'a dyn Fn() -> bool,
    emit: &'a mut dyn FnMut(Event),
}

/// A speculative caption with the draft on engine `d` (the target's `b`, or the CPU engine).
async fn speculate<B: Backend, D: Backend>(
    target: &Captioner<B>,
    b: &B,
    d: &D,
    drafter: &mut Drafter<D>,
    r: SpecRun<'_>,
) -> Result<Caption> {
    let SpecRun {
        run,
        image,
        req,
        settings,
        cancelled,
        emit,
    } = r;
    if settings.adaptive && drafter.cost.is_none() {
        emit(Event::Progress {
            task: "measuring this device's costs for the adaptive tree".into(),
            done: 0,
            total: 1,
        });
        target
            .calibrate_with(b, d, drafter, settings.spec_options())
            .await;
    }
    // Measured costs stay for later adaptive runs; a fixed-size run sets them aside.
    let saved = if settings.adaptive {
        None
    } else {
        drafter.cost.take()
    };
    let tok = &target.checkpoint.tokenizer;
    let mut tokens = Vec::new();
    let out = target
        .caption_speculative_with(
            b,
            DraftEngine::new(d, drafter),
            image,
            req,
            settings.spec_options(),
            |round: &RoundEvent| {
                tokens.extend_from_slice(&round.emitted);
                let text = tok.decode(&tokens).unwrap_or_default();
                emit(Event::Round {
                    run,
                    round: sanitize(round),
                    text,
                });
                !cancelled()
            },
        )
        .await;
    if saved.is_some() {
        drafter.cost = saved;
    }
    out
}

/// The draft loaded on the other engine while placing it.
enum OtherCopy<B: Backend> {
    Same(Box<crate::model::LlavaModel<B>>),
    Cpu(Box<crate::model::LlavaModel<CpuBackend>>),
}

/// The bundled demo target's folder (`web/models/demo/target`, served or picked).
const DEMO_TARGET: &str = "demo/target";

/// What to tell a user who gives the demo models something other than a generated scene: they
/// were trained on 64x64 procedural scenes only, so a photograph gets a caption about shapes.
fn demo_notice<B: Backend>(
    target: &Option<(Captioner<B>, ModelInfo)>,
    image: &image::RgbImage,
) -> Option<String> {
    let (_, info) = target.as_ref()?;
    let side = crate::scenes::IMAGE_SIZE;
    let source = info.source.trim_end_matches('/');
    let demo = source == DEMO_TARGET || source.ends_with(&format!("/{DEMO_TARGET}"));
    (demo && image.dimensions() != (side, side)).then(|| {
        "The demo models were trained on generated scenes (coloured shapes on a grid) only, so \
         this picture gets a caption in their words. For photographs, load a real LLaVA in \
         Settings → Models."
            .to_string()
    })
}

/// The caption request a settings panel describes, with the instruction put through the
/// target's chat template.
fn request<B: Backend>(target: &Captioner<B>, settings: &Settings) -> CaptionRequest {
    let prompt = target.checkpoint.default_prompt(&settings.instruction).ok();
    CaptionRequest {
        prompt,
        max_new_tokens: settings.max_new_tokens,
        sampling: settings.sampling(),
    }
}

fn result(c: &Caption) -> RunResult {
    let gen_ms = c.timings_ms.prefill_ms + c.timings_ms.decode_ms;
    RunResult {
        text: c.text.clone(),
        tokens: c.tokens.clone(),
        tokens_per_s: if gen_ms > 0.0 {
            c.tokens.len() as f64 / (gen_ms / 1e3)
        } else {
            0.0
        },
        total_ms: c.timings_ms.total_ms,
        spec: c.spec.clone(),
    }
}

/// A round event the page can always parse (finite numbers only).
fn sanitize(round: &RoundEvent) -> RoundEvent {
    let mut r = round.clone();
    for n in &mut r.nodes {
        if !n.score.is_finite() {
            n.score = SCORE_FLOOR;
        }
        if !n.prob.is_finite() {
            n.prob = 0.0;
        }
    }
    r
}

fn role_label(role: ModelRole) -> &'static str {
    match role {
        ModelRole::Target => "target",
        ModelRole::Draft => "draft",
    }
}

/// Bytes as "1.61 GiB".
fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// One line describing a checkpoint.
fn summary(c: &Checkpoint) -> String {
    let t = &c.config.text;
    let v = &c.config.vision;
    format!(
        "{} layers x {} hidden text decoder, vocabulary {}; vision {} px, {} layers",
        t.num_hidden_layers, t.hidden_size, t.vocab_size, v.image_size, v.num_hidden_layers
    )
}
