//! A pass's report as data: what `provision sync --json` prints (one
//! document per pass) and what the terminal and the journal are told,
//! rendered from the same values.
//!
//! The JSON form is an interface: its `schema` number changes whenever a
//! field is removed or changes meaning (adding fields does not).

use serde::{Deserialize, Serialize};

use crate::model::commit::CommitId;
use crate::model::record::Stage;

/// Version of the `sync --json` document.
pub const SCHEMA: u32 = 1;

/// The whole `sync --json` document: one pass over the selected services.
#[derive(Debug, Serialize, Deserialize)]
pub struct Document {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The machine name the services were selected by.
    pub machine: String,
    /// Unix time the pass ended.
    pub time: u64,
    /// Every service succeeded.
    pub ok: bool,
    /// One entry per selected service, in config order.
    #[serde(default)]
    pub services: Vec<ServiceReport>,
}

/// What the pass did to one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service's name.
    pub name: String,
    /// What it came to.
    pub outcome: Outcome,
    /// The commit deployed before the pass, when known.
    pub from: Option<CommitId>,
    /// The commit deployed after it; `None` when nothing is deployed or
    /// the pass failed.
    pub to: Option<CommitId>,
    /// The commit the service serves now, failed or not; `None` when
    /// nothing is deployed or it is not known.
    pub serving: Option<CommitId>,
    /// The upstream head a hold or a rollout keeps it from, if any.
    pub upstream: Option<CommitId>,
    /// What was done on the way, in order.
    #[serde(default)]
    pub notes: Vec<Note>,
    /// Why it failed; `None` when it did not.
    pub failure: Option<Failure>,
}

/// What a pass came to for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new release is in place and serving.
    Deployed,
    /// Already at the upstream head.
    UpToDate,
    /// A freeze or pin keeps it off the upstream head.
    Held,
    /// A staged rollout has not reached it yet.
    Waiting,
    /// Nothing deployed, nothing to deploy yet.
    Nothing,
    /// Mounts restored from disk, upstream not asked (`provision mount`).
    Restored,
    /// Failed (see `failure`).
    Failed,
}

/// One thing a pass did or saw, with what it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// What it concerns.
    pub kind: NoteKind,
    /// The sentence the terminal shows.
    pub text: String,
}

/// What a [`Note`] concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// Fetching: what upstream is at, a failed fetch, a rebuilt mirror.
    Fetch,
    /// The service's package.
    Package,
    /// Local changes to the deployed files.
    Drift,
    /// Mount points.
    Mount,
    /// The unit's action and its start.
    Action,
    /// Releases kept or removed.
    Release,
    /// A staged rollout's wait or adoption.
    Rollout,
    /// A freeze or pin, and its end.
    Hold,
    /// An upstream head refused before, not deployed again.
    Rejection,
    /// The health check.
    Health,
}

impl Note {
    /// A note on `kind`.
    pub fn new(kind: NoteKind, text: impl Into<String>) -> Note {
        Note {
            kind,
            text: text.into(),
        }
    }
}

/// Why a service's pass failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure, which says what is serving now.
    pub kind: FailureKind,
    /// The gate that refused the commit, for a rejection.
    pub stage: Option<Stage>,
    /// The commit it is about: the rejected one, or the one in place.
    pub commit: Option<CommitId>,
    /// The whole message, causes included.
    pub message: String,
}

/// The kinds of failure, by what they leave serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// A check refused the commit before anything switched.
    Rejected,
    /// The commit was refused after the switch and switched back.
    Reverted,
    /// Refused after the switch, and switching back failed too.
    RevertFailed,
    /// The new files are in place, the unit's action failed.
    ActionPending,
    /// A first deployment failed its action or health check; its files
    /// stay and the next pass tries again.
    FirstDeploymentFailed,
    /// Anything else: nothing changed (the last good release serves).
    Error,
}
