//! Talking to systemd over D-Bus: run a unit's action, reload the manager, read a unit's state.
//!
//! provision talks to the manager directly instead of running `systemctl`, so that it gets the
//! job's result as data (`done`, `failed`, ...) rather than an exit code and a message meant for a
//! person, and so that a missing bus fails at once instead of through a child process.
//!
//! zbus is async only; every public function here drives its own future to completion on the
//! calling thread with `zbus::block_on`, so callers stay synchronous. Each call opens its own
//! connection to the system bus: a pass runs a handful of actions, and a fresh connection per
//! call keeps no state (subscriptions, match rules) alive between them.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};
use zbus_systemd::zbus::{self, proxy::CacheProperties, OwnedObjectPath};

use crate::config::Action;

/// The D-Bus error systemd answers with for a unit it has no file for.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// The D-Bus error systemd answers with for a job the unit cannot take, e.g. reloading a
/// stopped unit.
const NOT_APPLICABLE: &str = "org.freedesktop.systemd1.JobTypeNotApplicable";
/// How long `daemon_reload` may take: systemd re-reads every unit file, which is slow on a
/// machine with many units, so this is well above D-Bus's usual 25 s.
const DAEMON_RELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long reading a unit's state may take; D-Bus's usual method timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(25);
/// The job mode of every action: like `systemctl`, replace a conflicting queued job.
const JOB_MODE: &str = "replace";

/// What an action did, for reports and metrics.
///
/// Both fields are systemd's own words, so that a report shows what `systemctl` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    /// The job's result from `JobRemoved`: `done` for every successful outcome.
    pub job_result: String,
    /// The unit's `ActiveState` once the job was gone (`active`, `inactive`, ...).
    pub active_state: String,
}

/// Runs `action` on `unit` over the system bus, waits for the job (JobRemoved for our job path;
/// bounded by `timeout`), then reads the unit's ActiveState.
///
/// Waiting for the job, rather than only queuing it, is what lets a pass report that the new
/// configuration was actually taken up. `timeout` bounds the whole call, connecting included;
/// a job still queued when it expires is left to systemd, which carries it out or cancels it.
///
/// Errs when the bus is unreachable, the unit does not exist, the job's result is not `done`,
/// or the unit is afterwards in a state that the action should not leave it in (see
/// [`state_is_acceptable`]). `TryRestart` of an inactive unit is a success.
pub fn run_action(unit: &str, action: Action, timeout: Duration) -> Result<ActionOutcome> {
    let verb = action.as_str();
    let work = async {
        let conn = connect().await?;
        let outcome = run_job(&conn, unit, action).await?;
        check_outcome(unit, action, &outcome)?;
        Ok(outcome)
    };
    block_on_within(timeout, work).with_context(|| format!("running {verb} on unit {unit}"))
}

/// `systemctl daemon-reload` over D-Bus (Reload on the manager), waits for completion.
///
/// Needed after provision changes a unit file, so that systemd acts on the new one. The
/// manager replies to `Reload` only once it has finished reloading, so the reply is the wait.
pub fn daemon_reload() -> Result<()> {
    let work = async {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager.reload().await?;
        Ok(())
    };
    block_on_within(DAEMON_RELOAD_TIMEOUT, work).context("reloading the systemd manager")
}

/// The unit's ActiveState ("active", "inactive", "failed", ...), or "not-found" if systemd does
/// not know it. For status reports.
///
/// The unit is looked up with `LoadUnit`, so that an existing unit that systemd has unloaded
/// (inactive, and nothing refers to it) reads as "inactive" rather than as unknown.
pub fn active_state(unit: &str) -> Result<String> {
    let work = async {
        let conn = connect().await?;
        read_active_state(&conn, unit).await
    };
    block_on_within(QUERY_TIMEOUT, work)
        .with_context(|| format!("reading the state of unit {unit}"))
}

/// The main process of `unit` while it runs; `None` when it has none (not
/// running, or not a service).
pub fn main_pid(unit: &str) -> Result<Option<u32>> {
    let work = async {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        let path = manager.load_unit(unit.to_owned()).await?;
        let service = zbus_systemd::systemd1::ServiceProxy::builder(&conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // A unit that is not a service has no MainPID property.
        Ok(service.main_pid().await.ok().filter(|p| *p != 0))
    };
    block_on_within(QUERY_TIMEOUT, work)
        .with_context(|| format!("reading the main process of unit {unit}"))
}

/// Mounts `source` at `destination` inside the running `unit`'s own mount
/// namespace, as `systemctl bind` does (the manager's BindMountUnit).
pub fn bind_mount_unit(
    unit: &str,
    source: &std::path::Path,
    destination: &std::path::Path,
    read_only: bool,
) -> Result<()> {
    let (src, dst) = (source.display(), destination.display());
    let work = async {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager
            .bind_mount_unit(
                unit.to_owned(),
                src.to_string(),
                dst.to_string(),
                read_only,
                false,
            )
            .await?;
        Ok(())
    };
    block_on_within(QUERY_TIMEOUT, work)
        .with_context(|| format!("bind-mounting {src} at {dst} inside unit {unit}"))
}

/// The active units whose names match the glob `pattern`.
pub fn active_units(pattern: &str) -> Result<Vec<String>> {
    let work = async {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        let units = manager
            .list_units_by_patterns(vec!["active".to_owned()], vec![pattern.to_owned()])
            .await?;
        Ok(units.into_iter().map(|u| u.0).collect())
    };
    block_on_within(QUERY_TIMEOUT, work).with_context(|| format!("listing active units {pattern}"))
}

/// Starts `unit` (nothing happens when it is active) and waits for the job.
pub fn start(unit: &str) -> Result<()> {
    run_action(unit, Action::Start, QUERY_TIMEOUT).map(|_| ())
}

/// Enables `unit` (its `[Install]` section), as `systemctl enable` does.
pub fn enable(unit: &str) -> Result<()> {
    let work = async {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager
            .enable_unit_files(vec![unit.to_owned()], false, true)
            .await?;
        Ok(())
    };
    block_on_within(QUERY_TIMEOUT, work).with_context(|| format!("enabling unit {unit}"))
}

/// Stops `unit`; the stop job is queued, not waited for.
pub fn stop(unit: &str) -> Result<()> {
    let work = async {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager
            .stop_unit(unit.to_owned(), JOB_MODE.to_owned())
            .await?;
        Ok(())
    };
    block_on_within(QUERY_TIMEOUT, work).with_context(|| format!("stopping unit {unit}"))
}

/// Whether an ActiveState is a running unit's, one an action applies to.
pub fn is_running(active_state: &str) -> bool {
    matches!(active_state, "active" | "reloading" | "activating")
}

/// The manager method that queues `action`'s job, as systemctl maps its verbs.
fn method_name(action: Action) -> &'static str {
    match action {
        Action::Reload => "ReloadUnit",
        Action::Restart => "RestartUnit",
        Action::TryRestart => "TryRestartUnit",
        Action::ReloadOrRestart => "ReloadOrRestartUnit",
        Action::Start => "StartUnit",
    }
}

/// Whether a unit may be in `active_state` after `action`'s job finished `done`.
///
/// A job can be `done` and the unit still down, e.g. a service that exits right after starting;
/// a pass must not report that as applied. Only `TryRestart` (which does nothing to a unit that
/// was not running) and `Start` (of a oneshot unit, which is inactive again once it ran) may
/// leave a unit inactive.
fn state_is_acceptable(action: Action, active_state: &str) -> bool {
    match action {
        // A oneshot unit, what `start` is for, is inactive again once it
        // ran; a failed run leaves it "failed".
        Action::TryRestart | Action::Start => active_state != "failed",
        _ => matches!(active_state, "active" | "reloading" | "activating"),
    }
}

/// The error message for a job that ended with `result` other than `done`, with a hint of why.
///
/// The results are systemd's (see `JobRemoved` in org.freedesktop.systemd1(5)); the hint saves
/// the operator a trip to the man page.
fn job_failure_message(unit: &str, action: Action, result: &str) -> String {
    let why = match result {
        "failed" => "the unit's command failed",
        "timeout" => "the unit's own job timeout passed",
        "canceled" => "another job replaced it",
        "dependency" => "a unit it depends on failed",
        "invalid" => "the unit cannot do that in its current state (e.g. reload while inactive)",
        "skipped" => "it did not apply to the unit's state",
        _ => "systemd gave no reason",
    };
    format!(
        "{} of unit {unit} finished with result \"{result}\" ({why}); see `journalctl -u {unit}`",
        action.as_str()
    )
}

/// Drives `work` to completion on this thread, failing once `timeout` has passed.
///
/// zbus runs on zruntime here, whose timer is what bounds the wait.
fn block_on_within<T>(timeout: Duration, work: impl Future<Output = Result<T>>) -> Result<T> {
    zbus::block_on(async {
        let runtime = zruntime::SharedRuntime::current().context("starting the D-Bus runtime")?;
        match runtime.timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => bail!(
                "gave up waiting for systemd after {timeout:?}; a queued job may still run \
                 (see `systemctl list-jobs`)"
            ),
        }
    })
}

/// Connects to the system bus, naming the address in the error so a missing bus is obvious.
async fn connect() -> Result<zbus::Connection> {
    zbus::Connection::system().await.map_err(|e| {
        let address = zbus::Address::system().map_or_else(|e| e.to_string(), |a| a.to_string());
        anyhow::Error::new(Unreachable(format!(
            "cannot reach systemd over D-Bus at {address}: {e}"
        )))
    })
}

/// The system bus could not be reached: a fault of the machine, which says
/// nothing about the files provision deployed.
#[derive(Debug)]
pub struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `e` comes from an unreachable system bus.
pub fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Unreachable>().is_some())
}

/// Queues `action`'s job on `unit`, waits for systemd to remove it, then reads the unit's state.
async fn run_job(conn: &zbus::Connection, unit: &str, action: Action) -> Result<ActionOutcome> {
    let job_result = queue_and_wait(conn, unit, action).await?;
    let active_state = read_active_state(conn, unit)
        .await
        .with_context(|| format!("reading the state of unit {unit} after its job"))?;
    Ok(ActionOutcome {
        job_result,
        active_state,
    })
}

/// Queues `action`'s job on `unit` and returns the result systemd removed it with.
///
/// The JobRemoved stream is opened and the connection subscribed before the job is queued, so
/// that a job that finishes before the method's reply arrives is not missed.
async fn queue_and_wait(conn: &zbus::Connection, unit: &str, action: Action) -> Result<String> {
    let manager = ManagerProxy::new(conn).await?;
    let mut removed = manager.receive_job_removed().await?;
    manager
        .subscribe()
        .await
        .context("subscribing to systemd's job signals")?;
    let job: OwnedObjectPath = manager
        .inner()
        .call(method_name(action), &(unit, JOB_MODE))
        .await
        .map_err(|e| queue_error(e, unit, action))?;
    loop {
        let signal = removed.next().await.with_context(|| {
            format!("losing the D-Bus connection while waiting for the job of unit {unit}")
        })?;
        let args = signal.args()?;
        if args.job == job {
            return Ok(args.result);
        }
    }
}

/// The unit's ActiveState, or "not-found" when systemd has no such unit.
///
/// LoadUnit rather than GetUnit: systemd unloads an inactive unit that nothing references, and
/// GetUnit then says it does not exist.
async fn read_active_state(conn: &zbus::Connection, unit: &str) -> Result<String> {
    let manager = ManagerProxy::new(conn).await?;
    let path = manager.load_unit(unit.to_owned()).await?;
    let proxy = unit_proxy(conn, path).await?;
    if proxy.load_state().await? == "not-found" {
        return Ok("not-found".to_owned());
    }
    Ok(proxy.active_state().await?)
}

/// Turns a finished job into an error when its result or the unit's state says it did not work.
fn check_outcome(unit: &str, action: Action, outcome: &ActionOutcome) -> Result<()> {
    if outcome.job_result != "done" {
        bail!(job_failure_message(unit, action, &outcome.job_result));
    }
    if !state_is_acceptable(action, &outcome.active_state) {
        bail!(
            "{} of unit {unit} finished, but the unit is \"{}\"; see `journalctl -u {unit}`",
            action.as_str(),
            outcome.active_state
        );
    }
    Ok(())
}

/// A proxy for the unit object at `path`, reading properties afresh on each access.
async fn unit_proxy(conn: &zbus::Connection, path: OwnedObjectPath) -> Result<UnitProxy<'_>> {
    Ok(UnitProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

/// Rewords systemd's refusals to queue a job that an operator may meet; passes others on.
fn queue_error(e: zbus::Error, unit: &str, action: Action) -> anyhow::Error {
    let name = match &e {
        zbus::Error::MethodError(name, _, _) => name.as_str(),
        _ => "",
    };
    match name {
        NO_SUCH_UNIT => anyhow!("unit {unit} not found"),
        NOT_APPLICABLE => anyhow!(
            "unit {unit} cannot {} now (e.g. a reload of a stopped unit, or of one without \
             ExecReload=): {e}",
            action.as_str()
        ),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Action; 5] = [
        Action::Reload,
        Action::Restart,
        Action::TryRestart,
        Action::ReloadOrRestart,
        Action::Start,
    ];

    #[test]
    fn each_action_maps_to_the_manager_method_of_its_systemctl_verb() {
        let methods: Vec<_> = ALL.iter().map(|a| (a.as_str(), method_name(*a))).collect();
        assert_eq!(
            methods,
            [
                ("reload", "ReloadUnit"),
                ("restart", "RestartUnit"),
                ("try-restart", "TryRestartUnit"),
                ("reload-or-restart", "ReloadOrRestartUnit"),
                ("start", "StartUnit"),
            ]
        );
    }

    #[test]
    fn failed_is_never_acceptable() {
        for action in ALL {
            assert!(!state_is_acceptable(action, "failed"), "{action:?}");
        }
    }

    #[test]
    fn running_states_are_acceptable_for_every_action() {
        for action in ALL {
            for state in ["active", "reloading", "activating"] {
                assert!(state_is_acceptable(action, state), "{action:?} {state}");
            }
        }
    }

    #[test]
    fn only_try_restart_and_start_may_leave_a_unit_down() {
        for action in ALL {
            let expected = matches!(action, Action::TryRestart | Action::Start);
            for state in ["inactive", "deactivating"] {
                assert_eq!(
                    state_is_acceptable(action, state),
                    expected,
                    "{action:?} {state}"
                );
            }
        }
    }

    #[test]
    fn a_failed_job_names_unit_action_result_and_the_journal() {
        let msg = job_failure_message("web.service", Action::Reload, "failed");
        assert!(msg.contains("reload of unit web.service"), "{msg}");
        assert!(msg.contains("\"failed\""), "{msg}");
        assert!(msg.contains("journalctl -u web.service"), "{msg}");
    }

    #[test]
    fn an_unknown_job_result_is_still_reported() {
        let msg = job_failure_message("a.service", Action::Start, "frobbed");
        assert!(msg.contains("\"frobbed\""), "{msg}");
    }

    #[test]
    fn a_done_job_with_a_running_unit_is_ok() {
        let outcome = ActionOutcome {
            job_result: "done".into(),
            active_state: "active".into(),
        };
        assert!(check_outcome("a.service", Action::Restart, &outcome).is_ok());
    }

    #[test]
    fn a_done_job_with_a_failed_unit_is_an_error() {
        let outcome = ActionOutcome {
            job_result: "done".into(),
            active_state: "failed".into(),
        };
        let err = check_outcome("a.service", Action::Start, &outcome).unwrap_err();
        assert!(err.to_string().contains("\"failed\""), "{err}");
    }

    #[test]
    fn try_restart_of_an_inactive_unit_is_ok() {
        let outcome = ActionOutcome {
            job_result: "done".into(),
            active_state: "inactive".into(),
        };
        assert!(check_outcome("a.service", Action::TryRestart, &outcome).is_ok());
    }
}
