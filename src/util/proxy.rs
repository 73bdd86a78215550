//! The HTTP proxy a fetch goes through: the service's `proxy` key, else
//! the environment as curl and git read it (`https_proxy` or
//! `HTTPS_PROXY` for https, `http_proxy` for http, each bypassed for the
//! hosts of `no_proxy`/`NO_PROXY`). The units read the environment from
//! `/etc/default/provision`.
//!
//! The proxy's password never appears in a message: a proxy is shown by
//! its host, port and where it was configured.

use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// A proxy to reach one server through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Its host (without brackets).
    pub host: String,
    /// Its port (1080 when the URL names none, as curl's default).
    pub port: u16,
    /// `Basic …` for `Proxy-Authorization`, when it asks for credentials.
    pub authorization: Option<String>,
    /// Where it was configured (`proxy`, `https_proxy`...), for messages.
    pub from: String,
}

impl Proxy {
    /// `proxy HOST:PORT (from KEY)`, for messages.
    pub fn shown(&self) -> String {
        format!("proxy {} (from {})", self.authority(), self.from)
    }

    /// `host:port`, the host bracketed when it is an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses `text` (`http://[user:pass@]host[:port][/]`), configured in
    /// `from`; `credentials` (a file holding `user:password`) wins over a
    /// user and password in the URL.
    pub fn parse(text: &str, from: &str, credentials: Option<&Path>) -> Result<Proxy> {
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| anyhow::anyhow!("{from}: not a proxy URL ({e})"))?;
        if url.scheme() != "http" {
            bail!(
                "{from}: a proxy is spoken to in plain HTTP (`http://host:port`); `{}://` proxies are not supported",
                url.scheme()
            );
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            bail!("{from}: a proxy URL names a host and a port, nothing after them");
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .with_context(|| format!("{from}: the proxy URL names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let in_url = (!url.username().is_empty()).then(|| {
            let user = percent_decoded(url.username());
            let pass = url.password().map(percent_decoded).unwrap_or_default();
            format!("{user}:{pass}")
        });
        let pair = match credentials {
            Some(file) => Some(read_credentials(file)?),
            None => in_url,
        };
        Ok(Proxy {
            host,
            port: url.port().unwrap_or(1080),
            authorization: pair.map(|p| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(p)
                )
            }),
            from: from.to_string(),
        })
    }
}

/// The proxy to reach `host` through for a `tls` (https) or plain http
/// request: `configured` (the `proxy` key) when set, else the
/// environment; `None` for a direct connection.
pub fn choose(
    configured: Option<&str>,
    credentials: Option<&Path>,
    tls: bool,
    host: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>> {
    if let Some(text) = configured {
        return Proxy::parse(text, "proxy", credentials).map(Some);
    }
    let names: &[&str] = if tls {
        &["https_proxy", "HTTPS_PROXY"]
    } else {
        // Not HTTP_PROXY: a CGI program sees a request's `Proxy:` header
        // under that name, so curl ignores it, and so does provision.
        &["http_proxy"]
    };
    let Some((name, text)) = names
        .iter()
        .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
    else {
        return Ok(None);
    };
    let bypass = env("no_proxy")
        .or_else(|| env("NO_PROXY"))
        .unwrap_or_default();
    if bypassed(&bypass, host) {
        return Ok(None);
    }
    Proxy::parse(text.trim(), name, credentials).map(Some)
}

/// The environment of this process.
pub fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether `no_proxy` (comma-separated: `*`, host names matching
/// themselves and their subdomains, with or without a leading dot, and
/// addresses) names `host`.
fn bypassed(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| e == "*" || host == e || host.ends_with(&format!(".{e}")))
}

fn percent_decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `user:password` from the first line of `file`.
fn read_credentials(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the proxy credentials file {}", file.display()))?;
    let line = text.lines().next().unwrap_or("").trim();
    if !line.contains(':') {
        bail!(
            "the proxy credentials file {} must hold one line `user:password`",
            file.display()
        );
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_key_wins_then_the_environment_by_scheme_and_no_proxy_bypasses() {
        let vars = [
            ("https_proxy", "http://u:p%40ss@proxy.example:3128"),
            ("http_proxy", "proxy.example:8080"),
            ("HTTP_PROXY", "http://evil:1"),
            ("no_proxy", "internal.example, .corp"),
        ];
        let p = choose(None, None, true, "github.com", env(&vars))
            .expect("ok")
            .expect("a proxy");
        assert_eq!(
            (p.host.as_str(), p.port, p.from.as_str()),
            ("proxy.example", 3128, "https_proxy")
        );
        let expected = base64::engine::general_purpose::STANDARD.encode("u:p@ss");
        assert_eq!(p.authorization, Some(format!("Basic {expected}")));
        assert!(!p.shown().contains("p@ss") && p.shown().contains("proxy.example:3128"));
        let p = choose(None, None, false, "git.example", env(&vars))
            .expect("ok")
            .expect("http");
        assert_eq!((p.port, p.from.as_str()), (8080, "http_proxy"));
        for host in ["internal.example", "git.internal.example", "a.corp"] {
            assert_eq!(
                choose(None, None, true, host, env(&vars)).expect("ok"),
                None,
                "{host}"
            );
        }
        let p = choose(Some("http://10.0.0.1:9"), None, true, "a.corp", env(&vars)).expect("ok");
        assert_eq!(
            p.map(|p| p.from),
            Some("proxy".to_string()),
            "the key wins, no_proxy aside"
        );
        assert_eq!(
            choose(None, None, false, "x", env(&[("HTTP_PROXY", "h:1")])).expect("ok"),
            None
        );
    }

    #[test]
    fn bad_proxy_urls_are_refused_with_the_key() {
        for bad in [
            "https://p:1",
            "http://p:1/path",
            "socks5://p:1",
            "http://:1",
        ] {
            let e = Proxy::parse(bad, "proxy", None).expect_err(bad);
            assert!(format!("{e:#}").starts_with("proxy:"), "{e:#}");
        }
    }
}
