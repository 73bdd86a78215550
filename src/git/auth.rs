//! Credentials and ssh host-key checking for network fetches.
//!
//! provision runs unattended as root, so a fetch must never prompt, never
//! fall back to an ssh-agent that happens to be around, never retry a
//! rejected credential forever, and never talk to an ssh server whose host
//! key the operator did not pin in a known_hosts file. Secrets stay in files:
//! the config holds only paths, and secrets are read at fetch time and never
//! put into messages.
//!
//! libgit2 hands the certificate callback only the host name, not the port,
//! and replaces that callback's error message with a generic one. So the
//! certificate callback only records the key the ssh server presented; the
//! decision (with the port taken from the URL, and a message that says what is
//! wrong) is made in the credentials callback, which libgit2 calls before any
//! credential is sent. The progress callbacks refuse to go on while a
//! presented key is still unchecked, as a backstop.

use std::cell::{Cell, RefCell};
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use git2::cert::{Cert, SshHostKeyType};
use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};

use crate::config::Credentials;
use crate::git::known_hosts::{
    blob_key_type, check_host_key, host_names, known_hosts_files, load_known_hosts, Verdict,
};

/// User name for ssh when the URL names none (the convention of Git hosts).
const DEFAULT_SSH_USER: &str = "git";
/// User name for https when a token file is given but no user.
const DEFAULT_HTTPS_USER: &str = "git";

/// Callbacks for one fetch: credentials from the configured files (never an
/// ssh-agent), ssh host-key verification against known_hosts, and an overall
/// `deadline` after which the transfer is aborted, so that a stalled or
/// trickling server cannot hold up the reconcile pass forever.
///
/// Build a fresh set for every fetch: it counts credential attempts so that a
/// rejected credential ends the fetch instead of being retried forever.
pub fn remote_callbacks<'a>(creds: &'a Credentials, deadline: Instant) -> RemoteCallbacks<'a> {
    watched_callbacks(creds, deadline, None).0
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
pub fn watched_callbacks<'a>(
    creds: &'a Credentials,
    deadline: Instant,
    max_bytes: Option<u64>,
) -> (RemoteCallbacks<'a>, Watch) {
    let state = Rc::new(FetchState::default());
    let watch = Watch(Rc::clone(&state));
    let mut callbacks = RemoteCallbacks::new();
    let s = Rc::clone(&state);
    callbacks.certificate_check(move |cert, host| Ok(s.record_host_key(cert, host)));
    let s = Rc::clone(&state);
    callbacks.credentials(move |url, user, allowed| {
        s.credential(creds, url, user, allowed)
            .map_err(|e| callback_error(&e))
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

/// Turn an error of ours into one libgit2 passes on with its message intact.
fn callback_error(e: &anyhow::Error) -> git2::Error {
    git2::Error::new(
        git2::ErrorCode::GenericError,
        git2::ErrorClass::Callback,
        format!("{e:#}"),
    )
}

/// Whether a private key file needs a passphrase: a PEM key with
/// `Proc-Type: 4,ENCRYPTED`, a PKCS#8 `ENCRYPTED PRIVATE KEY`, or an
/// OpenSSH key whose cipher is not `none`. libgit2 only says "Unsupported
/// private key format" for these.
fn key_is_encrypted(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return true;
    }
    let Some(body) = text
        .split("-----BEGIN OPENSSH PRIVATE KEY-----")
        .nth(1)
        .and_then(|b| b.split("-----END").next())
    else {
        return false;
    };
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let Ok(raw) = STANDARD.decode(b64) else {
        return false;
    };
    // "openssh-key-v1\0", then the cipher name as a length-prefixed string.
    let Some(rest) = raw.strip_prefix(b"openssh-key-v1\0") else {
        return false;
    };
    let Some(len) = rest
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    else {
        return false;
    };
    rest.get(4..4 + len).is_some_and(|cipher| cipher != b"none")
}

/// The host key an ssh server presented, kept until the URL says the port.
#[derive(Debug, Clone)]
struct PresentedKey {
    host: String,
    key_type: String,
    blob: Vec<u8>,
    sha256: Option<[u8; 32]>,
}

impl PresentedKey {
    /// `TYPE SHA256:...`, the form `ssh-keygen -l` prints, for messages.
    fn describe(&self) -> String {
        match self.sha256 {
            Some(h) => format!("{} SHA256:{}", self.key_type, STANDARD_NO_PAD.encode(h)),
            None => self.key_type.clone(),
        }
    }
}

/// What one fetch's callbacks share.
#[derive(Debug, Default)]
struct FetchState {
    presented: RefCell<Option<PresentedKey>>,
    host_verified: Cell<bool>,
    ssh_attempts: Cell<u32>,
    stopped: Cell<Option<Stopped>>,
}

impl FetchState {
    /// Certificate callback: remember an ssh host key for checking in the
    /// credentials callback (libgit2 speaks ssh only; https is ours).
    fn record_host_key(&self, cert: &Cert<'_>, host: &str) -> CertificateCheckStatus {
        let Some(hostkey) = cert.as_hostkey() else {
            return CertificateCheckStatus::CertificatePassthrough;
        };
        let blob = hostkey.hostkey().map(<[u8]>::to_vec).unwrap_or_default();
        let key_type = match hostkey.hostkey_type() {
            Some(t) if !matches!(t, SshHostKeyType::Unknown) => t.name().to_owned(),
            _ => blob_key_type(&blob).unwrap_or("unknown").to_owned(),
        };
        let sha256 = hostkey.hash_sha256().copied();
        *self.presented.borrow_mut() = Some(PresentedKey {
            host: host.to_owned(),
            key_type,
            blob,
            sha256,
        });
        // A new ssh connection: its key is unchecked and it may ask anew.
        self.host_verified.set(false);
        self.ssh_attempts.set(0);
        CertificateCheckStatus::CertificateOk
    }

    /// Progress callbacks: go on only before the deadline, and never with an
    /// ssh host key that was presented but not checked.
    fn may_continue(&self, deadline: Instant) -> bool {
        let unchecked = self.presented.borrow().is_some() && !self.host_verified.get();
        let late = Instant::now() > deadline;
        if late {
            self.stopped.set(Some(Stopped::Deadline));
        }
        !late && !unchecked
    }

    /// Credentials callback: check the host key (ssh), then hand out the one
    /// configured credential once.
    fn credential(
        &self,
        creds: &Credentials,
        url: &str,
        user: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred> {
        self.verify_host_key(creds, url)?;
        if allowed.contains(CredentialType::USERNAME) {
            return Ok(Cred::username(user.unwrap_or(DEFAULT_SSH_USER))?);
        }
        self.ssh_credential(creds, url, user, allowed)
    }

    /// The private key from `ssh_key`, once per connection.
    fn ssh_credential(
        &self,
        creds: &Credentials,
        url: &str,
        user: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred> {
        let Some(key) = creds.ssh_key.as_deref() else {
            bail!(
                "{url} needs an ssh key: set ssh_key (or PROVISION_SSH_KEY) to a private key file"
            );
        };
        ensure!(
            allowed.contains(CredentialType::SSH_KEY),
            "ssh server for {url} does not offer public-key authentication"
        );
        if bump(&self.ssh_attempts) > 1 {
            bail!(
                "ssh authentication was rejected for {url} with key {}",
                key.display()
            );
        }
        let text = fs::read(key).with_context(|| format!("reading ssh key {}", key.display()))?;
        if key_is_encrypted(&text) {
            bail!(
                "ssh key {k} is encrypted with a passphrase, which provision, running \
                 unattended, cannot type; give it a key without one, readable by root only \
                 (`ssh-keygen -p -N '' -f {k}` removes the passphrase of a copy)",
                k = key.display()
            );
        }
        Ok(Cred::ssh_key(
            user.unwrap_or(DEFAULT_SSH_USER),
            None,
            key,
            None,
        )?)
    }

    /// Check the presented ssh host key against known_hosts for the URL's port.
    fn verify_host_key(&self, creds: &Credentials, url: &str) -> Result<()> {
        if self.host_verified.get() {
            return Ok(());
        }
        let presented = self.presented.borrow();
        let Some(key) = presented.as_ref() else {
            bail!("no ssh host key was presented for {url}; refusing to authenticate");
        };
        ensure!(
            !key.blob.is_empty(),
            "ssh server for {url} sent no host key"
        );
        let files = known_hosts_files(creds);
        let entries = load_known_hosts(&files, creds.ssh_known_hosts.is_some())?;
        let port = ssh_port(url);
        let names = host_names(&key.host, port);
        match check_host_key(&entries, &names, &key.key_type, &key.blob) {
            Verdict::Match => {
                self.host_verified.set(true);
                Ok(())
            }
            Verdict::Unknown => bail!(unknown_host_message(key, port, &names, &files)),
            Verdict::Changed(known) => bail!(
                "ssh host key for {} CHANGED: the server presented {}, but known_hosts has {}; \
                 refusing to connect (this may be a man-in-the-middle attack; if the key was \
                 replaced on purpose, update the known_hosts entry)",
                names[0],
                key.describe(),
                known.join(", ")
            ),
            Verdict::Revoked(origin) => bail!(
                "ssh host key {} of {} is marked @revoked at {origin}; refusing to connect",
                key.describe(),
                names[0]
            ),
        }
    }
}

/// The message for a host that has no known_hosts entry at all.
fn unknown_host_message(
    key: &PresentedKey,
    port: u16,
    names: &[String],
    files: &[PathBuf],
) -> String {
    let searched: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let target = files
        .first()
        .map_or("known_hosts".into(), |f| f.display().to_string());
    format!(
        "ssh host {} is not in known_hosts (searched: {}); the server presented {}. \
         Check that fingerprint, then add the key, e.g. `ssh-keyscan -p {port} {} >> {target}`",
        names[0],
        searched.join(", "),
        key.describe(),
        key.host
    )
}

/// Add one to an attempt counter and return the new count.
fn bump(counter: &Cell<u32>) -> u32 {
    counter.set(counter.get().saturating_add(1));
    counter.get()
}

/// The first line of `path`, trimmed: the https password or token.
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

/// The ssh port of `url`: the one in an ssh:// URL, else 22 (scp-like form).
fn ssh_port(url: &str) -> u16 {
    let Some((_, rest)) = url.split_once("://") else {
        return 22;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => hostport.split_once(':').map(|(_, p)| p),
    };
    port.and_then(|p| p.parse().ok()).unwrap_or(22)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIL6d8SK2JNX61zEeSCnYBmxTUh89b19PHkpNpb9YnQEx";

    fn blob(key: &str) -> Vec<u8> {
        STANDARD.decode(key).expect("test key is base64")
    }

    #[test]
    fn port_comes_from_the_url() {
        assert_eq!(ssh_port("ssh://git@example.org:2222/r.git"), 2222);
        assert_eq!(ssh_port("ssh://example.org/r.git"), 22);
        assert_eq!(ssh_port("ssh://git@[::1]:2200/r.git"), 2200);
        assert_eq!(ssh_port("git@example.org:r.git"), 22);
        assert_eq!(ssh_port("ssh://u@example.org:bad/r"), 22);
    }

    #[test]
    fn missing_configuration_names_the_key_to_set() {
        let state = FetchState::default();
        let none = Credentials::default();
        state.host_verified.set(true);
        let err = state
            .credential(
                &none,
                "ssh://example.org/r",
                Some("git"),
                CredentialType::SSH_KEY,
            )
            .err()
            .expect("no key configured");
        assert!(err.to_string().contains("ssh_key"), "{err}");
    }

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
    fn ssh_credential_waits_for_a_checked_host_key() {
        let creds = Credentials {
            ssh_key: Some(PathBuf::from("/k")),
            ..Credentials::default()
        };
        let err = FetchState::default()
            .credential(&creds, "ssh://h/r", Some("git"), CredentialType::SSH_KEY)
            .err()
            .expect("no host key presented");
        assert!(err.to_string().contains("host key"), "{err}");
    }

    #[test]
    fn deadline_and_unchecked_key_stop_progress() {
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
        *state.presented.borrow_mut() = Some(PresentedKey {
            host: "h".into(),
            key_type: "ssh-ed25519".into(),
            blob: blob(KEY_A),
            sha256: None,
        });
        assert!(!state.may_continue(later));
        state.host_verified.set(true);
        assert!(state.may_continue(later));
    }
}
