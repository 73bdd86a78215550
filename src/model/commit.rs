//! Commit ids: one typed value from the state file to the screen, instead
//! of hex strings parsed again wherever a commit is needed.

use std::fmt;
use std::str::FromStr;

use git2::Oid;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A commit: 40 hex digits in files and JSON, [`CommitId::short`] for
/// people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(Oid);

impl CommitId {
    /// The object id, for libgit2.
    pub fn oid(self) -> Oid {
        self.0
    }

    /// The abbreviated hash shown to operators.
    pub fn short(&self) -> String {
        short(&self.0.to_string())
    }
}

impl From<Oid> for CommitId {
    fn from(oid: Oid) -> CommitId {
        CommitId(oid)
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for CommitId {
    type Err = String;

    /// Exactly 40 hex digits: libgit2 would pad a shorter string with
    /// zeros into some other commit.
    fn from_str(s: &str) -> Result<CommitId, String> {
        if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not a commit id (40 hex digits)"));
        }
        Oid::from_str(s)
            .map(CommitId)
            .map_err(|e| format!("{s:?} is not a commit id: {}", e.message()))
    }
}

impl Serialize for CommitId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for CommitId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CommitId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The abbreviated form of a commit given as text.
pub fn short(commit: &str) -> String {
    commit.chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_are_exactly_forty_hex_digits() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        let c: CommitId = hex.parse().expect("valid");
        assert_eq!(c.to_string(), hex);
        assert_eq!(c.short(), "0123456789");
        assert_eq!(
            serde_json::to_string(&c).expect("json"),
            format!("\"{hex}\"")
        );
        let back: CommitId = serde_json::from_str(&format!("\"{hex}\"")).expect("json");
        assert_eq!(back, c);
        assert!(
            "abc".parse::<CommitId>().is_err(),
            "short hex is not padded"
        );
        assert!(serde_json::from_str::<CommitId>("\"zz\"").is_err());
    }
}
