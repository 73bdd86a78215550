//! The timers' life cycle: after the config changed, every service of this
//! machine has its timer running and no timer runs for a service the
//! config no longer has. The generator only writes units; starting and
//! stopping them is done here, so no reboot is needed.

use anyhow::Result;

use crate::config::Service;
use crate::host::systemd;

/// The timer unit of service `name`.
pub fn timer(name: &str) -> String {
    format!("provision@{name}.timer")
}

/// The unit that watches the config file and runs `provision activate`.
pub const CONFIG_WATCH: &str = "provision-config.path";

/// Reloads systemd (which runs the generator on the config as it is now),
/// starts the timer of every service in `services`, and stops every
/// provision timer of a service not among them. Returns what it did.
pub fn activate(services: &[&Service]) -> Result<Vec<String>> {
    systemd::daemon_reload()?;
    let mut done = Vec::new();
    let wanted: Vec<String> = services.iter().map(|s| timer(&s.name)).collect();
    let running = systemd::active_units("provision@*.timer")?;
    for unit in &wanted {
        if !running.contains(unit) {
            systemd::start(unit)?;
            done.push(format!("started {unit}"));
        }
    }
    for unit in running.iter().filter(|u| !wanted.contains(u)) {
        systemd::stop(unit)?;
        done.push(format!(
            "stopped {unit} (its service is no longer in the config)"
        ));
    }
    Ok(done)
}

/// Enables and starts the config watch, so later config changes reach
/// the timers by themselves (where the unit is installed).
pub fn watch_config() -> Result<Option<String>> {
    if systemd::active_state(CONFIG_WATCH)? == "not-found" {
        return Ok(None);
    }
    systemd::enable(CONFIG_WATCH)?;
    systemd::start(CONFIG_WATCH)?;
    Ok(Some(format!("enabled and started {CONFIG_WATCH}")))
}
