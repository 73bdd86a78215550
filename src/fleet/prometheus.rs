//! The fleet's status from Prometheus instead of SSH: the `provision_*`
//! series the machines' node_exporters export, read through Prometheus's
//! HTTP API (`/api/v1/query`), for fleets where an SSH fan-out is too slow
//! or not allowed. A machine is matched by the host part of the series'
//! `instance` label.
//!
//! Plain `http://` only (put Prometheus behind a local port or an SSH
//! tunnel for TLS): the request is one HTTP/1.0 GET whose answer is read to
//! its end, which needs no client library.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::fleet::ssh::Answer;

/// The most a query answer may be.
const ANSWER_CAP: u64 = 64 << 20;

/// Where Prometheus answers.
#[derive(Debug, Clone)]
pub struct Api {
    host: String,
    port: u16,
    prefix: String,
    timeout: Duration,
}

impl Api {
    /// From `http://HOST[:PORT][/PREFIX]`.
    pub fn parse(url: &str, timeout: Duration) -> Result<Api> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--prometheus {url:?}: only http:// URLs are supported");
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .with_context(|| format!("--prometheus {url:?}: bad port"))?,
            ),
            None => (authority.to_string(), 80),
        };
        anyhow::ensure!(!host.is_empty(), "--prometheus {url:?}: no host");
        Ok(Api {
            host,
            port,
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
        })
    }

    /// The result vector of an instant query.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let path = format!(
            "{}/api/v1/query?query={}",
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("/{}", self.prefix)
            },
            encode(promql)
        );
        let body = self.get(&path)?;
        let doc: Value = serde_json::from_str(&body).context("Prometheus's answer is not JSON")?;
        if doc["status"] != "success" {
            bail!("Prometheus refused {promql}: {}", doc["error"]);
        }
        Ok(doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn get(&self, path: &str) -> Result<String> {
        let addr = format!("{}:{}", self.host, self.port);
        let mut stream = TcpStream::connect(&addr)
            .with_context(|| format!("connecting to Prometheus at {addr}"))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            self.host
        )
        .context("sending the query to Prometheus")?;
        let mut raw = Vec::new();
        stream
            .take(ANSWER_CAP)
            .read_to_end(&mut raw)
            .context("reading Prometheus's answer")?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("Prometheus's answer has no body")?;
        let status = head.lines().next().unwrap_or("");
        if !status.contains(" 200") {
            bail!("Prometheus answered {status}");
        }
        Ok(body.to_string())
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

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
    ];
    // (machine, service) -> family -> sample
    let mut seen: BTreeMap<(String, String), BTreeMap<&str, Value>> = BTreeMap::new();
    for family in families {
        for sample in api.query(family)? {
            let labels = &sample["metric"];
            let (Some(instance), Some(service)) =
                (labels["instance"].as_str(), labels["service"].as_str())
            else {
                continue;
            };
            let host = instance
                .rsplit_once(':')
                .map_or(instance, |(h, _)| h)
                .to_ascii_lowercase();
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
        "rejected": label("provision_rejected_commit_info", "commit").map(|c| json!({
            "commit": c,
            "stage": label("provision_rejected_commit_info", "stage"),
            "reason": format!("at {}", label("provision_rejected_commit_info", "stage").unwrap_or_default()),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_queries_are_read_and_encoded() {
        let api = Api::parse("http://127.0.0.1:9090/prom/", Duration::from_secs(1)).expect("url");
        assert_eq!(
            (api.host.as_str(), api.port, api.prefix.as_str()),
            ("127.0.0.1", 9090, "prom")
        );
        assert!(Api::parse("https://x", Duration::from_secs(1)).is_err());
        assert_eq!(encode("up{job=\"node\"}"), "up%7Bjob%3D%22node%22%7D");
    }
}
