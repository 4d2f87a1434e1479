//! `cargo xtask layers` (and the first check of `cargo xtask test`): every `crate::` (and
//! `super::`) path in `src/` points to a module in the same layer or a lower one, as the tables in
//! `ARCHITECTURE.md` say. The tables are the one place the layering is written down: this check
//! reads them, so the document and the code cannot drift apart.
//!
//! Two tables are read:
//! - `| layer | modules | ... |` rows: a layer number and the module paths in it (backticked); a
//!   path is placed by its longest listed prefix (`backend::math` before `backend`);
//! - `| module | may import only |` rows: a narrower rule for everything under a module (the page
//!   reaches the engine only through its messages).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The parsed tables.
#[derive(Debug, Default)]
struct Rules {
    /// (module path, layer).
    layers: Vec<(Vec<String>, usize)>,
    /// (module path, the only module paths it may import from the crate).
    only: Vec<(Vec<String>, Vec<Vec<String>>)>,
}

fn split_path(p: &str) -> Vec<String> {
    p.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_rules(doc: &str) -> Result<Rules, String> {
    let mut rules = Rules::default();
    let mut table = "";
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            table = "";
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2 {
            continue;
        }
        match (cells[0], cells[1]) {
            ("layer", "modules") => table = "layers",
            ("module", "may import only") => table = "only",
            _ if cells[0].starts_with("--") || cells[0].starts_with(":-") => {}
            (first, second) if table == "layers" => {
                let layer: usize = first
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        format!("ARCHITECTURE.md: layer row without a number: {line}")
                    })?;
                for m in ticked(second) {
                    rules.layers.push((split_path(&m), layer));
                }
            }
            (first, second) if table == "only" => {
                for m in ticked(first) {
                    let allowed = ticked(second).iter().map(|a| split_path(a)).collect();
                    rules.only.push((split_path(&m), allowed));
                }
            }
            _ => {}
        }
    }
    if rules.layers.is_empty() {
        return Err("ARCHITECTURE.md: no `| layer | modules |` table found".into());
    }
    Ok(rules)
}

impl Rules {
    /// The layer of a module path: its longest listed prefix.
    fn layer(&self, path: &[String]) -> Option<usize> {
        self.layers
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, l)| *l)
    }
}

/// Remove comments and string literals, so paths in docs and messages are not counted.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            // A string literal (raw strings with `#` are rare in src and hold no `crate::`).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '{' would unbalance a `use` group.
            i += 3;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The module paths a `use` tree / path expression names, starting after `crate::`: `a::b`,
/// `{a, b::{c, d}}`, `a::{b, c}` (each first path segment group expanded).
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head = split_path(&tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut base = prefix.to_vec();
        base.extend(head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
        return;
    }
    let mut path = prefix.to_vec();
    for seg in split_path(tree) {
        let seg = seg.split_whitespace().next().unwrap_or("").to_string();
        if seg == "self" || seg == "*" {
            break;
        }
        path.push(seg);
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// Every crate path `src` names: `crate::...` and `super::...` (resolved against `module`).
fn crate_paths(src: &str, module: &[String]) -> Vec<Vec<String>> {
    let code = strip(src);
    let mut out = Vec::new();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent(module))] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(anchor) {
            let before = rest[..i].chars().next_back();
            let after = &rest[i + anchor.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = if after.starts_with('{') {
                let mut depth = 0;
                after
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += (c == '{') as i32 - (c == '}') as i32;
                        depth == 0
                    })
                    .map_or(after.len(), |(i, _)| i + 1)
            } else {
                after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                    .unwrap_or(after.len())
            };
            let tree = &after[..end];
            let tree = if tree.contains('{') && !tree.contains('}') {
                // `a::b::{` of a multi-line group: take the group to its closing brace.
                let mut depth = 0;
                let close = after
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += (c == '{') as i32 - (c == '}') as i32;
                        c == '}' && depth == 0
                    })
                    .map_or(after.len(), |(i, _)| i + 1);
                &after[..close]
            } else {
                tree
            };
            expand(tree, &base, &mut out);
        }
    }
    out
}

/// The module `super` names from `module`: in `a/b.rs` and in `a/b/mod.rs` (both a::b), `a`.
fn parent(module: &[String]) -> Vec<String> {
    module[..module.len().saturating_sub(1)].to_vec()
}

/// The module path of a file under `src/` (`backend/gpu/mod.rs` -> backend::gpu).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Root re-exports of `lib.rs` and the module each stands for.
const ROOT_ALIASES: &[(&str, &str)] = &[("Error", "error"), ("Result", "error")];

/// Check `src/` against `ARCHITECTURE.md`; the list of violations, empty when the layering holds.
pub fn violations(root: &Path) -> Result<Vec<String>, String> {
    let doc_path = root.join("ARCHITECTURE.md");
    let doc =
        std::fs::read_to_string(&doc_path).map_err(|e| format!("{}: {e}", doc_path.display()))?;
    let rules = parse_rules(&doc)?;
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    files.sort();
    let mut problems = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        // The crate root only declares modules; the CLI is a separate crate at the top.
        if rel == Path::new("lib.rs") || rel.starts_with("bin") {
            continue;
        }
        let module = module_of(rel);
        let Some(from) = rules.layer(&module) else {
            problems.insert(format!(
                "src/{}: module {} is in no layer of ARCHITECTURE.md",
                rel.display(),
                module.join("::")
            ));
            continue;
        };
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let only = rules
            .only
            .iter()
            .filter(|(m, _)| module.starts_with(m))
            .max_by_key(|(m, _)| m.len());
        for mut path in crate_paths(&text, &module) {
            if let Some((_, target)) = ROOT_ALIASES.iter().find(|(a, _)| path[0] == *a) {
                path = vec![target.to_string()];
            }
            let shown = path.join("::");
            if let Some((m, allowed)) = only {
                if !path.starts_with(m) && !allowed.iter().any(|a| path.starts_with(a)) {
                    problems.insert(format!(
                        "src/{}: {} may import only what ARCHITECTURE.md lists, not crate::{shown}",
                        rel.display(),
                        m.join("::")
                    ));
                }
            }
            match rules.layer(&path) {
                None => {
                    problems.insert(format!(
                        "src/{}: uses crate::{shown}, which is in no layer of ARCHITECTURE.md",
                        rel.display()
                    ));
                }
                Some(to) if to > from => {
                    problems.insert(format!(
                        "src/{}: layer {from} ({}) imports crate::{shown} from layer {to} above it",
                        rel.display(),
                        module.join("::")
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(problems.into_iter().collect())
}

/// The check as a step: an error listing every violation.
pub fn check(root: &Path) -> Result<(), String> {
    let problems = violations(root)?;
    if problems.is_empty() {
        println!("layers: every crate:: import stays within its layer or goes down");
        return Ok(());
    }
    Err(format!(
        "{} import(s) break the layering of ARCHITECTURE.md:\n  {}",
        problems.len(),
        problems.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(src: &str, module: &[&str]) -> Vec<String> {
        let m: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        crate_paths(src, &m)
            .into_iter()
            .map(|p| p.join("::"))
            .collect()
    }

    #[test]
    fn use_groups_and_inline_paths_are_found() {
        let src = "use crate::a::{b, c::{d, e}};\nuse crate::{f, g::h as k};\nfn x() { crate::i::j(); }\n// crate::not_this\nconst S: &str = \"crate::nor_this\";\nuse super::sib::T;";
        assert_eq!(
            paths(src, &["top", "me"]),
            [
                "a::b",
                "a::c::d",
                "a::c::e",
                "f",
                "g::h",
                "i::j",
                "top::sib::T"
            ]
        );
    }

    #[test]
    fn multi_line_groups_are_found() {
        let src = "use crate::quant::{\n    blocks_per_row, quantizable,\n    Format,\n};";
        assert_eq!(
            paths(src, &["quantize"]),
            [
                "quant::blocks_per_row",
                "quant::quantizable",
                "quant::Format"
            ]
        );
    }

    #[test]
    fn tables_place_modules_by_longest_prefix() {
        let doc = "| layer | modules | what |\n|---:|---|---|\n| 2 | `backend::math` | x |\n| 3 | `backend` | y |\n\n| module | may import only |\n|---|---|\n| `app::ui` | `app::messages` |\n";
        let r = parse_rules(doc).unwrap();
        assert_eq!(r.layer(&split_path("backend::math::softmax")), Some(2));
        assert_eq!(r.layer(&split_path("backend::cpu")), Some(3));
        assert_eq!(r.layer(&split_path("model")), None);
        assert_eq!(r.only.len(), 1);
    }

    #[test]
    fn the_repository_keeps_its_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let problems = violations(root).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
