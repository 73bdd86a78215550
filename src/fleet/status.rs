//! The fleet's status: every machine's own `status --json` document, side
//! by side, and per service how far the rollout of its head has come.

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::fleet::ssh::{Answer, Transport};

/// Version of the `fleet status --json` document.
pub const SCHEMA: u32 = 1;

/// The `fleet status --json` document.
#[derive(Debug, Serialize)]
pub struct Document {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Unix time it was made.
    pub time: u64,
    /// One entry per machine asked, in config order.
    pub machines: Vec<MachineStatus>,
    /// One entry per service of those machines, in config order.
    pub services: Vec<Rollout>,
}

/// One machine.
#[derive(Debug, Serialize)]
pub struct MachineStatus {
    /// Its name in the config.
    pub machine: String,
    /// Whether ssh reached it and provision answered with a document.
    pub reachable: bool,
    /// Why not, or what went wrong there.
    pub error: Option<String>,
    /// That machine's `status --json` document.
    pub status: Option<Value>,
}

/// How far one service's head has come across the fleet.
#[derive(Debug, Serialize, Default)]
pub struct Rollout {
    /// The service's name.
    pub name: String,
    /// The upstream head most machines report (40 hex digits).
    pub head: Option<String>,
    /// Machines the config runs it on (of those asked).
    pub machines: usize,
    /// Deploying the head.
    pub at_head: usize,
    /// Waiting for their turn in a staged rollout of the head.
    pub waiting: usize,
    /// When the first of the waiting machines adopts it (Unix time).
    pub waiting_from: Option<u64>,
    /// When the last of them does.
    pub waiting_until: Option<u64>,
    /// Refused the head (a check or the service rejected it).
    pub rejected: usize,
    /// Following, but not at the head yet (nor waiting or rejected).
    pub behind: usize,
    /// Frozen or pinned away from the head.
    pub frozen: usize,
    /// Whose last pass failed.
    pub failing: usize,
    /// Not reached.
    pub unreachable: usize,
}

/// Every machine's answer to `status --json [NAMES]` over SSH, `jobs` at
/// a time; `done` is told how many have answered.
pub fn ask(
    machines: &[String],
    transport: &Transport,
    jobs: usize,
    names: &[String],
    done: impl Fn(usize) + Sync,
) -> Vec<(String, Answer)> {
    let mut args = vec!["status".to_string(), "--json".to_string()];
    args.extend(names.iter().cloned());
    crate::fleet::action::run_on(machines, transport, jobs, &args, done)
}

/// Builds the document from each machine's answer to `status --json`.
pub fn collect(config: &Config, answers: Vec<(String, Answer)>, now: u64) -> Document {
    let machines: Vec<MachineStatus> = answers.into_iter().map(machine_status).collect();
    let mut names: Vec<&str> = Vec::new();
    for s in &config.services {
        if machines.iter().any(|m| m.machine == s.machine) && !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let services = names
        .into_iter()
        .map(|name| rollout(config, &machines, name))
        .collect();
    Document {
        schema: SCHEMA,
        time: now,
        machines,
        services,
    }
}

fn machine_status((machine, answer): (String, Answer)) -> MachineStatus {
    match answer {
        Answer::Unreachable(why) => MachineStatus {
            machine,
            reachable: false,
            error: Some(why),
            status: None,
        },
        Answer::Ran { stdout, stderr, .. } => match serde_json::from_str::<Value>(&stdout) {
            Ok(doc) => MachineStatus {
                machine,
                reachable: true,
                error: None,
                status: Some(doc),
            },
            Err(_) => MachineStatus {
                machine,
                reachable: false,
                error: Some(format!(
                    "no status document: {}",
                    stderr.lines().last().unwrap_or("empty answer")
                )),
                status: None,
            },
        },
    }
}

/// The entry of service `name` in a machine's document.
pub fn service_of<'a>(m: &'a MachineStatus, name: &str) -> Option<&'a Value> {
    m.status.as_ref()?["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

fn rollout(config: &Config, machines: &[MachineStatus], name: &str) -> Rollout {
    let runs: Vec<&MachineStatus> = machines
        .iter()
        .filter(|m| {
            config
                .services
                .iter()
                .any(|s| s.name == name && s.machine == m.machine)
        })
        .collect();
    let mut heads: Vec<(String, usize)> = Vec::new();
    for m in &runs {
        if let Some(h) = service_of(m, name).and_then(|s| s["upstream"]["commit"].as_str()) {
            match heads.iter_mut().find(|(c, _)| c == h) {
                Some(e) => e.1 += 1,
                None => heads.push((h.to_string(), 1)),
            }
        }
    }
    let head = heads.iter().max_by_key(|(_, n)| *n).map(|(c, _)| c.clone());
    let mut r = Rollout {
        name: name.to_string(),
        head: head.clone(),
        machines: runs.len(),
        ..Rollout::default()
    };
    for m in runs {
        let Some(s) = service_of(m, name) else {
            r.unreachable += 1;
            continue;
        };
        if s["last_pass"]["ok"] == false {
            r.failing += 1;
        }
        let deployed = s["deployed"]["commit"].as_str();
        let held = matches!(s["state"].as_str(), Some("frozen" | "pinned"));
        let wait_at = s["rollout"]["at"].as_u64();
        match (deployed, &head) {
            (Some(d), Some(h)) if d == h => r.at_head += 1,
            _ if held => r.frozen += 1,
            _ if s["rejected"].is_object() => r.rejected += 1,
            _ if wait_at.is_some() => {
                r.waiting += 1;
                r.waiting_from = r.waiting_from.min(wait_at).or(wait_at);
                r.waiting_until = r.waiting_until.max(wait_at);
            }
            _ => r.behind += 1,
        }
    }
    r
}
