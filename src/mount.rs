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

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::release::Owner;

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
    pub local: &'a Path,
    pub source: PathBuf,
    pub file: bool,
    pub readonly: bool,
}

/// Inspects `local` without changing anything.
pub fn inspect(w: &Wanted<'_>) -> Result<Before> {
    let src = fs::metadata(&w.source)
        .with_context(|| format!("reading release path {}", w.source.display()))?;
    let Some(top) = mount_at(w.local)? else {
        return Ok(Before::Missing);
    };
    let here = match fs::metadata(w.local) {
        Ok(m) => m,
        Err(_) => return Ok(Before::Other),
    };
    let same = here.dev() == src.dev() && here.ino() == src.ino();
    // More than one layer is the leftover of an interrupted switch: the
    // stale layer pins an old release, so it is not correct even when the
    // top shows the wanted one.
    Ok(
        if same && top.readonly == w.readonly && layers_at(w.local)? == 1 {
            Before::Correct
        } else {
            Before::Other
        },
    )
}

/// Makes `local` show `source`, creating `local` when missing, and says
/// what was there before.
pub fn ensure(w: &Wanted<'_>, owner: Option<Owner>) -> Result<Before> {
    let before = inspect(w)?;
    match before {
        Before::Correct => {}
        Before::Missing => {
            create_target(w, owner)?;
            attach(w).with_context(|| {
                format!("mounting {} on {}", w.source.display(), w.local.display())
            })?;
        }
        Before::Other => switch(w).with_context(|| {
            format!("switching {} to {}", w.local.display(), w.source.display())
        })?,
    }
    Ok(before)
}

/// Removes provision's mount from `local` (all stacked layers of it).
pub fn detach(local: &Path) -> Result<()> {
    while mount_at(local)?.is_some() {
        umount2(local, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", local.display()))?;
    }
    Ok(())
}

/// Creates a missing mount point: a directory, or an empty file for a
/// single-file mount, owned by the service user. A symlink is refused: the
/// mount would land on whatever it points to.
fn create_target(w: &Wanted<'_>, owner: Option<Owner>) -> Result<()> {
    match fs::symlink_metadata(w.local) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symlink; refusing to mount over its target",
            w.local.display()
        ),
        Ok(m) if w.file && m.is_dir() => bail!(
            "{} is a directory but the repository path is a file",
            w.local.display()
        ),
        Ok(m) if !w.file && !m.is_dir() => bail!(
            "{} is a file but the repository path is a directory",
            w.local.display()
        ),
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    let parent = w.local.parent().context("mount point has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    if w.file {
        fs::File::create(w.local).with_context(|| format!("creating {}", w.local.display()))?;
    } else {
        fs::create_dir(w.local).with_context(|| format!("creating {}", w.local.display()))?;
    }
    if let Some(o) = owner {
        nix::unistd::chown(w.local, Some(o.uid), Some(o.gid))
            .with_context(|| format!("changing owner of {}", w.local.display()))?;
    }
    Ok(())
}

/// A fresh bind mount on an unmounted `local`.
fn attach(w: &Wanted<'_>) -> Result<()> {
    mount(
        Some(&w.source),
        w.local,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind mount")?;
    if w.readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, w.local, None::<&str>, flags, None::<&str>)
            .context("making the mount read-only")?;
    }
    Ok(())
}

/// Replaces whatever is mounted on `local` with `source`.
fn switch(w: &Wanted<'_>) -> Result<()> {
    // A switch killed between mounting beneath and detaching the old top
    // leaves two layers. Drop the upper ones first (each is a whole
    // release): mounting beneath again would leave the stale layer at the
    // bottom for good, and the release it shows could never be removed.
    while layers_at(w.local)? > 1 {
        umount2(w.local, MntFlags::MNT_DETACH).context("detaching a stale layer")?;
    }
    match switch_beneath(w) {
        Ok(()) => Ok(()),
        // ENOSYS/EINVAL: no open_tree or no MOVE_MOUNT_BENEATH (Linux < 6.5).
        Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL) => {
            umount2(w.local, MntFlags::MNT_DETACH).context("unmounting the old release")?;
            attach(w)
        }
        Err(e) => Err(e).context("mounting the new release beneath the old one"),
    }
}

/// The atomic switch: clone the source as a detached mount, slide it under
/// the current top mount of `local`, then detach the top.
fn switch_beneath(w: &Wanted<'_>) -> std::result::Result<(), nix::errno::Errno> {
    let tree = open_tree(&w.source)?;
    if w.readonly {
        set_readonly(&tree)?;
    }
    move_mount_beneath(&tree, w.local)?;
    umount2(w.local, MntFlags::MNT_DETACH)
}

fn cstr(p: &Path) -> std::result::Result<CString, nix::errno::Errno> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| nix::errno::Errno::EINVAL)
}

fn open_tree(source: &Path) -> std::result::Result<OwnedFd, nix::errno::Errno> {
    let path = cstr(source)?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint;
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_readonly(tree: &OwnedFd) -> std::result::Result<(), nix::errno::Errno> {
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
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

fn move_mount_beneath(tree: &OwnedFd, target: &Path) -> std::result::Result<(), nix::errno::Errno> {
    let to = cstr(target)?;
    let empty = c"";
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_BENEATH;
    // SAFETY: valid fd and C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// The top mount at exactly `path`, from this process's mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub readonly: bool,
}

/// The top-most mount whose mount point is `path`, if any.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    Ok(parse_mountinfo(&mountinfo()?, path))
}

/// How many mounts are stacked on `path` (0: not a mount point).
fn layers_at(path: &Path) -> Result<usize> {
    let text = mountinfo()?;
    let want = path.as_os_str().as_encoded_bytes();
    Ok(text
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| unescape(p) == want))
        .count())
}

/// This process's mount table, read again only when it changed.
///
/// The kernel formats the whole table (every mount of the namespace) on
/// each read of /proc/self/mountinfo, and a pass looks at each service's
/// mounts several times: read afresh every time, that cost grew with
/// services times mounts. The open file reports any change to the
/// namespace's mounts, by this process or another, as POLLPRI on poll(2);
/// without one the text read last is still the table.
fn mountinfo() -> Result<Arc<str>> {
    struct Table {
        file: File,
        text: Arc<str>,
    }
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = table.as_mut() {
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
    let mut file = File::open("/proc/self/mountinfo").context("opening /proc/self/mountinfo")?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .context("reading /proc/self/mountinfo")?;
    let text: Arc<str> = text.into();
    *table = Some(Table {
        file,
        text: Arc::clone(&text),
    });
    Ok(text)
}

/// Finds the top entry for `path`: later lines stack on earlier ones, so
/// the last matching line wins.
fn parse_mountinfo(text: &str, path: &Path) -> Option<MountEntry> {
    let want = path.as_os_str().as_encoded_bytes();
    text.lines().rev().find_map(|line| {
        let mut f = line.split(' ');
        let point = f.nth(4)?;
        let opts = f.next()?;
        (unescape(point) == want).then(|| MountEntry {
            readonly: opts.split(',').any(|o| o == "ro"),
        })
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
    fn mountinfo_top_entry_and_escapes() {
        assert_eq!(
            parse_mountinfo(INFO, Path::new("/etc/app")),
            Some(MountEntry { readonly: true })
        );
        assert_eq!(
            parse_mountinfo(INFO, Path::new("/etc/with space")),
            Some(MountEntry { readonly: false })
        );
        assert_eq!(parse_mountinfo(INFO, Path::new("/etc")), None);
    }
}
