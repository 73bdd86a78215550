//! A smart HTTP git server: each request runs `git http-backend` as a CGI
//! program, as nginx with fcgiwrap or Apache would, with the repositories
//! of a [`crate::GitDaemon`]'s base directory.
//!
//! The `Git-Protocol` header reaches the backend as `GIT_PROTOCOL`, so
//! clients that ask for protocol v2 get it; [`Protocol::V0Only`] drops the
//! header, as servers predating v2 do.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

/// What the server passes on of the client's protocol request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `Git-Protocol` is passed on: v2 when asked.
    AsAsked,
    /// `Git-Protocol` is dropped: always v0.
    V0Only,
}

/// A server running on a thread of this process for as long as the
/// process lives.
pub struct SmartHttp {
    port: u16,
    shared: Arc<Shared>,
    /// The certificate clients must trust (`SSL_CERT_FILE`).
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// What the test and the server thread share.
#[derive(Default)]
pub struct Shared {
    /// Answer every request with 503, as a server being down for
    /// maintenance does.
    down: AtomicBool,
    /// Bytes of response bodies sent.
    sent: AtomicU64,
    /// Requests answered.
    requests: AtomicU64,
    /// `user:password` every request must carry (HTTP basic), if any.
    basic: std::sync::Mutex<Option<String>>,
    /// A redirect every request whose path starts with the first part
    /// gets, to the second part followed by the rest of the path.
    redirect: std::sync::Mutex<Option<(String, String)>>,
    /// The `Authorization` header of every request, as received.
    authorizations: std::sync::Mutex<Vec<String>>,
    /// Answer every request with 429 and this `Retry-After` (seconds), as
    /// a forge's rate limit does.
    limited: std::sync::Mutex<Option<u64>>,
}

impl SmartHttp {
    /// Serves the repositories under `base` over https on 127.0.0.1, with
    /// a self-signed certificate for 127.0.0.1 (in [`SmartHttp::ca`]).
    pub fn start(base: &Path, protocol: Protocol) -> SmartHttp {
        let dir = tempfile::tempdir().expect("a directory for the certificate");
        let tls = certificate(dir.path());
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the http server");
        let port = listener.local_addr().expect("http server address").port();
        let base = base.to_path_buf();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        thread::spawn(move || serve(listener, Some(tls), &base, protocol, &s));
        SmartHttp {
            port,
            shared,
            ca: dir.path().join("cert.pem"),
            _dir: dir,
        }
    }

    /// Makes every request fail with 503 (`true`) or be served again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Answers every request with 429 Too Many Requests and `Retry-After:
    /// SECONDS` (`Some`), or serves again (`None`).
    pub fn rate_limit(&self, retry_after: Option<u64>) {
        if let Ok(mut l) = self.shared.limited.lock() {
            *l = retry_after;
        }
    }

    /// Requires HTTP basic credentials `user:password` from now on.
    pub fn require(&self, user: &str, password: &str) {
        if let Ok(mut b) = self.shared.basic.lock() {
            *b = Some(format!("{user}:{password}"));
        }
    }

    /// Answers every request under path `from` with a 302 to `to` followed
    /// by the rest of the request's path and query.
    pub fn redirect(&self, from: &str, to: &str) {
        if let Ok(mut r) = self.shared.redirect.lock() {
            *r = Some((from.to_string(), to.to_string()));
        }
    }

    /// The `Authorization` headers received so far.
    pub fn authorizations(&self) -> Vec<String> {
        self.shared
            .authorizations
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Response body bytes and requests since the last call.
    pub fn take_sent(&self) -> (u64, u64) {
        (
            self.shared.sent.swap(0, Ordering::SeqCst),
            self.shared.requests.swap(0, Ordering::SeqCst),
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of repository `name` (`NAME.git` under the base).
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}.git", self.port)
    }
}

/// A self-signed certificate and key for 127.0.0.1, made by `openssl req`
/// in `dir` (`cert.pem`, `key.pem`).
pub fn certificate(dir: &Path) -> tiny_http::SslConfig {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    crate::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    tiny_http::SslConfig {
        certificate: std::fs::read(&cert).expect("reading the certificate"),
        private_key: std::fs::read(&key).expect("reading the key"),
    }
}

/// Answers requests on `listener` one at a time, for ever.
pub fn serve(
    listener: TcpListener,
    tls: Option<tiny_http::SslConfig>,
    base: &Path,
    protocol: Protocol,
    shared: &Shared,
) {
    let server = tiny_http::Server::from_listener(listener, tls).expect("starting the http server");
    for request in server.incoming_requests() {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        if shared.down.load(Ordering::SeqCst) {
            let _ = request.respond(tiny_http::Response::empty(503));
            continue;
        }
        if let Some(secs) = shared.limited.lock().ok().and_then(|l| *l) {
            let after =
                tiny_http::Header::from_bytes(&b"Retry-After"[..], secs.to_string().as_bytes())
                    .expect("a header");
            let _ = request.respond(tiny_http::Response::empty(429).with_header(after));
            continue;
        }
        if let Some(a) = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
        {
            if let Ok(mut seen) = shared.authorizations.lock() {
                seen.push(a.value.as_str().to_string());
            }
        }
        let redirect = shared.redirect.lock().ok().and_then(|r| r.clone());
        if let Some(rest) = redirect
            .as_ref()
            .and_then(|(from, _)| request.url().strip_prefix(from.as_str()))
        {
            let to = format!("{}{rest}", redirect.as_ref().map_or("", |r| r.1.as_str()));
            let location =
                tiny_http::Header::from_bytes(&b"Location"[..], to.as_bytes()).expect("a header");
            let _ = request.respond(tiny_http::Response::empty(302).with_header(location));
            continue;
        }
        if !authorized(&request, shared) {
            let challenge = tiny_http::Header::from_bytes(
                &b"WWW-Authenticate"[..],
                &b"Basic realm=\"git\""[..],
            )
            .expect("a header");
            let _ = request.respond(tiny_http::Response::empty(401).with_header(challenge));
            continue;
        }
        answer(request, base, protocol, shared);
    }
}

/// Whether `request` carries the credentials the server requires.
fn authorized(request: &tiny_http::Request, shared: &Shared) -> bool {
    use base64_free::encode;
    let Some(want) = shared.basic.lock().ok().and_then(|b| b.clone()) else {
        return true;
    };
    let expected = format!("Basic {}", encode(want.as_bytes()));
    request
        .headers()
        .iter()
        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == expected)
}

/// Base64 without a crate: the test kit needs it for one header.
mod base64_free {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn answer(mut request: tiny_http::Request, base: &Path, protocol: Protocol, shared: &Shared) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    let git_protocol = header("Git-Protocol").filter(|_| protocol == Protocol::AsAsked);
    let content_type = header("Content-Type").unwrap_or_default();
    let encoding = header("Content-Encoding");
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", PathBuf::from("/nonexistent"))
        .env("REQUEST_METHOD", request.method().as_str())
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = git_protocol {
        cmd.env("GIT_PROTOCOL", p);
    }
    // git compresses large request bodies; the backend inflates them.
    if let Some(e) = encoding {
        cmd.env("HTTP_CONTENT_ENCODING", e);
    }
    let Ok(mut child) = cmd.spawn() else {
        let _ = request.respond(tiny_http::Response::empty(500));
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut out);
    }
    let _ = child.wait();
    let response = cgi_response(&out);
    shared
        .sent
        .fetch_add(response.data_length().unwrap_or(0) as u64, Ordering::SeqCst);
    let _ = request.respond(response);
}

/// The HTTP response a CGI program's output stands for.
fn cgi_response(out: &[u8]) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, gap)) = split else {
        return tiny_http::Response::from_data(Vec::new()).with_status_code(502);
    };
    let head = String::from_utf8_lossy(&out[..at]).to_string();
    let mut response = tiny_http::Response::from_data(out[at + gap..].to_vec());
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            response = response.with_status_code(code);
        } else if let Ok(h) =
            tiny_http::Header::from_bytes(name.trim().as_bytes(), value.as_bytes())
        {
            response = response.with_header(h);
        }
    }
    response
}
