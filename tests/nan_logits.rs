//! NaN logits never become a token id: a model whose logits are NaN (here: its final norm weight is
//! NaN, as an f16 overflow would leave it) stops the caption with "the model produced NaN at token
//! N", plain or speculative, on every engine, and the engine goes on captioning with a good model.
//! A draft that produces NaN only costs speed: the target's caption is unchanged.

mod common;

use common::{checkpoint_dir, fixtures_dir, poisoned_copy};
use spec_llava::backend::Backend;
use spec_llava::caption::{CaptionRequest, Captioner};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::image_io;
use spec_llava::sampling::SamplingOptions;
use spec_llava::speculative::SpecOptions;
use spec_llava::Error;

const FIXTURE: &str = "clip-llama-gqa-f32";

fn image() -> image::RgbImage {
    let dir = fixtures_dir().join(FIXTURE).join("images");
    let first = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .min()
        .unwrap();
    image_io::load_rgb(&first, 1 << 26).unwrap()
}

fn load<B: Backend>(b: &B, dir: &std::path::Path) -> Captioner<B> {
    Captioner::new(b, Checkpoint::open(dir).unwrap()).unwrap()
}

fn requests() -> [CaptionRequest; 2] {
    let greedy = CaptionRequest {
        max_new_tokens: 8,
        ..Default::default()
    };
    let sampled = CaptionRequest {
        sampling: SamplingOptions {
            temperature: 0.8,
            top_p: 0.9,
            seed: 3,
        },
        ..greedy.clone()
    };
    [greedy, sampled]
}

fn assert_nan_error(r: spec_llava::Result<spec_llava::caption::Caption>, what: &str) {
    match r {
        Err(e @ Error::NonFinite { token: 0 }) => {
            assert!(e.to_string().contains("NaN at token 0"), "{what}: {e}");
        }
        other => panic!("{what}: expected the NaN error, got {other:?}"),
    }
}

test_each_backend!(nan_logits_stop_the_caption_with_a_clear_error, |b| {
    let image = image();
    let nan = load(b, &poisoned_copy(FIXTURE, "model.norm.weight", f32::NAN));
    let good = load(b, &checkpoint_dir(FIXTURE));
    for req in requests() {
        let plain = pollster::block_on(nan.caption(b, &image, &req, |_| true));
        assert_nan_error(plain, "plain");
        let drafter = nan.drafter(load(b, &checkpoint_dir(FIXTURE))).unwrap();
        let spec = pollster::block_on(nan.caption_speculative(
            b,
            &drafter,
            &image,
            &req,
            SpecOptions::default(),
            |_| true,
        ));
        assert_nan_error(spec, "speculative");
        // The engine is still usable: the good model captions on it.
        let ok = pollster::block_on(good.caption(b, &image, &req, |_| true)).unwrap();
        assert!(!ok.tokens.is_empty() || ok.hit_eos);
    }
});

test_each_backend!(a_nan_draft_only_costs_speed, |b| {
    let image = image();
    let target = load(b, &checkpoint_dir(FIXTURE));
    let drafter = target
        .drafter(load(
            b,
            &poisoned_copy(FIXTURE, "model.norm.weight", f32::NAN),
        ))
        .unwrap();
    let req = &requests()[0];
    let plain = pollster::block_on(target.caption(b, &image, req, |_| true)).unwrap();
    let spec = pollster::block_on(target.caption_speculative(
        b,
        &drafter,
        &image,
        req,
        SpecOptions::default(),
        |_| true,
    ))
    .unwrap();
    assert_eq!(spec.tokens, plain.tokens);
});
