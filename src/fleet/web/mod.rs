//! `provision fleet serve`: the fleet on a web page, and the same
//! out-of-band actions as `provision fleet` from the browser.
//!
//! A small synchronous server (one thread per request, a bounded number at
//! once): the page is a view of `fleet status` (refreshed when older than
//! `--refresh`), and every action is the same SSH fan-out the command line
//! uses. Forms carry a token made at start (a POST without it is refused),
//! and beyond loopback every request needs a user or token of the auth
//! file.

pub mod auth;
pub mod html;
pub mod pages;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use crate::config::Config;
use crate::fleet::action::{self, Change};
use crate::fleet::ssh::{Answer, Transport};
use crate::fleet::status::{self, Document};
use crate::host::prometheus::Api;
use crate::util::now_unix;
use html::Frame;

/// Requests handled at once; one more gets 503 (busy).
const MAX_BUSY: usize = 16;
/// The largest form a POST may send.
const MAX_BODY: u64 = 64 << 10;
/// Commits a page's history shows.
const HISTORY: &str = "15";

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
    /// How old the shown data may get before it is collected again.
    pub refresh: Duration,
    /// Read the status from Prometheus instead of SSH.
    pub prometheus: Option<Api>,
}

/// The status document and when it was collected.
struct Snapshot {
    doc: Arc<Document>,
    taken: Instant,
}

struct App {
    fleet: Fleet,
    opts: Options,
    token: String,
    snapshot: Mutex<Option<Snapshot>>,
}

/// A response: status, content type, body, extra headers.
struct Reply {
    code: u16,
    kind: &'static str,
    body: String,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn html(code: u16, body: String) -> Reply {
        Reply {
            code,
            kind: "text/html; charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }

    fn json(code: u16, v: &Value) -> Reply {
        Reply {
            code,
            kind: "application/json",
            body: format!("{v:#}\n"),
            headers: Vec::new(),
        }
    }

    fn text(code: u16, body: impl Into<String>) -> Reply {
        Reply {
            code,
            kind: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// Serves until killed.
pub fn serve(fleet: Fleet, opts: Options) -> Result<()> {
    let listen = opts.listen;
    let server =
        tiny_http::Server::http(listen).map_err(|e| anyhow!("listening on {listen}: {e}"))?;
    let app = Arc::new(App {
        fleet,
        opts,
        token: new_token()?,
        snapshot: Mutex::new(None),
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
    let busy = Arc::new(AtomicUsize::new(0));
    for request in server.incoming_requests() {
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_BUSY {
            busy.fetch_sub(1, Ordering::SeqCst);
            let _ = request.respond(response(Reply::text(503, "busy: try again\n")));
            continue;
        }
        let (app, busy) = (Arc::clone(&app), Arc::clone(&busy));
        std::thread::spawn(move || {
            app.handle(request);
            busy.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// A random token for the forms, from the kernel's generator.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the form token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn response(r: Reply) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut resp = tiny_http::Response::from_data(r.body.into_bytes()).with_status_code(r.code);
    let mut headers = vec![
        ("Content-Type", r.kind.to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("X-Frame-Options", "DENY".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
    ];
    headers.extend(r.headers);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    resp
}

fn header<'a>(req: &'a tiny_http::Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

impl App {
    fn handle(&self, mut req: tiny_http::Request) {
        let reply = self.route(&mut req);
        let _ = req.respond(response(reply));
    }

    fn route(&self, req: &mut tiny_http::Request) -> Reply {
        let user = match &self.opts.users {
            Some(users) => match users.check(header(req, "Authorization")) {
                Some(u) => u,
                None => {
                    let mut r =
                        Reply::text(401, "who are you? (a user or token of the auth file)\n");
                    r.headers.push((
                        "WWW-Authenticate",
                        "Basic realm=\"provision fleet\", charset=\"UTF-8\"".to_string(),
                    ));
                    return r;
                }
            },
            None => action::operator(),
        };
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let force = query.split('&').any(|kv| kv == "refresh=1");
        let path = percent_decode(path);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (tiny_http::Method::Get, [""]) => self.overview(force),
            (tiny_http::Method::Get, ["api", "v1", "status"]) => {
                let doc = self.doc(force);
                Reply::json(200, &serde_json::to_value(&*doc).unwrap_or(Value::Null))
            }
            (tiny_http::Method::Get, ["machine", name]) => self.machine(name, force),
            (tiny_http::Method::Get, ["service", name]) => self.service(name, force),
            (tiny_http::Method::Post, ["api", "v1", verb]) => {
                let verb = verb.to_string();
                self.act(req, &verb, &user)
            }
            (tiny_http::Method::Get | tiny_http::Method::Head, _) => Reply::html(
                404,
                self.frame_page("not found", "<p>No such page.</p>", None),
            ),
            _ => Reply::text(405, "method not allowed\n"),
        }
    }

    /// The status document, collected again when older than `--refresh`
    /// (or when asked).
    fn doc(&self, force: bool) -> Arc<Document> {
        let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = snap
            .as_ref()
            .filter(|s| !force && s.taken.elapsed() < self.opts.refresh)
        {
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

    fn overview(&self, force: bool) -> Reply {
        let doc = self.doc(force);
        Reply::html(
            200,
            self.frame_page("overview", &pages::overview(&doc), Some(&doc)),
        )
    }

    /// Runs `args` on each of `calls` machines at once.
    fn ask(&self, calls: Vec<(String, Vec<String>)>) -> Vec<(String, Answer)> {
        crate::fleet::fanout::each(
            &calls,
            self.fleet.jobs,
            |(m, args)| (m.clone(), self.fleet.transport.call(m, args)),
            |_| {},
        )
    }

    fn machine(&self, name: &str, force: bool) -> Reply {
        let doc = self.doc(force);
        let Some(m) = doc.machines.iter().find(|m| m.machine == name) else {
            return Reply::html(
                404,
                self.frame_page(name, "<p>No such machine in the config.</p>", None),
            );
        };
        let services: Vec<Value> = m
            .status
            .as_ref()
            .and_then(|d| d["services"].as_array().cloned())
            .unwrap_or_default();
        let mut calls = Vec::new();
        for s in &services {
            let svc = s["name"].as_str().unwrap_or("").to_string();
            calls.push((m.machine.clone(), history_args(&svc)));
            if s["drift"]["count"].as_u64().is_some_and(|n| n > 0) {
                calls.push((m.machine.clone(), vec!["diff".to_string(), svc]));
            }
        }
        let answers = self.ask(calls.clone());
        let details = services
            .iter()
            .map(|s| {
                let svc = s["name"].as_str().unwrap_or("").to_string();
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
            let drifted = status::service_of(m, name)
                .is_some_and(|s| s["drift"]["count"].as_u64().is_some_and(|n| n > 0));
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
    fn act(&self, req: &mut tiny_http::Request, verb: &str, user: &str) -> Reply {
        let wants_json = header(req, "Accept").is_some_and(|a| a.contains("application/json"))
            || header(req, "X-Provision-Token").is_some();
        let header_token = header(req, "X-Provision-Token").map(str::to_string);
        let peer = req.remote_addr().map_or("?".to_string(), |a| a.to_string());
        let mut body = String::new();
        if req
            .as_reader()
            .take(MAX_BODY)
            .read_to_string(&mut body)
            .is_err()
        {
            return Reply::text(400, "the form is not UTF-8 text\n");
        }
        let form = parse_form(&body);
        let token = header_token.or_else(|| form.get("token").and_then(|v| v.first().cloned()));
        if !token.is_some_and(|t| same(&t, &self.token)) {
            eprintln!("provision fleet serve: refused {verb} from {user} at {peer}: missing or wrong token");
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
            args.join(" "),
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
                r.message
            );
        }
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
        ) => match serde_json::from_str::<Vec<Value>>(stdout) {
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

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
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

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
