//! The shape DESIGN.md asks for, checked on the sources: the model imports no writer module,
//! readers never reach the host-facing modules, top-level modules import each other without
//! a circle, and no source file grows past 700 lines (tests in their own files aside).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

const WRITERS: [&str; 7] = [
    "runtime", "probes", "net", "cgroup", "discover", "image", "collect",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Top-level module names a source text refers to as `crate::NAME` or inside
/// `crate::{NAME::..., NAME, ...}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items at depth 1 of the brace group: `a::{..}`, `b`, `c::d`.
            let mut depth = 1;
            let mut item = String::new();
            let mut at_item_start = true;
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        if at_item_start && !item.is_empty() {
                            out.insert(std::mem::take(&mut item));
                        }
                        at_item_start = true;
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && at_item_start {
                    if ch.is_alphanumeric() || ch == '_' {
                        item.push(ch);
                    } else if !item.is_empty() {
                        out.insert(std::mem::take(&mut item));
                        at_item_start = false;
                    }
                }
            }
            if !item.is_empty() {
                out.insert(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The top-level module a file belongs to: `src/model/net.rs` -> `model`, `src/metrics.rs` ->
/// `metrics`; `lib.rs` and `main.rs` belong to none.
fn top_level(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

fn is_test_file(file: &Path) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "tests.rs" || n.ends_with("_tests.rs"))
        || file.components().any(|c| c.as_os_str() == "tests")
}

#[test]
fn the_model_imports_no_writer_module() {
    let mut offenders = Vec::new();
    for f in rust_files(&src().join("model")) {
        let refs = crate_refs(&fs::read_to_string(&f).unwrap());
        for w in WRITERS {
            if refs.contains(w) {
                offenders.push(format!("{} uses crate::{w}", f.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn readers_read_the_snapshot_not_the_host() {
    let readers = [
        "metrics",
        "diagnose.rs",
        "history",
        "ui",
        "api/read.rs",
        "api/views.rs",
        "api/series.rs",
    ];
    let mut offenders = Vec::new();
    for r in readers {
        let p = src().join(r);
        let files = if p.is_dir() { rust_files(&p) } else { vec![p] };
        for f in files {
            let refs = crate_refs(&fs::read_to_string(&f).unwrap());
            for w in WRITERS {
                if refs.contains(w) {
                    offenders.push(format!("{} uses crate::{w}", f.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn top_level_modules_import_each_other_without_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(&src()) {
        let Some(module) = top_level(&f) else {
            continue;
        };
        let refs = crate_refs(&fs::read_to_string(&f).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(refs.into_iter().filter(|r| *r != module));
    }
    // Only edges to modules that exist (a `crate::X` in a doc comment may name a type).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    // Depth-first search for a back edge; report the circle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_owned());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in &graph[m] {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn no_source_file_is_over_700_lines() {
    let long: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|f| !is_test_file(f))
        .filter_map(|f| {
            let n = fs::read_to_string(&f).unwrap().lines().count();
            (n > 700).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these along their concerns:\n{}",
        long.join("\n")
    );
}

#[test]
fn crate_refs_reads_paths_and_groups() {
    let refs = crate_refs(
        "use crate::{\n    model::{A, B},\n    net,\n    probes::x::Y,\n};\nlet a = crate::cgroup::f();",
    );
    let want: BTreeSet<String> = ["model", "net", "probes", "cgroup"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(refs, want);
}
