//! Credentials and transfer limits for network fetches.
//!
//! provision runs unattended as root, so a fetch must never prompt and
//! never retry a rejected credential. Secrets stay in files: the config
//! holds only paths, and secrets are read at fetch time and never put into
//! messages. ssh goes through OpenSSH ([`crate::git::ssh`]), https through
//! provision's own client; libgit2 is left the plain `http://` and `git://`
//! servers that answer in protocol v0, which get no credentials at all.

use std::cell::Cell;
use std::fs;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use git2::RemoteCallbacks;

use crate::config::Credentials;

/// User name for https when a token file is given but no user.
const DEFAULT_HTTPS_USER: &str = "git";

/// Callbacks for one libgit2 fetch: no credentials (a token is sent over
/// https alone), and an overall `deadline` after which the transfer is
/// aborted, so that a stalled or trickling server cannot hold up the
/// reconcile pass forever.
pub fn remote_callbacks(deadline: Instant) -> RemoteCallbacks<'static> {
    watched_callbacks(deadline, None).0
}

/// Why a transfer was stopped by provision rather than by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The deadline passed while data was still arriving.
    Deadline,
    /// More bytes arrived than the limit allows.
    TooLarge(u64),
}

/// Tells, after a failed transfer, whether the callbacks stopped it.
#[derive(Debug, Clone)]
pub struct Watch(Rc<FetchState>);

impl Watch {
    /// What stopped the transfer, if the callbacks did.
    pub fn stopped(&self) -> Option<Stopped> {
        self.0.stopped.get()
    }
}

/// [`remote_callbacks`] that also stop the transfer once more than
/// `max_bytes` arrived, and say afterwards why they stopped it: libgit2
/// reports a callback's refusal only as a cancelled transfer.
pub fn watched_callbacks(
    deadline: Instant,
    max_bytes: Option<u64>,
) -> (RemoteCallbacks<'static>, Watch) {
    let state = Rc::new(FetchState::default());
    let watch = Watch(Rc::clone(&state));
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(|url, _, _| {
        Err(git2::Error::new(
            git2::ErrorCode::Auth,
            git2::ErrorClass::Callback,
            format!("{url} asks for credentials, which provision sends over https only"),
        ))
    });
    let s = Rc::clone(&state);
    callbacks.transfer_progress(move |p| {
        let received = p.received_bytes() as u64;
        if let Some(max) = max_bytes.filter(|max| received > *max) {
            s.stopped.set(Some(Stopped::TooLarge(max)));
            return false;
        }
        s.may_continue(deadline)
    });
    callbacks.sideband_progress(move |_| state.may_continue(deadline));
    (callbacks, watch)
}

/// Set libgit2's process-wide connect and I/O timeouts, so that a server that
/// accepts a connection and then says nothing cannot block a fetch (the
/// deadline in [`remote_callbacks`] only runs while data moves).
///
/// Call it once at start-up, before any fetch runs (the settings are global
/// and unsynchronised in libgit2). A zero duration means the system default.
/// Both apply to https and to ssh, whose socket libgit2 opens itself.
#[allow(unsafe_code)] // libgit2 exposes its global timeouts only as unsafe setters
pub fn set_network_timeouts(connect: Duration, io: Duration) -> Result<()> {
    let connect_ms = millis(connect, "connect")?;
    let io_ms = millis(io, "i/o")?;
    // SAFETY: these only store an integer in libgit2's global settings; the
    // caller sets them before fetches start, so no transport reads them
    // concurrently.
    unsafe { git2::opts::set_server_connect_timeout_in_milliseconds(connect_ms) }
        .context("setting libgit2 connect timeout")?;
    // SAFETY: as above.
    unsafe { git2::opts::set_server_timeout_in_milliseconds(io_ms) }
        .context("setting libgit2 i/o timeout")?;
    Ok(())
}

/// `d` in whole milliseconds as libgit2 wants them.
fn millis(d: Duration, what: &str) -> Result<i32> {
    i32::try_from(d.as_millis())
        .with_context(|| format!("converting {what} timeout {d:?} to milliseconds"))
}

/// What one fetch's callbacks share.
#[derive(Debug, Default)]
struct FetchState {
    stopped: Cell<Option<Stopped>>,
}

impl FetchState {
    /// Progress callbacks: go on only before the deadline.
    fn may_continue(&self, deadline: Instant) -> bool {
        let late = Instant::now() > deadline;
        if late {
            self.stopped.set(Some(Stopped::Deadline));
        }
        !late
    }
}

/// The user (`https_user`, else the URL's, else `git`) and token sent to
/// an https server with every request when a token file is configured.
pub fn https_basic(
    creds: &Credentials,
    url_user: Option<&str>,
) -> Result<Option<(String, String)>> {
    let Some(file) = creds.https_token_file.as_deref() else {
        return Ok(None);
    };
    let user = creds
        .https_user
        .as_deref()
        .or(url_user)
        .unwrap_or(DEFAULT_HTTPS_USER);
    Ok(Some((user.to_string(), read_token(file)?)))
}

fn read_token(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading https token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    ensure!(
        !token.is_empty(),
        "https token file {} is empty",
        path.display()
    );
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_token_file_is_read_and_an_unreadable_one_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        fs::write(&token, "  s3cret  \nignored\n").expect("writing token");
        let creds = |file: PathBuf, user: Option<&str>| Credentials {
            https_token_file: Some(file),
            https_user: user.map(str::to_string),
            ..Credentials::default()
        };
        let got = https_basic(&creds(token.clone(), None), Some("deploy")).expect("read");
        assert_eq!(got, Some(("deploy".into(), "s3cret".into())));
        let got = https_basic(&creds(token, Some("ops")), Some("deploy")).expect("read");
        assert_eq!(got, Some(("ops".into(), "s3cret".into())));
        assert_eq!(https_basic(&Credentials::default(), None).ok(), Some(None));
        let err = https_basic(&creds(PathBuf::from("/nonexistent/token"), None), None)
            .expect_err("unreadable");
        assert!(format!("{err:#}").contains("/nonexistent/token"), "{err:#}");
    }

    #[test]
    fn the_deadline_stops_progress_and_says_so() {
        let state = FetchState::default();
        let later = Instant::now() + Duration::from_secs(60);
        assert!(state.may_continue(later));
        assert_eq!(state.stopped.get(), None);
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .expect("clock");
        assert!(!state.may_continue(past));
        // Said afterwards, so the fetch reports a timeout and keeps the
        // mirror instead of taking the abort for a damaged one.
        assert_eq!(state.stopped.get(), Some(Stopped::Deadline));
    }
}
