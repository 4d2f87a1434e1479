//! `cargo xtask gpu-report [--quick] [--out FILE]`: one script for a GPU, one markdown table. On
//! the first adapter wgpu finds (Vulkan / Metal / DX12; lavapipe where there is no GPU) it runs,
//! from a release build: `spec-llava bench-kernels` (GB/s of every kernel next to a copy),
//! `spec-llava bench` on the demo pair (plain, speculative and adaptive, the draft on the GPU and
//! on the CPU engine) and `spec-llava bench-shape` for LLaVA-1.5-7B and 13B shapes (ms/token,
//! GB/s, verify cost over tree sizes, projected speedup). `--quick` shrinks the shapes (2 text
//! layers, a 32-token context) and the scene counts: what a CPU driver finishes in minutes.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{process, Flags};

const TARGET: &str = "web/models/demo/target";
const DRAFT: &str = "web/models/demo/draft";

pub fn gpu_report(root: &Path, args: &[String]) -> Result<(), String> {
    let opts = Flags::parse(args, &["--out"], &["--quick"])?;
    let quick = opts.switch("--quick");
    let out = root.join(opts.value("--out").unwrap_or("target/gpu-report.md"));
    let bin = crate::release_cli(root)?;
    let run = |args: &[&str]| json_of(Command::new(&bin).current_dir(root).args(args));

    let mut kernel_args = vec!["bench-kernels", "--json", "--backend", "gpu"];
    if quick {
        // The one-row matmuls (decoding), whichever kernel the device runs them with.
        kernel_args.extend(["--filter", "m1 n", "--scenes", "1"]);
    }
    let kernels = run(&kernel_args)?;
    // The one-row matmuls again with the portable kernels only (no shader-f16 loads, no subgroup
    // sums), to compare each optional feature's kernels with what every device runs.
    let portable = json_of(
        Command::new(&bin)
            .current_dir(root)
            .env("SPEC_LLAVA_GPU_PORTABLE", "1")
            .args([
                "bench-kernels",
                "--json",
                "--backend",
                "gpu",
                "--filter",
                "m1 n",
            ]),
    )?;
    let scenes = if quick { "3" } else { "10" };
    let demo = |extra: &[&str]| {
        let mut a = vec![
            "bench",
            "--target",
            TARGET,
            "--draft",
            DRAFT,
            "--scenes",
            scenes,
            "--adaptive",
            "--backend",
            "gpu",
            "--json",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let same = demo(&[])?;
    let cpu_draft = demo(&["--draft-on-cpu"])?;
    let mut shapes = Vec::new();
    for like in ["llava-1.5-7b", "llava-1.5-13b"] {
        let mut a = vec![
            "bench-shape",
            "--target-like",
            like,
            "--backend",
            "gpu",
            "--json",
        ];
        if quick {
            a.extend([
                "--text-layers",
                "2",
                "--context",
                "32",
                "--nodes",
                "1,4,16,64",
                "--scenes",
                "3",
            ]);
        }
        shapes.push(run(&a)?);
    }
    let mut report = markdown(&kernels, &same, &cpu_draft, &shapes, quick);
    report += &portable_table(&kernels, &portable);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&out, &report).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{report}");
    eprintln!("gpu-report: written to {}", out.display());
    Ok(())
}

/// The report: device, kernels, demo pair, shapes.
fn markdown(
    kernels: &Value,
    same: &Value,
    cpu_draft: &Value,
    shapes: &[Value],
    quick: bool,
) -> String {
    let mut m = String::new();
    let device = kernels["device"].as_str().unwrap_or("(no GPU adapter)");
    let _ = writeln!(m, "### GPU report: {device}\n");
    if quick {
        let _ = writeln!(
            m,
            "(`--quick`: 2 text layers, a 32-token context, few scenes)\n"
        );
    }
    let _ = writeln!(
        m,
        "| kernel | shape | dtype | GB/s | of the copy's |\n|---|---|---|---:|---:|"
    );
    for row in kernels["kernels"].as_array().into_iter().flatten() {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.1} | {:.0}% |",
            text(&row["kernel"]),
            text(&row["shape"]),
            text(&row["dtype"]),
            num(&row["gb_s"]),
            100.0 * num(&row["ratio"])
        );
    }
    let _ = writeln!(
        m,
        "\n| demo pair | plain tok/s | speculative | adaptive | tau | identical |\n|---|---:|---:|---:|---:|---:|"
    );
    for (name, r) in [
        ("draft on the GPU", same),
        ("draft on the CPU engine", cpu_draft),
    ] {
        let _ = writeln!(
            m,
            "| {name} | {:.1} | {:.2}x (decode {:.2}x) | {:.2}x (decode {:.2}x) | {:.2} | {}/{} |",
            num(&r["plain"]["tokens_per_s"]),
            num(&r["speedup"]),
            num(&r["decode_speedup"]),
            num(&r["adaptive"]["speedup"]),
            num(&r["adaptive"]["decode_speedup"]),
            num(&r["tau"]),
            r["identical"],
            r["total"]
        );
    }
    let _ = writeln!(
        m,
        "\n| shape | layers | ms/token | GB/s (copy) | verify 8 / 64 nodes vs one | projected speedup |\n|---|---:|---:|---:|---:|---:|"
    );
    for s in shapes {
        let t = &s["target"];
        let ratio = |n: u64| {
            s["verify"]
                .as_array()
                .into_iter()
                .flatten()
                .rfind(|v| v["nodes"].as_u64().is_some_and(|k| k <= n))
                .map_or(f64::NAN, |v| num(&v["ratio_to_one"]))
        };
        let _ = writeln!(
            m,
            "| {} | {} | {:.1} | {:.1} ({:.1}) | {:.2}x / {:.2}x | {:.2}x |",
            text(&t["like"]),
            t["text_layers"],
            num(&t["ms_per_token"]),
            num(&t["gb_s"]),
            num(&t["copy_gb_s"]),
            ratio(8),
            ratio(64),
            num(&s["projection"]["speedup"])
        );
    }
    let _ = writeln!(
        m,
        "\nProjected speedups combine these costs with the demo pair's acceptance (see `bench-shape`)."
    );
    m
}

/// The one-row matmuls with the device's optional features (shader-f16 loads, subgroup sums;
/// the device line lists those in use) next to the portable kernels.
fn portable_table(kernels: &Value, portable: &Value) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "\n| one-row matmul | shape | dtype | ms, optional features | ms, portable | portable / optional |\n|---|---|---|---:|---:|---:|"
    );
    let rows = |v: &Value| v["kernels"].as_array().cloned().unwrap_or_default();
    let key = |r: &Value| {
        (
            text(&r["kernel"]).to_string(),
            text(&r["shape"]).to_string(),
            text(&r["dtype"]).to_string(),
        )
    };
    let base = rows(portable);
    for r in rows(kernels) {
        let Some(p) = base
            .iter()
            .find(|p| key(p) == key(&r) && text(&r["kernel"]) != "copy_vec4")
        else {
            continue;
        };
        let (ms, pms) = (num(&r["ms"]), num(&p["ms"]));
        let _ = writeln!(
            m,
            "| {} | {} | {} | {ms:.3} | {pms:.3} | {:.2}x |",
            text(&r["kernel"]),
            text(&r["shape"]),
            text(&r["dtype"]),
            pms / ms
        );
    }
    let _ = writeln!(
        m,
        "\nPortable: `SPEC_LLAVA_GPU_PORTABLE=1`, run after the main table (above 1.00x, the optional features are faster)."
    );
    m
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// Run a command that prints one JSON object as its last stdout line.
fn json_of(cmd: &mut Command) -> Result<Value, String> {
    process::json_of("gpu-report", cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_has_a_row_per_kernel_pair_and_shape() {
        let kernels = json!({"device": "lavapipe", "kernels": [
            {"kernel": "copy", "shape": "64 MiB", "dtype": "f32", "gb_s": 10.0, "ratio": 1.0},
            {"kernel": "matmul_vec", "shape": "n4096 k4096", "dtype": "q4", "gb_s": 4.0, "ratio": 0.4}
        ]});
        let pair = json!({"plain": {"tokens_per_s": 40.0}, "speedup": 1.1, "decode_speedup": 1.2,
            "adaptive": {"speedup": 1.3, "decode_speedup": 1.5}, "tau": 6.5, "identical": 10, "total": 10});
        let shape = json!({"target": {"like": "llava-1.5-7b", "text_layers": 32, "ms_per_token": 20.0,
            "gb_s": 190.0, "copy_gb_s": 250.0},
            "verify": [{"nodes": 1, "ratio_to_one": 1.0}, {"nodes": 8, "ratio_to_one": 1.1},
                       {"nodes": 64, "ratio_to_one": 1.6}],
            "projection": {"speedup": 2.4}});
        let m = markdown(&kernels, &pair, &pair, &[shape], false);
        assert!(m.contains("### GPU report: lavapipe"), "{m}");
        assert!(
            m.contains("| matmul_vec | n4096 k4096 | q4 | 4.0 | 40% |"),
            "{m}"
        );
        assert!(m.contains("| draft on the CPU engine | 40.0 | 1.10x (decode 1.20x) | 1.30x (decode 1.50x) | 6.50 | 10/10 |"), "{m}");
        assert!(
            m.contains("| llava-1.5-7b | 32 | 20.0 | 190.0 (250.0) | 1.10x / 1.60x | 2.40x |"),
            "{m}"
        );
    }

    #[test]
    fn the_portable_table_pairs_rows_by_kernel_shape_and_dtype() {
        let row = |kernel: &str, shape: &str, dtype: &str, ms: f64| json!({"kernel": kernel, "shape": shape, "dtype": dtype, "ms": ms});
        let optional = json!({"kernels": [
            row("copy_vec4", "1024 KiB", "f32", 0.1),
            row("matmul_vec", "m1 n4096 k1024", "f16", 0.5),
            row("matmul_vec", "m1 n4096 k1024", "q4", 0.4),
            row("matmul_vec", "m16 n4096 k1024", "q4", 0.9)
        ]});
        let portable = json!({"kernels": [
            row("copy_vec4", "1024 KiB", "f32", 0.1),
            row("matmul_vec", "m1 n4096 k1024", "q4", 0.6),
            row("matmul_vec", "m1 n4096 k1024", "f16", 1.0)
        ]});
        let m = portable_table(&optional, &portable);
        assert!(
            m.contains("| matmul_vec | m1 n4096 k1024 | f16 | 0.500 | 1.000 | 2.00x |"),
            "{m}"
        );
        assert!(
            m.contains("| matmul_vec | m1 n4096 k1024 | q4 | 0.400 | 0.600 | 1.50x |"),
            "{m}"
        );
        assert!(!m.contains("copy_vec4") && !m.contains("m16"), "{m}");
    }
}
