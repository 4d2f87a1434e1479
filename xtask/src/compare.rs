//! `cargo xtask compare [--scenes N] [--seed S] [--max-new-tokens M] [--json]`: peers measured side
//! by side, in one run, on the same generated scenes and the same demo pair: transformers plain
//! and assisted generation (`tools/compare/hf_assisted.py`, in a venv this command makes from the
//! pinned `tools/compare/requirements.txt`), then our CPU engine, the GPU engine and the GPU target
//! with the draft on the CPU engine, each plain, speculative (default tree) and adaptive
//! (`spec-llava bench --adaptive --json`). Prints one markdown table (or, with `--json`, one JSON
//! object) with the date and the versions: every speed claim about other runtimes comes from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::{process, Flags};

const REQUIREMENTS: &str = "tools/compare/requirements.txt";
const HF_SCRIPT: &str = "tools/compare/hf_assisted.py";
const TARGET: &str = "web/models/demo/target";
const DRAFT: &str = "web/models/demo/draft";

/// One row of the table.
struct Row {
    runtime: String,
    mode: &'static str,
    tokens_per_s: f64,
    /// Decoding phase only (every token after the first); None where the runtime does not say.
    decode_tokens_per_s: Option<f64>,
    /// Over the same runtime's plain decoding.
    speedup: f64,
    tau: Option<f64>,
    identical: Option<(u64, u64)>,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "runtime": self.runtime,
            "mode": self.mode,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "speedup": self.speedup,
            "tau": self.tau,
            "identical": self.identical.map(|(a, _)| a),
            "total": self.identical.map(|(_, t)| t),
        })
    }
}

pub fn compare(root: &Path, args: &[String]) -> Result<(), String> {
    let opts = Flags::parse(
        args,
        &["--scenes", "--seed", "--max-new-tokens"],
        &["--json"],
    )?;
    let number = |flag: &str, default: u64| -> Result<u64, String> {
        opts.value(flag).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("{flag}: not a non-negative integer: {v}"))
        })
    };
    let (scenes, seed, max) = (
        number("--scenes", 20)?,
        number("--seed", 777)?,
        number("--max-new-tokens", 64)?,
    );
    let python = ensure_venv(root)?;
    let bin = crate::release_cli(root)?;
    let common = [
        "--scenes".to_string(),
        scenes.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--max-new-tokens".into(),
        max.to_string(),
    ];

    let hf = json_of(
        Command::new(&python)
            .current_dir(root)
            .args([HF_SCRIPT, "--target", TARGET, "--draft", DRAFT, "--bin"])
            .arg(&bin)
            .args(&common),
    )?;
    let mut rows = vec![
        Row {
            runtime: "transformers (CPU, float32)".into(),
            mode: "plain",
            tokens_per_s: num(&hf["plain"]["tokens_per_s"]),
            decode_tokens_per_s: None,
            speedup: 1.0,
            tau: None,
            identical: None,
        },
        Row {
            runtime: "transformers (CPU, float32)".into(),
            mode: "assisted (chain)",
            tokens_per_s: num(&hf["assisted"]["tokens_per_s"]),
            decode_tokens_per_s: None,
            speedup: num(&hf["speedup"]),
            tau: Some(num(&hf["tau"])),
            identical: Some((int(&hf["identical"]), int(&hf["total"]))),
        },
    ];
    let engines: [(&str, &[&str]); 3] = [
        ("spec-llava CPU", &["--backend", "cpu"]),
        ("spec-llava GPU", &["--backend", "gpu"]),
        (
            "spec-llava GPU + CPU draft",
            &["--backend", "gpu", "--draft-on-cpu"],
        ),
    ];
    for (name, flags) in engines {
        let r = json_of(
            Command::new(&bin)
                .current_dir(root)
                .args([
                    "bench",
                    "--target",
                    TARGET,
                    "--draft",
                    DRAFT,
                    "--adaptive",
                    "--json",
                ])
                .args(flags)
                .args(&common),
        )?;
        rows.extend(bench_rows(name, &r));
    }

    let versions = versions(root, &python);
    if opts.switch("--json") {
        let out = json!({
            "date": today(),
            "versions": versions,
            "scenes": scenes,
            "seed": seed,
            "max_new_tokens": max,
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} scenes (seed {seed}, at most {max} tokens), demo pair, one run; {}; {}",
        scenes,
        today(),
        versions
    );
    println!();
    println!("| runtime | mode | tokens/s | decoding tokens/s | speedup | tau | identical |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {} | {:.2}x | {} | {} |",
            r.runtime,
            r.mode,
            r.tokens_per_s,
            r.decode_tokens_per_s
                .map_or("-".into(), |v| format!("{v:.1}")),
            r.speedup,
            r.tau.map_or("-".into(), |v| format!("{v:.2}")),
            r.identical.map_or("-".into(), |(a, t)| format!("{a}/{t}")),
        );
    }
    Ok(())
}

/// Plain, speculative and adaptive rows from one `spec-llava bench --adaptive --json` object.
fn bench_rows(name: &str, r: &Value) -> Vec<Row> {
    let total = int(&r["total"]);
    let mut rows = vec![
        Row {
            runtime: name.into(),
            mode: "plain",
            tokens_per_s: num(&r["plain"]["tokens_per_s"]),
            decode_tokens_per_s: Some(num(&r["plain"]["decode_tokens_per_s"])),
            speedup: 1.0,
            tau: None,
            identical: None,
        },
        Row {
            runtime: name.into(),
            mode: "speculative",
            tokens_per_s: num(&r["spec"]["tokens_per_s"]),
            decode_tokens_per_s: Some(num(&r["spec"]["decode_tokens_per_s"])),
            speedup: num(&r["speedup"]),
            tau: Some(num(&r["tau"])),
            identical: Some((int(&r["identical"]), total)),
        },
    ];
    if let Some(a) = r.get("adaptive").filter(|a| a.is_object()) {
        rows.push(Row {
            runtime: name.into(),
            mode: "speculative, adaptive tree",
            tokens_per_s: num(&a["spec"]["tokens_per_s"]),
            decode_tokens_per_s: Some(num(&a["spec"]["decode_tokens_per_s"])),
            speedup: num(&a["speedup"]),
            tau: Some(num(&a["tau"])),
            identical: Some((int(&a["identical"]), total)),
        });
    }
    rows
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Run a command that prints one JSON object as its last stdout line.
fn json_of(cmd: &mut Command) -> Result<Value, String> {
    process::json_of("compare", cmd)
}

/// The venv with the pinned transformers (made once; remade when the requirements change).
fn ensure_venv(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join("target/compare-venv");
    let python = venv.join("bin/python");
    let requirements = std::fs::read_to_string(root.join(REQUIREMENTS))
        .map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    let stamp = venv.join("requirements.installed");
    if python.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&requirements) {
        return Ok(python);
    }
    eprintln!("compare: making {} from {REQUIREMENTS}", venv.display());
    process::run_status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    process::run_status(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root.join(REQUIREMENTS)),
    )?;
    std::fs::write(&stamp, requirements).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(python)
}

/// transformers, torch and spec-llava versions, as one line.
fn versions(root: &Path, python: &Path) -> String {
    let py = Command::new(python)
        .args([
            "-c",
            "import transformers, torch; print(f'transformers {transformers.__version__}, torch {torch.__version__}')",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{py}, spec-llava {commit}")
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock (civil-from-days).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_json_becomes_three_rows() {
        let r: Value = serde_json::from_str(
            r#"{"plain": {"tokens_per_s": 100.0, "decode_tokens_per_s": 150.0},
                "spec": {"tokens_per_s": 120.0, "decode_tokens_per_s": 200.0},
                "speedup": 1.2, "tau": 5.5, "identical": 10, "total": 10,
                "adaptive": {"spec": {"tokens_per_s": 130.0, "decode_tokens_per_s": 240.0},
                             "speedup": 1.3, "tau": 5.0, "identical": 9}}"#,
        )
        .unwrap();
        let rows = bench_rows("x", &r);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].identical, Some((10, 10)));
        assert_eq!(rows[2].identical, Some((9, 10)));
        assert_eq!(rows[2].decode_tokens_per_s, Some(240.0));
        assert_eq!(rows[0].speedup, 1.0);
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"), "{d}");
    }
}
