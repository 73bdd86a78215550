//! One reconcile pass: fetch each mirror once, then bring every selected
//! service to the fetched commit.
//!
//! A failure is confined to the service it concerns: the others still
//! converge, and the failed one keeps serving its last good release while
//! its state records why the pass failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::Service;
use crate::git::{self, Mirror};
use crate::lock::Lock;
use crate::release::{Owner, Releases};
use crate::state::{Deployed, PassRecord, StateDir, UpstreamSeen};
use crate::util::now_unix;

/// How long a pass waits for another command working on the same service.
pub const SERVICE_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// The directory holding a service's releases: `<mount>/<name>`, where
/// `mount` defaults to the state directory.
pub fn service_dir(svc: &Service, state_dir: &Path) -> PathBuf {
    base_dir(svc, state_dir).join(&svc.name)
}

/// The base directory of a service's mirrors and releases.
pub fn base_dir(svc: &Service, state_dir: &Path) -> PathBuf {
    svc.mount.clone().unwrap_or_else(|| state_dir.to_path_buf())
}

/// The mirror a service fetches through.
pub fn mirror_of(svc: &Service, state_dir: &Path) -> Mirror {
    Mirror::new(&base_dir(svc, state_dir), &svc.upstream, &svc.branch)
}

/// What a pass did to one service.
#[derive(Debug)]
pub struct Report {
    pub service: String,
    pub outcome: Result<Outcome>,
}

/// A successful pass for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new release was deployed (`from` is the previous commit, if any).
    Deployed {
        from: Option<String>,
        to: String,
        notes: Vec<String>,
    },
    /// Already at the upstream head.
    Unchanged { commit: String, notes: Vec<String> },
}

/// Runs one pass over `selected`. `all` are every service of this machine,
/// used to know which mirrors are still in use.
pub fn sync(selected: &[&Service], all: &[&Service], state_dir: &Path) -> Vec<Report> {
    let fetched = fetch_all(selected, state_dir);
    let reports = selected
        .iter()
        .map(|svc| {
            let mirror = mirror_of(svc, state_dir);
            let fetch = &fetched[&mirror.path];
            Report {
                service: svc.name.clone(),
                outcome: reconcile(svc, &mirror, fetch, state_dir),
            }
        })
        .collect();
    remove_unused_mirrors(all, state_dir);
    reports
}

/// Fetches every mirror used by `services` once, to the deepest depth any
/// of them asks for.
fn fetch_all(
    services: &[&Service],
    state_dir: &Path,
) -> BTreeMap<PathBuf, Result<git::Fetched, String>> {
    let mut groups: BTreeMap<PathBuf, (Mirror, u32, &Service)> = BTreeMap::new();
    for svc in services {
        let m = mirror_of(svc, state_dir);
        let e = groups.entry(m.path.clone()).or_insert((m, svc.depth, svc));
        e.1 = e.1.max(svc.depth);
    }
    groups
        .into_iter()
        .map(|(path, (mirror, depth, svc))| {
            let r = mirror
                .fetch(depth, &svc.credentials, svc.timeout)
                .map_err(|e| format!("{e:#}"));
            (path, r)
        })
        .collect()
}

/// Brings one service to the fetched head, under the service lock.
fn reconcile(
    svc: &Service,
    mirror: &Mirror,
    fetched: &Result<git::Fetched, String>,
    state_dir: &Path,
) -> Result<Outcome> {
    let sd = StateDir::new(state_dir, &svc.name);
    let _lock = Lock::acquire(
        &sd.lock_path(),
        SERVICE_LOCK_TIMEOUT,
        &format!("service {}", svc.name),
    )?;
    let mut state = sd.load()?;
    let result = match fetched {
        Ok(f) => deploy(svc, mirror, f, state_dir, &mut state),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    state.last_pass = Some(PassRecord {
        time: now_unix(),
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
    });
    sd.save(&state)?;
    result
}

fn deploy(
    svc: &Service,
    mirror: &Mirror,
    fetched: &git::Fetched,
    state_dir: &Path,
    state: &mut crate::state::State,
) -> Result<Outcome> {
    let head = fetched.head;
    state.upstream = Some(UpstreamSeen {
        commit: head.to_string(),
        fetched: now_unix(),
    });
    let mut notes: Vec<String> = fetched
        .rebuilt
        .iter()
        .map(|r| format!("mirror rebuilt: {r}"))
        .collect();
    let releases = Releases::new(&service_dir(svc, state_dir));
    let owner = svc.user.as_deref().map(Owner::lookup).transpose()?;
    let repo = mirror.open()?;
    let path = releases.materialize(&repo, head, &svc.dirs, owner)?;
    let name = file_name(&path)?;
    let previous = state.deployed.clone();
    let outcome = if previous.as_ref().is_some_and(|d| d.release == name) {
        Outcome::Unchanged {
            commit: head.to_string(),
            notes: Vec::new(),
        }
    } else {
        releases.touch(&name)?;
        state.deployed = Some(Deployed {
            commit: head.to_string(),
            release: name.clone(),
            time: now_unix(),
        });
        Outcome::Deployed {
            from: previous.map(|d| d.commit),
            to: head.to_string(),
            notes: Vec::new(),
        }
    };
    let keep = usize::try_from(svc.depth).unwrap_or(usize::MAX);
    for removed in releases.prune(keep, &name)? {
        notes.push(format!("removed old release {removed}"));
    }
    Ok(match outcome {
        Outcome::Deployed { from, to, .. } => Outcome::Deployed { from, to, notes },
        Outcome::Unchanged { commit, .. } => Outcome::Unchanged { commit, notes },
    })
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("release path {} has no name", path.display()))
}

/// Deletes mirrors no service of this machine uses any more (after a branch
/// or upstream change), skipping any another process is using right now.
fn remove_unused_mirrors(all: &[&Service], state_dir: &Path) {
    let mut bases: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for svc in all {
        let m = mirror_of(svc, state_dir);
        bases
            .entry(base_dir(svc, state_dir))
            .or_default()
            .push(m.path);
    }
    for (base, used) in bases {
        if let Err(e) = git::remove_unused(&base, &used) {
            eprintln!(
                "warning: cleaning old mirrors under {}: {e:#}",
                base.display()
            );
        }
    }
}
