//! The documentation stands alone: nothing in `docs/`, `README.md`, `scripts/`
//! or the workspace's Rust sources points at files outside the repository
//! (the external specs the project started from are not part of a clone), and
//! every relative Markdown link in `docs/` and `README.md` names a file that
//! exists inside the repository.

use std::path::{Component, Path, PathBuf};

/// Markers of references to material outside the repository. Built from
/// pieces so this file does not match itself.
fn forbidden() -> Vec<String> {
    vec![
        ["..", "/shared"].concat(),   // a path to the sibling `shared/` directory
        ["shared", "/spec"].concat(), // the external spec files
        '\u{a7}'.to_string(),         // "section sign": numbered sections of those specs
    ]
}

fn repo_root() -> PathBuf {
    // crates/sse-testkit -> the workspace root
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root exists")
}

/// Files under `dir` (recursively) accepted by `keep`, skipping build output,
/// dependencies and hidden directories.
fn files(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            files(&path, keep, out);
        } else if keep(&path) {
            out.push(path);
        }
    }
}

fn checked_files(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    files(&root.join("docs"), &|_| true, &mut out);
    files(&root.join("scripts"), &|_| true, &mut out);
    let rust = |p: &Path| p.extension().is_some_and(|e| e == "rs");
    files(&root.join("crates"), &rust, &mut out);
    files(&root.join("fuzz"), &rust, &mut out);
    out
}

fn markdown(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    files(&root.join("docs"), &|p| p.extension().is_some_and(|e| e == "md"), &mut out);
    out
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Targets of inline Markdown links `[text](target)`.
fn link_targets(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn docs_and_sources_do_not_refer_to_files_outside_the_repository() {
    let root = repo_root();
    let files = checked_files(&root);
    assert!(files.iter().any(|f| f.ends_with("docs/ARCHITECTURE.md")), "docs/ not found under {}", root.display());
    let markers = forbidden();
    let mut found = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for (n, line) in text.lines().enumerate() {
            for m in &markers {
                if line.contains(m.as_str()) {
                    let rel = file.strip_prefix(&root).unwrap_or(file);
                    found.push(format!("{}:{}: {:?} in {line:?}", rel.display(), n + 1, m));
                }
            }
        }
    }
    assert!(found.is_empty(), "references outside the repository:\n{}", found.join("\n"));
}

#[test]
fn relative_markdown_links_name_files_inside_the_repository() {
    let root = repo_root();
    let mut bad = Vec::new();
    for file in markdown(&root) {
        let text = std::fs::read_to_string(&file).expect("markdown file is readable");
        let dir = file.parent().unwrap_or(&root);
        for target in link_targets(&text) {
            if target.is_empty() || target.starts_with('#') || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            let resolved = normalise(&dir.join(path));
            let rel = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
            if !resolved.starts_with(&root) {
                bad.push(format!("{rel}: {target} points outside the repository"));
            } else if !resolved.exists() {
                bad.push(format!("{rel}: {target} does not exist"));
            }
        }
    }
    assert!(bad.is_empty(), "bad links:\n{}", bad.join("\n"));
}
