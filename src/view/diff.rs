//! `provision diff`: unified diffs of what differs from the deployed commit
//! on this machine, or of what the next pass would bring from upstream.
//!
//! Paths are shown where the service reads them (`a/etc/grafana/x.ini`),
//! not where the release lives, since that is what the operator knows.
//! Both diffs read Git objects from the local mirror only: no network.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use git2::{DiffOptions, Oid, Patch, Repository, Tree};

use crate::config::Service;
use crate::git::mirror::Mirror;
use crate::model::commit::CommitId;
use crate::model::place::Place;
use crate::observe::{self, MountState};
use crate::store::drift::{self, Change};
use crate::store::layout;
use crate::store::manifest::Kind;
use crate::store::state::Deployed;
use crate::store::state::StateDir;
use crate::util::{dirfd, human_size};

/// The diff of local changes against the deployed commit ("" when none).
pub fn local(svc: &Service, place: &Place) -> Result<String> {
    let state = StateDir::at(place).load()?;
    let Some(deployed) = &state.deployed else {
        return Ok(String::new());
    };
    let mut out = mount_lines(svc, place, deployed);
    let repo = Mirror::of(svc, place).open().ok();
    let drifted = observe::drift(svc, place, deployed, repo.as_ref())?;
    if drifted.is_empty() {
        return Ok(out);
    }
    let repo = repo.context("the local mirror is missing; run `provision sync` to fetch it")?;
    let commit = deployed.commit.oid();
    let releases = layout::releases(place);
    let manifest = releases.manifest(&deployed.release, Some(&repo), commit, &svc.dirs)?;
    let release = dirfd::Dir::open(&releases.path(&deployed.release))?;
    for d in &drifted {
        let label = drift::local_path(&svc.dirs, &d.rel);
        let expected = manifest.get(&d.rel).filter(|e| e.kind != Kind::Dir);
        if expected.is_some_and(|e| e.kind == Kind::Secret) {
            out.push_str(&secret_line(&label, d.change));
            continue;
        }
        let old = match expected {
            Some(e) if d.change != Change::Added => Some(blob(&repo, e.oid)?),
            _ => None,
        };
        let local = match d.change {
            Change::Deleted => None,
            _ => drift::parent_of(&release, &d.rel)?,
        };
        let new = match &local {
            Some((dir, name)) => read_local(dir, name, svc.limits.max_file_size)?,
            None => None,
        };
        let new = match new {
            Some(Local::Content(data)) => Some(data),
            Some(Local::Unread(why)) => {
                let _ = writeln!(out, "{}: {why}: not shown", label.display());
                continue;
            }
            None => None,
        };
        out.push_str(&patch(&label, old.as_deref(), new.as_deref())?);
        let dir = svc.dirs.iter().find(|x| d.rel.starts_with(&x.link));
        if let (Some(e), Change::Modified, Some((parent, name)), Some(dir)) =
            (expected, d.change, &local, dir)
        {
            out.push_str(&mode_note(&label, e.kind.perm(dir), e.kind, parent, name));
        }
    }
    Ok(out)
}

/// A line per mount that does not show the deployed release: the service
/// then reads something else than every file of the diff says, so a
/// missing or foreign mount is a difference too.
fn mount_lines(svc: &Service, place: &Place, deployed: &Deployed) -> String {
    let short = deployed.commit.short();
    let mut out = String::new();
    for m in observe::mounts(svc, place, deployed) {
        let what = match m.state {
            MountState::Ok => continue,
            MountState::Missing => format!(
                "not mounted: the service sees the directory underneath, not the files of {short}"
            ),
            MountState::Other => format!(
                "shows something other than the release of {short} (another release, a mount made by hand, or the wrong read-only flag)"
            ),
            MountState::Error(e) => format!("cannot be checked: {e}"),
        };
        let _ = writeln!(out, "mount {}: {what}", m.local.display());
    }
    out
}

/// The diff from the deployed commit to the upstream head as of the last
/// fetch, limited to what the service mounts ("" when none).
pub fn upstream(svc: &Service, place: &Place) -> Result<String> {
    let state = StateDir::at(place).load()?;
    let up = state
        .upstream
        .as_ref()
        .context("upstream has not been fetched yet; run `provision sync`")?;
    let repo = Mirror::of(svc, place)
        .open()
        .context("the local mirror is missing; run `provision sync` to fetch it")?;
    let tree_of = |commit: CommitId| -> Result<Tree<'_>> {
        repo.find_commit(commit.oid())
            .and_then(|c| c.tree())
            .with_context(|| format!("commit {commit} is not in the local mirror"))
    };
    let new = tree_of(up.commit)?;
    let old = state
        .deployed
        .as_ref()
        .map(|d| tree_of(d.commit))
        .transpose()?;
    let mut out = String::new();
    for d in &svc.dirs {
        let old_id = old
            .as_ref()
            .and_then(|t| t.get_path(Path::new(&d.link)).ok());
        let new_id = new.get_path(Path::new(&d.link)).ok();
        if d.file && d.decrypt {
            if old_id.as_ref().map(|e| e.id()) != new_id.as_ref().map(|e| e.id()) {
                let change = match (&old_id, &new_id) {
                    (None, _) => Change::Added,
                    (_, None) => Change::Deleted,
                    _ => Change::Modified,
                };
                out.push_str(&secret_line(&d.local, change));
            }
            continue;
        }
        if d.file {
            let label = d.local.clone();
            let content = |e: Option<git2::TreeEntry<'_>>| -> Result<Option<Vec<u8>>> {
                e.map(|e| blob(&repo, e.id())).transpose()
            };
            if old_id.as_ref().map(|e| e.id()) != new_id.as_ref().map(|e| e.id()) {
                out.push_str(&patch(
                    &label,
                    content(old_id)?.as_deref(),
                    content(new_id)?.as_deref(),
                )?);
            }
            continue;
        }
        let subtree = |e: Option<git2::TreeEntry<'_>>| -> Option<Tree<'_>> {
            e.and_then(|e| repo.find_tree(e.id()).ok())
        };
        let (a, b) = (subtree(old_id), subtree(new_id));
        let diff = repo
            .diff_tree_to_tree(a.as_ref(), b.as_ref(), Some(&mut DiffOptions::new()))
            .context("comparing trees")?;
        for delta in diff.deltas() {
            let rel = delta.new_file().path().or(delta.old_file().path());
            let label = rel.map_or(d.local.clone(), |r| d.local.join(r));
            if let Some(plain) = rel.and_then(|r| secret_path(d, r)) {
                let change = match (delta.old_file().exists(), delta.new_file().exists()) {
                    (false, _) => Change::Added,
                    (_, false) => Change::Deleted,
                    _ => Change::Modified,
                };
                out.push_str(&secret_line(&d.local.join(plain), change));
                continue;
            }
            let content = |f: git2::DiffFile<'_>| -> Result<Option<Vec<u8>>> {
                if f.exists() {
                    blob(&repo, f.id()).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (o, n) = (content(delta.old_file())?, content(delta.new_file())?);
            out.push_str(&patch(&label, o.as_deref(), n.as_deref())?);
        }
    }
    Ok(out)
}

/// The path an `.age` file of a `decrypt` dir is deployed as (the name
/// without `.age`); `None` for any other file.
fn secret_path(d: &crate::config::Dir, rel: &Path) -> Option<std::path::PathBuf> {
    if !d.decrypt {
        return None;
    }
    let name = rel.file_name()?.as_bytes();
    let plain = name.strip_suffix(b".age").filter(|p| !p.is_empty())?;
    Some(rel.with_file_name(OsStr::from_bytes(plain)))
}

/// What a diff says of a decrypted file: that it changed, never how (its
/// content is a secret, and its ciphertext tells nothing either).
fn secret_line(label: &Path, change: Change) -> String {
    let what = match change {
        Change::Added => "is new",
        Change::Deleted => "is deleted",
        _ => "differs",
    };
    format!("secret {} {what}\n", label.display())
}

fn blob(repo: &Repository, oid: Oid) -> Result<Vec<u8>> {
    repo.find_blob(oid)
        .map(|b| b.content().to_vec())
        .with_context(|| {
            format!("object {oid} is not in the local mirror; run `provision sync` to fetch it")
        })
}

/// What a diff shows of a path on this machine.
enum Local {
    /// A file's content or a symlink's target.
    Content(Vec<u8>),
    /// Why it is not read: a FIFO (reading would block), a device, or a
    /// file larger than any release may hold (a sparse file can claim
    /// terabytes).
    Unread(String),
}

/// The content of the file `name` of `dir`, or a symlink's target; `None`
/// for a directory or something gone. Read through the descriptor, never
/// through a symlink, so the diff never shows a file outside the release.
fn read_local(dir: &dirfd::Dir, name: &OsStr, max_size: u64) -> Result<Option<Local>> {
    let Some(md) = dir.meta(name)? else {
        return Ok(None);
    };
    if md.is_dir() {
        return Ok(None);
    }
    if md.is_symlink() {
        return Ok(Some(Local::Content(
            dir.readlink(name)?.as_bytes().to_vec(),
        )));
    }
    if !md.is_file() {
        return Ok(Some(Local::Unread(format!(
            "{}, not a file",
            md.kind_name()
        ))));
    }
    if md.size > max_size {
        return Ok(Some(Local::Unread(format!(
            "{}, larger than max_file_size ({})",
            human_size(md.size),
            human_size(max_size)
        ))));
    }
    let path = dir.path().join(name);
    let mut data = Vec::new();
    dir.open_file(Path::new(name))?
        .take(max_size + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", path.display()))?;
    if data.len() as u64 > max_size {
        return Ok(Some(Local::Unread(format!(
            "grew past max_file_size ({}) while it was read",
            human_size(max_size)
        ))));
    }
    Ok(Some(Local::Content(data)))
}

/// One file's unified diff, `git diff` style, with `label` as its path.
fn patch(label: &Path, old: Option<&[u8]>, new: Option<&[u8]>) -> Result<String> {
    let name = label.to_string_lossy();
    let name = name.trim_start_matches('/');
    let mut opts = DiffOptions::new();
    let mut p = Patch::from_buffers(
        old.unwrap_or_default(),
        old.map(|_| Path::new(name)),
        new.unwrap_or_default(),
        new.map(|_| Path::new(name)),
        Some(&mut opts),
    )
    .with_context(|| format!("diffing {}", label.display()))?;
    let mut text = String::from_utf8_lossy(&p.to_buf()?).into_owned();
    // Buffers carry no notion of a missing side: say so as `git diff` does,
    // so that the output applies with `git apply` or `patch`.
    if old.is_none() {
        text = text.replacen(&format!("--- a/{name}\n"), "--- /dev/null\n", 1);
    }
    if new.is_none() {
        text = text.replacen(&format!("+++ b/{name}\n"), "+++ /dev/null\n", 1);
    }
    if text.is_empty() && old.is_some() != new.is_some() {
        let what = if old.is_none() { "new" } else { "deleted" };
        let _ = writeln!(text, "diff --git a/{name} b/{name}\n{what} empty file");
    }
    Ok(text)
}

/// A line about changed permissions, which a content diff does not show.
fn mode_note(label: &Path, expected: u32, kind: Kind, dir: &dirfd::Dir, name: &OsStr) -> String {
    if !matches!(kind, Kind::File | Kind::Exec) {
        return String::new();
    }
    match dir.meta(name) {
        Ok(Some(md)) if md.is_file() && md.perm != expected => format!(
            "mode of {}: {:o} configured, {:o} here\n",
            label.display(),
            expected,
            md.perm
        ),
        _ => String::new(),
    }
}
