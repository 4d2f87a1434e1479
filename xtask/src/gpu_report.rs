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
    // The one-row matmuls again with an engine switch set.
    let one_row_matmuls = |var: &str| {
        json_of(Command::new(&bin).current_dir(root).env(var, "1").args([
            "bench-kernels",
            "--json",
            "--backend",
            "gpu",
            "--filter",
            "m1 n",
        ]))
    };
    // The portable kernels only (no shader-f16 loads, no subgroup sums), to compare each optional
    // feature's kernels with what every device runs; then packed 8-bit dot products.
    let portable = one_row_matmuls("SPEC_LLAVA_GPU_PORTABLE")?;
    let int8 = one_row_matmuls("SPEC_LLAVA_GPU_INT8_DOT")?;
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
    let shape_args = |like: &'static str, nodes: &'static str, scenes: &'static str| {
        let mut a = vec![
            "bench-shape",
            "--target-like",
            like,
            "--backend",
            "gpu",
            "--json",
        ];
        if quick {
            a.extend(["--text-layers", "2", "--context", "32"]);
        }
        a.extend(["--nodes", nodes, "--scenes", scenes]);
        a
    };
    let mut shapes = Vec::new();
    for like in ["llava-1.5-7b", "llava-1.5-13b"] {
        let nodes = if quick {
            "1,4,16,64"
        } else {
            "1,2,4,8,16,32,64"
        };
        shapes.push(run(&shape_args(like, nodes, scenes))?);
    }
    // The 7B shape (one token, 64 nodes) with engine switches: split-K attention in chunks of
    // 128 keys (of 8 in the quick run's 32-token context), never split, and the split engine with
    // packed 8-bit dot products.
    let split_chunk = if quick { "8" } else { "128" };
    let seven_b = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(&bin);
        // One demo scene: these runs are read for their pass times, not their projection.
        cmd.current_dir(root)
            .envs(vars.iter().copied())
            .args(shape_args("llava-1.5-7b", "1,64", "1"));
        json_of(&mut cmd)
    };
    let chunk_var = "SPEC_LLAVA_GPU_ATTENTION_CHUNK";
    let split = seven_b(&[(chunk_var, split_chunk)])?;
    let unsplit = seven_b(&[(chunk_var, "0")])?;
    let split_int8 = seven_b(&[(chunk_var, split_chunk), ("SPEC_LLAVA_GPU_INT8_DOT", "1")])?;
    let mut report = markdown(&kernels, &same, &cpu_draft, &shapes, quick);
    report += &portable_table(&kernels, &portable);
    report += &int8_table(&kernels, &int8);
    report += &shape_pair_table(
        &format!(
            "attention ({}, {} tokens of context)",
            text(&split["target"]["like"]),
            split["context"]
        ),
        ["ms split-K", "ms one workgroup per head", "unsplit / split"],
        &split,
        &unsplit,
    );
    report += &format!(
        "\nSplit-K: `SPEC_LLAVA_GPU_ATTENTION_CHUNK={split_chunk}` against `=0` (above 1.00x, splitting is faster).\n"
    );
    if used_int8(&split_int8) {
        report += &shape_pair_table(
            &format!("q4 matmuls ({})", text(&split["target"]["like"])),
            ["ms int8 dot products", "ms f32", "f32 / int8"],
            &split_int8,
            &split,
        );
        report += "\nInt8: `SPEC_LLAVA_GPU_INT8_DOT=1` (x rounded to 7 bits per block of 32; not the default). Above 1.00x, int8 is faster.\n";
    }
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
    let columns = [
        "ms, optional features",
        "ms, portable",
        "portable / optional",
    ];
    paired_table(columns, kernels, portable, &|_| true)
        + "\nPortable: `SPEC_LLAVA_GPU_PORTABLE=1`, run after the main table (above 1.00x, the optional features are faster).\n"
}

/// Whether a run's engine used packed 8-bit dot products (CPU drivers never do).
fn used_int8(run: &Value) -> bool {
    text(&run["device"]).contains("[int8 dot]")
}

const NO_INT8: &str = "\nInt8 dot products: not used on this device (CPU drivers run `matmul_small`, which has no int8 form; or WGSL lacks `packed_4x8_integer_dot_product`).\n";

/// The one-row q8 / q4 matmuls with packed 8-bit dot products next to the f32 ones.
fn int8_table(kernels: &Value, int8: &Value) -> String {
    if !used_int8(int8) {
        return NO_INT8.to_string();
    }
    let columns = ["ms, int8 dot products", "ms, f32", "f32 / int8"];
    let blocks = |r: &Value| matches!(text(&r["dtype"]), "q8" | "q4");
    paired_table(columns, int8, kernels, &blocks)
        + "\nInt8: `SPEC_LLAVA_GPU_INT8_DOT=1` (above 1.00x, int8 is faster).\n"
}

/// The one-row matmuls of `a` and `b` paired by kernel, shape and dtype (not the copy, and only
/// rows `keep` takes): ms of each, and b / a.
fn paired_table(columns: [&str; 3], a: &Value, b: &Value, keep: &dyn Fn(&Value) -> bool) -> String {
    let mut m = String::new();
    let [ca, cb, ratio] = columns;
    let _ = writeln!(
        m,
        "\n| one-row matmul | shape | dtype | {ca} | {cb} | {ratio} |\n|---|---|---|---:|---:|---:|"
    );
    let rows = |v: &Value| v["kernels"].as_array().cloned().unwrap_or_default();
    let key = |r: &Value| [&r["kernel"], &r["shape"], &r["dtype"]].map(|v| text(v).to_string());
    let others = rows(b);
    for r in rows(a) {
        if text(&r["kernel"]) == "copy_vec4" || !keep(&r) {
            continue;
        }
        let Some(o) = others.iter().find(|o| key(o) == key(&r)) else {
            continue;
        };
        let (ms, oms) = (num(&r["ms"]), num(&o["ms"]));
        let _ = writeln!(
            m,
            "| {} | {} | {} | {ms:.3} | {oms:.3} | {:.2}x |",
            text(&r["kernel"]),
            text(&r["shape"]),
            text(&r["dtype"]),
            oms / ms
        );
    }
    m
}

/// One bench-shape run against another (`a`, `b`): ms for one token and for a 64-node verify
/// pass, and b / a.
fn shape_pair_table(title: &str, columns: [&str; 3], a: &Value, b: &Value) -> String {
    let ms = |r: &Value, nodes: u64| {
        r["verify"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["nodes"].as_u64() == Some(nodes))
            .map_or(f64::NAN, |v| num(&v["ms"]))
    };
    let [ca, cb, ratio] = columns;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "\n| {title} | {ca} | {cb} | {ratio} |\n|---|---:|---:|---:|"
    );
    for (label, nodes) in [("one token", 1), ("verify 64 nodes", 64)] {
        let (x, y) = (ms(a, nodes), ms(b, nodes));
        let _ = writeln!(m, "| {label} | {x:.2} | {y:.2} | {:.2}x |", y / x);
    }
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

    #[test]
    fn shape_pairs_compare_one_token_and_64_nodes() {
        let run = |one: f64, many: f64| {
            json!({"context": 600, "target": {"like": "llava-1.5-7b"},
            "verify": [{"nodes": 1, "ms": one}, {"nodes": 64, "ms": many}]})
        };
        let columns = ["ms split-K", "ms one workgroup per head", "unsplit / split"];
        let m = shape_pair_table("attention", columns, &run(10.0, 12.0), &run(11.0, 18.0));
        assert!(
            m.contains("| attention | ms split-K | ms one workgroup per head | unsplit / split |"),
            "{m}"
        );
        assert!(m.contains("| one token | 10.00 | 11.00 | 1.10x |"), "{m}");
        assert!(
            m.contains("| verify 64 nodes | 12.00 | 18.00 | 1.50x |"),
            "{m}"
        );
    }

    #[test]
    fn the_int8_table_pairs_only_block_formats() {
        let row = |dtype: &str, ms: f64| json!({"kernel": "matmul_vec", "shape": "m1 n4096 k1024", "dtype": dtype, "ms": ms});
        let f32_run = json!({"kernels": [row("f16", 0.5), row("q4", 0.6), row("q8", 0.9)]});
        let mut int8 = json!({"device": "gpu [subgroups]",
            "kernels": [row("f16", 0.5), row("q4", 0.3), row("q8", 0.6)]});
        assert_eq!(int8_table(&f32_run, &int8), NO_INT8);
        int8["device"] = json!("gpu [subgroups] [int8 dot]");
        let m = int8_table(&f32_run, &int8);
        assert!(
            m.contains("| matmul_vec | m1 n4096 k1024 | q4 | 0.300 | 0.600 | 2.00x |"),
            "{m}"
        );
        assert!(
            m.contains("| matmul_vec | m1 n4096 k1024 | q8 | 0.600 | 0.900 | 1.50x |"),
            "{m}"
        );
        assert!(!m.contains("f16"), "{m}");
    }
}
