//! A client of a server's `upload-pack` in git's protocol v2, over `git://`
//! and smart HTTP(S).
//!
//! Why not libgit2 here: libgit2 speaks protocol v0, where the server
//! first advertises every ref it has, so a poll that finds nothing new
//! costs bytes and server time in proportion to the repository's tags and
//! branches (620 KB with 10,000 tags). In v2 the client asks `ls-refs` for
//! the one branch it follows (`ref-prefix`), and a no-op poll is a few
//! hundred bytes whatever the repository holds. v2 also lets the download
//! leave blobs out (`filter blob:none`) so that a mirror can hold only the
//! files its services mount.
//!
//! An ssh server that answers in v0 (its sshd does not pass
//! `GIT_PROTOCOL` on) is spoken to in v0 on the same connection
//! ([`Opened::V0`]): its whole ref advertisement is read, then one fetch
//! per connection. Any other server that answers in v0 (an old git
//! daemon, a dumb HTTP server) is reported as [`Opened::NotV2`]; the
//! caller then uses libgit2 (`git://`, `http://`) or the dumb client.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use git2::Oid;

use crate::config::Credentials;
use crate::git::advertisement::Advertisement;
use crate::git::pkt_line::{self, Pkt, Reader};
use crate::git::{local, ssh};
use crate::util::http::{self, Conn, Endpoint};

/// Identifies provision to servers (their logs show it).
const AGENT: &str = concat!("provision/", env!("CARGO_PKG_VERSION"));

/// A parsed upstream URL that protocol v2 can be spoken to.
#[derive(Debug, Clone)]
pub struct Target {
    pub(crate) endpoint: Endpoint,
    /// The user the URL names (`https://USER@host/…`), if any.
    pub user: Option<String>,
    /// `git://` and local: the repository path; HTTP: the URL path
    /// without a trailing slash.
    pub(crate) path: String,
    daemon: bool,
    /// A repository on this machine, served by git's upload-pack.
    local: bool,
    /// An ssh upstream: reached through OpenSSH with these credentials.
    ssh: Option<Box<(ssh::SshTarget, Credentials)>>,
}

impl Target {
    /// Keeps TLS sessions with the server in `file` and resumes them.
    pub fn resume_tls_in(mut self, file: std::path::PathBuf) -> Target {
        if self.endpoint.tls {
            self.endpoint.resume = Some(file);
        }
        self
    }

    /// An ssh upstream (`ssh://…` or scp-like `user@host:path`), reached
    /// through OpenSSH with `creds` (key, known_hosts, `ssh_command`).
    pub fn ssh(url: &str, creds: &Credentials) -> Option<Target> {
        let t = ssh::SshTarget::parse(url)?;
        Some(Target {
            endpoint: Endpoint {
                tls: false,
                host: t.host.clone(),
                port: t.port.unwrap_or(22),
                resume: None,
                ca_file: None,
                proxy: None,
            },
            user: t.user.clone(),
            path: t.path.clone(),
            daemon: true,
            local: false,
            ssh: Some(Box::new((t, creds.clone()))),
        })
    }

    /// Goes through `proxy` (HTTP and HTTPS only: `git://` and local
    /// repositories are reached directly).
    pub fn through(mut self, proxy: Option<http::Proxy>) -> Target {
        if !self.daemon && !self.local {
            self.endpoint.proxy = proxy;
        }
        self
    }

    /// Whether it is spoken to over HTTP(S), where a proxy may apply, and
    /// the host and whether TLS is spoken.
    pub fn http_host(&self) -> Option<(&str, bool)> {
        (!self.daemon && !self.local).then_some((self.endpoint.host.as_str(), self.endpoint.tls))
    }

    /// The target of `url`, or `None` for transports spoken only through
    /// libgit2 (ssh) and URLs this client cannot read (a password in the
    /// URL, a query).
    pub fn parse(url: &str) -> Option<Target> {
        if let Some(path) = url
            .strip_prefix("file://")
            .or(Some(url).filter(|u| u.starts_with('/')))
        {
            return path.starts_with('/').then(|| Target {
                user: None,
                endpoint: Endpoint {
                    tls: false,
                    host: String::new(),
                    port: 0,
                    resume: None,
                    ca_file: None,
                    proxy: None,
                },
                path: path.to_string(),
                daemon: true,
                local: true,
                ssh: None,
            });
        }
        let (scheme, rest) = url.split_once("://")?;
        let (daemon, tls, default_port) = match scheme {
            "git" => (true, false, 9418),
            "http" => (false, false, 80),
            "https" => (false, true, 443),
            _ => return None,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (user, authority) = match authority.rsplit_once('@') {
            Some((user, _)) if user.contains(':') || daemon => return None,
            Some((user, rest)) => (Some(user.to_string()), rest),
            None => (None, authority),
        };
        if path.contains(['?', '#']) {
            return None;
        }
        let (host, port) = crate::util::http::split_authority(authority, default_port)?;
        Some(Target {
            user,
            endpoint: Endpoint {
                tls,
                host,
                port,
                resume: None,
                ca_file: None,
                proxy: None,
            },
            path: if daemon {
                path.to_string()
            } else {
                path.trim_end_matches('/').to_string()
            },
            daemon,
            local: false,
            ssh: None,
        })
    }
}

/// How long and how much a session may take.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Longest wait for a TCP connection.
    pub connect: Duration,
    /// When the whole session gives up.
    pub deadline: Instant,
    /// Every byte the server sends in the session, capabilities, ref
    /// lists and pack alike (the service's `max_fetch_bytes`).
    pub budget: http::Budget,
}

/// The server is a dumb one: its refs, and how to ask it for files.
#[derive(Debug)]
pub struct DumbServer {
    /// Where it is.
    pub target: Target,
    /// The `Authorization: …` header line, if any.
    pub auth: Option<String>,
    /// Its `info/refs`: (commit, ref name).
    pub refs: crate::git::info_refs::Refs,
    /// The validators it sent with them, for the next poll.
    pub validators: crate::git::info_refs::Validators,
}

impl std::fmt::Display for DumbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server serves the repository as static files (git's dumb HTTP protocol)")
    }
}

impl std::error::Error for DumbServer {}

/// What opening a session found.
pub enum Opened {
    /// The server speaks protocol v2.
    V2(Box<Session>),
    /// An ssh server answered in protocol v0, on a connection that is
    /// kept and spoken to in v0.
    V0(Box<Session>),
    /// The server answered in protocol v0 (it does not know v2).
    NotV2,
}

/// An open conversation with a server's upload-pack in protocol v2.
pub struct Session {
    target: Target,
    bounds: Bounds,
    /// `Authorization` header for HTTP.
    auth: Option<String>,
    /// `git://` and local: the connection, kept for the next command.
    daemon: Option<BufReader<Wire>>,
    /// The features the server lists for `fetch`.
    fetch_features: Vec<String>,
    /// The first request was redirected.
    redirected: bool,
    /// Protocol v0 (ssh only): what the server advertised when the
    /// session opened.
    v0: Option<Advertisement>,
}

/// How a server answered the first request.
#[derive(Debug)]
enum Answer {
    /// Protocol v2, with these capabilities.
    V2(Vec<String>),
    /// Protocol v0: the first line of its ref advertisement (`None`: the
    /// flush of a repository without refs), not yet read further.
    V0(Option<Vec<u8>>),
}

/// What the server's answer to a fetch said beyond the pack.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Commits that are now shallow (their parents were not sent).
    pub shallow: Vec<Oid>,
    /// Commits that are no longer shallow.
    pub unshallow: Vec<Oid>,
}

/// One fetch request.
#[derive(Debug, Default)]
pub struct Want<'a> {
    /// Objects wanted.
    pub wants: &'a [Oid],
    /// Commits the mirror has (the server leaves out what they reach).
    pub haves: &'a [Oid],
    /// The mirror's shallow commits, so that the server knows its edge.
    pub shallow: &'a [Oid],
    /// Commits of history wanted (0: no limit).
    pub depth: u32,
    /// Leave blobs out (`filter blob:none`), where the server can.
    pub blobless: bool,
}

/// An HTTP answer other than 200 (after redirects).
#[derive(Debug)]
pub struct HttpStatus {
    /// The status code.
    pub status: u16,
    /// What was asked.
    pub request: String,
    /// How long the server asked to wait (`Retry-After`, seconds).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.status {
            401 | 403 => " (the server wants credentials, or refused them)",
            404 => " (no such repository)",
            _ => "",
        };
        write!(f, "{} answered HTTP {}{what}", self.request, self.status)
    }
}

impl std::error::Error for HttpStatus {}

/// Most capabilities a server may list (git lists about ten). Every list
/// a server sends is bounded in lines as well as in bytes (the session's
/// budget), so that what is kept of it stays small.
const MAX_CAPABILITIES: usize = 256;
/// Most refs an answer to `ls-refs` for one ref may hold.
const MAX_REF_LINES: usize = 1024;
/// Most `shallow`/`unshallow` lines of one answer: more commits than any
/// fetch of a mirror asks for reach the shallow boundary.
const MAX_SHALLOW_LINES: usize = 100_000;

/// A server sent a longer list than any honest one does: a fault of the
/// server, final (no other client is tried on it).
#[derive(Debug)]
pub struct Overflow(String);

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Overflow {}

/// Whether `e` is a server sending more than allowed: too many bytes (the
/// session's budget) or too long a list.
pub fn is_overflow(e: &anyhow::Error) -> bool {
    http::exceeded(e).is_some() || e.chain().any(|c| c.is::<Overflow>())
}

/// Most bytes of a dumb server's `info/refs` read.
const DUMB_REFS_CAP: u64 = 16 << 20;

/// Redirects followed for the first request, as git does.
const MAX_REDIRECTS: usize = 5;

impl Session {
    /// Opens a session: one connection (`git://`) or one `GET
    /// info/refs` (HTTP) that reads the server's capabilities.
    pub fn open(target: &Target, auth: Option<(String, String)>, bounds: Bounds) -> Result<Opened> {
        let mut session = Session {
            target: target.clone(),
            bounds,
            auth: basic(auth),
            daemon: None,
            fetch_features: Vec::new(),
            redirected: false,
            v0: None,
        };
        let answer = if target.local {
            session.open_local()?
        } else if target.ssh.is_some() {
            session.open_ssh()?
        } else if target.daemon {
            session.open_daemon()?
        } else {
            session.open_http()?
        };
        let caps = match answer {
            Answer::V2(caps) => caps,
            Answer::V0(first) if target.ssh.is_some() => {
                session.read_advertisement(first)?;
                return Ok(Opened::V0(Box::new(session)));
            }
            Answer::V0(_) => return Ok(Opened::NotV2),
        };
        if !caps
            .iter()
            .any(|c| c == "ls-refs" || c.starts_with("ls-refs="))
        {
            return Ok(Opened::NotV2);
        }
        session.fetch_features = caps
            .iter()
            .find_map(|c| c.strip_prefix("fetch="))
            .map(|f| f.split(' ').map(str::to_string).collect())
            .unwrap_or_default();
        if !caps.iter().any(|c| c == "fetch" || c.starts_with("fetch=")) {
            return Ok(Opened::NotV2);
        }
        Ok(Opened::V2(Box::new(session)))
    }

    /// A session with a smart HTTP server known to speak v2 with these
    /// `fetch` features, without asking for its capabilities again: one
    /// request per command, none before. `None` for `git://`, where the
    /// capabilities come with the connection anyway.
    pub fn resume(
        target: &Target,
        auth: Option<(String, String)>,
        bounds: Bounds,
        fetch_features: Vec<String>,
    ) -> Option<Box<Session>> {
        if target.daemon {
            return None;
        }
        Some(Box::new(Session {
            target: target.clone(),
            bounds,
            auth: basic(auth),
            daemon: None,
            fetch_features,
            redirected: false,
            v0: None,
        }))
    }

    /// The features the server lists for `fetch`, to resume with.
    pub fn fetch_features(&self) -> &[String] {
        &self.fetch_features
    }

    /// Whether commands go over smart HTTP (and can be resumed).
    pub fn is_http(&self) -> bool {
        !self.target.daemon
    }

    /// Whether the server can leave blobs out of a fetch.
    pub fn can_filter(&self) -> bool {
        self.fetch_features.iter().any(|f| f == "filter")
    }

    /// Whether the server can fetch to a depth.
    pub fn can_deepen(&self) -> bool {
        match &self.v0 {
            Some(adv) => adv.has("shallow"),
            None => self.fetch_features.iter().any(|f| f == "shallow"),
        }
    }

    /// Reads the rest of a v0 advertisement on the connection.
    fn read_advertisement(&mut self, first: Option<Vec<u8>>) -> Result<()> {
        let conn = self
            .daemon
            .as_mut()
            .context("the connection to the server is closed")?;
        let adv = Advertisement::read(first.as_deref(), &mut Reader::new(conn))?;
        if !adv.has("side-band-64k") {
            bail!("the server's git is too old: it answers in protocol v0 without side-band-64k");
        }
        self.v0 = Some(adv);
        Ok(())
    }

    /// Connects to a git daemon asking for protocol v2 and reads its
    /// capabilities; `None` when it answered in v0.
    fn open_daemon(&mut self) -> Result<Answer> {
        let ep = &self.target.endpoint;
        let mut conn = Conn::open(ep, self.bounds.connect, self.bounds.deadline)?
            .with_budget(Some(self.bounds.budget.clone()));
        let host = if ep.port == 9418 {
            ep.host.clone()
        } else {
            format!("{}:{}", ep.host, ep.port)
        };
        let mut req = Vec::new();
        pkt_line::data(
            &mut req,
            format!(
                "git-upload-pack {}\0host={host}\0\0version=2\0",
                self.target.path
            )
            .as_bytes(),
        );
        pkt_line::send(&mut conn, &req).context("sending the request")?;
        let mut conn = BufReader::new(Wire::Tcp(conn));
        let caps = read_capabilities(&mut Reader::new(&mut conn))?;
        self.daemon = Some(conn);
        Ok(caps)
    }

    /// Starts git's upload-pack on the local repository and reads its
    /// capabilities; `None` when git is not installed or answered in v0.
    fn open_local(&mut self) -> Result<Answer> {
        let Some(pipe) = local::Pipe::spawn(
            &self.target.path,
            self.bounds.deadline,
            self.bounds.budget.clone(),
        )?
        else {
            return Ok(Answer::V0(None));
        };
        let mut conn = BufReader::new(Wire::Pipe(Box::new(pipe)));
        let caps = read_capabilities(&mut Reader::new(&mut conn))?;
        self.daemon = Some(conn);
        Ok(caps)
    }

    /// Runs upload-pack on the server through OpenSSH, asking for
    /// protocol v2, and reads its capabilities; `None` when it answered in
    /// v0 (its sshd does not accept `GIT_PROTOCOL`).
    fn open_ssh(&mut self) -> Result<Answer> {
        let Some(route) = self.target.ssh.as_deref() else {
            bail!("not an ssh upstream");
        };
        ssh::check_key(&route.1)?;
        let cmd = ssh::upload_pack(&route.0, &route.1);
        let Some(pipe) = local::Pipe::start(
            cmd,
            ssh::explain,
            self.bounds.deadline,
            self.bounds.budget.clone(),
        )?
        else {
            bail!("ssh upstreams are reached through OpenSSH's `ssh`, which is not installed (Debian package openssh-client)");
        };
        let mut conn = BufReader::new(Wire::Pipe(Box::new(pipe)));
        let caps = read_capabilities(&mut Reader::new(&mut conn))?;
        self.daemon = Some(conn);
        Ok(caps)
    }

    /// `GET info/refs` with `Git-Protocol: version=2`; `None` when the
    /// server answered in v0.
    fn open_http(&mut self) -> Result<Answer> {
        const INFO_REFS: &str = "/info/refs?service=git-upload-pack";
        let mut redirects = 0;
        let resp = loop {
            let target = format!("{}{INFO_REFS}", self.target.path);
            let resp = http::send(
                &self.target.endpoint,
                &http::Request {
                    method: "GET",
                    target: &target,
                    headers: self.headers(&["Accept: */*"]),
                    body: &[],
                    budget: Some(&self.bounds.budget),
                },
                self.bounds.connect,
                self.bounds.deadline,
            )?;
            let moved = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
            match resp.location.as_deref() {
                Some(to) if moved && redirects < MAX_REDIRECTS => {
                    // Never from https to anything else; the repository is
                    // what precedes `/info/refs` in the new location.
                    let base = to.split_once(INFO_REFS).map_or(to, |(b, _)| b);
                    let next = Target::parse(base)
                        .filter(|t| t.endpoint.tls == self.target.endpoint.tls && !t.daemon)
                        .with_context(|| {
                            format!("the server redirected to {to:?}, which is not followed")
                        })?;
                    if !same_origin(&self.target.endpoint, &next.endpoint) {
                        // The token is the configured server's: another
                        // origin never sees it (as curl and git do).
                        self.auth = None;
                    }
                    let mut next = next;
                    next.endpoint.proxy = self.target.endpoint.proxy.clone();
                    next.endpoint.resume = None;
                    self.target = Target {
                        user: self.target.user.clone(),
                        ..next
                    };
                    redirects += 1;
                }
                _ if resp.status != 200 => {
                    return Err(HttpStatus {
                        status: resp.status,
                        request: format!("GET {target}"),
                        retry_after: resp.retry_after,
                    }
                    .into())
                }
                _ => break resp,
            }
        };
        if redirects > 0 {
            self.redirected = true;
        }
        if resp.content_type != "application/x-git-upload-pack-advertisement" {
            // A dumb HTTP server (static files): no upload-pack to speak
            // v2 to; what it sent is its `info/refs` file.
            let validators = crate::git::info_refs::Validators::of(&resp);
            let mut text = String::new();
            resp.body
                .take(DUMB_REFS_CAP)
                .read_to_string(&mut text)
                .context("reading the server's info/refs")?;
            if let Some(refs) = crate::git::info_refs::refs(&text) {
                return Err(DumbServer {
                    target: self.target.clone(),
                    auth: self.auth.clone(),
                    refs,
                    validators,
                }
                .into());
            }
            return Ok(Answer::V0(None));
        }
        let mut r = Reader::new(resp.body);
        read_capabilities(&mut r)
    }

    /// Whether the first request was redirected (the URL to resume with
    /// is then not the configured one).
    pub fn redirected(&self) -> bool {
        self.redirected
    }

    fn headers(&self, extra: &[&str]) -> Vec<String> {
        let mut h = vec![
            format!("User-Agent: git/2 ({AGENT})"),
            "Git-Protocol: version=2".to_string(),
            "Pragma: no-cache".to_string(),
        ];
        h.extend(extra.iter().map(|s| s.to_string()));
        h.extend(self.auth.clone());
        h
    }

    /// Sends one command and returns a reader of its response.
    fn command(&mut self, body: &[u8]) -> Result<Reader<Box<dyn Read + '_>>> {
        if self.daemon.is_some() {
            return self.daemon_command(body);
        }
        let target = format!("{}/git-upload-pack", self.target.path);
        let resp = http::send(
            &self.target.endpoint,
            &http::Request {
                method: "POST",
                target: &target,
                headers: self.headers(&[
                    "Content-Type: application/x-git-upload-pack-request",
                    "Accept: application/x-git-upload-pack-result",
                ]),
                body,
                budget: Some(&self.bounds.budget),
            },
            self.bounds.connect,
            self.bounds.deadline,
        )?;
        if resp.status != 200 {
            return Err(HttpStatus {
                status: resp.status,
                request: format!("POST {target}"),
                retry_after: resp.retry_after,
            }
            .into());
        }
        Ok(Reader::new(resp.body))
    }

    /// Sends one command on the daemon connection.
    fn daemon_command(&mut self, body: &[u8]) -> Result<Reader<Box<dyn Read + '_>>> {
        let conn = self
            .daemon
            .as_mut()
            .context("the connection to the server is closed")?;
        pkt_line::send(conn.get_mut(), body).context("sending a command")?;
        Ok(Reader::new(Box::new(conn)))
    }

    /// The commit `refname` points to on the server, `None` when it has no
    /// such ref. Asks for that one ref alone.
    pub fn ls_ref(&mut self, refname: &str) -> Result<Option<Oid>> {
        if let Some(adv) = &self.v0 {
            return Ok(adv.refs.get(refname).copied());
        }
        let mut req = Vec::new();
        pkt_line::line(&mut req, "command=ls-refs");
        pkt_line::line(&mut req, &format!("agent={AGENT}"));
        pkt_line::delim(&mut req);
        pkt_line::line(&mut req, &format!("ref-prefix {refname}"));
        pkt_line::flush(&mut req);
        let mut r = self.command(&req)?;
        let mut found = None;
        for n in 0.. {
            if n > MAX_REF_LINES {
                return Err(Overflow(format!(
                    "the server sent more than {MAX_REF_LINES} refs for the one asked for"
                ))
                .into());
            }
            match r.next().context("reading the ref list")? {
                Pkt::Flush | Pkt::ResponseEnd => break,
                Pkt::Delim => bail!("the server sent a delimiter inside the ref list"),
                pkt => {
                    let line = pkt
                        .line()
                        .context("the server sent a ref line that is not text")?;
                    server_error(line)?;
                    let mut parts = line.split(' ');
                    let (Some(oid), Some(name)) = (parts.next(), parts.next()) else {
                        bail!("the server sent {line:?} as a ref");
                    };
                    if name == refname {
                        found = Some(Oid::from_str(oid).with_context(|| {
                            format!("the server sent {oid:?} as the id of {name}")
                        })?);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Fetches what `want` asks for, writing the pack into `odb` (indexed
    /// there only once complete); the session's budget stops a server that
    /// sends too much.
    pub fn fetch(&mut self, want: &Want<'_>, odb: &git2::Odb<'_>) -> Result<Fetched> {
        if self.v0.is_some() {
            return self.fetch_v0(want, odb);
        }
        let req = self.fetch_request(want);
        let mut r = self.command(&req)?;
        let mut out = Fetched::default();
        loop {
            let section = match r.next().context("reading the fetch response")? {
                Pkt::Delim => continue,
                Pkt::Flush | Pkt::ResponseEnd => {
                    bail!("the server ended its answer before sending a pack")
                }
                pkt => pkt.line().unwrap_or_default().to_string(),
            };
            server_error(&section)?;
            match section.as_str() {
                "packfile" => break,
                "shallow-info" => read_shallow_info(&mut r, &mut out, Pkt::Delim)?,
                // acknowledgments, wanted-refs, packfile-uris: nothing we
                // asked for; read through.
                _ => skip_section(&mut r)?,
            }
        }
        receive_pack(&mut r, odb)?;
        Ok(out)
    }

    /// [`Session::fetch`] in protocol v0: the request in one write (wants
    /// with the capabilities used, the shallow edge and depth, haves,
    /// `done`), then the shallow lines, one `ACK` or `NAK`, and the pack.
    /// The server ends the connection after its pack, so a further fetch
    /// opens another one (and reads the advertisement again).
    fn fetch_v0(&mut self, want: &Want<'_>, odb: &git2::Odb<'_>) -> Result<Fetched> {
        if self.daemon.is_none() {
            self.reopen_v0()?;
        }
        let req = self.fetch_request_v0(want)?;
        let mut conn = self
            .daemon
            .take()
            .context("the connection to the server is closed")?;
        pkt_line::send(conn.get_mut(), &req).context("sending the fetch request")?;
        let mut r = Reader::new(&mut conn);
        let mut out = Fetched::default();
        if want.depth > 0 && self.can_deepen() {
            read_shallow_info(&mut r, &mut out, Pkt::Flush)?;
        }
        let pkt = r.next().context("reading the server's acknowledgment")?;
        let line = pkt.line().unwrap_or_default();
        server_error(line)?;
        if line != "NAK" && !line.starts_with("ACK ") {
            bail!("the server sent {line:?} where an ACK or NAK belongs");
        }
        receive_pack(&mut r, odb)?;
        Ok(out)
    }

    /// A new connection to a v0 ssh server, its advertisement read.
    fn reopen_v0(&mut self) -> Result<()> {
        match self.open_ssh()? {
            Answer::V0(first) => self.read_advertisement(first),
            Answer::V2(_) => bail!(
                "the server answered in protocol v2 on a second connection after v0 on the first"
            ),
        }
    }

    fn fetch_request_v0(&self, want: &Want<'_>) -> Result<Vec<u8>> {
        let adv = self.v0.as_ref().context("not a protocol v0 session")?;
        let mut caps = vec!["side-band-64k"];
        caps.extend(
            ["ofs-delta", "no-progress", "shallow"]
                .into_iter()
                .filter(|c| adv.has(c)),
        );
        let agent = format!("agent={AGENT}");
        if adv.caps.iter().any(|c| c.starts_with("agent=")) {
            caps.push(&agent);
        }
        let mut req = Vec::new();
        for (i, w) in want.wants.iter().enumerate() {
            match i {
                0 => pkt_line::line(&mut req, &format!("want {w} {}", caps.join(" "))),
                _ => pkt_line::line(&mut req, &format!("want {w}")),
            }
        }
        if want.depth > 0 && self.can_deepen() {
            for s in want.shallow {
                pkt_line::line(&mut req, &format!("shallow {s}"));
            }
            pkt_line::line(&mut req, &format!("deepen {}", want.depth));
        }
        pkt_line::flush(&mut req);
        for h in want.haves {
            pkt_line::line(&mut req, &format!("have {h}"));
        }
        pkt_line::line(&mut req, "done");
        Ok(req)
    }

    fn fetch_request(&self, want: &Want<'_>) -> Vec<u8> {
        let mut req = Vec::new();
        pkt_line::line(&mut req, "command=fetch");
        pkt_line::line(&mut req, &format!("agent={AGENT}"));
        pkt_line::delim(&mut req);
        pkt_line::line(&mut req, "no-progress");
        pkt_line::line(&mut req, "ofs-delta");
        if want.depth > 0 && self.can_deepen() {
            for s in want.shallow {
                pkt_line::line(&mut req, &format!("shallow {s}"));
            }
            pkt_line::line(&mut req, &format!("deepen {}", want.depth));
        }
        if want.blobless && self.can_filter() {
            pkt_line::line(&mut req, "filter blob:none");
        }
        for w in want.wants {
            pkt_line::line(&mut req, &format!("want {w}"));
        }
        for h in want.haves {
            pkt_line::line(&mut req, &format!("have {h}"));
        }
        pkt_line::line(&mut req, "done");
        pkt_line::flush(&mut req);
        req
    }

    /// Ends the session politely (`git://`: a final flush).
    pub fn close(mut self) {
        if let Some(conn) = self.daemon.as_mut() {
            let _ = pkt_line::send(conn.get_mut(), b"0000");
        }
    }
}

/// The stream of a stateful session: a git daemon's connection, or the
/// pipes of a local upload-pack.
enum Wire {
    Tcp(Conn),
    Pipe(Box<local::Pipe>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(c) => c.read(buf),
            Wire::Pipe(p) => p.read(buf),
        }
    }
}

impl std::io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(c) => c.write(buf),
            Wire::Pipe(p) => p.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Tcp(c) => c.flush(),
            Wire::Pipe(p) => p.flush(),
        }
    }
}

/// Whether two endpoints are one origin: scheme, host and port.
fn same_origin(a: &Endpoint, b: &Endpoint) -> bool {
    a.tls == b.tls && a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

/// The `Authorization` header for a user and token.
pub(crate) fn basic(auth: Option<(String, String)>) -> Option<String> {
    use base64::Engine as _;
    auth.map(|(user, token)| {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
        format!("Authorization: Basic {pair}")
    })
}

/// Reads the capability advertisement of protocol v2 (`version 2`, then
/// one capability per line up to a flush), or the first line of a v0
/// advertisement the server started instead. A `# service=` preamble
/// (smart HTTP) is skipped.
fn read_capabilities<R: Read>(r: &mut Reader<R>) -> Result<Answer> {
    let mut first = r.next().context("reading the server's first line")?;
    if first.line().is_some_and(|l| l.starts_with("# service=")) {
        if r.next().context("reading the server's advertisement")? != Pkt::Flush {
            bail!("the server sent no flush after its service line");
        }
        first = r.next().context("reading the server's advertisement")?;
    }
    let Pkt::Data(data) = first else {
        // An empty v0 advertisement (a repository without refs) is a flush.
        return Ok(Answer::V0(None));
    };
    let line = String::from_utf8_lossy(&data);
    server_error(line.trim_end_matches('\n'))?;
    if line.trim_end_matches('\n') != "version 2" {
        return Ok(Answer::V0(Some(data)));
    }
    let mut caps = Vec::new();
    loop {
        match r.next().context("reading the server's capabilities")? {
            Pkt::Flush => return Ok(Answer::V2(caps)),
            _ if caps.len() >= MAX_CAPABILITIES => {
                return Err(Overflow(format!(
                    "the server listed more than {MAX_CAPABILITIES} capabilities"
                ))
                .into())
            }
            pkt => caps.push(pkt.line().unwrap_or_default().to_string()),
        }
    }
}

/// An `ERR` line is the server refusing: say what it said.
fn server_error(line: &str) -> Result<()> {
    match line.strip_prefix("ERR ") {
        Some(msg) => bail!("the server said: {msg}"),
        None => Ok(()),
    }
}

/// Reads `shallow`/`unshallow` lines up to `end`: the delimiter that
/// ends the section in v2, the flush that ends the list in v0.
fn read_shallow_info<R: Read>(r: &mut Reader<R>, out: &mut Fetched, end: Pkt) -> Result<()> {
    loop {
        let pkt = r.next().context("reading the shallow list")?;
        let Some(line) = pkt.line() else {
            return match pkt {
                p if p == end => Ok(()),
                _ => bail!("the server ended its answer inside the shallow list"),
            };
        };
        if out.shallow.len() + out.unshallow.len() >= MAX_SHALLOW_LINES {
            return Err(Overflow(format!(
                "the server sent more than {MAX_SHALLOW_LINES} shallow lines"
            ))
            .into());
        }
        let (kind, id) = line.split_once(' ').unwrap_or((line, ""));
        let oid = Oid::from_str(id)
            .with_context(|| format!("the server sent {line:?} as a shallow line"))?;
        match kind {
            "shallow" => out.shallow.push(oid),
            "unshallow" => out.unshallow.push(oid),
            _ => bail!("the server sent {line:?} in the shallow list"),
        }
    }
}

/// Writes the pack that follows on band 1 into `odb`, indexed there only
/// once complete; band 2 (progress) is dropped, band 3 is the server's
/// error.
fn receive_pack<R: Read>(r: &mut Reader<R>, odb: &git2::Odb<'_>) -> Result<()> {
    let mut writer = odb.packwriter().context("starting a pack in the mirror")?;
    loop {
        match r.next().context("reading the pack")? {
            Pkt::Flush | Pkt::ResponseEnd => break,
            Pkt::Delim => bail!("the server sent a delimiter inside the pack"),
            Pkt::Data(d) => match d.split_first() {
                Some((1, data)) => writer.write_all(data).context("writing the pack")?,
                Some((2, _)) => {}
                Some((3, msg)) => {
                    bail!("the server said: {}", String::from_utf8_lossy(msg).trim())
                }
                _ => bail!("the server sent a pack line on no known band"),
            },
        }
    }
    writer.commit().context("indexing the fetched pack")?;
    Ok(())
}

/// Reads up to the end of a section we have no use for.
fn skip_section<R: Read>(r: &mut Reader<R>) -> Result<()> {
    loop {
        match r.next().context("reading the server's answer")? {
            Pkt::Delim => return Ok(()),
            Pkt::Flush | Pkt::ResponseEnd => {
                bail!("the server ended its answer before sending a pack")
            }
            Pkt::Data(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_endpoint_and_path() {
        let t = Target::parse("git://127.0.0.1:9419/r.git").expect("git://");
        assert_eq!(
            (t.endpoint.host.as_str(), t.endpoint.port, t.path.as_str()),
            ("127.0.0.1", 9419, "/r.git")
        );
        assert!(t.daemon);
        let t = Target::parse("https://git.example.net/ops/config.git/").expect("https://");
        assert_eq!(
            (t.endpoint.port, t.path.as_str(), t.endpoint.tls),
            (443, "/ops/config.git", true)
        );
        let t = Target::parse("http://[::1]:8080/r").expect("v6");
        assert_eq!((t.endpoint.host.as_str(), t.endpoint.port), ("::1", 8080));
        for other in ["ssh://h/r", "git@h:r", "https://u:p@h/r", "http://h:x/r"] {
            assert!(Target::parse(other).is_none(), "{other}");
        }
    }

    #[test]
    fn capabilities_are_read_after_a_service_line_and_v0_is_told_apart() {
        let mut v2 = Vec::new();
        pkt_line::line(&mut v2, "# service=git-upload-pack");
        pkt_line::flush(&mut v2);
        pkt_line::line(&mut v2, "version 2");
        pkt_line::line(&mut v2, "ls-refs=unborn");
        pkt_line::line(&mut v2, "fetch=shallow filter");
        pkt_line::flush(&mut v2);
        let Answer::V2(caps) = read_capabilities(&mut Reader::new(&v2[..])).expect("read") else {
            panic!("not read as v2");
        };
        assert_eq!(caps, ["ls-refs=unborn", "fetch=shallow filter"]);
        let mut v0 = Vec::new();
        pkt_line::data(
            &mut v0,
            b"0123456789012345678901234567890123456789 HEAD\0multi_ack\n",
        );
        assert!(matches!(
            read_capabilities(&mut Reader::new(&v0[..])).expect("read"),
            Answer::V0(Some(_))
        ));
        let mut err = Vec::new();
        pkt_line::line(
            &mut err,
            "ERR access denied or repository not exported: /r.git",
        );
        let e = read_capabilities(&mut Reader::new(&err[..])).expect_err("an error");
        assert!(e.to_string().contains("not exported"), "{e}");
    }
}
