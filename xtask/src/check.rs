//! `cargo xtask test`: the whole local/CI check, as an ordered list of steps.
//!
//! Each step prints a banner, is timed, and the run stops at the first failing step with a non-zero
//! exit; a summary line ends the run either way. The order is cheapest-first (fmt before clippy
//! before tests) so a formatting slip fails in seconds, not minutes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{quiet_success, run_status};
use crate::{cargo, prereq};

/// One step of the check: either a command line or an in-process action (the prerequisites).
enum Action {
    Cargo(Vec<&'static str>),
    Prereqs,
    /// Imports follow ARCHITECTURE.md's layers (`layers::check`).
    Layers,
    /// Build the browser app into web/pkg (`app::build`).
    App,
    /// The browser end-to-end suite (tests/e2e, playwright-core driving headless Chromium).
    E2e,
}

struct Step {
    name: &'static str,
    action: Action,
}

impl Step {
    fn cargo(name: &'static str, args: &[&'static str]) -> Step {
        Step {
            name,
            action: Action::Cargo(args.to_vec()),
        }
    }

    fn describe(&self) -> String {
        match &self.action {
            Action::Cargo(args) => format!("cargo {}", args.join(" ")),
            Action::Prereqs => "install missing build and browser prerequisites".to_string(),
            Action::Layers => "src/ imports against the layers of ARCHITECTURE.md".to_string(),
            Action::App => "build the wasm app into web/pkg".to_string(),
            Action::E2e => {
                format!("node {E2E_SCRIPT}, {STRESS_SCRIPT} and {HUB_SCRIPT} (headless Chromium, WebGPU)")
            }
        }
    }

    fn execute(&self, root: &Path) -> Result<(), String> {
        match &self.action {
            Action::Prereqs => {
                prereq::ensure_build_prereqs()?;
                prereq::ensure_browser_prereqs(root)
            }
            Action::Layers => crate::layers::check(root),
            Action::App => crate::app::build(root),
            Action::E2e => run_e2e(root),
            Action::Cargo(args) => {
                let mut cmd = cargo();
                cmd.args(args).current_dir(root);
                run_status(&mut cmd)
            }
        }
    }
}

/// The steps of `cargo xtask test`, in order. `nextest` picks cargo-nextest when it is installed;
/// `plain` keeps rustfmt's diff free of colour escapes (rustfmt ignores `CARGO_TERM_COLOR`).
fn steps(nextest: bool, plain: bool) -> Vec<Step> {
    let fmt: &[&str] = if plain {
        &["fmt", "--all", "--", "--check", "--color", "never"]
    } else {
        &["fmt", "--all", "--", "--check"]
    };
    let mut steps = vec![
        Step {
            name: "prerequisites",
            action: Action::Prereqs,
        },
        Step::cargo("fmt", fmt),
        Step {
            name: "layers",
            action: Action::Layers,
        },
        Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    if nextest {
        // nextest does not run doctests, so they get their own step. --no-fail-fast: one run
        // reports every failing test, not only the first.
        steps.push(Step::cargo(
            "tests",
            &[
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--no-tests=warn",
            ],
        ));
        steps.push(Step::cargo("doctests", &["test", "--workspace", "--doc"]));
    } else {
        steps.push(Step::cargo(
            "tests",
            &["test", "--workspace", "--no-fail-fast"],
        ));
    }
    steps.push(Step {
        name: "app build",
        action: Action::App,
    });
    steps.push(Step {
        name: "browser e2e",
        action: Action::E2e,
    });
    steps
}

/// The end-to-end script, relative to the repository root.
pub const E2E_SCRIPT: &str = "tests/e2e/app.spec.mjs";
/// The page under stress (many drops, bad model files, a cut download, a lost GPU device).
pub const STRESS_SCRIPT: &str = "tests/e2e/stress.spec.mjs";
/// Models by id from a local hub, over the old 1.5 GiB cap (also `cargo xtask scale-check`).
pub const HUB_SCRIPT: &str = "tests/e2e/hub.spec.mjs";

/// Run the browser suite against this xtask's own server (`serve --no-build`), comparing the
/// page's captions with the native CLI's.
fn run_e2e(root: &Path) -> Result<(), String> {
    run_node_scripts(
        root,
        "target/e2e",
        &[E2E_SCRIPT, STRESS_SCRIPT, HUB_SCRIPT],
        &[],
    )
}

/// `cargo xtask scale-check`: the hub script at scale (a 13B-shaped q4 checkpoint over 4 GiB by
/// default), after building the app; `env` sets HUB_LIKE, HUB_TEXT_LAYERS, HUB_TOKENS, ...
pub fn scale_check(root: &Path, env: &[(String, String)]) -> Result<(), String> {
    run_node_scripts(root, "target/scale-check", &[HUB_SCRIPT], env)
}

/// Build the CLI, then run each browser script with the environment the harness reads
/// (SPEC_LLAVA_BIN, XTASK_BIN, E2E_ARTIFACTS = `artifacts` under `root`) plus `env`.
fn run_node_scripts(
    root: &Path,
    artifacts: &str,
    scripts: &[&str],
    env: &[(String, String)],
) -> Result<(), String> {
    run_status(cargo().current_dir(root).args([
        "build",
        "--package",
        "spec-llava",
        "--bin",
        "spec-llava",
    ]))?;
    let xtask = std::env::current_exe().map_err(|e| format!("xtask path: {e}"))?;
    let artifacts = root.join(artifacts);
    std::fs::create_dir_all(&artifacts).map_err(|e| format!("{}: {e}", artifacts.display()))?;
    for script in scripts {
        let mut cmd = Command::new("node");
        cmd.current_dir(root)
            .arg(script)
            .env("SPEC_LLAVA_BIN", root.join("target/debug/spec-llava"))
            .env("XTASK_BIN", &xtask)
            .env("E2E_ARTIFACTS", &artifacts)
            .envs(env.iter().map(|(k, v)| (k, v)));
        run_status(&mut cmd)?;
    }
    Ok(())
}

/// Runs every step in order; returns an error naming the first step that failed.
pub fn run_all(root: &Path) -> Result<(), String> {
    let plain = std::env::var_os("CARGO_TERM_COLOR").is_some_and(|c| c == "never");
    let steps = steps(has_nextest(), plain);
    let total = steps.len();
    let start = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        println!(
            "\n==> [{}/{total}] {}: {}",
            i + 1,
            step.name,
            step.describe()
        );
        let step_start = Instant::now();
        let outcome = step.execute(root);
        let took = step_start.elapsed();
        match outcome {
            Ok(()) => println!("==> {} ok ({})", step.name, seconds(took)),
            Err(msg) => {
                println!("==> {} FAILED ({}): {msg}", step.name, seconds(took));
                println!();
                // main prints this as the summary line.
                return Err(format!(
                    "test FAILED at step {}/{total} `{}` after {}",
                    i + 1,
                    step.name,
                    seconds(start.elapsed())
                ));
            }
        }
    }
    println!(
        "\nxtask: test passed, all {total} steps in {}",
        seconds(start.elapsed())
    );
    Ok(())
}

fn has_nextest() -> bool {
    quiet_success(cargo().args(["nextest", "--version"]))
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.name).collect()
    }

    #[test]
    fn steps_run_cheapest_first_and_end_with_the_browser() {
        assert_eq!(
            names(&steps(false, false)),
            [
                "prerequisites",
                "fmt",
                "layers",
                "clippy",
                "tests",
                "app build",
                "browser e2e"
            ]
        );
        assert_eq!(
            names(&steps(true, false)),
            [
                "prerequisites",
                "fmt",
                "layers",
                "clippy",
                "tests",
                "doctests",
                "app build",
                "browser e2e"
            ]
        );
        let all = steps(true, false);
        assert_eq!(all[6].describe(), "build the wasm app into web/pkg");
        assert!(all[7].describe().contains(E2E_SCRIPT));
        assert_eq!(
            all[2].describe(),
            "src/ imports against the layers of ARCHITECTURE.md"
        );
        assert_eq!(
            all[3].describe(),
            "cargo clippy --workspace --all-targets -- -D warnings"
        );
        assert_eq!(all[1].describe(), "cargo fmt --all -- --check");
        assert_eq!(
            steps(false, true)[1].describe(),
            "cargo fmt --all -- --check --color never"
        );
    }

    #[test]
    fn seconds_have_one_decimal() {
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3s");
    }
}
