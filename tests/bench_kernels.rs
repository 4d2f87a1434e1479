//! `spec-llava bench-kernels --json --quick` through the built binary: one well-formed JSON object
//! whose every kernel row has positive, finite timings and rates, a copy row as the bandwidth
//! reference, and tokens/s for both engines on the demo target.
//!
//! Without an adapter the GPU part FAILS, unless `SPEC_LLAVA_SKIP_GPU=1` is set (then only the CPU
//! engine's tokens/s is checked).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::positive;
use serde_json::Value;

fn demo_target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/models/demo/target")
}

fn skip_gpu() -> bool {
    std::env::var("SPEC_LLAVA_SKIP_GPU").as_deref() == Ok("1")
}

/// Run `bench-kernels --json --quick` with `extra` flags; the parsed stdout.
fn bench(extra: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spec-llava"));
    cmd.args(["bench-kernels", "--json", "--quick", "--model"])
        .arg(demo_target())
        .args(extra);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", "/tmp");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-kernels failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn quick_bench_reports_every_kernel_against_the_copy() {
    let r = bench(&[]);
    let Some(device) = r.get("device") else {
        assert!(skip_gpu(), "no GPU device in {r}");
        eprintln!("skipping the kernel rows: no adapter (SPEC_LLAVA_SKIP_GPU=1)");
        positive("tokens_per_s.cpu", &r["tokens_per_s"]["cpu"]);
        return;
    };
    println!("device: {device}");
    let rows = r["kernels"].as_array().expect("kernels: an array");
    let mut kinds = Vec::new();
    for row in rows {
        let name = row["kernel"].as_str().expect("kernel: a string");
        for key in ["shape", "dtype"] {
            assert!(
                row[key].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: {key} in {row}"
            );
        }
        for key in ["ms", "gb_s", "copy_gb_s", "ratio"] {
            positive(&format!("{name}.{key}"), &row[key]);
        }
        // Every kernel but the copy does arithmetic.
        if name == "copy_vec4" {
            assert!(row["gflop_s"].is_null(), "{row}");
        } else {
            positive(&format!("{name}.gflop_s"), &row["gflop_s"]);
        }
        let ratio = row["gb_s"].as_f64().unwrap() / row["copy_gb_s"].as_f64().unwrap();
        assert!((ratio / row["ratio"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        kinds.push(name);
    }
    for k in ["copy_vec4", "attention_tree", "rmsnorm"] {
        assert!(kinds.contains(&k), "no {k} row in {kinds:?}");
    }
    // CPU drivers run matmul_small at every m; GPUs the mat-vec up to 64 rows, the GEMM above.
    let matmuls: &[&str] = if kinds.contains(&"matmul_small") {
        &["matmul_small"]
    } else {
        &["matmul_vec", "matmul_tiled"]
    };
    for k in matmuls {
        assert!(kinds.contains(k), "no {k} row in {kinds:?}");
    }
    for dtype in ["f32", "f16", "q8", "q4"] {
        let rows = rows.iter().filter(|r| r["dtype"] == dtype);
        assert!(rows.count() >= 3, "matmul rows for {dtype}");
    }
    // One reference copy speed for the whole table.
    let copy = rows[0]["copy_gb_s"].as_f64().unwrap();
    assert!(rows.iter().all(|r| r["copy_gb_s"].as_f64() == Some(copy)));
    for engine in ["gpu", "cpu"] {
        positive(
            &format!("tokens_per_s.{engine}"),
            &r["tokens_per_s"][engine],
        );
    }
}

#[test]
fn cpu_only_bench_measures_cpu_kernels_passes_and_tokens() {
    let r = bench(&["--backend", "cpu"]);
    assert!(r.get("device").is_none(), "{r}");
    assert_eq!(r["kernels"].as_array().map(Vec::len), Some(0), "{r}");
    let rows = r["cpu_kernels"].as_array().expect("cpu_kernels: an array");
    assert_eq!(rows[0]["kernel"], "cpu_copy", "{r}");
    for dtype in ["f32", "f16", "q8", "q4"] {
        assert!(
            rows.iter()
                .any(|row| row["kernel"] == "cpu_linear" && row["dtype"] == dtype),
            "no cpu_linear {dtype} row in {r}"
        );
    }
    for row in rows {
        for key in ["ms", "gb_s", "copy_gb_s", "ratio"] {
            positive(&format!("{}.{key}", row["kernel"]), &row[key]);
        }
    }
    // A linear row is measured against one of the copies (the one its weight's size calls for).
    let copies: Vec<f64> = (rows.iter().filter(|r| r["kernel"] == "cpu_copy"))
        .map(|r| r["gb_s"].as_f64().unwrap())
        .collect();
    for row in rows.iter().filter(|r| r["kernel"] == "cpu_linear") {
        let copy = row["copy_gb_s"].as_f64().unwrap();
        assert!(
            copies.contains(&copy),
            "{row} against none of the copies {copies:?}"
        );
        let ratio = row["gb_s"].as_f64().unwrap() / copy;
        assert!(
            (ratio / row["ratio"].as_f64().unwrap() - 1.0).abs() < 1e-9,
            "{row}"
        );
    }
    let passes = r["cpu_passes"].as_array().expect("cpu_passes: an array");
    assert_eq!(passes[0]["rows"], 1, "{r}");
    for p in passes {
        positive("cpu_passes.ms", &p["ms"]);
    }
    positive("tokens_per_s.cpu", &r["tokens_per_s"]["cpu"]);
    assert!(r["tokens_per_s"].get("gpu").is_none(), "{r}");
}
