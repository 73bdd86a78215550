//! Bringing the host to a release: bind mounts, then the unit's action.
//!
//! Used by every command that changes what a service sees: a pass, the
//! boot-time restore and, later, rollbacks. The release is complete before
//! anything here runs, so a mount only ever switches to a whole tree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use git2::{Oid, Repository};

use crate::config::Service;
use crate::host::mount::{self, Before, Wanted};
use crate::host::systemd::{self, ActionOutcome};

/// How long a unit's action job may take before the pass gives up on it.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Directories whose files systemd reads as unit files: a mount there needs
/// a daemon-reload before the action.
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd",
    "/run/systemd",
    "/usr/lib/systemd",
    "/lib/systemd",
];

/// Mounts every `dirs` entry of `svc` from `release` and says what each
/// mount point showed before.
pub fn mount_release(svc: &Service, release: &Path) -> Result<Vec<Before>> {
    svc.dirs
        .iter()
        .map(|d| {
            let w = Wanted {
                local: &d.local,
                source: release.join(&d.link),
                file: d.file,
                readonly: d.readonly,
                allow_writable_parents: d.allow_writable_parents,
            };
            mount::ensure(&w)
        })
        .collect()
}

/// Removes mounts provision made earlier on paths no longer in `dirs`.
pub fn unmount_dropped(svc: &Service, previously: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut dropped = Vec::new();
    for local in previously {
        if !svc.dirs.iter().any(|d| &d.local == local) {
            mount::detach(local)?;
            dropped.push(local.clone());
        }
    }
    Ok(dropped)
}

/// Whether going from commit `from` to `to` changes any path `svc` mounts.
/// Unknown when `from` is not in the mirror any more: then it counts as a
/// change, since an extra reload is cheaper than a missed one.
pub fn content_changed(repo: &Repository, from: Option<&str>, to: Oid, svc: &Service) -> bool {
    let Some(from) = from.and_then(|f| Oid::from_str(f).ok()) else {
        return true;
    };
    if from == to {
        return false;
    }
    let ids = |commit: Oid| -> Option<Vec<Oid>> {
        let tree = repo.find_commit(commit).ok()?.tree().ok()?;
        svc.dirs
            .iter()
            .map(|d| tree.get_path(Path::new(&d.link)).ok().map(|e| e.id()))
            .collect()
    };
    match (ids(from), ids(to)) {
        (Some(a), Some(b)) => a != b,
        _ => true,
    }
}

/// Runs the service's action (after a daemon-reload when it mounts unit
/// files). `Ok(None)` when no action is configured.
pub fn run_action(svc: &Service) -> Result<Option<ActionOutcome>> {
    let Some(action) = svc.action else {
        return Ok(None);
    };
    if svc
        .dirs
        .iter()
        .any(|d| UNIT_DIRS.iter().any(|u| d.local.starts_with(u)))
    {
        systemd::daemon_reload().context("reloading systemd for changed unit files")?;
    }
    systemd::run_action(&svc.unit, action, ACTION_TIMEOUT).map(Some)
}
