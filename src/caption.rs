//! Image in, caption out: the whole pipeline for one image, on any backend.
//! RGB image -> `vision::preprocess` -> `LlavaModel::encode_image` -> prompt ids (`<image>`
//! expanded) -> `generate::decode_plain`.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::error::Result;
use crate::generate::{decode_plain, PlainInputs};
use crate::model::LlavaModel;
use crate::sampling::SamplingOptions;
use crate::speculative::adapt::CostModel;
use crate::speculative::decode::{decode_speculative, SpecInputs, SpecResult};
use crate::speculative::events::RoundEvent;
use crate::speculative::SpecOptions;
use crate::weights::NameStyle;

/// What the user asks for; the defaults are what the CLI and the app use.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRequest {
    /// Literal prompt containing the image token; `None`: the checkpoint's chat template.
    pub prompt: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
}

impl Default for CaptionRequest {
    fn default() -> Self {
        CaptionRequest {
            prompt: None,
            max_new_tokens: 64,
            sampling: SamplingOptions::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caption {
    pub text: String,
    /// Generated ids, EOS excluded.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    #[serde(skip)]
    pub hit_eos: bool,
    pub timings_ms: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecSummary>,
}

/// Speculation statistics of one caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecSummary {
    /// Target passes after prefill (one per round).
    pub rounds: usize,
    /// Mean tokens per target pass, bonus token included.
    pub tau: f64,
    /// Mean accepted draft tokens per target pass (bonus excluded).
    pub tau_without_bonus: f64,
    pub accepted_per_round: Vec<usize>,
    pub draft_passes: usize,
    /// Rows over all draft passes (a pass runs one row per frontier node it expands).
    pub draft_rows: usize,
    /// Mean draft nodes verified per round.
    pub mean_tree_nodes: f64,
    /// Whether the draft reused the target's vision features (byte-identical towers).
    pub shared_vision: bool,
}

impl SpecSummary {
    fn new(r: &SpecResult, shared_vision: bool) -> Self {
        let rounds = r.rounds.max(1) as f64;
        let accepted: usize = r.accepted_per_round.iter().sum();
        SpecSummary {
            rounds: r.rounds,
            tau: (accepted + r.rounds) as f64 / rounds,
            tau_without_bonus: accepted as f64 / rounds,
            accepted_per_round: r.accepted_per_round.clone(),
            draft_passes: r.draft_passes,
            draft_rows: r.draft_rows,
            mean_tree_nodes: r.verified_per_round.iter().sum::<usize>() as f64 / rounds,
            shared_vision,
        }
    }
}

pub struct Captioner<B: Backend> {
    pub checkpoint: Checkpoint,
    pub model: LlavaModel<B>,
}

/// A draft model paired with a target: checked compatible once, with vision sharing decided once.
pub struct Drafter<B: Backend> {
    pub captioner: Captioner<B>,
    /// The draft's vision tower and processor are identical to the target's: encode images once.
    pub shared_vision: bool,
    /// Measured device costs; when set, each round's tree size is chosen from them.
    pub cost: Option<CostModel>,
}

impl<B: Backend> Drafter<B> {
    /// This draft loaded again on engine `d`, from the checkpoint it holds (to measure it there,
    /// or to move it: [`Self::moved`]).
    pub fn load_on<D: Backend>(&self, d: &D) -> Result<LlavaModel<D>> {
        let c = &self.captioner.checkpoint;
        LlavaModel::load(d, &c.weights, &c.config)
    }

    /// This draft on the engine `model` was loaded on by [`Self::load_on`]; the copy on this
    /// engine is dropped. Costs measured here do not hold there: they are measured again.
    pub fn moved<D: Backend>(self, model: LlavaModel<D>) -> Drafter<D> {
        Drafter {
            captioner: Captioner {
                checkpoint: self.captioner.checkpoint,
                model,
            },
            shared_vision: self.shared_vision,
            cost: None,
        }
    }
}

/// The draft side of a speculative caption: the engine the draft runs on (the target's, or
/// another one, e.g. the CPU next to a GPU target) and the draft model loaded there.
pub struct DraftEngine<'a, D: Backend> {
    pub engine: &'a D,
    pub drafter: &'a Drafter<D>,
}

impl<'a, D: Backend> DraftEngine<'a, D> {
    pub fn new(engine: &'a D, drafter: &'a Drafter<D>) -> Self {
        DraftEngine { engine, drafter }
    }
}

/// The user text of the default prompt.
pub const DEFAULT_INSTRUCTION: &str = "Describe the image.";

impl<B: Backend> Captioner<B> {
    pub fn new(b: &B, checkpoint: Checkpoint) -> Result<Self> {
        let model = LlavaModel::load(b, &checkpoint.weights, &checkpoint.config)?;
        Ok(Captioner { checkpoint, model })
    }

    /// The prompt text for a request.
    pub fn prompt_text(&self, req: &CaptionRequest) -> Result<String> {
        match &req.prompt {
            Some(p) => Ok(p.clone()),
            None => self.checkpoint.default_prompt(DEFAULT_INSTRUCTION),
        }
    }

    /// `wanted` new tokens, cut so that the prompt and the caption stay inside the text model's
    /// sliding window (Mistral): past it transformers masks the oldest keys, which this engine does
    /// not, so the caption ends there instead of drifting from the reference. An error when the
    /// prompt alone fills the window.
    pub fn new_token_room(&self, prompt_len: usize, wanted: usize) -> Result<usize> {
        let Some(window) = self.model.config.text.sliding_window else {
            return Ok(wanted);
        };
        if prompt_len >= window {
            return Err(Error::invalid(format!(
                "the prompt takes {prompt_len} tokens (image included), and this model attends to {window} at most (text_config.sliding_window): use a shorter prompt"
            )));
        }
        Ok(wanted.min(window - prompt_len))
    }

    /// Pixel values for an image, and their prompt ids.
    pub fn prepare(
        &self,
        image: &image::RgbImage,
        req: &CaptionRequest,
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        let pixels = self.checkpoint.processor.preprocess(image)?;
        let ids = self.checkpoint.prompt_ids(&self.prompt_text(req)?)?;
        Ok((pixels, ids))
    }

    pub async fn caption(
        &self,
        b: &B,
        image: &image::RgbImage,
        req: &CaptionRequest,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Caption> {
        let t0 = web_time::Instant::now();
        let (pixels, ids) = self.prepare(image, req)?;
        // Checked before the image is encoded: a refused prompt costs no vision pass.
        let max_new_tokens = self.new_token_room(ids.len(), req.max_new_tokens)?;
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = web_time::Instant::now();
        let features = self.model.encode_image(b, &pixels)?;
        let vision_ms = t1.elapsed().as_secs_f64() * 1e3;
        let eos = self.checkpoint.tokenizer.eos_ids();
        let inputs = PlainInputs {
            model: &self.model,
            prompt_ids: &ids,
            image_features: Some(&features),
            eos: &eos,
            max_new_tokens,
            sampling: req.sampling,
        };
        let out = decode_plain(b, inputs, on_token).await?;
        let text = self.checkpoint.tokenizer.decode(&out.tokens)?;
        Ok(Caption {
            text,
            tokens: out.tokens,
            prompt_tokens: ids.len(),
            hit_eos: out.hit_eos,
            timings_ms: Timings {
                preprocess_ms,
                vision_ms,
                prefill_ms: out.prefill_ms,
                decode_ms: out.decode_ms,
                total_ms: t0.elapsed().as_secs_f64() * 1e3,
            },
            spec: None,
        })
    }

    /// Pair a draft (on this backend or another) with this target, refusing one that cannot
    /// speculate for it.
    pub fn drafter<D: Backend>(&self, draft: Captioner<D>) -> Result<Drafter<D>> {
        self.check_draft(&draft)?;
        let shared_vision = self.shares_vision_with(&draft);
        Ok(Drafter {
            captioner: draft,
            shared_vision,
            cost: None,
        })
    }

    /// Measure verification and drafting costs on this device so the tree adapts to them.
    pub async fn calibrate(&self, b: &B, drafter: &mut Drafter<B>, options: SpecOptions) {
        self.calibrate_with(b, b, drafter, options).await;
    }

    /// `calibrate` with the draft on backend `d`.
    pub async fn calibrate_with<D: Backend>(
        &self,
        b: &B,
        d: &D,
        drafter: &mut Drafter<D>,
        options: SpecOptions,
    ) {
        let models = (&self.model, &drafter.captioner.model);
        let prefix = self.default_prompt_len();
        let (budget, top_k) = (options.budget, options.top_k);
        let cost = CostModel::measure(b, d, models, prefix, budget, top_k).await;
        drafter.cost = Some(cost);
    }

    /// How many tokens a default caption's prompt has (image tokens included): the context costs
    /// are timed after (64 when the prompt cannot be made).
    pub fn default_prompt_len(&self) -> usize {
        self.prompt_text(&CaptionRequest::default())
            .and_then(|p| self.checkpoint.prompt_ids(&p))
            .map_or(64, |ids| ids.len())
    }

    /// Refuse a draft that cannot speculate for this target.
    pub fn check_draft<D: Backend>(&self, draft: &Captioner<D>) -> Result<()> {
        let (t, d) = (&self.checkpoint.tokenizer, &draft.checkpoint.tokenizer);
        if !t.same_vocabulary(d) {
            return Err(Error::invalid(format!(
                "the draft's tokenizer ({}) differs from the target's ({}): speculative decoding needs identical vocabularies",
                d.name(),
                t.name()
            )));
        }
        if draft.model.config.text.vocab_size != self.model.config.text.vocab_size {
            return Err(Error::invalid(format!(
                "the draft's vocabulary size {} differs from the target's {}",
                draft.model.config.text.vocab_size, self.model.config.text.vocab_size
            )));
        }
        Ok(())
    }

    /// Whether the draft's vision tower and image processor are identical to the target's, so the
    /// image is encoded once.
    pub fn shares_vision_with<D: Backend>(&self, draft: &Captioner<D>) -> bool {
        let (a, b) = (&self.checkpoint, &draft.checkpoint);
        a.config.vision == b.config.vision
            && a.config.vision_feature_layers == b.config.vision_feature_layers
            && a.config.select_strategy == b.config.select_strategy
            && a.processor == b.processor
            && a.weights.fingerprint(&NameStyle::detect(&a.weights).vision)
                == b.weights.fingerprint(&NameStyle::detect(&b.weights).vision)
    }

    /// Caption with speculative decoding: `draft` proposes trees, this model verifies them.
    /// The output equals `caption`'s (greedy: token for token; sampling: in distribution).
    pub async fn caption_speculative(
        &self,
        b: &B,
        drafter: &Drafter<B>,
        image: &image::RgbImage,
        req: &CaptionRequest,
        options: SpecOptions,
        on_round: impl FnMut(&RoundEvent) -> bool,
    ) -> Result<Caption> {
        let draft = DraftEngine::new(b, drafter);
        self.caption_speculative_with(b, draft, image, req, options, on_round)
            .await
    }

    /// `caption_speculative` with the draft on backend `d`: when `d` is another engine than `b`
    /// (another backend type, or another device of the same type), shared image features are read
    /// back from `b` and uploaded to `d`.
    pub async fn caption_speculative_with<D: Backend>(
        &self,
        b: &B,
        draft: DraftEngine<'_, D>,
        image: &image::RgbImage,
        req: &CaptionRequest,
        options: SpecOptions,
        on_round: impl FnMut(&RoundEvent) -> bool,
    ) -> Result<Caption> {
        let (d, drafter) = (draft.engine, draft.drafter);
        let (draft, shared_vision) = (&drafter.captioner, drafter.shared_vision);
        let t0 = web_time::Instant::now();
        let (pixels, ids) = self.prepare(image, req)?;
        let max_new_tokens = self.new_token_room(ids.len(), req.max_new_tokens)?;
        let draft_ids = draft.checkpoint.prompt_ids(&self.prompt_text(req)?)?;
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = web_time::Instant::now();
        let (tf, df) = if shared_vision {
            let v = self.model.vision_features(b, &pixels)?;
            // The same engine is the same object: `b` and `d` at one address.
            let same_engine = std::ptr::eq(b as *const B as *const u8, d as *const D as *const u8);
            let on_d = (&v as &dyn std::any::Any)
                .downcast_ref::<D::Tensor>()
                .filter(|_| same_engine);
            let df = match on_d {
                Some(same) => draft.model.project(d, same),
                None => {
                    let (rows, cols) = b.dims(&v);
                    draft
                        .model
                        .project(d, &d.tensor(b.read(&v).await, rows, cols))
                }
            };
            (self.model.project(b, &v), df)
        } else {
            let draft_pixels = draft.checkpoint.processor.preprocess(image)?;
            (
                self.model.encode_image(b, &pixels)?,
                draft.model.encode_image(d, &draft_pixels)?,
            )
        };
        let vision_ms = t1.elapsed().as_secs_f64() * 1e3;
        let eos = self.checkpoint.tokenizer.eos_ids();
        let tok = &self.checkpoint.tokenizer;
        let inputs = SpecInputs {
            target: &self.model,
            draft: &draft.model,
            target_ids: &ids,
            draft_ids: &draft_ids,
            target_features: Some(&tf),
            draft_features: Some(&df),
            eos: &eos,
            max_new_tokens,
            sampling: req.sampling,
            options,
            cost: drafter.cost.as_ref(),
            learn_costs: true,
        };
        let out = decode_speculative(b, d, inputs, &|t| tok.token_text(t), on_round).await?;
        Ok(Caption {
            text: tok.decode(&out.tokens)?,
            prompt_tokens: ids.len(),
            hit_eos: out.hit_eos,
            timings_ms: Timings {
                preprocess_ms,
                vision_ms,
                prefill_ms: out.prefill_ms,
                decode_ms: out.decode_ms,
                total_ms: t0.elapsed().as_secs_f64() * 1e3,
            },
            spec: Some(SpecSummary::new(&out, shared_vision)),
            tokens: out.tokens,
        })
    }
}
