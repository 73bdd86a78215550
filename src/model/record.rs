//! What a service's state records and its status reports about it: the
//! rejections, the holds, a staged rollout's wait, the kinds of drift.
//! Plain data, shared by the state file, the status document and the
//! fleet that reads it.

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

/// Why a service stays on its deployed commit instead of following upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// A freeze or a pin.
    pub kind: HoldKind,
    /// The operator's words, or what put the hold in place.
    pub reason: String,
    /// Unix time the hold began.
    pub since: u64,
    /// Unix time the hold ends by itself; `None` holds until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Who set it (`--by`, `SUDO_USER` or the login name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Hold {
    /// Whether the hold has run out at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.until.is_some_and(|u| u <= now)
    }
}

/// A new head's place in a staged rollout on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutWait {
    /// The head waited for.
    pub commit: CommitId,
    /// Unix time this machine first saw it.
    pub seen: u64,
    /// This machine's place in the rollout of this commit.
    pub position: Position,
    /// Unix time it may be adopted (`seen` + position × window).
    pub at: u64,
    /// Why the gate was closed at the last pass, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// Its time has come and the gate (if any) opened: the pass that saw
    /// it deploys it, and a failed attempt is retried without a new wait.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopting: bool,
}

impl RolloutWait {
    /// Whether the service still waits for the commit (not adopting it).
    pub fn waiting(&self) -> bool {
        !self.adopting
    }
}

/// A head that waits for a change window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowWait {
    /// The head waited for.
    pub commit: CommitId,
    /// Unix time the next window opens.
    pub next_open: u64,
}

/// A place in [0, 1) with 32 bits of resolution, so that state files
/// compare exactly; written as a fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position(pub u32);

impl Position {
    /// The first place: canaries and machines with nothing deployed.
    pub const FIRST: Position = Position(0);

    /// As a fraction of the window.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 4_294_967_296.0
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.fraction())
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = f64::deserialize(d)?;
        if !(0.0..1.0).contains(&f) {
            return Err(serde::de::Error::custom(format!(
                "rollout position {f} is not in [0, 1)"
            )));
        }
        // Every u32 over 2^32 is a double, but a JSON reader may land one
        // ulp below the value written: rounding (not truncating) gives back
        // the place that was written.
        Ok(Position(
            (f * 4_294_967_296.0).round().min(f64::from(u32::MAX)) as u32,
        ))
    }
}

/// Passes make no connection to an upstream whose fetch failed until
/// `until`: a failing or rate-limited server is not polled at every
/// interval by every machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Unix time the next pass may fetch again.
    pub until: u64,
    /// Fetches that failed in a row.
    pub failures: u32,
    /// Why the last one failed (its last line: the innermost cause).
    pub reason: String,
}

impl Backoff {
    /// Whether it still holds at `now`.
    pub fn holds_at(&self, now: u64) -> bool {
        self.until > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A place read back is the place written, even when the reader lands
    /// one ulp below the fraction written (truncating lost one place).
    #[test]
    fn a_rollout_position_reads_back_exactly() {
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let p = Position(x);
            let text = serde_json::to_string(&p).expect("written");
            let back: Position = serde_json::from_str(&text).expect("read");
            assert_eq!(back, p, "{text}");
            let below = f64::from_bits(p.fraction().to_bits().saturating_sub(1));
            let back: Position =
                serde_json::from_str(&format!("{below:e}")).expect("one ulp below");
            assert_eq!(back, p, "one ulp below {text}");
        }
        assert_eq!(
            serde_json::from_str::<Position>("0.99999999999999999").ok(),
            None,
            "1.0 is not a place"
        );
    }
}
