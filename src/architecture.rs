//! ARCHITECTURE.md's layout against the tree: every crate and module it names exists, every workspace
//! member has an entry, and every top-level module of each crate is named in its crate's entry. Runs as a
//! unit test of the root package, so a rename that forgets the document fails `cargo test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One entry of the layout block: the path at the start of its first line, and all of its text.
struct Entry {
    path: String,
    text: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn layout() -> Vec<Entry> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let block = doc
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("a code block under ## Layout");
    let mut entries: Vec<Entry> = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        match (line.starts_with(' '), entries.last_mut()) {
            (true, Some(e)) => {
                e.text.push(' ');
                e.text.push_str(line.trim());
            }
            _ => {
                let path = line.split_whitespace().next().unwrap_or_default().to_owned();
                entries.push(Entry {
                    text: line[path.len()..].trim().to_owned(),
                    path,
                });
            }
        }
    }
    entries
}

/// Module-like names in an entry's text: `name.rs`, `dir/name.rs`, and `dir/` standing alone.
fn names(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ':' | ';' | '`'))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.starts_with('/') && !w.starts_with('-'))
        .filter(|w| {
            let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let rs = w.strip_suffix(".rs").is_some_and(|s| s.split('/').all(plain));
            let dir = w.strip_suffix('/').is_some_and(|s| s.split('/').all(plain));
            rs || dir
        })
        .map(str::to_owned)
        .collect()
}

/// Whether a file or directory called `name` is anywhere below `dir`.
fn found_below(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        e.file_name() == name || (p.is_dir() && found_below(&p, name))
    })
}

fn workspace_members() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("a members line");
    line.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn every_crate_and_module_the_layout_names_exists() {
    let root = root();
    let mut missing = Vec::new();
    for e in layout() {
        let dir = root.join(&e.path);
        if !dir.exists() {
            missing.push(e.path.clone());
            continue;
        }
        for name in names(&e.text) {
            let bare = name.trim_end_matches('/');
            let exists = dir.join(bare).exists()
                || root.join(bare).exists()
                || (!bare.contains('/') && found_below(&dir, bare));
            if !exists {
                missing.push(format!("{} (in the entry of {})", name, e.path));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what is not in the tree: {missing:?}"
    );
}

#[test]
fn every_crate_and_top_level_module_is_in_the_layout() {
    let entries = layout();
    let mut unnamed = Vec::new();
    let crates = workspace_members()
        .into_iter()
        .map(|m| (format!("{m}/"), root().join(&m).join("src")));
    for (entry_path, src) in crates.chain([("src/".to_owned(), root().join("src"))]) {
        let Some(entry) = entries.iter().find(|e| e.path == entry_path) else {
            unnamed.push(entry_path);
            continue;
        };
        let named: BTreeSet<String> = names(&entry.text)
            .into_iter()
            .map(|n| {
                n.rsplit('/')
                    .find(|s| !s.is_empty())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        for module in std::fs::read_dir(&src).expect("a src directory").flatten() {
            let name = module.file_name().to_string_lossy().into_owned();
            // lib.rs is the crate itself, named by the entry's path.
            let is_module = (name.ends_with(".rs") && name != "lib.rs") || module.path().is_dir();
            if is_module && !named.contains(&name) {
                unnamed.push(format!("{entry_path}{name}"));
            }
        }
    }
    assert!(unnamed.is_empty(), "not in ARCHITECTURE.md's layout: {unnamed:?}");
}

#[test]
fn names_are_modules_and_folders_not_urls_or_flags() {
    assert_eq!(
        names("decode/ (wire.rs: zero-copy; convert.rs), /api/policies, --role analyze, src/roles.rs wires"),
        ["decode/", "wire.rs", "convert.rs", "src/roles.rs"]
    );
}
