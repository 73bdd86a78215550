//! The changes an operator makes to machines from afar (freeze, unfreeze,
//! rollback, forward), as the words each machine's own provision runs, and
//! what each machine answered. Shared by `provision fleet VERB` and the
//! fleet's web page, so both do exactly the same.

use serde::Serialize;

use crate::config::Config;
use crate::fleet::fanout;
use crate::fleet::ssh::{Answer, Transport};

/// One change to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Stay on the deployed commit.
    Freeze {
        /// The operator's words.
        reason: Option<String>,
        /// When the freeze ends by itself (`--until`).
        until: Option<String>,
    },
    /// Follow upstream again.
    Unfreeze,
    /// Deploy an older commit and stay there.
    Rollback {
        /// `HEAD~N`, a hash or a tag.
        rev: String,
    },
    /// End a hold or wait and deploy the head now.
    Forward,
}

impl Change {
    /// The verb, as the command line and the API name it.
    pub fn verb(&self) -> &'static str {
        match self {
            Change::Freeze { .. } => "freeze",
            Change::Unfreeze => "unfreeze",
            Change::Rollback { .. } => "rollback",
            Change::Forward => "forward",
        }
    }

    /// The words run on each machine; `by` is recorded as who froze.
    pub fn remote_args(&self, service: &str, by: &str) -> Vec<String> {
        let mut a = vec![self.verb().to_string(), service.to_string()];
        match self {
            Change::Freeze { reason, until } => {
                if let Some(r) = reason {
                    a.extend(["--reason".to_string(), r.clone()]);
                }
                if let Some(u) = until {
                    a.extend(["--until".to_string(), u.clone()]);
                }
                a.extend(["--by".to_string(), by.to_string()]);
            }
            Change::Rollback { rev } => a.push(rev.clone()),
            Change::Unfreeze | Change::Forward => {}
        }
        a
    }
}

/// The machines among `machines` that run `service`, in their order.
pub fn running(config: &Config, machines: &[String], service: &str) -> Vec<String> {
    machines
        .iter()
        .filter(|m| {
            config
                .services
                .iter()
                .any(|s| s.name == service && &s.machine == *m)
        })
        .cloned()
        .collect()
}

/// Runs `args` on every machine of `targets`, `jobs` at a time, keeping
/// their order; `done` is told how many have answered.
pub fn run_on(
    targets: &[String],
    transport: &Transport,
    jobs: usize,
    args: &[String],
    done: impl Fn(usize) + Sync,
) -> Vec<(String, Answer)> {
    fanout::each(
        targets,
        jobs,
        |m| (m.clone(), transport.call(m, args)),
        done,
    )
}

/// One machine's result, as a report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Result {
    /// The machine.
    pub machine: String,
    /// Whether provision ran there and succeeded.
    pub ok: bool,
    /// Whether ssh reached it.
    pub reachable: bool,
    /// Its first line on success, else why not.
    pub message: String,
}

impl Result {
    /// From a machine's answer.
    pub fn of(machine: &str, answer: &Answer) -> Result {
        let first = |s: &str| {
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string()
        };
        Result {
            machine: machine.to_string(),
            ok: answer.problem().is_none(),
            reachable: !matches!(answer, Answer::Unreachable(_)),
            message: match (answer.problem(), answer) {
                (None, Answer::Ran { stdout, .. }) => first(stdout),
                (None, Answer::Known(_)) => String::new(),
                (Some(p), _) => p,
                (None, Answer::Unreachable(why)) => why.clone(),
            },
        }
    }
}

/// The local operator as holds record them: `USER@HOST`.
pub fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "operator".to_string());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    format!("{user}@{host}")
}
