//! A commit on trial: once its files are switched in, the unit must take
//! them (its action), see them (its own mount namespace, for a sandboxed
//! unit) and stay healthy (`health`). When any of that fails, provision
//! switches back to the last good release with the same atomic switch, runs
//! the action again, and rejects the commit, so a commit the service
//! refuses never stays deployed. The revert itself is here too
//! ([`reject_and_revert`]), beside the trial it ends.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use git2::Repository;

use crate::config::{Action, Dir, Service};
use crate::engine::check::{self, Refusal};
use crate::engine::mounts;
use crate::host::mount::{self, Wanted};
use crate::host::namespace::{self, Sight};
use crate::host::systemd::{self, ActionOutcome};
use crate::model::commit::CommitId;
use crate::model::pass::{Note, NoteKind};
use crate::store::release::Releases;
use crate::store::state::{Stage, State, StateDir};

/// What is done to a unit that is not running when its files change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenStopped {
    /// A timer pass: switch the files, report the unit inactive, leave it.
    Leave,
    /// The operator asked for this deployment (`rollback`, `forward`, a
    /// revert): they want the service back, so start it.
    Start,
}

/// The error of a pass that rejected a commit. The service serves what
/// [`Rejection::serving`] says.
#[derive(Debug)]
pub struct Rejection {
    /// The rejected commit.
    pub commit: CommitId,
    /// The gate that refused it.
    pub stage: Stage,
    /// Why.
    pub reason: String,
    /// What happened after the refusal.
    pub after: After,
}

/// What a rejection left in place.
#[derive(Debug)]
pub enum After {
    /// `validate` refused it: nothing switched.
    NothingSwitched,
    /// Switched back to this commit's release.
    Reverted(CommitId),
    /// Switched back, but the action on the old release failed too.
    RevertedActionFailed(CommitId, String),
    /// The release to go back to is gone or could not be mounted.
    RevertFailed(String),
}

/// The error of a first deployment that failed its action or health
/// check: there is nothing to go back to, so its files stay and the commit
/// is not rejected; the next pass tries again.
#[derive(Debug)]
pub struct FirstDeploymentFailed {
    /// The commit in place.
    pub commit: CommitId,
    /// What failed.
    pub stage: Stage,
    /// Why.
    pub reason: String,
}

impl fmt::Display for FirstDeploymentFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed for {}: {}\n  nothing to revert to (first deployment): its files stay in place \
             and the next pass tries again",
            self.stage.as_str(),
            self.commit.short(),
            self.reason.replace('\n', "\n    ")
        )
    }
}

impl std::error::Error for FirstDeploymentFailed {}

/// Saves the state of a failed first deployment and returns its error.
pub(crate) fn first_deployment_failed(
    sd: &StateDir,
    state: &State,
    commit: CommitId,
    refusal: &Refusal,
) -> anyhow::Error {
    let err = FirstDeploymentFailed {
        commit,
        stage: refusal.stage,
        reason: refusal.reason(),
    };
    match sd.save(state) {
        Ok(()) => err.into(),
        Err(e) => anyhow::Error::new(err).context(format!("also, saving the state failed: {e:#}")),
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.commit.short();
        write!(f, "rejected {short} at {}: ", self.stage.as_str())?;
        let reason = self.reason.replace('\n', "\n    ");
        write!(f, "{reason}")?;
        match &self.after {
            After::NothingSwitched => write!(f, "\n  nothing switched"),
            After::Reverted(c) => write!(f, "\n  reverted to {}", c.short()),
            After::RevertedActionFailed(c, e) => {
                write!(
                    f,
                    "\n  reverted to {}, but its action failed too: {e}",
                    c.short()
                )
            }
            After::RevertFailed(e) => write!(f, "\n  could not revert: {e}"),
        }?;
        write!(
            f,
            "\n  later passes skip {short}; push a fix, or `provision forward` to try it again"
        )
    }
}

impl std::error::Error for Rejection {}

/// How long a unit's action job may take before the pass gives up on it.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Directories whose files systemd reads as unit files: a mount there needs
/// a daemon-reload before the action.
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd",
    "/run/systemd",
    "/usr/lib/systemd",
    "/lib/systemd",
];

/// Runs `action` on the service's unit (after a daemon-reload when it
/// mounts unit files).
fn run_unit_action(svc: &Service, action: Action) -> Result<ActionOutcome> {
    if svc
        .dirs
        .iter()
        .any(|d| UNIT_DIRS.iter().any(|u| d.local.starts_with(u)))
    {
        systemd::daemon_reload().context("reloading systemd for changed unit files")?;
    }
    systemd::run_action(&svc.unit, action, ACTION_TIMEOUT)
}

/// The error context of a pass whose files are in place but whose action
/// failed: the new release is deployed (not the last good one kept), and
/// the action is retried by the next pass.
#[derive(Debug)]
pub struct ActionPending {
    /// The commit whose files are in place.
    pub commit: Option<CommitId>,
    /// The action that failed (`reload`...).
    pub action: &'static str,
}

impl std::fmt::Display for ActionPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.commit {
            Some(c) => write!(f, "the files of {} are in place", c.short())?,
            None => f.write_str("the files are in place")?,
        }
        write!(f, "; the {} is retried by the next pass", self.action)
    }
}

/// Validates the candidate release of `commit` before anything switches;
/// a refusal is recorded and returned as the pass's error.
pub(crate) fn validate_or_reject(
    svc: &Service,
    sd: &StateDir,
    state: &mut State,
    release: &Path,
    commit: CommitId,
) -> Result<()> {
    let previous = state.deployed.as_ref().map(|d| d.commit);
    let Some(refusal) = check::validate(svc, release, commit, previous)
        .context("could not run validate (the commit was not judged)")?
    else {
        return Ok(());
    };
    Err(record(sd, state, commit, &refusal, After::NothingSwitched).into())
}

/// Records the rejection in the state (saved) and returns it as an error.
pub(crate) fn record(
    sd: &StateDir,
    state: &mut State,
    commit: CommitId,
    refusal: &Refusal,
    after: After,
) -> Rejection {
    let rejected = refusal.rejected(commit);
    let reason = rejected.reason.clone();
    state.rejected = Some(rejected);
    let mut rejection = Rejection {
        commit,
        stage: refusal.stage,
        reason,
        after,
    };
    if let Err(e) = sd.save(state) {
        rejection
            .reason
            .push_str(&format!(" (and saving the state failed: {e:#})"));
    }
    rejection
}

/// After the switch to the deployed release at `release`: shows it inside
/// the unit's own namespace, runs the action (when `act`), and waits for
/// health while a trial is open. `Ok(None)` when all of that passed.
pub(crate) fn confirm(
    svc: &Service,
    release: &Path,
    sd: &StateDir,
    state: &mut State,
    notes: &mut Vec<Note>,
    act: bool,
    stopped: WhenStopped,
) -> Result<Option<Refusal>> {
    let on_trial = state.trial.is_some();
    if let Err(e) = show_in_unit(svc, release, notes) {
        return refuse_or_fail(on_trial, Stage::Visibility, e);
    }
    let running = if act {
        match run_action(svc, sd, state, notes, stopped) {
            Ok(running) => running,
            Err(e) if on_trial && !systemd::unreachable(&e) => {
                state.action_pending = false;
                return Ok(Some(Refusal::new(
                    Stage::Action,
                    format!("{e:#}"),
                    String::new(),
                )));
            }
            Err(e) => return Err(e),
        }
    } else {
        unit_running(svc)?
    };
    if !running {
        if on_trial && svc.checks.health.is_some() {
            notes.push(Note::new(
                NoteKind::Health,
                format!("health not checked: unit {} is not running", svc.unit),
            ));
        }
        return Ok(None);
    }
    if let Err(e) = show_in_unit(svc, release, notes) {
        return refuse_or_fail(on_trial, Stage::Visibility, e);
    }
    if on_trial {
        if let Some(refusal) = check::health(svc, state)? {
            return Ok(Some(refusal));
        }
    }
    Ok(None)
}

/// A failure during a trial refuses the commit; outside one (a repair of
/// the same release) it fails the pass.
fn refuse_or_fail(on_trial: bool, stage: Stage, e: anyhow::Error) -> Result<Option<Refusal>> {
    // Without the bus nothing was judged: the trial stays open for the
    // next pass.
    if on_trial && !systemd::unreachable(&e) {
        Ok(Some(Refusal::new(stage, format!("{e:#}"), String::new())))
    } else {
        Err(e)
    }
}

/// Whether the unit runs now (active, reloading or activating).
fn unit_running(svc: &Service) -> Result<bool> {
    Ok(systemd::is_running(&systemd::active_state(&svc.unit)?))
}

/// Runs the action with `action_pending` recorded first, so a crash or a
/// failure mid-action is retried by the next pass. A unit that is not
/// running is started when `stopped` says so, else left alone. Returns
/// whether the unit runs afterwards.
pub(crate) fn run_action(
    svc: &Service,
    sd: &StateDir,
    state: &mut State,
    notes: &mut Vec<Note>,
    stopped: WhenStopped,
) -> Result<bool> {
    let Some(configured) = svc.action else {
        return unit_running(svc);
    };
    let active = match systemd::active_state(&svc.unit) {
        Ok(a) => a,
        // Try the action anyway: its error names the unit and the action.
        Err(e) if systemd::unreachable(&e) => "unknown".to_string(),
        Err(e) => return Err(e),
    };
    // A unit systemd does not know gets its action anyway, which fails
    // naming it.
    let running =
        systemd::is_running(&active) || matches!(active.as_str(), "not-found" | "unknown");
    let action = match (running, stopped, configured) {
        (true, _, a) | (false, _, a @ Action::Start) => a,
        (false, WhenStopped::Start, _) => Action::Start,
        (false, WhenStopped::Leave, _) => {
            state.action_pending = false;
            notes.push(Note::new(NoteKind::Action, format!(
                "unit {} is not running: files switched, {} skipped (the unit reads them when it starts)",
                svc.unit,
                configured.as_str()
            )));
            return Ok(false);
        }
    };
    state.action_pending = true;
    sd.save(state)?;
    let result = run_unit_action(svc, action);
    state.counters.action(action.as_str(), result.is_ok());
    let outcome = result.map_err(|e| {
        e.context(ActionPending {
            commit: state.deployed.as_ref().map(|d| d.commit),
            action: action.as_str(),
        })
    })?;
    // Recorded at once: a crash during the health wait that follows must
    // not run the action a second time.
    state.action_pending = false;
    sd.save(state)?;
    notes.push(Note::new(
        NoteKind::Action,
        format!(
            "{} {}: {}, unit {}",
            action.as_str(),
            svc.unit,
            outcome.job_result,
            outcome.active_state
        ),
    ));
    Ok(systemd::is_running(&outcome.active_state))
}

/// Starts the unit when it is not running (an operator's `rollback` or
/// `forward` that changed no file).
pub(crate) fn start_if_stopped(svc: &Service, notes: &mut Vec<Note>) -> Result<()> {
    if unit_running(svc)? {
        return Ok(());
    }
    let outcome = run_unit_action(svc, Action::Start)?;
    notes.push(Note::new(
        NoteKind::Action,
        format!(
            "start {}: {}, unit {}",
            svc.unit, outcome.job_result, outcome.active_state
        ),
    ));
    Ok(())
}

/// Makes the running unit's own mount namespace show `release` at each
/// `local`: a sandboxed unit (`ProtectSystem=`, `PrivateTmp=`...) whose
/// namespace does not receive the host's new mounts gets them the way
/// `systemctl bind` adds them, read-only when the mount is.
pub(crate) fn show_in_unit(svc: &Service, release: &Path, notes: &mut Vec<Note>) -> Result<()> {
    let pid = match systemd::main_pid(&svc.unit) {
        Ok(Some(pid)) => pid,
        Ok(None) => return Ok(()),
        // Without the bus the action fails too, and says so.
        Err(e) if systemd::unreachable(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for d in &svc.dirs {
        let source = release.join(&d.link);
        match namespace::sees(pid, &d.local, &source) {
            Ok(Sight::Host) => return Ok(()),
            Ok(Sight::Same) => {}
            // The process may have just ended (a restart): its successor
            // starts from the host's mounts.
            Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => return Ok(()),
            Ok(Sight::Other) | Err(_) => {
                bind_into(svc, pid, d, release).with_context(|| {
                    format!(
                        "unit {} runs in its own mount namespace, which does not show {}",
                        svc.unit,
                        d.local.display()
                    )
                })?;
                anyhow::ensure!(
                    namespace::sees(pid, &d.local, &source)? != Sight::Other,
                    "unit {} still does not see the release at {} after binding it into its namespace",
                    svc.unit,
                    d.local.display()
                );
                notes.push(Note::new(
                    NoteKind::Mount,
                    format!(
                        "bound {} into unit {}'s own mount namespace",
                        d.local.display(),
                        svc.unit
                    ),
                ));
            }
        }
        if d.readonly && namespace::writable(pid, &d.local).unwrap_or(false) {
            anyhow::bail!(
                "unit {} can write {} although it is mounted read-only",
                svc.unit,
                d.local.display()
            );
        }
    }
    Ok(())
}

/// Mounts `d`'s path of `release` at `d.local` inside the namespace of the unit's main
/// process `pid`: through systemd's BindMountUnit where it works, else by
/// entering the namespace and switching the mount there, which also works
/// where systemd cannot propagate into it (a host whose `/` is private).
fn bind_into(svc: &Service, pid: u32, d: &Dir, release: &Path) -> Result<()> {
    let wanted = Wanted::of(d, release);
    let Err(by_systemd) = systemd::bind_mount_unit(&svc.unit, &wanted.source, &d.local, d.readonly)
    else {
        return Ok(());
    };
    let prepared = mount::prepare(&wanted)?;
    namespace::in_namespace_of(pid, || mount::ensure_prepared(&wanted, prepared))
        .map(|_| ())
        .map_err(|e| e.context(format!("{by_systemd:#}; and directly")))
}

/// Rejects the commit on trial: switches back to the last good release
/// (when there is one), runs the action there, starting the unit if needed,
/// and returns the rejection as the pass's error.
pub(crate) fn reject_and_revert(
    svc: &Service,
    repo: Option<&Repository>,
    releases: &Releases,
    sd: &StateDir,
    state: &mut State,
    refusal: &Refusal,
    notes: &mut Vec<Note>,
) -> anyhow::Error {
    let trial = state.trial.take();
    state.action_pending = false;
    let commit = match (&trial, &state.deployed) {
        (Some(t), _) => t.commit,
        (None, Some(d)) => d.commit,
        (None, None) => return anyhow::anyhow!("{}", refusal.reason()),
    };
    let Some(previous) = trial.as_ref().and_then(|t| t.previous.clone()) else {
        // Nothing to go back to: the files stay, the trial stays open and
        // the next pass tries the action and the health check again (the
        // fault may be the machine's, such as a unit not installed yet).
        state.trial = trial;
        state.action_pending = svc.action.is_some();
        return first_deployment_failed(sd, state, commit, refusal);
    };
    if let Some(why) = untrusted(svc, repo, previous.commit) {
        return record(sd, state, commit, refusal, After::RevertFailed(why)).into();
    }
    let path = releases.path(&previous.release);
    if !path.is_dir() {
        let why = format!("its release {} is gone", path.display());
        return record(sd, state, commit, refusal, After::RevertFailed(why)).into();
    }
    if let Err(e) = mounts::mount_recorded(svc, &path, state) {
        let why = format!("{e:#}");
        return record(sd, state, commit, refusal, After::RevertFailed(why)).into();
    }
    let back = previous.commit;
    state.deployed = Some(previous);
    state.counters.reverts += 1;
    // Known before the revert's action, which saves the state first: a
    // crash during that action must not let the next pass try the commit
    // again.
    state.rejected = Some(refusal.rejected(commit));
    let after = match show_in_unit(svc, &path, notes)
        .and_then(|()| run_action(svc, sd, state, notes, WhenStopped::Start))
    {
        Ok(_) => After::Reverted(back),
        Err(e) => After::RevertedActionFailed(back, format!("{e:#}")),
    };
    record(sd, state, commit, refusal, after).into()
}

/// Why the revert target may not be deployed again (signatures are
/// checked and it carries no valid one now: a key was removed, say);
/// `None` when it may.
fn untrusted(svc: &Service, repo: Option<&Repository>, commit: CommitId) -> Option<String> {
    let trusted = match crate::engine::trust::trusted(svc) {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => return Some(format!("{e:#}")),
    };
    let Some(repo) = repo else {
        return Some(format!(
            "the signature of {} cannot be checked: the mirror is unavailable",
            commit.short()
        ));
    };
    let verdict = crate::git::signature::verify(repo, commit.oid(), &trusted);
    (!verdict.verified).then(|| {
        format!(
            "the previous commit {} is not signed by a trusted key ({})",
            commit.short(),
            verdict.describe()
        )
    })
}
