//! `provision status`: the typed document of every service's status, from
//! the state files and a live look at the host (drift, mounts, the unit). Needs no network and takes no
//! lock: state files are replaced atomically, so reading one mid-pass sees
//! the state before or after it.
//!
//! The JSON form is an interface: its `schema` number changes whenever a
//! field is removed or changes meaning (adding fields does not).

use std::path::Path;

use crate::config::{DriftPolicy, Service};
use crate::git::mirror::Mirror;
use crate::model::commit::CommitId;
use crate::model::place::Place;
use crate::observe::{self, MountState};
use crate::store::state::{HoldKind, RolloutWait, State, StateDir};
use crate::util::now_unix;

pub use crate::model::status::*;

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

impl Shows {
    fn of(m: &MountState) -> Shows {
        match m {
            MountState::Ok => Shows::Ok,
            MountState::Missing => Shows::Missing,
            MountState::Other => Shows::Other,
            MountState::Error(_) => Shows::Error,
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
            .map(|s| service_status(s, &Place::of(s, state_dir)))
            .chain(orphans(services, state_dir))
            .collect(),
    }
}

fn service_status(svc: &Service, place: &Place) -> ServiceStatus {
    let loaded = StateDir::at(place).load();
    let state_error = loaded.as_ref().err().map(|e| format!("{e:#}"));
    let mut state = loaded.unwrap_or_default();
    let now = now_unix();
    state.hold = state.hold_at(now).cloned();
    let repo = Mirror::of(svc, place).open().ok();
    let seen = observe::observe(svc, place, &state, repo.as_ref());
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
        upstream_url: state
            .upstream
            .as_ref()
            .map(|u| u.via.clone().unwrap_or_else(|| svc.upstream.url.clone())),
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
            undecryptable: p.undecryptable,
        }),
        rejected: state.rejected.clone(),
        rollout: state.rollout_wait(now).map(RolloutStatus::of),
        window: state.window_wait(now).map(|w| WindowStatus {
            commit: w.commit,
            next_open: w.next_open,
        }),
        signature: state.signature.clone().filter(|_| svc.checks_signatures()),
        backoff: state.backoff.clone().filter(|b| b.holds_at(now)),
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
        upstream_url: None,
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
            undecryptable: p.undecryptable,
        }),
        rejected: None,
        rollout: None,
        window: None,
        signature: None,
        backoff: None,
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
