//! The node's modules depend one way: `http` on everything below it, `node` (the running member)
//! on the tasks it starts, those on `raft`, `raft` on `sqlite`, and nothing below `node` on
//! `node` or `http`. This reads the sources and fails on a reference that goes the other way or
//! closes a circle, naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules and the ones each may not refer to.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("sqlite", &["raft", "node", "http", "backup", "loader"]),
    ("raft", &["node", "http", "backup", "loader"]),
    ("backup", &["node", "http"]),
    ("loader", &["node", "http", "backup"]),
    ("node", &["http"]),
];

fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::<module>` references outside comments, with `use crate::{a, b::c}` groups.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                for part in group.split([',', '}']) {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let from = module_of(rel);
        if from == "bin" || from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for to in references(&text) {
            if to == from || !modules.contains(&to) {
                continue;
            }
            if let Some((_, bad)) = FORBIDDEN.iter().find(|(m, _)| *m == from)
                && bad.contains(&to.as_str())
            {
                problems.push(format!("{} refers to crate::{to}", rel.display()));
            }
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    // Any circle at all, not only the listed edges.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            circles.push(format!("{} -> {m}", path[i..].join(" -> ")));
            return;
        }
        if !done.insert(m.to_owned()) {
            return;
        }
        path.push(m.to_owned());
        for n in graph.get(m).into_iter().flatten() {
            visit(n, graph, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    for m in graph.keys() {
        visit(
            m,
            &graph,
            &mut Vec::new(),
            &mut BTreeSet::new(),
            &mut circles,
        );
    }
    circles.sort();
    circles.dedup();
    assert!(
        problems.is_empty() && circles.is_empty(),
        "module dependencies go the wrong way:\n{}\ncircles:\n{}\ngraph: {graph:#?}",
        problems.join("\n"),
        circles.join("\n")
    );
}
