//! Who may reach `fleet serve`, and from where.
//!
//! Loopback is not a boundary: every local account can connect to it, and a
//! web page can rebind its own name to 127.0.0.1. So, whatever the listen
//! address:
//! - **Host**: a request must name this server (the address it connected
//!   to, `localhost:PORT`, or a `--host-name`); a rebound name is refused
//!   before anything else, credentials or not.
//! - **Origin**: a POST sent by another site's page (`Origin` of another
//!   origin, or `Sec-Fetch-Site` other than same-origin) is refused, even
//!   with a valid session and token: pages on another port of 127.0.0.1
//!   count as "same site" to a browser and would get the cookie.
//! - **Session**: without `--auth-file`, the server prints a login link on
//!   its stderr, which only the operator who started it reads; the link
//!   works once (the next one is printed when it is used) and sets an
//!   `HttpOnly; SameSite=Strict` cookie. Without a session every page and
//!   API answers 401 and carries no form token.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::http::Request;

/// The cookie that carries a session.
pub const COOKIE: &str = "provision-session";
/// How long a session lasts.
const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a new one beyond this ends the oldest.
const MAX_SESSIONS: usize = 64;

/// The names a request may give in `Host`.
pub struct Hosts {
    /// `host:port` forms and bare `--host-name`s, lowercase.
    allowed: Vec<String>,
}

impl Hosts {
    /// The listen address's port with `localhost`, and each of `names`
    /// (with and without the port; a reverse proxy sends its own).
    pub fn new(port: u16, names: &[String]) -> Hosts {
        let mut allowed = vec![format!("localhost:{port}")];
        for n in names {
            let n = n.trim().to_ascii_lowercase();
            allowed.push(format!("{n}:{port}"));
            allowed.push(n);
        }
        Hosts { allowed }
    }

    /// Whether `req`'s `Host` names this server: a name above, or the very
    /// address the client connected to.
    pub fn admit(&self, req: &Request) -> bool {
        req.header("Host")
            .is_some_and(|h| self.names(&h.trim().to_ascii_lowercase(), req))
    }

    fn names(&self, authority: &str, req: &Request) -> bool {
        authority == req.local.to_string() || self.allowed.iter().any(|a| a == authority)
    }

    /// Whether a state-changing request comes from this server's own pages
    /// (or from no browser page at all: curl and scripts send neither
    /// header).
    pub fn same_origin(&self, req: &Request) -> bool {
        if let Some(site) = req.header("Sec-Fetch-Site") {
            if !matches!(site.trim(), "same-origin" | "none") {
                return false;
            }
        }
        let Some(origin) = req.header("Origin") else {
            return true;
        };
        let origin = origin.trim().to_ascii_lowercase();
        let (authority, default_port) = if let Some(a) = origin.strip_prefix("http://") {
            (a, 80)
        } else if let Some(a) = origin.strip_prefix("https://") {
            (a, 443)
        } else {
            return false;
        };
        // A browser leaves the scheme's own port out of `Origin`.
        self.names(authority, req)
            || (!authority.contains(':') && self.names(&format!("{authority}:{default_port}"), req))
    }
}

/// The operator's login link and the sessions it opened.
pub struct Sessions {
    /// The key of the login link not used yet.
    key: Mutex<String>,
    /// Session ids and when each began.
    open: Mutex<Vec<(String, Instant)>>,
}

impl Sessions {
    /// A first login key.
    pub fn new() -> Result<Sessions> {
        Ok(Sessions {
            key: Mutex::new(random_hex(24)?),
            open: Mutex::new(Vec::new()),
        })
    }

    /// The login link for the server at `base` (`http://127.0.0.1:8484`).
    pub fn link(&self, base: &str) -> String {
        let key = self.key.lock().unwrap_or_else(|p| p.into_inner());
        format!("{base}/login?key={key}")
    }

    /// Uses the login key `given`: a new session id when it is the current
    /// key (which is then replaced, so each link works once), else `None`.
    pub fn login(&self, given: &str) -> Result<Option<String>> {
        let mut key = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if !same(given, &key) {
            return Ok(None);
        }
        *key = random_hex(24)?;
        let id = random_hex(32)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, began)| began.elapsed() < SESSION_LIFE);
        if open.len() >= MAX_SESSIONS {
            open.remove(0);
        }
        open.push((id.clone(), Instant::now()));
        Ok(Some(id))
    }

    /// Whether `req` carries a live session cookie.
    pub fn admit(&self, req: &Request) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        cookies(req, COOKIE).any(|given| {
            open.iter()
                .any(|(id, began)| began.elapsed() < SESSION_LIFE && same(given, id))
        })
    }
}

/// The `Set-Cookie` value that opens session `id`.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFE.as_secs()
    )
}

/// The values of cookie `name` in every `Cookie` header of `req`.
fn cookies<'a>(req: &'a Request, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    req.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(move |c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// `n` random bytes from the kernel's generator, as hex.
pub fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .context("reading random bytes from the kernel for a key")?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without stopping at the first difference.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".to_string(),
            target: "/".to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            local: SocketAddr::from(([127, 0, 0, 1], 8484)),
        }
    }

    #[test]
    fn only_this_servers_names_pass_the_host_check() {
        let hosts = Hosts::new(8484, &["Fleet.example.net".to_string()]);
        for ok in [
            "127.0.0.1:8484",
            "localhost:8484",
            "fleet.example.net",
            "fleet.example.net:8484",
        ] {
            assert!(hosts.admit(&request(&[("Host", ok)])), "{ok}");
        }
        for bad in ["rebind.example:8484", "127.0.0.1:9999", "localhost", ""] {
            assert!(!hosts.admit(&request(&[("Host", bad)])), "{bad}");
        }
        assert!(!hosts.admit(&request(&[])));
    }

    #[test]
    fn posts_from_another_origin_are_told_apart() {
        let hosts = Hosts::new(8484, &["fleet.example.net".to_string()]);
        let from = |h: &[(&str, &str)]| hosts.same_origin(&request(h));
        assert!(from(&[]));
        assert!(from(&[("Origin", "http://127.0.0.1:8484")]));
        assert!(from(&[("Origin", "https://fleet.example.net")]));
        assert!(from(&[("Sec-Fetch-Site", "same-origin")]));
        assert!(!from(&[("Origin", "http://127.0.0.1:9999")]));
        assert!(!from(&[("Origin", "null")]));
        assert!(!from(&[("Sec-Fetch-Site", "same-site")]));
        assert!(!from(&[("Sec-Fetch-Site", "cross-site")]));
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }

    #[test]
    fn a_login_link_works_once_and_opens_a_session() {
        let s = Sessions::new().expect("sessions");
        let link = s.link("http://127.0.0.1:1");
        let key = link.rsplit('=').next().expect("key").to_string();
        assert_eq!(s.login("wrong").expect("login"), None);
        let id = s.login(&key).expect("login").expect("a session");
        assert_eq!(s.login(&key).expect("login"), None, "used once");
        assert_ne!(s.link("http://127.0.0.1:1"), link);
        let cookie = format!("a=b; {COOKIE}={id}");
        assert!(s.admit(&request(&[("Cookie", &cookie)])));
        assert!(!s.admit(&request(&[("Cookie", "provision-session=x")])));
        assert!(session_cookie(&id).contains("HttpOnly; SameSite=Strict"));
    }
}
