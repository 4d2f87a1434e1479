//! Mistral text models (BakLLaVA: `text_config.model_type` "mistral") run as Llama's decoder,
//! which they are up to their sliding window. Past the window transformers masks the oldest keys
//! and this engine does not, so a caption ends at the window: every token up to there is the Llama
//! twin's, plain and speculative, and a prompt that fills the window is refused with a message
//! that names it.

mod common;
use common::{config_edited_copy, demo};

use std::path::Path;

use spec_llava::backend::cpu::CpuBackend;
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::speculative::SpecOptions;

fn open(dir: &Path) -> Captioner<CpuBackend> {
    Captioner::new(&CpuBackend, Checkpoint::open(dir).unwrap()).unwrap()
}

/// The demo target as a Mistral model with a sliding window of `window` tokens.
fn mistral_twin(window: usize) -> Captioner<CpuBackend> {
    open(&config_edited_copy(&demo("target"), "mistral", |c| {
        c["text_config"]["model_type"] = "mistral".into();
        c["text_config"]["sliding_window"] = window.into();
    }))
}

#[test]
fn a_mistral_model_captions_as_its_llama_twin_up_to_its_window() {
    let cpu = CpuBackend;
    let llama = open(&demo("target"));
    let scene = spec_llava::scenes::generate(2024);
    let req = CaptionRequest {
        max_new_tokens: 12,
        ..CaptionRequest::default()
    };
    let full = pollster::block_on(llama.caption(&cpu, &scene.image, &req, |_| true)).unwrap();
    assert!(full.tokens.len() > 3, "{:?}", full.tokens);
    let prompt = full.prompt_tokens;

    // A window 3 tokens past the prompt: the twin's first 3 tokens, then the end.
    let twin = mistral_twin(prompt + 3);
    assert_eq!(twin.model.config.text.sliding_window, Some(prompt + 3));
    let cut = pollster::block_on(twin.caption(&cpu, &scene.image, &req, |_| true)).unwrap();
    assert_eq!(cut.tokens, full.tokens[..3]);
    let drafter = twin.drafter(open(&demo("draft"))).unwrap();
    let options = SpecOptions::default();
    let spec = pollster::block_on(twin.caption_speculative(
        &cpu,
        &drafter,
        &scene.image,
        &req,
        options,
        |_| true,
    ))
    .unwrap();
    assert_eq!(spec.tokens, full.tokens[..3]);

    // A window wider than the caption changes nothing.
    let wide = mistral_twin(prompt + 100);
    let same = pollster::block_on(wide.caption(&cpu, &scene.image, &req, |_| true)).unwrap();
    assert_eq!(same.tokens, full.tokens);

    // A prompt that fills the window: refused, naming the setting.
    let full_window = mistral_twin(prompt);
    let err = pollster::block_on(full_window.caption(&cpu, &scene.image, &req, |_| true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sliding_window") && err.contains(&prompt.to_string()),
        "{err}"
    );
}
