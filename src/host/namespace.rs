//! Mount namespaces other than the host's: a private one, in which a
//! `validate` command sees a candidate release where the service will see
//! it without the host seeing anything, and a sandboxed unit's own, which
//! does not always show what the host's mounts show.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::mount::MountPropagationFlags;
use rustix::thread::UnshareFlags;

/// Runs `work` on a thread of its own in a new mount namespace, a private
/// copy of this one: mounts made there, and by any process started there,
/// never reach the host, and vanish when the thread and those processes
/// end (a crash included).
pub fn in_private_mounts<T: Send>(work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare_mounts()?;
            rustix::mount::mount_change(
                "/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )
            .context("making the private mount namespace's mounts private")?;
            work()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the private mount namespace's thread panicked"
            ))
        })
    })
}

/// Runs `work` on a thread of its own inside the mount namespace of
/// process `pid` (a sandboxed unit's), with that process's root directory
/// as its own, so that paths resolve as the process resolves them (a
/// container's systemd, or a unit's `RootDirectory=`, is chrooted inside
/// its namespace) and mounts it makes land there and only there.
pub fn in_namespace_of<T: Send>(pid: u32, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/proc/{pid}/ns/mnt");
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let root_path = format!("/proc/{pid}/root");
    let root = std::fs::File::open(&root_path).with_context(|| format!("opening {root_path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&ns, &root)
                .with_context(|| format!("entering the mount namespace of process {pid}"))?;
            work()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the thread in process {pid}'s namespace panicked"
            ))
        })
    })
}

/// Moves the calling thread (only) into the mount namespace `ns` and under
/// the root directory `root`; the thread first stops sharing its root and
/// working directory, which `setns` requires.
#[allow(unsafe_code)]
fn enter(ns: &std::fs::File, root: &std::fs::File) -> Result<()> {
    use std::os::fd::AsFd;
    // SAFETY: only FS (root, cwd, umask) is unshared; the file descriptor
    // table stays shared, which is what `unshare_unsafe`'s rule is about.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::FS) }
        .context("unsharing the thread's filesystem attributes")?;
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Mount),
    )
    .context("setns")?;
    rustix::process::fchdir(root.as_fd()).context("changing to the process's root")?;
    rustix::process::chroot(".").context("chroot to the process's root")?;
    Ok(())
}

/// Moves the calling thread (only) into a new mount namespace.
#[allow(unsafe_code)]
fn unshare_mounts() -> Result<()> {
    // SAFETY: only NEWNS (with the FS attributes it implies) is unshared;
    // the file descriptor table stays shared, which is what the safety
    // rule of `unshare_unsafe` is about.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }
        .context("creating a private mount namespace (unshare CLONE_NEWNS)")
}

/// What a process's own mount namespace shows at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sight {
    /// The process shares the host's mount namespace: it sees what the
    /// host sees.
    Host,
    /// Its own namespace shows the wanted file or directory.
    Same,
    /// Its own namespace shows something else there (or nothing).
    Other,
}

/// Whether process `pid` sees `source` (a release path) at `local`.
/// Compares device and inode through `/proc/PID/root`, which resolves paths
/// in the process's own mount namespace.
pub fn sees(pid: u32, local: &Path, source: &Path) -> Result<Sight> {
    let own = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .with_context(|| format!("reading the mount namespace of process {pid}"))?;
    let host = std::fs::read_link("/proc/self/ns/mnt")
        .context("reading this process's mount namespace")?;
    if own == host {
        return Ok(Sight::Host);
    }
    let want =
        std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
    let inside = in_root(pid, local);
    Ok(match std::fs::metadata(&inside) {
        Ok(m) if m.dev() == want.dev() && m.ino() == want.ino() => Sight::Same,
        Ok(_) => Sight::Other,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Sight::Other,
        Err(e) => return Err(e).with_context(|| format!("reading {}", inside.display())),
    })
}

/// Whether process `pid` can write to `local` as its namespace shows it:
/// a read-only mount there stays read-only for the service.
pub fn writable(pid: u32, local: &Path) -> Result<bool> {
    let inside = in_root(pid, local);
    let st =
        rustix::fs::statvfs(&inside).with_context(|| format!("statvfs {}", inside.display()))?;
    Ok(!st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// `local` as process `pid` resolves it.
fn in_root(pid: u32, local: &Path) -> PathBuf {
    let rel = local.strip_prefix("/").unwrap_or(local);
    Path::new(&format!("/proc/{pid}/root")).join(rel)
}
