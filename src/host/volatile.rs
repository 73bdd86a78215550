//! Whether a directory forgets its contents at reboot: releases kept on
//! tmpfs or ramfs are gone after one, and a service would then start on
//! whatever its package ships (gitopper's example config mounts under
//! `/tmp`).

use std::path::Path;

use anyhow::{Context, Result};

/// `TMPFS_MAGIC` from statfs(2).
const TMPFS: i64 = 0x0102_1994;
/// `RAMFS_MAGIC` from statfs(2).
const RAMFS: i64 = 0x8584_58f6;

/// The memory-backed file system `path` is on ("tmpfs", "ramfs"), or `None`
/// for one that survives a reboot. A path that does not exist yet is
/// judged by the closest directory above it that does.
pub fn memory_backed(path: &Path) -> Result<Option<&'static str>> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => return Ok(None),
        }
    }
    let st = rustix::fs::statfs(probe).with_context(|| format!("statfs {}", probe.display()))?;
    #[allow(clippy::unnecessary_cast)]
    Ok(match st.f_type as i64 {
        TMPFS => Some("tmpfs"),
        RAMFS => Some("ramfs"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_memory_and_the_project_is_not() {
        assert_eq!(
            memory_backed(Path::new("/dev/shm/not/yet/there")).expect("statfs"),
            Some("tmpfs")
        );
        assert_eq!(
            memory_backed(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("statfs"),
            None
        );
    }
}
