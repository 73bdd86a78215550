//! One reconcile pass: fetch each mirror once, then bring every selected
//! service to the fetched commit: package, release, mounts, action, state.
//!
//! A failure is confined to the service it concerns: the others still
//! converge, and the failed one keeps serving its last good release while
//! its state records why the pass failed.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use crate::config::{DriftPolicy, Service};
use crate::engine::apply::{self, Keeper, Outcome, Report, Serving};
use crate::engine::backoff;
use crate::engine::mounts;
use crate::engine::rollout::{self, Decision, Pace};
use crate::engine::trial::WhenStopped;
use crate::git::mirror::{self, Mirror};
use crate::model::commit::CommitId;
use crate::model::pass::{Note, NoteKind};
use crate::model::place::Place;
use crate::observe;
use crate::store::layout;
use crate::store::state::{Deployed, PassRecord, State, StateDir, UpstreamSeen};
use crate::util::now_unix;

/// What the operator asked of a pass beyond the config.
#[derive(Debug, Clone, Copy)]
pub struct Intent {
    /// Overrides each service's drift policy (`sync --discard-drift`).
    pub drift: Option<DriftPolicy>,
    /// Whether a unit that is not running is started (`forward`).
    pub stopped: WhenStopped,
    /// Whether a staged rollout's wait applies (`forward` adopts now).
    pub pace: Pace,
    /// Deploy a head that does not descend from the newest head deployed
    /// (`forward --allow-older`); refused otherwise when signatures are
    /// checked.
    pub allow_older: bool,
    /// Whether a backoff after failed fetches holds (timer passes); `sync
    /// --now` and `forward` fetch anyway.
    pub backoff: bool,
}

/// Why a mirror was not fetched in this pass.
#[derive(Debug)]
enum FetchFailed {
    /// The fetch failed: its message, the server's `Retry-After`, and
    /// whether the server could not serve (a reason to back off).
    Failed(String, Option<u64>, bool),
    /// Every service of the mirror backs off: no connection was made.
    BackingOff,
}

impl Intent {
    /// A timer pass: the config decides everything, stopped units stay so.
    pub const TIMER: Intent = Intent {
        drift: None,
        stopped: WhenStopped::Leave,
        pace: Pace::Staged,
        allow_older: false,
        backoff: true,
    };
}

/// The `sync --json` document of a pass's reports.
pub fn document(machine: &str, reports: &[Report]) -> crate::model::pass::Document {
    let services: Vec<_> = reports.iter().map(|r| r.data(false)).collect();
    crate::model::pass::Document {
        schema: crate::model::pass::SCHEMA,
        machine: machine.to_string(),
        time: now_unix(),
        ok: services.iter().all(|s| s.failure.is_none()),
        services,
    }
}

/// Runs one pass over `selected`. `all` are every service of this machine,
/// used to know which mirrors are still in use.
pub fn sync(
    selected: &[&Service],
    all: &[&Service],
    state_dir: &Path,
    intent: Intent,
) -> Vec<Report> {
    let start = Instant::now();
    if let Err(e) = crate::util::private_dir(state_dir) {
        let e = format!("{e:#}");
        return selected
            .iter()
            .map(|svc| Report::unknown(&svc.name, Err(anyhow::anyhow!("{e}"))))
            .collect();
    }
    let fetched = fetch_all(selected, state_dir, intent.backoff);
    let reports = selected
        .iter()
        .map(|svc| {
            let place = Place::of(svc, state_dir);
            let mirror = Mirror::of(svc, &place);
            let fetch = &fetched[&mirror.path];
            let intent = Intent {
                drift: Some(intent.drift.unwrap_or(svc.drift)),
                ..intent
            };
            reconcile(svc, &mirror, fetch, &place, intent, start)
        })
        .collect();
    remove_unused_mirrors(all, state_dir);
    reports
}

/// Fetches every mirror used by `services` once, to the deepest depth any
/// of them asks for.
/// A mirror whose every service backs off is not asked at all (with
/// `backoff`, a timer pass).
fn fetch_all(
    services: &[&Service],
    state_dir: &Path,
    backoff: bool,
) -> BTreeMap<PathBuf, Result<mirror::Fetched, FetchFailed>> {
    let mut groups: BTreeMap<PathBuf, (Mirror, u32, &Service)> = BTreeMap::new();
    let mut waiting: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let now = now_unix();
    for svc in services {
        let place = Place::of(svc, state_dir);
        let backs_off = backoff
            && StateDir::at(&place)
                .load()
                .is_ok_and(|s| backoff::active(&s, now).is_some());
        let m = Mirror::of(svc, &place);
        *waiting.entry(m.path.clone()).or_insert(true) &= backs_off;
        let max_bytes = m.max_fetch_bytes;
        let files = m.files.clone();
        let e = groups.entry(m.path.clone()).or_insert((m, svc.depth, svc));
        e.1 = e.1.max(svc.depth);
        e.0.max_fetch_bytes = e.0.max_fetch_bytes.max(max_bytes);
        e.0.files = e.0.files.union(&files);
        e.0.window = e.0.window.max(svc.depth);
    }
    groups
        .into_iter()
        .map(|(path, (mirror, depth, svc))| {
            if waiting.get(&path).copied().unwrap_or(false) {
                return (path, Err(FetchFailed::BackingOff));
            }
            let r = layout::trusted_base(svc)
                .and_then(|()| mirror.fetch(depth, &svc.credentials, svc.timeout))
                .map_err(|e| {
                    FetchFailed::Failed(
                        format!("{e:#}"),
                        mirror::retry_after(&e),
                        mirror::is_unavailable(&e),
                    )
                });
            (path, r)
        })
        .collect()
}

/// Brings one service to the fetched head, under the service lock, and
/// records the outcome with what the host shows at the end of the pass.
fn reconcile(
    svc: &Service,
    mirror: &Mirror,
    fetched: &Result<mirror::Fetched, FetchFailed>,
    place: &Place,
    intent: Intent,
    start: Instant,
) -> Report {
    let sd = StateDir::at(place);
    let locked = layout::lock_service(&sd, svc).and_then(|l| Ok((l, sd.load()?)));
    let (_lock, mut state) = match locked {
        Ok(x) => x,
        Err(e) => return Report::unknown(&svc.name, Err(e)),
    };
    let result = match fetched {
        Ok(f) => {
            state.backoff = None;
            follow(svc, mirror, f, place, &sd, &mut state, intent)
        }
        Err(FetchFailed::Failed(e, retry_after, unavailable)) => {
            let now = now_unix();
            state.backoff = unavailable.then(|| {
                backoff::after_failure(
                    state.backoff.as_ref(),
                    svc.interval,
                    *retry_after,
                    e,
                    now,
                    backoff::spread(),
                )
            });
            match state.backoff.as_ref().filter(|b| b.holds_at(now)) {
                Some(b) => Err(anyhow::anyhow!(
                    "{e}\n  backing off: the next pass fetches at {} UTC at the earliest",
                    crate::util::format_utc(b.until as i64)
                )),
                None => Err(anyhow::anyhow!("{e}")),
            }
        }
        Err(FetchFailed::BackingOff) => Err(backing_off(&state)),
    };
    let now = now_unix();
    let seen = observe::observe(svc, place, &state, mirror.open().ok().as_ref());
    state.last_pass = Some(PassRecord {
        time: now,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        duration_ms: u64::try_from(start.elapsed().as_millis()).ok(),
        drift_files: seen.drift_count().map(|n| n as u64),
        mounts_ok: state.deployed.as_ref().map(|_| seen.mounts_ok()),
        unit_state: seen.unit_state,
        undecryptable: result
            .as_ref()
            .err()
            .is_some_and(crate::util::secret::is_undecryptable),
    });
    if result.is_ok() {
        state.counters.last_success = Some(now);
    } else {
        state.counters.pass_failures += 1;
    }
    let outcome = match (result, sd.save(&state)) {
        (result, Ok(())) => result,
        // Keep the pass's own error first: it is the cause (a full disk
        // fails both).
        (Err(e), Err(save)) => Err(e.context(format!("also, saving the state failed: {save:#}"))),
        (Ok(_), Err(save)) => Err(save),
    };
    Report {
        service: svc.name.clone(),
        serving: Serving::of(state.deployed.as_ref()),
        outcome,
    }
}

/// The error of a pass inside a backoff: when it ends, and why it began.
fn backing_off(state: &State) -> anyhow::Error {
    match &state.backoff {
        Some(b) => anyhow::anyhow!(
            "backing off until {} UTC ({} failed fetch(es), the last: {}); no connection was made; `provision sync --now` fetches anyway",
            crate::util::format_utc(b.until as i64),
            b.failures,
            b.reason
        ),
        None => anyhow::anyhow!("backing off; `provision sync --now` fetches anyway"),
    }
}

/// Moves the service to the fetched head, or, while it is frozen or
/// pinned, keeps its deployed commit (still verifying and repairing mounts).
/// A head that was rejected is not tried again; a newer one is.
fn follow(
    svc: &Service,
    mirror: &Mirror,
    fetched: &mirror::Fetched,
    place: &Place,
    sd: &StateDir,
    state: &mut State,
    intent: Intent,
) -> Result<Outcome> {
    let now = now_unix();
    let head = CommitId::from(fetched.head);
    state.upstream = Some(UpstreamSeen {
        commit: head,
        fetched: now,
        via: fetched.via.as_ref().map(|(url, _)| url.clone()),
    });
    let mut notes: Vec<Note> = fetched
        .rebuilt
        .iter()
        .map(|r| Note::new(NoteKind::Fetch, format!("mirror rebuilt: {r}")))
        .collect();
    if fetched.found_v0 {
        notes.push(Note::new(
            NoteKind::Fetch,
            format!(
                "{} answers over ssh in git's protocol v0: each poll reads its whole ref list; `AcceptEnv GIT_PROTOCOL` in its sshd_config makes a poll a few kilobytes",
                fetched.via.as_ref().map_or(svc.upstream.url.as_str(), |(u, _)| u.as_str())
            ),
        ));
    }
    if let Some((url, why)) = &fetched.via {
        notes.push(Note::new(
            NoteKind::Fetch,
            format!("fetched from {url}, as the upstream(s) before it failed: {why}"),
        ));
    }
    if let Some(hold) = state.hold.take_if(|h| h.expired(now)) {
        notes.push(Note::new(
            NoteKind::Hold,
            format!(
                "{} ended at {} UTC (--until): following upstream again",
                hold.kind.as_str(),
                crate::util::format_utc(hold.until.unwrap_or(now) as i64)
            ),
        ));
    }
    state.reject_again(head);
    let deployed = state.deployed.as_ref().map(|d| d.commit);
    let mut held = match (&state.hold, deployed) {
        (Some(hold), Some(_)) => Some(apply::Held {
            by: Keeper::Hold(hold.kind),
            upstream: head,
        }),
        _ => None,
    };
    let target = match (&state.hold, deployed, &state.rejected) {
        (Some(hold), Some(deployed), _) => {
            notes.push(Note::new(
                NoteKind::Hold,
                format!(
                    "{} ({}): not following upstream",
                    hold.kind.as_str(),
                    hold.reason
                ),
            ));
            if deployed != head {
                notes.push(Note::new(
                    NoteKind::Hold,
                    format!("upstream is at {}", head.short()),
                ));
            }
            deployed
        }
        (None, _, Some(r)) => {
            notes.push(Note::new(NoteKind::Rejection, format!(
                "upstream {} was rejected at {} ({}): not deploying it again; push a fix, or `provision forward {}` to retry it",
                head.short(),
                r.stage.as_str(),
                crate::util::format_utc(r.time as i64),
                svc.name
            )));
            state.rollout = None;
            match deployed {
                Some(d) => d,
                None => return Ok(Outcome::nothing(notes)),
            }
        }
        (None, Some(deployed), None) => match rollout::decide(svc, state, head, now, intent.pace) {
            Decision::Adopt(note) => {
                notes.extend(note.map(|n| Note::new(NoteKind::Rollout, n)));
                head
            }
            Decision::Wait(note) => {
                notes.push(Note::new(NoteKind::Rollout, note));
                held = Some(apply::Held {
                    by: Keeper::Rollout,
                    upstream: head,
                });
                deployed
            }
        },
        _ => head,
    };
    if target == head {
        crate::engine::trust::require_descent(svc, mirror, state, head, intent.allow_older)?;
    }
    let repo = mirror.open()?;
    let plan = apply::Plan {
        repo: Some(&repo),
        target: target.oid(),
        policy: intent.drift.unwrap_or(svc.drift),
        stopped: intent.stopped,
    };
    let result = apply::apply(svc, place, sd, state, &plan, notes);
    if target == head && state.deployed.as_ref().is_some_and(|d| d.commit == head) {
        state.followed = Some(head);
    }
    rollout::settle(state);
    note_lag(state, now);
    let mut outcome = result?;
    outcome.held = held;
    Ok(outcome)
}

/// Keeps `behind_since`: when upstream first had a commit that is not
/// deployed, cleared once they agree.
fn note_lag(state: &mut State, now: u64) {
    let deployed = state.deployed.as_ref().map(|d| d.commit);
    let upstream = state.upstream.as_ref().map(|u| u.commit);
    state.behind_since = match (deployed, upstream) {
        (Some(d), Some(u)) if d == u => None,
        (_, None) => None,
        _ => state.behind_since.or(Some(now)),
    };
}

/// Restores the mounts of the deployed releases without network: what a
/// machine needs at boot, before the services start.
pub fn restore(selected: &[&Service], state_dir: &Path) -> Vec<Report> {
    selected
        .iter()
        .map(|svc| restore_one(svc, &Place::of(svc, state_dir)))
        .collect()
}

fn restore_one(svc: &Service, place: &Place) -> Report {
    let sd = StateDir::at(place);
    let (_lock, state) = match lock_for_restore(&sd) {
        Ok(Some(x)) => x,
        Ok(None) => return busy(&svc.name),
        Err(e) => return Report::unknown(&svc.name, Err(e)),
    };
    Report {
        service: svc.name.clone(),
        serving: Serving::of(state.deployed.as_ref()),
        outcome: remount(svc, place, state.deployed),
    }
}

/// The service lock and state for a restore, without waiting: a pass that
/// holds the lock makes the mounts itself, and may be waiting for the very
/// unit that asked for this restore (a start pulls in its mount restore).
fn lock_for_restore(sd: &StateDir) -> Result<Option<(crate::util::lock::Lock, State)>> {
    let Some(lock) = layout::try_lock(sd)? else {
        return Ok(None);
    };
    Ok(Some((lock, sd.load()?)))
}

/// The report of a restore left to the pass running now.
fn busy(name: &str) -> Report {
    Report {
        service: name.to_string(),
        serving: Serving::Unknown,
        outcome: Ok(Outcome::nothing(vec![Note::new(
            NoteKind::Mount,
            format!("a pass of {name} is running and makes its mounts"),
        )])),
    }
}

/// Mounts the release of `deployed` again.
fn remount(svc: &Service, place: &Place, deployed: Option<Deployed>) -> Result<Outcome> {
    let Some(deployed) = deployed else {
        return Ok(Outcome::nothing(Vec::new()));
    };
    layout::trusted_base(svc)?;
    let release = layout::releases(place).path(&deployed.release);
    anyhow::ensure!(
        release.is_dir(),
        "deployed release {} is missing; run provision sync",
        release.display()
    );
    let befores = mounts::mount_release(svc, &release)?;
    let notes = mounts::notes(svc, &befores, true);
    Ok(Outcome::stayed(deployed.commit, notes))
}

/// Restores the mounts of services named `names` (all with a state file
/// when empty) from their state files alone: what boot needs when the
/// config is missing or invalid.
pub fn restore_recorded(state_dir: &Path, names: &[String]) -> Vec<Report> {
    let names = if names.is_empty() {
        match layout::known_services(state_dir) {
            Ok(n) => n,
            Err(e) => return vec![Report::unknown("*", Err(e))],
        }
    } else {
        names.to_vec()
    };
    names
        .iter()
        .map(|name| {
            let sd = StateDir::new(state_dir, name);
            let (_lock, state) = match lock_for_restore(&sd) {
                Ok(Some(x)) => x,
                Ok(None) => return busy(name),
                Err(e) => return Report::unknown(name, Err(e)),
            };
            Report {
                service: name.clone(),
                serving: Serving::of(state.deployed.as_ref()),
                outcome: remount_recorded(&state),
            }
        })
        .collect()
}

/// Makes each recorded mount of `state` again.
fn remount_recorded(state: &State) -> Result<Outcome> {
    let Some(deployed) = &state.deployed else {
        return Ok(Outcome::nothing(Vec::new()));
    };
    anyhow::ensure!(
        !state.mounted.is_empty() || state.mounts.is_empty(),
        "the state file does not record how its mounts were made (written by an older provision); \
         fix the config so `provision mount` can read it"
    );
    let mut notes = Vec::new();
    for r in &state.mounted {
        if crate::host::mount::ensure(&observe::recorded(r))? != crate::host::mount::Before::Correct
        {
            notes.push(Note::new(
                NoteKind::Mount,
                format!("mounted {}", r.local.display()),
            ));
        }
    }
    Ok(Outcome::stayed(deployed.commit, notes))
}

/// Deletes mirrors no service of this machine uses any more (after a branch
/// or upstream change), skipping any another process is using right now.
fn remove_unused_mirrors(all: &[&Service], state_dir: &Path) {
    let mut bases: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for svc in all {
        let place = Place::of(svc, state_dir);
        bases.entry(place.base).or_default().push(place.mirror);
    }
    for (base, used) in bases {
        if let Err(e) = mirror::remove_unused(&base, &used) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: cleaning old mirrors under {}: {e:#}",
                base.display()
            );
        }
    }
}
