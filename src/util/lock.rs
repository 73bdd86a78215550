//! Advisory file locks (flock) that serialize work on shared on-disk objects:
//! a mirror fetched by several per-service timers, a service's releases.
//! The kernel drops a flock when its holder dies, so a killed pass never
//! leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// A held exclusive lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

impl Lock {
    /// Takes the lock on `path` only if it is free now; `None` when another
    /// process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        if let Some(dir) = path.parent() {
            crate::util::private_dir(dir)?;
        }
        match Flock::lock(open(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(Some(Lock { _flock: flock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Takes the exclusive lock on `path` (created if missing), waiting up to
    /// `timeout`. A message is printed once when the lock is busy, so an
    /// operator whose command waits for a timer run knows why.
    pub fn acquire(path: &Path, timeout: Duration, what: &str) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            // Lock files live in the state dir and beside the mirrors:
            // both are root's alone, and one of a user is refused.
            crate::util::private_dir(dir)?;
        }
        let mut file = open(path)?;
        let start = Instant::now();
        let mut told = false;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(Lock { _flock: flock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{what} is busy: another provision process holds {} (waited {}s)",
                    path.display(),
                    timeout.as_secs()
                );
            }
            if !told {
                eprintln!(
                    "waiting for {what}: another provision process holds {}",
                    path.display()
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn open(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a symlink planted at the name is never opened through.
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_times_out_with_a_message_naming_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let held = Lock::acquire(&path, Duration::from_secs(1), "mirror").expect("first lock");
        let err =
            Lock::acquire(&path, Duration::from_millis(100), "mirror").expect_err("must be busy");
        assert!(format!("{err:#}").contains("x.lock"), "{err:#}");
        drop(held);
        Lock::acquire(&path, Duration::from_millis(100), "mirror").expect("free again after drop");
    }
}
