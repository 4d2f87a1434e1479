//! What a model takes once loaded, and what the page does with it: the estimate read from the
//! safetensors headers bounds what the GPU engine really uploads; a model over the memory budget
//! is refused before any weight is read, with a message that names it and says what would fit,
//! and the loaded models stay; the quantized copy the page keeps (`quantize::Packing`) loads into
//! exactly the model that quantizing while loading makes.

mod common;

use common::{demo, memory_files};

use spec_llava::app::messages::{ModelRole, QuantChoice, RunMode, Settings};
use spec_llava::app::session::{CaptionJob, MemoryBudget, Session};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::Backend;
use spec_llava::checkpoint::Checkpoint;
use spec_llava::files::{MemoryFiles, INDEX_FILE};
use spec_llava::quant::{Format, QuantMatrix, Scheme};
use spec_llava::quantize::Packing;
use spec_llava::scenes;

fn estimate(files: &MemoryFiles, quantize: Option<Format>) -> u64 {
    Checkpoint::from_files(files)
        .unwrap()
        .weights
        .loaded_bytes_as(quantize)
}

/// A greedy plain caption of one generated scene.
fn caption<B: Backend>(s: &mut Session<B>, seed: u64) -> String {
    let png = scenes::png_bytes(&scenes::generate(seed).image).unwrap();
    let settings = Settings {
        max_new_tokens: 24,
        ..Settings::default()
    };
    let job = CaptionJob {
        run: seed,
        image_bytes: &png,
        image_name: "scene.png",
        mode: RunMode::Plain,
        settings: &settings,
    };
    pollster::block_on(s.caption(job, &|| false, &mut |_| {}))
        .unwrap()
        .text
}

#[test]
fn the_estimate_bounds_what_the_gpu_engine_uploads() {
    let Some(gpu) = common::gpu() else { return };
    let mut s = Session::new(gpu);
    let target = memory_files(&demo("target"), "demo/target");
    for (choice, format) in [
        (QuantChoice::AsStored, None),
        (QuantChoice::Q4, Some(Format::Q4)),
        (QuantChoice::Q8, Some(Format::Q8)),
    ] {
        let before = s.backend.weight_bytes_uploaded();
        let (info, _) = s
            .load_as(ModelRole::Target, &target, target.total_bytes(), choice)
            .unwrap();
        let uploaded = s.backend.weight_bytes_uploaded() - before;
        let estimated = estimate(&target, format);
        assert_eq!(info.loaded_bytes, estimated, "{choice:?}");
        // An upper bound (unused tensors count), and a close one: row padding and the vision
        // layer past the feature layer are all it adds or misses.
        assert!(
            uploaded as f64 <= estimated as f64 * 1.02
                && estimated as f64 <= uploaded as f64 * 1.15,
            "{choice:?}: estimated {estimated}, uploaded {uploaded}"
        );
    }
    // q4 holds about a seventh of f32 for the matrices; the demo's embeddings stay f32.
    assert!(estimate(&target, Some(Format::Q4)) < estimate(&target, None) / 2);
}

#[test]
fn a_model_over_the_budget_is_refused_with_what_would_fit_and_the_loaded_ones_stay() {
    let mut s = Session::new(CpuBackend);
    let target = memory_files(&demo("target"), "https://example.org/demo/target");
    let draft = memory_files(&demo("draft"), "https://example.org/demo/draft");
    s.load(ModelRole::Target, &target, target.total_bytes())
        .unwrap();
    let held = s.models()[0].loaded_bytes;
    let before = caption(&mut s, 3);

    // Room for the draft as q4 beside the target, not for it as stored.
    let q4 = estimate(&draft, Some(Format::Q4));
    let plain = estimate(&draft, None);
    assert!(q4 < plain);
    s.set_memory_budget(Some(MemoryBudget {
        bytes: held + q4 + (plain - q4) / 2,
        what: "GPU memory",
    }));
    let err = s
        .load(ModelRole::Draft, &draft, draft.total_bytes())
        .expect_err("over the budget")
        .to_string();
    for part in [
        "https://example.org/demo/draft",
        "does not fit",
        "GPU memory",
        "as q4 it would need",
        "quantize while loading",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    // Refused before anything was read or changed.
    assert_eq!(s.models().len(), 1);
    assert!(!s.has_draft());
    assert_eq!(caption(&mut s, 3), before);
    // The same check runs on the headers alone (the page runs it before downloading).
    assert!(s
        .check_fits(
            ModelRole::Draft,
            &draft,
            draft.total_bytes(),
            QuantChoice::AsStored
        )
        .is_err());
    s.check_fits(
        ModelRole::Draft,
        &draft,
        draft.total_bytes(),
        QuantChoice::Q4,
    )
    .unwrap();

    // As the message says: q4 fits.
    let (info, _) = s
        .load_as(
            ModelRole::Draft,
            &draft,
            draft.total_bytes(),
            QuantChoice::Q4,
        )
        .unwrap();
    assert_eq!(info.loaded_bytes, q4);
    assert!(s.has_draft());

    // Nothing fits a budget smaller than what is loaded: no q4 hint then.
    s.set_memory_budget(Some(MemoryBudget {
        bytes: held,
        what: "GPU memory",
    }));
    let err = s
        .load_as(
            ModelRole::Target,
            &target,
            target.total_bytes(),
            QuantChoice::Q4,
        )
        .expect_err("over the budget")
        .to_string();
    assert!(err.contains("try a smaller model"), "{err}");
    assert_eq!(s.models().len(), 2);
}

/// The packed copy of `files` (in memory, as the page keeps it in its store).
fn packed(files: &MemoryFiles, format: Format, shard_bytes: u64) -> MemoryFiles {
    let checkpoint = Checkpoint::from_files(files).unwrap();
    let mut packing = Packing::new(&checkpoint.weights, format, shard_bytes, None).unwrap();
    let mut out = MemoryFiles::new(&files.source);
    for (name, file) in &files.files {
        if !name.ends_with(".safetensors") && name != INDEX_FILE {
            out.insert_file(name, file.clone());
        }
    }
    let names = packing.shard_names();
    while let Some(shard) = packing.next_shard() {
        let (name, bytes) = shard.unwrap();
        out.insert(&name, bytes);
    }
    assert_eq!(packing.report().shards, names);
    if let Some(index) = packing.index_json() {
        out.insert(INDEX_FILE, index.into_bytes());
    }
    out
}

#[test]
fn the_kept_quantized_copy_is_the_model_quantizing_while_loading_makes() {
    let target = memory_files(&demo("target"), "demo/target");
    for (format, choice) in [(Format::Q4, QuantChoice::Q4), (Format::Q8, QuantChoice::Q8)] {
        let mut on_load = Session::new(CpuBackend);
        on_load
            .load_as(ModelRole::Target, &target, target.total_bytes(), choice)
            .unwrap();
        // Small shards: several of them and an index, as a 7B copy has.
        let copy = packed(&target, format, 1 << 20);
        assert!(
            copy.files.contains_key(INDEX_FILE),
            "{format:?}: one shard only"
        );
        let shards = copy
            .files
            .keys()
            .filter(|n| n.ends_with(".safetensors"))
            .count();
        assert!(shards > 2, "{format:?}: {shards} shards");
        let kept = Checkpoint::from_files(&copy).unwrap();
        assert_eq!(kept.weights.format(), Some(format));
        let mut from_copy = Session::new(CpuBackend);
        let (info, _) = from_copy
            .load_as(ModelRole::Target, &copy, copy.total_bytes(), choice)
            .unwrap();
        assert_eq!(info.loaded_bytes, on_load.models()[0].loaded_bytes);
        for seed in [1, 7] {
            assert_eq!(
                caption(&mut from_copy, seed),
                caption(&mut on_load, seed),
                "{format:?}, scene {seed}"
            );
        }
    }
}

#[test]
fn quantizing_a_piece_of_rows_at_a_time_gives_the_same_blocks() {
    let target = memory_files(&demo("target"), "demo/target");
    let checkpoint = Checkpoint::from_files(&target).unwrap();
    let store = &checkpoint.weights;
    let name = store
        .names()
        .find(|n| n.ends_with("mlp.down_proj.weight"))
        .unwrap()
        .to_string();
    let shape = store.raw(&name).unwrap().shape.to_vec();
    let whole = store.f32(&name, &shape).unwrap();
    for scheme in [Scheme::Q4, Scheme::Q8] {
        let at_once = QuantMatrix::quantize(scheme, &whole, shape[0], shape[1]);
        for piece_rows in [1, 3, shape[0]] {
            let pieces = store
                .quantize_plain_in_pieces(&name, &shape, scheme, piece_rows)
                .unwrap();
            assert_eq!(pieces, at_once, "{scheme:?}, {piece_rows} rows a piece");
        }
    }
}
