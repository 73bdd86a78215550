//! Checks the observability examples against the metrics provision writes:
//! `examples/alerts.yml` (Prometheus alerting rules), its unit tests
//! `examples/alerts.test.yml`, and `examples/grafana-dashboard.json`.
//!
//! Every query in them may only use documented metric names, so a renamed or
//! dropped metric cannot leave a dashboard panel or an alert silently empty.
//!
//! The promtool checks need `promtool` (Debian `prometheus`). Without it they
//! print why and pass, except under CI=true, where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// Every metric in `provision.prom`.
const METRICS: &[&str] = &[
    "provision_service_info",
    "provision_deployed_commit_info",
    "provision_upstream_commit_info",
    "provision_in_sync",
    "provision_frozen",
    "provision_frozen_since_timestamp_seconds",
    "provision_drift_files",
    "provision_mounts_ok",
    "provision_unit_active",
    "provision_state_readable",
    "provision_last_pass_timestamp_seconds",
    "provision_last_pass_success",
    "provision_secret_undecryptable",
    "provision_window_next_open_timestamp_seconds",
    "provision_last_success_timestamp_seconds",
    "provision_pass_duration_seconds",
    "provision_pass_failures_total",
    "provision_actions_total",
    "provision_deployed_timestamp_seconds",
    "provision_upstream_fetch_timestamp_seconds",
    "provision_frozen_until_timestamp_seconds",
    "provision_behind_seconds",
    "provision_rejected_commit_info",
    "provision_reverts_total",
    "provision_rollout_wait_until_timestamp_seconds",
    "provision_backoff_until_timestamp_seconds",
    "provision_fetched_from_info",
    "provision_signature_verified",
];

const ALERTS: &str = "examples/alerts.yml";
const ALERT_TESTS: &str = "examples/alerts.test.yml";
const DASHBOARD: &str = "examples/grafana-dashboard.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---------------------------------------------------------------------------
// promtool

/// The promtool binary on PATH, or None (after saying why) outside CI.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = "promtool not found on PATH (Debian package prometheus); run `make deps`";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("cannot check the Prometheus examples under CI: {why}");
        }
        eprintln!("skipping promtool check: {why}");
    }
    found
}

/// Run promtool in the crate root and fail with its output unless it succeeds.
fn run_promtool(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", promtool.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        out.status
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = promtool() else { return };
    run_promtool(&promtool, &["check", "rules", ALERTS]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    run_promtool(&promtool, &["test", "rules", ALERT_TESTS]);
}

/// Every dashboard query, with Grafana's variables filled in, is valid PromQL:
/// they go into a file of recording rules for `promtool check rules`.
#[test]
fn dashboard_queries_parse() {
    let Some(promtool) = promtool() else { return };
    let rules: Vec<Value> = dashboard_exprs(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| {
            let expr = grafana_to_promql(expr)
                .unwrap_or_else(|e| panic!("panel {title:?}: {e} in\n{expr}"));
            json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    assert!(!rules.is_empty(), "the dashboard has no queries");
    // YAML is a superset of JSON, so promtool reads this as a rule file.
    let file = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("observability_examples");
    fs::create_dir_all(&dir).expect("creating the scratch directory");
    let path = dir.join("dashboard-queries.yml");
    fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).expect("writing rules");
    run_promtool(
        &promtool,
        &["check", "rules", path.to_str().expect("UTF-8 path")],
    );
}

/// Substitute the dashboard's variables with values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> Result<String, String> {
    let mut out = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$service", ".+"),
        ("$instance", ".+"),
    ] {
        out = out.replace(var, value);
    }
    // What is left may only be label_replace's "$1" and the like.
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('$') {
        if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return Err(format!("unknown variable at {:?}", &out[i..]));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Metric names

/// The `provision_...` metric names `text` mentions, with their offsets, in
/// order of appearance.
fn metric_occurrences(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    for (start, _) in text.match_indices("provision_") {
        if start > 0 && ident(bytes[start - 1]) {
            continue;
        }
        let len = bytes[start..].iter().take_while(|&&b| ident(b)).count();
        names.push((start, &text[start..start + len]));
    }
    names
}

fn metric_names(text: &str) -> Vec<&str> {
    metric_occurrences(text)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// Names in `text` that are not documented metrics.
fn unknown_metrics(text: &str) -> BTreeSet<&str> {
    metric_names(text)
        .into_iter()
        .filter(|name| !METRICS.contains(name))
        .collect()
}

#[test]
fn metric_names_are_found_in_queries() {
    let expr = r#"count by (commit) (provision_deployed_commit_info{service=~"$service"})
        and on (instance) provision_in_sync == 0 or xprovision_not{job="provision"}"#;
    assert_eq!(
        metric_names(expr),
        ["provision_deployed_commit_info", "provision_in_sync"]
    );
    assert_eq!(
        unknown_metrics("provision_in_sync + provision_in_synced"),
        BTreeSet::from(["provision_in_synced"])
    );
}

// ---------------------------------------------------------------------------
// Alert rules

/// The `expr` of every rule in a Prometheus rule file, including multi-line
/// block scalars (`expr: |`).
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed
            .strip_prefix("expr:")
            .or_else(|| trimmed.strip_prefix("- expr:"))
        else {
            continue;
        };
        let rest = rest.trim();
        if !(rest.starts_with('|') || rest.starts_with('>')) {
            exprs.push(rest.to_string());
            continue;
        }
        let indent = line.len() - trimmed.len();
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        exprs.push(body.join("\n").trim().to_string());
    }
    exprs
}

/// Each rule of alerts.yml as (alert name, the rule's text).
fn alert_rules() -> Vec<(String, String)> {
    let text = read(ALERTS);
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push((name.trim().to_string(), String::new()));
        }
        if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules
}

#[test]
fn alert_exprs_use_only_documented_metrics() {
    let text = read(ALERTS);
    let exprs = yaml_exprs(&text);
    assert_eq!(
        exprs.len(),
        alert_rules().len(),
        "expected one expr per alert in {ALERTS}"
    );
    for expr in &exprs {
        assert!(!expr.is_empty(), "empty expr in {ALERTS}");
        assert!(
            !metric_names(expr).is_empty(),
            "expr uses no provision metric: {expr}"
        );
        let unknown = unknown_metrics(expr);
        assert!(
            unknown.is_empty(),
            "{ALERTS} uses undocumented metrics {unknown:?} in:\n{expr}"
        );
    }
}

#[test]
fn alerts_cover_the_documented_failure_modes() {
    let names: BTreeSet<String> = alert_rules().into_iter().map(|(n, _)| n).collect();
    for required in [
        "ProvisionNotInSync",
        "ProvisionCommitRejected",
        "ProvisionDrift",
        "ProvisionMountsBroken",
        "ProvisionPassesFailing",
        "ProvisionFrozenTooLong",
        "ProvisionStale",
    ] {
        assert!(names.contains(required), "{ALERTS} lacks {required}");
    }
    assert!(
        read(ALERTS)
            .lines()
            .any(|l| l.trim() == "- name: provision"),
        "{ALERTS} has no rule group named provision"
    );
}

#[test]
fn alerts_have_severity_and_annotations_naming_machine_and_service() {
    let rules = alert_rules();
    assert!(!rules.is_empty(), "no alerts in {ALERTS}");
    for (name, body) in &rules {
        let severity = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} has no severity label"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name} has severity {severity:?}"
        );
        for key in ["summary:", "description:"] {
            assert!(body.contains(key), "{name} has no {key} annotation");
        }
        for label in ["$labels.instance", "$labels.service"] {
            assert!(
                body.contains(label),
                "{name}'s annotations do not use {label}"
            );
        }
    }
}

/// Each alert has a unit test case that expects it to fire and one that
/// expects it to stay silent, and the test input only uses real metrics.
#[test]
fn every_alert_has_firing_and_silent_test_cases() {
    let text = read(ALERT_TESTS);
    assert!(
        text.lines().any(|l| l.trim() == "- alerts.yml"),
        "{ALERT_TESTS} must load alerts.yml by a relative path"
    );
    // alert name -> (cases that fire, cases that stay silent)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts without alertname");
            let entry = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        } else if let Some(series) = line.strip_prefix("- series:") {
            let names = metric_names(series);
            assert_eq!(names.len(), 1, "test series without a metric: {series}");
            let unknown = unknown_metrics(series);
            assert!(unknown.is_empty(), "test series uses {unknown:?}");
        }
    }
    for (name, _) in alert_rules() {
        let (fire, silent) = cases.get(&name).copied().unwrap_or_default();
        assert!(fire > 0, "no test case in {ALERT_TESTS} where {name} fires");
        assert!(
            silent > 0,
            "no test case in {ALERT_TESTS} where {name} stays silent"
        );
    }
}

// ---------------------------------------------------------------------------
// Grafana dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("parsing {DASHBOARD}: {e}"))
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or_default()
}

/// (panel title, expr) for every query: panel targets, annotations and
/// template variables.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?} has a target without expr", title(panel)));
            out.push((title(panel).to_string(), expr.to_string()));
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            let name = annotation["name"].as_str().unwrap_or_default();
            out.push((format!("annotation {name}"), expr.to_string()));
        }
    }
    out
}

#[test]
fn dashboard_uses_only_documented_metrics() {
    let dashboard = dashboard();
    let exprs = dashboard_exprs(&dashboard);
    assert!(
        exprs.len() >= 10,
        "only {} queries in {DASHBOARD}",
        exprs.len()
    );
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        assert!(
            !metric_names(expr).is_empty(),
            "panel {title:?} queries no provision metric: {expr}"
        );
        let unknown = unknown_metrics(expr);
        assert!(
            unknown.is_empty(),
            "panel {title:?} uses undocumented metrics {unknown:?} in:\n{expr}"
        );
        used.extend(metric_names(expr));
    }
    // Template variable queries (label_values(...)) too.
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = var["definition"].as_str().unwrap_or_default();
        let unknown = unknown_metrics(query);
        assert!(
            unknown.is_empty(),
            "variable {} uses {unknown:?}",
            var["name"]
        );
    }
    // A documented metric nobody looks at is probably a forgotten panel.
    let unused: Vec<_> = METRICS.iter().filter(|m| !used.contains(*m)).collect();
    assert!(unused.is_empty(), "{DASHBOARD} shows none of {unused:?}");
}

/// Every metric selector in a panel honours the service and machine choice.
#[test]
fn dashboard_queries_filter_by_the_selected_services() {
    let dashboard = dashboard();
    for (title, expr) in dashboard_exprs(&dashboard) {
        for (start, name) in metric_occurrences(&expr) {
            let selector = &expr[start + name.len()..];
            let Some(selector) = selector.strip_prefix('{') else {
                panic!("panel {title:?}: {name} has no label selector in:\n{expr}");
            };
            let selector = &selector[..selector.find('}').expect("unclosed selector")];
            for filter in [r#"service=~"$service""#, r#"instance=~"$instance""#] {
                assert!(
                    selector.contains(filter),
                    "panel {title:?}: {name} is not filtered by {filter} in:\n{expr}"
                );
            }
        }
    }
}

#[test]
fn dashboard_has_a_panel_per_topic() {
    let dashboard = dashboard();
    let titles: Vec<String> = panels(&dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .map(|p| title(p).to_lowercase())
        .collect();
    for topic in [
        "rollout",
        "in sync",
        "not in sync",
        "drift",
        "mount",
        "unit",
        "pass fail",
        "failed action",
        "frozen",
        "last success",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "no panel about {topic:?} in {DASHBOARD}; titles: {titles:?}"
        );
    }
}

#[test]
fn dashboard_is_importable() {
    let dashboard = dashboard();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["id"].is_null(), "an exported dashboard has no id");

    // Data source chosen by a variable, services from the info metric.
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let datasource = var("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let service = var("service");
    assert_eq!(service["type"], "query");
    assert_eq!(
        service["definition"],
        "label_values(provision_service_info, service)"
    );
    assert_eq!(service["query"]["query"], service["definition"]);
    let prometheus = json!({ "type": "prometheus", "uid": "${datasource}" });
    assert_eq!(service["datasource"], prometheus);

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = title(panel);
        assert!(!title.is_empty(), "panel without title: {panel}");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let pos = &panel["gridPos"];
        let (x, w, h) = (pos["x"].as_u64(), pos["w"].as_u64(), pos["h"].as_u64());
        let (Some(x), Some(w), Some(h)) = (x, w, h) else {
            panic!("{title:?} has no complete gridPos");
        };
        assert!(
            pos["y"].is_u64() && w > 0 && h > 0 && x + w <= 24,
            "{title:?}: {pos}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], prometheus, "{title:?}'s data source");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title:?} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(
                target["datasource"], prometheus,
                "{title:?}'s query data source"
            );
            let r = target["refId"].as_str().expect("refId");
            assert!(refs.insert(r), "{title:?} uses refId {r} twice");
        }
    }
}

#[test]
fn the_documented_list_is_what_provision_writes() {
    let written: BTreeSet<&str> = provision::view::metrics::FAMILIES
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let documented: BTreeSet<&str> = METRICS.iter().copied().collect();
    assert_eq!(written, documented);
}
