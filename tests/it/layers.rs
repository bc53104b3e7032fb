//! The layers' rules (ARCHITECTURE.md), checked on the source: which folder
//! of `src/` may name which, where rmcp's and ractor's types may appear, and
//! that the folders' imports form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each folder may import of the crate.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("exec", &["config"]),
    ("core", &["config", "exec"]),
    ("mcp", &["config", "core"]),
    ("backends", &["config", "core", "exec", "mcp"]),
    ("ops", &["config", "core", "exec"]),
    (
        "supervise",
        &["config", "core", "exec", "backends", "mcp", "ops"],
    ),
    ("cli", &["config", "core", "exec", "mcp", "ops"]),
];

/// Where a crate may be named (path prefixes under `src/`).
const CRATE_ROOMS: &[(&str, &[&str])] = &[
    ("rmcp", &["mcp/", "backends/mcp/"]),
    ("ractor", &["supervise/", "ops/", "backends/mcp/"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a Rust file with comments and the insides of string and
/// char literals blanked, so that only real paths are left to find.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&b, i) {
            // A raw string: r"...", r#"..."#, ...
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || b.get(i + 2) == Some(&'\'')) {
            // A char literal (a lifetime has no closing quote two on).
            i += 1;
            while i < b.len() && b[i] != '\'' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The words that follow `prefix` in `code` (`crate::core::x` → `core`).
fn words_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let word_start = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[at + prefix.len()..];
        let end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if word_start {
            out.push(&after[..end]);
        }
        rest = after;
    }
    out
}

#[test]
fn the_layers_import_only_what_their_rules_allow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed: BTreeMap<&str, &[&str]> = MAY_IMPORT.iter().copied().collect();
    let mut problems = Vec::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    let mut checked = 0;
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        // The binaries are wiring and test helpers, outside the layers.
        if rel.starts_with("bin/") || rel == "main.rs" || rel == "lib.rs" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let folder = rel.split('/').next().unwrap();
        let Some(may) = allowed.get(folder) else {
            problems.push(format!("{rel}: `{folder}` is not a layer of MAY_IMPORT"));
            continue;
        };
        checked += 1;
        for used in words_after(&code, "crate::") {
            if used != folder {
                edges.insert((folder.to_string(), used.to_string()));
                if !may.contains(&used) {
                    problems.push(format!("{rel}: {folder}/ imports {used}/"));
                }
            }
        }
        for (krate, rooms) in CRATE_ROOMS {
            let named = !words_after(&code, &format!("{krate}::")).is_empty()
                || code.contains(&format!("use {krate}"));
            if named && !rooms.iter().any(|r| rel.starts_with(r)) {
                problems.push(format!("{rel}: names {krate} outside {rooms:?}"));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} files read: is src/ where it was?"
    );
    assert!(
        problems.is_empty(),
        "layer rules broken:\n{}",
        problems.join("\n")
    );
    // No cycle between folders: repeatedly peel off folders nothing left imports.
    let mut left: BTreeSet<String> = edges
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    loop {
        let leaf = left
            .iter()
            .find(|f| !edges.iter().any(|(a, b)| a == *f && left.contains(b)))
            .cloned();
        match leaf {
            Some(f) => {
                left.remove(&f);
            }
            None => break,
        }
    }
    assert!(left.is_empty(), "an import cycle among {left:?}: {edges:?}");
}

#[test]
fn the_checker_sees_paths_and_not_text() {
    let code = code_only(
        "use crate::core::x; // crate::ops::y\nlet s = \"crate::mcp::z\"; let r = r#\"rmcp::x\"#; let c = '\"'; fn f<'a>() { crate::exec::run() }",
    );
    assert_eq!(words_after(&code, "crate::"), ["core", "exec"]);
    assert!(words_after(&code, "rmcp::").is_empty());
    assert!(words_after("xcrate::core", "crate::").is_empty());
}
