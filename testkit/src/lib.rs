//! Shared fixture for integration tests: a real `git daemon` on 127.0.0.1
//! serving bare repositories, plus helpers to author commits in them with the
//! `git` CLI.
//!
//! Every git command run by this module goes through [`git_cmd`], which pins
//! identity, dates, default branch and signing, and hides the user's global
//! and system git configuration, so results do not depend on the machine.
//!
//! A dev-only crate shared by the integration tests (`use testkit as
//! common;`), the bench and the demo.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The provision checkout this harness belongs to.
pub fn project_root() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent().unwrap_or(kit).to_path_buf()
}

/// The `provision` binary cargo built beside the running test, bench or
/// example: `target/<profile>/{deps,examples}/<name>` →
/// `target/<profile>/provision`.
pub fn provision_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test");
    let dir = exe.parent().expect("a target directory");
    let profile = if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let bin = profile.join("provision");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo test and cargo bench do)",
        bin.display()
    );
    bin
}

/// A command's standard output and error, one after the other, for
/// assertions and their messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command's exit code, standard output and standard error, labelled:
/// the message of an assertion about a whole run.
pub fn output_report(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value of the sample written exactly as `series` (name and labels)
/// in a Prometheus text file.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// How long `GitDaemon::start`/`start_again` wait for the port to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many ports (or restarts on the same port) are tried before giving up.
const START_ATTEMPTS: usize = 5;
/// Logged by `git daemon --verbose` once its listening sockets are set up.
const READY_MARKER: &str = "Ready to rumble";

/// The author of every fixture commit (name).
pub const AUTHOR_NAME: &str = "Fixture Author";
/// The author of every fixture commit (email).
pub const AUTHOR_EMAIL: &str = "author@fixture.invalid";
/// The committer of every fixture commit (name).
pub const COMMITTER_NAME: &str = "Fixture Committer";
/// The committer of every fixture commit (email).
pub const COMMITTER_EMAIL: &str = "committer@fixture.invalid";

/// Extra directories searched by [`require_tool`] besides `PATH`.
const EXTRA_TOOL_DIRS: &[&str] = &[
    "/usr/lib/git-core",
    "/usr/libexec/git-core",
    "/usr/local/libexec/git-core",
    "/usr/sbin",
];

/// Environment variables that could redirect git to another repository or
/// alter its behaviour; removed from every git command we run.
const GIT_ENV_TO_CLEAR: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_TEMPLATE_DIR",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_DATE",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_PROXY_COMMAND",
    "GIT_ASKPASS",
    "GIT_TRACE",
    "GIT_PROTOCOL",
    "GIT_EXEC_PATH",
];

// ---------------------------------------------------------------------------
// Small generic helpers
// ---------------------------------------------------------------------------

/// Is the test running under CI (`CI=true`/`CI=1`)?
pub fn under_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// Locate an executable named `name` on `PATH`, in git's exec-path, or in a
/// few well-known system directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if name != "git" {
        if let Some(exec_path) = git_exec_path() {
            dirs.push(exec_path);
        }
    }
    dirs.extend(EXTRA_TOOL_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|candidate| is_executable(candidate))
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `git --exec-path` of the `git` found on PATH (where `git-daemon` lives).
fn git_exec_path() -> Option<PathBuf> {
    let out = Command::new("git").arg("--exec-path").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// The tools tests require and their Debian packages: the table `make deps`
/// installs from and `scripts/check-tools.sh` checks before any test runs.
const TOOLS_TABLE: &str = include_str!("../tools.txt");

/// The Debian package that provides `name`, as testkit/tools.txt lists it.
pub fn tool_package(name: &str) -> Option<&'static str> {
    // `python3-at-/usr/bin/python3` asks for python3 at a fixed path.
    let name = name.split("-at-").next().unwrap_or(name);
    TOOLS_TABLE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?, cols.next()?))
        })
        .find(|(tool, _)| *tool == name)
        .map(|(_, package)| package)
}

/// Returns from the test unless git and its daemon are here (under
/// `CI=true`, a missing one fails the test instead; see [`require_tool`]).
#[macro_export]
macro_rules! need_git {
    () => {
        if !$crate::require_tool("git") || !$crate::require_tool("git-daemon") {
            return;
        }
    };
}

/// Returns from the test unless a booted machine can run here (git's
/// daemon, containers) with each of the tools named (under `CI=true`, a
/// missing one fails the test instead).
#[macro_export]
macro_rules! need_machine {
    ($($tool:expr),* $(,)?) => {
        if !$crate::require_tool("git-daemon") || !$crate::container::require_containers() {
            return;
        }
        $( if !$crate::require_tool($tool) { return; } )*
    };
}

/// Fails the test under CI=true, otherwise returns false after printing why,
/// when a required external tool is missing.
///
/// Looks on `PATH`, in `git --exec-path`, `/usr/lib/git-core` and `/usr/sbin`
/// (so `require_tool("git-daemon")` works too).
pub fn require_tool(name: &str) -> bool {
    if find_tool(name).is_some() {
        return true;
    }
    let package = tool_package(name).unwrap_or("unlisted in testkit/tools.txt");
    let why = format!(
        "required tool `{name}` (Debian package {package}; `make deps` installs it) not found \
         on PATH, in git's exec-path or in {EXTRA_TOOL_DIRS:?}"
    );
    if under_ci() {
        panic!("{why} (CI=true, so this is a failure rather than a skip)");
    }
    eprintln!("SKIPPING test: {why}");
    false
}

/// Run a command, panic with its stderr if it fails, return stdout trimmed.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end(),
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Like [`run`] but returns `None` instead of panicking when the command
/// exits unsuccessfully (spawn failures still panic).
pub fn try_run(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `git` command running in `dir`, isolated from the user's and system's
/// git configuration, with fixed identity, `init.defaultBranch=main` and
/// signing disabled.
pub fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    hermetic_git_env(&mut cmd);
    cmd.current_dir(dir).args([
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "tag.gpgsign=false",
        "-c",
        "core.autocrlf=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "gc.auto=0",
        "-c",
        "maintenance.auto=false",
        "-c",
        "advice.detachedHead=false",
        "-c",
        "protocol.file.allow=always",
    ]);
    cmd
}

/// Environment shared by all git processes started here (including the daemon
/// and the upload-pack processes it spawns).
fn hermetic_git_env(cmd: &mut Command) {
    for var in GIT_ENV_TO_CLEAR {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", COMMITTER_NAME)
        .env("GIT_COMMITTER_EMAIL", COMMITTER_EMAIL)
        .env("LC_ALL", "C");
}

/// Strictly increasing commit timestamps (seconds since the epoch, at least
/// "now"), so that two commits authored by the fixture never collide even when
/// tree, parent and message are identical (e.g. an amend without changes).
fn next_timestamp() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or_else(|last| last);
    now.max(prev + 1)
}

/// Total bytes of regular files under `dir` (recursive, no symlink following).
/// Entries that vanish while walking are ignored; a missing `dir` counts as 0.
pub fn dir_size(dir: &Path) -> u64 {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return 0,
        Err(e) => panic!("dir_size: cannot stat {}: {e}", dir.display()),
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0; // symlink, socket, fifo, device
    }
    let entries = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == ErrorKind::NotFound => return 0,
        Err(e) => panic!("dir_size: cannot read directory {}: {e}", dir.display()),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("dir_size: reading {}: {e}", dir.display()));
        total += dir_size(&entry.path());
    }
    total
}

// ---------------------------------------------------------------------------
// GitDaemon
// ---------------------------------------------------------------------------

/// Ports owned by live `GitDaemon`s in this process (running or stopped), so a
/// new daemon never grabs the port of a stopped one that will `start_again`.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved_ports() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    RESERVED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bind 127.0.0.1:0, note the port, drop the listener. Skips ports reserved by
/// other daemons of this process and reserves the returned one.
fn pick_free_port() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("reading the local address of the port-probe listener")
            .port();
        drop(listener);
        if reserved_ports().insert(port) {
            return port;
        }
    }
    panic!("could not find a free, unreserved port on 127.0.0.1 after 100 tries");
}

fn release_port(port: u16) {
    reserved_ports().remove(&port);
}

/// A real `git daemon` on 127.0.0.1 and a free port, serving every bare repo
/// under its base dir. Killed (and waited for) on drop.
pub struct GitDaemon {
    /// Keeps the base dir and the log alive.
    _dir: TempDir,
    base: PathBuf,
    log: PathBuf,
    daemon_bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl GitDaemon {
    /// Start a daemon on a free port and wait (max ~5 s) until it accepts TCP
    /// connections. Panics with the daemon log tail if it never comes up.
    pub fn start() -> GitDaemon {
        let daemon_bin = find_tool("git-daemon").unwrap_or_else(|| {
            panic!(
                "git-daemon not found (looked in `git --exec-path`, PATH and {EXTRA_TOOL_DIRS:?}); \
                 guard the test with common::require_tool(\"git-daemon\")"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("provision-gitd-")
            .tempdir()
            .expect("creating temp dir for git daemon");
        let base = dir.path().join("repos");
        fs::create_dir_all(&base).expect("creating git daemon base dir");
        let log = dir.path().join("daemon.log");

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = pick_free_port();
            match launch(&daemon_bin, &base, &log, port) {
                Ok(child) => {
                    return GitDaemon {
                        _dir: dir,
                        base,
                        log,
                        daemon_bin,
                        port,
                        child: Some(child),
                    };
                }
                Err(why) => {
                    release_port(port);
                    failures.push(format!("port {port}: {why}"));
                }
            }
        }
        panic!(
            "git daemon ({}) failed to start after {START_ATTEMPTS} attempts:\n  {}\n--- daemon log tail ({}) ---\n{}",
            daemon_bin.display(),
            failures.join("\n  "),
            log.display(),
            log_tail_of(&log)
        );
    }

    /// `git://127.0.0.1:PORT/REPO.git`
    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}.git", self.port)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the bare repositories (`NAME.git`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Path of the daemon's log file (stderr of all its runs, `--verbose`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Last lines of the daemon log, for assertion messages.
    pub fn log_tail(&self) -> String {
        log_tail_of(&self.log)
    }

    /// Is the daemon process currently running (not stopped)?
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Create bare repo `base/NAME.git` (HEAD -> `main`, no commits yet) and a
    /// private work clone in a tempdir. Calling it again for an existing name
    /// returns a new handle to the same bare repo.
    pub fn repo(&self, name: &str) -> Upstream {
        assert!(
            !name.is_empty()
                && Path::new(name)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
            "repo name must be a non-empty relative path without `..`: {name:?}"
        );
        let bare = self.base.join(format!("{name}.git"));
        fs::create_dir_all(&bare)
            .unwrap_or_else(|e| panic!("creating bare repo dir {}: {e}", bare.display()));
        run(git_cmd(&bare).args(["init", "-q", "--bare", "."]));
        if try_run(git_cmd(&bare).args(["rev-parse", "--verify", "-q", "HEAD"])).is_none() {
            run(git_cmd(&bare).args(["symbolic-ref", "HEAD", "refs/heads/main"]));
        }
        for (key, value) in [
            ("gc.auto", "0"),
            ("receive.autogc", "false"),
            ("core.logAllRefUpdates", "false"),
        ] {
            run(git_cmd(&bare).args(["config", key, value]));
        }

        let work_dir = tempfile::Builder::new()
            .prefix("provision-upstream-work-")
            .tempdir()
            .expect("creating temp dir for upstream work clone");
        let work = work_dir.path().join("work");
        fs::create_dir_all(&work).expect("creating upstream work clone dir");
        run(git_cmd(&work).args(["init", "-q", "."]));
        run(git_cmd(&work).args(["remote", "add", "origin"]).arg(&bare));

        Upstream {
            bare,
            url: self.url(name),
            _work_dir: work_dir,
            work,
        }
    }

    /// Kill the daemon now (for "server down" tests). Returns once the port
    /// refuses connections. No-op if already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if Instant::now() >= deadline {
                panic!(
                    "port {} still accepts connections {READY_TIMEOUT:?} after killing git daemon\n--- daemon log tail ---\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restart a stopped daemon on the SAME port (retrying a few times).
    /// No-op if it is running.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            match launch(&self.daemon_bin, &self.base, &self.log, self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "git daemon failed to restart on port {} after {START_ATTEMPTS} attempts:\n  {}\n--- daemon log tail ({}) ---\n{}",
            self.port,
            failures.join("\n  "),
            self.log.display(),
            self.log_tail()
        );
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        release_port(self.port);
    }
}

/// Spawn git-daemon on `port` and wait until it is ready; on failure the child
/// is killed and reaped and the reason returned.
fn launch(daemon_bin: &Path, base: &Path, log: &Path, port: u16) -> Result<Child, String> {
    let log_offset = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening git daemon log {}: {e}", log.display()));
    let log_file_for_stdout = log_file
        .try_clone()
        .expect("duplicating git daemon log file handle");
    let mut cmd = Command::new(daemon_bin);
    hermetic_git_env(&mut cmd);
    cmd.current_dir(base)
        .arg("--verbose")
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg("--informative-errors")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .stdin(Stdio::null())
        .stdout(log_file_for_stdout)
        .stderr(log_file);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", daemon_bin.display()));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("git daemon exited early ({status})")),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for git daemon: {e}"));
            }
        }
        // The marker proves that *our* daemon bound the port (not some other
        // process that grabbed it after we dropped the probe listener).
        if log_since(log, log_offset).contains(READY_MARKER)
            && TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "did not accept connections on {addr} within {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn log_since(log: &Path, offset: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn log_tail_of(log: &Path) -> String {
    let text = log_since(log, 0);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    if lines.is_empty() {
        "(empty)".to_string()
    } else {
        lines[from..].join("\n")
    }
}

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

/// One upstream repository: a bare repo served by the daemon plus a private
/// working clone used to author commits with the git CLI.
///
/// All methods look at the bare repo as the source of truth (the work clone is
/// re-synced before each authoring operation), so they can be freely mixed.
pub struct Upstream {
    bare: PathBuf,
    url: String,
    _work_dir: TempDir,
    work: PathBuf,
}

/// Placeholder branch used in the work clone while authoring a root commit.
const ORPHAN_BRANCH: &str = "refs/heads/__fixture_orphan__";

enum Authoring {
    /// Continue `branch` (or start it from the bare repo's HEAD).
    Normal,
    /// Brand-new root commit, force-pushed.
    Unrelated,
    /// Rewrite the tip of `branch`, force-pushed.
    Amend,
}

impl Upstream {
    /// Path of the bare repository (`<daemon base>/NAME.git`).
    pub fn bare(&self) -> &Path {
        &self.bare
    }

    /// `git://127.0.0.1:PORT/NAME.git` through the daemon.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `file:///abs/path/NAME.git`
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Write files (path relative to repo root -> `Some(content)`) or delete
    /// them (`None`; the path must exist), commit with `message` on `branch`
    /// and push to the bare repo; returns the full commit hash.
    ///
    /// A missing `branch` is created from the bare repo's HEAD (normally
    /// `main`) if that resolves, else as a root commit. An empty `files`
    /// slice makes an empty commit.
    pub fn commit(&self, branch: &str, files: &[(&str, Option<&str>)], message: &str) -> String {
        self.author(branch, files, message, Authoring::Normal, &[])
    }

    /// Create `n` commits on `branch` with `git fast-import` directly in the
    /// bare repo, each changing only `history/counter` (the rest of the tree is
    /// kept); returns the new head hash. A missing branch starts from the bare
    /// repo's HEAD if any, else from a root commit.
    /// Like [`Upstream::commit`], signed by `git commit -S` with the `git
    /// -c` settings `sign` (such as `gpg.format=ssh` and
    /// `user.signingkey=PATH`).
    pub fn commit_signed(
        &self,
        branch: &str,
        files: &[(&str, Option<&str>)],
        message: &str,
        sign: &[&str],
    ) -> String {
        self.author(branch, files, message, Authoring::Normal, sign)
    }

    /// `n` commits on `branch`, each changing one file; returns the last one's hash.
    pub fn commit_many(&self, branch: &str, n: usize) -> String {
        let parent = self.head_opt(branch).or_else(|| self.bare_head());
        if n == 0 {
            return parent.unwrap_or_else(|| {
                panic!("commit_many({branch:?}, 0): branch does not exist and repo is empty")
            });
        }
        let mut counter: u64 = parent
            .as_deref()
            .and_then(|p| {
                try_run(git_cmd(&self.bare).args([
                    "cat-file",
                    "blob",
                    &format!("{p}:history/counter"),
                ]))
            })
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);

        let ts = next_timestamp();
        let refname = format!("refs/heads/{branch}");
        let mut stream = String::with_capacity(n * 256);
        for i in 0..n {
            counter += 1;
            let msg = format!("history commit {counter}\n");
            let content = format!("{counter}\n");
            stream.push_str(&format!("commit {refname}\n"));
            stream.push_str(&format!(
                "author {AUTHOR_NAME} <{AUTHOR_EMAIL}> {ts} +0000\n"
            ));
            stream.push_str(&format!(
                "committer {COMMITTER_NAME} <{COMMITTER_EMAIL}> {ts} +0000\n"
            ));
            stream.push_str(&format!("data {}\n{msg}", msg.len()));
            if i == 0 {
                if let Some(p) = &parent {
                    stream.push_str(&format!("from {p}\n"));
                }
            }
            stream.push_str("M 100644 inline history/counter\n");
            stream.push_str(&format!("data {}\n{content}\n", content.len()));
        }
        stream.push_str("done\n");

        let mut cmd = git_cmd(&self.bare);
        // Without a heap top pad, glibc malloc in fast-import can thrash
        // brk() (160k syscalls, 2.5 s instead of 0.3 s for 10k commits).
        cmd.env("MALLOC_TOP_PAD_", "67108864")
            .args(["fast-import", "--quiet", "--done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let mut stdin = child.stdin.take().expect("fast-import stdin is piped");
        let writer = thread::spawn(move || {
            let res = stdin.write_all(stream.as_bytes());
            drop(stdin);
            res
        });
        let out = child
            .wait_with_output()
            .expect("waiting for git fast-import");
        let write_res = writer.join().expect("fast-import writer thread panicked");
        if !out.status.success() || write_res.is_err() {
            panic!(
                "git fast-import of {n} commits on {branch:?} in {} failed ({}; write: {write_res:?})\n--- stderr ---\n{}",
                self.bare.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        self.head(branch)
    }

    /// Replace `branch` with a brand-new unrelated root commit holding `files`,
    /// force-pushed; returns its hash.
    pub fn force_push_unrelated(
        &self,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
    ) -> String {
        let files: Vec<(&str, Option<&str>)> = files.iter().map(|(p, c)| (*p, Some(*c))).collect();
        self.author(branch, &files, message, Authoring::Unrelated, &[])
    }

    /// Rewrite the last commit of `branch` (amend with new content and
    /// message) and force-push; returns the new hash (always different from
    /// the old one). Panics if the branch does not exist.
    pub fn amend(&self, branch: &str, files: &[(&str, Option<&str>)], message: &str) -> String {
        self.author(branch, files, message, Authoring::Amend, &[])
    }

    /// Delete `branch` from the bare repo. Panics if it does not exist.
    pub fn delete_branch(&self, branch: &str) {
        let old = self.head(branch);
        run(git_cmd(&self.bare).args(["update-ref", "-d", &format!("refs/heads/{branch}"), &old]));
    }

    /// `tags` tags and `branches` branches on the head of `main`, packed
    /// like a server's refs (a forge's repository, for the polls' costs).
    pub fn add_refs(&self, tags: usize, branches: usize) {
        let head = self.head("main");
        let mut input = String::new();
        for i in 0..tags {
            input.push_str(&format!("create refs/tags/v{i:05} {head}\n"));
        }
        for i in 0..branches {
            input.push_str(&format!("create refs/heads/feature-{i:04} {head}\n"));
        }
        let mut child = git_cmd(&self.bare)
            .args(["update-ref", "--stdin"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawning git update-ref");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing refs");
        assert!(child.wait().expect("git update-ref").success());
        run(git_cmd(&self.bare).args(["pack-refs", "--all"]));
    }

    /// Hash of `branch` in the bare repo. Panics if it does not exist.
    pub fn head(&self, branch: &str) -> String {
        self.head_opt(branch).unwrap_or_else(|| {
            panic!(
                "branch {branch:?} does not exist in {}",
                self.bare.display()
            )
        })
    }

    /// Hash of `branch` in the bare repo, or `None` if it does not exist.
    pub fn head_opt(&self, branch: &str) -> Option<String> {
        try_run(git_cmd(&self.bare).args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}^{{commit}}"),
        ]))
    }

    /// Lightweight tag `name` -> `rev` (a hash, branch or any revision the
    /// bare repo resolves) in the bare repo; overwrites an existing tag.
    pub fn tag(&self, name: &str, rev: &str) {
        let sha = try_run(git_cmd(&self.bare).args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("{rev}^{{commit}}"),
        ]))
        .unwrap_or_else(|| {
            panic!(
                "tag {name:?}: revision {rev:?} does not resolve to a commit in {}",
                self.bare.display()
            )
        });
        run(git_cmd(&self.bare).args(["update-ref", &format!("refs/tags/{name}"), &sha]));
    }

    /// Commit the bare repo's HEAD points to, if any.
    fn bare_head(&self) -> Option<String> {
        try_run(git_cmd(&self.bare).args(["rev-parse", "--verify", "-q", "HEAD^{commit}"]))
    }

    fn work_git(&self) -> Command {
        git_cmd(&self.work)
    }

    fn author(
        &self,
        branch: &str,
        files: &[(&str, Option<&str>)],
        message: &str,
        mode: Authoring,
        sign: &[&str],
    ) -> String {
        // Bring the work clone up to date with whatever happened in the bare
        // repo (fast-import, force pushes, deletions ...).
        run(self
            .work_git()
            .args(["fetch", "-q", "--prune", "--no-tags", "--force", "origin"])
            .arg("+refs/heads/*:refs/remotes/origin/*"));

        let remote = format!("refs/remotes/origin/{branch}");
        let remote_head = try_run(self.work_git().args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("{remote}^{{commit}}"),
        ]));
        let start = match mode {
            Authoring::Normal => remote_head.or_else(|| self.bare_head()),
            Authoring::Unrelated => None,
            Authoring::Amend => Some(remote_head.unwrap_or_else(|| {
                panic!(
                    "amend: branch {branch:?} does not exist in {}",
                    self.bare.display()
                )
            })),
        };
        match start {
            Some(sha) => {
                run(self
                    .work_git()
                    .args(["checkout", "-q", "-f", "--detach", &sha]));
            }
            None => {
                // Unborn placeholder branch with an empty index: next commit is a root.
                run(self
                    .work_git()
                    .args(["symbolic-ref", "HEAD", ORPHAN_BRANCH]));
                run(self.work_git().args(["update-ref", "-d", ORPHAN_BRANCH]));
                run(self.work_git().args(["read-tree", "--empty"]));
            }
        }
        run(self.work_git().args(["clean", "-q", "-f", "-d", "-x"]));

        for (path, content) in files {
            self.apply_file(path, *content);
        }
        run(self.work_git().args(["add", "-A", "."]));

        let date = format!("@{} +0000", next_timestamp());
        let mut commit = self.work_git();
        for setting in sign {
            commit.args(["-c", setting]);
        }
        commit
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args([
                "commit",
                "-q",
                "--allow-empty",
                "--no-verify",
                "-m",
                message,
            ]);
        if matches!(mode, Authoring::Amend) {
            commit.arg("--amend");
        }
        if !sign.is_empty() {
            commit.arg("-S");
        }
        run(&mut commit);

        let mut push = self.work_git();
        push.args(["push", "-q"]);
        if !matches!(mode, Authoring::Normal) {
            push.arg("--force");
        }
        push.args(["origin", &format!("HEAD:refs/heads/{branch}")]);
        run(&mut push);

        run(self.work_git().args(["rev-parse", "HEAD"]))
    }

    fn apply_file(&self, path: &str, content: Option<&str>) {
        let rel = Path::new(path);
        assert!(
            !path.is_empty()
                && rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                && rel.components().all(|c| c.as_os_str() != ".git"),
            "fixture file path must be relative, without `..` or `.git`: {path:?}"
        );
        let full = self.work.join(rel);
        match content {
            Some(text) => {
                if let Some(parent) = full.parent() {
                    fs::create_dir_all(parent)
                        .unwrap_or_else(|e| panic!("creating parent dirs of {path:?}: {e}"));
                }
                if full.is_dir() {
                    fs::remove_dir_all(&full).unwrap_or_else(|e| {
                        panic!("replacing directory {path:?} with a file: {e}")
                    });
                }
                fs::write(&full, text).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
            }
            None => {
                let meta = fs::symlink_metadata(&full).unwrap_or_else(|e| {
                    panic!("cannot delete {path:?}: not present in the branch being edited ({e})")
                });
                if meta.is_dir() {
                    fs::remove_dir_all(&full)
                } else {
                    fs::remove_file(&full)
                }
                .unwrap_or_else(|e| panic!("deleting {path:?}: {e}"));
            }
        }
    }
}

pub mod container;
pub mod host;
pub mod smart_http;
pub mod sshd;

/// An ed25519 key pair without passphrase at `path` and `path.pub`.
pub fn ssh_keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", output_text(&out));
}

/// `TYPE BASE64` of a `.pub` file, without its comment.
pub fn public_key(pub_file: &Path) -> String {
    let text = std::fs::read_to_string(pub_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pub_file.display()));
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// Replaces the section under `heading` (up to the next `## `) of the
/// Markdown file at `path` with `section`, or appends it: how each bench
/// writes its part of docs/BENCHMARKS.md.
pub fn replace_section(path: &Path, heading: &str, section: &str) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let kept = match text.find(heading) {
        Some(i) => {
            let rest = &text[i + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(text.len(), |j| i + heading.len() + j + 1);
            format!("{}{}", &text[..i], &text[end..])
        }
        None => text,
    };
    let mut doc = kept.trim_end().to_string();
    doc.push_str("\n\n");
    doc.push_str(section);
    fs::write(path, doc).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
