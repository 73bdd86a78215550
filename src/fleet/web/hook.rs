//! `POST /api/v1/hook`: the fleet's one push receiver. A verified push
//! ([`crate::fleet::push`]) is answered at once (202, with what it
//! triggers) and its `sync SERVICE` calls run behind it, over the fleet's
//! ssh; pushes that arrive while a fan-out runs are coalesced into the
//! next one, so a burst of pushes costs each machine one pass, not one
//! per push. The last pushes and what each triggered are kept for the
//! page and logged on stderr.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::http::{Reply, Request};
use crate::config::Config;
use crate::fleet::push::{self, Refused};
use crate::fleet::ssh::Transport;
use crate::util::{escape_line, now_unix};

/// Pushes kept for the page.
const KEPT: usize = 20;

/// What one push triggered.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When it arrived (Unix time).
    pub time: u64,
    /// The forge that sent it.
    pub forge: &'static str,
    /// The repository, as the payload names it.
    pub repository: String,
    /// The branch pushed to.
    pub branch: String,
    /// `MACHINE: SERVICE` of each pass it asked for.
    pub triggered: Vec<String>,
    /// Each pass's outcome once run (`MACHINE: SERVICE: ok` or the error).
    pub results: Vec<String>,
}

/// The receiver's state.
pub struct Hook {
    secret: Zeroizing<Vec<u8>>,
    transport: Transport,
    jobs: usize,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Passes asked for and not started yet, with the event each came
    /// from (the newest).
    pending: BTreeSet<(String, String)>,
    /// A fan-out runs (and will take `pending` when done).
    running: bool,
    events: VecDeque<Event>,
}

impl Hook {
    /// A receiver whose pushes are signed with `secret`.
    pub fn new(secret: Zeroizing<Vec<u8>>, transport: Transport, jobs: usize) -> Hook {
        Hook {
            secret,
            transport,
            jobs,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// The last pushes, newest first.
    pub fn events(&self) -> Vec<Event> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.events.iter().rev().cloned().collect()
    }

    /// Answers one hook request.
    pub fn receive(&self, req: &Request, config: &Config, machines: &[String]) -> Reply {
        let p = match push::receive(&self.secret, |h| req.header(h), &req.body) {
            Ok(p) => p,
            Err(Refused::Unauthenticated(why)) => {
                eprintln!(
                    "provision fleet serve: refused a hook from {}: {why}",
                    req.peer
                );
                return Reply::text(401, "the push is not signed with this server's secret\n");
            }
            Err(Refused::NotAPush(what)) => {
                return Reply::json(
                    202,
                    &json!({"ignored": escape_line(&what), "triggered": []}),
                )
            }
            Err(Refused::Malformed(why)) => {
                return Reply::text(400, format!("{}\n", escape_line(&why)))
            }
        };
        let targets = push::targets(config, machines, &p);
        let event = Event {
            time: now_unix(),
            forge: p.forge.as_str(),
            repository: escape_line(&p.name),
            branch: escape_line(&p.branch),
            triggered: targets.iter().map(|(m, s)| format!("{m}: {s}")).collect(),
            results: Vec::new(),
        };
        eprintln!(
            "provision fleet serve: {} push to {} {}: {}",
            event.forge,
            event.repository,
            event.branch,
            if targets.is_empty() {
                "no service of the fleet follows it (or none of its paths changed)".to_string()
            } else {
                format!("sync on {}", event.triggered.join(", "))
            }
        );
        let reply = Reply::json(
            202,
            &json!({"repository": event.repository, "branch": event.branch, "triggered": event.triggered}),
        );
        self.enqueue(event, targets);
        reply
    }

    /// Adds `targets` to the pending passes and starts a fan-out unless
    /// one runs (which takes them when it ends).
    fn enqueue(&self, event: Event, targets: Vec<(String, String)>) {
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.events.len() == KEPT {
                s.events.pop_front();
            }
            s.events.push_back(event);
            s.pending.extend(targets);
            let start = !s.running && !s.pending.is_empty();
            s.running |= start;
            start
        };
        if start {
            let (state, transport, jobs) =
                (Arc::clone(&self.state), self.transport.clone(), self.jobs);
            std::thread::spawn(move || run(&state, &transport, jobs));
        }
    }
}

/// Runs the pending passes, then those that arrived meanwhile, until none
/// is left.
fn run(state: &Mutex<State>, transport: &Transport, jobs: usize) {
    loop {
        let batch: Vec<(String, String)> = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.pending.is_empty() {
                s.running = false;
                return;
            }
            std::mem::take(&mut s.pending).into_iter().collect()
        };
        let answers = crate::fleet::fanout::each(
            &batch,
            jobs,
            |(m, svc)| {
                let answer = transport.call(m, &["sync".to_string(), svc.clone()]);
                let outcome = answer.problem().unwrap_or_else(|| "ok".to_string());
                format!("{m}: {svc}: {}", escape_line(&outcome))
            },
            |_| {},
        );
        for a in &answers {
            eprintln!("provision fleet serve: hook: {a}");
        }
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        for e in s.events.iter_mut() {
            for t in &e.triggered.clone() {
                let prefix = format!("{t}: ");
                if e.results.iter().any(|r| r.starts_with(&prefix)) {
                    continue;
                }
                if let Some(a) = answers.iter().find(|a| a.starts_with(&prefix)) {
                    e.results.push(a.clone());
                }
            }
        }
    }
}
