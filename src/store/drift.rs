//! Drift: how the files of the deployed release differ, on this machine,
//! from the commit they were written from.
//!
//! A release is mounted read-write unless `readonly` is set, so anyone with
//! access to `/etc/app` edits the release itself. Every release therefore
//! carries a *manifest*: for each path, the Git object it was written from
//! and the `lstat` facts right after writing. A scan compares the disk with
//! the manifest the way Git's index does: a file whose size, times and inode
//! are unchanged is not read; any other is hashed and compared by blob id.
//! An edit always changes ctime (which no user can set back), and editors
//! that replace a file change its inode, so the shortcut misses nothing.
//!
//! The manifest is a separate file beside the release, never inside it: the
//! release holds repository content only.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::{FileMode, ObjectType, Oid, Repository};
use sha1::{Digest, Sha1};

use crate::config::Dir;
use crate::util::dirfd::{self, Meta};
use crate::util::{write_atomic, Visibility};

const HEADER: &[u8] = b"provision-manifest 1\n";

/// What a manifest entry is, as Git stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (mode 100644).
    File,
    /// An executable file (mode 100755).
    Exec,
    /// A symbolic link.
    Symlink,
    /// A directory (a tree, or a submodule written empty).
    Dir,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Exec => b'x',
            Kind::Symlink => b'l',
            Kind::Dir => b'd',
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            b'f' => Kind::File,
            b'x' => Kind::Exec,
            b'l' => Kind::Symlink,
            b'd' => Kind::Dir,
            _ => return None,
        })
    }

    /// The kind of a Git tree entry mode; submodules read as directories,
    /// because that is how a release writes them.
    pub fn of_mode(mode: i32) -> Kind {
        if mode == i32::from(FileMode::BlobExecutable) {
            Kind::Exec
        } else if mode == i32::from(FileMode::Link) {
            Kind::Symlink
        } else if mode == i32::from(FileMode::Tree) || mode == i32::from(FileMode::Commit) {
            Kind::Dir
        } else {
            Kind::File
        }
    }

    /// The permission bits a release gives this kind under `d`'s `mode`.
    pub fn perm(self, d: &Dir) -> u32 {
        match self {
            Kind::File => d.perm(false),
            Kind::Exec | Kind::Dir => d.perm(true),
            Kind::Symlink => 0o777,
        }
    }
}

/// `lstat` facts that change whenever a file's content can have changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

impl Stat {
    fn of(md: &Meta) -> Stat {
        Stat {
            size: md.size,
            mtime_ns: md.mtime_ns,
            ctime_ns: md.ctime_ns,
            ino: md.ino,
        }
    }
}

/// One path of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What the entry is.
    pub kind: Kind,
    /// The blob written (zero for directories).
    pub oid: Oid,
    /// As written; all zero when unknown, which forces hashing.
    stat: Stat,
}

/// Every path of a release, relative to the release directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Manifest {
    /// Records the path at `rel` in the release just after it was written,
    /// with what `lstat` said of it then.
    pub fn record(&mut self, rel: &Path, kind: Kind, oid: Oid, md: &Meta) {
        self.entries.insert(
            rel.to_path_buf(),
            Entry {
                kind,
                oid,
                stat: Stat::of(md),
            },
        );
    }

    /// The entry at `rel`.
    pub fn get(&self, rel: &Path) -> Option<&Entry> {
        self.entries.get(rel)
    }

    /// Writes the manifest atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut out = HEADER.to_vec();
        for (rel, e) in &self.entries {
            let s = e.stat;
            out.push(e.kind.code());
            let fields = format!(
                " {} {} {} {} {} ",
                e.oid, s.size, s.mtime_ns, s.ctime_ns, s.ino
            );
            out.extend_from_slice(fields.as_bytes());
            out.extend_from_slice(rel.as_os_str().as_bytes());
            out.push(0);
        }
        write_atomic(path, &out, Visibility::Private)
    }

    /// Reads a manifest; `None` when there is none (a release written by an
    /// older version).
    pub fn read(path: &Path) -> Result<Option<Manifest>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Manifest::parse(&bytes)
            .with_context(|| format!("manifest {} is corrupt", path.display()))
            .map(Some)
    }

    fn parse(bytes: &[u8]) -> Result<Manifest> {
        let Some(body) = bytes.strip_prefix(HEADER) else {
            bail!("unknown header");
        };
        let mut entries = BTreeMap::new();
        for record in body.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let mut parts = record.splitn(7, |b| *b == b' ');
            let mut next = || parts.next().context("truncated record");
            let kind = next()?;
            let kind = match kind {
                [c] => Kind::from_code(*c),
                _ => None,
            }
            .context("bad kind")?;
            let oid = Oid::from_str(std::str::from_utf8(next()?)?)?;
            let mut num = || -> Result<i64> { Ok(std::str::from_utf8(next()?)?.parse()?) };
            let (size, mtime_ns, ctime_ns, ino) = (num()?, num()?, num()?, num()?);
            let rel = PathBuf::from(OsStr::from_bytes(next()?));
            let stat = Stat {
                size: u64::try_from(size)?,
                mtime_ns,
                ctime_ns,
                ino: u64::try_from(ino)?,
            };
            entries.insert(rel, Entry { kind, oid, stat });
        }
        Ok(Manifest { entries })
    }

    /// The manifest of `commit`'s files for `dirs`, from the repository, for
    /// a release written without one. Every file is hashed on each scan.
    pub fn from_tree(repo: &Repository, commit: Oid, dirs: &[Dir]) -> Result<Manifest> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .with_context(|| format!("reading tree of commit {commit}"))?;
        let mut m = Manifest::default();
        for d in dirs {
            let entry = tree
                .get_path(Path::new(&d.link))
                .with_context(|| format!("{:?} is not in commit {commit}", d.link))?;
            m.add_tree_entry(repo, Path::new(&d.link), entry.filemode(), entry.id())?;
        }
        Ok(m)
    }

    fn add_tree_entry(&mut self, repo: &Repository, rel: &Path, mode: i32, id: Oid) -> Result<()> {
        let kind = Kind::of_mode(mode);
        let oid = if kind == Kind::Dir { Oid::zero() } else { id };
        self.entries.insert(
            rel.to_path_buf(),
            Entry {
                kind,
                oid,
                stat: Stat::default(),
            },
        );
        if mode == i32::from(FileMode::Tree) {
            let tree = repo.find_tree(id)?;
            for child in tree.iter() {
                let name = OsStr::from_bytes(child.name_bytes());
                self.add_tree_entry(repo, &rel.join(name), child.filemode(), child.id())?;
            }
        }
        Ok(())
    }

    /// Entries at or below `prefix`.
    fn under<'a>(&'a self, prefix: &'a Path) -> impl Iterator<Item = (&'a PathBuf, &'a Entry)> {
        self.entries
            .range(prefix.to_path_buf()..)
            .take_while(move |(p, _)| p.starts_with(prefix))
    }
}

/// How one path differs from the deployed commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Content, type or permissions differ.
    Modified,
    /// Not in the commit.
    Added,
    /// In the commit, gone from the disk.
    Deleted,
}

impl Change {
    /// The word status, metrics and messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Modified => "modified",
            Change::Added => "added",
            Change::Deleted => "deleted",
        }
    }
}

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
        Kind::File | Kind::Exec => md.is_file(),
        Kind::Symlink => md.is_symlink(),
        Kind::Dir => md.is_dir(),
    };
    if !kind_ok {
        return Ok(false);
    }
    if e.kind != Kind::Symlink && md.perm != e.kind.perm(d) {
        return Ok(false);
    }
    if e.stat != Stat::default() && e.stat == Stat::of(md) {
        return Ok(true);
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
                match found {
                    Some((_, _, md)) if kind == Kind::Dir => md.is_dir(),
                    Some((parent, name, md)) => {
                        let e = Entry {
                            kind,
                            oid: entry.id(),
                            stat: Stat::default(),
                        };
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

    fn meta_of(p: &Path) -> Meta {
        let dir = dirfd::Dir::open(p.parent().expect("parent")).expect("open");
        dir.meta(p.file_name().expect("name"))
            .expect("lstat")
            .expect("exists")
    }

    fn app_dir() -> Dir {
        Dir {
            local: "/etc/app".into(),
            link: "app".into(),
            file: false,
            readonly: false,
            mode: crate::config::DEFAULT_FILE_MODE,
            group: None,
            allow_writable_parents: false,
        }
    }

    #[test]
    fn manifest_round_trips_odd_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        fs::write(&f, "x").expect("write");
        let mut m = Manifest::default();
        let odd = PathBuf::from(OsStr::from_bytes(b"app/a b\nc\xff"));
        m.record(&odd, Kind::File, Oid::zero(), &meta_of(&f));
        m.record(
            Path::new("app"),
            Kind::Dir,
            Oid::zero(),
            &meta_of(dir.path()),
        );
        let path = dir.path().join("manifest");
        m.write(&path).expect("write");
        assert_eq!(Manifest::read(&path).expect("read"), Some(m));
    }

    #[test]
    fn a_corrupt_manifest_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("manifest");
        fs::write(&path, "provision-manifest 1\nz 00 1 2\0").expect("write");
        let e = Manifest::read(&path).expect_err("corrupt");
        assert!(format!("{e:#}").contains("is corrupt"), "{e:#}");
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
