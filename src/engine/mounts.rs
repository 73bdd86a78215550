//! A service's mounts: made from a release, recorded in its state for a
//! restore that needs no config, dropped when `dirs` no longer names them,
//! and said in a pass's notes.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::Service;
use crate::host::mount::{self, Before, Wanted};
use crate::model::pass::{Note, NoteKind};
use crate::store::state::{MountRecord, State};

/// Mounts every `dirs` entry of `svc` from `release` and says what each
/// mount point showed before.
pub fn mount_release(svc: &Service, release: &Path) -> Result<Vec<Before>> {
    svc.dirs
        .iter()
        .map(|d| {
            let w = Wanted::of(d, release);
            mount::ensure(&w)
        })
        .collect()
}

/// [`mount_release`], recording the mounts in `state` for a restore that
/// needs no config.
pub(crate) fn mount_recorded(
    svc: &Service,
    release: &Path,
    state: &mut State,
) -> Result<Vec<Before>> {
    let befores = mount_release(svc, release)?;
    state.mounts = svc.dirs.iter().map(|d| d.local.clone()).collect();
    state.mounted = svc
        .dirs
        .iter()
        .map(|d| MountRecord::of(d, release))
        .collect();
    Ok(befores)
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

/// A pass's note for each mount point that did not already show the
/// release: mounted, switched, or (`same_release`) repaired.
pub(crate) fn notes(svc: &Service, befores: &[Before], same_release: bool) -> Vec<Note> {
    svc.dirs
        .iter()
        .zip(befores)
        .filter_map(|(d, b)| {
            match b {
                Before::Correct => None,
                Before::Missing => Some(format!("mounted {}", d.local.display())),
                Before::Other if same_release => {
                    Some(format!("repaired mount {}", d.local.display()))
                }
                Before::Other => Some(format!("switched {}", d.local.display())),
            }
            .map(|text| Note::new(NoteKind::Mount, text))
        })
        .collect()
}
