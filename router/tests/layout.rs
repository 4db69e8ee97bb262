//! The layout of `router/src` is its architecture, and this test keeps it so. Read from
//! the sources (non-test code), so a new `use` that breaks a rule fails here:
//!
//! - the top-level modules form layers: each may use only the ones below it in
//!   [`LAYERS`] (the data path never reaches into the control plane or the admin
//!   listener; nothing but the commands uses the composition root);
//! - inside each folder (`data/`, `control/`, …) the modules form no cycle;
//! - `data/` is one folder per concern (nothing but `mod.rs` at its root), and those
//!   folders are layers too: each may use only the ones below it in [`DATA_LAYERS`];
//! - no source file is longer than [`MAX_FILE_LINES`] (functions are held to 60 lines
//!   by clippy's `too_many_lines`, see `clippy.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest first: each may use only those before it.
const LAYERS: &[&str] = &[
    "state", "logging", "data", "control", "admin", "config", "daemon", "commands",
];

/// The data path's folders, lowest first: each may use only those before it. A request
/// walks them top down: `edge` accepts, `http` tells its story (admitting with
/// `admission`, dialling through `upstream`, handing over to `relay`), all reading
/// `shared`; `tls` and `socket` are the tools underneath.
const DATA_LAYERS: &[&str] = &[
    "socket",
    "tls",
    "relay",
    "upstream",
    "admission",
    "shared",
    "http",
    "edge",
];

/// The longest a source file under `router/src` may be, tests included.
const MAX_FILE_LINES: usize = 700;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `router/src` but the crate roots, with its module path
/// (`data/edge/listen.rs` → `[data, edge, listen]`, `control/watch/mod.rs` → `[control, watch]`).
fn sources() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("router/src is readable") {
            let path: PathBuf = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_owned()
                })
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            if module == ["main"] || module == ["lib"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            // Tests may reach anywhere.
            let code = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .to_owned();
            out.push((module, code));
        }
    }
    out
}

/// The module paths `code` names, as `crate::a::b` or `super::b`, resolved from
/// `module` (only names that look like modules: lower case).
fn uses(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        for (i, _) in code.match_indices(prefix) {
            // `crate::` inside `super::crate::` cannot happen; `xsuper::` would be a
            // different word.
            if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let mut path = base.clone();
            for seg in code[i + prefix.len()..].split("::") {
                let name: String = seg
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                    break;
                }
                path.push(name.clone());
                if name.len() != seg.len() {
                    break;
                }
            }
            if path.len() > base.len() {
                out.push(path);
            }
        }
    }
    out
}

/// The graph at `depth`: module (its first `depth` segments) → the modules it uses,
/// cut to the same depth. With `within` (a folder path such as `data/relay`), only
/// modules inside that folder.
fn graph(depth: usize, within: Option<&str>) -> Graph {
    let inside = |m: &[String]| within.is_none_or(|w| m.join("/").starts_with(&format!("{w}/")));
    let mut g = Graph::new();
    for (module, code) in sources() {
        if !inside(&module) || module.len() < depth {
            continue;
        }
        let from = module[..depth].join("/");
        let deps = g.entry(from.clone()).or_default();
        for used in uses(&module, &code) {
            if used.len() < depth || !inside(&used) {
                continue;
            }
            let to = used[..depth].join("/");
            if to != from {
                deps.insert(to);
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    g: &Graph,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_owned());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(g, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

fn assert_acyclic(g: &Graph) {
    for start in g.keys() {
        let mut path = vec![start.clone()];
        if let Some(c) = cycle_from(g, start, start, &mut path, &mut BTreeSet::new()) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}

/// Whether every module in `g` uses only modules below it in `layers`.
fn check_layers(g: &Graph, layers: &[&str]) -> Result<(), String> {
    let rank = |m: &str| layers.iter().position(|l| *l == m);
    for (module, deps) in g {
        let Some(r) = rank(module) else {
            return Err(format!(
                "{module} is not in {layers:?}: place it in the architecture"
            ));
        };
        for dep in deps {
            if rank(dep).is_none_or(|d| d >= r) {
                return Err(format!(
                    "{module} uses {dep}, which is not below it in {layers:?}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn top_level_modules_are_layers() {
    let g = graph(1, None);
    if let Err(e) = check_layers(&g, LAYERS) {
        panic!("{e}");
    }
    assert_acyclic(&g);
}

#[test]
fn data_folders_are_layers() {
    // `data/relay` → `relay`: the folders by name.
    let g: Graph = graph(2, Some("data"))
        .into_iter()
        .map(|(k, v)| {
            let name = |s: &str| s.trim_start_matches("data/").to_owned();
            (name(&k), v.iter().map(|d| name(d)).collect())
        })
        .collect();
    assert!(
        g.len() >= DATA_LAYERS.len(),
        "read too few data folders: {g:?}"
    );
    if let Err(e) = check_layers(&g, DATA_LAYERS) {
        panic!("{e}");
    }
}

#[test]
fn data_has_only_folders_at_its_root() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/data");
    for entry in std::fs::read_dir(&data).expect("src/data is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        assert!(
            path.is_dir() || name == "mod.rs",
            "src/data/{name}: the data path's root holds only mod.rs and one folder per concern"
        );
    }
}

#[test]
fn no_source_file_is_too_long() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut read = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path)
                    .expect("a source file")
                    .lines()
                    .count();
                assert!(
                    lines <= MAX_FILE_LINES,
                    "{} has {lines} lines (at most {MAX_FILE_LINES}): split it by concern",
                    path.display()
                );
                read += 1;
            }
        }
    }
    assert!(read > 40, "read too few files");
}

#[test]
fn modules_inside_each_folder_form_no_cycle() {
    let mut folders = 0;
    let data_folders = DATA_LAYERS.iter().map(|f| format!("data/{f}"));
    for folder in LAYERS.iter().map(|f| f.to_string()).chain(data_folders) {
        let depth = folder.split('/').count() + 1;
        let g = graph(depth, Some(&folder));
        if g.len() < 2 {
            continue;
        }
        folders += 1;
        assert_acyclic(&g);
    }
    assert!(folders >= 10, "read too few folders");
}

#[test]
fn the_rules_catch_what_they_should() {
    // A cycle is found.
    let g: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()])))
        .collect();
    let mut path = vec!["a".to_owned()];
    assert!(cycle_from(&g, "a", "a", &mut path, &mut BTreeSet::new()).is_some());
    // Paths resolve from where they are written.
    let m = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        uses(&m("data/edge/listen"), "use super::accept::{self, X};"),
        vec![m("data/edge/accept")]
    );
    assert_eq!(
        uses(
            &m("control/watch/certs"),
            "use crate::data::tls::config::TlsSlot;"
        ),
        vec![m("data/tls/config")]
    );
    // An import between data folders that the layers do not allow is refused: the relay
    // may not reach up into the request's story.
    let folders: Graph = [("relay", "http")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()])))
        .collect();
    let err = check_layers(&folders, DATA_LAYERS).unwrap_err();
    assert!(err.contains("relay uses http"), "{err}");
    // And one it allows passes.
    let ok: Graph = [("http", "relay")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()])))
        .collect();
    assert_eq!(check_layers(&ok, DATA_LAYERS), Ok(()));
}
