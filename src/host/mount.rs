//! Bind mounts of a release's paths onto the host paths services read.
//!
//! A mount is *correct* when `local` is a mount point whose root is the very
//! directory (or file) of the deployed release: same device and inode. That
//! check needs no bookkeeping, survives reboots and catches a mount someone
//! removed or replaced by hand.
//!
//! Switching a mount from one release to the next uses the kernel's atomic
//! replacement where it exists (Linux >= 6.5): the new release is mounted
//! *beneath* the old one with `move_mount(MOVE_MOUNT_BENEATH)`, then the old
//! top mount is detached, so a reader of `local` sees either the old tree or
//! the new one and never an empty directory. On older kernels the old mount
//! is detached and the new one mounted right after: for that short window
//! (two syscalls) `local` shows the directory underneath.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

use crate::config::Dir;
use crate::util::dirfd::{self, Meta};

/// What a mount looked like before [`ensure`] made it right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Already showed the wanted source.
    Correct,
    /// Nothing was mounted at `local` (first deployment, or after a reboot).
    Missing,
    /// Something else was mounted there (an older release, or a stranger).
    Other,
}

/// One wanted bind mount.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// The mount point on the host.
    pub local: &'a Path,
    /// The release path to show there.
    pub source: PathBuf,
    /// A single file rather than a directory.
    pub file: bool,
    /// Mounted read-only.
    pub readonly: bool,
    /// Work beneath directories other users can write (never following a
    /// symlink); otherwise such a `local` is refused.
    pub allow_writable_parents: bool,
}

impl<'a> Wanted<'a> {
    /// The mount of the `dirs` entry `d` from the release at `release`.
    pub fn of(d: &'a Dir, release: &Path) -> Wanted<'a> {
        Wanted {
            local: &d.local,
            source: release.join(&d.link),
            file: d.file,
            readonly: d.readonly,
            allow_writable_parents: d.allow_writable_parents,
        }
    }
}

/// The mount point `local`, held by descriptors: its parent directory,
/// reached from `/` without following any symlink, and `local` itself.
struct Target {
    parent: dirfd::Dir,
    name: std::ffi::OsString,
    /// `O_PATH` descriptor of `local`: the root of its top mount when
    /// something is mounted there.
    fd: OwnedFd,
}

impl Target {
    /// Opens `local`; `None` when it does not exist (and `create` is not
    /// set). With `create`, missing directories on the way are created
    /// (root's, 0755) and then `local` itself: an empty directory, or an
    /// empty file for a single-file mount, root's too.
    fn open(w: &Wanted<'_>, create: bool) -> Result<Option<Target>> {
        let parent_path = w.local.parent().context("mount point has a parent")?;
        let name = w
            .local
            .file_name()
            .context("mount point has a name")?
            .to_os_string();
        let parent = if w.allow_writable_parents {
            if create {
                dirfd::Dir::create(parent_path, 0o755)?
            } else {
                match dirfd::Dir::open_opt(parent_path)? {
                    Some(d) => d,
                    None => return Ok(None),
                }
            }
        } else {
            match dirfd::Dir::open_trusted(parent_path, create) {
                Ok(d) => d,
                Err(_) if !create && !parent_path.exists() => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "mount point {} (set allow_writable_parents = true in its dirs entry \
                             to mount there anyway)",
                            w.local.display()
                        )
                    })
                }
            }
        };
        let meta = match parent.meta(&name)? {
            Some(m) => m,
            None if create => {
                make_mount_point(&parent, &name, w.file)?;
                parent
                    .meta(&name)?
                    .with_context(|| format!("{} vanished", w.local.display()))?
            }
            None => return Ok(None),
        };
        check_kind(w, &meta)?;
        let fd = parent.open_path(Path::new(&name))?;
        Ok(Some(Target { parent, name, fd }))
    }

    /// Opens `local` again (after a mount or unmount changed what it shows).
    fn reopen(&mut self) -> Result<()> {
        self.fd = self.parent.open_path(Path::new(&self.name))?;
        Ok(())
    }

    /// The mount whose root `local` is, if any.
    fn mount(&self) -> Result<Option<u64>> {
        let st = rustix::fs::statx(
            &self.fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
        )
        .context("statx of the mount point")?;
        if !st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
            bail!(
                "this kernel does not report mount roots (statx STATX_ATTR_MOUNT_ROOT, Linux 5.8)"
            );
        }
        Ok(st
            .stx_attributes
            .contains(StatxAttributes::MOUNT_ROOT)
            .then_some(st.stx_mnt_id))
    }

    /// `/proc/self/fd/N` for the mount point: it names exactly the mount
    /// the descriptor holds, whatever happens to the path meanwhile.
    fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// Detaches the top mount at `local` (the one the descriptor holds).
    fn unmount_top(&mut self) -> Result<()> {
        rustix::mount::unmount(self.proc_path().as_str(), UnmountFlags::DETACH)
            .context("unmounting")?;
        self.reopen()
    }
}

/// Refuses a mount point of the wrong kind; a symlink is never mounted
/// over, since the mount would land on whatever it points to.
fn check_kind(w: &Wanted<'_>, m: &Meta) -> Result<()> {
    if m.is_symlink() {
        bail!(
            "{} is a symlink; refusing to mount over its target",
            w.local.display()
        );
    }
    if w.file && m.is_dir() {
        bail!(
            "{} is a directory but the repository path is a file",
            w.local.display()
        );
    }
    if !w.file && !m.is_dir() {
        bail!(
            "{} is a file but the repository path is a directory",
            w.local.display()
        );
    }
    Ok(())
}

/// Creates an empty mount point `name` in `parent`, root's.
fn make_mount_point(parent: &dirfd::Dir, name: &std::ffi::OsStr, file: bool) -> Result<()> {
    if file {
        parent.create_file(name, 0o644).map(drop)
    } else {
        parent.mkdir(name, 0o755).map(drop)
    }
}

/// The release path, opened without following any symlink.
fn open_source(source: &Path) -> Result<(OwnedFd, Meta)> {
    let parent = dirfd::Dir::open(source.parent().context("release path has a parent")?)?;
    let name = source.file_name().context("release path has a name")?;
    let meta = parent
        .meta(name)?
        .with_context(|| format!("release path {} is missing", source.display()))?;
    let fd = parent.open_path(Path::new(name))?;
    Ok((fd, meta))
}

/// Inspects `local` without changing anything.
pub fn inspect(w: &Wanted<'_>) -> Result<Before> {
    let (_, src) = open_source(&w.source)?;
    let Some(t) = Target::open(w, false)? else {
        return Ok(Before::Missing);
    };
    inspect_target(w, &t, &src)
}

fn inspect_target(w: &Wanted<'_>, t: &Target, src: &Meta) -> Result<Before> {
    let Some(id) = t.mount()? else {
        return Ok(Before::Missing);
    };
    let here = rustix::fs::fstat(&t.fd).context("reading the mount point")?;
    #[allow(clippy::unnecessary_cast)]
    let same = here.st_dev as u64 == src.dev && here.st_ino as u64 == src.ino;
    let table = mountinfo()?;
    let readonly = entry(&table, id).is_some_and(|e| e.readonly);
    // More than one layer is the leftover of an interrupted switch: the
    // stale layer pins an old release, so it is not correct even when the
    // top shows the wanted one.
    Ok(
        if same && readonly == w.readonly && layers(&table, id) == 1 {
            Before::Correct
        } else {
            Before::Other
        },
    )
}

/// Makes `local` show `source`, creating `local` when missing, and says
/// what was there before.
pub fn ensure(w: &Wanted<'_>) -> Result<Before> {
    let (src_fd, src) = open_source(&w.source)?;
    let mut t = Target::open(w, true)?.context("mount point")?;
    let before = inspect_target(w, &t, &src)?;
    if before != Before::Correct {
        put(w, clone_source(w, &src_fd)?, &mut t, before)?;
    }
    Ok(before)
}

/// A detached copy of a release path, made in this thread's mount
/// namespace, to be mounted in another one (a sandboxed unit's), where the
/// release path itself may not be reachable.
pub struct Prepared {
    tree: OwnedFd,
    meta: Meta,
}

/// Copies `w.source` for [`ensure_prepared`].
pub fn prepare(w: &Wanted<'_>) -> Result<Prepared> {
    let (src_fd, meta) = open_source(&w.source)?;
    Ok(Prepared {
        tree: clone_source(w, &src_fd)?,
        meta,
    })
}

/// [`ensure`] with a source copied by [`prepare`] (in whichever namespace).
pub fn ensure_prepared(w: &Wanted<'_>, source: Prepared) -> Result<Before> {
    let mut t = Target::open(w, false)?
        .with_context(|| format!("mount point {} is missing", w.local.display()))?;
    let before = inspect_target(w, &t, &source.meta)?;
    if before != Before::Correct {
        put(w, source.tree, &mut t, before)?;
    }
    Ok(before)
}

/// Mounts `tree` on `t`, on its own or in place of what is there.
fn put(w: &Wanted<'_>, tree: OwnedFd, t: &mut Target, before: Before) -> Result<()> {
    match before {
        Before::Correct => Ok(()),
        Before::Missing => attach(&tree, t)
            .with_context(|| format!("mounting {} on {}", w.source.display(), w.local.display())),
        Before::Other => switch(tree, t)
            .with_context(|| format!("switching {} to {}", w.local.display(), w.source.display())),
    }
}

/// Removes provision's mount from `local` (all stacked layers of it).
pub fn detach(local: &Path) -> Result<()> {
    let parent_path = local.parent().context("mount point has a parent")?;
    let Some(parent) = dirfd::Dir::open_opt(parent_path)? else {
        return Ok(());
    };
    let name = local.file_name().context("mount point has a name")?;
    match parent.meta(name)? {
        None => return Ok(()),
        Some(m) if m.is_symlink() => {
            bail!(
                "{} is a symlink; refusing to unmount through it",
                local.display()
            )
        }
        Some(_) => {}
    }
    let mut t = Target {
        fd: parent.open_path(Path::new(name))?,
        parent,
        name: name.to_os_string(),
    };
    while t.mount()?.is_some() {
        t.unmount_top()
            .with_context(|| format!("unmounting {}", local.display()))?;
    }
    Ok(())
}

/// A detached copy of the release path, read-only when wanted.
fn clone_source(w: &Wanted<'_>, src: &OwnedFd) -> Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        src,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .context("cloning the release path (open_tree)")?;
    if w.readonly {
        set_readonly(&tree).context("making the mount read-only")?;
    }
    Ok(tree)
}

/// A fresh bind mount of the detached `tree` on an unmounted `local`, by
/// descriptor.
fn attach(tree: &OwnedFd, t: &Target) -> Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        &t.fd,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .context("bind mount (move_mount)")
}

/// Replaces whatever is mounted on `local` with the detached `tree`.
fn switch(tree: OwnedFd, t: &mut Target) -> Result<()> {
    // A switch killed between mounting beneath and detaching the old top
    // leaves two layers. Drop the upper ones first (each is a whole
    // release): mounting beneath again would leave the stale layer at the
    // bottom for good, and the release it shows could never be removed.
    while let Some(id) = t.mount()? {
        if layers(&mountinfo()?, id) <= 1 {
            break;
        }
        t.unmount_top().context("detaching a stale layer")?;
    }
    let beneath = rustix::mount::move_mount(
        &tree,
        "",
        &t.fd,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
            | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH
            | MoveMountFlags::MOVE_MOUNT_BENEATH,
    );
    match beneath {
        Ok(()) => t.unmount_top().context("detaching the old release"),
        // EINVAL: no MOVE_MOUNT_BENEATH (Linux < 6.5).
        Err(Errno::INVAL) => {
            t.unmount_top().context("unmounting the old release")?;
            attach(&tree, t)
        }
        Err(e) => Err(e).context("mounting the new release beneath the old one"),
    }
}

#[allow(unsafe_code)] // mount_setattr has no safe wrapper in rustix or nix
fn set_readonly(tree: &OwnedFd) -> std::result::Result<(), Errno> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, attr of the stated size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(())
    }
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount ID (`statx` `STATX_MNT_ID`).
    pub id: u64,
    /// The ID of the mount it is mounted on.
    pub parent: u64,
    /// Where it is mounted, as the kernel names it.
    pub point: Vec<u8>,
    /// Mounted read-only.
    pub readonly: bool,
}

/// The entry of mount `id`.
fn entry(table: &str, id: u64) -> Option<MountEntry> {
    table.lines().filter_map(parse_line).find(|e| e.id == id)
}

/// How many mounts are stacked where mount `id` is (1: just it): its
/// parents, by ID, mounted at the very same place.
fn layers(table: &str, id: u64) -> usize {
    let entries: Vec<MountEntry> = table.lines().filter_map(parse_line).collect();
    let by_id = |id: u64| entries.iter().find(|e| e.id == id);
    let Some(top) = by_id(id) else {
        return 1;
    };
    let mut n = 1;
    let mut at = top;
    while let Some(p) = by_id(at.parent).filter(|p| p.id != at.id && p.point == top.point) {
        n += 1;
        at = p;
    }
    n
}

/// This process's mount table, read again only when it changed.
///
/// The kernel formats the whole table (every mount of the namespace) on
/// each read of /proc/self/mountinfo, and a pass looks at each service's
/// mounts several times: read afresh every time, that cost grew with
/// services times mounts. The open file reports any change to the
/// namespace's mounts, by this process or another, as POLLPRI on poll(2);
/// without one the text read last is still the table.
#[allow(unsafe_code)] // poll(2) on the open mountinfo file
fn mountinfo() -> Result<Arc<str>> {
    struct Table {
        /// The mount namespace it describes: a thread may work in another
        /// one (a private one for `validate`, a sandboxed unit's).
        ns: PathBuf,
        file: File,
        text: Arc<str>,
    }
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    let ns = std::fs::read_link("/proc/thread-self/ns/mnt")
        .context("reading this thread's mount namespace")?;
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = table.as_mut().filter(|t| t.ns == ns) {
        let mut fd = libc::pollfd {
            fd: t.file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout only asks.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        if n == 0 {
            return Ok(Arc::clone(&t.text));
        }
        // A change (or a failed poll): read the table again.
    }
    let mut file =
        File::open("/proc/thread-self/mountinfo").context("opening /proc/thread-self/mountinfo")?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .context("reading /proc/thread-self/mountinfo")?;
    let text: Arc<str> = text.into();
    *table = Some(Table {
        ns,
        file,
        text: Arc::clone(&text),
    });
    Ok(text)
}

/// Parses one line of /proc/self/mountinfo.
fn parse_line(line: &str) -> Option<MountEntry> {
    let mut f = line.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let point = f.nth(2)?;
    let opts = f.next()?;
    Some(MountEntry {
        id,
        parent,
        point: unescape(point),
        readonly: opts.split(',').any(|o| o == "ro"),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:21 /var/lib/provision/app/releases/a/app/etc /etc/app rw,relatime shared:1 - ext4 /dev/vda rw
41 40 0:21 /var/lib/provision/app/releases/b/app/etc /etc/app ro,relatime shared:1 - ext4 /dev/vda rw
42 22 0:21 /x /etc/with\\040space rw - ext4 /dev/vda rw
";

    #[test]
    fn mountinfo_entries_layers_and_escapes() {
        let top = entry(INFO, 41).expect("41");
        assert!(top.readonly);
        assert_eq!(top.point, b"/etc/app");
        assert_eq!(layers(INFO, 41), 2);
        assert_eq!(layers(INFO, 40), 1);
        assert_eq!(entry(INFO, 42).expect("42").point, b"/etc/with space");
        assert_eq!(entry(INFO, 7), None);
    }
}
