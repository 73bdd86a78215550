//! Where a service's things are on disk, in one place: its directory of
//! releases and manifests (below `mount`, by default the state directory)
//! and the lock that serializes everything changing it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::Service;
use crate::model::place::Place;
use crate::store::release::Releases;
use crate::store::state::StateDir;
use crate::util::lock::Lock;

/// How long a command waits for another one working on the same service.
pub const SERVICE_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// Refuses a `mount` directory that somebody other than root could change,
/// or that lies below such a directory (as mount points' parents are
/// refused): such a user could swap a mirror or a release for one of their
/// own between two passes. Made (root's, 0755) when missing.
pub fn trusted_base(svc: &Service) -> Result<()> {
    let Some(base) = &svc.mount else {
        return Ok(());
    };
    crate::util::dirfd::Dir::open_trusted(base, true)
        .map(|_| ())
        .with_context(|| format!("`mount` {} of service {}", base.display(), svc.name))
}

/// The releases of a service.
pub fn releases(place: &Place) -> Releases {
    Releases::new(&place.releases)
}

/// Serializes everything that changes one service: passes, restores and
/// operator commands.
pub fn lock_service(sd: &StateDir, svc: &Service) -> Result<Lock> {
    lock_named(sd, &svc.name)
}

/// [`lock_service`] for a service known by its name only (one the config
/// does not have, or cannot be read for).
pub fn lock_named(sd: &StateDir, name: &str) -> Result<Lock> {
    let what = format!("service {name}");
    Lock::acquire(&sd.lock_path(), SERVICE_LOCK_TIMEOUT, &what)
}

/// The service lock if it is free now; `None` while another process (a
/// pass) holds it.
pub fn try_lock(sd: &StateDir) -> Result<Option<Lock>> {
    Lock::try_acquire(&sd.lock_path())
}

/// The names of the services that have a state directory under
/// `state_dir`, sorted: every service provision has worked on here,
/// whatever the config says now.
pub fn known_services(state_dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("listing {}", state_dir.display())))
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", state_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().join(crate::store::state::FILE).is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The file to read `config` from: the deployed release's copy when a
/// service's recorded mount shows it at `config` (provision manages its
/// own config), else `config` itself.
pub fn deployed_copy(state_dir: &Path, config: &Path) -> PathBuf {
    let names = known_services(state_dir).unwrap_or_default();
    names
        .iter()
        .filter_map(|n| StateDir::new(state_dir, n).load().ok())
        .flat_map(|s| s.mounted)
        .find(|r| r.local == config && r.source.is_file())
        .map_or_else(|| config.to_path_buf(), |r| r.source)
}
