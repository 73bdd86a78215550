//! git's dumb HTTP protocol: a bare repository served as static files (by
//! nginx, object storage, a CDN) after `git update-server-info`. There is
//! no upload-pack to ask: the client reads `info/refs`, then fetches each
//! object it lacks, loose (`objects/ab/cdef…`, zlib) or from the packs that
//! `objects/info/packs` lists, whole. Every byte counts against the
//! service's `max_fetch_bytes`, as for any server.
//!
//! A no-op poll is one conditional GET of `info/refs` (`If-None-Match`,
//! `If-Modified-Since`), answered `304 Not Modified` by a static server.

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use git2::{ObjectType, Oid, Repository};

use crate::git::info_refs::{refs, Refs, Validators};
use crate::git::upload_pack::{Bounds, DumbServer};
use crate::util::http;

/// Most bytes of one object or pack index read.
const MAX_INDEX: u64 = 256 << 20;

/// A dumb server and the session's bounds.
pub struct Client<'a> {
    server: &'a DumbServer,
    bounds: &'a Bounds,
    /// Its packs, once `objects/info/packs` was read: name → the objects
    /// its index lists (read when first needed).
    packs: Option<Vec<(String, Option<HashSet<Oid>>)>>,
}

impl<'a> Client<'a> {
    /// A client of `server` within `bounds`.
    pub fn new(server: &'a DumbServer, bounds: &'a Bounds) -> Client<'a> {
        Client {
            server,
            bounds,
            packs: None,
        }
    }

    /// GET `rel` under the repository; `None` for a 404.
    fn get(&self, rel: &str, headers: &[String]) -> Result<Option<http::Response>> {
        let target = format!("{}/{rel}", self.server.target.path);
        let mut h: Vec<String> = headers.to_vec();
        h.extend(self.server.auth.iter().cloned());
        let resp = http::send(
            &self.server.target.endpoint,
            &http::Request {
                method: "GET",
                target: &target,
                headers: h,
                body: &[],
                budget: Some(&self.bounds.budget),
            },
            self.bounds.connect,
            self.bounds.deadline,
        )?;
        match resp.status {
            200 | 304 => Ok(Some(resp)),
            404 => Ok(None),
            s => Err(crate::git::upload_pack::HttpStatus {
                status: s,
                request: format!("GET {target}"),
                retry_after: resp.retry_after,
            }
            .into()),
        }
    }

    /// Fetches `head` and what it reaches, `depth` commits deep (0: all),
    /// into `repo`, stopping at commits the mirror already holds; returns
    /// the commits whose parents were left out (the shallow boundary).
    pub fn fetch(&mut self, repo: &Repository, head: Oid, depth: u32) -> Result<Vec<Oid>> {
        let odb = repo.odb().context("opening the mirror's objects")?;
        let mut shallow = Vec::new();
        let mut commits: VecDeque<(Oid, u32)> = VecDeque::from([(head, 1)]);
        let mut seen = HashSet::new();
        while let Some((id, generation)) = commits.pop_front() {
            if !seen.insert(id) || (odb.exists(id) && complete(repo, id)) {
                continue;
            }
            self.object(&odb, id)?;
            let commit = repo
                .find_commit(id)
                .with_context(|| format!("reading commit {id} from the server"))?;
            self.tree(repo, &odb, commit.tree_id())?;
            if depth > 0 && generation >= depth {
                if commit.parent_count() > 0 {
                    shallow.push(id);
                }
                continue;
            }
            for p in commit.parent_ids() {
                commits.push_back((p, generation + 1));
            }
        }
        Ok(shallow)
    }

    /// Fetches tree `id` and everything below it that the mirror lacks.
    fn tree(&mut self, repo: &Repository, odb: &git2::Odb<'_>, id: Oid) -> Result<()> {
        let mut trees = vec![id];
        while let Some(t) = trees.pop() {
            if !odb.exists(t) {
                self.object(odb, t)?;
            }
            let tree = repo
                .find_tree(t)
                .with_context(|| format!("reading tree {t}"))?;
            for e in tree.iter() {
                match e.kind() {
                    Some(ObjectType::Tree) => trees.push(e.id()),
                    Some(ObjectType::Blob) if !odb.exists(e.id()) => self.object(odb, e.id())?,
                    // Submodule commits are not fetched, as git does not.
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Puts object `id` into the mirror: loose when the server has it so,
    /// else the pack that holds it, whole.
    fn object(&mut self, odb: &git2::Odb<'_>, id: Oid) -> Result<()> {
        let hex = id.to_string();
        if let Some(resp) = self.get(&format!("objects/{}/{}", &hex[..2], &hex[2..]), &[])? {
            let mut raw = Vec::new();
            flate2::read::ZlibDecoder::new(resp.body.take(MAX_INDEX))
                .read_to_end(&mut raw)
                .with_context(|| format!("inflating object {id}"))?;
            let nul = raw
                .iter()
                .position(|b| *b == 0)
                .context("a loose object without a header")?;
            let header = String::from_utf8_lossy(&raw[..nul]).into_owned();
            let kind = match header.split(' ').next() {
                Some("commit") => ObjectType::Commit,
                Some("tree") => ObjectType::Tree,
                Some("blob") => ObjectType::Blob,
                Some("tag") => ObjectType::Tag,
                _ => bail!("object {id} has the unknown header {header:?}"),
            };
            let written = odb
                .write(kind, &raw[nul + 1..])
                .with_context(|| format!("writing object {id}"))?;
            if written != id {
                bail!("the server sent {written} as object {id}");
            }
            return Ok(());
        }
        let pack = self.pack_holding(id)?.with_context(|| {
            format!("the server has object {id} neither loose nor in a pack (run `git update-server-info` on it)")
        })?;
        let resp = self
            .get(&format!("objects/pack/{pack}.pack"), &[])?
            .with_context(|| format!("the server lists pack {pack} but does not serve it"))?;
        let mut writer = odb.packwriter().context("starting a pack in the mirror")?;
        std::io::copy(&mut resp.body.take(self.bounds.budget.max()), &mut writer)
            .with_context(|| format!("downloading pack {pack}"))?;
        writer.flush().context("writing the pack")?;
        writer
            .commit()
            .with_context(|| format!("indexing pack {pack}"))?;
        if !odb.exists(id) {
            bail!("pack {pack} does not hold object {id}, although its index says so");
        }
        Ok(())
    }

    /// The pack whose index lists `id`, reading the list and the indexes
    /// as needed.
    fn pack_holding(&mut self, id: Oid) -> Result<Option<String>> {
        if self.packs.is_none() {
            let list = match self.get("objects/info/packs", &[])? {
                Some(mut r) => {
                    let mut text = String::new();
                    r.body
                        .by_ref()
                        .take(1 << 20)
                        .read_to_string(&mut text)
                        .context("reading objects/info/packs")?;
                    text.lines()
                        .filter_map(|l| l.strip_prefix("P "))
                        .filter_map(|p| p.trim().strip_suffix(".pack"))
                        .map(|p| (p.to_string(), None))
                        .collect()
                }
                None => Vec::new(),
            };
            self.packs = Some(list);
        }
        let names: Vec<String> = self
            .packs
            .iter()
            .flatten()
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let known = self
                .packs
                .iter()
                .flatten()
                .find(|(n, _)| *n == name)
                .and_then(|(_, ids)| ids.as_ref().map(|s| s.contains(&id)));
            let holds = match known {
                Some(h) => h,
                None => {
                    let ids = self.index(&name)?;
                    let holds = ids.contains(&id);
                    if let Some(e) = self.packs.iter_mut().flatten().find(|(n, _)| *n == name) {
                        e.1 = Some(ids);
                    }
                    holds
                }
            };
            if holds {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// The objects pack `name`'s index (version 2) lists.
    fn index(&self, name: &str) -> Result<HashSet<Oid>> {
        let mut resp = self
            .get(&format!("objects/pack/{name}.idx"), &[])?
            .with_context(|| format!("the server lists pack {name} without its index"))?;
        let mut raw = Vec::new();
        resp.body
            .by_ref()
            .take(MAX_INDEX)
            .read_to_end(&mut raw)
            .with_context(|| format!("reading the index of {name}"))?;
        if raw.len() < 8 + 256 * 4
            || raw[..4] != [0xff, b't', b'O', b'c']
            || raw[4..8] != [0, 0, 0, 2]
        {
            bail!("the index of pack {name} is not a version 2 pack index");
        }
        let count = u32::from_be_bytes([
            raw[8 + 255 * 4],
            raw[9 + 255 * 4],
            raw[10 + 255 * 4],
            raw[11 + 255 * 4],
        ]) as usize;
        let start = 8 + 256 * 4;
        let ids = raw
            .get(start..start + count * 20)
            .with_context(|| format!("the index of pack {name} is cut short"))?;
        ids.chunks(20)
            .map(|c| {
                Oid::from_bytes(c).with_context(|| format!("an object id in the index of {name}"))
            })
            .collect()
    }
}

/// Whether `id`'s commit and its tree are in the mirror (a commit a
/// previous fetch brought, with what it reaches).
fn complete(repo: &Repository, id: Oid) -> bool {
    repo.find_commit(id).is_ok_and(|c| c.tree().is_ok())
}

/// A conditional GET of `info/refs`: `None` when it has not changed
/// (304), else its refs and the new validators.
pub fn poll(client: &Client<'_>, last: &Validators) -> Result<Option<(Refs, Validators)>> {
    let mut resp = client
        .get("info/refs", &last.headers())?
        .context("the server has no info/refs (run `git update-server-info` on it)")?;
    if resp.status == 304 {
        return Ok(None);
    }
    let mut text = String::new();
    resp.body
        .by_ref()
        .take(16 << 20)
        .read_to_string(&mut text)
        .context("reading info/refs")?;
    let refs = refs(&text).context("the server's info/refs is not a list of refs")?;
    Ok(Some((refs, Validators::of(&resp))))
}

/// The commit `refs` name `refname`.
pub fn find(refs: &[(Oid, String)], refname: &str) -> Option<Oid> {
    refs.iter().find(|(_, n)| n == refname).map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_refs_is_read_and_anything_else_is_not() {
        let text = "0123456789abcdef0123456789abcdef01234567\trefs/heads/main\n\
                    89abcdef0123456789abcdef0123456789abcdef\trefs/tags/v1\n";
        let r = refs(text).expect("refs");
        assert_eq!(
            find(&r, "refs/heads/main")
                .map(|o| o.to_string())
                .as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(refs("<html>not found</html>"), None);
        let v = Validators {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Thu, 03 Dec 2026 17:00:00 GMT".into()),
        };
        assert_eq!(Validators::parse(&v.to_text()), v);
    }

    /// A file served in the second it was written may change again within
    /// that second without another `Last-Modified`: its validators are not
    /// kept, so the next poll asks in full.
    #[test]
    fn validators_of_a_file_written_in_the_second_served_are_not_kept() {
        let resp = |lm: &str| http::Response {
            status: 200,
            content_type: String::new(),
            location: None,
            retry_after: None,
            etag: Some("\"65f-1a\"".into()),
            last_modified: Some(lm.into()),
            date: Some("Thu, 03 Dec 2026 18:00:00 GMT".into()),
            body: Box::new(std::io::empty()),
        };
        assert_eq!(
            Validators::of(&resp("Thu, 03 Dec 2026 18:00:00 GMT")),
            Validators::default()
        );
        let kept = Validators::of(&resp("Thu, 03 Dec 2026 17:59:00 GMT"));
        assert_eq!(kept.etag.as_deref(), Some("\"65f-1a\""));
    }
}
