//! Prerequisites: check for each tool the build or the browser tests need, install what is missing.
//!
//! Every `ensure_*` is idempotent and silent when the tool is already there, so `cargo xtask test`
//! can call them on every run. Versions and install commands follow `shared/notes/toolchain.md`:
//! wasm-bindgen-cli must equal Cargo.lock's `wasm-bindgen` (installed without `--locked`, whose
//! lockfile pins a crate the registry lacks); wasm-opt comes from npm `binaryen` (Debian's is too
//! old); Chromium is driven by npm `playwright-core`, never by a downloaded browser.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_status;

/// The target the library must build for (the browser app).
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// npm packages for the browser tests, pinned: (name, exact version).
pub const NPM_PACKAGES: &[(&str, &str)] = &[("playwright-core", "1.65.1"), ("binaryen", "132.0.0")];

/// What `cargo xtask test` needs today: the wasm target, and Mesa's lavapipe Vulkan driver, on
/// which the WGSL kernel tests run when the machine has no GPU.
pub fn ensure_build_prereqs() -> Result<(), String> {
    ensure_rust_target(WASM_TARGET)?;
    Apt::default().ensure_package("mesa-vulkan-drivers")
}

/// What the browser build and tests need: Chromium, lavapipe (mesa Vulkan), wasm-bindgen-cli at the
/// locked version, and the npm tools. Slow on first run (apt + a cargo install), so `test` does not
/// call it yet; `cargo xtask setup --browser` does.
pub fn ensure_browser_prereqs(root: &Path) -> Result<(), String> {
    let mut apt = Apt::default();
    apt.ensure_command("chromium", "chromium")?;
    apt.ensure_package("mesa-vulkan-drivers")?;
    ensure_wasm_bindgen(root)?;
    ensure_npm_packages(root, NPM_PACKAGES)
}

/// Adds a rustc target with rustup unless its standard library is already in the sysroot.
pub fn ensure_rust_target(target: &str) -> Result<(), String> {
    if rust_target_installed(target) {
        return Ok(());
    }
    println!("installing rust target {target}");
    run_status(Command::new("rustup").args(["target", "add", target]))
}

fn rust_target_installed(target: &str) -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib")
            .join(target)
            .join("lib")
            .is_dir()
}

/// Installs wasm-bindgen-cli when `wasm-bindgen --version` differs from Cargo.lock's wasm-bindgen
/// (the two must match exactly or the generated glue refuses the module).
pub fn ensure_wasm_bindgen(root: &Path) -> Result<(), String> {
    let lock =
        fs::read_to_string(root.join("Cargo.lock")).map_err(|e| format!("Cargo.lock: {e}"))?;
    let wanted = locked_version(&lock, "wasm-bindgen")
        .ok_or("Cargo.lock: no wasm-bindgen package (is a wasm dependency missing?)")?;
    let installed = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| parse_tool_version(&String::from_utf8_lossy(&out.stdout)));
    if installed.as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    println!(
        "installing wasm-bindgen-cli {wanted} (found {})",
        installed.as_deref().unwrap_or("none")
    );
    run_status(crate::cargo().args([
        "install",
        "wasm-bindgen-cli",
        "--version",
        &format!("={wanted}"),
    ]))
}

/// Installs each npm package (name, exact version) into `root/node_modules` unless that version is
/// already there. `--no-save` keeps package.json/package-lock.json out of the tree.
pub fn ensure_npm_packages(root: &Path, packages: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<String> = packages
        .iter()
        .filter(|(name, version)| installed_npm_version(root, name).as_deref() != Some(*version))
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing npm packages {}", missing.join(" "));
    let mut cmd = Command::new("npm");
    cmd.args([
        "install",
        "--no-save",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ])
    .arg("--prefix")
    .arg(root)
    .args(&missing);
    run_status(&mut cmd)
}

fn installed_npm_version(root: &Path, name: &str) -> Option<String> {
    let manifest = root.join("node_modules").join(name).join("package.json");
    json_string_field(&fs::read_to_string(manifest).ok()?, "version")
}

/// apt-get, running `apt-get update` at most once per xtask run and only when something is missing.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs `package` when `command` is not on PATH (what `which command` would report).
    pub fn ensure_command(&mut self, command: &str, package: &str) -> Result<(), String> {
        if find_on_path(command).is_some() {
            return Ok(());
        }
        self.install(package)
    }

    /// Installs `package` unless dpkg lists it as installed (for packages without a command).
    pub fn ensure_package(&mut self, package: &str) -> Result<(), String> {
        let installed = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout) == "install ok installed");
        if installed {
            return Ok(());
        }
        self.install(package)
    }

    fn install(&mut self, package: &str) -> Result<(), String> {
        println!("installing {package} with apt-get");
        if !self.updated {
            run_status(apt_get().args(["update", "-qq"]))?;
            self.updated = true;
        }
        run_status(apt_get().args(["install", "-y", "-qq", package]))
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// The first executable file named `command` in the PATH directories.
fn find_on_path(command: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The version of package `name` in a Cargo.lock (`[[package]]` tables of `name = ".."` and
/// `version = ".."` lines). The name must match exactly: `wasm-bindgen-macro` is not `wasm-bindgen`.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted_name = format!("name = \"{name}\"");
    lock.split("[[package]]").find_map(|table| {
        let mut lines = table.lines().map(str::trim);
        if !lines.clone().any(|l| l == wanted_name) {
            return None;
        }
        lines.find_map(|l| {
            l.strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string)
        })
    })
}

/// The version from a `tool 1.2.3` line, as `wasm-bindgen --version` prints.
fn parse_tool_version(output: &str) -> Option<String> {
    output.split_whitespace().nth(1).map(str::to_string)
}

/// The string value of a top-level `"field": "value"` in a JSON text (enough for package.json's
/// `version`, whose first occurrence is the package's own).
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let after_key = &json[json.find(&key)? + key.len()..];
    let after_colon = after_key.trim_start().strip_prefix(':')?.trim_start();
    let body = after_colon.strip_prefix('"')?;
    Some(body[..body.find('"')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
[[package]]
name = "wasm-bindgen-macro"
version = "0.2.999"

[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;

    #[test]
    fn locked_version_matches_the_exact_package_name() {
        assert_eq!(
            locked_version(LOCK, "wasm-bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(
            locked_version(LOCK, "wasm-bindgen-macro").as_deref(),
            Some("0.2.999")
        );
        assert_eq!(locked_version(LOCK, "wasm"), None);
    }

    #[test]
    fn workspace_lock_pins_a_wasm_bindgen_version() {
        let lock = fs::read_to_string(crate::repo_root().join("Cargo.lock")).unwrap();
        let version = locked_version(&lock, "wasm-bindgen").unwrap();
        assert!(version.starts_with("0.2."), "{version}");
    }

    #[test]
    fn tool_version_is_the_second_word() {
        assert_eq!(
            parse_tool_version("wasm-bindgen 0.2.130\n").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(parse_tool_version(""), None);
    }

    #[test]
    fn json_string_field_reads_package_json_versions() {
        let json = "{\n  \"name\": \"binaryen\",\n  \"version\" : \"132.0.0\",\n  \"x\": {\"version\": \"9\"}\n}";
        assert_eq!(
            json_string_field(json, "version").as_deref(),
            Some("132.0.0")
        );
        assert_eq!(json_string_field(json, "name").as_deref(), Some("binaryen"));
        assert_eq!(json_string_field(json, "missing"), None);
        assert_eq!(json_string_field("{\"version\": 3}", "version"), None);
    }

    #[test]
    fn find_on_path_finds_executables_only() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-command-xtask-test").is_none());
    }

    #[test]
    fn apt_installs_nothing_when_the_tool_is_present() {
        let mut apt = Apt::default();
        apt.ensure_command("sh", "xtask-no-such-package").unwrap();
        apt.ensure_package("dpkg").unwrap();
        // `updated` flips before any install, so it proves apt-get was never run.
        assert!(!apt.updated);
    }

    #[test]
    fn the_host_target_counts_as_installed() {
        let host = Command::new("rustc").arg("-vV").output().unwrap();
        let host = String::from_utf8_lossy(&host.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .unwrap();
        assert!(rust_target_installed(&host));
        assert!(!rust_target_installed("no-such-target-xtask"));
    }
}
