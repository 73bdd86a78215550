//! A partial mirror: every commit and tree of the fetched history, but
//! blobs only under the paths services mount.
//!
//! A service that mounts 1% of a repository needs 1% of its blobs. The
//! mirror is fetched without blobs (`filter blob:none`), then the blobs
//! under the services' `link` paths are fetched by id, for every commit of
//! the window (the head and its ancestors up to `depth`), so that a
//! rollback within `depth`, drift checks and `diff` work offline as they
//! do with a full mirror. A commit outside the window (an older rollback,
//! a tag) gets its files fetched when its release is written.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use git2::{ObjectType, Oid, Repository, Tree};

use crate::config::Dir;

/// File in a mirror saying it was fetched without blobs.
const PARTIAL_MARK: &str = "provision-partial";
/// File in a mirror naming the head and paths whose window is complete.
const COMPLETE_MARK: &str = "provision-files";

/// Which files a mirror must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// Every file: the mirror is fetched whole.
    All,
    /// Files under these repository paths (sorted, without duplicates).
    Under(Vec<String>),
}

impl Files {
    /// The files `dirs` mount: everything when one mounts the repository's
    /// root.
    pub fn of(dirs: &[Dir]) -> Files {
        Files::paths(dirs.iter().map(|d| d.link.as_str()))
    }

    /// The files under `paths`.
    pub fn paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Files {
        let mut set = BTreeSet::new();
        for p in paths {
            let p = p.trim_matches('/');
            if p.is_empty() || p == "." {
                return Files::All;
            }
            set.insert(p.to_string());
        }
        Files::Under(set.into_iter().collect())
    }

    /// The repository paths whose blobs are needed; `""` is the root.
    pub fn roots(&self) -> Vec<String> {
        match self {
            Files::All => vec![String::new()],
            Files::Under(paths) => paths.clone(),
        }
    }

    /// What both need.
    pub fn union(&self, other: &Files) -> Files {
        match (self, other) {
            (Files::Under(a), Files::Under(b)) => {
                Files::paths(a.iter().chain(b).map(String::as_str))
            }
            _ => Files::All,
        }
    }
}

/// Whether the mirror at `path` was fetched without blobs.
pub fn is_partial(path: &Path) -> bool {
    path.join(PARTIAL_MARK).exists()
}

/// Records that the mirror at `path` holds blobs only where needed.
pub fn mark_partial(path: &Path) -> Result<()> {
    let mark = path.join(PARTIAL_MARK);
    fs::write(&mark, b"blobs only under the mounted paths\n")
        .with_context(|| format!("writing {}", mark.display()))
}

/// Whether the files under `paths` of the window of `head` were all
/// fetched already (a cheap check that spares a no-op poll the tree walk).
pub fn complete(path: &Path, head: Oid, paths: &[String]) -> bool {
    let Ok(text) = fs::read_to_string(path.join(COMPLETE_MARK)) else {
        return false;
    };
    let mut lines = text.lines();
    if lines.next() != Some(head.to_string().as_str()) {
        return false;
    }
    let have: BTreeSet<&str> = lines.collect();
    paths.iter().all(|p| have.contains(p.as_str()))
}

/// Records that the window of `head` is complete under `paths` (and under
/// those already recorded for the same head).
pub fn record_complete(path: &Path, head: Oid, paths: &[String]) -> Result<()> {
    let mark = path.join(COMPLETE_MARK);
    let old = fs::read_to_string(&mark).unwrap_or_default();
    let mut lines = old.lines();
    let mut all: BTreeSet<String> = paths.iter().cloned().collect();
    if lines.next() == Some(head.to_string().as_str()) {
        all.extend(lines.map(str::to_string));
    }
    let mut text = format!("{head}\n");
    for p in all {
        text.push_str(&p);
        text.push('\n');
    }
    let tmp = mark.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &mark).with_context(|| format!("writing {}", mark.display()))
}

/// The commits of the window: `head` and its ancestors, at most `depth`
/// generations (0: all), as far as the mirror holds them.
pub fn window(repo: &Repository, head: Oid, depth: u32) -> Vec<Oid> {
    let mut seen = BTreeSet::new();
    let Ok(odb) = repo.odb() else {
        return vec![head];
    };
    let mut level = vec![head];
    let mut generation = 0u32;
    while !level.is_empty() && (depth == 0 || generation < depth) {
        let mut next = Vec::new();
        for id in level {
            if !seen.insert(id) {
                continue;
            }
            if let Ok(c) = repo.find_commit(id) {
                next.extend(c.parent_ids().filter(|p| odb.exists(*p)));
            }
        }
        level = next;
        generation += 1;
    }
    seen.into_iter().collect()
}

/// The blobs under `paths` of `commits` that the mirror lacks (`""`: the
/// whole tree), with the symlinks met on the way to each path (a release
/// resolves them).
pub fn missing(repo: &Repository, commits: &[Oid], paths: &[String]) -> Result<Vec<Oid>> {
    let odb = repo.odb().context("opening the mirror's objects")?;
    let mut want = BTreeSet::new();
    let mut walked = BTreeSet::new();
    for id in commits {
        let tree = repo
            .find_commit(*id)
            .and_then(|c| c.tree())
            .with_context(|| format!("reading the tree of commit {id}"))?;
        for p in paths {
            if p.is_empty() {
                collect(repo, &tree, &odb, &mut walked, &mut want)?;
                continue;
            }
            let mut at = PathBuf::new();
            for part in Path::new(p).components() {
                at.push(part);
                let Ok(entry) = tree.get_path(&at) else {
                    break;
                };
                match entry.kind() {
                    Some(ObjectType::Tree) if at == Path::new(p) && walked.insert(entry.id()) => {
                        let sub = repo
                            .find_tree(entry.id())
                            .with_context(|| format!("reading tree {} ({p})", entry.id()))?;
                        collect(repo, &sub, &odb, &mut walked, &mut want)?;
                    }
                    Some(ObjectType::Blob) if !odb.exists(entry.id()) => {
                        want.insert(entry.id());
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(want.into_iter().collect())
}

/// Adds every blob under `tree` that `odb` lacks to `want`.
fn collect(
    repo: &Repository,
    tree: &Tree<'_>,
    odb: &git2::Odb<'_>,
    walked: &mut BTreeSet<Oid>,
    want: &mut BTreeSet<Oid>,
) -> Result<()> {
    for entry in tree.iter() {
        match entry.kind() {
            Some(ObjectType::Blob) if !odb.exists(entry.id()) => {
                want.insert(entry.id());
            }
            Some(ObjectType::Tree) if walked.insert(entry.id()) => {
                let sub = repo
                    .find_tree(entry.id())
                    .with_context(|| format!("reading tree {}", entry.id()))?;
                collect(repo, &sub, odb, walked, want)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_means_every_file_and_paths_are_merged() {
        assert_eq!(
            Files::paths(["svc/a", "/svc/b/", "svc/a"]),
            Files::Under(vec!["svc/a".into(), "svc/b".into()])
        );
        assert_eq!(Files::paths(["svc/a", "."]), Files::All);
        assert_eq!(
            Files::paths(["a"]).union(&Files::paths(["b"])),
            Files::Under(vec!["a".into(), "b".into()])
        );
        assert_eq!(Files::paths(["a"]).union(&Files::All), Files::All);
        assert_eq!(Files::All.roots(), [""], "the whole tree");
        assert_eq!(Files::paths(["b", "a"]).roots(), ["a", "b"]);
    }

    #[test]
    fn completeness_is_per_head_and_paths_accumulate() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (h1, h2) = (
            Oid::from_bytes(&[1; 20]).expect("id"),
            Oid::from_bytes(&[2; 20]).expect("id"),
        );
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(!complete(dir.path(), h1, &p(&["a"])));
        record_complete(dir.path(), h1, &p(&["a"])).expect("recorded");
        record_complete(dir.path(), h1, &p(&["b"])).expect("recorded");
        assert!(complete(dir.path(), h1, &p(&["a", "b"])));
        assert!(!complete(dir.path(), h2, &p(&["a"])));
        record_complete(dir.path(), h2, &p(&["b"])).expect("recorded");
        assert!(
            !complete(dir.path(), h2, &p(&["a"])),
            "a new head starts over"
        );
    }
}
