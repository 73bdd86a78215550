//! The revisions an operator can roll back to, and how each is found:
//! first among the kept releases (no network), then in the mirror, and
//! only then by fetching more of the upstream's history.

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository};

use crate::config::Service;
use crate::git::mirror::Mirror;
use crate::model::commit::CommitId;
use crate::store::release::Releases;

/// Depths tried, in turn, when a revision is older than the mirror's
/// history; 0 fetches all of it.
const DEEPEN_STEPS: [u32; 3] = [64, 1024, 0];

/// A revision as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rev {
    /// `HEAD~N` (or `HEAD^`, `HEAD`): N first-parent steps back from the
    /// deployed commit.
    Back(u32),
    /// A full or abbreviated (at least 4 digits) commit hash.
    Hash(String),
    /// A tag of the upstream repository.
    Tag(String),
}

impl Rev {
    /// Parses a revision; the error explains the accepted forms.
    pub fn parse(s: &str) -> Result<Rev, String> {
        let help = || {
            format!("{s:?} is not a revision: use HEAD~N (from the deployed commit), a commit hash or a tag")
        };
        if let Some(rest) = s.strip_prefix("HEAD") {
            return parse_back(rest).ok_or_else(help);
        }
        if (4..=40).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Rev::Hash(s.to_ascii_lowercase()));
        }
        if !s.is_empty()
            && !s.starts_with('-')
            && git2::Reference::is_valid_name(&format!("refs/tags/{s}"))
        {
            return Ok(Rev::Tag(s.to_string()));
        }
        Err(help())
    }
}

/// `""`, `~`, `~N`, `^`, `^^`…: the part after `HEAD`.
fn parse_back(rest: &str) -> Option<Rev> {
    if rest.is_empty() {
        return Some(Rev::Back(0));
    }
    if let Some(n) = rest.strip_prefix('~') {
        return if n.is_empty() {
            Some(Rev::Back(1))
        } else {
            n.parse().ok().map(Rev::Back)
        };
    }
    if rest.chars().all(|c| c == '^') {
        return u32::try_from(rest.len()).ok().map(Rev::Back);
    }
    None
}

/// What a revision is resolved against.
pub struct Lookup<'a> {
    /// The service whose history is searched.
    pub svc: &'a Service,
    /// Its mirror, deepened when a commit is older than the fetch depth.
    pub mirror: &'a Mirror,
    /// Its releases, which hold commits even when the mirror is gone.
    pub releases: &'a Releases,
    /// The deployed commit, which `HEAD~N` counts from.
    pub deployed: Option<CommitId>,
}

impl Lookup<'_> {
    /// The commit `rev` names. Uses the network only when neither the kept
    /// releases nor the mirror have it, and for a tag always: a tag is the
    /// server's name, which it may move or delete, so only the server's
    /// answer now says what it names.
    pub fn resolve(&self, rev: &Rev) -> Result<Oid> {
        if let Rev::Tag(t) = rev {
            return self.tag(t);
        }
        if let Some(oid) = self.local(rev)? {
            return Ok(oid);
        }
        self.remote(rev).with_context(|| {
            format!(
                "{} is not available offline (not in the kept releases or the local mirror)",
                describe(rev)
            )
        })
    }

    fn local(&self, rev: &Rev) -> Result<Option<Oid>> {
        match rev {
            Rev::Hash(h) => match self.in_releases(h)? {
                Some(oid) => Ok(Some(oid)),
                None => Ok(self.repo().and_then(|r| by_hash(&r, h))),
            },
            Rev::Back(n) => {
                let from = self.deployed_oid()?;
                Ok(self.repo().and_then(|r| walk_back(&r, from, *n)))
            }
            Rev::Tag(t) => Ok(self.repo().and_then(|r| {
                r.find_reference(&format!("refs/tags/{t}"))
                    .ok()?
                    .peel_to_commit()
                    .ok()
                    .map(|c| c.id())
            })),
        }
    }

    /// The commit the server names `tag` now. When it cannot be asked, the
    /// error says what the tag named at the last fetch, which the operator
    /// can roll back to by hash offline.
    fn tag(&self, tag: &str) -> Result<Oid> {
        let cached = self.local(&Rev::Tag(tag.to_string()))?;
        let asked = self
            .mirror
            .fetch_tag(tag, &self.svc.credentials, self.svc.timeout);
        match (asked, cached) {
            (Ok(Some(oid)), _) => Ok(oid),
            (Ok(None), _) => bail!("tag {tag:?} does not exist on {}", self.svc.upstream.url),
            (Err(e), Some(was)) => Err(e.context(format!(
                "tag {tag:?} must be read from {} and could not be; it named {} when last \
                     fetched: roll back to that commit to use it without the server",
                self.svc.upstream.url,
                CommitId::from(was).short()
            ))),
            (Err(e), None) => Err(e),
        }
    }

    /// Fetches more history (or the tag) until `rev` is found.
    fn remote(&self, rev: &Rev) -> Result<Oid> {
        let (creds, timeout) = (&self.svc.credentials, self.svc.timeout);
        for depth in DEEPEN_STEPS {
            self.mirror.deepen(depth, creds, timeout)?;
            let repo = self.mirror.open()?;
            let found = match rev {
                Rev::Hash(h) => by_hash(&repo, h),
                Rev::Back(n) => walk_back(&repo, self.deployed_oid()?, *n),
                Rev::Tag(_) => None,
            };
            if let Some(oid) = found {
                return Ok(oid);
            }
        }
        bail!(
            "{} is not in the history of branch {:?} on {}",
            describe(rev),
            self.svc.branch,
            self.svc.upstream.url
        )
    }

    fn repo(&self) -> Option<Repository> {
        self.mirror.open().ok()
    }

    fn deployed_oid(&self) -> Result<Oid> {
        let Some(d) = self.deployed else {
            bail!("nothing is deployed yet, so HEAD~N has nothing to count from")
        };
        Ok(d.oid())
    }

    /// A kept release whose commit starts with `prefix`.
    fn in_releases(&self, prefix: &str) -> Result<Option<Oid>> {
        let mut commits: Vec<String> = self
            .releases
            .list()?
            .into_iter()
            .filter_map(|name| name.split('-').next().map(str::to_string))
            .filter(|c| c.starts_with(prefix))
            .collect();
        commits.sort();
        commits.dedup();
        match commits.as_slice() {
            [] => Ok(None),
            [one] => {
                Ok(Some(Oid::from_str(one).with_context(|| {
                    format!("reading release commit {one}")
                })?))
            }
            many => bail!(
                "{prefix} is ambiguous: it matches {} kept releases",
                many.len()
            ),
        }
    }
}

fn describe(rev: &Rev) -> String {
    match rev {
        Rev::Back(n) => format!("HEAD~{n}"),
        Rev::Hash(h) => format!("commit {h}"),
        Rev::Tag(t) => format!("tag {t}"),
    }
}

fn by_hash(repo: &Repository, hash: &str) -> Option<Oid> {
    repo.revparse_single(hash)
        .ok()?
        .peel_to_commit()
        .ok()
        .map(|c| c.id())
}

/// `n` first-parent steps back from `from`; `None` when the history stops
/// first (the shallow boundary, or the root).
fn walk_back(repo: &Repository, from: Oid, n: u32) -> Option<Oid> {
    let mut c = repo.find_commit(from).ok()?;
    for _ in 0..n {
        c = c.parent(0).ok()?;
    }
    Some(c.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(Rev::parse("HEAD~1"), Ok(Rev::Back(1)));
        assert_eq!(Rev::parse("HEAD~12"), Ok(Rev::Back(12)));
        assert_eq!(Rev::parse("HEAD^^"), Ok(Rev::Back(2)));
        assert_eq!(Rev::parse("HEAD~"), Ok(Rev::Back(1)));
        assert_eq!(Rev::parse("HEAD"), Ok(Rev::Back(0)));
        assert_eq!(Rev::parse("a1B2c3d"), Ok(Rev::Hash("a1b2c3d".into())));
        assert_eq!(Rev::parse("v1.2.0"), Ok(Rev::Tag("v1.2.0".into())));
        for bad in ["", "HEAD~x", "HEAD@{1}", "-rf", "a..b", "HEAD~-1"] {
            let e = Rev::parse(bad).expect_err(bad);
            assert!(e.contains("not a revision"), "{e}");
        }
    }
}
