//! The apply transaction every command that changes a service shares (a
//! pass, a rollback, a forward, the boot-time restore): package, release,
//! mounts, state, action, in that order. The release is complete before
//! any mount switches to it, so a mount only ever shows a whole tree.

use std::path::{Path, PathBuf};

use anyhow::Result;
use git2::{Oid, Repository};

use crate::config::{DriftPolicy, Service};
use crate::engine::mounts;
pub use crate::engine::report::{Held, Keeper, Outcome, Report, Serving};
use crate::engine::trial::{self, WhenStopped};
use crate::git::mirror::Mirror;
use crate::host::mount::Before;
use crate::host::package;
use crate::model::commit::CommitId;
use crate::model::pass::{Note, NoteKind};
use crate::model::place::Place;
use crate::observe;
use crate::store::drift::{self, Drifted};
use crate::store::layout;
use crate::store::release::Releases;
use crate::store::state::{Deployed, State, StateDir, Trial};
use crate::util::now_unix;

/// Whether going from commit `from` to `to` changes any path `svc` mounts.
/// Unknown when `from` is not in the mirror any more: then it counts as a
/// change, since an extra reload is cheaper than a missed one.
pub fn content_changed(repo: &Repository, from: Option<CommitId>, to: Oid, svc: &Service) -> bool {
    let Some(from) = from.map(CommitId::oid) else {
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

/// What [`apply`] deploys, and how it treats local edits.
pub(crate) struct Plan<'a> {
    /// The mirror; may be missing when the release of `target` is already
    /// on disk (an offline rollback).
    pub repo: Option<&'a Repository>,
    pub target: Oid,
    pub policy: DriftPolicy,
    /// Whether a unit that is not running is started.
    pub stopped: WhenStopped,
}

/// Package, release, mounts, state, action: in that order, so the unit is
/// only told about files that are already in place, and the state never
/// claims a release the mounts do not show.
pub(crate) fn apply(
    svc: &Service,
    place: &Place,
    sd: &StateDir,
    state: &mut State,
    plan: &Plan<'_>,
    mut notes: Vec<Note>,
) -> Result<Outcome> {
    let (repo, target) = (plan.repo, plan.target);
    let moving = state.deployed.as_ref().map(|d| d.commit) != Some(CommitId::from(target));
    if moving {
        crate::engine::trust::require_signed(svc, repo, state, target)?;
    }
    if let Some(pkg) = &svc.package {
        if package::ensure(pkg)? {
            notes.push(Note::new(
                NoteKind::Package,
                format!("installed package {pkg}"),
            ));
        }
    }
    let releases = layout::releases(place);
    let name = Releases::name(target, svc);
    let previous = state.deployed.clone();
    let same_release = previous.as_ref().is_some_and(|d| d.release == name);
    let rewrite = match &previous {
        Some(prev) if releases.exists(&prev.release) => {
            // Fail closed: a release whose files cannot be checked is
            // treated as changed everywhere, never as clean.
            let drifted = observe::drift(svc, place, prev, repo).unwrap_or_else(|e| {
                notes.push(Note::new(
                    NoteKind::Drift,
                    format!("could not check for local changes: {e:#}"),
                ));
                svc.dirs
                    .iter()
                    .map(|d| Drifted {
                        rel: PathBuf::from(&d.link),
                        change: drift::Change::Modified,
                    })
                    .collect()
            });
            let old = releases.path(&prev.release);
            resolve_drift(svc, plan, &old, same_release, &drifted, &mut notes)?
        }
        _ => false,
    };
    if let Some(repo) = repo.filter(|_| rewrite || !releases.exists(&name)) {
        Mirror::of(svc, place).ensure_files(repo, target, &svc.credentials, svc.timeout)?;
    }
    let path = match repo {
        Some(repo) if rewrite => releases.rewrite(repo, target, svc)?,
        Some(repo) => releases.materialize(repo, target, svc)?,
        None if rewrite => anyhow::bail!(
            "cannot restore the locally changed files of {target}: the mirror is unavailable"
        ),
        None if releases.exists(&name) => releases.path(&name),
        None => anyhow::bail!("commit {target} has no local release and the mirror is unavailable"),
    };
    let from = previous.as_ref().map(|d| d.commit);
    let changed = !same_release && repo.is_none_or(|r| content_changed(r, from, target, svc));
    if changed {
        trial::validate_or_reject(svc, sd, state, &path, target.into())?;
    }

    for dropped in mounts::unmount_dropped(svc, &state.mounts)? {
        notes.push(Note::new(
            NoteKind::Mount,
            format!("unmounted {} (no longer in dirs)", dropped.display()),
        ));
    }
    let befores = mounts::mount_recorded(svc, &path, state)?;
    state.unit = Some(svc.unit.clone());
    state.home = Some(place.releases.clone());
    releases.remove_replaced()?;
    if rewrite {
        notes.push(Note::new(
            NoteKind::Mount,
            "remounted the restored release".to_string(),
        ));
    } else {
        notes.extend(mounts::notes(svc, &befores, same_release));
    }
    if !same_release {
        releases.touch(&name)?;
        // The last confirmed deployment stays the one to go back to, even
        // when the commit replaced here was itself still on trial.
        // A commit that changes none of this service's files takes over
        // the trial of the one it replaces (same files, same verdict due).
        let open = state.trial.take();
        let last_good = match &open {
            Some(t) => t.previous.clone(),
            None => previous.clone(),
        };
        state.deployed = Some(Deployed {
            commit: target.into(),
            release: name.clone(),
            time: now_unix(),
        });
        state.trial = (changed || open.is_some()).then(|| Trial {
            commit: target.into(),
            previous: last_good,
        });
        // Owed from now on, so a crash or a failure before it ran is
        // made up for by the next pass.
        state.action_pending |= changed && svc.action.is_some();
        sd.save(state)?;
    }
    let repaired =
        befores.contains(&Before::Missing) || (same_release && befores.contains(&Before::Other));
    // Only an action or a health check can find fault with the commit; a
    // service with neither never needs its unit asked.
    let act = svc.action.is_some() && (changed || repaired || state.action_pending);
    let judge = state.trial.is_some() && svc.checks.health.is_some();
    if act || judge {
        let verdict = trial::confirm(svc, &path, sd, state, &mut notes, act, plan.stopped)?;
        if let Some(refusal) = verdict {
            return Err(trial::reject_and_revert(
                svc, repo, &releases, sd, state, &refusal, &mut notes,
            ));
        }
    } else if plan.stopped == WhenStopped::Start && svc.action.is_some() {
        // The operator wants the service back, even when no file changed.
        trial::start_if_stopped(svc, &mut notes)?;
    }
    state.action_pending &= svc.action.is_some();
    state.trial = None;
    // Deployed and confirmed: a rejection of this very commit (retried by
    // a rollback) no longer holds.
    state.rejected = state
        .rejected
        .take()
        .filter(|r| r.commit != CommitId::from(target));
    let keep = usize::try_from(svc.depth).unwrap_or(usize::MAX);
    for removed in releases.prune(keep, &name)? {
        notes.push(Note::new(
            NoteKind::Release,
            format!("removed old release {removed}"),
        ));
    }
    Ok(Outcome {
        from: previous.map(|d| d.commit),
        to: Some(target.into()),
        new_release: !same_release,
        notes,
        held: None,
    })
}

/// Decides what local edits to the deployed release mean for this pass.
/// Returns whether the release must be rewritten from Git; fails when the
/// policy is `warn` and deploying would overwrite an edit.
fn resolve_drift(
    svc: &Service,
    plan: &Plan<'_>,
    old: &Path,
    same_release: bool,
    drifted: &[Drifted],
    notes: &mut Vec<Note>,
) -> Result<bool> {
    if drifted.is_empty() {
        return Ok(false);
    }
    let n = drifted.len();
    let list = summarize(&observe::drift_lines(svc, drifted));
    let short = CommitId::from(plan.target).short();
    match (plan.policy, same_release) {
        (DriftPolicy::Restore, true) => {
            notes.push(Note::new(
                NoteKind::Drift,
                format!("restored {n} locally changed path(s) from git: {list}"),
            ));
            Ok(true)
        }
        (DriftPolicy::Restore, false) => {
            notes.push(Note::new(
                NoteKind::Drift,
                format!("discarded {n} local change(s) with the old release: {list}"),
            ));
            Ok(false)
        }
        (DriftPolicy::Warn, true) => {
            notes.push(Note::new(NoteKind::Drift, format!(
                "drift (policy warn): {n} local change(s) kept: {list}; `provision diff {}` shows them",
                svc.name
            )));
            Ok(false)
        }
        (DriftPolicy::Warn, false) => {
            let adopted = match plan.repo {
                Some(repo) => drift::adopted_by(repo, plan.target, old, drifted, &svc.dirs)?,
                None => false,
            };
            anyhow::ensure!(
                adopted,
                "not deploying {short}: it would overwrite {n} local change(s) ({list}) and the drift policy is warn; \
                 revert them (`provision diff {name}` shows them), commit them upstream, \
                 or run `provision sync --discard-drift {name}`",
                name = svc.name
            );
            notes.push(Note::new(
                NoteKind::Drift,
                format!("local change(s) {list} are in {short}: deploying it"),
            ));
            Ok(false)
        }
    }
}

/// The first few items of a list, and how many more there are.
fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}
