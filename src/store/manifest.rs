//! Manifests: what each path of a release was written from.
//!
//! For each path of a release, the Git object it was written from and the
//! `lstat` facts right after writing, so a drift scan can compare the disk
//! with it the way Git's index does. The manifest is a separate file beside
//! the release, never inside it: the release holds repository content only.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::{FileMode, Oid, Repository};

use crate::config::Dir;
use crate::util::dirfd::Meta;
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
    /// A regular file decrypted from an `.age` blob: its id is the hash of
    /// the plaintext (never in the mirror), and its content is never shown.
    Secret,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Exec => b'x',
            Kind::Symlink => b'l',
            Kind::Dir => b'd',
            Kind::Secret => b's',
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            b'f' => Kind::File,
            b'x' => Kind::Exec,
            b'l' => Kind::Symlink,
            b'd' => Kind::Dir,
            b's' => Kind::Secret,
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
            Kind::Secret => d.secret_mode,
        }
    }
}

impl Entry {
    /// An entry known from Git only (no stat facts: it is always hashed).
    pub fn from_git(kind: Kind, oid: Oid) -> Entry {
        Entry {
            kind,
            oid,
            stat: Stat::default(),
        }
    }

    /// Whether `md` shows the file untouched since it was written: the
    /// index shortcut (an edit always changes ctime, a replacement the
    /// inode), never taken for an entry without stat facts.
    pub fn unchanged(&self, md: &Meta) -> bool {
        self.stat != Stat::default() && self.stat == Stat::of(md)
    }

    /// Whether `md` has another size than the file written (false when
    /// the size written is unknown).
    pub fn size_differs(&self, md: &Meta) -> bool {
        self.stat != Stat::default() && self.stat.size != md.size
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
            if d.decrypt {
                bail!(
                    "{:?} decrypts its files, and its release has no manifest to compare them with",
                    d.link
                );
            }
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
    /// The paths of decrypted files.
    pub fn secrets(&self) -> impl Iterator<Item = &Path> {
        self.entries
            .iter()
            .filter(|(_, e)| e.kind == Kind::Secret)
            .map(|(p, _)| p.as_path())
    }

    /// Entries at or below `prefix`.
    pub(crate) fn under<'a>(
        &'a self,
        prefix: &'a Path,
    ) -> impl Iterator<Item = (&'a PathBuf, &'a Entry)> {
        self.entries
            .range(prefix.to_path_buf()..)
            .take_while(move |(p, _)| p.starts_with(prefix))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::util::dirfd;

    /// What `lstat` says of `p`, through its directory's descriptor.
    pub(crate) fn meta_of(p: &Path) -> Meta {
        let dir = dirfd::Dir::open(p.parent().expect("parent")).expect("open");
        dir.meta(p.file_name().expect("name"))
            .expect("lstat")
            .expect("exists")
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
}
