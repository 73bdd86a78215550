//! The operator's levers on one service: freeze, unfreeze, rollback,
//! forward. Each takes the service lock, so a command issued during a timer
//! run waits for it instead of interleaving, and each records its effect in
//! the state file, so it survives reboots and re-cloned mirrors.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::{DriftPolicy, Service};
use crate::engine::apply::{self, Outcome, Report};
use crate::engine::pass;
use crate::engine::rev::{Lookup, Rev};
use crate::git::mirror::Mirror;
use crate::store::commit::CommitId;
use crate::store::layout;
use crate::store::state::{Hold, HoldKind, StateDir};
use crate::util::now_unix;

/// Stops following upstream: passes keep the deployed commit (and still
/// verify its mounts) until `unfreeze` or `forward`.
pub fn freeze(svc: &Service, state_dir: &Path, reason: Option<&str>) -> Result<String> {
    let sd = StateDir::new(state_dir, &svc.name);
    let _lock = layout::lock_service(&sd, svc)?;
    let mut state = sd.load()?;
    let Some(deployed) = &state.deployed else {
        bail!(
            "{} has nothing deployed yet; run provision sync {} first",
            svc.name,
            svc.name
        )
    };
    let commit = deployed.commit;
    state.hold = Some(Hold {
        kind: HoldKind::Frozen,
        reason: reason.unwrap_or("frozen by operator").to_string(),
        since: now_unix(),
    });
    sd.save(&state)?;
    Ok(format!("{}: frozen at {}", svc.name, commit.short()))
}

/// Follows upstream again from the next pass.
pub fn unfreeze(svc: &Service, state_dir: &Path) -> Result<String> {
    let sd = StateDir::new(state_dir, &svc.name);
    let _lock = layout::lock_service(&sd, svc)?;
    let mut state = sd.load()?;
    let was = state.hold.take();
    sd.save(&state)?;
    Ok(match was {
        Some(h) => format!(
            "{}: no longer {}; the next pass follows upstream",
            svc.name,
            h.kind.as_str()
        ),
        None => format!("{}: was not frozen; it follows upstream", svc.name),
    })
}

/// Deploys `rev` now and pins the service there. Nothing changes when the
/// revision cannot be found or fetched.
pub fn rollback(svc: &Service, state_dir: &Path, rev: &Rev, text: &str) -> Result<Outcome> {
    let sd = StateDir::new(state_dir, &svc.name);
    let _lock = layout::lock_service(&sd, svc)?;
    let mut state = sd.load()?;
    let mirror = Mirror::of(svc, state_dir);
    let releases = layout::releases(svc, state_dir);
    let lookup = Lookup {
        svc,
        mirror: &mirror,
        releases: &releases,
        deployed: state.deployed.as_ref().map(|d| d.commit),
    };
    let target = lookup.resolve(rev).context("nothing changed")?;
    let repo = mirror.open().ok();
    let short = CommitId::from(target).short();
    state.hold = Some(Hold {
        kind: HoldKind::Pinned,
        reason: format!("rollback to {short} ({text})"),
        since: now_unix(),
    });
    // An explicit rollback is the operator's decision: local edits go.
    let plan = apply::Plan {
        repo: repo.as_ref(),
        target,
        policy: DriftPolicy::Restore,
    };
    let result = apply::apply(svc, state_dir, &sd, &mut state, &plan, Vec::new());
    let switched = state
        .deployed
        .as_ref()
        .is_some_and(|d| d.commit.oid() == target);
    if !switched {
        // The mounts still show the old release: leave the state as it was.
        return result.context("nothing changed");
    }
    sd.save(&state)?;
    result.context(format!("{short} is deployed and pinned, but"))
}

/// Ends a freeze or pin and runs a pass for this service now.
pub fn forward(svc: &Service, all: &[&Service], state_dir: &Path) -> Result<Report> {
    unfreeze(svc, state_dir)?;
    let mut reports = pass::sync(&[svc], all, state_dir, None);
    reports
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no pass report for {}", svc.name))
}
