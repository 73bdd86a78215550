//! The operator's checks of a commit. `validate`: the service's own checker (`nginx -t`, `promtool check
//! config`, `sshd -t`, `visudo -c`) run on a candidate release before
//! anything switches on the host.
//!
//! The command runs in a private mount namespace in which the candidate is
//! mounted at every `local` of the service, read-only where it will be, so
//! it reads exactly the files the service would read, at the paths the
//! service reads them from, while the host and the service still see the
//! deployed release. `health`: a command run on the host after the
//! action, retried until it passes or its timeout ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{Check, Service};
use crate::host::mount::{self, Wanted};
use crate::host::systemd;
use crate::host::{namespace, process};
use crate::model::commit::CommitId;
use crate::store::state::{Rejected, Stage, State};

/// Characters of a rejection's reason kept in the state file.
const REASON_CAP: usize = 2000;
/// Pause between two health attempts.
const HEALTH_RETRY: Duration = Duration::from_secs(1);
/// Passes in a row, [`HEALTH_RETRY`] apart, that make a service healthy. A
/// reload job can end before the daemon applies the new configuration
/// (nginx's does): a first pass may still be the old configuration's
/// answer, so one more a second later is asked for.
const HEALTH_PASSES: u32 = 2;

/// Why a gate refused a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub stage: Stage,
    /// One line: what failed.
    pub what: String,
    /// The last lines of the command's output, if any.
    pub output: String,
}

impl Refusal {
    pub(crate) fn new(stage: Stage, what: String, output: String) -> Refusal {
        Refusal {
            stage,
            what,
            output,
        }
    }

    /// The state's record of this refusal of `commit`, now.
    pub(crate) fn rejected(&self, commit: CommitId) -> Rejected {
        Rejected {
            commit,
            stage: self.stage,
            reason: self.reason(),
            time: crate::util::now_unix(),
        }
    }

    /// The reason as recorded and shown: what failed, then its output.
    pub(crate) fn reason(&self) -> String {
        let mut r = self.what.clone();
        if !self.output.is_empty() {
            r.push_str(":\n");
            r.push_str(&self.output);
        }
        if r.chars().count() > REASON_CAP {
            r = r.chars().take(REASON_CAP).collect::<String>() + " [...]";
        }
        r
    }
}

/// Runs the service's `validate` on the release at `release` (of
/// `commit`). `Ok(None)` when it passed or none is configured; a refusal
/// when it failed or timed out. An error means it could not be run at all,
/// which says nothing about the commit.
pub(crate) fn validate(
    svc: &Service,
    release: &Path,
    commit: CommitId,
    previous: Option<CommitId>,
) -> Result<Option<Refusal>> {
    let Some(check) = &svc.checks.validate else {
        return Ok(None);
    };
    let finished = namespace::in_private_mounts(|| {
        for d in &svc.dirs {
            mount::ensure(&Wanted::of(d, release))?;
        }
        process::run_bounded(command(svc, check, commit, previous)?, check.timeout)
    })?;
    if finished.success() {
        return Ok(None);
    }
    Ok(Some(Refusal::new(
        Stage::Validate,
        format!(
            "`{}` {}",
            crate::config::printable(&check.command),
            finished.verdict(check.timeout)
        ),
        crate::store::release::redact_secrets(release, &finished.tail()),
    )))
}

/// The `PATH` of a check when provision has none (systemd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether a variable of provision's environment reaches `validate` and
/// `health`: the search path, the locale, the time zone and provision's
/// own settings, and nothing else, so the unit's tokens and secrets (and
/// whatever else its environment holds) stay with provision.
fn kept_for_checks(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    matches!(name, "PATH" | "LANG" | "LANGUAGE" | "TZ")
        || name.starts_with("LC_")
        || name.starts_with("PROVISION_")
}

/// `/bin/sh -c COMMAND`, with the environment the guide documents for
/// `validate` and `health`, as `check_user` when one is set. A user that
/// does not exist is an error of the pass, not a verdict on the commit.
pub(crate) fn command(
    svc: &Service,
    check: &Check,
    commit: CommitId,
    previous: Option<CommitId>,
) -> Result<Command> {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(&check.command)
        .current_dir("/")
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| kept_for_checks(k)));
    if std::env::var_os("PATH").is_none() {
        c.env("PATH", DEFAULT_PATH);
    }
    c.env("PROVISION_SERVICE", &svc.name)
        .env("PROVISION_COMMIT", commit.to_string())
        .env(
            "PROVISION_PREVIOUS",
            previous.map(|p| p.to_string()).unwrap_or_default(),
        );
    if let Some(user) = &svc.checks.user {
        process::RunAs::lookup(user)
            .with_context(|| format!("check_user of service {}", svc.name))?
            .apply(&mut c);
    }
    Ok(c)
}

/// Runs `health` about every second until it passes twice in a row with
/// the unit active, or its timeout ends.
pub(crate) fn health(svc: &Service, state: &State) -> Result<Option<Refusal>> {
    let Some(check) = &svc.checks.health else {
        return Ok(None);
    };
    let Some(trial) = &state.trial else {
        return Ok(None);
    };
    let previous = trial.previous.as_ref().map(|d| d.commit);
    let deadline = Instant::now() + check.timeout;
    let mut passed = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let cmd = command(svc, check, trial.commit, previous)?;
        let finished = process::run_bounded(cmd, left.max(HEALTH_RETRY))?;
        let unit = systemd::active_state(&svc.unit).unwrap_or_else(|e| format!("unknown ({e:#})"));
        if finished.success() && unit == "active" {
            passed += 1;
            if passed >= HEALTH_PASSES {
                return Ok(None);
            }
        } else {
            passed = 0;
        }
        if Instant::now() + HEALTH_RETRY >= deadline {
            let cmd = crate::config::printable(&check.command);
            let what = match finished.status {
                Some(_) if finished.success() && unit == "active" => format!(
                    "`{cmd}` did not pass {HEALTH_PASSES} times in a row within health_timeout ({}s)",
                    check.timeout.as_secs()
                ),
                Some(_) if finished.success() => {
                    format!("`{cmd}` passed but unit {} is {unit}", svc.unit)
                }
                Some(_) => format!(
                    "`{cmd}` {} (still failing after {}s)",
                    finished.verdict(check.timeout),
                    check.timeout.as_secs()
                ),
                None => format!(
                    "`{cmd}` still ran when health_timeout ({}s) ended (killed)",
                    check.timeout.as_secs()
                ),
            };
            return Ok(Some(Refusal::new(Stage::Health, what, finished.tail())));
        }
        std::thread::sleep(HEALTH_RETRY);
    }
}
