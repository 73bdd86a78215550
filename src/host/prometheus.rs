//! Prometheus's HTTP API (`/api/v1/query`): the fleet's shared memory,
//! read by `fleet status --prometheus` and by a rollout's gate.
//!
//! Plain `http://` only (put Prometheus behind a local port or an SSH
//! tunnel for TLS): the request is one HTTP/1.0 GET whose answer is read to
//! its end, which needs no client library.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

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
            bail!("Prometheus URL {url:?}: only http:// URLs are supported");
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .with_context(|| format!("Prometheus URL {url:?}: bad port"))?,
            ),
            None => (authority.to_string(), 80),
        };
        anyhow::ensure!(!host.is_empty(), "Prometheus URL {url:?}: no host");
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
            crate::util::percent_encode(promql)
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
        let mut stream = connect(&addr, self.timeout)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .context("setting the read timeout")?;
        stream
            .set_write_timeout(Some(self.timeout))
            .context("setting the write timeout")?;
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

/// Connects to the first address of `addr` that answers within `timeout`,
/// so a Prometheus that is down or unroutable costs a bounded wait.
fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let mut last = None;
    let addrs = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving Prometheus's address {addr}"))?;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("connecting to Prometheus at {addr}")),
        None => bail!("Prometheus's address {addr} resolves to nothing"),
    }
}

/// The machine a series belongs to: the host part of its `instance` label,
/// lowercased (`web1:9100` is `web1`), as the fleet's machines are named.
pub fn instance_host(labels: &Value) -> Option<String> {
    let instance = labels["instance"].as_str()?;
    let host = match instance.rsplit_once(':') {
        // An IPv6 address without a port has colons too: only strip a
        // numeric port.
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => instance,
    };
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
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
        assert_eq!(
            crate::util::percent_encode("up{job=\"node\"}"),
            "up%7Bjob%3D%22node%22%7D"
        );
        let host = |i: &str| instance_host(&serde_json::json!({ "instance": i }));
        assert_eq!(host("Web1:9100").as_deref(), Some("web1"));
        assert_eq!(host("web1").as_deref(), Some("web1"));
        assert_eq!(host("[::1]:9100").as_deref(), Some("::1"));
    }
}
