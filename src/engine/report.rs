//! What a command did to each service: the engine's report, and the same
//! as data ([`crate::model::pass`]) for `sync --json`, the terminal and
//! the journal. A failure is classified here, once, where the engine's
//! error types are known; nothing above reads an error's type.

use anyhow::Result;

use crate::engine::trial::{ActionPending, After, FirstDeploymentFailed, Rejection};
use crate::model::commit::CommitId;
use crate::model::pass::{self, Failure, FailureKind, Note, ServiceReport};
use crate::store::state::{Deployed, HoldKind};

/// What a pass did to one service.
#[derive(Debug)]
pub struct Report {
    /// The service's name.
    pub service: String,
    /// What the service shows after the command, failed or not.
    pub serving: Serving,
    /// What the command did, or why it failed.
    pub outcome: Result<Outcome>,
}

impl Report {
    /// A report on a service whose state could not even be read.
    pub fn unknown(service: &str, outcome: Result<Outcome>) -> Report {
        Report {
            service: service.to_string(),
            serving: Serving::Unknown,
            outcome,
        }
    }
}

/// What a service shows after a command: a failure means something else
/// when nothing was ever deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// The release of this commit.
    Commit(CommitId),
    /// Nothing was ever deployed.
    Nothing,
    /// The state could not be read (the deployment itself is untouched).
    Unknown,
}

impl Serving {
    /// From the state's deployed release.
    pub fn of(deployed: Option<&Deployed>) -> Serving {
        deployed.map_or(Serving::Nothing, |d| Serving::Commit(d.commit))
    }
}

/// A successful pass for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The commit deployed before the pass.
    pub from: Option<CommitId>,
    /// The commit deployed now; `None` when nothing is deployed.
    pub to: Option<CommitId>,
    /// A new release was put in place (another commit, or other `dirs`).
    pub new_release: bool,
    /// Human-readable lines about what was done (mounts, action, pruning).
    pub notes: Vec<Note>,
    /// Set while a freeze or pin keeps the service off upstream.
    pub held: Option<Held>,
}

impl Outcome {
    /// `commit` stays deployed; `notes` say what was done to its mounts.
    pub fn stayed(commit: CommitId, notes: Vec<Note>) -> Outcome {
        Outcome {
            from: Some(commit),
            to: Some(commit),
            new_release: false,
            notes,
            held: None,
        }
    }

    /// Nothing deployed, nothing done but `notes`.
    pub fn nothing(notes: Vec<Note>) -> Outcome {
        Outcome {
            from: None,
            to: None,
            new_release: false,
            notes,
            held: None,
        }
    }
}

/// A service kept on its commit by a freeze, a pin or a staged rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// What keeps it there.
    pub by: Keeper,
    /// The upstream head as last fetched.
    pub upstream: CommitId,
}

/// What keeps a service off the upstream head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeper {
    /// The operator's freeze or pin.
    Hold(HoldKind),
    /// Its turn in a staged rollout has not come (or its gate is closed).
    Rollout,
}

impl Keeper {
    /// As reports say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Keeper::Hold(kind) => kind.as_str(),
            Keeper::Rollout => "waiting for rollout",
        }
    }
}

impl Report {
    /// The report as data; `restoring` for the boot-time restore, which
    /// does not ask upstream.
    pub fn data(&self, restoring: bool) -> ServiceReport {
        let serving = match &self.serving {
            Serving::Commit(c) => Some(*c),
            _ => None,
        };
        match &self.outcome {
            Ok(o) => ServiceReport {
                name: self.service.clone(),
                outcome: o.outcome(restoring),
                from: o.from,
                to: o.to,
                serving: o.to,
                upstream: o.held.as_ref().map(|h| h.upstream),
                notes: o.notes.clone(),
                failure: None,
            },
            Err(e) => ServiceReport {
                name: self.service.clone(),
                outcome: pass::Outcome::Failed,
                from: serving,
                to: None,
                serving,
                upstream: None,
                notes: Vec::new(),
                failure: Some(failure(e, serving)),
            },
        }
    }
}

impl Outcome {
    /// What it came to, in one word.
    pub fn outcome(&self, restoring: bool) -> pass::Outcome {
        match (self.to, &self.held) {
            (None, _) => pass::Outcome::Nothing,
            _ if restoring => pass::Outcome::Restored,
            _ if self.new_release => pass::Outcome::Deployed,
            (Some(to), Some(h)) if h.upstream != to => match h.by {
                Keeper::Rollout => pass::Outcome::Waiting,
                Keeper::Hold(_) => pass::Outcome::Held,
            },
            _ => pass::Outcome::UpToDate,
        }
    }
}

/// A failed pass's error as data: which of the engine's failures it is,
/// and the commit it concerns (`serving` when it concerns none).
fn failure(e: &anyhow::Error, serving: Option<CommitId>) -> Failure {
    let message = format!("{e:#}");
    if let Some(r) = e.downcast_ref::<Rejection>() {
        let kind = match r.after {
            After::NothingSwitched => FailureKind::Rejected,
            After::Reverted(_) | After::RevertedActionFailed(..) => FailureKind::Reverted,
            After::RevertFailed(_) => FailureKind::RevertFailed,
        };
        return Failure {
            kind,
            stage: Some(r.stage),
            commit: Some(r.commit),
            message,
        };
    }
    if let Some(f) = e.downcast_ref::<FirstDeploymentFailed>() {
        return Failure {
            kind: FailureKind::FirstDeploymentFailed,
            stage: Some(f.stage),
            commit: Some(f.commit),
            message,
        };
    }
    if let Some(p) = e.downcast_ref::<ActionPending>() {
        return Failure {
            kind: FailureKind::ActionPending,
            stage: None,
            commit: p.commit.or(serving),
            message,
        };
    }
    Failure {
        kind: FailureKind::Error,
        stage: None,
        commit: serving,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::Stage;

    fn commit(c: char) -> CommitId {
        c.to_string().repeat(40).parse().expect("commit id")
    }

    /// A rejection switched back is `reverted`, with its stage and the
    /// refused commit, however the error was wrapped; the commit serving
    /// is the one switched back to; any other error is an `error` about
    /// what serves.
    #[test]
    fn a_failure_is_classified_once_as_data() {
        let refused = anyhow::Error::new(Rejection {
            commit: commit('b'),
            stage: Stage::Health,
            reason: "503".into(),
            after: After::Reverted(commit('a')),
        })
        .context("deploying b");
        let r = Report {
            service: "web".into(),
            serving: Serving::Commit(commit('a')),
            outcome: Err(refused),
        };
        let d = r.data(false);
        let f = d.failure.expect("a failure");
        assert_eq!(d.outcome, pass::Outcome::Failed);
        assert_eq!(
            (f.kind, f.stage, f.commit),
            (
                FailureKind::Reverted,
                Some(Stage::Health),
                Some(commit('b'))
            )
        );
        assert_eq!(d.serving, Some(commit('a')));
        assert!(f.message.contains("deploying b"), "{}", f.message);

        let r = Report::unknown("web", Err(anyhow::anyhow!("server down")));
        let f = r.data(false).failure.expect("a failure");
        assert_eq!((f.kind, f.commit), (FailureKind::Error, None));
    }
}
