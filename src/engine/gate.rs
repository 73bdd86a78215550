//! A rollout's gate: the fleet's Prometheus says whether enough canaries
//! have served a commit well for long enough, and whether any machine
//! rejected it. Each machine asks for itself, so the fleet needs no
//! coordinator; Prometheus unreachable keeps the gate closed.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::config::{Gate, Service};
use crate::host::prometheus::{Api, Sample};
use crate::model::commit::CommitId;
use crate::util::human_span;

/// The longest a pass waits for Prometheus: a gate that cannot be asked
/// stays closed, so waiting longer gains nothing.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What one canary shows, from its series.
#[derive(Debug, Default)]
struct Canary {
    /// When it deployed the commit, if it has.
    deployed_at: Option<u64>,
    /// Whether its last pass succeeded.
    last_pass_ok: Option<bool>,
}

/// `Ok(why it opened)` when `commit` may be adopted, else why not.
pub fn check(gate: &Gate, svc: &Service, commit: CommitId, now: u64) -> Result<String, String> {
    let api = Api::parse(&gate.url, &gate.access, svc.timeout.min(QUERY_TIMEOUT))
        .map_err(|e| format!("{e:#}"))?;
    let asked = ask(&api, &svc.name, commit, &gate.machines).map_err(|e| {
        format!(
            "Prometheus at {} cannot be asked ({e:#}); the gate stays closed until it answers",
            gate.url
        )
    })?;
    let short = commit.short();
    if !asked.rejected.is_empty() {
        let on: Vec<String> = asked
            .rejected
            .iter()
            .map(|(m, stage)| format!("{m} ({stage})"))
            .collect();
        return Err(format!(
            "{short} was rejected on {}: the rollout is halted; push a fix, or `provision forward {}` to adopt it anyway",
            on.join(", "),
            svc.name
        ));
    }
    let soak = gate.soak.as_secs();
    let mut soaked = Vec::new();
    let mut not_yet = Vec::new();
    for name in &svc.rollout.canary {
        let c = asked.canaries.get(name);
        match c.map(|c| (c.deployed_at, c.last_pass_ok)) {
            Some((Some(at), Some(true))) if now.saturating_sub(at) >= soak => {
                soaked.push(name.clone())
            }
            Some((Some(at), Some(true))) => not_yet.push(format!(
                "{name} for {} of {}",
                human_span(std::time::Duration::from_secs(now.saturating_sub(at))),
                human_span(gate.soak)
            )),
            Some((Some(_), _)) => not_yet.push(format!("{name} has it, but its last pass failed")),
            _ => not_yet.push(format!("{name} does not have it")),
        }
    }
    if soaked.len() >= gate.min as usize {
        return Ok(format!(
            "{} of {} canaries served it for {} ({})",
            soaked.len(),
            svc.rollout.canary.len(),
            human_span(gate.soak),
            soaked.join(", ")
        ));
    }
    Err(format!(
        "{} of the {} canaries needed have served {short} for {} ({})",
        soaked.len(),
        gate.min,
        human_span(gate.soak),
        not_yet.join("; ")
    ))
}

/// What Prometheus knows about `commit` of `service`.
#[derive(Debug, Default)]
struct Asked {
    /// Machines that report it rejected, with the stage.
    rejected: BTreeSet<(String, String)>,
    /// Every machine's series, by machine.
    canaries: BTreeMap<String, Canary>,
}

/// Asks Prometheus about `commit`, counting only the series of `fleet`
/// (the machines of the config that run the service): another scraped
/// target cannot halt the rollout with a rejection, nor speak for a
/// canary. Where one machine has several series (scraped twice, or a
/// second target under its name), the least favourable wins: the latest
/// deployment time, a failed last pass.
fn ask(api: &Api, service: &str, commit: CommitId, fleet: &[String]) -> Result<Asked> {
    let mut asked = Asked::default();
    let svc = format!("service=\"{service}\"");
    let ours = |s: &Sample| s.host().filter(|m| fleet.contains(m));
    for s in api.query(&format!(
        "provision_rejected_commit_info{{{svc},commit=\"{commit}\"}}"
    ))? {
        if let Some(m) = ours(&s) {
            let stage = s.label("stage").unwrap_or("?").to_string();
            asked.rejected.insert((m, stage));
        }
    }
    for s in api.query(&format!(
        "provision_deployed_timestamp_seconds{{{svc}}} and on(instance, service) provision_deployed_commit_info{{{svc},commit=\"{commit}\"}}"
    ))? {
        if let (Some(m), Some(t)) = (ours(&s), s.value()) {
            let at = &mut asked.canaries.entry(m).or_default().deployed_at;
            *at = Some(at.map_or(t as u64, |was| was.max(t as u64)));
        }
    }
    for s in api.query(&format!("provision_last_pass_success{{{svc}}}"))? {
        if let (Some(m), Some(v)) = (ours(&s), s.value()) {
            let ok = &mut asked.canaries.entry(m).or_default().last_pass_ok;
            *ok = Some(ok.unwrap_or(true) && v != 0.0);
        }
    }
    Ok(asked)
}
