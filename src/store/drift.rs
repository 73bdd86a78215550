//! Drift: how the files of the deployed release differ, on this machine,
//! from the commit they were written from.
//!
//! A writable release is mounted read-write, so its user edits the release
//! itself. A scan compares the disk with the release's manifest the way
//! Git's index does: a file whose size, times and inode are unchanged is not
//! read; any other is hashed and compared by blob id. An edit always changes
//! ctime (which no user can set back), and editors that replace a file
//! change its inode, so the shortcut misses nothing.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::{ObjectType, Oid, Repository};
use sha1::{Digest, Sha1};

use crate::config::Dir;
use crate::store::manifest::{Entry, Kind, Manifest};
use crate::util::dirfd::{self, Meta};

pub use crate::model::record::Change;

/// One drifted path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drifted {
    /// Relative to the release directory (it starts with the `link`).
    pub rel: PathBuf,
    /// How it differs.
    pub change: Change,
}

/// Compares the release at `release` with its manifest, for every `dirs`
/// entry. Paths are reported in release order.
///
/// The scan never leaves the release: it descends through directory
/// descriptors and follows no symlink. It fails closed: a path it cannot
/// read (a symlink on the way, a name too long, an I/O error) is reported
/// as modified, never taken as clean.
pub fn scan(release: &Path, manifest: &Manifest, dirs: &[Dir]) -> Result<Vec<Drifted>> {
    let root = dirfd::Dir::open(release)?;
    let mut out = Vec::new();
    for d in dirs {
        let rel = PathBuf::from(&d.link);
        let mut seen = BTreeSet::new();
        let mut s = Scan {
            dir: d,
            manifest,
            out: &mut out,
            seen: &mut seen,
        };
        match parent_of(&root, &rel) {
            Ok(Some((parent, name))) => s.path(&parent, &name, &rel),
            Ok(None) => {}
            Err(_) => s.push(&rel, Change::Modified),
        }
        for (p, e) in manifest.under(&rel) {
            if !seen.contains(p) && reportable_deletion(manifest, p, e) {
                out.push(Drifted {
                    rel: p.clone(),
                    change: Change::Deleted,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The directory holding `rel` inside the release, opened one component
/// at a time without following symlinks (so no depth is too deep), and
/// `rel`'s last name; `None` when a directory on the way is missing.
pub fn parent_of(root: &dirfd::Dir, rel: &Path) -> Result<Option<(dirfd::Dir, OsString)>> {
    let name = rel
        .file_name()
        .with_context(|| format!("{} has no name", rel.display()))?
        .to_os_string();
    let mut dir = root.dir(Path::new("."))?;
    for c in rel.parent().into_iter().flat_map(Path::components) {
        match dir.dir_opt(Path::new(c.as_os_str()))? {
            Some(d) => dir = d,
            None => return Ok(None),
        }
    }
    Ok(Some((dir, name)))
}

/// A deleted directory is reported through its files; only an empty one
/// (a submodule's) is reported itself.
fn reportable_deletion(manifest: &Manifest, p: &Path, e: &Entry) -> bool {
    e.kind != Kind::Dir || manifest.under(p).nth(1).is_none()
}

/// How deep a scan descends. Each level holds a descriptor and a stack
/// frame, and a user of a writable release can make a tree of any depth:
/// far deeper than any repository's, and still well below the usual limit
/// of 1024 open files.
const MAX_SCAN_DEPTH: usize = 256;

struct Scan<'a> {
    /// The `dirs` entry scanned, for the modes it expects.
    dir: &'a Dir,
    manifest: &'a Manifest,
    out: &'a mut Vec<Drifted>,
    seen: &'a mut BTreeSet<PathBuf>,
}

impl Scan<'_> {
    /// Compares the entry `name` of `parent` (at `rel` in the release);
    /// what cannot be read counts as modified.
    fn path(&mut self, parent: &dirfd::Dir, name: &OsStr, rel: &Path) {
        if self.compare(parent, name, rel).is_err() {
            self.seen.insert(rel.to_path_buf());
            self.push(rel, Change::Modified);
        }
    }

    fn compare(&mut self, parent: &dirfd::Dir, name: &OsStr, rel: &Path) -> Result<()> {
        let Some(md) = parent.meta(name)? else {
            return Ok(());
        };
        let expected = self.manifest.get(rel);
        if expected.is_some() {
            self.seen.insert(rel.to_path_buf());
        }
        match expected {
            None if md.is_dir() => {
                let before = self.out.len();
                self.children(parent, name, rel)?;
                if self.out.len() == before {
                    self.push(rel, Change::Added);
                }
            }
            None => self.push(rel, Change::Added),
            Some(e) if e.kind == Kind::Dir && md.is_dir() => {
                if md.perm != e.kind.perm(self.dir) {
                    self.push(rel, Change::Modified);
                }
                self.children(parent, name, rel)?;
            }
            Some(e) => {
                if !same(e, &md, parent, name, self.dir)? {
                    self.push(rel, Change::Modified);
                }
            }
        }
        Ok(())
    }

    fn children(&mut self, parent: &dirfd::Dir, name: &OsStr, rel: &Path) -> Result<()> {
        if rel.components().count() >= MAX_SCAN_DEPTH {
            // What lies below is not looked at, so it is neither clean nor
            // deleted: the directory itself is reported as changed.
            let below: Vec<PathBuf> = self.manifest.under(rel).map(|(p, _)| p.clone()).collect();
            self.seen.extend(below);
            self.push(rel, Change::Modified);
            return Ok(());
        }
        let dir = parent.dir(Path::new(name))?;
        for e in dir.entries()? {
            self.path(&dir, &e, &rel.join(&e));
        }
        Ok(())
    }

    fn push(&mut self, rel: &Path, change: Change) {
        self.out.push(Drifted {
            rel: rel.to_path_buf(),
            change,
        });
    }
}

/// Whether the entry `name` of `parent` (with metadata `md`) still is `e`,
/// with the modes `d` gives.
fn same(e: &Entry, md: &Meta, parent: &dirfd::Dir, name: &OsStr, d: &Dir) -> Result<bool> {
    let kind_ok = match e.kind {
        Kind::File | Kind::Exec | Kind::Secret => md.is_file(),
        Kind::Symlink => md.is_symlink(),
        Kind::Dir => md.is_dir(),
    };
    if !kind_ok {
        return Ok(false);
    }
    if e.kind != Kind::Symlink && md.perm != e.kind.perm(d) {
        return Ok(false);
    }
    if e.unchanged(md) {
        return Ok(true);
    }
    if e.kind != Kind::Symlink && e.size_differs(md) {
        // A file of another size is another file: no need to read it
        // (which, for a huge sparse file, would take hours).
        return Ok(false);
    }
    Ok(blob_id(parent, name, e.kind)? == e.oid)
}

/// The Git blob id of the file or symlink `name` in `dir`, read through
/// the descriptor (never through a symlink).
pub fn blob_id(dir: &dirfd::Dir, name: &OsStr, kind: Kind) -> Result<Oid> {
    if kind == Kind::Symlink {
        let target = dir.readlink(name)?;
        return Oid::hash_object(ObjectType::Blob, target.as_bytes())
            .with_context(|| format!("hashing {}", dir.path().join(name).display()));
    }
    let mut f = dir.open_file(Path::new(name))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading {}", dir.path().join(name).display()))?
        .len();
    let mut h = Sha1::new();
    h.update(format!("blob {size}\0").as_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", dir.path().join(name).display()))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        h.update(&buf[..n]);
    }
    if read != size {
        bail!(
            "{} changed while it was read",
            dir.path().join(name).display()
        );
    }
    Oid::from_bytes(&h.finalize()).context("making a blob id")
}

/// Where `rel` (a release path) appears on this machine, through the mount
/// of the `dirs` entry that contains it.
pub fn local_path(dirs: &[Dir], rel: &Path) -> PathBuf {
    for d in dirs {
        if let Ok(rest) = rel.strip_prefix(&d.link) {
            return if rest.as_os_str().is_empty() {
                d.local.clone()
            } else {
                d.local.join(rest)
            };
        }
    }
    rel.to_path_buf()
}

/// Whether deploying `target` keeps every drifted file as it is now: each
/// local edit is exactly what `target` has (the edit was committed upstream).
pub fn adopted_by(
    repo: &Repository,
    target: Oid,
    release: &Path,
    drifted: &[Drifted],
    dirs: &[Dir],
) -> Result<bool> {
    let tree = repo
        .find_commit(target)
        .and_then(|c| c.tree())
        .with_context(|| format!("reading tree of commit {target}"))?;
    let root = dirfd::Dir::open(release)?;
    for d in drifted {
        let entry = tree.get_path(&d.rel).ok();
        let kept = match (d.change, entry) {
            (Change::Deleted, None) => true,
            (Change::Deleted, Some(_)) | (_, None) => false,
            (_, Some(entry)) => {
                let kind = Kind::of_mode(entry.filemode());
                let Some(dir) = dirs.iter().find(|x| d.rel.starts_with(&x.link)) else {
                    return Ok(false);
                };
                let found = parent_of(&root, &d.rel)
                    .ok()
                    .flatten()
                    .and_then(|(p, n)| p.meta(&n).ok().flatten().map(|m| (p, n, m)));
                let blob_size = |oid: Oid| {
                    repo.odb()
                        .and_then(|odb| odb.read_header(oid))
                        .map(|(size, _)| size as u64)
                        .ok()
                };
                match found {
                    Some((_, _, md)) if kind == Kind::Dir => md.is_dir(),
                    // Another size is another file; reading it to learn
                    // that could take hours (a huge sparse file).
                    Some((_, _, md))
                        if md.is_file() && blob_size(entry.id()).is_some_and(|s| s != md.size) =>
                    {
                        false
                    }
                    Some((parent, name, md)) => {
                        let e = Entry::from_git(kind, entry.id());
                        same(&e, &md, &parent, &name, dir).unwrap_or(false)
                    }
                    None => false,
                }
            }
        };
        if !kept {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::tests::meta_of;
    use std::fs;

    fn app_dir() -> Dir {
        Dir {
            local: "/etc/app".into(),
            link: "app".into(),
            file: false,
            readonly: false,
            mode: crate::config::DEFAULT_FILE_MODE,
            group: None,
            allow_writable_parents: false,
            decrypt: false,
            secret_mode: crate::config::DEFAULT_SECRET_MODE,
        }
    }

    /// Writes `files` under `rel` (0644, directories 0755) and returns the
    /// manifest a release writer would have recorded for them.
    fn written(rel: &Path, files: &[(&str, &str)]) -> Manifest {
        let mut m = Manifest::default();
        for (name, body) in files {
            let p = rel.join(name);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, body).expect("write");
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .expect("chmod");
            let oid = Oid::hash_object(ObjectType::Blob, body.as_bytes()).expect("hash");
            m.record(Path::new(name), Kind::File, oid, &meta_of(&p));
        }
        for d in ["app", "app/sub"] {
            fs::set_permissions(
                rel.join(d),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("chmod");
            m.record(Path::new(d), Kind::Dir, Oid::zero(), &meta_of(&rel.join(d)));
        }
        m
    }

    #[test]
    fn scan_finds_modified_added_and_deleted_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rel = dir.path();
        let m = written(rel, &[("app/a", "a"), ("app/b", "b"), ("app/sub/c", "c")]);
        let dirs = [app_dir()];
        assert_eq!(scan(rel, &m, &dirs).expect("scan"), vec![]);
        fs::write(rel.join("app/a"), "edited").expect("edit");
        fs::remove_file(rel.join("app/sub/c")).expect("rm");
        fs::write(rel.join("app/new"), "n").expect("add");
        let found: Vec<(String, Change)> = scan(rel, &m, &dirs)
            .expect("scan")
            .into_iter()
            .map(|d| (local_path(&dirs, &d.rel).display().to_string(), d.change))
            .collect();
        assert_eq!(
            found,
            vec![
                ("/etc/app/a".to_string(), Change::Modified),
                ("/etc/app/new".to_string(), Change::Added),
                ("/etc/app/sub/c".to_string(), Change::Deleted),
            ]
        );
    }

    #[test]
    fn a_symlink_in_place_of_a_directory_is_drift_not_a_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rel = dir.path().join("rel");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("c"), "c").expect("write");
        let m = written(&rel, &[("app/sub/c", "c")]);
        let dirs = [app_dir()];
        assert_eq!(scan(&rel, &m, &dirs).expect("scan"), vec![]);
        fs::remove_dir_all(rel.join("app/sub")).expect("rm");
        std::os::unix::fs::symlink(&outside, rel.join("app/sub")).expect("ln");
        let found = scan(&rel, &m, &dirs).expect("scan");
        assert!(
            found.contains(&Drifted {
                rel: "app/sub".into(),
                change: Change::Modified
            }),
            "{found:?}"
        );
    }
}
