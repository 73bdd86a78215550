//! The crate's layering, checked on its sources.
//!
//! Floors, from the bottom: `util`; `config`; `model`; {`store`, `git`,
//! `host`}; `observe`; {`engine`, `view`, `fleet`}; `cli`. A module may use
//! its own layer and the floors below it, never a layer of its own floor
//! (no import sideways) nor one above: nothing but `main.rs` uses `cli`.
//! And no two modules use each other, directly or through others.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The floors, lowest first; the layers of one floor do not use each other.
const FLOORS: [&[&str]; 7] = [
    &["util"],
    &["config"],
    &["model"],
    &["store", "git", "host"],
    &["observe"],
    &["engine", "view", "fleet"],
    &["cli"],
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("listing src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The module paths a file names with `crate::`, in `use` lines (with
/// their nested `{...}` groups) and inline, outside comments.
fn references(text: &str) -> BTreeSet<Vec<String>> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let tree = use_tree(rest);
        expand(&[], &tree, &mut out);
    }
    out
}

/// The module paths a file of `module` names with `super::` outside its
/// tests (whose `super` is the file itself), as paths from the crate.
fn relative_references(text: &str, module: &str) -> BTreeSet<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut parent: Vec<String> = module.split("::").map(str::to_string).collect();
    parent.pop();
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("super::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "super::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        expand(&parent, &use_tree(rest), &mut out);
    }
    out
}

/// The path, or path with `{...}` group, at the start of `s`.
fn use_tree(s: &str) -> String {
    let mut depth = 0;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = i + 1;
                    break;
                }
            }
            c if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' => {}
            _ => break,
        }
        end = i + c.len_utf8();
    }
    s[..end].to_string()
}

/// Adds every path of the use tree `tree` under `prefix` to `out`.
fn expand(prefix: &[String], tree: &str, out: &mut BTreeSet<Vec<String>>) {
    let tree = tree.trim();
    let (head, group) = match tree.find('{') {
        Some(i) => (&tree[..i], Some(&tree[i + 1..tree.len().saturating_sub(1)])),
        None => (tree, None),
    };
    let mut path = prefix.to_vec();
    path.extend(
        head.split("::")
            .map(|s| s.split_whitespace().next().unwrap_or(""))
            .filter(|s| !s.is_empty() && *s != "self")
            .map(str::to_string),
    );
    let Some(group) = group else {
        out.insert(path);
        return;
    };
    // Split the group at top-level commas.
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&path, &group[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    expand(&path, &group[start..], out);
}

/// The longest known module that `path` starts with.
fn resolve(modules: &BTreeSet<String>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// The layer (top-level module) of `module`.
fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

/// The floor of `module`'s layer.
fn floor(module: &str) -> usize {
    let top = layer(module);
    FLOORS
        .iter()
        .position(|f| f.contains(&top))
        .unwrap_or_else(|| panic!("module {module} is in no layer; add its folder to FLOORS"))
}

/// Module → the modules it uses (other than itself and its parents).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let files: Vec<(String, PathBuf)> = files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs") && !f.ends_with("lib.rs"))
        .map(|f| (module_of(&src, &f), f))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = BTreeMap::new();
    for (m, f) in &files {
        let text = fs::read_to_string(f).expect("reading a source file");
        let used: BTreeSet<String> = references(&text)
            .iter()
            .chain(relative_references(&text, m).iter())
            .filter_map(|p| resolve(&modules, p))
            .filter(|u| u != m && !m.starts_with(&format!("{u}::")))
            .collect();
        g.insert(m.clone(), used);
    }
    g
}

#[test]
fn every_module_uses_only_its_layer_and_the_floors_below() {
    let g = graph();
    assert!(g.len() > 20, "the sources were found: {:?}", g.keys());
    let mut wrong = Vec::new();
    for (m, used) in &g {
        for u in used {
            let sideways = floor(u) == floor(m) && layer(u) != layer(m);
            if floor(u) > floor(m) || sideways {
                wrong.push(format!("{m} uses {u}"));
            }
        }
    }
    let map: Vec<String> = FLOORS
        .iter()
        .map(|f| format!("{{{}}}", f.join(", ")))
        .collect();
    assert!(
        wrong.is_empty(),
        "uses that go up or sideways ({}):\n  {}",
        map.join(" < "),
        wrong.join("\n  ")
    );
}

#[test]
fn no_module_uses_the_command_line() {
    let g = graph();
    let users: Vec<String> = g
        .iter()
        .filter(|(m, used)| !m.starts_with("cli") && used.iter().any(|u| u.starts_with("cli")))
        .map(|(m, _)| m.clone())
        .collect();
    assert!(users.is_empty(), "modules using cli: {users:?}");
}

#[test]
fn no_import_cycle() {
    let g = graph();
    // Depth-first search with colours; a grey module met again closes a cycle.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for u in g.get(m).into_iter().flatten() {
            match colour.get(u.as_str()).copied().unwrap_or(0) {
                0 => visit(u, g, colour, stack, cycles),
                1 => {
                    let from = stack.iter().position(|s| s == u).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(u.clone());
                    cycles.push(c.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(m.to_string(), 2);
    }
    let mut colour = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in g.keys() {
        if colour.get(m.as_str()).copied().unwrap_or(0) == 0 {
            visit(m, &g, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_checker_sees_uses_in_groups_and_inline_paths() {
    let text = "use crate::store::{drift::{self, Drifted}, state};\n\
                // use crate::cli;\n\
                fn f() { crate::util::now_unix(); }\n";
    let refs = references(text);
    let modules: BTreeSet<String> = ["store::drift", "store::state", "util", "cli"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let resolved: BTreeSet<String> = refs.iter().filter_map(|p| resolve(&modules, p)).collect();
    assert!(resolved.contains("store::drift"), "{refs:?}");
    assert!(resolved.contains("store::state"), "{refs:?}");
    assert!(resolved.contains("util"), "{refs:?}");
    assert!(!resolved.contains("cli"), "comments are not code: {refs:?}");

    let text = "use super::keys::{self, Scope};\npub(super) fn f() { super::value::read(); }\n\
                #[cfg(test)]\nmod tests { use super::parse; }\n";
    let modules: BTreeSet<String> = ["config", "config::keys", "config::value", "config::parse"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let used: BTreeSet<String> = relative_references(text, "config::walk")
        .iter()
        .filter_map(|p| resolve(&modules, p))
        .collect();
    assert_eq!(
        used,
        ["config::keys", "config::value"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "super:: outside the tests, from the file's parent"
    );
}
