//! Modules point one way: no crate of the workspace has an import circle
//! between its modules (a module using a second that, directly or not, uses
//! the first). Doc comments and `#[cfg(test)] mod tests` blocks do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module of a crate (one file under `src/`) and the crate modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .filter(|n| n != "lib" && n != "main")
        .collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let Some(name) = file.file_stem().and_then(|s| s.to_str()) else { continue };
        if !names.contains(name) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read module");
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for part in line.split("crate::").skip(1) {
                let group = part.strip_prefix('{').unwrap_or(part);
                for item in group.split(',') {
                    let module: String =
                        item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if names.contains(&module) && module != name {
                        deps.insert(module);
                    }
                    if !part.starts_with('{') {
                        break;
                    }
                }
            }
        }
        graph.insert(name.to_owned(), deps);
    }
    graph
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).expect("read crates/") {
        let src = entry.expect("dir entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        for module in graph.keys() {
            if let Some(cycle) = cycle_from(&graph, module) {
                panic!("import circle in {}: {}", src.display(), cycle.join(" -> "));
            }
        }
        checked += graph.len();
    }
    assert!(checked > 40, "only {checked} modules found: the scan is broken");
}

#[test]
fn the_scan_finds_a_circle_when_there_is_one() {
    let dir = std::env::temp_dir().join(format!("module-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("a.rs"), "use crate::b::B;\n").expect("write");
    std::fs::write(dir.join("b.rs"), "use crate::{c::C, x};\n// crate::a::A in a comment\n").expect("write");
    std::fs::write(dir.join("c.rs"), "fn f() { crate::a::g() }\n").expect("write");
    let graph = module_graph(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(cycle_from(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
