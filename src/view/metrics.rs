//! Prometheus metrics, written for node_exporter's textfile collector.
//!
//! One file, `provision.prom`, describes every service of this machine. It
//! is rendered from the state files only (each pass records what it saw of
//! the host), so writing it never touches the network or the services, and
//! any invocation can rewrite the whole file. It is replaced atomically
//! under a lock, so node_exporter never reads half a file and two passes
//! finishing together cannot leave the older picture in place.
//!
//! Both the deployed and the upstream commit are exported per service, as
//! `_info` series whose `commit` label changes: one series per service at
//! any time, so cardinality stays bounded while a fleet's rollout can be
//! followed by counting machines per commit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::config::Service;
use crate::store::state::{State, StateDir};
use crate::util::lock::Lock;
use crate::util::{write_atomic, Visibility};

/// The file node_exporter reads.
pub const FILE: &str = "provision.prom";
/// Serializes writers of the metrics file (beside the services' state).
const LOCK: &str = ".metrics.lock";
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and whether to write the metrics file.
#[derive(Debug, Clone)]
pub struct Target {
    /// The textfile-collector directory.
    pub dir: PathBuf,
    /// Create `dir` when missing. False for the default directory, which
    /// exists only where node_exporter is installed.
    pub create: bool,
}

/// Rewrites the metrics file for `services` from their state files.
/// Returns the file written, or `None` when the (default) directory does
/// not exist.
pub fn publish(
    services: &[&Service],
    state_dir: &Path,
    target: &Target,
) -> Result<Option<PathBuf>> {
    if !target.create && !target.dir.is_dir() {
        return Ok(None);
    }
    let _lock = Lock::acquire(&state_dir.join(LOCK), LOCK_TIMEOUT, "the metrics file")?;
    let states: Vec<Result<State>> = services
        .iter()
        .map(|s| StateDir::at(&crate::model::place::Place::of(s, state_dir)).load())
        .collect();
    let path = target.dir.join(FILE);
    write_atomic(
        &path,
        render(services, &states, crate::util::now_unix()).as_bytes(),
        Visibility::Public,
    )?;
    Ok(Some(path))
}

/// One metric family: its samples are written together under one HELP and
/// TYPE, as the text format requires.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// The families, in output order: name, type, help.
pub const FAMILIES: [(&str, &str, &str); 28] = [
    (
        "provision_service_info",
        "gauge",
        "A configured service (always 1).",
    ),
    (
        "provision_state_readable",
        "gauge",
        "1 if the service's state file could be read, 0 if it is corrupt or from a newer version.",
    ),
    (
        "provision_deployed_commit_info",
        "gauge",
        "The commit whose files are deployed (always 1; the commit is a label).",
    ),
    (
        "provision_deployed_timestamp_seconds",
        "gauge",
        "When the deployed commit was deployed.",
    ),
    (
        "provision_upstream_commit_info",
        "gauge",
        "The branch head as of the last successful fetch (always 1; the commit is a label).",
    ),
    (
        "provision_fetched_from_info",
        "gauge",
        "The upstream URL the last successful fetch used (always 1; the URL is a label): the first of `upstream`, or a mirror after it when those before failed.",
    ),
    (
        "provision_upstream_fetch_timestamp_seconds",
        "gauge",
        "When upstream was last fetched successfully.",
    ),
    (
        "provision_in_sync",
        "gauge",
        "1 if the deployed commit is the upstream head as of the last fetch.",
    ),
    (
        "provision_frozen",
        "gauge",
        "1 while the service is frozen or pinned by a rollback and does not follow upstream.",
    ),
    (
        "provision_frozen_since_timestamp_seconds",
        "gauge",
        "When the current freeze or pin began.",
    ),
    (
        "provision_frozen_until_timestamp_seconds",
        "gauge",
        "When the current freeze ends by itself (freeze --until).",
    ),
    (
        "provision_behind_seconds",
        "gauge",
        "How long upstream has had a commit that is not deployed, as of the last write (0 in sync).",
    ),
    (
        "provision_rejected_commit_info",
        "gauge",
        "The upstream commit a check or the service rejected, and at which stage (validate, action, visibility, health); absent when none.",
    ),
    (
        "provision_rollout_wait_until_timestamp_seconds",
        "gauge",
        "When this machine adopts the head it waits for in a staged rollout (its gate permitting); absent when not waiting.",
    ),
    (
        "provision_backoff_until_timestamp_seconds",
        "gauge",
        "Until when passes make no connection to the upstream, after fetches that failed in a row (or a Retry-After); absent when not backing off.",
    ),
    (
        "provision_signature_verified",
        "gauge",
        "1 when the last commit checked (deployed or refused) carries a valid signature by a trusted key (allowed_signers, openpgp_keys), 0 when not; absent when signatures are not checked.",
    ),
    (
        "provision_drift_files",
        "gauge",
        "Files of the deployed release that differ from the deployed commit, as of the last pass.",
    ),
    (
        "provision_mounts_ok",
        "gauge",
        "1 if every bind mount showed the deployed release at the end of the last pass.",
    ),
    (
        "provision_unit_active",
        "gauge",
        "1 if the unit was active at the end of the last pass.",
    ),
    (
        "provision_last_pass_timestamp_seconds",
        "gauge",
        "When the last pass ended.",
    ),
    (
        "provision_last_pass_success",
        "gauge",
        "1 if the last pass succeeded.",
    ),
    (
        "provision_window_next_open_timestamp_seconds",
        "gauge",
        "While a new head waits because no change window (`windows`) is open: when the next one opens.",
    ),
    (
        "provision_secret_undecryptable",
        "gauge",
        "1 if the last pass failed because a file of a `decrypt` dir could not be decrypted (not for this machine's key, damaged, or the identity unreadable).",
    ),
    (
        "provision_last_success_timestamp_seconds",
        "gauge",
        "When the last successful pass ended.",
    ),
    (
        "provision_pass_duration_seconds",
        "gauge",
        "Wall time of the last pass for this service, fetch included.",
    ),
    (
        "provision_pass_failures_total",
        "counter",
        "Passes that failed.",
    ),
    (
        "provision_actions_total",
        "counter",
        "Actions run on the unit, by action and result (ok or failed).",
    ),
    (
        "provision_reverts_total",
        "counter",
        "Automatic switches back to the previous release after a commit failed its action or health check.",
    ),
];

/// The whole file for `services`, whose states are `states` (same order).
pub fn render(services: &[&Service], states: &[Result<State>], now: u64) -> String {
    let mut families: Vec<Family> = FAMILIES
        .iter()
        .map(|(name, kind, help)| Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        })
        .collect();
    for (svc, state) in services.iter().zip(states) {
        for (name, labels, value) in samples(svc, state.as_ref().ok(), now) {
            if let Some(f) = families.iter_mut().find(|f| f.name == name) {
                f.samples.push((labels, value));
            }
        }
    }
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {}", f.name, labels.join(","), value);
        }
    }
    out
}

type Sample = (&'static str, Vec<(&'static str, String)>, f64);

/// Every sample of one service; `state` is `None` when it is unreadable.
fn samples(svc: &Service, state: Option<&State>, now: u64) -> Vec<Sample> {
    let name = || ("service", svc.name.clone());
    let one = |metric: &'static str, value: f64| (metric, vec![name()], value);
    let bool = |b: bool| if b { 1.0 } else { 0.0 };
    let mut out = vec![(
        "provision_service_info",
        vec![
            name(),
            ("unit", svc.unit.clone()),
            ("upstream", svc.upstream.url.clone()),
            ("branch", svc.branch.clone()),
        ],
        1.0,
    )];
    out.push(one("provision_state_readable", bool(state.is_some())));
    let Some(state) = state else { return out };
    if let Some(d) = &state.deployed {
        out.push((
            "provision_deployed_commit_info",
            vec![name(), ("commit", d.commit.to_string())],
            1.0,
        ));
        out.push(one("provision_deployed_timestamp_seconds", d.time as f64));
    }
    if let Some(u) = &state.upstream {
        out.push((
            "provision_upstream_commit_info",
            vec![name(), ("commit", u.commit.to_string())],
            1.0,
        ));
        out.push((
            "provision_fetched_from_info",
            vec![
                name(),
                (
                    "upstream",
                    u.via.clone().unwrap_or_else(|| svc.upstream.url.clone()),
                ),
            ],
            1.0,
        ));
        out.push(one(
            "provision_upstream_fetch_timestamp_seconds",
            u.fetched as f64,
        ));
    }
    if let (Some(d), Some(u)) = (&state.deployed, &state.upstream) {
        out.push(one("provision_in_sync", bool(d.commit == u.commit)));
    }
    let hold = state.hold_at(now);
    out.push(one("provision_frozen", bool(hold.is_some())));
    if let Some(h) = hold {
        out.push(one(
            "provision_frozen_since_timestamp_seconds",
            h.since as f64,
        ));
        if let Some(until) = h.until {
            out.push(one(
                "provision_frozen_until_timestamp_seconds",
                until as f64,
            ));
        }
    }
    if let Some(behind) = crate::view::status::behind_seconds(state, now) {
        out.push(one("provision_behind_seconds", behind as f64));
    }
    if let Some(r) = &state.rejected {
        out.push((
            "provision_rejected_commit_info",
            vec![
                name(),
                ("commit", r.commit.to_string()),
                ("stage", r.stage.as_str().to_string()),
            ],
            1.0,
        ));
    }
    if let Some(v) = state.signature.as_ref().filter(|_| svc.checks_signatures()) {
        out.push(one("provision_signature_verified", bool(v.verified)));
    }
    if let Some(w) = state.rollout_wait(now) {
        out.push(one(
            "provision_rollout_wait_until_timestamp_seconds",
            w.at as f64,
        ));
    }
    if let Some(w) = state.window_wait(now) {
        out.push(one(
            "provision_window_next_open_timestamp_seconds",
            w.next_open as f64,
        ));
    }
    if let Some(b) = state.backoff.as_ref().filter(|b| b.holds_at(now)) {
        out.push(one(
            "provision_backoff_until_timestamp_seconds",
            b.until as f64,
        ));
    }
    if let Some(p) = &state.last_pass {
        if let Some(n) = p.drift_files {
            out.push(one("provision_drift_files", n as f64));
        }
        if let Some(ok) = p.mounts_ok {
            out.push(one("provision_mounts_ok", bool(ok)));
        }
        if let Some(s) = &p.unit_state {
            out.push(one("provision_unit_active", bool(unit_active(s))));
        }
        out.push(one("provision_last_pass_timestamp_seconds", p.time as f64));
        out.push(one("provision_last_pass_success", bool(p.ok)));
        out.push(one("provision_secret_undecryptable", bool(p.undecryptable)));
        if let Some(ms) = p.duration_ms {
            out.push(one("provision_pass_duration_seconds", ms as f64 / 1000.0));
        }
    }
    if let Some(t) = state.counters.last_success {
        out.push(one("provision_last_success_timestamp_seconds", t as f64));
    }
    out.push(one(
        "provision_pass_failures_total",
        state.counters.pass_failures as f64,
    ));
    out.push(one(
        "provision_reverts_total",
        state.counters.reverts as f64,
    ));
    out.extend(action_samples(svc, state));
    out
}

/// Action counters, with both results of the configured action present from
/// the start so that `increase()` sees the first failure.
fn action_samples(svc: &Service, state: &State) -> Vec<Sample> {
    let mut counts = state.counters.actions.clone();
    if let Some(a) = svc.action {
        let by_result = counts.entry(a.as_str().to_string()).or_default();
        for result in ["ok", "failed"] {
            by_result.entry(result.to_string()).or_default();
        }
    }
    let mut out = Vec::new();
    for (action, by_result) in counts {
        for (result, n) in by_result {
            let labels = vec![
                ("service", svc.name.clone()),
                ("action", action.clone()),
                ("result", result),
            ];
            out.push(("provision_actions_total", labels, n as f64));
        }
    }
    out
}

/// Whether an ActiveState counts as running (a reload in progress does).
fn unit_active(state: &str) -> bool {
    matches!(state, "active" | "reloading")
}

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::{
        Deployed, Hold, HoldKind, PassRecord, Rejected, Stage, UpstreamSeen,
    };

    fn service() -> Service {
        let text = r#"
[[services]]
machine = "m"
service = "grafana-server"
name = "grafana"
upstream = "https://git.example.net/ops/config"
action = "reload"
dirs = [{ local = "/etc/grafana", link = "grafana" }]
"#;
        crate::config::Config::parse(Path::new("c.toml"), text)
            .expect("valid")
            .services
            .remove(0)
    }

    #[test]
    fn a_frozen_service_behind_upstream_renders_every_series() {
        let svc = service();
        let mut state = State {
            version: 1,
            deployed: Some(Deployed {
                commit: "a".repeat(40).parse().expect("commit id"),
                release: "r".into(),
                time: 100,
            }),
            upstream: Some(UpstreamSeen {
                via: None,
                commit: "b".repeat(40).parse().expect("commit id"),
                fetched: 200,
            }),
            last_pass: Some(PassRecord {
                time: 300,
                ok: false,
                error: Some("boom".into()),
                duration_ms: Some(1500),
                drift_files: Some(2),
                mounts_ok: Some(true),
                unit_state: Some("active".into()),
                undecryptable: true,
            }),
            hold: Some(Hold {
                kind: HoldKind::Frozen,
                reason: "incident".into(),
                since: 50,
                until: Some(9000),
                by: Some("alice".into()),
            }),
            rejected: Some(Rejected {
                commit: "b".repeat(40).parse().expect("commit id"),
                stage: Stage::Health,
                reason: "curl failed".into(),
                time: 250,
            }),
            behind_since: Some(200),
            ..State::default()
        };
        state.counters.pass_failures = 3;
        state.counters.reverts = 1;
        state.counters.action("reload", true);
        let text = render(&[&svc], &[Ok(state.clone())], 500);
        for line in [
            "provision_service_info{service=\"grafana\",unit=\"grafana-server.service\",upstream=\"https://git.example.net/ops/config\",branch=\"main\"} 1",
            &format!("provision_deployed_commit_info{{service=\"grafana\",commit=\"{}\"}} 1", "a".repeat(40)),
            &format!("provision_upstream_commit_info{{service=\"grafana\",commit=\"{}\"}} 1", "b".repeat(40)),
            "provision_in_sync{service=\"grafana\"} 0",
            "provision_frozen{service=\"grafana\"} 1",
            "provision_frozen_since_timestamp_seconds{service=\"grafana\"} 50",
            "provision_frozen_until_timestamp_seconds{service=\"grafana\"} 9000",
            "provision_behind_seconds{service=\"grafana\"} 300",
            &format!("provision_rejected_commit_info{{service=\"grafana\",commit=\"{}\",stage=\"health\"}} 1", "b".repeat(40)),
            "provision_reverts_total{service=\"grafana\"} 1",
            "provision_drift_files{service=\"grafana\"} 2",
            "provision_unit_active{service=\"grafana\"} 1",
            "provision_last_pass_success{service=\"grafana\"} 0",
            "provision_secret_undecryptable{service=\"grafana\"} 1",
            "provision_pass_duration_seconds{service=\"grafana\"} 1.5",
            "provision_pass_failures_total{service=\"grafana\"} 3",
            "provision_actions_total{service=\"grafana\",action=\"reload\",result=\"failed\"} 0",
            "provision_actions_total{service=\"grafana\",action=\"reload\",result=\"ok\"} 1",
            "# TYPE provision_pass_failures_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Once its time has passed, a freeze is over in the metrics too.
        let later = render(&[&svc], &[Ok(state)], 9000);
        assert!(
            later.contains("provision_frozen{service=\"grafana\"} 0"),
            "{later}"
        );
        assert!(!later.contains("provision_frozen_until"), "{later}");
    }

    #[test]
    fn an_unreadable_state_is_reported_not_hidden() {
        let svc = service();
        let text = render(&[&svc], &[Err(anyhow::anyhow!("corrupt"))], 0);
        assert!(
            text.contains("provision_state_readable{service=\"grafana\"} 0"),
            "{text}"
        );
        assert!(!text.contains("provision_in_sync"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
