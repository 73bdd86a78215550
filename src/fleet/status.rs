//! The fleet's status: every machine's own `status --json` document, side
//! by side, and per service how far the rollout of its head has come.

use crate::config::Config;
use crate::fleet::ssh::{Answer, Transport};
pub use crate::model::fleet::{Document, MachineStatus, Rollout, SCHEMA};
use crate::model::status::{self as machine, ServiceStatus, Tracking};

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
    // Sets, not scans: a fleet of 10,000 machines would otherwise compare
    // every machine with every config entry.
    let answered: std::collections::HashSet<&str> =
        machines.iter().map(|m| m.machine.as_str()).collect();
    let mut names: Vec<&str> = Vec::new();
    for s in &config.services {
        if answered.contains(s.machine.as_str()) && !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let runs: std::collections::HashSet<(&str, &str)> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.machine.as_str()))
        .collect();
    let services = names
        .into_iter()
        .map(|name| rollout(&runs, &machines, name))
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
            doc: None,
        },
        Answer::Known(doc) => MachineStatus {
            machine,
            reachable: true,
            error: None,
            status: None,
            doc: Some(*doc),
        },
        Answer::Ran { stdout, stderr, .. } => {
            match serde_json::from_str::<Box<serde_json::value::RawValue>>(stdout.trim()) {
                Ok(raw) => {
                    let (doc, error) = match serde_json::from_str::<machine::Document>(raw.get()) {
                        Ok(d) => (Some(d), None),
                        Err(e) => (
                            None,
                            Some(format!("its status document does not read: {e}")),
                        ),
                    };
                    MachineStatus {
                        machine,
                        reachable: true,
                        error,
                        status: Some(raw),
                        doc,
                    }
                }
                Err(_) => MachineStatus {
                    machine,
                    reachable: false,
                    error: Some(format!(
                        "no status document: {}",
                        stderr.lines().last().unwrap_or("empty answer")
                    )),
                    status: None,
                    doc: None,
                },
            }
        }
    }
}

/// The entry of service `name` in a machine's typed document.
pub fn service_in<'a>(m: &'a MachineStatus, name: &str) -> Option<&'a ServiceStatus> {
    m.service(name)
}

/// The rollout line of service `name`, over the machines that run it
/// (`runs`: every (service, machine) of the config).
fn rollout(
    runs: &std::collections::HashSet<(&str, &str)>,
    machines: &[MachineStatus],
    name: &str,
) -> Rollout {
    let runs: Vec<&MachineStatus> = machines
        .iter()
        .filter(|m| runs.contains(&(name, m.machine.as_str())))
        .collect();
    let mut heads: Vec<(String, usize)> = Vec::new();
    for m in &runs {
        let upstream = service_in(m, name).and_then(|s| s.upstream.as_ref());
        if let Some(h) = upstream.map(|u| u.commit.to_string()) {
            match heads.iter_mut().find(|(c, _)| *c == h) {
                Some(e) => e.1 += 1,
                None => heads.push((h, 1)),
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
        let Some(s) = service_in(m, name) else {
            r.unreachable += 1;
            continue;
        };
        if s.last_pass.as_ref().is_some_and(|p| !p.ok) {
            r.failing += 1;
        }
        let deployed = s.deployed.as_ref().map(|d| d.commit.to_string());
        let held = matches!(s.state, Tracking::Frozen | Tracking::Pinned);
        let wait_at = s.rollout.as_ref().map(|w| w.at);
        match (deployed.as_deref(), head.as_deref()) {
            (Some(d), Some(h)) if d == h => r.at_head += 1,
            _ if held => r.frozen += 1,
            _ if s.rejected.is_some() => r.rejected += 1,
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";
    const OLD: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn answer(doc: &str) -> Answer {
        Answer::Ran {
            code: 0,
            stdout: doc.to_string(),
            stderr: String::new(),
        }
    }

    /// The rollout line counts from typed documents: an older machine's
    /// (few fields) at the head, a machine behind, one whose document does
    /// not read (named, and counted as not reached), and one not reached.
    #[test]
    fn the_rollout_counts_typed_documents_of_every_age() {
        let config = Config::parse(
            std::path::Path::new("/etc/provision/config.toml"),
            "[[services]]\nmachine = [\"a\", \"b\", \"c\", \"d\"]\nservice = \"web\"\n\
             upstream = \"git://127.0.0.1/r\"\ndirs = [{ local = \"/etc/web\", link = \"web\" }]\n",
        )
        .expect("config");
        let doc = |deployed: &str| {
            format!(
                r#"{{"schema": 1, "machine": "m", "time": 1, "services": [{{"name": "web",
                   "state": "following", "drift": {{"count": 0}},
                   "deployed": {{"commit": "{deployed}"}}, "upstream": {{"commit": "{HEAD}"}}}}]}}"#
            )
        };
        let answers = vec![
            ("a".to_string(), answer(&doc(HEAD))),
            ("b".to_string(), answer(&doc(OLD))),
            ("c".to_string(), answer(r#"{"schema": 1, "services": 3}"#)),
            ("d".to_string(), Answer::Unreachable("ssh: no route".into())),
        ];
        let d = collect(&config, answers, 2);
        let r = &d.services[0];
        assert_eq!(r.head.as_deref(), Some(HEAD));
        assert_eq!(
            (r.machines, r.at_head, r.behind, r.unreachable),
            (4, 1, 1, 2),
            "{r:?}"
        );
        let c = &d.machines[2];
        assert!(c.reachable && c.doc.is_none(), "{c:?}");
        assert!(
            c.error
                .as_deref()
                .is_some_and(|e| e.contains("does not read")),
            "{c:?}"
        );
    }
}
