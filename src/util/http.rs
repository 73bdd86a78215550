//! The HTTP/1.1 requests of git's smart HTTP protocol and of Prometheus's
//! query API, over TCP or TLS: one request per connection (`Connection:
//! close`), a body read to its length, through its chunks, or to the end
//! of the stream, the whole exchange bounded by one deadline.
//!
//! Only what those servers need is here, and an HTTP proxy on the way
//! ([`Proxy`]): compression is left to libgit2, which a caller falls back
//! to when a request here does not succeed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use crate::util::proxy::Proxy;

/// Most bytes of a response's status line and headers.
const MAX_HEAD: usize = 64 * 1024;

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Whether TLS is spoken (`https://`).
    pub tls: bool,
    /// Host name or address as the URL writes it (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// File keeping the last TLS session with this server, to resume it.
    pub resume: Option<std::path::PathBuf>,
    /// The CA certificates (PEM) the server is verified against instead of
    /// this machine's.
    pub ca_file: Option<std::path::PathBuf>,
    /// The HTTP proxy to go through: a `CONNECT` tunnel for TLS, requests
    /// in absolute form for plain HTTP.
    pub proxy: Option<Proxy>,
}

/// The most bytes one conversation with a server may receive, shared by
/// all its connections and requests (a clone spends from the same
/// count): a server cannot send more by spreading it over several
/// answers, or by padding lists and headers around a small pack.
#[derive(Debug, Clone)]
pub struct Budget {
    left: std::sync::Arc<std::sync::atomic::AtomicU64>,
    max: u64,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Budget {
        Budget {
            left: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(max)),
            max,
        }
    }

    /// The whole budget, in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Takes `n` bytes; an [`Exceeded`] error once more than the budget
    /// has been received.
    pub fn spend(&self, n: usize) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let n = n as u64;
        let left = self.left.load(Ordering::Relaxed);
        if n > left {
            self.left.store(0, Ordering::Relaxed);
            return Err(io::Error::other(Exceeded(self.max)));
        }
        self.left.store(left - n, Ordering::Relaxed);
        Ok(())
    }
}

/// A server sent more than its [`Budget`] (the bytes it allowed).
#[derive(Debug)]
pub struct Exceeded(pub u64);

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server sent more than {}", super::human_size(self.0))
    }
}

impl std::error::Error for Exceeded {}

/// The budget an error says was exceeded, wherever in its chain (an
/// [`Exceeded`] travels inside the `io::Error` of the read it stopped).
pub fn exceeded(e: &anyhow::Error) -> Option<u64> {
    e.chain().find_map(|c| {
        c.downcast_ref::<Exceeded>()
            .or_else(|| {
                c.downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<Exceeded>())
            })
            .map(|x| x.0)
    })
}

/// A connection that gives up at a deadline: every read and write waits at
/// most until then.
pub struct Conn {
    stream: Stream,
    deadline: Instant,
    resume: Option<std::path::PathBuf>,
    ca_file: Option<std::path::PathBuf>,
    /// What every byte read is counted against, if anything.
    budget: Option<Budget>,
    /// Shuts the socket down at the deadline (see [`watchdog`]); ends
    /// with the connection.
    _watchdog: Option<std::sync::mpsc::Sender<()>>,
}

/// Shuts `tcp` down once `deadline` passes, unless the returned sender is
/// dropped first. A socket timeout bounds one system call only: a peer
/// that sends a byte now and then keeps a TLS handshake, or one TLS read
/// assembling a record, going for ever; a shut-down socket ends them all.
fn watchdog(tcp: &TcpStream, deadline: Instant) -> Option<std::sync::mpsc::Sender<()>> {
    let tcp = tcp.try_clone().ok()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("fetch-deadline".into())
        .spawn(move || {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                let _ = tcp.shutdown(std::net::Shutdown::Both);
            }
        });
    spawned.ok().map(|_| tx)
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<openssl::ssl::SslStream<TcpStream>>),
}

/// The deadline passed while waiting for the server.
#[derive(Debug)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

impl Conn {
    /// Connects to `host:port` (TLS when `tls`), waiting at most `connect`
    /// for the TCP handshake and never past `deadline`.
    pub fn open(ep: &Endpoint, connect: Duration, deadline: Instant) -> Result<Conn> {
        let tcp = match &ep.proxy {
            None => tcp(&ep.host, ep.port, connect, deadline)?,
            Some(p) => tcp(&p.host, p.port, connect, deadline)
                .with_context(|| format!("reaching {}", p.shown()))?,
        };
        if let (Some(p), true) = (&ep.proxy, ep.tls) {
            tunnel(&tcp, p, ep, deadline)?;
        }
        let mut conn = Conn {
            _watchdog: watchdog(&tcp, deadline),
            stream: Stream::Tcp(tcp),
            deadline,
            resume: ep.resume.clone(),
            ca_file: ep.ca_file.clone(),
            budget: None,
        };
        if ep.tls {
            conn = conn.into_tls(&ep.host)?;
        }
        Ok(conn)
    }

    /// Counts every byte read from now on against `budget`.
    pub fn with_budget(mut self, budget: Option<Budget>) -> Conn {
        self.budget = budget;
        self
    }

    fn into_tls(self, host: &str) -> Result<Conn> {
        let Stream::Tcp(tcp) = self.stream else {
            return Ok(self);
        };
        let resume = self.resume;
        let ca_file = self.ca_file;
        let deadline = self.deadline;
        let watch = self._watchdog;
        set_timeouts(&tcp, deadline, host)?;
        let ctx = tls_context(resume.clone(), ca_file.as_deref())?;
        let mut ssl = openssl::ssl::Ssl::new(&ctx).context("setting up TLS")?;
        if let Some(file) = &resume {
            offer_session(&mut ssl, file);
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ssl.param_mut().set_ip(ip),
            Err(_) => ssl
                .set_hostname(host)
                .and_then(|()| ssl.param_mut().set_host(host)),
        }
        .with_context(|| format!("setting up TLS for {host}"))?;
        let tls = match ssl.connect(tcp) {
            Ok(tls) => tls,
            Err(_) if Instant::now() >= deadline => {
                return Err(TimedOut(format!("the TLS handshake with {host} timed out")).into())
            }
            Err(openssl::ssl::HandshakeError::Failure(mid)) => {
                return Err(refused(host, mid.ssl(), mid.error()))
            }
            Err(e) => bail!("TLS handshake with {host}: {e}"),
        };
        Ok(Conn {
            stream: Stream::Tls(Box::new(tls)),
            deadline,
            resume,
            ca_file,
            budget: None,
            _watchdog: watch,
        })
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Tcp(t) => t,
            Stream::Tls(t) => t.get_ref(),
        }
    }

    /// Bounds the next socket operation by the deadline.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        self.tcp().set_read_timeout(Some(left))?;
        self.tcp().set_write_timeout(Some(left))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        let r = match &mut self.stream {
            Stream::Tcp(t) => t.read(buf),
            Stream::Tls(t) => t.read(buf),
        };
        let n = match r {
            // The watchdog shut the socket down: a timeout, not an end.
            Ok(0) | Err(_) if Instant::now() >= self.deadline => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            }
            r => r.map_err(timed_out)?,
        };
        if let Some(b) = &self.budget {
            b.spend(n)?;
        }
        Ok(n)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        let r = match &mut self.stream {
            Stream::Tcp(t) => t.write(buf),
            Stream::Tls(t) => t.write(buf),
        };
        r.map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(t) => t.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// Why the TLS handshake with `host` failed: for a certificate this
/// machine does not accept, what is wrong with it and what to do
/// ([`crate::util::tls::diagnose`]).
fn refused(host: &str, ssl: &openssl::ssl::SslRef, e: &openssl::ssl::Error) -> anyhow::Error {
    let verify = ssl.verify_result();
    if verify == openssl::x509::X509VerifyResult::OK {
        return anyhow::anyhow!("TLS handshake with {host}: {e}");
    }
    // The leaf is in the chain the server sent; OpenSSL keeps it as the
    // peer's certificate only once verified.
    let der = ssl
        .peer_certificate()
        .or_else(|| {
            ssl.peer_cert_chain()
                .and_then(|c| c.get(0).map(|x| x.to_owned()))
        })
        .and_then(|c| c.to_der().ok());
    let why = der
        .and_then(|d| crate::util::tls::diagnose(host, &d))
        .unwrap_or_else(|| verify.error_string().to_string());
    anyhow::anyhow!("the SSL certificate of {host} is invalid: {why}")
}

/// How long a kept TLS session is offered; servers bound it too (their
/// ticket lifetime), and OpenSSL drops an expired one itself.
const SESSION_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Offers the session kept in `file` to the server: a resumed handshake
/// sends no certificate and signs nothing, which saves the certificate
/// chain's bytes (often 3-5 KB) and the server's signature on every poll.
/// The server may refuse it; the handshake is then a full one, verified
/// as always.
#[allow(unsafe_code)]
fn offer_session(ssl: &mut openssl::ssl::SslRef, file: &std::path::Path) {
    let fresh = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < SESSION_MAX_AGE);
    let Some(session) = fresh
        .then(|| std::fs::read(file).ok())
        .flatten()
        .and_then(|der| openssl::ssl::SslSession::from_der(&der).ok())
    else {
        return;
    };
    // SAFETY: `set_session` is unsafe because OpenSSL requires the session
    // to have been made with a compatible context; it was made by this same
    // code with the same settings (`tls_context`), and OpenSSL still checks
    // its protocol and cipher before resuming, falling back to a full
    // handshake otherwise.
    let _ = unsafe { ssl.set_session(&session) };
}

/// Keeps the session the server just gave, for the next poll to resume
/// (written whole, private to root like the mirror it sits in).
fn keep_session(file: &std::path::Path, session: &openssl::ssl::SslSessionRef) {
    let Ok(der) = session.to_der() else {
        return;
    };
    let tmp = file.with_extension("tmp");
    if std::fs::write(&tmp, der).is_ok() {
        let _ = std::fs::rename(&tmp, file);
    }
}

/// Where the CA certificates are when neither `SSL_CERT_FILE` nor
/// `SSL_CERT_DIR` says: Debian's hashed directory.
const CA_DIR: &str = "/etc/ssl/certs";

/// A TLS client context that verifies the server against this machine's
/// CAs. The CAs are read from the hashed directory, one file when a
/// certificate needs it, rather than from the bundle file: parsing the
/// whole bundle costs about 25 ms of CPU on every pass. `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` are honoured as OpenSSL does. `ca_file`, when given,
/// replaces them all.
fn tls_context(
    resume: Option<std::path::PathBuf>,
    ca_file: Option<&std::path::Path>,
) -> Result<openssl::ssl::SslContext> {
    use openssl::ssl::{SslContext, SslMethod, SslOptions, SslVerifyMode, SslVersion};
    let mut ctx = SslContext::builder(SslMethod::tls_client()).context("setting up TLS")?;
    if let Some(file) = resume {
        ctx.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::CLIENT);
        ctx.set_new_session_callback(move |_, session| keep_session(&file, &session));
    }
    ctx.set_min_proto_version(Some(SslVersion::TLS1_2))
        .context("setting the TLS version")?;
    ctx.set_options(SslOptions::NO_COMPRESSION);
    ctx.set_verify(SslVerifyMode::PEER);
    let var = |v: &str| std::env::var_os(v).filter(|x| !x.is_empty());
    if let Some(ca) = ca_file {
        ctx.load_verify_locations(Some(ca), None)
            .with_context(|| format!("reading CA certificates from {}", ca.display()))?;
        return Ok(ctx.build());
    }
    let (file, dir) = (var("SSL_CERT_FILE"), var("SSL_CERT_DIR"));
    match (&file, &dir) {
        (None, None) if std::path::Path::new(CA_DIR).is_dir() => ctx
            .load_verify_locations(None, Some(std::path::Path::new(CA_DIR)))
            .with_context(|| format!("reading CA certificates from {CA_DIR}"))?,
        (None, None) => ctx
            .set_default_verify_paths()
            .context("reading this machine's CA certificates")?,
        _ => ctx
            .load_verify_locations(
                file.as_deref().map(std::path::Path::new),
                dir.as_deref().map(std::path::Path::new),
            )
            .context("reading the CA certificates of SSL_CERT_FILE or SSL_CERT_DIR")?,
    }
    Ok(ctx.build())
}

/// Socket timeouts surface as `WouldBlock`; call them what they are.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    } else {
        e
    }
}

/// Whether `e` (anywhere in its chain) is a timeout.
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<TimedOut>()
            || c.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
    })
}

fn set_timeouts(tcp: &TcpStream, deadline: Instant, host: &str) -> Result<()> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .with_context(|| format!("setting timeouts on the connection to {host}"))
}

/// Asks proxy `p` on `tcp` for a tunnel to `ep` (`CONNECT`), reading its
/// answer's head byte by byte so that nothing of the server's first bytes
/// is taken from the stream.
fn tunnel(tcp: &TcpStream, p: &Proxy, ep: &Endpoint, deadline: Instant) -> Result<()> {
    set_timeouts(tcp, deadline, &p.host)?;
    let to = host_port(ep);
    let mut head = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n");
    if let Some(a) = &p.authorization {
        head.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    let mut w = tcp;
    w.write_all(head.as_bytes())
        .with_context(|| format!("asking {} for a tunnel to {to}", p.shown()))?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    let mut r = tcp;
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_HEAD {
            bail!("{} sent an endless answer to CONNECT", p.shown());
        }
        match r.read(&mut byte) {
            Ok(0) => bail!(
                "{} closed the connection instead of opening a tunnel to {to}",
                p.shown()
            ),
            Ok(_) => answer.push(byte[0]),
            Err(e) if Instant::now() >= deadline || e.kind() == io::ErrorKind::WouldBlock => {
                return Err(
                    TimedOut(format!("{} did not answer CONNECT in time", p.shown())).into(),
                )
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("reading the answer of {}", p.shown()))
                )
            }
        }
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    match status {
        200..=299 => Ok(()),
        401 | 407 if p.authorization.is_some() => {
            bail!("{} refused its credentials (HTTP {status})", p.shown())
        }
        407 => bail!(
            "{} asks for credentials (HTTP 407): set proxy_credentials_file to a file holding `user:password`",
            p.shown()
        ),
        s => bail!("{} refused a tunnel to {to}: HTTP {s}", p.shown()),
    }
}

/// `host:port` of `ep`, bracketed for IPv6, as `CONNECT` and absolute
/// URLs write it.
fn host_port(ep: &Endpoint) -> String {
    if ep.host.contains(':') {
        format!("[{}]:{}", ep.host, ep.port)
    } else {
        format!("{}:{}", ep.host, ep.port)
    }
}

/// A TCP connection to the first address of `host` that accepts one.
fn tcp(host: &str, port: u16, connect: Duration, deadline: Instant) -> Result<TcpStream> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, connect.min(left)) {
            Ok(s) => {
                s.set_nodelay(true)
                    .with_context(|| format!("setting TCP_NODELAY on the connection to {addr}"))?;
                return Ok(s);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((addr, e))
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Err(TimedOut(format!("connecting to {addr} timed out")).into())
        }
        Some((addr, e)) => Err(anyhow::Error::new(e).context(format!("connecting to {addr}"))),
        None => bail!("{host} has no address to connect to"),
    }
}

/// One request: method, path (with query), extra headers, body.
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// Path and query, starting with `/`.
    pub target: &'a str,
    /// `Name: value` lines, without line ends.
    pub headers: Vec<String>,
    /// Sent with a `Content-Length` when not empty.
    pub body: &'a [u8],
    /// What the whole response (head, framing and body) is counted
    /// against, if anything.
    pub budget: Option<&'a Budget>,
}

/// A response whose body is read on demand.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`, lower case, if any.
    pub content_type: String,
    /// The `Location` of a redirect.
    pub location: Option<String>,
    /// `Retry-After` in seconds (a 429 or 503 asks to wait that long); the
    /// HTTP-date form is not read.
    pub retry_after: Option<u64>,
    /// `ETag`, as sent.
    pub etag: Option<String>,
    /// `Last-Modified`, as sent.
    pub last_modified: Option<String>,
    /// `Date`, as sent.
    pub date: Option<String>,
    /// The body, de-chunked.
    pub body: Box<dyn Read>,
}

/// Sends `req` over a new connection to `ep` and reads the response head.
pub fn send(
    ep: &Endpoint,
    req: &Request<'_>,
    connect: Duration,
    deadline: Instant,
) -> Result<Response> {
    let mut conn = Conn::open(ep, connect, deadline)?.with_budget(req.budget.cloned());
    // Through a proxy, plain HTTP names the whole URL (TLS is tunnelled).
    let target = match &ep.proxy {
        Some(_) if !ep.tls => format!("http://{}{}", host_header(ep), req.target),
        _ => req.target.to_string(),
    };
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        req.method,
        host_header(ep)
    );
    if let (Some(p), false) = (&ep.proxy, ep.tls) {
        if let Some(a) = &p.authorization {
            head.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
    }
    for h in &req.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !req.body.is_empty() || req.method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(req.body);
    conn.write_all(&out)
        .and_then(|()| conn.flush())
        .with_context(|| format!("sending {} {} to {}", req.method, req.target, ep.host))?;
    read_response(BufReader::new(conn))
}

fn host_header(ep: &Endpoint) -> String {
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let default = if ep.tls { 443 } else { 80 };
    if ep.port == default {
        host
    } else {
        format!("{host}:{}", ep.port)
    }
}

fn read_response<R: BufRead + 'static>(mut r: R) -> Result<Response> {
    let mut seen = 0usize;
    let mut next_line = |r: &mut R| -> Result<String> {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - seen) as u64)
            .read_until(b'\n', &mut line)
            .context("reading the response head")?;
        seen += n;
        if n == 0 || !line.ends_with(b"\n") {
            bail!("the server closed the connection or sent an over-long response head");
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_string())
    };
    let status_line = next_line(&mut r)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the server answered {status_line:?}, not an HTTP status"))?;
    let (mut content_type, mut length, mut chunked) = (String::new(), None, false);
    let mut location = None;
    let mut retry_after = None;
    let (mut etag, mut last_modified, mut date) = (None, None, None);
    loop {
        let line = next_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_ascii_lowercase(),
            "location" => location = Some(value.to_string()),
            "retry-after" => retry_after = value.parse::<u64>().ok(),
            "etag" => etag = Some(value.to_string()),
            "last-modified" => last_modified = Some(value.to_string()),
            "date" => date = Some(value.to_string()),
            "content-length" => length = value.parse::<u64>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let body: Box<dyn Read> = if chunked {
        Box::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        })
    } else if let Some(n) = length {
        Box::new(r.take(n))
    } else {
        Box::new(r)
    };
    Ok(Response {
        status,
        content_type,
        location,
        retry_after,
        etag,
        last_modified,
        date,
        body,
    })
}

/// A chunked body, read chunk by chunk.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.by_ref().take(1024).read_line(&mut size)?;
            let hex = size.trim().split(';').next().unwrap_or_default();
            self.left = u64::from_str_radix(hex, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.by_ref().take(2).read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// The host and port of a URL's `host[:port]` or `[v6][:port]`, with
/// `default` when it names no port; `None` when it is malformed.
pub fn split_authority(authority: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(raw: &'static [u8]) -> (u16, String) {
        let mut resp = read_response(BufReader::new(raw)).expect("a response");
        let mut text = String::new();
        resp.body.read_to_string(&mut text).expect("a body");
        (resp.status, text)
    }

    #[test]
    fn bodies_are_read_by_length_by_chunks_or_to_the_end() {
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef"),
            (200, "abc".into())
        );
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"),
            (200, "abcde".into())
        );
        assert_eq!(
            body(b"HTTP/1.0 404 Not Found\r\n\r\ngone"),
            (404, "gone".into())
        );
    }

    #[test]
    fn a_response_that_is_not_http_is_refused() {
        assert!(read_response(BufReader::new(&b"SSH-2.0-OpenSSH\r\n\r\n"[..])).is_err());
        assert!(read_response(BufReader::new(&b"HTTP/1.1 200 OK\r\n"[..])).is_err());
    }

    #[test]
    fn the_host_header_names_a_port_only_when_it_is_not_the_default() {
        let ep = |tls, port| Endpoint {
            tls,
            host: "git.example.net".into(),
            port,
            resume: None,
            ca_file: None,
            proxy: None,
        };
        assert_eq!(host_header(&ep(true, 443)), "git.example.net");
        assert_eq!(host_header(&ep(false, 8080)), "git.example.net:8080");
    }
}
