//! `spec-llava bench-shape --json` through the built binary, at a tiny size (the 68M draft's
//! shape as target and draft, one text layer, a short context): one JSON object whose costs are
//! positive and consistent (GB/s is bytes over time, ratios are to the one-token pass), a
//! projection from the demo pair that says it is one, and a clear error for an unknown shape.

mod common;

use std::process::Command;

use common::positive;
use serde_json::Value;

fn bench_shape(extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spec-llava"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench-shape", "--json"])
        .args(extra);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", "/tmp");
    }
    cmd.output().unwrap()
}

#[test]
fn tiny_shape_costs_are_consistent_and_projected() {
    let out = bench_shape(&[
        "--target-like",
        "llava-1.5-68m",
        "--draft-like",
        "llava-1.5-68m",
        "--text-layers",
        "1",
        "--context",
        "8",
        "--nodes",
        "4,2",
        "--backend",
        "cpu",
        "--scenes",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-shape failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["device"], "CPU engine");
    let t = &r["target"];
    assert_eq!(t["like"], "llava-1.5-68m");
    assert_eq!(t["text_layers"], 1);
    let bytes = positive("weight_bytes", &t["weight_bytes"]);
    let ms = positive("ms_per_token", &t["ms_per_token"]);
    let gb_s = positive("gb_s", &t["gb_s"]);
    assert!(
        (gb_s - bytes / 1e9 / (ms / 1e3)).abs() <= 1e-6 * gb_s,
        "{t}"
    );
    positive("copy_gb_s", &t["copy_gb_s"]);
    positive("draft ms", &r["draft"]["ms_per_pass"]);
    // One token first (added when not asked for), then the sizes in order.
    let verify = r["verify"].as_array().unwrap();
    let nodes: Vec<u64> = verify
        .iter()
        .map(|v| v["nodes"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes, [1, 2, 4]);
    assert_eq!(verify[0]["ms"], t["ms_per_token"]);
    assert_eq!(verify[0]["ratio_to_one"], 1.0);
    for v in verify {
        let ratio = positive("ratio", &v["ratio_to_one"]);
        assert!((ratio - positive("ms", &v["ms"]) / ms).abs() < 1e-9, "{v}");
    }
    let p = &r["projection"];
    assert!(p["note"].as_str().unwrap().contains("projection"), "{p}");
    assert!(
        p["acceptance_from"].as_str().unwrap().contains("demo pair"),
        "{p}"
    );
    assert!(positive("tau", &p["tau"]) >= 1.0, "{p}");
    positive("speedup", &p["speedup"]);
}

#[test]
fn an_unknown_shape_is_a_clear_error() {
    let out = bench_shape(&["--target-like", "llava-9000", "--backend", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("llava-9000") && stderr.contains("llava-1.5-7b"),
        "{stderr}"
    );
}
