//! The browser app's engine side, driven natively exactly as the worker drives it: typed
//! messages, checkpoints from in-memory files, plain and speculative runs with streamed events,
//! cancellation, and bad inputs that leave what is loaded intact. Plus the tree layout and the
//! tree view's plan (what is drawn, where, with which label).

mod common;

use common::{demo, memory_files};

use std::path::Path;

use spec_llava::app::layout::{
    acceptance_by_depth, layout, node_description, phase_times, plan, pruned_groups, shorten,
    text_width, token_label, token_texts, PlanOptions, TreePlan, FONT_PX, GAP_PX, PAD_PX,
};
use spec_llava::app::messages::{
    BackendKind, Event, ModelRole, QuantChoice, Request, RunMode, RunResult, Settings,
};
use spec_llava::app::session::{CaptionJob, Session};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::checkpoint::Checkpoint;
use spec_llava::files::DirFiles;
use spec_llava::scenes;
use spec_llava::speculative::events::{NodeEvent, RoundEvent, RoundTimings};
use spec_llava::speculative::tree::{log_softmax, DraftTree, NodeStatus};
use spec_llava::Error;

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
    let half = w.read(0, w.len() / 2).unwrap().to_vec();
    truncated.insert("model.safetensors", half);
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
            quantize: QuantChoice::Auto,
            memory_budget_mib: Some(1024),
        },
        Request::LoadModel {
            role: ModelRole::Draft,
            url: None,
            names: vec!["config.json".into()],
            quantize: QuantChoice::Q4,
        },
        Request::CancelLoad,
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

/// Texts a real tokenizer hands out: words with their leading space, sub-words, long tokens,
/// multi-byte text, byte tokens, line breaks.
fn token_text(token: u32) -> String {
    const WORDS: [&str; 12] = [
        " yellow",
        " circle",
        "ing",
        " a",
        " the",
        " counterrevolutionaries",
        "\n",
        " 中文",
        " ",
        "<0xE2>",
        " naïve",
        "</s>",
    ];
    WORDS[token as usize % WORDS.len()].to_string()
}

/// One speculation round as the engine makes it (the draft tree of `Round::draft`, the rerank to
/// the budget, a greedy verification), with random draft distributions over `vocab` tokens.
fn random_round(seed: u64, budget: usize, depth: usize, top_k: usize, vocab: usize) -> RoundEvent {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(7);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let mut tree = DraftTree::new(0);
    let mut frontier = vec![0usize];
    for _ in 0..depth {
        let mut new = Vec::new();
        for &f in &frontier {
            // A few likely tokens out of a big vocabulary (only the top k are kept anyway).
            let logits: Vec<f32> = (0..top_k * 3).map(|_| next() * 6.0).collect();
            let mut lp = log_softmax(&logits);
            lp.iter_mut()
                .for_each(|v| *v -= (vocab as f32 / 32000.0).ln().max(0.0));
            let best = spec_llava::speculative::tree::top_k(&lp, top_k);
            let best: Vec<(u32, f32)> = best
                .into_iter()
                .map(|(t, l)| {
                    (
                        (t as usize * 7919 + tree.nodes.len() * 31) as u32 % vocab as u32,
                        l,
                    )
                })
                .collect();
            new.extend(tree.add_children_top(f, &best));
        }
        frontier = tree.best(&new, top_k);
    }
    let order = tree.select(budget);
    // Greedy verification: follow the first selected child with probability 0.7.
    let mut cur = 0usize;
    let mut accepted = 0;
    loop {
        let kids = tree.children_in(cur, &order);
        if kids.is_empty() {
            break;
        }
        let hit = (next() < 0.7).then_some(kids[0]);
        for &k in &kids {
            if Some(k) != hit {
                tree.nodes[k].status = NodeStatus::Rejected;
            }
        }
        match hit {
            Some(k) => {
                tree.nodes[k].status = NodeStatus::Accepted;
                accepted += 1;
                cur = k;
            }
            None => break,
        }
    }
    let d = tree.nodes[cur].depth + 1;
    let score = tree.nodes[cur].score;
    tree.nodes.push(spec_llava::speculative::tree::Node {
        parent: Some(cur),
        token: 3,
        depth: d,
        prob: 0.0,
        score,
        status: NodeStatus::Bonus,
        draft_slot: None,
    });
    RoundEvent::new(
        1,
        &tree,
        accepted,
        vec![],
        RoundTimings::default(),
        &token_text,
    )
}

/// What every plan must hold: verified nodes drawn with a label that fits, nothing overlaps,
/// edges join drawn nodes, badges add up to the pruned total, the accepted path is the top row.
fn check_plan(round: &RoundEvent, p: &TreePlan, options: &PlanOptions, what: &str) {
    for (i, n) in round.nodes.iter().enumerate() {
        let drawn = p.node(i);
        if n.status != NodeStatus::Pruned {
            let d = drawn.unwrap_or_else(|| panic!("{what}: verified node {i} is not drawn"));
            assert!(!d.label.is_empty(), "{what}: node {i} has no label");
            assert!(
                text_width(&d.label, FONT_PX) + 2.0 * PAD_PX <= d.w + 0.01
                    && d.w <= p.column_w[d.column] - GAP_PX + 0.01,
                "{what}: label {:?} of node {i} does not fit its column",
                d.label
            );
        } else if options.show_pruned {
            assert!(drawn.is_some(), "{what}: show all draws pruned node {i}");
        }
    }
    // Nothing overlaps: one box per drawn node and badge, boxes on one row disjoint.
    let mut boxes: Vec<(usize, f32, f32)> =
        p.nodes.iter().map(|n| (n.row, n.x, n.x + n.w)).collect();
    boxes.extend(p.badges.iter().map(|b| (b.row, b.x, b.x + b.w)));
    for (i, a) in boxes.iter().enumerate() {
        assert!(
            a.1 >= 0.0 && a.2 <= p.width,
            "{what}: box {i} outside the drawing"
        );
        for b in &boxes[..i] {
            assert!(
                a.0 != b.0 || a.2 <= b.1 || b.2 <= a.1,
                "{what}: boxes {a:?} and {b:?} overlap"
            );
        }
    }
    for &(a, b) in &p.edges {
        assert!(p.node(a).is_some() && p.node(b).is_some());
        assert!(p.node(a).unwrap().column + 1 == p.node(b).unwrap().column);
    }
    let collapsed: usize = p
        .badges
        .iter()
        .filter(|b| !b.expanded)
        .map(|b| b.count)
        .sum();
    let shown = p
        .nodes
        .iter()
        .filter(|n| round.nodes[n.id].status == NodeStatus::Pruned)
        .count();
    assert_eq!(
        collapsed + shown,
        p.pruned_total,
        "{what}: pruned candidates add up"
    );
    assert_eq!(p.pruned_total, round.count(NodeStatus::Pruned));
    // The accepted path reads left to right on the top row, the bonus token at its end.
    let path: Vec<_> = p
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                round.nodes[n.id].status,
                NodeStatus::Accepted | NodeStatus::Bonus
            )
        })
        .collect();
    for (k, n) in path.iter().enumerate() {
        assert_eq!(
            (n.row, n.column),
            (0, k),
            "{what}: accepted path off the top row"
        );
    }
    assert_eq!(
        round.nodes[path.last().unwrap().id].status,
        NodeStatus::Bonus
    );
    // Focus order: nodes and badges numbered once each, starting with the accepted path.
    let mut seqs: Vec<usize> = p
        .nodes
        .iter()
        .map(|n| n.seq)
        .chain(p.badges.iter().map(|b| b.seq))
        .collect();
    seqs.sort_unstable();
    assert!(seqs.iter().enumerate().all(|(i, &s)| i == s));
    assert!(p.nodes.iter().zip(&path).all(|(a, b)| a.id == b.id));
}

/// Labels are drawn at `FONT_PX`: readable.
const _: () = assert!(FONT_PX >= 11.0);

#[test]
fn tree_plan_fits_a_default_round_in_the_panel_with_readable_labels() {
    for seed in 0..40 {
        for vocab in [32000, 151936] {
            let round = random_round(seed, 24, 8, 4, vocab);
            assert!(
                round.count(NodeStatus::Pruned) > 40,
                "a realistic round prunes many"
            );
            let options = PlanOptions {
                width: 660.0,
                ..PlanOptions::default()
            };
            let p = plan(&round.nodes, &options);
            check_plan(&round, &p, &options, &format!("seed {seed}"));
            assert!(p.width <= 660.0, "seed {seed}: {} px wide", p.width);
            // Collapsed: only the verified nodes are drawn.
            assert_eq!(
                p.nodes.len(),
                round.nodes.len() - round.count(NodeStatus::Pruned)
            );
            let badge_sum: usize = p.badges.iter().map(|b| b.count).sum();
            assert_eq!(badge_sum, round.count(NodeStatus::Pruned));
            // Common words are not shortened at this width.
            for n in &p.nodes {
                if n.text == " yellow" || n.text == " circle" {
                    assert!(!n.label.contains('…'), "{:?} shortened", n.label);
                }
            }
        }
    }
}

#[test]
fn tree_plan_fits_big_trees_and_shows_pruned_on_request() {
    for seed in 0..10 {
        let round = random_round(seed, 96, 10, 8, 151936);
        assert!(round.nodes.len() - round.count(NodeStatus::Pruned) > 64);
        let options = PlanOptions {
            width: 660.0,
            ..PlanOptions::default()
        };
        let p = plan(&round.nodes, &options);
        check_plan(&round, &p, &options, &format!("big seed {seed}"));
        assert!(p.width <= 660.0);
        assert!(
            p.nodes.iter().any(|n| n.label.ends_with('…')),
            "long tokens are shortened"
        );
        // Every candidate.
        let all = PlanOptions {
            width: 660.0,
            show_pruned: true,
            ..PlanOptions::default()
        };
        let p = plan(&round.nodes, &all);
        check_plan(&round, &p, &all, &format!("all seed {seed}"));
        assert_eq!(p.nodes.len(), round.nodes.len());
        assert!(p.badges.is_empty());
    }
    // Expanding one group draws its candidates and keeps a badge to fold them again.
    let round = random_round(3, 24, 8, 4, 32000);
    let groups = pruned_groups(&round.nodes);
    let (owner, count) = groups[0];
    let options = PlanOptions {
        width: 660.0,
        expanded: vec![owner],
        ..PlanOptions::default()
    };
    let p = plan(&round.nodes, &options);
    check_plan(&round, &p, &options, "expanded");
    let verified = round.nodes.len() - round.count(NodeStatus::Pruned);
    assert_eq!(p.nodes.len(), verified + count);
    assert!(p
        .badges
        .iter()
        .any(|b| b.owner == owner && b.expanded && b.count == count));
    // A narrow panel: still no overlap (labels shorten; the drawing widens only past the minimum).
    let narrow = PlanOptions {
        width: 300.0,
        ..PlanOptions::default()
    };
    check_plan(&round, &plan(&round.nodes, &narrow), &narrow, "narrow");
}

#[test]
fn token_labels_are_readable() {
    assert_eq!(token_label(" yellow"), "yellow");
    assert_eq!(token_label("ing"), "ing");
    assert_eq!(token_label("\n"), "⏎");
    assert_eq!(token_label(" "), "␣");
    assert_eq!(token_label("  "), "␣");
    assert_eq!(token_label(""), "∅");
    assert_eq!(token_label("\u{7}"), "\\x07");
    assert_eq!(token_label(" 中文"), "中文");
    // Byte tokens along a path: shown as bytes until they complete a character.
    let mut chain: Vec<NodeEvent> = [
        "<0xE2>",
        "<0x80>",
        "<0x94>",
        " x",
        "<0xFF>",
        "<0xC3><0xA9>t",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| NodeEvent {
        text: t.to_string(),
        ..node(i, i.checked_sub(1), i)
    })
    .collect();
    chain.insert(0, node(0, None, 0));
    for (i, n) in chain.iter_mut().enumerate() {
        n.id = i;
        n.parent = i.checked_sub(1);
        n.depth = i;
    }
    let texts = token_texts(&chain);
    assert_eq!(&texts[1..], ["\\xE2", "\\x80", "—", " x", "\\xFF", "ét"]);
    // A sibling that does not complete the character shows its own byte only.
    chain.push(NodeEvent {
        text: "<0x41>".into(),
        ..node(7, Some(2), 2)
    });
    assert_eq!(token_texts(&chain)[7], "A");
    // Shortening: an ellipsis, within the width, at least one character when there is room.
    let long = token_label(" counterrevolutionaries");
    let s = shorten(&long, 60.0, FONT_PX);
    assert!(
        s.ends_with('…') && text_width(&s, FONT_PX) <= 60.0 && s.chars().count() > 2,
        "{s}"
    );
    assert_eq!(shorten("yellow", 60.0, FONT_PX), "yellow");
    let cjk = shorten("中文中文中文中文", 40.0, FONT_PX);
    assert!(
        cjk.ends_with('…') && text_width(&cjk, FONT_PX) <= 40.0,
        "{cjk}"
    );
}

#[test]
fn node_descriptions_name_status_token_and_confidence() {
    let mut n = node(1, Some(0), 1);
    n.status = NodeStatus::Accepted;
    n.prob = 0.912;
    assert_eq!(
        node_description(&n, " yellow"),
        "accepted: 'yellow', draft confidence 0.91"
    );
    n.status = NodeStatus::Rejected;
    assert!(node_description(&n, "x").starts_with("rejected: 'x'"));
    n.status = NodeStatus::Bonus;
    assert_eq!(
        node_description(&n, " red"),
        "bonus, the target's own token: 'red'"
    );
    let mut root = node(0, None, 0);
    root.status = NodeStatus::Accepted;
    assert!(node_description(&root, " a").starts_with("previous token: 'a'"));
}

#[test]
fn phases_run_in_order_and_stay_short() {
    for columns in [1, 2, 5, 10, 11, 30, 200] {
        let t = phase_times(columns);
        assert!(
            t.step_ms * columns as u32 <= t.prune_at_ms,
            "{columns}: {t:?}"
        );
        assert!(t.prune_at_ms < t.verify_at_ms && t.verify_at_ms < t.fly_at_ms);
        assert!(t.fly_at_ms <= 1600 || columns > 30, "{columns}: {t:?}");
    }
}

/// A photograph given to the demo models gets a notice that they know only generated scenes (and
/// still a caption); a generated scene gets none.
#[test]
fn a_photograph_on_the_demo_models_gets_a_notice_and_a_caption() {
    let mut s = demo_session();
    let photo = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/photo.jpg"),
    )
    .unwrap();
    let settings = Settings::default();
    let (out, events) = run(
        &mut s,
        1,
        &photo,
        "photo.jpg",
        RunMode::Speculative,
        &settings,
        None,
    );
    assert!(!out.unwrap().text.is_empty());
    let notices: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::InputNotice { run: 1, message } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "{events:?}");
    assert!(notices[0].contains("generated scenes") && notices[0].contains("Models"));
    let (_, events) = run(
        &mut s,
        2,
        &scene_png(5),
        "scene.png",
        RunMode::Speculative,
        &settings,
        None,
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::InputNotice { .. })));
}
