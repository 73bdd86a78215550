//! Prometheus's HTTP API (`/api/v1/query`): the fleet's shared memory,
//! read by `fleet status --prometheus` and by a rollout's gate.
//!
//! `http://` or `https://` (verified against this machine's CAs or a CA
//! file), with a bearer token or basic authentication from a file when
//! Prometheus (its `web.config.file`, or a proxy) asks for one. One GET per
//! query, bounded by the timeout as a whole, its answer by size.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use crate::config::PrometheusAccess;
use crate::util::http::{self, Endpoint, Request};

/// The most a query answer may be.
const ANSWER_CAP: u64 = 64 << 20;

/// Where Prometheus answers, and how provision proves itself to it.
#[derive(Debug, Clone)]
pub struct Api {
    endpoint: Endpoint,
    prefix: String,
    timeout: Duration,
    token_file: Option<PathBuf>,
    user: Option<String>,
}

impl Api {
    /// From `http[s]://HOST[:PORT][/PREFIX]` and the credentials to use.
    pub fn parse(url: &str, access: &PrometheusAccess, timeout: Duration) -> Result<Api> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => bail!("Prometheus URL {url:?}: only http:// and https:// URLs are supported"),
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) =
            crate::util::http::split_authority(authority, if tls { 443 } else { 80 })
                .with_context(|| format!("Prometheus URL {url:?}: bad host or port"))?;
        anyhow::ensure!(!host.is_empty(), "Prometheus URL {url:?}: no host");
        anyhow::ensure!(
            !authority.contains('@'),
            "Prometheus URL {url:?}: put credentials in a token file, not in the URL"
        );
        Ok(Api {
            endpoint: Endpoint {
                tls,
                host,
                port,
                resume: None,
                ca_file: access.ca_file.clone(),
                proxy: None,
            },
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
            token_file: access.token_file.clone(),
            user: access.user.clone(),
        })
    }

    /// The result vector of an instant query.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        self.query_each(promql, |s| out.push(s))?;
        Ok(out)
    }

    /// [`Api::query`], handing each sample to `each` as it is read off the
    /// wire: a fleet's answer (a series per machine and family) is never
    /// held whole, as text or as samples.
    pub fn query_each(&self, promql: &str, mut each: impl FnMut(Sample)) -> Result<()> {
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
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
            64 * 1024,
            body.take(ANSWER_CAP),
        ));
        let answer = serde::de::DeserializeSeed::deserialize(Answer(&mut each), &mut de)
            .context("Prometheus's answer is not the JSON of an instant vector query")?;
        if answer.status != "success" {
            bail!(
                "Prometheus refused {promql}: {}",
                answer.error.as_deref().unwrap_or("(no reason given)")
            );
        }
        Ok(())
    }

    fn authorization(&self) -> Result<Option<String>> {
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the Prometheus token file {}", file.display()))?;
        let token = token.trim();
        anyhow::ensure!(
            !token.is_empty() && !token.contains(['\r', '\n']),
            "the Prometheus token file {} must hold one non-empty line",
            file.display()
        );
        Ok(Some(match &self.user {
            Some(user) => format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
            ),
            None => format!("Authorization: Bearer {token}"),
        }))
    }

    fn get(&self, path: &str) -> Result<Box<dyn Read>> {
        let mut headers = vec!["Accept: application/json".to_string()];
        headers.extend(self.authorization()?);
        let deadline = Instant::now() + self.timeout;
        let req = Request {
            method: "GET",
            target: path,
            headers,
            body: &[],
            budget: None,
        };
        let shown = format!(
            "Prometheus at {}:{}",
            self.endpoint.host, self.endpoint.port
        );
        let resp = http::send(&self.endpoint, &req, self.timeout, deadline)
            .with_context(|| format!("asking {shown}"))?;
        match resp.status {
            200 => {}
            401 | 403 => bail!(
                "{shown} answered {}: {}",
                resp.status,
                if self.token_file.is_some() {
                    "the credentials of the token file are refused"
                } else {
                    "it asks for credentials (gate_token_file, --prometheus-token-file)"
                }
            ),
            s => bail!("{shown} answered HTTP {s}"),
        }
        Ok(resp.body)
    }
}

/// What `/api/v1/query` answers (the parts provision reads).
/// The status and error of an answer whose samples went to a callback.
#[derive(Default)]
struct Outcome {
    status: String,
    error: Option<String>,
}

/// Reads `{"status", "error", "data": {"result": [...]}}`, handing each
/// sample of `result` to the callback.
struct Answer<'f, F>(&'f mut F);

impl<'de, F: FnMut(Sample)> serde::de::DeserializeSeed<'de> for Answer<'_, F> {
    type Value = Outcome;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Outcome, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Sample)> serde::de::Visitor<'de> for Answer<'_, F> {
    type Value = Outcome;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Prometheus query answer")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Outcome, A::Error> {
        let mut out = Outcome::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "status" => out.status = map.next_value()?,
                "error" => out.error = map.next_value()?,
                "data" => map.next_value_seed(Data(&mut *self.0))?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// `data`: its `result` array, sample by sample.
struct Data<'f, F>(&'f mut F);

impl<'de, F: FnMut(Sample)> serde::de::DeserializeSeed<'de> for Data<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(Sample)> serde::de::Visitor<'de> for Data<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the data of a Prometheus query answer")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "result" {
                map.next_value_seed(Results(&mut *self.0))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `result`: each sample to the callback.
struct Results<'f, F>(&'f mut F);

impl<'de, F: FnMut(Sample)> serde::de::DeserializeSeed<'de> for Results<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Sample)> serde::de::Visitor<'de> for Results<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an instant vector")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(s) = seq.next_element::<Sample>()? {
            (self.0)(s);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    /// The series' labels, `__name__` included.
    #[serde(default)]
    pub metric: BTreeMap<String, String>,
    /// `[unix time, "value"]`: Prometheus writes the value as a string.
    value: (f64, String),
}

impl Sample {
    /// The label `key`, if the series has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.metric.get(key).map(String::as_str)
    }

    /// The sample's value; `None` when it is not a number.
    pub fn value(&self) -> Option<f64> {
        self.value.1.parse().ok()
    }

    /// The machine the series belongs to (see [`instance_host`]).
    pub fn host(&self) -> Option<String> {
        instance_host(self.label("instance")?)
    }
}

/// The machine an `instance` label belongs to: its host part, lowercased
/// (`web1:9100` is `web1`), as the fleet's machines are named.
pub fn instance_host(instance: &str) -> Option<String> {
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
        let none = PrometheusAccess::default();
        let t = Duration::from_secs(1);
        let api = Api::parse("http://127.0.0.1:9090/prom/", &none, t).expect("url");
        assert_eq!(
            (
                api.endpoint.host.as_str(),
                api.endpoint.port,
                api.prefix.as_str()
            ),
            ("127.0.0.1", 9090, "prom")
        );
        let api = Api::parse("https://[::1]", &none, t).expect("url");
        assert_eq!(
            (api.endpoint.host.as_str(), api.endpoint.port),
            ("::1", 443)
        );
        assert!(api.endpoint.tls);
        assert!(Api::parse("ftp://x", &none, t).is_err());
        assert!(Api::parse("https://u:p@x", &none, t).is_err());
        assert_eq!(
            crate::util::percent_encode("up{job=\"node\"}"),
            "up%7Bjob%3D%22node%22%7D"
        );
        let host = instance_host;
        assert_eq!(host("Web1:9100").as_deref(), Some("web1"));
        assert_eq!(host("web1").as_deref(), Some("web1"));
        assert_eq!(host("[::1]:9100").as_deref(), Some("::1"));
    }
}
