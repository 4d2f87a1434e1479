//! The browser app's engine side, driven natively exactly as the worker drives it: typed
//! messages, checkpoints from in-memory files, plain and speculative runs with streamed events,
//! cancellation, and bad inputs that leave what is loaded intact. Plus the tree layout.

mod common;

use std::path::{Path, PathBuf};

use spec_llava::app::layout::{acceptance_by_depth, layout};
use spec_llava::app::messages::{
    BackendKind, Event, ModelRole, Request, RunMode, RunResult, Settings,
};
use spec_llava::app::session::{CaptionJob, Session};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::checkpoint::Checkpoint;
use spec_llava::files::{DirFiles, MemoryFiles};
use spec_llava::scenes;
use spec_llava::speculative::events::{NodeEvent, RoundEvent, RoundTimings};
use spec_llava::speculative::tree::NodeStatus;
use spec_llava::Error;

fn demo(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("web/models/demo")
        .join(which)
}

/// Every file of a directory, in memory (what the page sends for a picked folder).
fn memory_files(dir: &Path, source: &str) -> MemoryFiles {
    let mut m = MemoryFiles::new(source);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            m.insert(&name, std::fs::read(&path).unwrap());
        }
    }
    m
}

fn demo_session() -> Session<CpuBackend> {
    let mut s = Session::new(CpuBackend);
    let t = memory_files(&demo("target"), "demo/target");
    let d = memory_files(&demo("draft"), "demo/draft");
    s.load(ModelRole::Target, &t, t.total_bytes()).unwrap();
    s.load(ModelRole::Draft, &d, d.total_bytes()).unwrap();
    s
}

fn scene_png(seed: u64) -> Vec<u8> {
    scenes::png_bytes(&scenes::generate(seed).image).unwrap()
}

fn run(
    s: &mut Session<CpuBackend>,
    id: u64,
    image: &[u8],
    name: &str,
    mode: RunMode,
    settings: &Settings,
    cancel_after_events: Option<usize>,
) -> (spec_llava::Result<RunResult>, Vec<Event>) {
    let mut events = Vec::new();
    let count = std::cell::Cell::new(0usize);
    let cancelled = || cancel_after_events.is_some_and(|n| count.get() >= n);
    let job = CaptionJob {
        run: id,
        image_bytes: image,
        image_name: name,
        mode,
        settings,
    };
    let out = pollster::block_on(s.caption(job, &cancelled, &mut |e: Event| {
        count.set(count.get() + 1);
        // Every event crosses the worker boundary as JSON: it must round-trip.
        let back = Event::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        events.push(e);
    }));
    (out, events)
}

#[test]
fn speculative_and_plain_runs_match_and_stream_events() {
    let mut s = demo_session();
    let settings = Settings::default();
    for seed in [5u64, 77, 901] {
        let png = scene_png(seed);
        let (spec, events) = run(
            &mut s,
            1,
            &png,
            "scene.png",
            RunMode::Speculative,
            &settings,
            None,
        );
        let spec = spec.unwrap();
        let (plain, plain_events) = run(
            &mut s,
            2,
            &png,
            "scene.png",
            RunMode::Plain,
            &settings,
            None,
        );
        let plain = plain.unwrap();
        assert_eq!(spec.tokens, plain.tokens, "seed {seed}: lossless");
        assert_eq!(spec.text, plain.text);
        assert!(!spec.tokens.is_empty());
        let summary = spec.spec.as_ref().expect("speculative summary");
        assert!(summary.tau >= 1.0 && summary.shared_vision);
        // Rounds: the emitted tokens concatenate to the output, the last text is the caption.
        let rounds: Vec<&RoundEvent> = events
            .iter()
            .filter_map(|e| match e {
                Event::Round { run: 1, round, .. } => Some(round),
                _ => None,
            })
            .collect();
        assert_eq!(rounds.len(), summary.rounds);
        let emitted: Vec<u32> = rounds.iter().flat_map(|r| r.emitted.clone()).collect();
        assert_eq!(emitted, spec.tokens);
        match events.last() {
            Some(Event::Round { text, .. }) => assert_eq!(text, &spec.text),
            other => panic!("last event {other:?}"),
        }
        assert!(matches!(
            events[0],
            Event::Started {
                run: 1,
                mode: RunMode::Speculative
            }
        ));
        // Plain decoding streams one text event per token.
        let texts = plain_events
            .iter()
            .filter(|e| matches!(e, Event::Text { run: 2, .. }))
            .count();
        assert_eq!(texts, plain.tokens.len());
        assert!(plain.spec.is_none());
        assert!(spec.tokens_per_s > 0.0 && plain.tokens_per_s > 0.0);
    }
}

#[test]
fn a_cancelled_run_stops_early() {
    let mut s = demo_session();
    let png = scene_png(31);
    let (out, events) = run(
        &mut s,
        9,
        &png,
        "a.png",
        RunMode::Speculative,
        &Settings::default(),
        Some(2),
    );
    assert!(matches!(out, Err(Error::Cancelled)), "{out:?}");
    let rounds = events
        .iter()
        .filter(|e| matches!(e, Event::Round { .. }))
        .count();
    assert_eq!(rounds, 1, "cancel is seen at the first round");
    // The session still works afterwards.
    let (out, _) = run(
        &mut s,
        10,
        &png,
        "a.png",
        RunMode::Plain,
        &Settings::default(),
        Some(3),
    );
    assert!(matches!(out, Err(Error::Cancelled)));
    let (out, _) = run(
        &mut s,
        11,
        &png,
        "a.png",
        RunMode::Speculative,
        &Settings::default(),
        None,
    );
    assert!(out.is_ok());
}

#[test]
fn bad_images_and_settings_are_errors_that_leave_the_session_usable() {
    let mut s = demo_session();
    let png = scene_png(3);
    let mut broken = png[..60].to_vec();
    broken.extend_from_slice(b"garbage");
    let (out, _) = run(
        &mut s,
        1,
        &broken,
        "broken.png",
        RunMode::Speculative,
        &Settings::default(),
        None,
    );
    let msg = out.unwrap_err().to_string();
    assert!(msg.contains("broken.png"), "{msg}");
    let (out, _) = run(
        &mut s,
        2,
        b"hello",
        "notes.txt",
        RunMode::Plain,
        &Settings::default(),
        None,
    );
    assert!(out.unwrap_err().to_string().contains("notes.txt"));
    let bad = Settings {
        budget: 0,
        ..Settings::default()
    };
    let (out, events) = run(&mut s, 3, &png, "a.png", RunMode::Speculative, &bad, None);
    assert!(out.unwrap_err().to_string().contains("budget"));
    assert!(events.is_empty(), "nothing starts with bad settings");
    let (out, _) = run(
        &mut s,
        4,
        &png,
        "a.png",
        RunMode::Speculative,
        &Settings::default(),
        None,
    );
    assert!(out.is_ok());
}

#[test]
fn bad_models_are_refused_and_the_loaded_ones_stay() {
    let mut s = demo_session();
    let png = scene_png(12);
    let before = run(
        &mut s,
        1,
        &png,
        "a.png",
        RunMode::Speculative,
        &Settings::default(),
        None,
    )
    .0
    .unwrap();
    // A corrupt config: refused by file name.
    let mut broken = memory_files(&demo("target"), "https://example.org/broken");
    broken.insert("config.json", b"{ not json".to_vec());
    let err = s
        .load(ModelRole::Target, &broken, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("https://example.org/broken/config.json"),
        "{err}"
    );
    // Truncated weights.
    let mut truncated = memory_files(&demo("draft"), "my-draft");
    let w = truncated.files["model.safetensors"].clone();
    truncated.insert("model.safetensors", w[..w.len() / 2].to_vec());
    let err = s
        .load(ModelRole::Draft, &truncated, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("my-draft/model.safetensors"), "{err}");
    // A draft with another tokenizer.
    let other = DirFiles(common::checkpoint_dir("clip-llama2tok"));
    let err = s.load(ModelRole::Draft, &other, 0).unwrap_err().to_string();
    assert!(err.contains("tokenizer"), "{err}");
    assert_eq!(s.models().len(), 2);
    let after = run(
        &mut s,
        2,
        &png,
        "a.png",
        RunMode::Speculative,
        &Settings::default(),
        None,
    )
    .0
    .unwrap();
    assert_eq!(before.tokens, after.tokens);
    assert!(after.spec.is_some(), "the draft is still loaded");
    // A new target the draft cannot serve: loaded, and the draft is unloaded with a notice.
    let (_, notice) = s.load(ModelRole::Target, &other, 0).unwrap();
    assert!(notice.unwrap().contains("unloaded"));
    assert!(!s.has_draft());
}

#[test]
fn a_draft_needs_a_target_first() {
    let mut s = Session::new(CpuBackend);
    let d = memory_files(&demo("draft"), "d");
    assert!(s.load(ModelRole::Draft, &d, 0).is_err());
    let (out, _) = run(
        &mut s,
        1,
        &scene_png(1),
        "a.png",
        RunMode::Plain,
        &Settings::default(),
        None,
    );
    assert!(out.unwrap_err().to_string().contains("no model"));
}

#[test]
fn in_memory_checkpoints_equal_directories_including_shards() {
    for name in ["siglip-qwen2-bf16-sharded", "clip-llama-gqa-f32"] {
        let dir = common::checkpoint_dir(name);
        let a = Checkpoint::open(&dir).unwrap();
        let b = Checkpoint::from_files(&memory_files(&dir, name)).unwrap();
        assert_eq!(a.config, b.config);
        assert_eq!(a.weights.fingerprint(""), b.weights.fingerprint(""));
        assert_eq!(
            a.prompt_ids(&a.default_prompt("Hi").unwrap()).unwrap(),
            b.prompt_ids(&b.default_prompt("Hi").unwrap()).unwrap()
        );
    }
    // A shard named by the index but absent: named in the error.
    let dir = common::checkpoint_dir("siglip-qwen2-bf16-sharded");
    let mut m = memory_files(&dir, "https://host/m");
    let shard = m
        .files
        .keys()
        .find(|k| k.ends_with(".safetensors"))
        .unwrap()
        .clone();
    m.files.remove(&shard);
    let err = Checkpoint::from_files(&m).err().unwrap().to_string();
    assert!(err.contains(&format!("https://host/m/{shard}")), "{err}");
}

#[test]
fn messages_round_trip_as_json() {
    let requests = vec![
        Request::Init {
            backend: BackendKind::Webgpu,
            target_url: "http://x/t".into(),
            draft_url: None,
        },
        Request::LoadModel {
            role: ModelRole::Draft,
            url: None,
            names: vec!["config.json".into()],
        },
        Request::Caption {
            run: 3,
            image_name: "a.png".into(),
            mode: RunMode::Plain,
            settings: Settings::default(),
        },
        Request::Cancel { run: 3 },
    ];
    for r in requests {
        assert_eq!(Request::from_json(&r.to_json()).unwrap(), r);
    }
    let e = Event::Progress {
        task: "t".into(),
        done: 1,
        total: 2,
    };
    assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
    assert!(Request::from_json("{\"type\":\"explode\"}").is_err());
}

fn node(id: usize, parent: Option<usize>, depth: usize) -> NodeEvent {
    NodeEvent {
        id,
        parent,
        token: id as u32,
        text: format!("t{id}"),
        depth,
        prob: 0.5,
        score: -1.0,
        status: NodeStatus::Expanded,
    }
}

/// A random tree of `n` nodes (parents precede children).
fn random_tree(n: usize, seed: u64) -> Vec<NodeEvent> {
    let mut state = seed.wrapping_add(1);
    let mut nodes = vec![node(0, None, 0)];
    for i in 1..n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = (state >> 33) as usize % i;
        let d = nodes[p].depth + 1;
        nodes.push(node(i, Some(p), d));
    }
    nodes
}

#[test]
fn tree_layouts_never_overlap() {
    for n in [1usize, 2, 5, 17, 64, 128, 256] {
        for seed in 0..20 {
            let nodes = random_tree(n, seed);
            let lay = layout(&nodes);
            assert_eq!(lay.positions.len(), n);
            for (i, a) in nodes.iter().enumerate() {
                assert_eq!(lay.positions[i].1, a.depth, "row is depth");
                if let Some(p) = a.parent {
                    assert!(lay.positions[p].1 + 1 == lay.positions[i].1);
                }
                for j in 0..i {
                    let (pa, pb) = (lay.positions[i], lay.positions[j]);
                    if pa.1 == pb.1 {
                        assert!(
                            (pa.0 - pb.0).abs() >= 1.0,
                            "n {n} seed {seed}: nodes {i} and {j} overlap"
                        );
                    }
                }
                assert!(
                    lay.positions[i].0 >= 0.0 && lay.positions[i].0 <= (lay.columns - 1) as f32
                );
            }
        }
    }
    // A chain (budget 1) is one column.
    let chain: Vec<_> = (0..10).map(|i| node(i, i.checked_sub(1), i)).collect();
    let lay = layout(&chain);
    assert_eq!((lay.columns, lay.rows), (1, 10));
}

#[test]
fn acceptance_by_depth_counts_rounds_that_reached_each_depth() {
    let round = |depth: usize, accepted: usize| RoundEvent {
        round: 0,
        nodes: (0..=depth).map(|d| node(d, d.checked_sub(1), d)).collect(),
        accepted,
        emitted: vec![],
        timings_ms: RoundTimings::default(),
    };
    let acc = acceptance_by_depth(&[round(3, 3), round(3, 1), round(1, 0)]);
    assert_eq!(acc.len(), 3);
    assert!((acc[0] - 2.0 / 3.0).abs() < 1e-9);
    assert!((acc[1] - 0.5).abs() < 1e-9);
    assert!((acc[2] - 0.5).abs() < 1e-9);
}
