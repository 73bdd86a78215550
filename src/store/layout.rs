//! Where a service's things are on disk, in one place: its directory of
//! releases and manifests (below `mount`, by default the state directory)
//! and the lock that serializes everything changing it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::config::Service;
use crate::store::release::Releases;
use crate::store::state::StateDir;
use crate::util::lock::Lock;

/// How long a command waits for another one working on the same service.
pub const SERVICE_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// The directory holding a service's releases: `<mount>/<name>`.
pub fn service_dir(svc: &Service, state_dir: &Path) -> PathBuf {
    svc.base_dir(state_dir).join(&svc.name)
}

/// The releases of a service.
pub fn releases(svc: &Service, state_dir: &Path) -> Releases {
    Releases::new(&service_dir(svc, state_dir))
}

/// Serializes everything that changes one service: passes, restores and
/// operator commands.
pub fn lock_service(sd: &StateDir, svc: &Service) -> Result<Lock> {
    let what = format!("service {}", svc.name);
    Lock::acquire(&sd.lock_path(), SERVICE_LOCK_TIMEOUT, &what)
}
