//! libFuzzer target for `Config::parse` on arbitrary UTF-8 text.
//!
//! A crash is a panic inside the parser or a broken promise, checked here
//! the same way as in tests/it/config_fuzz.rs (which also has a
//! structure-aware generator): deterministic results; every rejection has
//! at least one diagnostic, each with a message, a context, the file given
//! and a line/column inside the text; every accepted config holds only
//! usable services (names, non-empty dirs, absolute normal `local` paths,
//! repository-relative links, no clashes between services of one machine).

#![no_main]

use std::collections::BTreeMap;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use provision::config::{Config, ConfigErrors, Diagnostic};

const PATH: &str = "/etc/provision/config.toml";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});

fn check(text: &str) {
    let path = Path::new(PATH);
    let first = Config::parse(path, text);
    let second = Config::parse(path, text);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "two parses of the same text differ"
    );
    match first {
        Err(errors) => check_errors(&errors, text),
        Ok(config) => check_config(&config, text),
    }
}

fn check_errors(errors: &ConfigErrors, text: &str) {
    assert!(!errors.0.is_empty(), "rejected with no diagnostic");
    for d in &errors.0 {
        check_diagnostic(d, text);
    }
    let order: Vec<_> = errors
        .0
        .iter()
        .map(|d| (d.line == 0, d.line, d.column))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "diagnostics not in file order: {order:?}"
    );
    let shown = errors.to_string();
    for d in &errors.0 {
        assert!(
            shown.contains(d.message.as_str()),
            "report omits {:?}",
            d.message
        );
    }
}

fn check_diagnostic(d: &Diagnostic, text: &str) {
    assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
    assert!(!d.context.trim().is_empty(), "empty context: {d:?}");
    assert_eq!(d.file, Path::new(PATH), "wrong file: {d:?}");
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(d.line <= lines.len(), "line past the end: {d:?}");
    if d.line > 0 {
        let width = lines[d.line - 1].chars().count();
        assert!(
            d.column >= 1 && d.column <= width + 1,
            "column outside 1..={}: {d:?}",
            width + 1
        );
    }
}

fn is_normal_absolute(p: &Path) -> bool {
    let mut comps = p.components();
    comps.next() == Some(Component::RootDir)
        && comps.all(|c| matches!(c, Component::Normal(_)))
        && p.to_str()
            .is_some_and(|s| s == "/" || (!s.ends_with('/') && !s.contains("//")))
}

fn check_config(c: &Config, text: &str) {
    for w in &c.warnings {
        check_diagnostic(w, text);
    }
    if let Some(m) = &c.metrics_dir {
        assert!(is_normal_absolute(m), "metrics_dir {m:?}");
    }
    let mut by_machine: BTreeMap<&str, Vec<&provision::config::Service>> = BTreeMap::new();
    for s in &c.services {
        assert!(
            !s.name.is_empty() && !s.unit.is_empty() && !s.machine.is_empty(),
            "service with an empty field: {s:?}"
        );
        assert!(
            s.name.len() <= 64
                && s.name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "unusable name {:?}",
            s.name
        );
        assert!(!s.dirs.is_empty(), "no dirs: {s:?}");
        assert!(s.depth >= 1, "depth 0: {s:?}");
        for d in &s.dirs {
            assert!(
                is_normal_absolute(&d.local) && d.local != Path::new("/"),
                "local {:?}",
                d.local
            );
            assert!(
                !d.link.is_empty()
                    && !d.link.starts_with('/')
                    && d.link
                        .split('/')
                        .all(|seg| !matches!(seg, "" | "." | ".." | ".git")),
                "link {:?}",
                d.link
            );
        }
        by_machine.entry(s.machine.as_str()).or_default().push(s);
    }
    for group in by_machine.values() {
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                assert_ne!(a.name, b.name, "two services of one machine share a name");
            }
        }
        let locals: Vec<&Path> = group
            .iter()
            .flat_map(|s| s.dirs.iter().map(|d| d.local.as_path()))
            .collect();
        for (i, a) in locals.iter().enumerate() {
            for b in &locals[i + 1..] {
                assert!(
                    !a.starts_with(b) && !b.starts_with(a),
                    "mounts {a:?} and {b:?} overlap"
                );
            }
        }
    }
}
