//! The engine state the worker owns: one backend, the loaded target (and draft), and the runs.
//!
//! Backend-agnostic and free of browser APIs, so the tests drive exactly what the page drives:
//! load checkpoints from files, caption an image in plain or speculative mode, stream
//! [`Event`]s, cancel. Loading never disturbs what is already loaded: a new model replaces the
//! old one only after it has loaded and passed every check.

use crate::app::messages::{
    Event, ModelInfo, ModelRole, QuantChoice, RunMode, RunResult, Settings,
};
use crate::backend::Backend;
use crate::caption::{Caption, CaptionRequest, Captioner, Drafter};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::files::CheckpointFiles;
use crate::image_io;
use crate::speculative::events::RoundEvent;

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
    draft: Option<(Drafter<B>, ModelInfo)>,
}

/// The lowest score the page is sent: JSON has no infinities.
const SCORE_FLOOR: f32 = -1e30;

impl<B: Backend> Session<B> {
    pub fn new(backend: B) -> Self {
        Session {
            backend,
            target: None,
            draft: None,
        }
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        let t = self.target.as_ref().map(|(_, i)| i.clone());
        let d = self.draft.as_ref().map(|(_, i)| i.clone());
        t.into_iter().chain(d).collect()
    }

    pub fn has_target(&self) -> bool {
        self.target.is_some()
    }

    pub fn has_draft(&self) -> bool {
        self.draft.is_some()
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
        let mut checkpoint = Checkpoint::from_files(files)?;
        let mut summary = summary(&checkpoint);
        // Only plain checkpoints are quantized while loading; quantized ones load as stored.
        if checkpoint.weights.format().is_none() {
            let on_load = quantize.format(bytes);
            checkpoint.weights.set_quantize_on_load(on_load);
            if let Some(f) = on_load {
                summary.push_str(&format!(", {} on load", f.name()));
            }
        }
        let info = ModelInfo {
            role,
            source: files.source(),
            bytes,
            summary,
        };
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
                self.draft = Some((drafter, info.clone()));
                Ok((info, None))
            }
            ModelRole::Target => {
                let mut notice = None;
                if let Some((old, draft_info)) = self.draft.take() {
                    match captioner.drafter(old.captioner) {
                        Ok(d) => self.draft = Some((d, draft_info)),
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
        let caption = match (mode, self.draft.as_mut()) {
            (RunMode::Speculative, Some((drafter, _))) => {
                if settings.adaptive && drafter.cost.is_none() {
                    emit(Event::Progress {
                        task: "measuring this device's costs for the adaptive tree".into(),
                        done: 0,
                        total: 1,
                    });
                    target.calibrate(b, drafter, settings.spec_options()).await;
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
                    .caption_speculative(
                        b,
                        drafter,
                        &image,
                        &req,
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
                out?
            }
            _ => {
                let tok = &target.checkpoint.tokenizer;
                let mut tokens = Vec::new();
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

/// One line describing a checkpoint.
fn summary(c: &Checkpoint) -> String {
    let t = &c.config.text;
    let v = &c.config.vision;
    format!(
        "{} layers x {} hidden text decoder, vocabulary {}; vision {} px, {} layers",
        t.num_hidden_layers, t.hidden_size, t.vocab_size, v.image_size, v.num_hidden_layers
    )
}
