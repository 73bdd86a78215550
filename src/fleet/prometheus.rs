//! The fleet's status from Prometheus instead of SSH: the `provision_*`
//! series the machines' node_exporters export, read through Prometheus's
//! HTTP API (`/api/v1/query`), for fleets where an SSH fan-out is too slow
//! or not allowed. A machine is matched by the host part of the series'
//! `instance` label.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

use crate::fleet::ssh::Answer;
use crate::host::prometheus::{instance_host, Api};

/// What Prometheus knows of each machine, as the answers the SSH fan-out
/// would have given: a `status --json`-shaped document per machine.
pub fn answers(api: &Api, machines: &[String]) -> Result<Vec<(String, Answer)>> {
    let families = [
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
    ];
    // (machine, service) -> family -> sample
    let mut seen: BTreeMap<(String, String), BTreeMap<&str, Value>> = BTreeMap::new();
    for family in families {
        for sample in api.query(family)? {
            let labels = &sample["metric"];
            let (Some(host), Some(service)) = (instance_host(labels), labels["service"].as_str())
            else {
                continue;
            };
            seen.entry((host, service.to_string()))
                .or_default()
                .insert(family, sample);
        }
    }
    let now = crate::util::now_unix();
    Ok(machines
        .iter()
        .map(|m| {
            let services: Vec<Value> = seen
                .iter()
                .filter(|((host, _), _)| host == m)
                .map(|((_, name), f)| service_doc(name, f))
                .collect();
            let answer = if services.is_empty() {
                Answer::Unreachable(format!(
                    "Prometheus has no provision series with instance {m}"
                ))
            } else {
                let doc = json!({"schema": 1, "machine": m, "time": now, "services": services});
                Answer::Ran {
                    code: 0,
                    stdout: doc.to_string(),
                    stderr: String::new(),
                }
            };
            (m.clone(), answer)
        })
        .collect())
}

/// One service's entry, in the shape of `status --json`.
fn service_doc(name: &str, f: &BTreeMap<&str, Value>) -> Value {
    let value = |family: &str| -> Option<f64> { f.get(family)?["value"][1].as_str()?.parse().ok() };
    let label = |family: &str, key: &str| -> Option<String> {
        Some(f.get(family)?["metric"][key].as_str()?.to_string())
    };
    let flag = |family: &str| value(family).map(|v| v != 0.0);
    json!({
        "name": name,
        "state": if flag("provision_frozen") == Some(true) { "frozen" } else { "following" },
        "deployed": label("provision_deployed_commit_info", "commit").map(|c| json!({"commit": c})),
        "upstream": label("provision_upstream_commit_info", "commit").map(|c| json!({"commit": c})),
        "in_sync": flag("provision_in_sync"),
        "drift": {"count": value("provision_drift_files").map(|v| v as u64)},
        "mounts_ok": flag("provision_mounts_ok"),
        "unit_state": flag("provision_unit_active").map(|a| if a { "active" } else { "inactive" }),
        "last_pass": value("provision_last_pass_timestamp_seconds").map(|t| json!({
            "time": t as u64,
            "ok": flag("provision_last_pass_success").unwrap_or(false),
        })),
        // The head waited for is the upstream head, by definition.
        "rollout": value("provision_rollout_wait_until_timestamp_seconds").and_then(|t| {
            let head = label("provision_upstream_commit_info", "commit")?;
            Some(json!({"at": t as u64, "commit": head}))
        }),
        "rejected": label("provision_rejected_commit_info", "commit").and_then(|c| {
            let stage = label("provision_rejected_commit_info", "stage")?;
            Some(json!({"commit": c, "reason": format!("at {stage}"), "stage": stage}))
        }),
    })
}
