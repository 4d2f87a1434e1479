//! Builds the browser app: the `spec-llava` library as a wasm32 cdylib (`cargo rustc
//! --crate-type cdylib`, so the release profile's LTO applies), wasm-bindgen `--target web` into
//! `web/pkg/` (served, git-ignored), then wasm-opt from npm binaryen when installed.
//!
//! The page (`index.html`) and the engine worker (`web/worker.js`) load the same module.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::prereq;
use crate::process::run_status;

/// Where wasm-bindgen writes the module and its JS glue (see index.html, web/worker.js, sw.js).
pub const PKG_DIR: &str = "web/pkg";
/// A separate target dir: the cdylib build must not invalidate the native test build's artifacts.
const TARGET_DIR: &str = "target/app";
const PROFILE: &str = "wasm-release";

/// Build the app into `web/pkg`. Installs what it needs first (wasm target, wasm-bindgen-cli at
/// the lockfile's version, npm binaryen).
pub fn build(root: &Path) -> Result<(), String> {
    prereq::ensure_rust_target(prereq::WASM_TARGET)?;
    prereq::ensure_wasm_bindgen(root)?;
    prereq::ensure_npm_packages(root, prereq::NPM_PACKAGES)?;
    run_status(
        crate::cargo()
            .current_dir(root)
            .args(["rustc", "--package", "spec-llava", "--lib", "--target"])
            .arg(prereq::WASM_TARGET)
            .args(["--profile", PROFILE, "--target-dir", TARGET_DIR])
            .args(["--crate-type", "cdylib"])
            // 128-bit SIMD (every current browser runs it): the CPU engine's tiles and attention
            // loops vectorise four lanes at a time, computing the same numbers.
            .args(["--", "-C", "target-feature=+simd128"]),
    )?;
    let wasm = wasm_path(root);
    let out = root.join(PKG_DIR);
    run_status(
        Command::new("wasm-bindgen")
            .args([
                "--target",
                "web",
                "--no-typescript",
                "--out-name",
                "spec_llava",
            ])
            .arg("--out-dir")
            .arg(&out)
            .arg(&wasm),
    )?;
    let opt = root.join("node_modules/.bin/wasm-opt");
    if opt.is_file() {
        let module = out.join("spec_llava_bg.wasm");
        run_status(
            Command::new(opt)
                .args([
                    "-O2",
                    "--enable-simd",
                    "--enable-bulk-memory",
                    "--enable-nontrapping-float-to-int",
                ])
                .args([
                    "--enable-sign-ext",
                    "--enable-mutable-globals",
                    "--enable-reference-types",
                ])
                .arg(&module)
                .arg("-o")
                .arg(&module),
        )?;
    }
    Ok(())
}

fn wasm_path(root: &Path) -> PathBuf {
    root.join(TARGET_DIR)
        .join(prereq::WASM_TARGET)
        .join(PROFILE)
        .join("spec_llava.wasm")
}
