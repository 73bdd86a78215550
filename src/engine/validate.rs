//! `validate`: the service's own checker (`nginx -t`, `promtool check
//! config`, `sshd -t`, `visudo -c`) run on a candidate release before
//! anything switches on the host.
//!
//! The command runs in a private mount namespace in which the candidate is
//! mounted at every `local` of the service, read-only where it will be, so
//! it reads exactly the files the service would read, at the paths the
//! service reads them from, while the host and the service still see the
//! deployed release.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::config::{Check, Service};
use crate::engine::trial::Refusal;
use crate::host::mount::{self, Wanted};
use crate::host::{namespace, process};
use crate::store::commit::CommitId;
use crate::store::state::Stage;

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
        process::run_bounded(command(svc, check, commit, previous), check.timeout)
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
        finished.tail(),
    )))
}

/// `/bin/sh -c COMMAND`, with the environment the README documents for
/// `validate` and `health`.
pub(crate) fn command(
    svc: &Service,
    check: &Check,
    commit: CommitId,
    previous: Option<CommitId>,
) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(&check.command)
        .current_dir("/")
        .env("PROVISION_SERVICE", &svc.name)
        .env("PROVISION_COMMIT", commit.to_string())
        .env(
            "PROVISION_PREVIOUS",
            previous.map(|p| p.to_string()).unwrap_or_default(),
        );
    c
}
