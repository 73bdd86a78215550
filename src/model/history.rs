//! The `history --json` document as data: recent commits of a service's
//! branch as one machine's mirror knows them. Written by `provision
//! history`, read by the fleet's pages; a field an older machine leaves
//! out reads as false or empty.

use serde::{Deserialize, Serialize};

use crate::model::commit::CommitId;

/// One commit of the history (`history --json` is a list of these,
/// newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The commit, as 40 hex digits.
    pub commit: CommitId,
    /// Committer time, Unix seconds; 0 when only the release is known.
    #[serde(default)]
    pub time: i64,
    /// Its author's name.
    #[serde(default)]
    pub author: String,
    /// The first line of its message.
    #[serde(default)]
    pub subject: String,
    /// The commit serving now.
    #[serde(default)]
    pub deployed: bool,
    /// The branch head as of the last fetch.
    #[serde(default)]
    pub upstream: bool,
    /// A release of it is kept: rolling back is instant.
    #[serde(default)]
    pub release: bool,
    /// Rolling back to it needs no network (a kept release, or in the mirror).
    #[serde(default)]
    pub offline: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry with only a commit (an older or a terse machine) reads,
    /// the rest false or empty; a bad commit id does not.
    #[test]
    fn an_entry_reads_with_what_it_lacks_empty() {
        let text = r#"[{"commit": "0123456789abcdef0123456789abcdef01234567", "later": 1}]"#;
        let h: Vec<HistoryEntry> = serde_json::from_str(text).expect("a terse history");
        assert_eq!(h[0].commit.short(), "0123456789");
        assert!(!h[0].offline && h[0].subject.is_empty() && h[0].time == 0);
        assert!(serde_json::from_str::<Vec<HistoryEntry>>(r#"[{"commit": "nope"}]"#).is_err());
    }
}
