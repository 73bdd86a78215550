//! Structured journal entries, when standard error is the journal (a unit
//! started by systemd): each report line goes out as one entry with
//! `SERVICE=`, `COMMIT=`, `PROVISION_EVENT=` and a stable `MESSAGE_ID=` per
//! event, at the priority its outcome deserves, so that
//! `journalctl -u provision@web PROVISION_EVENT=revert` finds every revert.
//! Anywhere else the lines stay plain text on stdout and stderr.
//!
//! The protocol is spoken by systemd-journal-logger (pure Rust, over the
//! journal's socket, no libsystemd): it maps `log` records and their
//! key-values to journal fields.

use std::sync::atomic::{AtomicBool, Ordering};

use log::Level;

/// Whether entries go to the journal.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// What an entry is about: `PROVISION_EVENT=` and its `MESSAGE_ID=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new release was switched in by a pass or `forward`.
    Deploy,
    /// A pass that found nothing to change.
    Sync,
    /// `rollback` deployed and pinned a commit.
    Rollback,
    /// Mounts restored from disk (`provision mount`).
    Restore,
    /// A commit refused before the switch.
    Reject,
    /// A commit switched back after its action or health check failed.
    Revert,
    /// A pass or command that failed.
    Fail,
    /// `freeze`.
    Freeze,
    /// `unfreeze`.
    Unfreeze,
    /// `forget`.
    Forget,
    /// `activate` or `bootstrap` started or stopped timers.
    Activate,
    /// `bootstrap` installed the config.
    Bootstrap,
}

impl Event {
    /// The `PROVISION_EVENT=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Deploy => "deploy",
            Event::Sync => "sync",
            Event::Rollback => "rollback",
            Event::Restore => "restore",
            Event::Reject => "reject",
            Event::Revert => "revert",
            Event::Fail => "fail",
            Event::Freeze => "freeze",
            Event::Unfreeze => "unfreeze",
            Event::Forget => "forget",
            Event::Activate => "activate",
            Event::Bootstrap => "bootstrap",
        }
    }

    /// The event's stable `MESSAGE_ID=` (journalctl `MESSAGE_ID=...`
    /// finds it across versions).
    pub fn message_id(self) -> &'static str {
        match self {
            Event::Deploy => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d01",
            Event::Sync => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d02",
            Event::Rollback => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d03",
            Event::Restore => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d04",
            Event::Reject => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d05",
            Event::Revert => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d06",
            Event::Fail => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d07",
            Event::Freeze => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d08",
            Event::Unfreeze => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d09",
            Event::Forget => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d0a",
            Event::Activate => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d0b",
            Event::Bootstrap => "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d0c",
        }
    }

    /// Its priority: failures are errors, refusals warnings, changes
    /// notices (info here), the rest info.
    fn level(self) -> Level {
        match self {
            Event::Fail => Level::Error,
            Event::Reject | Event::Revert => Level::Warn,
            _ => Level::Info,
        }
    }
}

/// Sends entries to the journal from now on when standard error is
/// connected to it; returns whether it is.
pub fn init() -> bool {
    if !systemd_journal_logger::connected_to_journal() {
        return false;
    }
    let installed = systemd_journal_logger::JournalLog::new()
        .map(|j| j.with_syslog_identifier("provision".to_string()))
        .ok()
        .and_then(|j| j.install().ok())
        .is_some();
    if installed {
        log::set_max_level(log::LevelFilter::Info);
        ACTIVE.store(true, Ordering::Relaxed);
    }
    installed
}

/// Whether entries go to the journal.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// One entry: `message` about `service` (and `commit`, 40 hex digits).
pub fn entry(event: Event, service: &str, commit: Option<&str>, message: &str) {
    let level = event.level();
    let id = event.message_id();
    let kind = event.as_str();
    match commit {
        Some(commit) => log::log!(
            level,
            service = service, commit = commit, provision_event = kind, message_id = id;
            "{message}"
        ),
        None => log::log!(
            level,
            service = service, provision_event = kind, message_id = id;
            "{message}"
        ),
    }
}
