//! One reconcile pass: fetch each mirror once, then bring every selected
//! service to the fetched commit: package, release, mounts, action, state.
//!
//! A failure is confined to the service it concerns: the others still
//! converge, and the failed one keeps serving its last good release while
//! its state records why the pass failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use git2::{Oid, Repository};

use crate::config::{DriftPolicy, Service};
use crate::engine::apply;
use crate::git::mirror::{self, Mirror};
use crate::host::mount::Before;
use crate::host::package;
use crate::store::commit::short;
use crate::store::drift::{self, Drifted};
use crate::store::layout;
use crate::store::release::Releases;
use crate::store::state::{Deployed, PassRecord, State, StateDir, UpstreamSeen};
use crate::util::now_unix;
use crate::view::observe;

/// What a pass did to one service.
#[derive(Debug)]
pub struct Report {
    pub service: String,
    pub outcome: Result<Outcome>,
}

/// A successful pass for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The commit deployed before the pass.
    pub from: Option<String>,
    /// The commit deployed now.
    pub to: String,
    /// A new release was put in place (another commit, or other `dirs`).
    pub new_release: bool,
    /// Human-readable lines about what was done (mounts, action, pruning).
    pub notes: Vec<String>,
}

/// Runs one pass over `selected`. `all` are every service of this machine,
/// used to know which mirrors are still in use. `drift` overrides each
/// service's drift policy for this pass (`sync --discard-drift`).
pub fn sync(
    selected: &[&Service],
    all: &[&Service],
    state_dir: &Path,
    drift: Option<DriftPolicy>,
) -> Vec<Report> {
    let start = Instant::now();
    if let Err(e) = crate::util::private_dir(state_dir) {
        let e = format!("{e:#}");
        return selected
            .iter()
            .map(|svc| Report {
                service: svc.name.clone(),
                outcome: Err(anyhow::anyhow!("{e}")),
            })
            .collect();
    }
    let fetched = fetch_all(selected, state_dir);
    let reports = selected
        .iter()
        .map(|svc| {
            let mirror = Mirror::of(svc, state_dir);
            let fetch = &fetched[&mirror.path];
            let policy = drift.unwrap_or(svc.drift);
            Report {
                service: svc.name.clone(),
                outcome: reconcile(svc, &mirror, fetch, state_dir, policy, start),
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
) -> BTreeMap<PathBuf, Result<mirror::Fetched, String>> {
    let mut groups: BTreeMap<PathBuf, (Mirror, u32, &Service)> = BTreeMap::new();
    for svc in services {
        let m = Mirror::of(svc, state_dir);
        let max_bytes = m.max_fetch_bytes;
        let e = groups.entry(m.path.clone()).or_insert((m, svc.depth, svc));
        e.1 = e.1.max(svc.depth);
        e.0.max_fetch_bytes = e.0.max_fetch_bytes.max(max_bytes);
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

/// Brings one service to the fetched head, under the service lock, and
/// records the outcome with what the host shows at the end of the pass.
fn reconcile(
    svc: &Service,
    mirror: &Mirror,
    fetched: &Result<mirror::Fetched, String>,
    state_dir: &Path,
    policy: DriftPolicy,
    start: Instant,
) -> Result<Outcome> {
    let sd = StateDir::new(state_dir, &svc.name);
    let _lock = layout::lock_service(&sd, svc)?;
    let mut state = sd.load()?;
    let result = match fetched {
        Ok(f) => deploy(svc, mirror, f, state_dir, &sd, &mut state, policy),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    let now = now_unix();
    let seen = observe::observe(svc, state_dir, &state, mirror.open().ok().as_ref());
    state.last_pass = Some(PassRecord {
        time: now,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        duration_ms: u64::try_from(start.elapsed().as_millis()).ok(),
        drift_files: seen.drift_count().map(|n| n as u64),
        mounts_ok: state.deployed.as_ref().map(|_| seen.mounts_ok()),
        unit_state: seen.unit_state,
    });
    if result.is_ok() {
        state.counters.last_success = Some(now);
    } else {
        state.counters.pass_failures += 1;
    }
    match (result, sd.save(&state)) {
        (result, Ok(())) => result,
        // Keep the pass's own error first: it is the cause (a full disk
        // fails both).
        (Err(e), Err(save)) => Err(e.context(format!("also, saving the state failed: {save:#}"))),
        (Ok(_), Err(save)) => Err(save),
    }
}

/// Moves the service to the fetched head, or, while it is frozen or
/// pinned, keeps its deployed commit (still verifying and repairing mounts).
fn deploy(
    svc: &Service,
    mirror: &Mirror,
    fetched: &mirror::Fetched,
    state_dir: &Path,
    sd: &StateDir,
    state: &mut State,
    policy: DriftPolicy,
) -> Result<Outcome> {
    state.upstream = Some(UpstreamSeen {
        commit: fetched.head.to_string(),
        fetched: now_unix(),
    });
    let mut notes: Vec<String> = fetched
        .rebuilt
        .iter()
        .map(|r| format!("mirror rebuilt: {r}"))
        .collect();
    let target = match (&state.hold, &state.deployed) {
        (Some(hold), Some(deployed)) => {
            notes.push(format!(
                "{} ({}): not following upstream",
                hold.kind.as_str(),
                hold.reason
            ));
            if deployed.commit != fetched.head.to_string() {
                notes.push(format!(
                    "upstream is at {}",
                    short(&fetched.head.to_string())
                ));
            }
            Oid::from_str(&deployed.commit)
                .with_context(|| format!("reading deployed commit {:?}", deployed.commit))?
        }
        _ => fetched.head,
    };
    let repo = mirror.open()?;
    let plan = Plan {
        repo: Some(&repo),
        target,
        policy,
    };
    apply(svc, state_dir, sd, state, &plan, notes)
}

/// What [`apply`] deploys, and how it treats local edits.
pub(crate) struct Plan<'a> {
    /// The mirror; may be missing when the release of `target` is already
    /// on disk (an offline rollback).
    pub repo: Option<&'a Repository>,
    pub target: Oid,
    pub policy: DriftPolicy,
}

/// Package, release, mounts, state, action: in that order, so the unit is
/// only told about files that are already in place, and the state never
/// claims a release the mounts do not show.
pub(crate) fn apply(
    svc: &Service,
    state_dir: &Path,
    sd: &StateDir,
    state: &mut State,
    plan: &Plan<'_>,
    mut notes: Vec<String>,
) -> Result<Outcome> {
    let (repo, target) = (plan.repo, plan.target);
    if let Some(pkg) = &svc.package {
        if package::ensure(pkg)? {
            notes.push(format!("installed package {pkg}"));
        }
    }
    let releases = layout::releases(svc, state_dir);
    let name = Releases::name(target, svc);
    let previous = state.deployed.clone();
    let same_release = previous.as_ref().is_some_and(|d| d.release == name);
    let rewrite = match &previous {
        Some(prev) if releases.exists(&prev.release) => {
            // Fail closed: a release whose files cannot be checked is
            // treated as changed everywhere, never as clean.
            let drifted = observe::drift(svc, state_dir, prev, repo).unwrap_or_else(|e| {
                notes.push(format!("could not check for local changes: {e:#}"));
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
    let path = match repo {
        Some(repo) if rewrite => releases.rewrite(repo, target, svc)?,
        Some(repo) => releases.materialize(repo, target, svc)?,
        None if rewrite => anyhow::bail!(
            "cannot restore the locally changed files of {target}: the mirror is unavailable"
        ),
        None if releases.exists(&name) => releases.path(&name),
        None => anyhow::bail!("commit {target} has no local release and the mirror is unavailable"),
    };
    let from = previous.as_ref().map(|d| d.commit.as_str());
    let changed =
        !same_release && repo.is_none_or(|r| apply::content_changed(r, from, target, svc));

    for dropped in apply::unmount_dropped(svc, &state.mounts)? {
        notes.push(format!(
            "unmounted {} (no longer in dirs)",
            dropped.display()
        ));
    }
    let befores = apply::mount_release(svc, &path)?;
    releases.remove_replaced()?;
    if rewrite {
        notes.push("remounted the restored release".to_string());
    } else {
        notes.extend(mount_notes(svc, &befores, same_release));
    }
    state.mounts = svc.dirs.iter().map(|d| d.local.clone()).collect();
    if !same_release {
        releases.touch(&name)?;
        state.deployed = Some(Deployed {
            commit: target.to_string(),
            release: name.clone(),
            time: now_unix(),
        });
    }
    let repaired =
        befores.contains(&Before::Missing) || (same_release && befores.contains(&Before::Other));
    if changed || repaired || state.action_pending {
        act(svc, sd, state, &mut notes)?;
    }
    let keep = usize::try_from(svc.depth).unwrap_or(usize::MAX);
    for removed in releases.prune(keep, &name)? {
        notes.push(format!("removed old release {removed}"));
    }
    Ok(Outcome {
        from: previous.map(|d| d.commit),
        to: target.to_string(),
        new_release: !same_release,
        notes,
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
    notes: &mut Vec<String>,
) -> Result<bool> {
    if drifted.is_empty() {
        return Ok(false);
    }
    let n = drifted.len();
    let list = summarize(&observe::drift_lines(svc, drifted));
    let short = short(&plan.target.to_string());
    match (plan.policy, same_release) {
        (DriftPolicy::Restore, true) => {
            notes.push(format!(
                "restored {n} locally changed path(s) from git: {list}"
            ));
            Ok(true)
        }
        (DriftPolicy::Restore, false) => {
            notes.push(format!(
                "discarded {n} local change(s) with the old release: {list}"
            ));
            Ok(false)
        }
        (DriftPolicy::Warn, true) => {
            notes.push(format!(
                "drift (policy warn): {n} local change(s) kept: {list}; `provision diff {}` shows them",
                svc.name
            ));
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
            notes.push(format!(
                "local change(s) {list} are in {short}: deploying it"
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

/// Runs the action with `action_pending` recorded first, so a crash or a
/// failure mid-action is retried by the next pass.
fn act(svc: &Service, sd: &StateDir, state: &mut State, notes: &mut Vec<String>) -> Result<()> {
    let Some(action) = svc.action else {
        return Ok(());
    };
    state.action_pending = true;
    sd.save(state)?;
    let result = apply::run_action(svc);
    state.counters.action(action.as_str(), result.is_ok());
    let outcome = result.map_err(|e| {
        e.context(ActionPending {
            commit: state.deployed.as_ref().map(|d| d.commit.clone()),
            action: action.as_str(),
        })
    })?;
    state.action_pending = false;
    if let (Some(a), Some(o)) = (svc.action, outcome) {
        notes.push(format!(
            "{} {}: {}, unit {}",
            a.as_str(),
            svc.unit,
            o.job_result,
            o.active_state
        ));
    }
    Ok(())
}

/// The error context of a pass whose files are in place but whose action
/// failed: the new release is deployed (not the last good one kept), and
/// the action is retried by the next pass.
#[derive(Debug)]
pub struct ActionPending {
    pub commit: Option<String>,
    pub action: &'static str,
}

impl std::fmt::Display for ActionPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.commit {
            Some(c) => write!(f, "the files of {} are in place", short(c))?,
            None => f.write_str("the files are in place")?,
        }
        write!(f, "; the {} is retried by the next pass", self.action)
    }
}

fn mount_notes(svc: &Service, befores: &[Before], same_release: bool) -> Vec<String> {
    svc.dirs
        .iter()
        .zip(befores)
        .filter_map(|(d, b)| match b {
            Before::Correct => None,
            Before::Missing => Some(format!("mounted {}", d.local.display())),
            Before::Other if same_release => Some(format!("repaired mount {}", d.local.display())),
            Before::Other => Some(format!("switched {}", d.local.display())),
        })
        .collect()
}

/// Restores the mounts of the deployed releases without network: what a
/// machine needs at boot, before the services start.
pub fn restore(selected: &[&Service], state_dir: &Path) -> Vec<Report> {
    selected
        .iter()
        .map(|svc| Report {
            service: svc.name.clone(),
            outcome: restore_one(svc, state_dir),
        })
        .collect()
}

fn restore_one(svc: &Service, state_dir: &Path) -> Result<Outcome> {
    let sd = StateDir::new(state_dir, &svc.name);
    let _lock = layout::lock_service(&sd, svc)?;
    let state = sd.load()?;
    let Some(deployed) = state.deployed else {
        return Ok(Outcome {
            from: None,
            to: String::new(),
            new_release: false,
            notes: Vec::new(),
        });
    };
    let release = layout::releases(svc, state_dir).path(&deployed.release);
    anyhow::ensure!(
        release.is_dir(),
        "deployed release {} is missing; run provision sync",
        release.display()
    );
    let befores = apply::mount_release(svc, &release)?;
    let notes = mount_notes(svc, &befores, true);
    Ok(Outcome {
        from: Some(deployed.commit.clone()),
        to: deployed.commit,
        new_release: false,
        notes,
    })
}

/// Deletes mirrors no service of this machine uses any more (after a branch
/// or upstream change), skipping any another process is using right now.
fn remove_unused_mirrors(all: &[&Service], state_dir: &Path) {
    let mut bases: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for svc in all {
        let m = Mirror::of(svc, state_dir);
        bases
            .entry(svc.base_dir(state_dir))
            .or_default()
            .push(m.path);
    }
    for (base, used) in bases {
        if let Err(e) = mirror::remove_unused(&base, &used) {
            eprintln!(
                "warning: cleaning old mirrors under {}: {e:#}",
                base.display()
            );
        }
    }
}
