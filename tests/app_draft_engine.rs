//! Where the page's draft runs: beside a GPU target (lavapipe here) it runs on the GPU or on the
//! CPU engine, chosen from one measured draft pass on each ("auto") or set in Settings. Either
//! way speculation stays lossless, and the models list says which engine each model runs on.
//! Without an adapter the GPU test FAILS, unless `SPEC_LLAVA_SKIP_GPU=1` is set.

mod common;

use common::{demo, gpu, memory_files};

use spec_llava::app::messages::{
    BackendKind, DraftEngineChoice, Event, ModelInfo, ModelRole, Request, RunMode, RunResult,
    Settings,
};
use spec_llava::app::session::{draft_side, CaptionJob, DraftSide, Session};
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::Backend;
use spec_llava::scenes;

fn load_demo<B: Backend>(s: &mut Session<B>) {
    let t = memory_files(&demo("target"), "demo/target");
    let d = memory_files(&demo("draft"), "demo/draft");
    s.load(ModelRole::Target, &t, t.total_bytes()).unwrap();
    s.load(ModelRole::Draft, &d, d.total_bytes()).unwrap();
}

fn run<B: Backend>(
    s: &mut Session<B>,
    id: u64,
    seed: u64,
    mode: RunMode,
    settings: &Settings,
) -> (RunResult, Vec<Event>) {
    let png = scenes::png_bytes(&scenes::generate(seed).image).unwrap();
    let mut events = Vec::new();
    let job = CaptionJob {
        run: id,
        image_bytes: &png,
        image_name: "scene.png",
        mode,
        settings,
    };
    let out = pollster::block_on(s.caption(job, &|| false, &mut |e: Event| {
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
        events.push(e);
    }));
    (out.unwrap(), events)
}

fn draft_info<B: Backend>(s: &Session<B>) -> ModelInfo {
    s.models()
        .into_iter()
        .find(|m| m.role == ModelRole::Draft)
        .unwrap()
}

fn target_info<B: Backend>(s: &Session<B>) -> ModelInfo {
    s.models()
        .into_iter()
        .find(|m| m.role == ModelRole::Target)
        .unwrap()
}

#[test]
fn auto_puts_the_draft_where_a_pass_costs_less() {
    use DraftEngineChoice::{Auto, Cpu, Same};
    // Measured cheaper on the CPU engine: there; dearer or equal: the target's engine.
    assert_eq!(draft_side(Auto, Some(4.2), Some(1.7)), DraftSide::Cpu);
    assert_eq!(draft_side(Auto, Some(1.7), Some(4.2)), DraftSide::Same);
    assert_eq!(draft_side(Auto, Some(2.0), Some(2.0)), DraftSide::Same);
    // Not tried on the CPU engine (too big), or a time that is no time: stays.
    assert_eq!(draft_side(Auto, Some(4.2), None), DraftSide::Same);
    assert_eq!(draft_side(Auto, Some(4.2), Some(f64::NAN)), DraftSide::Same);
    assert_eq!(
        draft_side(Auto, Some(f64::INFINITY), Some(1.0)),
        DraftSide::Cpu
    );
    // Forced: there whatever the costs, where it loaded.
    assert_eq!(draft_side(Cpu, Some(1.0), Some(9.0)), DraftSide::Cpu);
    assert_eq!(draft_side(Same, Some(9.0), Some(1.0)), DraftSide::Same);
    assert_eq!(draft_side(Same, None, Some(1.0)), DraftSide::Cpu);
    assert_eq!(draft_side(Cpu, Some(1.0), None), DraftSide::Same);
    assert_eq!(draft_side(Auto, None, Some(1.0)), DraftSide::Cpu);
}

#[test]
fn the_models_list_says_where_each_model_runs() {
    let mut m = ModelInfo {
        role: ModelRole::Draft,
        source: "demo/draft".into(),
        bytes: 1,
        loaded_bytes: 1,
        summary: String::new(),
        engine: BackendKind::Cpu,
        pass_ms: vec![(BackendKind::Webgpu, 4.2), (BackendKind::Cpu, 1.7)],
        engine_why: "auto: the cheaper pass".into(),
    };
    assert_eq!(
        m.engine_line(),
        "CPU engine (wasm), 1.70 ms a pass vs 4.20 ms on WebGPU (auto: the cheaper pass)"
    );
    m.engine = BackendKind::Webgpu;
    m.pass_ms.truncate(1);
    m.engine_why.clear();
    assert_eq!(m.engine_line(), "WebGPU, 4.20 ms a pass");
    m.pass_ms.clear();
    assert_eq!(m.engine_line(), "WebGPU");
    let back: ModelInfo = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    for choice in [
        DraftEngineChoice::Auto,
        DraftEngineChoice::Same,
        DraftEngineChoice::Cpu,
    ] {
        let r = Request::SetDraftEngine { choice };
        assert_eq!(Request::from_json(&r.to_json()).unwrap(), r);
    }
    // Settings sent by an older page (no draft engine) mean "auto".
    let mut v = serde_json::to_value(Settings::default()).unwrap();
    v.as_object_mut().unwrap().remove("draft_engine");
    let s: Settings = serde_json::from_value(v).unwrap();
    assert_eq!(s.draft_engine, DraftEngineChoice::Auto);
}

/// On the CPU engine every model runs there, whatever the choice: nothing to measure.
#[test]
fn a_cpu_session_runs_its_draft_on_the_cpu() {
    let mut s = Session::new(CpuBackend);
    load_demo(&mut s);
    assert_eq!(target_info(&s).engine, BackendKind::Cpu);
    let settings = Settings {
        draft_engine: DraftEngineChoice::Same,
        max_new_tokens: 24,
        ..Settings::default()
    };
    let (spec, _) = run(&mut s, 1, 5, RunMode::Speculative, &settings);
    let (plain, _) = run(&mut s, 2, 5, RunMode::Plain, &settings);
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(s.draft_side(), Some(DraftSide::Same));
    let d = draft_info(&s);
    assert_eq!(d.engine, BackendKind::Cpu);
    assert!(d.pass_ms.is_empty(), "{d:?}");
}

/// The draft forced onto the CPU engine beside a GPU target: captions equal plain decoding token
/// for token, and the models list says so; back on the GPU, and "auto", likewise; a new target
/// keeps the draft and places it again.
#[test]
fn a_gpu_session_runs_its_draft_on_the_cpu_engine_losslessly() {
    let Some(b) = gpu() else { return };
    let mut s = Session::new(b);
    load_demo(&mut s);
    assert_eq!(target_info(&s).engine, BackendKind::Webgpu);
    assert_eq!(draft_info(&s).engine, BackendKind::Webgpu);
    assert!(
        draft_info(&s).pass_ms.is_empty(),
        "not measured before placing"
    );

    // Forced onto the CPU engine: measured on both (it moved from the GPU), runs on the CPU.
    assert!(pollster::block_on(s.place_draft(DraftEngineChoice::Cpu)));
    assert_eq!(s.draft_side(), Some(DraftSide::Cpu));
    let d = draft_info(&s);
    assert_eq!(d.engine, BackendKind::Cpu, "{d:?}");
    let engines: Vec<BackendKind> = d.pass_ms.iter().map(|(k, _)| *k).collect();
    assert_eq!(engines, [BackendKind::Webgpu, BackendKind::Cpu], "{d:?}");
    assert!(d.pass_ms.iter().all(|(_, ms)| *ms > 0.0), "{d:?}");
    assert!(
        d.engine_line().starts_with("CPU engine (wasm), "),
        "{}",
        d.engine_line()
    );
    eprintln!("draft pass: {}", d.engine_line());
    // Placed once: the same choice measures nothing again.
    assert!(!pollster::block_on(s.place_draft(DraftEngineChoice::Cpu)));

    let settings = Settings {
        draft_engine: DraftEngineChoice::Cpu,
        ..Settings::default()
    };
    for (i, seed) in [5u64, 77, 901, 3100].into_iter().enumerate() {
        let id = 10 * i as u64;
        let (spec, events) = run(&mut s, id + 1, seed, RunMode::Speculative, &settings);
        let (plain, _) = run(&mut s, id + 2, seed, RunMode::Plain, &settings);
        assert_eq!(spec.tokens, plain.tokens, "seed {seed}: lossless");
        assert_eq!(spec.text, plain.text);
        let summary = spec.spec.as_ref().unwrap();
        assert!(summary.tau > 1.0, "seed {seed}: the draft never agreed");
        assert!(summary.shared_vision);
        assert!(
            !events.iter().any(|e| matches!(e, Event::Models { .. })),
            "already placed: no move"
        );
    }
    // Adaptive tree sizes with the draft on the CPU: measured there, still lossless.
    let adaptive = Settings {
        adaptive: true,
        ..settings.clone()
    };
    let (spec, _) = run(&mut s, 50, 77, RunMode::Speculative, &adaptive);
    let (plain, _) = run(&mut s, 51, 77, RunMode::Plain, &adaptive);
    assert_eq!(spec.tokens, plain.tokens);

    // A caption asking for the target's engine moves the draft back, and says so.
    let same = Settings {
        draft_engine: DraftEngineChoice::Same,
        ..Settings::default()
    };
    let (spec, events) = run(&mut s, 60, 901, RunMode::Speculative, &same);
    let (plain, _) = run(&mut s, 61, 901, RunMode::Plain, &same);
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(s.draft_side(), Some(DraftSide::Same));
    let moved = events.iter().find_map(|e| match e {
        Event::Models { models } => Some(models.clone()),
        _ => None,
    });
    let moved = moved.expect("a Models event when the draft moves");
    assert_eq!(moved[1].engine, BackendKind::Webgpu);
    assert_eq!(draft_info(&s).engine, BackendKind::Webgpu);

    // "auto": wherever a pass measured cheaper, and still lossless.
    assert!(pollster::block_on(s.place_draft(DraftEngineChoice::Auto)));
    let d = draft_info(&s);
    let cost = |k: BackendKind| d.pass_ms.iter().find(|(e, _)| *e == k).map(|(_, ms)| *ms);
    let (gpu_ms, cpu_ms) = (cost(BackendKind::Webgpu), cost(BackendKind::Cpu));
    assert!(gpu_ms.is_some() && cpu_ms.is_some(), "{d:?}");
    let side = draft_side(DraftEngineChoice::Auto, gpu_ms, cpu_ms);
    assert_eq!(s.draft_side(), Some(side));
    eprintln!("auto: {}", d.engine_line());
    let auto = Settings::default();
    let (spec, _) = run(&mut s, 70, 5, RunMode::Speculative, &auto);
    let (plain, _) = run(&mut s, 71, 5, RunMode::Plain, &auto);
    assert_eq!(spec.tokens, plain.tokens);

    // A new target: the draft stays paired where it runs and is placed again at the next caption.
    pollster::block_on(s.place_draft(DraftEngineChoice::Cpu));
    let t = memory_files(&demo("target"), "demo/target");
    let (_, notice) = s.load(ModelRole::Target, &t, t.total_bytes()).unwrap();
    assert!(notice.is_none());
    assert_eq!(s.draft_side(), Some(DraftSide::Cpu));
    let (spec, events) = run(&mut s, 80, 77, RunMode::Speculative, &settings);
    assert!(events.iter().any(|e| matches!(e, Event::Models { .. })));
    let (plain, _) = run(&mut s, 81, 77, RunMode::Plain, &settings);
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(draft_info(&s).engine, BackendKind::Cpu);

    // A draft too big for the CPU engine (the page's wasm memory) stays on the GPU, and says why.
    pollster::block_on(s.place_draft(DraftEngineChoice::Same));
    s.set_cpu_draft_budget(Some(1024));
    pollster::block_on(s.place_draft(DraftEngineChoice::Cpu));
    assert_eq!(s.draft_side(), Some(DraftSide::Same));
    let d = draft_info(&s);
    assert_eq!(d.engine, BackendKind::Webgpu);
    assert!(
        d.engine_why.contains("more than the CPU engine may hold"),
        "{d:?}"
    );
    let (spec, _) = run(&mut s, 90, 5, RunMode::Speculative, &settings);
    let (plain, _) = run(&mut s, 91, 5, RunMode::Plain, &settings);
    assert_eq!(spec.tokens, plain.tokens);
    assert!(s.backend.take_error().is_none());
}
