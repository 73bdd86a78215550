//! `provision fleet serve`: the fleet on a web page, and the same
//! out-of-band actions as `provision fleet` from the browser.
//!
//! A small synchronous server ([`http`]: one thread per connection, bounded
//! requests, a bounded number worked on at once): the page is a view of
//! `fleet status` (refreshed when older than `--refresh`), and every action
//! is the same SSH fan-out the command line uses. [`guard`] decides who
//! gets in: the `Host` must name this server, POSTs must come from its own
//! pages, and every request needs a session from the login link (or a user
//! or token of `--auth-file`). Forms also carry a token made at start.

pub mod auth;
pub mod guard;
pub mod hook;
pub mod html;
pub mod http;
pub mod pages;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::config::Config;
use crate::fleet::action::{self, Change};
use crate::fleet::ssh::{Answer, Transport};
use crate::fleet::status::{self, Document};
use crate::host::prometheus::Api;
use crate::model::history::HistoryEntry;
use crate::util::now_unix;
use guard::{Hosts, Sessions};
use html::Frame;
use http::{Reply, Request};

/// Requests worked on at once; one more gets 503 (busy).
const MAX_BUSY: usize = 16;
/// Commits a page's history shows.
const HISTORY: &str = "15";
/// The least time between two collections a `?refresh=1` can force, so a
/// page that keeps asking cannot keep the fleet's ssh busy.
const MIN_FORCED_REFRESH: Duration = Duration::from_secs(5);
/// Remote answers kept for the detail pages before the cache is cleared.
const MAX_CACHED_CALLS: usize = 10_000;

/// The fleet the page shows and steers.
pub struct Fleet {
    /// The config the machines come from.
    pub config: Config,
    /// The machines chosen (`--machines`).
    pub machines: Vec<String>,
    /// How they are reached.
    pub transport: Transport,
    /// Machines reached at once.
    pub jobs: usize,
}

/// `fleet serve`'s options.
pub struct Options {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The users and tokens that may use it (required beyond loopback).
    pub users: Option<auth::Users>,
    /// Names the server is reached by besides its address and `localhost`
    /// (`--host-name`; a reverse proxy's name).
    pub host_names: Vec<String>,
    /// How old the shown data may get before it is collected again.
    pub refresh: Duration,
    /// Read the status from Prometheus instead of SSH.
    pub prometheus: Option<Api>,
    /// The secret forges sign push hooks with (`--webhook-secret`); no
    /// hook endpoint without it.
    pub webhook_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
}

/// The status document and when it was collected.
struct Snapshot {
    doc: Arc<Document>,
    taken: Instant,
}

/// One remote call of a detail page, and its answer.
type Call = (String, Vec<String>);

struct App {
    fleet: Fleet,
    opts: Options,
    token: String,
    hosts: Hosts,
    /// The login link's sessions, when there is no `--auth-file`.
    sessions: Option<Sessions>,
    /// `http://ADDR:PORT`, for the login links printed.
    base: String,
    snapshot: Mutex<Option<Snapshot>>,
    /// Answers of the detail pages' calls (history, diff), reused while
    /// younger than `--refresh`.
    calls: Mutex<HashMap<Call, (Instant, Answer)>>,
    busy: AtomicUsize,
    /// The push receiver, with `--webhook-secret`.
    hook: Option<hook::Hook>,
}

/// Serves until killed.
pub fn serve(fleet: Fleet, opts: Options) -> Result<()> {
    let listen = opts.listen;
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let sessions = match opts.users {
        Some(_) => None,
        None => Some(Sessions::new()?),
    };
    let hook = opts
        .webhook_secret
        .clone()
        .map(|secret| hook::Hook::new(secret, fleet.transport.clone(), fleet.jobs));
    let app = Arc::new(App {
        hook,
        hosts: Hosts::new(listen.port(), &opts.host_names),
        base: format!("http://{listen}"),
        token: guard::random_hex(24)?,
        sessions,
        fleet,
        opts,
        snapshot: Mutex::new(None),
        calls: Mutex::new(HashMap::new()),
        busy: AtomicUsize::new(0),
    });
    eprintln!(
        "provision fleet serve: http://{listen}/ ({} machines{})",
        app.fleet.machines.len(),
        if app.opts.users.is_some() {
            ", users of the auth file only"
        } else {
            ""
        }
    );
    app.print_login_link();
    let handler = Arc::clone(&app);
    http::serve(listener, move |req| handler.handle(req))
}

impl App {
    /// Tells the operator (on stderr, which only they read) the link that
    /// opens a session.
    fn print_login_link(&self) {
        if let Some(s) = &self.sessions {
            eprintln!(
                "provision fleet serve: log in with {} (it works once; the next link is printed when it is used)",
                s.link(&self.base)
            );
        }
    }

    fn handle(&self, req: Request) -> Reply {
        if self.busy.fetch_add(1, Ordering::SeqCst) >= MAX_BUSY {
            self.busy.fetch_sub(1, Ordering::SeqCst);
            return Reply::text(503, "busy: try again\n");
        }
        let reply = self.route(&req);
        self.busy.fetch_sub(1, Ordering::SeqCst);
        reply
    }

    fn route(&self, req: &Request) -> Reply {
        // A forge's push: its signature is its only credential (a forge
        // has no session, page token or name of ours for `Host`).
        if req.method == "POST" && req.target.split('?').next() == Some("/api/v1/hook") {
            return match &self.hook {
                Some(h) => h.receive(req, &self.fleet.config, &self.fleet.machines),
                None => Reply::text(
                    404,
                    "no push hook here: start fleet serve with --webhook-secret FILE\n",
                ),
            };
        }
        if !self.hosts.admit(req) {
            return Reply::text(
                421,
                "this server is not reached by that name (Host); give it with --host-name\n",
            );
        }
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let path = percent_decode(path);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if req.method == "GET" && segments == ["login"] {
            return self.login(query);
        }
        if req.method == "POST" && !self.hosts.same_origin(req) {
            eprintln!(
                "provision fleet serve: refused {} from {}: sent by another site's page (Origin {:?}, Sec-Fetch-Site {:?})",
                crate::util::escape_line(&path),
                req.peer,
                req.header("Origin").map(crate::util::escape_line),
                req.header("Sec-Fetch-Site").map(crate::util::escape_line),
            );
            return Reply::text(403, "refused: sent by another site's page\n");
        }
        let user = match self.who(req) {
            Ok(user) => user,
            Err(refusal) => return refusal,
        };
        let force = query.split('&').any(|kv| kv == "refresh=1");
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", [""]) => self.overview(force, query),
            ("GET", ["api", "v1", "status"]) => {
                let doc = self.doc(force);
                Reply::json_of(200, &*doc)
            }
            ("GET", ["machine", name]) => self.machine(name, force),
            ("GET", ["service", name]) => self.service(name, force),
            ("POST", ["api", "v1", verb]) => self.act(req, verb, &user),
            ("GET" | "HEAD", _) => Reply::html(
                404,
                self.frame_page("not found", "<p>No such page.</p>", None),
            ),
            _ => Reply::text(405, "method not allowed\n"),
        }
    }

    /// Who sent `req`: a user or token of the auth file, or the operator
    /// through a session; otherwise the 401 to answer (with no form token).
    fn who(&self, req: &Request) -> std::result::Result<String, Reply> {
        if let Some(users) = &self.opts.users {
            return users.check(req.header("Authorization")).ok_or_else(|| {
                Reply::text(401, "who are you? (a user or token of the auth file)\n").with(
                    "WWW-Authenticate",
                    "Basic realm=\"provision fleet\", charset=\"UTF-8\"".to_string(),
                )
            });
        }
        match &self.sessions {
            Some(s) if s.admit(req) => Ok(action::operator()),
            _ => Err(Reply::text(
                401,
                "log in first: open the login link `provision fleet serve` printed on its stderr \
                 (each link works once; the newest one printed is the one to use)\n",
            )),
        }
    }

    /// `GET /login?key=KEY[&next=/PATH]`: opens a session and goes on to
    /// `next` (a path of this server only).
    fn login(&self, query: &str) -> Reply {
        let form = parse_form(query);
        let field = |k: &str| form.get(k).and_then(|v| v.first()).cloned();
        let Some(sessions) = &self.sessions else {
            return Reply::text(
                404,
                "this server takes the users of its auth file instead\n",
            );
        };
        let id = match sessions.login(&field("key").unwrap_or_default()) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Reply::text(
                    403,
                    "this login link is wrong or was used already: use the newest one the server printed\n",
                )
            }
            Err(e) => return Reply::text(503, format!("{e:#}\n")),
        };
        eprintln!("provision fleet serve: a session was opened with the login link");
        self.print_login_link();
        let next = field("next")
            .filter(|n| {
                n.starts_with('/') && !n.starts_with("//") && !n.contains(['\\', '\r', '\n'])
            })
            .unwrap_or_else(|| "/".to_string());
        Reply::text(303, "logged in\n")
            .with("Set-Cookie", guard::session_cookie(&id))
            .with("Location", next)
    }

    /// The status document, collected again when older than `--refresh`
    /// (or when asked).
    fn doc(&self, force: bool) -> Arc<Document> {
        let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |s: &&Snapshot| {
            let age = s.taken.elapsed();
            age < MIN_FORCED_REFRESH || (!force && age < self.opts.refresh)
        };
        if let Some(s) = snap.as_ref().filter(fresh) {
            return Arc::clone(&s.doc);
        }
        let f = &self.fleet;
        let answers = match &self.opts.prometheus {
            Some(api) => crate::fleet::prometheus::answers(api, &f.machines).unwrap_or_else(|e| {
                f.machines
                    .iter()
                    .map(|m| (m.clone(), Answer::Unreachable(format!("Prometheus: {e:#}"))))
                    .collect()
            }),
            None => status::ask(&f.machines, &f.transport, f.jobs, &[], |_| {}),
        };
        let doc = Arc::new(status::collect(&f.config, answers, now_unix()));
        *snap = Some(Snapshot {
            doc: Arc::clone(&doc),
            taken: Instant::now(),
        });
        doc
    }

    fn frame_page(&self, title: &str, body: &str, doc: Option<&Document>) -> String {
        html::page(
            &Frame {
                title,
                token: &self.token,
                reload: self.opts.refresh.as_secs(),
                data_time: doc.map(|d| (d.time, now_unix())),
            },
            body,
        )
    }

    fn overview(&self, force: bool, query: &str) -> Reply {
        let doc = self.doc(force);
        let form = parse_form(query);
        let field = |k: &str| {
            form.get(k)
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let filter = pages::Filter {
            service: field("service"),
            problems: field("state").as_deref() == Some("problems"),
            name: field("name"),
            page: field("page").and_then(|p| p.parse().ok()).unwrap_or(0),
        };
        let mut body = pages::overview(&doc, &filter);
        if let Some(h) = &self.hook {
            body.push_str(&pages::pushes(&h.events()));
        }
        Reply::html(200, self.frame_page("overview", &body, Some(&doc)))
    }

    /// Runs `args` on each of `calls` machines at once; an answer younger
    /// than `--refresh` is reused, so reloading a page (or a page that
    /// keeps loading it) does not run ssh again.
    fn ask(&self, calls: Vec<Call>) -> Vec<(String, Answer)> {
        let cached = |call: &Call| {
            let cache = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(call)
                .filter(|(at, _)| at.elapsed() < self.opts.refresh)
                .map(|(_, a)| a.clone())
        };
        let missing: Vec<Call> = calls
            .iter()
            .filter(|c| cached(c).is_none())
            .cloned()
            .collect();
        let fresh = crate::fleet::fanout::each(
            &missing,
            self.fleet.jobs,
            |(m, args)| (m.clone(), self.fleet.transport.call(m, args)),
            |_| {},
        );
        {
            let mut cache = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() + fresh.len() > MAX_CACHED_CALLS {
                cache.clear();
            }
            for (call, (_, answer)) in missing.into_iter().zip(fresh) {
                cache.insert(call, (Instant::now(), answer));
            }
        }
        calls
            .iter()
            .map(|c| {
                let answer = cached(c)
                    .unwrap_or_else(|| Answer::Unreachable("no answer was kept".to_string()));
                (c.0.clone(), answer)
            })
            .collect()
    }

    fn machine(&self, name: &str, force: bool) -> Reply {
        let doc = self.doc(force);
        let Some(m) = doc.machines.iter().find(|m| m.machine == name) else {
            return Reply::html(
                404,
                self.frame_page(name, "<p>No such machine in the config.</p>", None),
            );
        };
        let services: &[crate::model::status::ServiceStatus] =
            m.doc.as_ref().map_or(&[], |d| &d.services);
        let mut calls = Vec::new();
        for s in services {
            calls.push((m.machine.clone(), history_args(&s.name)));
            if s.drift.count.is_some_and(|n| n > 0) {
                calls.push((m.machine.clone(), vec!["diff".to_string(), s.name.clone()]));
            }
        }
        let answers = self.ask(calls.clone());
        let details = services
            .iter()
            .map(|s| {
                let svc = s.name.clone();
                let mut d = pages::Details {
                    history: Vec::new(),
                    history_from: Err("unreachable".to_string()),
                    diffs: Vec::new(),
                };
                for ((_, args), (machine, answer)) in calls.iter().zip(&answers) {
                    if args.get(1) != Some(&svc) {
                        continue;
                    }
                    fill(&mut d, machine, args, answer);
                }
                (svc, d)
            })
            .collect::<Vec<_>>();
        let body = pages::machine(&doc, m, &details, &self.token);
        Reply::html(200, self.frame_page(name, &body, Some(&doc)))
    }

    fn service(&self, name: &str, force: bool) -> Reply {
        let doc = self.doc(force);
        let runs = action::running(&self.fleet.config, &self.fleet.machines, name);
        if runs.is_empty() {
            return Reply::html(
                404,
                self.frame_page(
                    name,
                    "<p>No machine of the config runs this service.</p>",
                    None,
                ),
            );
        }
        let reachable: Vec<&String> = runs
            .iter()
            .filter(|m| doc.machines.iter().any(|s| &s.machine == *m && s.reachable))
            .collect();
        let mut calls: Vec<(String, Vec<String>)> = reachable
            .first()
            .map(|m| vec![((*m).clone(), history_args(name))])
            .unwrap_or_default();
        for m in &doc.machines {
            let drifted =
                status::service_in(m, name).is_some_and(|s| s.drift.count.is_some_and(|n| n > 0));
            if drifted {
                calls.push((
                    m.machine.clone(),
                    vec!["diff".to_string(), name.to_string()],
                ));
            }
        }
        let answers = self.ask(calls.clone());
        let mut d = pages::Details {
            history: Vec::new(),
            history_from: Err("no machine running it answered".to_string()),
            diffs: Vec::new(),
        };
        for ((_, args), (machine, answer)) in calls.iter().zip(&answers) {
            fill(&mut d, machine, args, answer);
        }
        let body = pages::service(&doc, name, &runs, &d, &self.token);
        Reply::html(200, self.frame_page(name, &body, Some(&doc)))
    }

    /// `POST /api/v1/VERB`: the token, the service, the machines, then the
    /// fan-out; logged before and after.
    fn act(&self, req: &Request, verb: &str, user: &str) -> Reply {
        let wants_json = req
            .header("Accept")
            .is_some_and(|a| a.contains("application/json"))
            || req.header("X-Provision-Token").is_some();
        let header_token = req.header("X-Provision-Token").map(str::to_string);
        let peer = req.peer;
        let Ok(body) = std::str::from_utf8(&req.body) else {
            return Reply::text(400, "the form is not UTF-8 text\n");
        };
        let form = parse_form(body);
        let token = header_token.or_else(|| form.get("token").and_then(|v| v.first().cloned()));
        if !token.is_some_and(|t| guard::same(&t, &self.token)) {
            eprintln!(
                "provision fleet serve: refused {} from {user} at {peer}: missing or wrong token",
                crate::util::escape_line(verb)
            );
            return Reply::text(
                403,
                "missing or wrong token: reload the page and try again\n",
            );
        }
        let request = match self.request(verb, &form) {
            Ok(r) => r,
            Err(why) => return Reply::text(400, format!("{why}\n")),
        };
        let (change, service, targets) = request;
        let by = format!("{user} (fleet web)");
        let args = change.remote_args(&service, &by);
        eprintln!(
            "provision fleet serve: {} UTC {user} at {peer}: provision {} on {}",
            crate::util::format_utc(now_unix() as i64),
            crate::util::escape_line(&args.join(" ")),
            targets.join(", ")
        );
        let answers = action::run_on(
            &targets,
            &self.fleet.transport,
            self.fleet.jobs,
            &args,
            |_| {},
        );
        let results: Vec<action::Result> = answers
            .iter()
            .map(|(m, a)| action::Result::of(m, a))
            .collect();
        for r in &results {
            eprintln!(
                "provision fleet serve: {} {service} on {}: {}{}",
                change.verb(),
                r.machine,
                if r.ok { "ok: " } else { "FAILED: " },
                crate::util::escape_line(&r.message)
            );
        }
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if wants_json {
            return Reply::json(
                200,
                &json!({
                    "action": change.verb(),
                    "service": service,
                    "by": by,
                    "ok": results.iter().all(|r| r.ok),
                    "results": results,
                }),
            );
        }
        let body = pages::results(change.verb(), &service, &results);
        Reply::html(
            200,
            self.frame_page(&format!("{} {service}", change.verb()), &body, None),
        )
    }

    /// The change, service and machines a form asks for, or why not.
    fn request(
        &self,
        verb: &str,
        form: &BTreeMap<String, Vec<String>>,
    ) -> Result<(Change, String, Vec<String>), String> {
        let one = |k: &str| {
            form.get(k)
                .and_then(|v| v.first())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let change = match verb {
            "freeze" => Change::Freeze {
                reason: one("reason"),
                until: one("until"),
            },
            "unfreeze" => Change::Unfreeze,
            "forward" => Change::Forward,
            "rollback" => Change::Rollback {
                rev: one("rev").ok_or("rollback needs `rev`: the commit to go back to")?,
            },
            other => {
                return Err(format!(
                    "no action {other:?}: use freeze, unfreeze, rollback or forward"
                ))
            }
        };
        let service = one("service").ok_or("the form has no `service`")?;
        let runs = action::running(&self.fleet.config, &self.fleet.machines, &service);
        if runs.is_empty() {
            return Err(format!("no machine of the config runs {service:?}"));
        }
        let mut targets: Vec<String> = Vec::new();
        for m in form
            .get("machines")
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            if !runs.iter().any(|r| r == m) {
                return Err(format!("{m} does not run {service}"));
            }
            if !targets.iter().any(|t| t == m) {
                targets.push(m.to_string());
            }
        }
        if targets.is_empty() {
            return Err("choose at least one machine (`machines`)".to_string());
        }
        Ok((change, service, targets))
    }
}

fn history_args(service: &str) -> Vec<String> {
    ["history", service, "--json", "-n", HISTORY]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Puts a history or diff answer into `d`.
fn fill(d: &mut pages::Details, machine: &str, args: &[String], answer: &Answer) {
    match (args.first().map(String::as_str), answer) {
        (
            Some("history"),
            Answer::Ran {
                code: 0, stdout, ..
            },
        ) => match serde_json::from_str::<Vec<HistoryEntry>>(stdout) {
            Ok(h) => {
                d.history = h;
                d.history_from = Ok(machine.to_string());
            }
            Err(e) => d.history_from = Err(format!("{machine} answered no history: {e}")),
        },
        (Some("history"), a) => {
            d.history_from = Err(a.problem().unwrap_or_default());
        }
        (Some("diff"), Answer::Ran { stdout, .. }) => {
            d.diffs.push((machine.to_string(), stdout.clone()));
        }
        _ => {}
    }
}

/// `application/x-www-form-urlencoded` into fields (a field may repeat).
fn parse_form(body: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(&k.replace('+', " ")))
            .or_default()
            .push(percent_decode(&v.replace('+', " ")));
    }
    out
}

/// `%XX` escapes decoded; invalid ones kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_decoded_with_repeated_fields() {
        let f = parse_form("service=web&machines=a%2Cb&machines=c&reason=not+today%21&token=");
        assert_eq!(f["service"], ["web"]);
        assert_eq!(f["machines"], ["a,b", "c"]);
        assert_eq!(f["reason"], ["not today!"]);
        assert_eq!(f["token"], [""]);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
