//! The fleet's status from Prometheus instead of SSH: the `provision_*`
//! series the machines' node_exporters export, read through Prometheus's
//! HTTP API (`/api/v1/query`), for fleets where an SSH fan-out is too slow
//! or not allowed. A machine is matched by the host part of the series'
//! `instance` label.

use std::collections::HashMap;

use anyhow::Result;

use crate::fleet::ssh::Answer;
use crate::host::prometheus::Api;
use crate::model::commit::CommitId;
use crate::model::record::{Rejected, Stage};
use crate::model::status::{
    self as machine, CommitAt, DriftStatus, PassStatus, RolloutStatus, ServiceStatus, Tracking,
};
/// What Prometheus knows of each machine, as the answers the SSH fan-out
/// would have given: a `status --json`-shaped document per machine.
pub fn answers(api: &Api, machines: &[String]) -> Result<Vec<(String, Answer)>> {
    // One query for every family, read sample by sample into machine ->
    // service -> family, keeping of each sample its value and the one
    // label read below: 10,000 machines fit in a few megabytes.
    let query = format!("{{__name__=~\"{}\"}}", FAMILIES.join("|"));
    // A Vec per machine, not a map: a map's first node has room for eleven
    // services, and most machines run one.
    let mut seen: HashMap<String, Vec<(String, Series)>> = HashMap::new();
    api.query_each(&query, |sample| {
        let Some(i) = sample
            .label("__name__")
            .and_then(|n| FAMILIES.iter().position(|f| *f == n))
        else {
            return;
        };
        let (Some(host), Some(service)) = (sample.host(), sample.label("service")) else {
            return;
        };
        let kept = Kept {
            value: sample.value(),
            labels: ["commit", "stage", "upstream"]
                .into_iter()
                .filter_map(|k| Some((k, sample.label(k)?.to_string())))
                .collect(),
        };
        let services = seen.entry(host).or_default();
        let at = match services.iter().position(|(s, _)| s == service) {
            Some(at) => at,
            None => {
                services.push((service.to_string(), Series::default()));
                services.len() - 1
            }
        };
        services[at].1 .0[i] = Some(kept);
    })?;
    let now = crate::util::now_unix();
    machines
        .iter()
        .map(|m| {
            let mut found = seen.remove(&m.to_ascii_lowercase()).unwrap_or_default();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            let services: Vec<ServiceStatus> =
                found.iter().map(|(name, f)| service_doc(name, f)).collect();
            let answer = if services.is_empty() {
                Answer::Unreachable(format!(
                    "Prometheus has no provision series with instance {m}"
                ))
            } else {
                let doc = machine::Document {
                    schema: machine::SCHEMA,
                    machine: m.clone(),
                    time: now,
                    services,
                };
                Answer::Known(Box::new(doc))
            };
            Ok((m.clone(), answer))
        })
        .collect()
}

/// The families read, each one query's worth of series.
const FAMILIES: [&str; 15] = [
    "provision_deployed_commit_info",
    "provision_upstream_commit_info",
    "provision_frozen",
    "provision_in_sync",
    "provision_last_pass_success",
    "provision_last_pass_timestamp_seconds",
    "provision_drift_files",
    "provision_mounts_ok",
    "provision_unit_active",
    "provision_rejected_commit_info",
    "provision_rollout_wait_until_timestamp_seconds",
    "provision_backoff_until_timestamp_seconds",
    "provision_fetched_from_info",
    "provision_secret_undecryptable",
    "provision_window_next_open_timestamp_seconds",
];

/// What one series says: its value and its labels of note (`commit`,
/// `stage`, `upstream`).
#[derive(Debug, Clone, Default)]
struct Kept {
    value: Option<f64>,
    labels: Vec<(&'static str, String)>,
}

/// One service's series, by family (in [`FAMILIES`]' order).
#[derive(Debug, Default)]
struct Series([Option<Kept>; FAMILIES.len()]);

impl Series {
    fn get(&self, family: &str) -> Option<&Kept> {
        let i = FAMILIES.iter().position(|f| *f == family)?;
        self.0[i].as_ref()
    }
}

/// One service's entry of `status --json`, as far as the series tell it;
/// what they do not tell is left unknown.
fn service_doc(name: &str, f: &Series) -> ServiceStatus {
    let value = |family: &str| f.get(family)?.value;
    let label = |family: &str, key: &str| {
        let kept = f.get(family)?;
        kept.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    let commit = |family: &str| label(family, "commit")?.parse::<CommitId>().ok();
    let flag = |family: &str| value(family).map(|v| v != 0.0);
    let at = |commit: CommitId| CommitAt {
        commit,
        time: 0,
        subject: None,
        committed: None,
    };
    let upstream = commit("provision_upstream_commit_info");
    ServiceStatus {
        name: name.to_string(),
        unit: String::new(),
        state: if flag("provision_frozen") == Some(true) {
            Tracking::Frozen
        } else {
            Tracking::Following
        },
        hold: None,
        deployed: commit("provision_deployed_commit_info").map(at),
        upstream: upstream.map(at),
        upstream_url: label("provision_fetched_from_info", "upstream"),
        in_sync: flag("provision_in_sync"),
        drift: DriftStatus {
            policy: Default::default(),
            count: value("provision_drift_files").map(|v| v as usize),
            files: Vec::new(),
            error: None,
        },
        mounts: Vec::new(),
        mounts_ok: flag("provision_mounts_ok"),
        unit_state: flag("provision_unit_active")
            .map(|a| if a { "active" } else { "inactive" }.to_string()),
        last_pass: value("provision_last_pass_timestamp_seconds").map(|t| PassStatus {
            time: t as u64,
            ok: flag("provision_last_pass_success").unwrap_or(false),
            error: None,
            duration_ms: None,
            undecryptable: flag("provision_secret_undecryptable").unwrap_or(false),
        }),
        window: value("provision_window_next_open_timestamp_seconds").and_then(|t| {
            Some(crate::model::status::WindowStatus {
                commit: upstream?,
                next_open: t as u64,
            })
        }),
        // The head waited for is the upstream head, by definition.
        rollout: value("provision_rollout_wait_until_timestamp_seconds").and_then(|t| {
            Some(RolloutStatus {
                commit: upstream?,
                at: t as u64,
                position: 0.0,
                seen: 0,
                gate: None,
            })
        }),
        rejected: commit("provision_rejected_commit_info").and_then(|c| {
            let stage = label("provision_rejected_commit_info", "stage")?;
            Some(Rejected {
                commit: c,
                stage: Stage::named(&stage)?,
                reason: format!("at {stage}"),
                time: 0,
            })
        }),
        signature: None,
        backoff: value("provision_backoff_until_timestamp_seconds").map(|t| {
            crate::model::record::Backoff {
                until: t as u64,
                failures: 0,
                reason: String::new(),
            }
        }),
        behind_seconds: None,
        state_error: None,
    }
}
