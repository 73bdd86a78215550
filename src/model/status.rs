//! The `status --json` document as data: what a machine says of its
//! services, and what the fleet reads from each machine. Serialized by
//! `provision status`, deserialized by `provision fleet` and its page; a
//! field a newer machine adds is ignored by an older reader, and a list an
//! older machine leaves out reads as empty.
//!
//! The JSON form is an interface: its `schema` number changes whenever a
//! field is removed or changes meaning (adding fields does not).

use serde::{Deserialize, Serialize};

use crate::config::DriftPolicy;
use crate::model::commit::CommitId;
use crate::model::record::{Change, HoldKind, Rejected};

/// Version of the `status --json` document.
pub const SCHEMA: u32 = 1;

/// The whole `status --json` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    /// [`SCHEMA`]: changes when a field is removed or changes meaning.
    pub schema: u32,
    /// The machine name the services were selected by.
    pub machine: String,
    /// Unix time the report was made.
    pub time: u64,
    /// One entry per selected service, in config order.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
}

/// One service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its systemd unit; empty when the source does not say (a document
    /// the fleet makes from Prometheus).
    #[serde(default)]
    pub unit: String,
    /// `following`, `frozen` or `pinned`; `unknown` when the state file
    /// cannot be read.
    pub state: Tracking,
    /// The freeze or pin, if any.
    pub hold: Option<HoldStatus>,
    /// The deployed commit and when it was deployed.
    pub deployed: Option<CommitAt>,
    /// The branch head as of the last successful fetch.
    pub upstream: Option<CommitAt>,
    /// The upstream URL that fetch used: the first of `upstream`, or a
    /// mirror after it when those before failed; `None` before a fetch.
    pub upstream_url: Option<String>,
    /// Deployed equals upstream; `None` until both are known.
    pub in_sync: Option<bool>,
    /// Local changes to the deployed files.
    pub drift: DriftStatus,
    /// Each mount point and what it shows.
    #[serde(default)]
    pub mounts: Vec<MountStatus>,
    /// Every mount shows the deployed release; `None` when nothing is deployed.
    pub mounts_ok: Option<bool>,
    /// The unit's ActiveState; `None` when systemd cannot be asked.
    pub unit_state: Option<String>,
    /// The last pass, if one ran.
    pub last_pass: Option<PassStatus>,
    /// The commit a check or the service refused, while it is the upstream
    /// head; `None` otherwise.
    pub rejected: Option<Rejected>,
    /// The head this machine waits to adopt in a staged rollout; `None`
    /// when not waiting.
    pub rollout: Option<RolloutStatus>,
    /// The change window the head waits for (`windows`), while it does.
    #[serde(default)]
    pub window: Option<WindowStatus>,
    /// The last signature check, when signatures are checked; `None` else.
    pub signature: Option<crate::model::signature::Verdict>,
    /// While passes back off from an upstream whose fetch failed: until
    /// when, how many failed in a row, and the last reason; `None` else.
    pub backoff: Option<crate::model::record::Backoff>,
    /// Seconds upstream has had a commit that is not deployed: 0 in sync,
    /// `None` until both are known.
    pub behind_seconds: Option<u64>,
    /// Why the state file could not be read.
    pub state_error: Option<String>,
}

/// A freeze or pin as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldStatus {
    /// `frozen` or `pinned`.
    pub kind: HoldKind,
    /// The operator's words.
    pub reason: String,
    /// Unix time it began.
    pub since: u64,
    /// Unix time it ends by itself; `None` until lifted.
    pub until: Option<u64>,
    /// Who set it.
    pub by: Option<String>,
}

/// A wait for a change window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowStatus {
    /// The head waiting.
    pub commit: CommitId,
    /// Unix time the next window opens.
    pub next_open: u64,
}

/// A staged rollout's wait, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The head waited for.
    pub commit: CommitId,
    /// Unix time this machine's turn comes.
    pub at: u64,
    /// Its place in the rollout, in [0, 1) (0: a canary); 0 when the
    /// source does not say (Prometheus).
    #[serde(default)]
    pub position: f64,
    /// Unix time this machine first saw the head; 0 when the source does
    /// not say (Prometheus).
    #[serde(default)]
    pub seen: u64,
    /// Why the gate was closed at the last pass, while it is.
    pub gate: Option<String>,
}

/// A commit and a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitAt {
    /// The commit, as 40 hex digits.
    pub commit: CommitId,
    /// Deployment time, or fetch time for upstream; 0 when the source
    /// does not say (Prometheus).
    #[serde(default)]
    pub time: u64,
    /// The first line of its message, when the mirror has the commit.
    pub subject: Option<String>,
    /// Its committer time (Unix seconds), when the mirror has the commit.
    pub committed: Option<i64>,
}

/// Local changes to the deployed files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftStatus {
    /// `restore` or `warn` (`restore`, the default, when the source does
    /// not say).
    #[serde(default)]
    pub policy: DriftPolicy,
    /// Changed paths; `None` when they could not be determined.
    pub count: Option<usize>,
    /// Each changed path.
    #[serde(default)]
    pub files: Vec<DriftedFile>,
    /// Why it could not be checked, if so.
    pub error: Option<String>,
}

/// One changed path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftedFile {
    /// Where the file appears on this machine.
    pub path: String,
    /// `modified`, `added` or `deleted`.
    pub change: Change,
}

/// One mount point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountStatus {
    /// The mount point.
    pub local: String,
    /// `ok`, `missing`, `other` or `error`.
    pub state: Shows,
    /// Why it could not be checked, if so.
    pub error: Option<String>,
}

/// The last pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassStatus {
    /// Unix time it ended.
    pub time: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it could not be checked, if so.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: Option<u64>,
    /// It failed because a secret could not be decrypted (`error` names
    /// the file and the identity).
    #[serde(default)]
    pub undecryptable: bool,
}

/// Whether a service follows upstream, as the JSON and the table say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracking {
    /// Deploys each new upstream head.
    Following,
    /// `provision freeze`: stays on what is deployed.
    Frozen,
    /// `provision rollback`: stays on the commit it chose.
    Pinned,
    /// The state file cannot be read.
    Unknown,
    /// Not in this machine's config any more; its mounts stay until
    /// `provision forget`.
    Orphaned,
}

impl Tracking {
    /// The word.
    pub fn as_str(self) -> &'static str {
        match self {
            Tracking::Following => "following",
            Tracking::Frozen => "frozen",
            Tracking::Pinned => "pinned",
            Tracking::Unknown => "unknown",
            Tracking::Orphaned => "orphaned",
        }
    }
}

/// What a mount point shows, as the JSON says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shows {
    /// The deployed release, with the configured read-only flag.
    Ok,
    /// Nothing is mounted there.
    Missing,
    /// Something else.
    Other,
    /// It could not be checked (see `error`).
    Error,
}

impl Shows {
    /// The word.
    pub fn as_str(self) -> &'static str {
        match self {
            Shows::Ok => "ok",
            Shows::Missing => "missing",
            Shows::Other => "other",
            Shows::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an older machine may send: no mounts, no signature, no
    /// rollout and none of the later fields. It still reads, with the
    /// lists empty and the rest unknown.
    #[test]
    fn an_older_machines_document_reads_with_what_it_lacks_empty() {
        let text = r#"{"schema": 1, "machine": "web1", "time": 1795534231,
            "services": [{"name": "nginx", "unit": "nginx.service", "state": "following",
              "deployed": {"commit": "0123456789abcdef0123456789abcdef01234567", "time": 1795500000},
              "drift": {"policy": "restore", "count": 0},
              "last_pass": {"time": 1795534200, "ok": true}}]}"#;
        let doc: Document = serde_json::from_str(text).expect("an older document");
        let s = &doc.services[0];
        assert_eq!(s.state, Tracking::Following);
        assert!(s.mounts.is_empty() && s.drift.files.is_empty());
        assert_eq!(s.deployed.as_ref().map(|d| d.subject.clone()), Some(None));
        assert!(s.signature.is_none() && s.rollout.is_none() && s.hold.is_none());
        assert_eq!(s.last_pass.as_ref().map(|p| p.ok), Some(true));
    }

    /// A field a newer machine adds is ignored, not an error.
    #[test]
    fn a_newer_machines_extra_fields_are_ignored() {
        let text = r#"{"schema": 1, "machine": "web1", "time": 1, "later": true,
            "services": [{"name": "a", "unit": "a.service", "state": "frozen", "shiny": [1],
              "drift": {"policy": "warn", "count": null, "files": [], "error": "x"}}]}"#;
        let doc: Document = serde_json::from_str(text).expect("a newer document");
        assert_eq!(doc.services[0].state, Tracking::Frozen);
        assert_eq!(doc.services[0].drift.error.as_deref(), Some("x"));
    }
}
