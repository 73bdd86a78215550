//! Fetches over ssh from a real `sshd` on 127.0.0.1 through the callbacks of
//! `provision::git::auth`, to prove that host keys are checked against
//! known_hosts (plain and hashed), and that unknown hosts, changed keys and
//! rejected client keys fail with messages that say what to fix.
//!
//! Needs `/usr/sbin/sshd` (Debian `openssh-server`), `ssh-keygen` and `git`.
//! Without them a test prints why and passes, except under CI=true, where a
//! test that cannot run fails.

use testkit as common;

use std::fs::{self, File};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::{Duration, Instant};

use provision::config::Credentials;
use provision::git::auth::{remote_callbacks, set_network_timeouts};
use tempfile::TempDir;

/// Where Debian's openssh-server puts the daemon.
const SSHD: &str = "/usr/sbin/sshd";
/// How long one fetch may take before the test calls it hung.
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// A running sshd with its own host key, a client key it accepts, and a bare
/// repository with one commit on `main`. Dropping it kills the daemon.
struct Server {
    child: Child,
    port: u16,
    dir: TempDir,
    /// `ssh-ed25519 AAAA...` of the server's host key.
    host_key: String,
    commit: git2::Oid,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self) -> String {
        let repo = self.path("repo.git");
        format!("ssh://{}@127.0.0.1:{}{}", user(), self.port, repo.display())
    }

    /// The sshd log so far, for failure messages.
    fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// Write a known_hosts file named `name` with `lines` and return its path.
    fn known_hosts(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, lines.join("\n") + "\n").expect("writing known_hosts");
        path
    }

    fn credentials(&self, key: &str, known_hosts: PathBuf) -> Credentials {
        Credentials {
            ssh_key: Some(self.path(key)),
            ssh_known_hosts: Some(known_hosts),
            ..Credentials::default()
        }
    }
}

/// Start a server, or None (after saying why) when the tools are missing
/// outside CI.
fn server() -> Option<Server> {
    for tool in [SSHD, "ssh-keygen", "git"] {
        if !tool_exists(tool) {
            let why = format!("{tool} not found (install openssh-server and git)");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("cannot run the ssh tests under CI: {why}");
            }
            eprintln!("skipping ssh test: {why}");
            return None;
        }
    }
    // Process-wide and unsynchronised in libgit2: set once, before any fetch.
    static TIMEOUTS: Once = Once::new();
    TIMEOUTS.call_once(|| {
        set_network_timeouts(Duration::from_secs(10), Duration::from_secs(30))
            .expect("setting timeouts");
    });
    Some(start_server())
}

fn tool_exists(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    for key in ["host_key", "client_key", "wrong_key", "other_key"] {
        common::ssh_keygen(&dir.path().join(key));
    }
    fs::copy(
        dir.path().join("client_key.pub"),
        dir.path().join("authorized_keys"),
    )
    .expect("writing authorized_keys");
    let commit = make_repo(dir.path());
    let host_key = common::public_key(&dir.path().join("host_key.pub"));
    // sshd insists on its privilege separation directory.
    fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
    for _ in 0..5 {
        let port = common::free_port();
        write_sshd_config(dir.path(), port);
        let mut child = spawn_sshd(dir.path());
        if wait_listening(&mut child, port) {
            return Server {
                child,
                port,
                dir,
                host_key,
                commit,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default();
    panic!("sshd did not start; its log:\n{log}");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a helper command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn user() -> String {
    run(Command::new("id").arg("-un"))
}

/// A bare `repo.git` with one commit on main; returns that commit.
fn make_repo(dir: &Path) -> git2::Oid {
    let work = dir.join("work");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1"))
    };
    let work_s = work.to_str().expect("utf-8 tempdir");
    git(&["init", "-q", "-b", "main", work_s]);
    fs::write(work.join("README"), "hello\n").expect("writing README");
    git(&["-C", work_s, "add", "README"]);
    git(&["-C", work_s, "commit", "-q", "-m", "first"]);
    let repo = dir.join("repo.git");
    git(&[
        "clone",
        "-q",
        "--bare",
        work_s,
        repo.to_str().expect("utf-8"),
    ]);
    git2::Oid::from_str(&git(&["-C", work_s, "rev-parse", "HEAD"])).expect("commit id")
}

fn write_sshd_config(dir: &Path, port: u16) {
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
         StrictModes no\nUsePAM no\nPermitRootLogin yes\nPidFile none\n\
         PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         LogLevel VERBOSE\n",
        host = dir.join("host_key").display(),
        auth = dir.join("authorized_keys").display(),
    );
    fs::write(dir.join("sshd_config"), config).expect("writing sshd_config");
}

fn spawn_sshd(dir: &Path) -> Child {
    let log = File::create(dir.join("sshd.log")).expect("creating sshd log");
    Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting sshd")
}

/// Wait until sshd accepts connections; false if it exited or never did.
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Fetch main from `url` into a fresh bare repository with provision's
/// callbacks; in a thread, so that a hang fails the test instead of blocking it.
fn fetch(url: String, creds: Credentials) -> Result<git2::Oid, String> {
    fetch_until(url, creds, Instant::now() + FETCH_LIMIT)
}

/// [`fetch`] with the given deadline for the callbacks.
fn fetch_until(url: String, creds: Credentials, deadline: Instant) -> Result<git2::Oid, String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = fetch_inner(&url, &creds, deadline);
        let _ = tx.send(result.map_err(|e| e.message().to_owned()));
    });
    rx.recv_timeout(FETCH_LIMIT)
        .expect("fetch did not finish in time (credential retry loop?)")
}

fn fetch_inner(
    url: &str,
    creds: &Credentials,
    deadline: Instant,
) -> Result<git2::Oid, git2::Error> {
    let dir = tempfile::tempdir().map_err(|e| git2::Error::from_str(&e.to_string()))?;
    let repo = git2::Repository::init_bare(dir.path())?;
    let mut remote = repo.remote_anonymous(url)?;
    let mut options = git2::FetchOptions::new();
    options.remote_callbacks(remote_callbacks(creds, deadline));
    remote.fetch(
        &["+refs/heads/main:refs/heads/main"],
        Some(&mut options),
        None,
    )?;
    repo.refname_to_id("refs/heads/main")
}

#[test]
fn fetch_succeeds_with_right_key_and_known_host() {
    let Some(server) = server() else { return };
    let line = format!("[127.0.0.1]:{} {}", server.port, server.host_key);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    let creds = server.credentials("client_key", known_hosts);
    let got = fetch(server.url(), creds);
    assert_eq!(got, Ok(server.commit), "sshd log:\n{}", server.log());
}

#[test]
fn fetch_succeeds_with_hashed_known_hosts_entry() {
    let Some(server) = server() else { return };
    let line = format!("[127.0.0.1]:{} {}", server.port, server.host_key);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    run(Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&known_hosts));
    let hashed = fs::read_to_string(&known_hosts).expect("reading hashed known_hosts");
    assert!(hashed.starts_with("|1|"), "ssh-keygen -H wrote {hashed}");
    let creds = server.credentials("client_key", known_hosts);
    let got = fetch(server.url(), creds);
    assert_eq!(got, Ok(server.commit), "sshd log:\n{}", server.log());
}

#[test]
fn unknown_host_is_rejected() {
    let Some(server) = server() else { return };
    let lines = [
        // Same key, but for port 22 and for another host: neither is this server.
        format!("127.0.0.1 {}", server.host_key),
        format!("[other.example]:{} {}", server.port, server.host_key),
    ];
    let known_hosts = server.known_hosts("known_hosts", &lines);
    let creds = server.credentials("client_key", known_hosts.clone());
    let err = fetch(server.url(), creds).expect_err("unknown host must be rejected");
    assert!(
        err.contains(&format!("[127.0.0.1]:{}", server.port)),
        "{err}"
    );
    assert!(err.contains("known_hosts"), "{err}");
    assert!(err.contains(&known_hosts.display().to_string()), "{err}");
    assert!(err.contains("ssh-keyscan"), "{err}");
}

#[test]
fn changed_host_key_is_rejected() {
    let Some(server) = server() else { return };
    let other = common::public_key(&server.path("other_key.pub"));
    let line = format!("[127.0.0.1]:{} {other}", server.port);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    let creds = server.credentials("client_key", known_hosts);
    let err = fetch(server.url(), creds).expect_err("changed key must be rejected");
    assert!(err.contains("CHANGED"), "{err}");
}

#[test]
fn rejected_client_key_fails_without_looping() {
    let Some(server) = server() else { return };
    let line = format!("[127.0.0.1]:{} {}", server.port, server.host_key);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    let creds = server.credentials("wrong_key", known_hosts);
    let err = fetch(server.url(), creds).expect_err("wrong key must be rejected");
    assert!(err.contains("rejected"), "{err}");
    assert!(
        err.contains(&server.path("wrong_key").display().to_string()),
        "{err}"
    );
}

#[test]
fn unreadable_client_key_is_named() {
    let Some(server) = server() else { return };
    let line = format!("[127.0.0.1]:{} {}", server.port, server.host_key);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    let creds = server.credentials("missing_key", known_hosts);
    let err = fetch(server.url(), creds).expect_err("missing key must fail");
    assert!(
        err.contains(&server.path("missing_key").display().to_string()),
        "{err}"
    );
}

#[test]
fn an_encrypted_key_is_named_as_such() {
    let Some(server) = server() else { return };
    let line = format!("[127.0.0.1]:{} {}", server.port, server.host_key);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    let key = server.path("locked_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&key)
        .status()
        .expect("running ssh-keygen");
    assert!(made.success());
    let creds = server.credentials("locked_key", known_hosts);
    let err = fetch(server.url(), creds).expect_err("an encrypted key must fail");
    assert!(
        err.contains("is encrypted with a passphrase") && err.contains(&key.display().to_string()),
        "{err}"
    );
}

#[test]
fn passed_deadline_aborts_the_transfer() {
    let Some(server) = server() else { return };
    let line = format!("[127.0.0.1]:{} {}", server.port, server.host_key);
    let known_hosts = server.known_hosts("known_hosts", &[line]);
    let creds = server.credentials("client_key", known_hosts);
    let result = fetch_until(server.url(), creds, Instant::now());
    assert!(
        result.is_err(),
        "fetch past its deadline must fail: {result:?}"
    );
}
