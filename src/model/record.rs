//! What a service's state records and its status reports about it: the
//! rejections, the holds, the kinds of drift. Plain data, shared by the
//! state file, the status document and the fleet that reads it.

use serde::{Deserialize, Serialize};

use crate::model::commit::CommitId;

/// A commit that was refused, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The refused commit.
    pub commit: CommitId,
    /// Which gate refused it.
    pub stage: Stage,
    /// Why, with the tail of the command's output (capped).
    pub reason: String,
    /// Unix time of the rejection; 0 when the source does not say (a
    /// document the fleet makes from Prometheus).
    #[serde(default)]
    pub time: u64,
}

/// The gates a commit passes on its way to staying deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// `validate`, before the switch.
    Validate,
    /// The unit's action after the switch.
    Action,
    /// The unit's own mount namespace does not show the release.
    Visibility,
    /// `health`, after the action.
    Health,
    /// Not signed by a key of `allowed_signers`, before anything else.
    Signature,
    /// Not a descendant of the newest head deployed (signatures checked).
    Ancestry,
}

impl Stage {
    /// The word status, JSON and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Action => "action",
            Stage::Visibility => "visibility",
            Stage::Health => "health",
            Stage::Signature => "signature",
            Stage::Ancestry => "ancestry",
        }
    }

    /// The stage `word` names (as [`Stage::as_str`] writes it).
    pub fn named(word: &str) -> Option<Stage> {
        [
            Stage::Validate,
            Stage::Action,
            Stage::Visibility,
            Stage::Health,
            Stage::Signature,
            Stage::Ancestry,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
    }
}

/// A freeze keeps whatever is deployed; a pin holds a commit a rollback
/// chose. Both end with `unfreeze` or `forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    /// `provision freeze`: stays on whatever is deployed.
    Frozen,
    /// `provision rollback`: stays on the commit it chose.
    Pinned,
}

impl HoldKind {
    /// The word status and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Frozen => "frozen",
            HoldKind::Pinned => "pinned",
        }
    }
}

/// How one path differs from the deployed commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Content, type or permissions differ.
    Modified,
    /// Not in the commit.
    Added,
    /// In the commit, gone from the disk.
    Deleted,
}

impl Change {
    /// The word status, metrics and messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Modified => "modified",
            Change::Added => "added",
            Change::Deleted => "deleted",
        }
    }
}
