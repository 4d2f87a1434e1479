//! Developer commands for spec-llava, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! Follows the cargo-xtask convention: a plain binary in the workspace, std only, so it compiles in
//! seconds and needs nothing installed beyond rustup/cargo. Commands:
//! - `test`: install missing prerequisites, then fmt, clippy, tests, the wasm app build and the browser end-to-end suite (see `check`).
//! - `serve [--port P] [--no-build] [--hub-dir DIR [--drop-after BYTES]]`: static file server for
//!   the web app on 127.0.0.1, optionally serving DIR in the Hugging Face Hub's URL layout under
//!   `/hub/` with range requests (see `serve`).
//! - `scenes --count N --seed S --out DIR`: render procedural scenes with the `spec-llava` CLI.
//! - `bench [--json]`: release build, then `spec-llava bench-kernels` and the speculation `bench`.
//! - `setup [--browser]`: install prerequisites only (`--browser` adds the browser-test tools).
//! - `compare [--scenes N] [--json]`: transformers and our engines, plain and speculative, in one run.
//! - `layers`: check that `src/` imports follow the layers of ARCHITECTURE.md (see `layers`).
//! - `fuzz [--minutes N]`: the checkpoint/image fuzz test (`tests/fuzz_checkpoints.rs`) in release,
//!   for N minutes (default 10) instead of the test suite's 45 seconds.

mod app;
mod check;
mod compare;
mod gpu_report;
mod layers;
mod prereq;
mod process;
mod serve;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test                                 prerequisites, fmt, clippy, tests, app build, browser e2e
  serve [--port P] [--no-build] [--hub-dir DIR [--drop-after BYTES]]
                                       build, then serve the web app on http://127.0.0.1:P (default 8080);
                                       --hub-dir serves DIR as a model hub: /hub/<org>/<name>/resolve/<rev>/<file>
                                       is DIR/<org>/<name>/<file> (any <rev>), for ?hub=http://127.0.0.1:P/hub;
                                       --drop-after cuts each hub file's first GET after BYTES (resume tests)
  scenes --count N --seed S --out DIR  render procedural scenes (spec-llava scenes)
  bench [--json]                       kernel and speculation benchmarks (release build)
  setup [--browser]                    install missing prerequisites only
  compare [--scenes N] [--seed S] [--max-new-tokens M] [--json]
                                       transformers vs our engines, plain and speculative, one table
  gpu-report [--quick] [--out FILE]    bench-kernels, the demo pair and 7B/13B shapes (bench-shape) on the
                                       first GPU adapter, one markdown table (default target/gpu-report.md)
  scale-check [--like NAME] [--text-layers N] [--vision-layers N] [--tokens T] [--caption big|small] [--no-build]
                                       a synthetic checkpoint (default 13B-shaped q4, 22 text layers: over
                                       4 GiB) loaded by id in headless Chromium; one JSON line of figures
  layers                               check src/ imports against the layers of ARCHITECTURE.md
  fuzz [--minutes N]                   fuzz checkpoints and images for N minutes (default 10), release build";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let root = repo_root();
    let Some((command, rest)) = args.split_first() else {
        return Err(format!("no command given\n{USAGE}"));
    };
    match command.as_str() {
        "test" => {
            no_more_args(rest)?;
            check::run_all(&root)
        }
        "serve" => {
            let opts = Flags::parse(
                rest,
                &["--port", "--hub-dir", "--drop-after"],
                &["--no-build"],
            )?;
            let port = match opts.value("--port") {
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| format!("--port: not a port: {p}"))?,
                None => 8080,
            };
            let options = serve_options(&opts)?;
            if !opts.switch("--no-build") {
                prepare_app(&root)?;
            }
            serve::serve(&root, port, &options).map_err(|e| format!("serve: {e}"))
        }
        "scenes" => scenes(&root, rest),
        "bench" => bench(&root, rest),
        "fuzz" => fuzz(&root, rest),
        "setup" => {
            let opts = Flags::parse(rest, &[], &["--browser"])?;
            prereq::ensure_build_prereqs()?;
            if opts.switch("--browser") {
                prereq::ensure_browser_prereqs(&root)?;
            }
            Ok(())
        }
        "compare" => compare::compare(&root, rest),
        "gpu-report" => gpu_report::gpu_report(&root, rest),
        "scale-check" => {
            let opts = Flags::parse(
                rest,
                &[
                    "--like",
                    "--text-layers",
                    "--vision-layers",
                    "--tokens",
                    "--caption",
                ],
                &["--no-build"],
            )?;
            if !opts.switch("--no-build") {
                prereq::ensure_browser_prereqs(&root)?;
                prepare_app(&root)?;
            }
            let value = |flag: &str, default: &str| {
                opts.value(flag)
                    .map(String::from)
                    .unwrap_or_else(|| default.to_string())
            };
            let env = [
                ("HUB_LIKE", value("--like", "llava-1.5-13b")),
                ("HUB_TEXT_LAYERS", value("--text-layers", "22")),
                ("HUB_VISION_LAYERS", value("--vision-layers", "1")),
                ("HUB_TOKENS", value("--tokens", "2")),
                ("HUB_CAPTION", value("--caption", "big")),
            ]
            .map(|(k, v)| (k.to_string(), v));
            check::scale_check(&root, &env)
        }
        "layers" => {
            no_more_args(rest)?;
            layers::check(&root)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

/// The workspace root: the parent of this crate's manifest directory, so the commands work from
/// any current directory. `cargo run` sets `CARGO_MANIFEST_DIR` at run time too; it wins over the
/// compile-time value, which goes stale when a checkout is copied but shares a target dir.
fn repo_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    match manifest.parent() {
        Some(parent) => parent.to_path_buf(),
        None => manifest,
    }
}

/// The hub options of `cargo xtask serve`, checked before the (slow) app build: `--hub-dir DIR`
/// and `--drop-after BYTES`, which only cuts hub downloads and so needs `--hub-dir`.
fn serve_options(opts: &Flags) -> Result<serve::ServeOptions, String> {
    let drop_after = match opts.value("--drop-after") {
        Some(b) => Some(
            b.parse::<u64>()
                .map_err(|_| format!("--drop-after: not a byte count: {b}"))?,
        ),
        None => None,
    };
    let hub_dir = opts.value("--hub-dir").map(PathBuf::from);
    if drop_after.is_some() && hub_dir.is_none() {
        return Err("--drop-after needs --hub-dir (it cuts hub downloads only)".to_string());
    }
    Ok(serve::ServeOptions {
        hub_dir,
        drop_after,
    })
}

/// Builds what the page loads (the wasm app, see `app`) before serving it.
fn prepare_app(root: &Path) -> Result<(), String> {
    let index = root.join("index.html");
    if !index.is_file() {
        return Err(format!("{} is missing", index.display()));
    }
    app::build(root)
}

/// `cargo xtask scenes`: forwards the given flags to `spec-llava scenes`, which owns the defaults.
fn scenes(root: &Path, args: &[String]) -> Result<(), String> {
    let opts = Flags::parse(args, &["--count", "--seed", "--out"], &[])?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--bin", "spec-llava", "--", "scenes"]);
    for (flag, value) in &opts.values {
        let valid = match flag.as_str() {
            "--count" => value.parse::<u32>().is_ok(),
            "--seed" => value.parse::<u64>().is_ok(),
            _ => true,
        };
        if !valid {
            return Err(format!("{flag}: not a non-negative integer: {value}"));
        }
        cmd.args([flag, value]);
    }
    cmd.current_dir(root);
    process::run_status(&mut cmd)
}

/// `cargo xtask bench`: the kernel benchmark, then plain vs speculative decoding of the demo pair
/// (fixed and adaptive trees; the draft on the target's engine, then on the CPU engine), all from
/// one release build (`--json` is passed on: one JSON line each).
fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    let opts = Flags::parse(args, &[], &["--json"])?;
    let json: &[&str] = if opts.switch("--json") {
        &["--json"]
    } else {
        &[]
    };
    let demo = |m: &str| format!("web/models/demo/{m}");
    let spec = |extra: &[&str]| {
        let mut run: Vec<String> = ["bench", "--target"].map(String::from).to_vec();
        run.extend([demo("target"), "--draft".into(), demo("draft")]);
        run.extend(["--scenes", "10", "--adaptive"].map(String::from));
        run.extend(extra.iter().map(|s| s.to_string()));
        run
    };
    // The pair on the default engine, then with the draft on the CPU engine.
    let runs = [
        vec!["bench-kernels".to_string()],
        spec(&[]),
        spec(&["--draft-on-cpu"]),
    ];
    for run in runs {
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "--release", "--bin", "spec-llava", "--"]);
        cmd.args(run).args(json).current_dir(root);
        process::run_status(&mut cmd)?;
    }
    Ok(())
}

/// `cargo xtask fuzz`: `tests/fuzz_checkpoints.rs` in release with a budget of N minutes
/// (`SPEC_LLAVA_FUZZ_SECONDS`), its case counts shown.
fn fuzz(root: &Path, args: &[String]) -> Result<(), String> {
    let seconds = fuzz_seconds(args)?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--test",
        "fuzz_checkpoints",
        "--",
        "--nocapture",
    ])
    .env("SPEC_LLAVA_FUZZ_SECONDS", seconds.to_string())
    .current_dir(root);
    process::run_status(&mut cmd)
}

/// The fuzz budget in seconds from `--minutes N` (default 10; fractions allowed).
fn fuzz_seconds(args: &[String]) -> Result<u64, String> {
    let opts = Flags::parse(args, &["--minutes"], &[])?;
    let minutes = match opts.value("--minutes") {
        Some(m) => m
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m > 0.0 && *m <= 7.0 * 24.0 * 60.0)
            .ok_or_else(|| format!("--minutes: not a positive number of minutes: {m}"))?,
        None => 10.0,
    };
    Ok((minutes * 60.0).ceil() as u64)
}

/// The cargo that launched us (so nested builds use the same toolchain), else `cargo` on PATH.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Build the `spec-llava` CLI in release mode (benchmarks); its path.
fn release_cli(root: &Path) -> Result<PathBuf, String> {
    process::run_status(cargo().current_dir(root).args([
        "build",
        "--release",
        "--bin",
        "spec-llava",
    ]))?;
    Ok(root.join("target/release/spec-llava"))
}

fn no_more_args(rest: &[String]) -> Result<(), String> {
    match rest.first() {
        Some(arg) => Err(format!("unexpected argument `{arg}`\n{USAGE}")),
        None => Ok(()),
    }
}

/// Parsed `--flag value`, `--flag=value` and bare `--switch` arguments, in the order given.
#[derive(Debug, Default, PartialEq)]
struct Flags {
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], valued: &[&str], switches: &[&str]) -> Result<Flags, String> {
        let mut flags = Flags::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            if valued.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                flags.values.retain(|(n, _)| n != name);
                flags.values.push((name.to_string(), value));
            } else if switches.contains(&name) && inline.is_none() {
                flags.switches.push(name.to_string());
            } else {
                return Err(format!("unexpected argument `{arg}`\n{USAGE}"));
            }
        }
        Ok(flags)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_accept_separate_and_inline_values() {
        let flags = Flags::parse(
            &strings(&["--count", "4", "--seed=7", "--browser"]),
            &["--count", "--seed"],
            &["--browser"],
        )
        .unwrap();
        assert_eq!(flags.value("--count"), Some("4"));
        assert_eq!(flags.value("--seed"), Some("7"));
        assert_eq!(flags.value("--out"), None);
        assert!(flags.switch("--browser"));
    }

    #[test]
    fn flags_keep_the_last_repeat() {
        let flags =
            Flags::parse(&strings(&["--port", "1", "--port", "2"]), &["--port"], &[]).unwrap();
        assert_eq!(flags.values, vec![("--port".to_string(), "2".to_string())]);
    }

    #[test]
    fn flags_reject_unknown_and_missing_values() {
        let err = Flags::parse(&strings(&["--bogus"]), &["--port"], &[]).unwrap_err();
        assert!(err.starts_with("unexpected argument `--bogus`"), "{err}");
        let err = Flags::parse(&strings(&["--port"]), &["--port"], &[]).unwrap_err();
        assert_eq!(err, "--port needs a value");
        let err = Flags::parse(&strings(&["--browser=1"]), &[], &["--browser"]).unwrap_err();
        assert!(err.starts_with("unexpected argument"), "{err}");
    }

    #[test]
    fn fuzz_minutes_become_seconds() {
        assert_eq!(fuzz_seconds(&[]).unwrap(), 600);
        assert_eq!(fuzz_seconds(&strings(&["--minutes", "2.5"])).unwrap(), 150);
        let err = fuzz_seconds(&strings(&["--minutes", "-1"])).unwrap_err();
        assert!(err.starts_with("--minutes: not a positive"), "{err}");
    }

    #[test]
    fn scenes_rejects_a_non_integer_count_before_running_cargo() {
        let err = scenes(Path::new("."), &strings(&["--count", "many"])).unwrap_err();
        assert_eq!(err, "--count: not a non-negative integer: many");
    }

    #[test]
    fn serve_options_need_a_hub_for_drop_after() {
        let parse = |args: &[&str]| {
            let flags = Flags::parse(&strings(args), &["--hub-dir", "--drop-after"], &[]).unwrap();
            serve_options(&flags)
        };
        let options = parse(&["--hub-dir", "models", "--drop-after", "4096"]).unwrap();
        assert_eq!(options.hub_dir, Some(PathBuf::from("models")));
        assert_eq!(options.drop_after, Some(4096));
        let options = parse(&[]).unwrap();
        assert_eq!((options.hub_dir, options.drop_after), (None, None));
        let err = parse(&["--drop-after", "10"]).unwrap_err();
        assert!(err.starts_with("--drop-after needs --hub-dir"), "{err}");
        let err = parse(&["--hub-dir", "m", "--drop-after", "-1"]).unwrap_err();
        assert_eq!(err, "--drop-after: not a byte count: -1");
    }

    #[test]
    fn repo_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
