//! What this machine shows now for one service, compared with what
//! provision deployed: drifted files, mounts, and the unit's state.
//!
//! Used at the end of every pass (its findings go into the state file and
//! from there into the metrics) and live by `provision status`. Nothing here
//! changes the host, takes a lock or touches the network.

use std::path::PathBuf;

use anyhow::Result;
use git2::Repository;

use crate::config::Service;
use crate::host::mount::{self, Before, Wanted};
use crate::host::systemd;
use crate::model::place::Place;
use crate::store::drift::{self, Drifted};
use crate::store::layout;
use crate::store::state::{Deployed, MountRecord, State};

/// The host as seen for one service.
#[derive(Debug)]
pub struct Observation {
    /// Drifted files of the deployed release (empty when nothing is deployed).
    pub drift: Result<Vec<Drifted>>,
    /// One check per `dirs` entry (empty when nothing is deployed).
    pub mounts: Vec<MountCheck>,
    /// The unit's ActiveState, or `None` when systemd cannot be asked.
    pub unit_state: Option<String>,
}

impl Observation {
    /// Whether every mount shows the deployed release.
    pub fn mounts_ok(&self) -> bool {
        self.mounts.iter().all(|m| m.state == MountState::Ok)
    }

    /// Drifted files, counting an unreadable release as unknown.
    pub fn drift_count(&self) -> Option<usize> {
        self.drift.as_ref().ok().map(Vec::len)
    }
}

/// What one mount point shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCheck {
    /// The mount point.
    pub local: PathBuf,
    /// What it shows.
    pub state: MountState,
}

/// The state of one mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// The deployed release, with the configured read-only flag.
    Ok,
    /// Nothing is mounted there.
    Missing,
    /// Something else is mounted there (another release, a stranger, or
    /// the right tree with the wrong read-only flag).
    Other,
    /// It could not be checked (for example the release is gone).
    Error(String),
}

/// Looks at the host for `svc`, as recorded in `state`.
pub fn observe(
    svc: &Service,
    place: &Place,
    state: &State,
    repo: Option<&Repository>,
) -> Observation {
    let (drift, mounts) = match &state.deployed {
        Some(d) => (drift(svc, place, d, repo), mounts(svc, place, d)),
        None => (Ok(Vec::new()), Vec::new()),
    };
    Observation {
        drift,
        mounts,
        unit_state: systemd::active_state(&svc.unit).ok(),
    }
}

/// The files of the deployed release that differ from its commit.
pub fn drift(
    svc: &Service,
    place: &Place,
    deployed: &Deployed,
    repo: Option<&Repository>,
) -> Result<Vec<Drifted>> {
    let releases = layout::releases(place);
    let path = releases.path(&deployed.release);
    anyhow::ensure!(
        path.is_dir(),
        "deployed release {} is missing",
        path.display()
    );
    let commit = deployed.commit.oid();
    let manifest = releases.manifest(&deployed.release, repo, commit, &svc.dirs)?;
    drift::scan(&path, &manifest, &svc.dirs)
}

/// Checks each mount of `svc` against the deployed release.
pub fn mounts(svc: &Service, place: &Place, deployed: &Deployed) -> Vec<MountCheck> {
    let release = layout::releases(place).path(&deployed.release);
    svc.dirs
        .iter()
        .map(|d| MountCheck {
            local: d.local.clone(),
            state: shows(&Wanted::of(d, &release)),
        })
        .collect()
}

/// What a mount recorded in a state file shows now.
pub fn recorded_mount(r: &MountRecord) -> MountState {
    shows(&recorded(r))
}

/// The mount a state file's record asks for, to make it again.
pub fn recorded(r: &MountRecord) -> Wanted<'_> {
    Wanted {
        local: &r.local,
        source: r.source.clone(),
        file: r.file,
        readonly: r.readonly,
        allow_writable_parents: r.allow_writable_parents,
    }
}

/// What `local` shows against the wanted mount.
fn shows(w: &Wanted<'_>) -> MountState {
    match mount::inspect(w) {
        Ok(Before::Correct) => MountState::Ok,
        Ok(Before::Missing) => MountState::Missing,
        Ok(Before::Other) => MountState::Other,
        Err(e) => MountState::Error(format!("{e:#}")),
    }
}

/// Drifted paths as the operator knows them: where they appear on the host.
pub fn drift_lines(svc: &Service, drifted: &[Drifted]) -> Vec<String> {
    drifted
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d.change.as_str(),
                drift::local_path(&svc.dirs, &d.rel).display()
            )
        })
        .collect()
}
