//! Staged rollouts with no server of their own: each machine decides from
//! the commit and its own name when to adopt a new head, and (with a gate)
//! from what the fleet's Prometheus knows of the canaries.
//!
//! A machine's place in the rollout of commit C is a hash of (machine,
//! service, C) read as a fraction p in [0, 1); it adopts C at
//! `first_seen(C) + p × window`. Every machine computes the same spread
//! without talking to the others, the spread is uniform over the fleet, and
//! it differs per commit, so no machine is always last.

use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::config::Service;
use crate::engine::gate;
use crate::model::commit::CommitId;
use crate::store::state::{Position, RolloutWait, State};
use crate::util::{format_utc, human_span};

/// Whether a pass deploys the head now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Deploy it; the note (if any) says why now.
    Adopt(Option<String>),
    /// Keep the deployed commit; the note says until when or why.
    Wait(String),
}

/// What the operator asked about the rollout's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Wait for this machine's time and the gate.
    Staged,
    /// Adopt now (`provision forward`).
    Now,
}

/// This machine's place in the rollout of `commit` for `service`.
pub fn position(machine: &str, service: &str, commit: CommitId) -> Position {
    let mut h = Sha1::new();
    for part in [
        "provision rollout",
        &machine.to_ascii_lowercase(),
        service,
        &commit.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    Position(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
}

/// When a machine at `position` adopts a head first seen at `seen`.
pub fn adoption_time(seen: u64, position: Position, window: Duration) -> u64 {
    // Rounded down: a window of N seconds ends by N.
    seen + (position.fraction() * window.as_secs_f64()) as u64
}

/// Decides whether the fetched `head` is deployed now, keeping
/// `state.rollout` for status and for the next pass.
pub fn decide(svc: &Service, state: &mut State, head: CommitId, now: u64, pace: Pace) -> Decision {
    let deployed = state.deployed.as_ref().map(|d| d.commit);
    state.window = None;
    if deployed.is_none_or(|d| d == head) {
        // Nothing to wait for: a first deployment adopts at once.
        state.rollout = None;
        return Decision::Adopt(None);
    }
    if !svc.rollout.staged() {
        state.rollout = None;
        return in_window(svc, state, head, now, pace, Decision::Adopt(None));
    }
    let mut wait = match state.rollout.take() {
        Some(w) if w.commit == head => w,
        _ => begin(svc, head, now),
    };
    let decision = judge(svc, &mut wait, now, pace);
    wait.adopting = matches!(decision, Decision::Adopt(_));
    state.rollout = Some(wait);
    in_window(svc, state, head, now, pace, decision)
}

/// `decision`, unless it adopts while no change window is open: then the
/// head waits for the next one (`forward` does not).
fn in_window(
    svc: &Service,
    state: &mut State,
    head: CommitId,
    now: u64,
    pace: Pace,
    decision: Decision,
) -> Decision {
    let windows = &svc.rollout.windows;
    if pace == Pace::Now || !matches!(decision, Decision::Adopt(_)) || windows.is_open(now) {
        return decision;
    }
    let Some(next) = windows.next_open(now) else {
        return Decision::Wait(format!(
            "outside every change window: {} waits; none opens in the next ten years (windows)",
            head.short()
        ));
    };
    state.window = Some(crate::model::record::WindowWait {
        commit: head,
        next_open: next,
    });
    Decision::Wait(format!(
        "outside every change window: {} waits for the next, at {} UTC; `provision forward {}` deploys it now",
        head.short(),
        format_utc(next as i64),
        svc.name
    ))
}

/// The wait for a head seen for the first time at `now`.
fn begin(svc: &Service, head: CommitId, now: u64) -> RolloutWait {
    let position = if svc.rollout.is_canary(&svc.machine) {
        Position::FIRST
    } else {
        position(&svc.machine, &svc.name, head)
    };
    // Inside change windows, a place counts only open time.
    let at = match svc.rollout.windows.always() {
        true => adoption_time(now, position, svc.rollout.window),
        false => svc.rollout.windows.advance(
            now,
            (position.fraction() * svc.rollout.window.as_secs_f64()) as u64,
        ),
    };
    RolloutWait {
        commit: head,
        seen: now,
        position,
        at,
        gate: None,
        adopting: false,
    }
}

fn judge(svc: &Service, wait: &mut RolloutWait, now: u64, pace: Pace) -> Decision {
    let short = wait.commit.short();
    let canary = svc.rollout.is_canary(&svc.machine);
    if pace == Pace::Now {
        wait.gate = None;
        return Decision::Adopt(Some(format!(
            "rollout: adopting {short} now (forward), ahead of its time"
        )));
    }
    if wait.adopting {
        return Decision::Adopt(None);
    }
    if now < wait.at {
        return Decision::Wait(format!(
            "waiting for rollout: {short} at {} UTC (position {:.3} of {})",
            format_utc(wait.at as i64),
            wait.position.fraction(),
            human_span(svc.rollout.window)
        ));
    }
    let gate = match &svc.rollout.gate {
        Some(g) if !canary => g,
        _ => {
            let who = if canary { "canary" } else { "its time came" };
            return Decision::Adopt(Some(format!("rollout: adopting {short} ({who})")));
        }
    };
    match gate::check(gate, svc, wait.commit, now) {
        Ok(opened) => {
            wait.gate = None;
            Decision::Adopt(Some(format!("rollout: adopting {short}: {opened}")))
        }
        Err(closed) => {
            let note = format!("waiting for rollout: {short}: gate closed: {closed}");
            wait.gate = Some(closed);
            Decision::Wait(note)
        }
    }
}

/// Forgets the wait once its commit is deployed (or is no longer the head).
pub fn settle(state: &mut State) {
    let deployed = state.deployed.as_ref().map(|d| d.commit);
    let head = state.upstream.as_ref().map(|u| u.commit);
    if state
        .rollout
        .as_ref()
        .is_some_and(|w| Some(w.commit) == deployed || Some(w.commit) != head)
    {
        state.rollout = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(n: u8) -> CommitId {
        CommitId::from(git2::Oid::from_bytes(&[n; 20]).expect("oid"))
    }

    #[test]
    fn positions_are_stable_and_differ_per_machine_service_and_commit() {
        let p = position("web1", "nginx", commit(1));
        assert_eq!(p, position("WEB1", "nginx", commit(1)));
        assert_ne!(p, position("web2", "nginx", commit(1)));
        assert_ne!(p, position("web1", "grafana", commit(1)));
        assert_ne!(p, position("web1", "nginx", commit(2)));
        assert!((0.0..1.0).contains(&p.fraction()));
    }

    fn service(machine: &str, extra: &str) -> Service {
        let text = format!(
            "[[services]]\nmachine = \"{machine}\"\nservice = \"web\"\nupstream = \"git://127.0.0.1/r.git\"\n{extra}\n\
             dirs = [{{ local = \"/etc/web\", link = \"web\" }}]\n"
        );
        let c =
            crate::config::Config::parse(std::path::Path::new("/c.toml"), &text).expect("config");
        c.services[0].clone()
    }

    fn deployed(c: CommitId) -> State {
        State {
            deployed: Some(crate::store::state::Deployed {
                commit: c,
                release: String::new(),
                time: 0,
            }),
            ..State::default()
        }
    }

    #[test]
    fn a_machine_waits_for_its_place_then_adopts() {
        let svc = service("web2", "rollout = \"1h\"\ncanary = [\"web1\"]");
        let mut state = deployed(commit(1));
        let head = commit(2);
        let p = position("web2", "web", head);
        let at = adoption_time(1000, p, Duration::from_secs(3600));
        let first = decide(&svc, &mut state, head, 1000, Pace::Staged);
        if at > 1000 {
            assert!(matches!(first, Decision::Wait(ref n) if n.contains("waiting for rollout")));
            assert!(state.rollout_wait(1000).is_some());
            // The wait keeps its first sighting.
            assert!(matches!(
                decide(&svc, &mut state, head, at - 1, Pace::Staged),
                Decision::Wait(_)
            ));
        }
        assert!(matches!(
            decide(&svc, &mut state, head, at, Pace::Staged),
            Decision::Adopt(_)
        ));
        assert_eq!(state.rollout.as_ref().map(|w| w.at), Some(at));
        assert!(state.rollout_wait(at).is_none(), "adopting is not waiting");

        // A newer head starts a new wait from when it was first seen.
        let newer = commit(3);
        decide(&svc, &mut state, newer, 5000, Pace::Staged);
        let w = state.rollout.as_ref().expect("wait");
        assert_eq!((w.commit, w.seen), (newer, 5000));
        // `forward` adopts now.
        assert!(matches!(
            decide(&svc, &mut state, newer, 5000, Pace::Now),
            Decision::Adopt(Some(_))
        ));
    }

    #[test]
    fn canaries_and_empty_machines_adopt_at_once() {
        let svc = service("web1", "rollout = \"1h\"\ncanary = [\"web1\"]");
        let mut state = deployed(commit(1));
        assert!(matches!(
            decide(&svc, &mut state, commit(2), 1000, Pace::Staged),
            Decision::Adopt(_)
        ));
        assert_eq!(state.rollout.as_ref().map(|w| w.at), Some(1000));
        let other = service("web2", "rollout = \"1h\"");
        let mut empty = State::default();
        assert_eq!(
            decide(&other, &mut empty, commit(2), 1000, Pace::Staged),
            Decision::Adopt(None)
        );
        assert!(empty.rollout.is_none());
    }

    #[test]
    fn adoption_time_is_within_the_window() {
        let w = Duration::from_secs(7200);
        assert_eq!(adoption_time(1000, Position::FIRST, w), 1000);
        assert_eq!(adoption_time(1000, Position(u32::MAX), w), 1000 + 7199);
        assert_eq!(adoption_time(1000, Position(1 << 31), w), 1000 + 3600);
    }
}
