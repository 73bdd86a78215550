//! Recent commits of a service's branch, as the local mirror knows them,
//! with what is deployed, what upstream is at, and what can be rolled back
//! to without network.

use anyhow::Result;
use git2::Repository;

use crate::config::Service;
use crate::git::mirror::Mirror;
use crate::model::commit::CommitId;
pub use crate::model::history::HistoryEntry;
use crate::model::place::Place;
use crate::store::layout;
use crate::store::state::StateDir;

/// Up to `limit` commits from the branch head, first-parent, plus the
/// deployed commit when it is not among them (after a force-push, say).
/// Reading it takes no lock and no network.
pub fn list(svc: &Service, place: &Place, limit: usize) -> Result<Vec<HistoryEntry>> {
    let state = StateDir::at(place).load()?;
    let deployed = state.deployed.map(|d| d.commit);
    let releases = layout::releases(place);
    let kept: Vec<CommitId> = releases
        .list()?
        .into_iter()
        .filter_map(|n| n.split('-').next().and_then(|c| c.parse().ok()))
        .collect();
    let mirror = Mirror::of(svc, place);
    let repo = mirror.open().ok();
    let head = mirror.head().ok().flatten();
    let mut entries = Vec::new();
    if let (Some(repo), Some(head)) = (&repo, head) {
        let mut next = repo.find_commit(head).ok();
        while let Some(c) = next.filter(|_| entries.len() < limit) {
            entries.push(entry(&c));
            next = c.parent(0).ok();
        }
    }
    if let Some(d) = deployed {
        if !entries.iter().any(|e| e.commit == d) {
            entries.insert(
                0,
                repo.as_ref()
                    .and_then(|r| find(r, d))
                    .unwrap_or_else(|| bare(d)),
            );
        }
    }
    for e in &mut entries {
        e.deployed = deployed == Some(e.commit);
        e.upstream = head.is_some_and(|h| h == e.commit.oid());
        e.release = kept.contains(&e.commit);
        e.offline = e.release || e.time != 0;
    }
    Ok(entries)
}

fn find(repo: &Repository, commit: CommitId) -> Option<HistoryEntry> {
    repo.find_commit(commit.oid()).ok().map(|c| entry(&c))
}

fn entry(c: &git2::Commit<'_>) -> HistoryEntry {
    HistoryEntry {
        commit: c.id().into(),
        time: c.time().seconds(),
        author: c.author().name().unwrap_or("?").to_string(),
        subject: c.summary().unwrap_or("").to_string(),
        deployed: false,
        upstream: false,
        release: false,
        offline: false,
    }
}

/// A commit known only from its release (not in the mirror any more).
fn bare(commit: CommitId) -> HistoryEntry {
    HistoryEntry {
        commit,
        time: 0,
        author: String::new(),
        subject: "(not in the local mirror)".to_string(),
        deployed: false,
        upstream: false,
        release: false,
        offline: false,
    }
}
