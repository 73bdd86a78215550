//! Filesystem work through directory descriptors.
//!
//! provision runs as root on behalf of service users and repositories it
//! does not trust. A path string is resolved anew by every syscall, so
//! between two calls anybody who can write to one of its directories can
//! swap a component for a symlink and send root's next write, chown or
//! chmod anywhere. Every write here instead goes through a descriptor of a
//! directory opened once, with names of a single component, `O_NOFOLLOW`
//! and `O_EXCL` on creation, and `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` for anything deeper: a symlink met on the way is an
//! error, never followed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// An open directory and the path it was opened at (for messages only: no
/// operation uses the path).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What `lstat` says of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// File, directory, symlink...
    pub kind: FileType,
    /// Permission bits, with set-id and sticky bits.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl Meta {
    fn of(st: &rustix::fs::Stat) -> Meta {
        #[allow(clippy::unnecessary_cast)]
        Meta {
            kind: FileType::from_raw_mode(st.st_mode as _),
            perm: st.st_mode as u32 & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
        }
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileType::RegularFile
    }

    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind == FileType::Symlink
    }

    /// What it is, in words, for messages: "a FIFO".
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }

    /// Whether somebody other than root can change what this directory
    /// holds: it belongs to another user, or group or others may write to
    /// it (a sticky directory, like `/tmp`, counts only when `child` is not
    /// root's own: the sticky bit keeps others from renaming root's entries).
    pub fn writable_by_others(&self, child: Option<&Meta>) -> bool {
        if self.uid != 0 {
            return true;
        }
        let sticky_protects = self.perm & 0o1000 != 0 && child.is_some_and(|c| c.uid == 0);
        self.perm & 0o022 != 0 && !sticky_protects
    }
}

/// The directories [`Dir::remove_tree`] has moved into the top of the tree
/// it removes and not yet emptied.
#[derive(Default)]
struct Hoisted {
    pending: Vec<OsString>,
    serial: u64,
}

impl Hoisted {
    /// Moves the directory `name` of `from` into `top` under a name no
    /// entry there has (renaming never replaces), and queues it.
    fn take(&mut self, from: &Dir, name: &OsStr, top: &Dir) -> Result<()> {
        loop {
            self.serial += 1;
            let fresh = OsString::from(format!(".removing-{}", self.serial));
            match rustix::fs::renameat_with(&from.fd, name, &top.fd, &fresh, RenameFlags::NOREPLACE)
            {
                Ok(()) => {
                    self.pending.push(fresh);
                    return Ok(());
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(explain(e, &from.child_path(Path::new(name)), "moving")),
            }
        }
    }
}

/// A file type in words, for messages.
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

/// Flags that refuse every symlink and every escape from the directory.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The components of an absolute or relative path as plain names; `..`
/// and the like are refused (config paths are normalized before this).
fn names(path: &Path) -> Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => bail!("{} is not a normalized path", path.display()),
        }
    }
    Ok(out)
}

/// Describes a refused symlink (`ELOOP` from `RESOLVE_NO_SYMLINKS`) or
/// `O_NOFOLLOW`) in words.
fn explain(e: Errno, path: &Path, what: &str) -> anyhow::Error {
    if e == Errno::LOOP || e == Errno::XDEV {
        anyhow::anyhow!(
            "{what} {}: a symlink is on the way; refusing to follow it",
            path.display()
        )
    } else if e == Errno::NOTDIR {
        anyhow::anyhow!(
            "{what} {}: not a directory (a symlink is never followed)",
            path.display()
        )
    } else {
        anyhow::Error::new(std::io::Error::from(e)).context(format!("{what} {}", path.display()))
    }
}

impl Dir {
    /// Opens the absolute directory `path` from `/`, following no symlink.
    pub fn open(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            dir_flags(),
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| explain(e, path, "opening directory"))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Like [`Dir::open`], `None` when the directory does not exist.
    pub fn open_opt(path: &Path) -> Result<Option<Dir>> {
        match rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            dir_flags(),
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(explain(e, path, "opening directory")),
        }
    }

    /// Opens the absolute directory `path`, creating what is missing as
    /// root-owned directories of `mode`, following no symlink.
    pub fn create(path: &Path, mode: u32) -> Result<Dir> {
        if let Some(d) = Dir::open_opt(path)? {
            return Ok(d);
        }
        // A relative path (`--state-dir state`) starts where we are.
        let start = if path.is_absolute() { "/" } else { "." };
        let mut d = Dir::open(Path::new(start))?;
        for name in names(path)? {
            d = d.ensure_dir(name, mode)?;
        }
        Ok(d)
    }

    /// Opens `path` from `/` like [`Dir::open`], and refuses it when any
    /// directory above it can be changed by somebody other than root (see
    /// [`Meta::writable_by_others`]): such a user could move the path
    /// elsewhere between two passes. Missing components are created
    /// (root-owned, 0755) when `create` is set.
    pub fn open_trusted(path: &Path, create: bool) -> Result<Dir> {
        let mut d = Dir::open(Path::new("/"))?;
        let mut here = d.meta_self()?;
        for name in names(path)? {
            let refuse = |here: &Meta, d: &Dir| {
                anyhow::anyhow!(
                    "{} can be changed by a user other than root (owner uid {}, mode {:o}); \
                     refusing to work beneath it",
                    d.path.display(),
                    here.uid,
                    here.perm
                )
            };
            // Opened first, judged on what was opened (fstat of the new
            // descriptor): what a user may swap is refused whatever it
            // held a moment ago.
            let next = match d.dir_opt(Path::new(name)) {
                Ok(Some(next)) => next,
                Ok(None) if create => {
                    if here.writable_by_others(None) {
                        return Err(refuse(&here, &d));
                    }
                    d.ensure_dir(name, 0o755)?
                }
                Ok(None) => d.dir(Path::new(name))?,
                // A symlink (or worse) below a directory others can
                // change: the directory is the problem to name.
                Err(_) if here.writable_by_others(None) => return Err(refuse(&here, &d)),
                Err(e) => return Err(e),
            };
            let child = next.meta_self()?;
            if here.writable_by_others(Some(&child)) {
                return Err(refuse(&here, &d));
            }
            d = next;
            here = child;
        }
        Ok(d)
    }

    /// The path this directory was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor, for syscalls this module does not wrap.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn child_path(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the directory `rel` below this one; no symlink, no `..`.
    pub fn dir(&self, rel: &Path) -> Result<Dir> {
        let path = self.child_path(rel);
        let fd = rustix::fs::openat2(&self.fd, rel, dir_flags(), Mode::empty(), beneath())
            .map_err(|e| explain(e, &path, "opening directory"))?;
        Ok(Dir { fd, path })
    }

    /// Like [`Dir::dir`], `None` when it does not exist.
    pub fn dir_opt(&self, rel: &Path) -> Result<Option<Dir>> {
        let path = self.child_path(rel);
        match rustix::fs::openat2(&self.fd, rel, dir_flags(), Mode::empty(), beneath()) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(explain(e, &path, "opening directory")),
        }
    }

    /// Opens an entry of any kind as an `O_PATH` descriptor (for mounts and
    /// `statx`), following no symlink.
    pub fn open_path(&self, rel: &Path) -> Result<OwnedFd> {
        let path = self.child_path(rel);
        rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        )
        .map_err(|e| explain(e, &path, "opening"))
    }

    /// Creates the directory `name` with `mode` (exactly: the umask is
    /// undone with fchmod) and opens it.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> Result<Dir> {
        let path = self.child_path(Path::new(name));
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode))
            .map_err(|e| explain(e, &path, "creating directory"))?;
        let d = self.dir(Path::new(name))?;
        d.chmod(mode)?;
        Ok(d)
    }

    /// Opens the directory `name`, creating it with `mode` when missing.
    pub fn ensure_dir(&self, name: &OsStr, mode: u32) -> Result<Dir> {
        if let Some(d) = self.dir_opt(Path::new(name))? {
            return Ok(d);
        }
        match self.mkdir(name, mode) {
            Ok(d) => Ok(d),
            // Created by a concurrent process meanwhile: use it.
            Err(e) => self.dir_opt(Path::new(name))?.ok_or(e),
        }
    }

    /// Creates the regular file `name` (`O_EXCL`: never an existing path,
    /// never through a symlink) with `mode`.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> Result<File> {
        let path = self.child_path(Path::new(name));
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| explain(e, &path, "creating"))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .with_context(|| format!("setting mode of {}", path.display()))?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `rel` for reading; no symlink on the way or
    /// at the end. Anything else is refused: the open is non-blocking, so a
    /// FIFO or a device put in a writable tree (even just after an `lstat`
    /// said "file") never hangs the reader or wakes a driver.
    pub fn open_file(&self, rel: &Path) -> Result<File> {
        let path = self.child_path(rel);
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            beneath(),
        )
        .map_err(|e| explain(e, &path, "opening"))?;
        let st = rustix::fs::fstat(&fd).with_context(|| format!("reading {}", path.display()))?;
        #[allow(clippy::unnecessary_cast)]
        let kind = FileType::from_raw_mode(st.st_mode as _);
        if kind != FileType::RegularFile {
            bail!(
                "{} is {}, not a regular file",
                path.display(),
                kind_name(kind)
            );
        }
        Ok(File::from(fd))
    }

    /// Creates the symlink `name` -> `target`.
    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> Result<()> {
        let path = self.child_path(Path::new(name));
        rustix::fs::symlinkat(target, &self.fd, name)
            .map_err(|e| explain(e, &path, "creating symlink"))
    }

    /// The target of the symlink `name`.
    pub fn readlink(&self, name: &OsStr) -> Result<OsString> {
        let path = self.child_path(Path::new(name));
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map(|c| OsString::from(OsStr::from_bytes(c.as_bytes())))
            .map_err(|e| explain(e, &path, "reading symlink"))
    }

    /// `lstat` of the entry `name`; `None` when it does not exist.
    pub fn meta(&self, name: &OsStr) -> Result<Option<Meta>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(explain(e, &self.child_path(Path::new(name)), "reading")),
        }
    }

    /// `fstat` of this directory.
    pub fn meta_self(&self) -> Result<Meta> {
        rustix::fs::fstat(&self.fd)
            .map(|st| Meta::of(&st))
            .with_context(|| format!("reading {}", self.path.display()))
    }

    /// The names in this directory, without `.` and `..`.
    pub fn entries(&self) -> Result<Vec<OsString>> {
        let listing = || format!("listing {}", self.path.display());
        let fd =
            rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty()).with_context(listing)?;
        let dir = rustix::fs::Dir::new(fd).with_context(listing)?;
        let mut out = Vec::new();
        for e in dir {
            let e = e.with_context(listing)?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }

    /// Sets this directory's permission bits.
    pub fn chmod(&self, mode: u32) -> Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))
            .with_context(|| format!("setting mode of {}", self.path.display()))
    }

    /// Sets the owner of the entry `name` without following a symlink.
    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
        let (u, g) = ids(uid, gid);
        rustix::fs::chownat(&self.fd, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| {
                format!(
                    "changing owner of {}",
                    self.child_path(Path::new(name)).display()
                )
            })
    }

    /// Sets this directory's owner.
    pub fn chown_self(&self, uid: u32, gid: u32) -> Result<()> {
        let (u, g) = ids(uid, gid);
        rustix::fs::fchown(&self.fd, Some(u), Some(g))
            .with_context(|| format!("changing owner of {}", self.path.display()))
    }

    /// Renames `from` in this directory to `to` in `dest`.
    pub fn rename(&self, from: &OsStr, dest: &Dir, to: &OsStr) -> Result<()> {
        rustix::fs::renameat(&self.fd, from, &dest.fd, to).with_context(|| {
            format!(
                "renaming {} to {}",
                self.child_path(Path::new(from)).display(),
                dest.child_path(Path::new(to)).display()
            )
        })
    }

    /// Removes the file or symlink `name`; a missing one is fine.
    pub fn remove_file(&self, name: &OsStr) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(explain(e, &self.child_path(Path::new(name)), "removing")),
        }
    }

    /// Removes the entry `name` and, for a directory, everything in it,
    /// through descriptors only; a missing one is fine.
    ///
    /// Without recursion and with two descriptors open whatever the depth:
    /// each subdirectory is first moved up into the tree's top directory,
    /// so that a tree made ten thousand levels deep through a writable
    /// release comes down like a wide one (a recursive walk would run out
    /// of descriptors, or of stack, and leave the release in place).
    pub fn remove_tree(&self, name: &OsStr) -> Result<()> {
        let Some(m) = self.meta(name)? else {
            return Ok(());
        };
        if !m.is_dir() {
            return self.remove_file(name);
        }
        let top = self.dir(Path::new(name))?;
        let mut hoisted = Hoisted::default();
        top.hoist_into(&top, &mut hoisted)?;
        while let Some(d) = hoisted.pending.pop() {
            top.dir(Path::new(&d))?.hoist_into(&top, &mut hoisted)?;
            top.rmdir(&d)?;
        }
        self.rmdir(name)
    }

    /// Removes this directory's files and moves its subdirectories into
    /// `top` under fresh names, which `hoisted` queues for removal.
    fn hoist_into(&self, top: &Dir, hoisted: &mut Hoisted) -> Result<()> {
        for e in self.entries()? {
            match self.meta(&e)? {
                None => {}
                Some(m) if m.is_dir() => hoisted.take(self, &e, top)?,
                Some(_) => self.remove_file(&e)?,
            }
        }
        Ok(())
    }

    /// Removes the empty directory `name`; a missing one is fine.
    fn rmdir(&self, name: &OsStr) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(explain(e, &self.child_path(Path::new(name)), "removing")),
        }
    }

    /// Flushes this directory (a rename or create in it becomes durable).
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd)
            .with_context(|| format!("syncing directory {}", self.path.display()))
    }

    /// Flushes this directory's whole filesystem.
    pub fn syncfs(&self) -> Result<()> {
        rustix::fs::syncfs(&self.fd)
            .with_context(|| format!("syncing the filesystem of {}", self.path.display()))
    }

    /// Replaces the file `name` with `data` (mode `mode`) so that a reader,
    /// or a crash, sees the old content or the new, never a mix: a temp file
    /// with an unpredictable name is created `O_EXCL|O_NOFOLLOW`, written,
    /// flushed and renamed over `name`, all relative to this descriptor. A
    /// symlink planted at either name is replaced, never followed.
    pub fn write_atomic(&self, name: &OsStr, data: &[u8], mode: u32) -> Result<()> {
        let tmp = temp_name(name)?;
        let path = self.child_path(Path::new(name));
        let mut f = self.create_file(&tmp, mode)?;
        let written = f
            .write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", self.child_path(Path::new(&tmp)).display()));
        drop(f);
        if let Err(e) = written.and_then(|()| self.rename(&tmp, self, name)) {
            let _ = self.remove_file(&tmp);
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        self.remove_stale_tmp();
        self.sync()
    }

    /// Removes the temp files of earlier atomic writes whose writer died
    /// before renaming them (a process killed mid-write), whatever file they
    /// were for. A temp file of a live process is left alone: it may be
    /// writing right now.
    fn remove_stale_tmp(&self) {
        let Ok(entries) = self.entries() else {
            return;
        };
        for file in entries {
            let Some(pid) = file.to_str().and_then(temp_pid) else {
                continue;
            };
            let gone = rustix::process::test_kill_process(
                rustix::process::Pid::from_raw(pid).unwrap_or(rustix::process::Pid::INIT),
            ) == Err(Errno::SRCH);
            if gone {
                let _ = self.remove_file(&file);
            }
        }
    }
}

fn ids(uid: u32, gid: u32) -> (rustix::fs::Uid, rustix::fs::Gid) {
    (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    )
}

/// `.<name>.tmp.<pid>.<random>`: unique per write, so a name planted in
/// advance cannot collide with it, and the writer's pid, so a later write
/// knows when it is stale.
fn temp_name(name: &OsStr) -> Result<OsString> {
    let mut rand = [0u8; 8];
    rustix::rand::getrandom(&mut rand, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for a temp file name")?;
    let mut out = OsString::from(".");
    out.push(name);
    out.push(format!(
        ".tmp.{}.{:016x}",
        std::process::id(),
        u64::from_le_bytes(rand)
    ));
    Ok(out)
}

/// The pid in a temp file name made by [`temp_name`].
fn temp_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, rand) = tail.split_once('.')?;
    (rand.len() == 16 && rand.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_pid() {
        let t = temp_name(OsStr::new("state.json")).expect("name");
        let t = t.to_str().expect("utf-8");
        assert!(t.starts_with(".state.json.tmp."), "{t}");
        assert_eq!(temp_pid(t), Some(std::process::id() as i32));
        assert_eq!(temp_pid(".x.tmp.12"), None);
        assert_eq!(temp_pid("x.tmp.1.0123456789abcdef"), None);
    }

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink("real", t.path().join("link")).expect("symlink");
        let d = Dir::open(t.path()).expect("open");
        let e = d.dir(Path::new("link")).expect_err("a symlink");
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert!(Dir::open(&t.path().join("link/")).is_err());
        assert!(d.create_file(OsStr::new("link"), 0o644).is_err());
        d.write_atomic(OsStr::new("link"), b"x", 0o600)
            .expect("replaces the link itself");
        assert!(t.path().join("link").is_file());
        assert!(t.path().join("real").is_dir());
    }

    #[test]
    fn who_may_change_a_directory() {
        let meta = |uid, perm| Meta {
            kind: FileType::Directory,
            perm,
            uid,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
        };
        assert!(!meta(0, 0o755).writable_by_others(None));
        assert!(meta(1, 0o755).writable_by_others(None), "another owner");
        assert!(meta(0, 0o775).writable_by_others(None), "group-writable");
        assert!(meta(0, 0o777).writable_by_others(None), "world-writable");
        // /tmp: sticky, so root's own entries cannot be renamed by others.
        let tmp = meta(0, 0o1777);
        assert!(!tmp.writable_by_others(Some(&meta(0, 0o700))));
        assert!(tmp.writable_by_others(Some(&meta(1, 0o700))));
        assert!(tmp.writable_by_others(None));
    }

    #[test]
    fn remove_tree_takes_down_a_tree_far_deeper_than_path_max() {
        let t = tempfile::tempdir().expect("tempdir");
        let top = Dir::open(t.path()).expect("open");
        let name = OsStr::new("dddddddddddddddddddddddddddddddddddddddddddddddddd");
        let mut d = top.mkdir(OsStr::new("deep"), 0o755).expect("mkdir");
        for _ in 0..2000 {
            d.write_atomic(OsStr::new("f"), b"x", 0o644).expect("write");
            d = d.mkdir(name, 0o755).expect("mkdir");
        }
        drop(d);
        top.remove_tree(OsStr::new("deep")).expect("remove");
        assert!(top.entries().expect("list").is_empty());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let t = tempfile::tempdir().expect("tempdir");
        nix::unistd::mkfifo(&t.path().join("pipe"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let d = Dir::open(t.path()).expect("open");
        let e = d
            .open_file(Path::new("pipe"))
            .expect_err("a FIFO is no file");
        assert!(
            e.to_string().contains("is a FIFO, not a regular file"),
            "{e:#}"
        );
    }

    #[test]
    fn remove_tree_does_not_leave_the_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "k").expect("write");
        std::fs::create_dir_all(t.path().join("victim/sub")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, t.path().join("victim/sub/out")).expect("ln");
        let d = Dir::open(t.path()).expect("open");
        d.remove_tree(OsStr::new("victim")).expect("remove");
        assert!(!t.path().join("victim").exists());
        assert!(outside.join("keep").exists());
    }
}
