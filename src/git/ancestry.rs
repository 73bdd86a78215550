//! Whether one commit is in another's history, read from the commit
//! objects themselves.
//!
//! A shallow mirror hides the parents of its boundary commits, and
//! libgit2's own graph walk treats a missing parent as the end of history.
//! Here the parent ids come from each commit's raw header: they are covered
//! by the hash of the commit naming them, so reaching the ancestor's id
//! proves descent even when the ancestor's object is not in the mirror, and
//! a parent that is missing is reported as such (to fetch deeper), never
//! taken for a root.

use std::collections::{BTreeSet, VecDeque};

use anyhow::{bail, Context, Result};
use git2::{ErrorCode, ObjectType, Odb, Oid, Repository};

/// What a walk back from a head found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// The ancestor is in the head's history.
    Found,
    /// Every commit of the head's history was read, down to its roots,
    /// without meeting the ancestor.
    Exhausted,
    /// The ancestor was not met, and these commits of the history are not
    /// in the mirror (its shallow boundary): fetch deeper to go on.
    Frontier(Vec<Oid>),
    /// More than the bound of commits were read without meeting it.
    TooFar,
}

/// Walks back from `head`, breadth first, reading at most `bound` commits.
pub fn walk(repo: &Repository, head: Oid, ancestor: Oid, bound: u32) -> Result<Walk> {
    if head == ancestor {
        return Ok(Walk::Found);
    }
    let odb = repo.odb().context("opening the mirror's objects")?;
    let mut queue = VecDeque::from([head]);
    let mut seen = BTreeSet::from([head]);
    let mut missing = Vec::new();
    let mut read = 0u32;
    while let Some(id) = queue.pop_front() {
        let Some(parents) = parents(&odb, id)? else {
            missing.push(id);
            continue;
        };
        read += 1;
        if parents.contains(&ancestor) {
            return Ok(Walk::Found);
        }
        if read >= bound {
            return Ok(Walk::TooFar);
        }
        queue.extend(parents.into_iter().filter(|p| seen.insert(*p)));
    }
    if missing.is_empty() {
        Ok(Walk::Exhausted)
    } else {
        missing.sort();
        Ok(Walk::Frontier(missing))
    }
}

/// The parent ids in the header of commit `id`; `None` when the mirror
/// does not hold it.
fn parents(odb: &Odb<'_>, id: Oid) -> Result<Option<Vec<Oid>>> {
    let object = match odb.read(id) {
        Ok(o) => o,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading commit {id}")),
    };
    if object.kind() != ObjectType::Commit {
        bail!("{id} is a {} where a commit was expected", object.kind());
    }
    let mut found = Vec::new();
    for line in object.data().split(|b| *b == b'\n') {
        if line.is_empty() {
            break;
        }
        if let Some(hex) = line.strip_prefix(b"parent ") {
            let hex = std::str::from_utf8(hex).ok();
            let parent = hex.and_then(|h| Oid::from_str(h).ok());
            found.push(parent.with_context(|| format!("commit {id} names a malformed parent"))?);
        }
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with a chain of `n` commits; their ids, oldest first.
    fn chain(dir: &std::path::Path, n: usize) -> (Repository, Vec<Oid>) {
        let repo = Repository::init_bare(dir).expect("init");
        let sig = git2::Signature::now("t", "t@example.net").expect("signature");
        let tree = {
            let b = repo.treebuilder(None).expect("treebuilder");
            b.write().expect("tree")
        };
        let mut ids = Vec::new();
        for i in 0..n {
            let tree = repo.find_tree(tree).expect("find tree");
            let parent = ids.last().map(|p| repo.find_commit(*p).expect("parent"));
            let parents: Vec<&git2::Commit> = parent.iter().collect();
            let id = repo
                .commit(None, &sig, &sig, &format!("c{i}"), &tree, &parents)
                .expect("commit");
            ids.push(id);
        }
        (repo, ids)
    }

    #[test]
    fn finds_an_ancestor_and_not_a_descendant_or_a_stranger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, ids) = chain(dir.path(), 5);
        assert_eq!(walk(&repo, ids[4], ids[0], 100).ok(), Some(Walk::Found));
        assert_eq!(walk(&repo, ids[4], ids[3], 100).ok(), Some(Walk::Found));
        assert_eq!(walk(&repo, ids[1], ids[4], 100).ok(), Some(Walk::Exhausted));
        assert_eq!(walk(&repo, ids[4], ids[0], 2).ok(), Some(Walk::TooFar));
    }

    #[test]
    fn a_missing_parent_is_a_frontier_not_a_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, ids) = chain(dir.path(), 3);
        let stranger = Oid::hash_object(ObjectType::Blob, b"not here").expect("hash");
        // The first commit's parent is named by its child, but absent.
        let odb = repo.odb().expect("odb");
        let tree = repo.find_commit(ids[0]).expect("c0").tree_id();
        let text = format!(
            "tree {tree}\nparent {}\nauthor t <t@example.net> 1 +0000\ncommitter t <t@example.net> 1 +0000\n\norphaned\n",
            Oid::hash_object(ObjectType::Blob, b"absent parent").expect("hash")
        );
        let child = odb
            .write(ObjectType::Commit, text.as_bytes())
            .expect("write");
        match walk(&repo, child, stranger, 100).expect("walk") {
            Walk::Frontier(m) => assert_eq!(m.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}
