//! What provision remembers about each service between invocations.
//!
//! The binary is stateless between runs except for these files: one JSON
//! document per service, replaced atomically, so a crash at any point leaves
//! either the previous or the next state. An unreadable or corrupt file is
//! an error, never silently reset: losing it would lose the operator's
//! decisions about the service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::commit::CommitId;
use crate::model::place::Place;
pub use crate::model::record::{Backoff, Hold, HoldKind, Position, Rejected, RolloutWait, Stage};
use crate::util::{write_atomic, Visibility};

/// Version of the state file format written by this binary.
pub const VERSION: u32 = 1;
/// The state file in each service's state directory.
pub const FILE: &str = "state.json";

/// The persistent state of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The format version that wrote the file.
    pub version: u32,
    /// The release serving now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<Deployed>,
    /// The newest upstream head this machine deployed by following the
    /// branch: with signatures checked, a later head must descend from it,
    /// so a server replaying an older commit, or one from another branch,
    /// is refused even after the mirror is rebuilt. A rollback leaves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<CommitId>,
    /// The branch head as of the last successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSeen>,
    /// The outcome of the last pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<PassRecord>,
    /// Local paths provision has mounted, so a path dropped from `dirs` is
    /// unmounted instead of left showing an old release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<std::path::PathBuf>,
    /// Each mount of the deployed release as it was made, so that `provision
    /// mount` restores it at boot even when the config is missing or
    /// invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounted: Vec<MountRecord>,
    /// The unit as last configured, for a service the config no longer has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The directory of the service's releases as last configured (below
    /// `mount`), for `provision forget` once the config no longer says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    /// The files changed but the action has not succeeded yet: the next
    /// pass runs it again even if nothing else changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub action_pending: bool,
    /// Set while the service does not follow upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The last commit a check or the service refused: later passes do not
    /// deploy (or validate) it again while it is the upstream head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
    /// Every commit rejected since the last `forward` (the newest
    /// [`MAX_REFUSED`]): a server alternating heads cannot make one be
    /// tried again by showing another in between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Rejected>,
    /// Set from the switch to a new commit until its action and health
    /// check passed: a pass that finds it (after a crash) finishes the
    /// verdict, and a failure goes back to the release recorded here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// Unix time since which upstream has had a commit that is not
    /// deployed; `None` while in sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind_since: Option<u64>,
    /// The last signature check (with `allowed_signers`): of the commit
    /// last deployed or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::model::signature::Verdict>,
    /// The head this machine is waiting to adopt in a staged rollout,
    /// kept until it is deployed or a newer head replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutWait>,
    /// The head kept away because no change window is open, and when the
    /// next one opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::model::record::WindowWait>,
    /// Set after a failed fetch: passes do not connect before its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Totals kept across runs, for the metrics' counters.
    #[serde(default)]
    pub counters: Counters,
}

/// Rejected commits remembered beyond the current one.
pub const MAX_REFUSED: usize = 32;

impl State {
    /// Makes `rejected` the record of `head`: the current one when it
    /// names `head`, else the one kept for it in `refused`, else none. The
    /// current record is kept in `refused` first.
    pub fn reject_again(&mut self, head: CommitId) {
        if let Some(r) = self.rejected.take() {
            self.refused.retain(|k| k.commit != r.commit);
            self.refused.push(r);
            if self.refused.len() > MAX_REFUSED {
                self.refused.remove(0);
            }
        }
        self.rejected = self.refused.iter().find(|r| r.commit == head).cloned();
    }

    /// Forgets every rejection (`forward`).
    pub fn forgive(&mut self) {
        self.rejected = None;
        self.refused.clear();
    }

    /// The hold in force at `now`: one past its `until` is over, whether or
    /// not a pass has run since to remove it.
    pub fn hold_at(&self, now: u64) -> Option<&Hold> {
        self.hold.as_ref().filter(|h| !h.expired(now))
    }

    /// The change window the head waits for, while that is what keeps it
    /// away (as [`State::rollout_wait`]).
    pub fn window_wait(&self, now: u64) -> Option<&crate::model::record::WindowWait> {
        if self.hold_at(now).is_some() || self.rejected.is_some() {
            return None;
        }
        let deployed = self.deployed.as_ref().map(|d| d.commit);
        let head = self.upstream.as_ref().map(|u| u.commit);
        self.window
            .as_ref()
            .filter(|w| deployed != Some(w.commit) && head == Some(w.commit))
    }

    /// The staged rollout's wait while it is what keeps the head away: not
    /// under a hold in force at `now`, nor for a rejected head.
    pub fn rollout_wait(&self, now: u64) -> Option<&RolloutWait> {
        if self.hold_at(now).is_some() || self.rejected.is_some() {
            return None;
        }
        let deployed = self.deployed.as_ref().map(|d| d.commit);
        self.rollout
            .as_ref()
            .filter(|w| w.waiting() && deployed != Some(w.commit))
    }
}

/// One bind mount as provision made it: everything needed to make it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// The mount point.
    pub local: PathBuf,
    /// The release path shown there.
    pub source: PathBuf,
    /// A single file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file: bool,
    /// Mounted read-only.
    pub readonly: bool,
    /// Mounted beneath directories other users may write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_writable_parents: bool,
}

impl MountRecord {
    /// The mount of `dirs` entry `d` from the release at `release`.
    pub fn of(d: &crate::config::Dir, release: &Path) -> MountRecord {
        MountRecord {
            local: d.local.clone(),
            source: release.join(&d.link),
            file: d.file,
            readonly: d.readonly,
            allow_writable_parents: d.allow_writable_parents,
        }
    }
}

/// Counts that only grow (Prometheus counters), and the last success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Passes that ended in an error.
    #[serde(default)]
    pub pass_failures: u64,
    /// Unix time of the last pass that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<u64>,
    /// Actions run, by action (`reload`...) and result (`ok` | `failed`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Automatic switches back to the previous release.
    #[serde(default)]
    pub reverts: u64,
}

impl Counters {
    /// Counts one run of `action` that ended `ok` or not.
    pub fn action(&mut self, action: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        *self
            .actions
            .entry(action.to_string())
            .or_default()
            .entry(result.to_string())
            .or_default() += 1;
    }
}

/// A commit switched in but not yet confirmed by its action and health
/// check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The commit on trial.
    pub commit: CommitId,
    /// The last confirmed deployment, to go back to; `None` on a first
    /// deployment (nothing to go back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Deployed>,
}

/// A deployed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The commit.
    pub commit: CommitId,
    /// Release directory name (commit plus dirs fingerprint).
    pub release: String,
    /// Unix time of the deployment.
    pub time: u64,
}

/// The upstream head seen by the last fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSeen {
    /// The commit.
    pub commit: CommitId,
    /// Unix time of that fetch.
    pub fetched: u64,
    /// The further upstream (a mirror) that served it, when the first
    /// could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// When the last pass ran, how it ended, and what it saw of the host at its
/// end (for metrics, which are written without looking at the host again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassRecord {
    /// Unix time the pass ended.
    pub time: u64,
    /// Whether it succeeded.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time of the pass for this service, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Files of the deployed release that differ from its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_files: Option<u64>,
    /// Whether every bind mount showed the deployed release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts_ok: Option<bool>,
    /// The unit's ActiveState, when systemd could be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_state: Option<String>,
    /// It failed because a secret could not be decrypted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undecryptable: bool,
}

/// Where a service's state and lock live.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state directory of a service's [`Place`].
    pub fn at(place: &Place) -> StateDir {
        StateDir {
            dir: place.state.clone(),
        }
    }

    /// The state directory of service `name` under `state_dir`: for a
    /// service known by its name only (one the config no longer has).
    pub fn new(state_dir: &Path, name: &str) -> StateDir {
        StateDir {
            dir: state_dir.join(name),
        }
    }

    /// The directory itself.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock serializing passes and commands on this service.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn file(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Reads the state; a service never seen before has the default state.
    pub fn load(&self) -> Result<State> {
        let path = self.file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: VERSION,
                    ..State::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("reading state {}", path.display())),
        };
        let state: State = serde_json::from_str(&text).with_context(|| {
            format!(
                "state file {} is corrupt; fix or remove it (it is not reset automatically)",
                path.display()
            )
        })?;
        if state.version > VERSION {
            bail!(
                "state file {} has version {}, newer than this provision understands ({VERSION}); \
                 upgrade provision, or remove the file to start afresh (it is not reset automatically)",
                path.display(),
                state.version
            );
        }
        Ok(state)
    }

    /// Replaces the state atomically.
    pub fn save(&self, state: &State) -> Result<()> {
        let mut state = state.clone();
        state.version = VERSION;
        let mut text = serde_json::to_string_pretty(&state).context("serializing state")?;
        text.push('\n');
        write_atomic(&self.file(), text.as_bytes(), Visibility::Private)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_corrupt_or_newer_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(tmp.path(), "web");
        assert_eq!(sd.load().expect("fresh").deployed, None);
        let st = State {
            version: VERSION,
            deployed: Some(Deployed {
                commit: "0123456789abcdef0123456789abcdef01234567"
                    .parse()
                    .expect("commit id"),
                release: "abc-1".into(),
                time: 5,
            }),
            ..State::default()
        };
        sd.save(&st).expect("save");
        assert_eq!(sd.load().expect("load"), st);

        std::fs::write(sd.dir().join(FILE), "{not json").expect("write");
        let e = sd.load().expect_err("corrupt");
        assert!(format!("{e:#}").contains("is corrupt"), "{e:#}");

        std::fs::write(sd.dir().join(FILE), r#"{"version": 99}"#).expect("write");
        let e = sd.load().expect_err("newer");
        assert!(format!("{e:#}").contains("version 99"), "{e:#}");
    }
}
