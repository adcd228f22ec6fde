//! Core's modules reach only down: no module uses, directly or through
//! others, a module that uses it back.
//!
//! Reads every source file under `src/`, collects the `crate::<module>`
//! paths each one names (imports and inline paths, outside comments), and
//! fails on any cycle between modules, printing it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file belongs to (`providers/openai.rs`
/// belongs to `providers`); `None` for the crate root.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// The modules a file's code names as `crate::<module>`, skipping line
/// comments and everything from `#[cfg(test)]` on (tests may reach across).
fn named_modules(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                named.insert(name);
            }
        }
        // `use crate::{a, b::C}` groups.
        if let Some(group) = code.strip_prefix("use crate::{") {
            for part in group.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) {
                    named.insert(name);
                }
            }
        }
    }
    named
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A cycle through `start`, if the graph has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn core_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(&src).ok()?))
        .collect();
    assert!(modules.len() > 5, "too few modules found: {modules:?}");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = file.strip_prefix(&src).ok().and_then(module_of) else {
            continue;
        };
        let source = std::fs::read_to_string(file).expect("read source");
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(
            named_modules(&source, &modules)
                .into_iter()
                .filter(|m| *m != module),
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "core's modules form a cycle: {}\nthe graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let modules: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let a = named_modules("use crate::b::X;\nfn f() { crate::c::g() }", &modules);
    let b = named_modules("use crate::{a, c::Y};\n// crate::c in a comment", &modules);
    assert_eq!(a, ["b", "c"].map(String::from).into());
    assert_eq!(b, ["a", "c"].map(String::from).into());
    let graph = BTreeMap::from([
        ("a".to_owned(), a),
        ("b".to_owned(), b),
        ("c".to_owned(), BTreeSet::new()),
    ]);
    let cycle = find_cycle(&graph).expect("a -> b -> a");
    assert_eq!(cycle.first(), cycle.last());
}
