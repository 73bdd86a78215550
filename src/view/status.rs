//! `provision status`: the typed document of every service's status, from
//! the state files and a live look at the host (drift, mounts, the unit). Needs no network and takes no
//! lock: state files are replaced atomically, so reading one mid-pass sees
//! the state before or after it.
//!
//! The JSON form is an interface: its `schema` number changes whenever a
//! field is removed or changes meaning (adding fields does not).

use std::path::Path;

use serde::Serialize;

use crate::config::{DriftPolicy, Service};
use crate::git::mirror::Mirror;
use crate::observe::{self, MountState};
use crate::store::commit::CommitId;
use crate::store::drift::Change;
use crate::store::state::{HoldKind, Rejected, RolloutWait, State, StateDir};
use crate::util::now_unix;

/// Version of the `status --json` document.
pub const SCHEMA: u32 = 1;

/// The whole `status --json` document.
#[derive(Debug, Serialize)]
pub struct Document {
    /// [`SCHEMA`]: changes when a field is removed or changes meaning.
    pub schema: u32,
    /// The machine name the services were selected by.
    pub machine: String,
    /// Unix time the report was made.
    pub time: u64,
    /// One entry per selected service, in config order.
    pub services: Vec<ServiceStatus>,
}

/// One service.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its systemd unit.
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
    /// Deployed equals upstream; `None` until both are known.
    pub in_sync: Option<bool>,
    /// Local changes to the deployed files.
    pub drift: DriftStatus,
    /// Each mount point and what it shows.
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
    /// The last signature check, when signatures are checked; `None` else.
    pub signature: Option<crate::git::signature::Verdict>,
    /// Seconds upstream has had a commit that is not deployed: 0 in sync,
    /// `None` until both are known.
    pub behind_seconds: Option<u64>,
    /// Why the state file could not be read.
    pub state_error: Option<String>,
}

/// A freeze or pin as status shows it.
#[derive(Debug, Serialize)]
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

/// A staged rollout's wait, as status shows it.
#[derive(Debug, Serialize)]
pub struct RolloutStatus {
    /// The head waited for.
    pub commit: CommitId,
    /// Unix time this machine's turn comes.
    pub at: u64,
    /// Its place in the rollout, in [0, 1) (0: a canary).
    pub position: f64,
    /// Unix time this machine first saw the head.
    pub seen: u64,
    /// Why the gate was closed at the last pass, while it is.
    pub gate: Option<String>,
}

impl RolloutStatus {
    fn of(w: &RolloutWait) -> RolloutStatus {
        RolloutStatus {
            commit: w.commit,
            at: w.at,
            position: w.position.fraction(),
            seen: w.seen,
            gate: w.gate.clone(),
        }
    }
}

/// A commit and a time.
#[derive(Debug, Serialize)]
pub struct CommitAt {
    /// The commit, as 40 hex digits.
    pub commit: CommitId,
    /// Deployment time, or fetch time for upstream.
    pub time: u64,
    /// The first line of its message, when the mirror has the commit.
    pub subject: Option<String>,
    /// Its committer time (Unix seconds), when the mirror has the commit.
    pub committed: Option<i64>,
}

impl CommitAt {
    /// `commit` at `time`, described from `repo` when it has the commit.
    fn of(commit: CommitId, time: u64, repo: Option<&git2::Repository>) -> CommitAt {
        let found = repo.and_then(|r| r.find_commit(commit.oid()).ok());
        CommitAt {
            commit,
            time,
            subject: found.as_ref().and_then(|c| c.summary().map(str::to_string)),
            committed: found.as_ref().map(|c| c.time().seconds()),
        }
    }
}

/// Local changes to the deployed files.
#[derive(Debug, Serialize)]
pub struct DriftStatus {
    /// `restore` or `warn`.
    pub policy: DriftPolicy,
    /// Changed paths; `None` when they could not be determined.
    pub count: Option<usize>,
    /// Each changed path.
    pub files: Vec<DriftedFile>,
    /// Why it could not be checked, if so.
    pub error: Option<String>,
}

/// One changed path.
#[derive(Debug, Serialize)]
pub struct DriftedFile {
    /// Where the file appears on this machine.
    pub path: String,
    /// `modified`, `added` or `deleted`.
    pub change: Change,
}

/// One mount point.
#[derive(Debug, Serialize)]
pub struct MountStatus {
    /// The mount point.
    pub local: String,
    /// `ok`, `missing`, `other` or `error`.
    pub state: Shows,
    /// Why it could not be checked, if so.
    pub error: Option<String>,
}

/// The last pass.
#[derive(Debug, Serialize)]
pub struct PassStatus {
    /// Unix time it ended.
    pub time: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it could not be checked, if so.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: Option<u64>,
}

/// Whether a service follows upstream, as the JSON and the table say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    fn of(m: &MountState) -> Shows {
        match m {
            MountState::Ok => Shows::Ok,
            MountState::Missing => Shows::Missing,
            MountState::Other => Shows::Other,
            MountState::Error(_) => Shows::Error,
        }
    }

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

/// Collects the status of `services`.
pub fn collect(services: &[&Service], state_dir: &Path, machine: &str) -> Document {
    Document {
        schema: SCHEMA,
        machine: machine.to_string(),
        time: now_unix(),
        services: services
            .iter()
            .map(|s| service_status(s, state_dir))
            .chain(orphans(services, state_dir))
            .collect(),
    }
}

fn service_status(svc: &Service, state_dir: &Path) -> ServiceStatus {
    let loaded = StateDir::new(state_dir, &svc.name).load();
    let state_error = loaded.as_ref().err().map(|e| format!("{e:#}"));
    let mut state = loaded.unwrap_or_default();
    let now = now_unix();
    state.hold = state.hold_at(now).cloned();
    let repo = Mirror::of(svc, state_dir).open().ok();
    let seen = observe::observe(svc, state_dir, &state, repo.as_ref());
    let drift = match &seen.drift {
        Ok(d) => DriftStatus {
            policy: svc.drift,
            count: Some(d.len()),
            files: d
                .iter()
                .map(|f| DriftedFile {
                    path: crate::store::drift::local_path(&svc.dirs, &f.rel)
                        .display()
                        .to_string(),
                    change: f.change,
                })
                .collect(),
            error: None,
        },
        Err(e) => DriftStatus {
            policy: svc.drift,
            count: None,
            files: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    };
    ServiceStatus {
        name: svc.name.clone(),
        unit: svc.unit.clone(),
        state: match (&state_error, &state.hold) {
            (Some(_), _) => Tracking::Unknown,
            (None, Some(h)) if h.kind == HoldKind::Frozen => Tracking::Frozen,
            (None, Some(_)) => Tracking::Pinned,
            (None, None) => Tracking::Following,
        },
        hold: state.hold.as_ref().map(|h| HoldStatus {
            kind: h.kind,
            reason: h.reason.clone(),
            since: h.since,
            until: h.until,
            by: h.by.clone(),
        }),
        in_sync: in_sync(&state),
        deployed: state
            .deployed
            .as_ref()
            .map(|d| CommitAt::of(d.commit, d.time, repo.as_ref())),
        upstream: state
            .upstream
            .as_ref()
            .map(|u| CommitAt::of(u.commit, u.fetched, repo.as_ref())),
        drift,
        mounts_ok: state.deployed.as_ref().map(|_| seen.mounts_ok()),
        mounts: seen
            .mounts
            .iter()
            .map(|m| mount_status(&m.local, &m.state))
            .collect(),
        unit_state: seen.unit_state,
        last_pass: state.last_pass.as_ref().map(|p| PassStatus {
            time: p.time,
            ok: p.ok,
            error: p.error.clone(),
            duration_ms: p.duration_ms,
        }),
        rejected: state.rejected.clone(),
        rollout: state.rollout_wait(now).map(RolloutStatus::of),
        signature: state.signature.clone().filter(|_| svc.checks_signatures()),
        behind_seconds: behind_seconds(&state, now),
        state_error,
    }
}

fn mount_status(local: &Path, state: &MountState) -> MountStatus {
    MountStatus {
        local: local.display().to_string(),
        state: Shows::of(state),
        error: match state {
            MountState::Error(e) => Some(e.clone()),
            _ => None,
        },
    }
}

/// Every service with a state directory but no place in `services` (the
/// config of this machine), as far as its state file tells.
fn orphans(services: &[&Service], state_dir: &Path) -> Vec<ServiceStatus> {
    let known = crate::store::layout::known_services(state_dir).unwrap_or_default();
    known
        .into_iter()
        .filter(|n| !services.iter().any(|s| &s.name == n))
        .map(|name| orphan_status(state_dir, name))
        .collect()
}

fn orphan_status(state_dir: &Path, name: String) -> ServiceStatus {
    let loaded = StateDir::new(state_dir, &name).load();
    let state_error = loaded.as_ref().err().map(|e| format!("{e:#}"));
    let state = loaded.unwrap_or_default();
    let mounts: Vec<MountStatus> = state
        .mounted
        .iter()
        .map(|r| mount_status(&r.local, &observe::recorded_mount(r)))
        .collect();
    ServiceStatus {
        unit: state.unit.clone().unwrap_or_else(|| "?".to_string()),
        state: Tracking::Orphaned,
        hold: None,
        deployed: state
            .deployed
            .as_ref()
            .map(|d| CommitAt::of(d.commit, d.time, None)),
        upstream: None,
        in_sync: None,
        drift: DriftStatus {
            policy: DriftPolicy::Restore,
            count: None,
            files: Vec::new(),
            error: Some(format!(
                "not in this machine's config: not checked; `provision forget {name}` removes it"
            )),
        },
        mounts_ok: state
            .deployed
            .as_ref()
            .map(|_| mounts.iter().all(|m| m.state == Shows::Ok)),
        mounts,
        unit_state: None,
        last_pass: state.last_pass.as_ref().map(|p| PassStatus {
            time: p.time,
            ok: p.ok,
            error: p.error.clone(),
            duration_ms: p.duration_ms,
        }),
        rejected: None,
        rollout: None,
        signature: None,
        behind_seconds: None,
        state_error,
        name,
    }
}

/// How long upstream has had a commit that is not deployed, at `now`.
pub fn behind_seconds(state: &State, now: u64) -> Option<u64> {
    match in_sync(state)? {
        true => Some(0),
        false => Some(state.behind_since.map_or(0, |t| now.saturating_sub(t))),
    }
}

fn in_sync(state: &State) -> Option<bool> {
    match (&state.deployed, &state.upstream) {
        (Some(d), Some(u)) => Some(d.commit == u.commit),
        _ => None,
    }
}
