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
use crate::engine::rollout::Pace;
use crate::engine::trial::{Rejection, WhenStopped};
use crate::git::mirror::Mirror;
use crate::model::commit::CommitId;
use crate::model::place::Place;
use crate::store::layout;
use crate::store::state::{Hold, HoldKind, StateDir};
use crate::util::now_unix;

/// What an operator says when freezing a service.
#[derive(Debug, Clone, Default)]
pub struct Freeze {
    /// Why; a default is written when `None`.
    pub reason: Option<String>,
    /// Unix time the freeze ends by itself.
    pub until: Option<u64>,
    /// Who froze it.
    pub by: Option<String>,
}

/// Reads `--until`: a span from now ("2h", "1d 12h") or an RFC 3339 time.
pub fn parse_until(text: &str, now: u64) -> Result<u64> {
    if let Some(at) = crate::util::parse_rfc3339(text) {
        let at = u64::try_from(at).unwrap_or(0);
        anyhow::ensure!(
            at > now,
            "--until {text:?} is in the past; give a later time or a span such as \"2h\""
        );
        return Ok(at);
    }
    let span = crate::config::parse_span(text).map_err(|_| {
        anyhow::anyhow!(
            "--until {text:?} is neither a span (\"30m\", \"2h\", \"1d\") nor an RFC 3339 time \
             (\"2026-12-01T08:00:00Z\")"
        )
    })?;
    anyhow::ensure!(!span.is_zero(), "--until {text:?} is no time at all");
    Ok(now.saturating_add(span.as_secs()))
}

/// Stops following upstream: passes keep the deployed commit (and still
/// verify its mounts) until `unfreeze`, `forward`, or `until` passes.
pub fn freeze(svc: &Service, place: &Place, how: &Freeze) -> Result<String> {
    let sd = StateDir::at(place);
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
        reason: how
            .reason
            .clone()
            .unwrap_or_else(|| "frozen by operator".to_string()),
        since: now_unix(),
        until: how.until,
        by: how.by.clone(),
    });
    sd.save(&state)?;
    let until = how.until.map_or(String::new(), |u| {
        format!(" until {} UTC", crate::util::format_utc(u as i64))
    });
    Ok(format!("{}: frozen at {}{until}", svc.name, commit.short()))
}

/// Follows upstream again from the next pass.
pub fn unfreeze(svc: &Service, place: &Place) -> Result<String> {
    let sd = StateDir::at(place);
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
pub fn rollback(svc: &Service, place: &Place, rev: &Rev, text: &str, by: &str) -> Result<Outcome> {
    let sd = StateDir::at(place);
    let _lock = layout::lock_service(&sd, svc)?;
    let mut state = sd.load()?;
    let mirror = Mirror::of(svc, place);
    let releases = layout::releases(place);
    let lookup = Lookup {
        svc,
        mirror: &mirror,
        releases: &releases,
        deployed: state.deployed.as_ref().map(|d| d.commit),
    };
    let target = lookup.resolve(rev).context("nothing changed")?;
    let loaded = state.clone();
    let repo = mirror.open().ok();
    let short = CommitId::from(target).short();
    state.hold = Some(Hold {
        kind: HoldKind::Pinned,
        reason: format!("rollback to {short} ({text})"),
        since: now_unix(),
        until: None,
        by: Some(by.to_string()),
    });
    // An explicit rollback is the operator's decision: local edits go.
    let plan = apply::Plan {
        repo: repo.as_ref(),
        target,
        policy: DriftPolicy::Restore,
        stopped: WhenStopped::Start,
    };
    let result = apply::apply(svc, place, &sd, &mut state, &plan, Vec::new());
    let switched = state
        .deployed
        .as_ref()
        .is_some_and(|d| d.commit.oid() == target);
    if !switched {
        // The mounts show the old release (never switched, or switched
        // back): no pin; keep only what the attempt learnt (a rejection).
        state.hold = loaded.hold.clone();
        if state != loaded {
            sd.save(&state)?;
        }
        return match result {
            Err(e) if e.downcast_ref::<Rejection>().is_some() => Err(e),
            other => other.context("nothing changed"),
        };
    }
    sd.save(&state)?;
    result.context(format!("{short} is deployed and pinned, but"))
}

/// Removes every trace of service `name`, which the config no longer has:
/// unmounts its mounts, deletes its releases and its state, and stops its
/// timer. Returns what it did.
pub fn forget(state_dir: &Path, name: &str) -> Result<Vec<String>> {
    let sd = StateDir::new(state_dir, name);
    let dir = state_dir.join(name);
    anyhow::ensure!(
        dir.join(crate::store::state::FILE).is_file(),
        "provision knows nothing of {name}: {} has no state file",
        dir.display()
    );
    let _lock = layout::lock_named(&sd, name)?;
    let state = sd.load()?;
    let mut done = Vec::new();
    let locals = state
        .mounted
        .iter()
        .map(|r| r.local.clone())
        .chain(state.mounts.iter().cloned());
    let mut seen = Vec::new();
    for local in locals {
        if seen.contains(&local) {
            continue;
        }
        crate::host::mount::detach(&local)?;
        done.push(format!("unmounted {}", local.display()));
        seen.push(local);
    }
    if let Some(home) = state.home.as_ref().filter(|h| **h != dir) {
        crate::util::remove_tree(home)?;
        done.push(format!("removed {}", home.display()));
    }
    let timer = crate::engine::timers::timer(name);
    match crate::host::systemd::stop(&timer) {
        Ok(()) => done.push(format!("stopped {timer}")),
        Err(e) => done.push(format!("could not stop {timer}: {e:#}")),
    }
    crate::util::remove_tree(&dir)?;
    done.push(format!("removed {}", dir.display()));
    Ok(done)
}

/// Ends a freeze or pin, forgets a rejected commit (so it is tried
/// again), and runs a pass for this service now that adopts the head
/// without waiting for its place in a staged rollout, starting the unit if
/// it is not running.
pub fn forward(
    svc: &Service,
    all: &[&Service],
    state_dir: &Path,
    allow_older: bool,
) -> Result<Report> {
    {
        let sd = StateDir::at(&Place::of(svc, state_dir));
        let _lock = layout::lock_service(&sd, svc)?;
        let mut state = sd.load()?;
        state.hold = None;
        state.forgive();
        sd.save(&state)?;
    }
    let intent = pass::Intent {
        drift: None,
        stopped: WhenStopped::Start,
        pace: Pace::Now,
        allow_older,
        backoff: false,
    };
    let mut reports = pass::sync(&[svc], all, state_dir, intent);
    reports
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no pass report for {}", svc.name))
}

/// The signature check of `rev` (default: the upstream head as last
/// fetched, else the deployed commit) against the service's
/// allowed_signers (none trusted when it has none). Takes no lock.
pub fn verify(
    svc: &Service,
    place: &Place,
    rev: Option<&Rev>,
) -> Result<crate::git::signature::Verdict> {
    let state = StateDir::at(place).load()?;
    let mirror = Mirror::of(svc, place);
    let deployed = state.deployed.as_ref().map(|d| d.commit);
    let target = match rev {
        Some(rev) => {
            let releases = layout::releases(place);
            let lookup = Lookup {
                svc,
                mirror: &mirror,
                releases: &releases,
                deployed,
            };
            lookup.resolve(rev)?
        }
        None => match (state.upstream.as_ref().map(|u| u.commit), deployed) {
            (Some(c), _) | (None, Some(c)) => c.oid(),
            (None, None) => bail!(
                "{} has no fetched or deployed commit yet; run provision sync",
                svc.name
            ),
        },
    };
    let repo = mirror
        .open()
        .with_context(|| format!("the mirror of {} is needed to read signatures", svc.name))?;
    let trusted = crate::engine::trust::trusted(svc)?.unwrap_or_default();
    Ok(crate::git::signature::verify(&repo, target, &trusted))
}
