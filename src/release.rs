//! Immutable per-service releases: the files one service mounts, exactly as
//! they are in one commit.
//!
//! A release is written under a temporary name and renamed into place when
//! complete, so a release directory that exists is always whole; the host
//! side only ever mounts whole releases. A release is named after its commit
//! and a fingerprint of the service's `dirs`, so changing which paths a
//! service mounts produces a new release instead of reusing a stale one.
//!
//! Repository content is used as-is, with one exception for safety: a
//! symbolic link whose target leaves the release is refused, so a repository
//! cannot make the host mount or expose arbitrary host paths.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::{FileMode, ObjectType, Oid, Repository, Tree, TreeEntry};
use nix::unistd::{Gid, Uid};

use crate::config::Dir;
use crate::drift::{Kind, Manifest};
use crate::util::{remove_tree, sync_dir};

/// Directory of a service's releases, below its service directory.
pub const RELEASES_DIR: &str = "releases";
const TMP_PREFIX: &str = ".tmp-";
const REPLACED_PREFIX: &str = ".replaced-";
/// Directory of the releases' manifests, below the service directory.
pub const MANIFESTS_DIR: &str = "manifests";

/// Owner given to every file of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: Uid,
    pub gid: Gid,
}

impl Owner {
    /// Looks up a user name (its primary group is used).
    pub fn lookup(user: &str) -> Result<Owner> {
        let u = nix::unistd::User::from_name(user)
            .with_context(|| format!("looking up user {user:?}"))?
            .with_context(|| format!("user {user:?} does not exist on this machine"))?;
        Ok(Owner {
            uid: u.uid,
            gid: u.gid,
        })
    }
}

/// The releases of one service.
#[derive(Debug, Clone)]
pub struct Releases {
    dir: PathBuf,
    manifests: PathBuf,
}

impl Releases {
    /// Releases kept under `service_dir/releases`.
    pub fn new(service_dir: &Path) -> Releases {
        Releases {
            dir: service_dir.join(RELEASES_DIR),
            manifests: service_dir.join(MANIFESTS_DIR),
        }
    }

    /// The release name for `commit` with these `dirs`.
    pub fn name(commit: Oid, dirs: &[Dir]) -> String {
        format!("{commit}-{}", fingerprint(dirs))
    }

    /// Path of a release by name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a complete release of that name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.path(name).is_dir()
    }

    /// Writes the release of `commit` unless it exists; returns its path.
    pub fn materialize(
        &self,
        repo: &Repository,
        commit: Oid,
        dirs: &[Dir],
        owner: Option<Owner>,
    ) -> Result<PathBuf> {
        let name = Releases::name(commit, dirs);
        let dest = self.path(&name);
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.write_tmp(repo, commit, dirs, owner, &name)?;
        rename(&tmp, &dest)?;
        sync_dir(&self.dir)?;
        Ok(dest)
    }

    /// Writes the release of `commit` afresh and puts it in place of the
    /// existing one, which stays (renamed, still mounted) until
    /// [`Releases::remove_replaced`] runs after the mounts moved over: local
    /// edits to the old copy are discarded without the mounted paths ever
    /// showing a missing or half-written tree.
    pub fn rewrite(
        &self,
        repo: &Repository,
        commit: Oid,
        dirs: &[Dir],
        owner: Option<Owner>,
    ) -> Result<PathBuf> {
        let name = Releases::name(commit, dirs);
        let dest = self.path(&name);
        let tmp = self.write_tmp(repo, commit, dirs, owner, &name)?;
        if dest.exists() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            rename(
                &dest,
                &self.dir.join(format!("{REPLACED_PREFIX}{name}-{stamp}")),
            )?;
        }
        rename(&tmp, &dest)?;
        sync_dir(&self.dir)?;
        Ok(dest)
    }

    /// Deletes the copies [`Releases::rewrite`] replaced. Only call once every
    /// mount shows the current release, or a mounted tree would be emptied.
    pub fn remove_replaced(&self) -> Result<()> {
        for e in read_dir(&self.dir)? {
            if e.file_name().to_string_lossy().starts_with(REPLACED_PREFIX) {
                remove_tree(&e.path())?;
            }
        }
        Ok(())
    }

    /// Writes the release under a temporary name, with its manifest.
    fn write_tmp(
        &self,
        repo: &Repository,
        commit: Oid,
        dirs: &[Dir],
        owner: Option<Owner>,
        name: &str,
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        self.remove_partial()?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .with_context(|| format!("reading tree of commit {commit}"))?;
        let mut w = Writer {
            repo,
            root: tmp.clone(),
            release: tmp.clone(),
            link_tree: None,
            owner,
            manifest: Manifest::default(),
        };
        let written = w
            .write(&tree, commit, dirs, &tmp)
            .and_then(|()| w.manifest.write(&self.manifest_path(name)));
        if let Err(e) = written {
            // Free the space at once: on a full disk the state file and
            // the metrics that report this failure need it.
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Where the manifest of release `name` is kept: outside it, since the
    /// release itself holds repository content only.
    pub fn manifest_path(&self, name: &str) -> PathBuf {
        self.manifests.join(name)
    }

    /// The manifest of release `name` of `commit`: the one written with it,
    /// or, for a release written without one, rebuilt from `repo`.
    pub fn manifest(
        &self,
        name: &str,
        repo: Option<&Repository>,
        commit: Oid,
        dirs: &[Dir],
    ) -> Result<Manifest> {
        if let Some(m) = Manifest::read(&self.manifest_path(name))? {
            return Ok(m);
        }
        let repo = repo.with_context(|| {
            format!("release {name} has no manifest and the mirror is unavailable")
        })?;
        Manifest::from_tree(repo, commit, dirs)
    }

    /// Removes half-written releases left by an interrupted pass.
    fn remove_partial(&self) -> Result<()> {
        for e in read_dir(&self.dir)? {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                remove_tree(&e.path())?;
            }
        }
        Ok(())
    }

    /// Complete releases, newest first (by the time they were last deployed,
    /// which [`Releases::touch`] records in the directory's mtime).
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in read_dir(&self.dir)? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .with_context(|| format!("reading {}", e.path().display()))?;
            out.push((mtime, name));
        }
        out.sort_by(|a, b| b.cmp(a));
        Ok(out.into_iter().map(|(_, n)| n).collect())
    }

    /// Marks a release as just deployed, for [`Releases::prune`]'s order.
    pub fn touch(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        let now = nix::sys::time::TimeSpec::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        nix::sys::stat::utimensat(
            None,
            &path,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("touching {}", path.display()))
    }

    /// Keeps the `keep` most recently deployed releases and always `current`;
    /// deletes the rest. Returns the names removed.
    pub fn prune(&self, keep: usize, current: &str) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for (i, name) in self.list()?.into_iter().enumerate() {
            if i >= keep && name != current {
                remove_tree(&self.path(&name))?;
                removed.push(name);
            }
        }
        self.remove_orphan_manifests()?;
        Ok(removed)
    }

    /// Manifests whose release is gone (pruned, or never renamed into place).
    fn remove_orphan_manifests(&self) -> Result<()> {
        for e in read_dir(&self.manifests)? {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !self.exists(&name) {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        Ok(())
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("listing {}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// A short, stable digest of what a service mounts.
pub fn fingerprint(dirs: &[Dir]) -> String {
    let mut links: Vec<String> = dirs
        .iter()
        .map(|d| format!("{}\0{}", d.link, d.file))
        .collect();
    links.sort();
    let oid = Oid::hash_object(ObjectType::Blob, links.join("\n").as_bytes())
        .map(|o| o.to_string())
        .unwrap_or_default();
    oid.chars().take(8).collect()
}

/// Writes git objects into one temporary release directory.
struct Writer<'a> {
    repo: &'a Repository,
    /// The directory being written; while a `link` is written, that link's
    /// own directory, which is what symlinks are resolved against once it is
    /// mounted on the host.
    root: PathBuf,
    /// The release directory being written, which manifest paths are
    /// relative to.
    release: PathBuf,
    /// While a directory `link` is written, its tree: symlinks are resolved
    /// through it, following the symlinks it holds, as the kernel will.
    link_tree: Option<Oid>,
    owner: Option<Owner>,
    manifest: Manifest,
}

impl Writer<'_> {
    /// Writes every `dirs` entry of `tree` into the new release at `tmp`.
    fn write(&mut self, tree: &Tree<'_>, commit: Oid, dirs: &[Dir], tmp: &Path) -> Result<()> {
        self.mkdir(tmp)?;
        for d in dirs {
            self.link(tree, d)
                .with_context(|| format!("materializing {:?} of commit {commit}", d.link))?;
        }
        self.sync_tree(tmp)
    }

    /// Writes the `link` path of `tree` into the release at the same path.
    fn link(&mut self, tree: &Tree<'_>, d: &Dir) -> Result<()> {
        let entry = tree.get_path(Path::new(&d.link)).map_err(|_| {
            anyhow::anyhow!(
                "path {:?} does not exist in the repository (or a parent of it is not a directory)",
                d.link
            )
        })?;
        let dest = self.root.join(&d.link);
        let parent = dest.parent().context("link has a parent")?;
        self.mkdirs(parent)?;
        let what = if entry.filemode() == i32::from(FileMode::Link) {
            Some("a symbolic link (never followed)")
        } else if entry.filemode() == i32::from(FileMode::Commit) {
            Some("a submodule (its files are not in this repository)")
        } else {
            None
        };
        if let Some(what) = what {
            bail!(
                "{:?} is {what}; a link must be a directory, or a regular file with file = true",
                d.link
            );
        }
        match (entry.kind(), d.file) {
            (Some(ObjectType::Tree), false) => {
                let release_root = std::mem::replace(&mut self.root, dest.clone());
                self.link_tree = Some(entry.id());
                let r = self.tree(&entry, &dest);
                self.root = release_root;
                self.link_tree = None;
                r
            }
            (Some(ObjectType::Blob), true) if entry.filemode() != i32::from(FileMode::Link) => {
                self.entry(&entry, &dest)
            }
            (_, true) => bail!(
                "{:?} is configured with file = true but is not a regular file in the repository",
                d.link
            ),
            (_, false) => bail!(
                "{:?} is not a directory in the repository; set file = true to mount a single file",
                d.link
            ),
        }
    }

    fn tree(&mut self, entry: &TreeEntry<'_>, dest: &Path) -> Result<()> {
        let tree = self
            .repo
            .find_tree(entry.id())
            .with_context(|| format!("reading tree {}", entry.id()))?;
        self.mkdir(dest)?;
        self.record(dest, Kind::Dir, Oid::zero())?;
        let mut seen = std::collections::HashSet::new();
        for child in tree.iter() {
            let child_dest = dest.join(entry_name(child.name_bytes())?);
            if !seen.insert(child.name_bytes().to_vec()) {
                bail!("refusing duplicate tree entry {}", child_dest.display());
            }
            self.entry(&child, &child_dest)?;
        }
        Ok(())
    }

    fn entry(&mut self, entry: &TreeEntry<'_>, dest: &Path) -> Result<()> {
        let mode = entry.filemode();
        if mode == i32::from(FileMode::Tree) {
            return self.tree(entry, dest);
        }
        if mode == i32::from(FileMode::Commit) {
            // A submodule: like a plain checkout without `submodule update`.
            self.mkdir(dest)?;
            return self.record(dest, Kind::Dir, Oid::zero());
        }
        let blob = self
            .repo
            .find_blob(entry.id())
            .with_context(|| format!("reading blob {}", entry.id()))?;
        if mode == i32::from(FileMode::Link) {
            self.symlink(blob.content(), dest)?;
            return self.record(dest, Kind::Symlink, entry.id());
        }
        let perm = if mode == i32::from(FileMode::BlobExecutable) {
            0o755
        } else {
            0o644
        };
        // create_new: O_EXCL never follows a symlink nor reuses a path.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        f.write_all(blob.content())
            .with_context(|| format!("writing {}", dest.display()))?;
        f.set_permissions(fs::Permissions::from_mode(perm))
            .with_context(|| format!("setting mode of {}", dest.display()))?;
        self.chown(dest)?;
        self.record(dest, Kind::of_mode(mode), entry.id())
    }

    /// Adds a just-written path to the manifest (after its owner is set,
    /// since that changes its ctime).
    fn record(&mut self, dest: &Path, kind: Kind, oid: Oid) -> Result<()> {
        let rel = dest
            .strip_prefix(&self.release)
            .context("path inside release")?;
        self.manifest.record(rel, kind, oid, dest)
    }

    /// Creates a symlink whose target stays inside the release.
    fn symlink(&mut self, target: &[u8], dest: &Path) -> Result<()> {
        let target = Path::new(OsStr::from_bytes(target));
        let rel = dest
            .strip_prefix(&self.root)
            .context("symlink inside release")?;
        let inside = match self.link_tree {
            Some(id) => resolves_inside(&self.repo.find_tree(id)?, self.repo, rel, target)?,
            None => stays_inside(rel, target),
        };
        if !inside {
            bail!(
                "refusing symlink {} -> {}: it points outside the service's files",
                rel.display(),
                target.display()
            );
        }
        symlink(target, dest).with_context(|| format!("creating symlink {}", dest.display()))?;
        self.chown(dest)
    }

    fn mkdir(&mut self, dir: &Path) -> Result<()> {
        fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting mode of {}", dir.display()))?;
        self.chown(dir)
    }

    fn mkdirs(&mut self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.mkdirs(parent)?;
        }
        self.mkdir(dir)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        let Some(o) = self.owner else { return Ok(()) };
        nix::unistd::fchownat(
            None,
            path,
            Some(o.uid),
            Some(o.gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("changing owner of {}", path.display()))
    }

    /// Flushes the release before it is renamed into place, so a power loss
    /// cannot leave a complete-looking release with empty files. One
    /// `syncfs` of the release's filesystem instead of an fsync per file:
    /// a release of 10,000 files would otherwise cost 10,000 journal
    /// commits.
    fn sync_tree(&self, dir: &Path) -> Result<()> {
        let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        nix::unistd::syncfs(d.as_raw_fd())
            .with_context(|| format!("syncing the filesystem of {}", dir.display()))
    }
}

/// A tree entry name as a path component. Git never stores these names,
/// but a crafted tree could, and they would escape the release.
fn entry_name(name: &[u8]) -> Result<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        bail!(
            "refusing tree entry named {:?}",
            String::from_utf8_lossy(name)
        );
    }
    Ok(OsStr::from_bytes(name))
}

/// Whether `target`, a symlink at `link` (relative to the link's root),
/// resolves inside that root, following the symlinks of `tree` (the link's
/// tree) on the way as the kernel will: `d/up -> ..` is inside, but
/// `esc -> d/up/..` is not. A component missing from the tree is a plain
/// name (a dangling link stays dangling).
fn resolves_inside(tree: &Tree<'_>, repo: &Repository, link: &Path, target: &Path) -> Result<bool> {
    const MAX_HOPS: usize = 64;
    if target.is_absolute() {
        return Ok(false);
    }
    let mut at: Vec<PathBuf> = link
        .parent()
        .map(|p| {
            p.components()
                .map(|c| PathBuf::from(c.as_os_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut todo: Vec<PathBuf> = target
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_os_str().as_bytes() {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Ok(false);
                }
            }
            _ => {
                at.push(c);
                let here: PathBuf = at.iter().collect();
                let Ok(e) = tree.get_path(&here) else {
                    continue;
                };
                if e.filemode() != i32::from(FileMode::Link) {
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    // More than the kernel follows (40): it never
                    // resolves (ELOOP), so it leads nowhere.
                    return Ok(true);
                }
                let blob = repo.find_blob(e.id())?;
                let next = Path::new(OsStr::from_bytes(blob.content()));
                if next.is_absolute() {
                    return Ok(false);
                }
                at.pop();
                todo.extend(
                    next.components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
        }
    }
    Ok(true)
}

/// Whether `target`, a symlink at `link` (relative to the release root),
/// resolves inside the release, judged lexically: absolute targets and any
/// `..` that climbs above the root are refused.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside_the_release() {
        assert!(stays_inside(Path::new("app/etc/a"), Path::new("b")));
        assert!(stays_inside(Path::new("app/etc/a"), Path::new("../../x")));
        assert!(!stays_inside(
            Path::new("app/etc/a"),
            Path::new("../../../x")
        ));
        assert!(!stays_inside(Path::new("a"), Path::new("/etc/shadow")));
        assert!(!stays_inside(Path::new("app/a"), Path::new("x/../../../y")));
    }

    #[test]
    fn entry_names_must_be_one_path_component() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(entry_name(bad).is_err(), "{bad:?}");
        }
        for good in [&b"..."[..], b"a\nb", b"\xff", b"-rf"] {
            assert!(entry_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let d = |link: &str, file| Dir {
            local: "/x".into(),
            link: link.into(),
            file,
            readonly: false,
        };
        assert_eq!(
            fingerprint(&[d("a", false), d("b", true)]),
            fingerprint(&[d("b", true), d("a", false)])
        );
        assert_ne!(fingerprint(&[d("a", false)]), fingerprint(&[d("a", true)]));
        assert_ne!(fingerprint(&[d("a", false)]), fingerprint(&[d("b", false)]));
    }
}
