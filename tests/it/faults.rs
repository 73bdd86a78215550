//! Faults a machine meets in production, each produced for real: a git
//! server that is down, refuses, hangs or rejects our key; a branch deleted
//! or rewritten upstream; a commit without the service's path; a full disk;
//! a damaged mirror or state file; and, on a real systemd, a missing D-Bus,
//! unit or package manager and a failing action.
//!
//! For every fault that fails a pass the same things are checked: stderr
//! names the cause, the exit code is 1, `status --json` and the metrics file
//! show the failure, the deployment that was serving is untouched, and the
//! next pass after the fault is gone converges on the upstream head.

use testkit as common;

use common::sshd::Sshd;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::container::Machine;
use common::host::{app_config, read, seed, Host};
use common::{GitDaemon, Upstream};

/// What `sync` prints for a service whose pass failed.
const APP_FAILED: &str = "app: pass failed, last good release kept";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of `app`'s sample of `metric` (`labels`: further labels, each
/// starting with a comma), if the file has one.
fn sample(metrics: &str, metric: &str, labels: &str) -> Option<f64> {
    common::sample(metrics, &format!("{metric}{{service=\"app\"{labels}}}"))
}

/// Every entry under `dir` with its type, mode and content (or link
/// target), to prove a release was not touched.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for e in entries {
            let path = e.expect("reading a directory entry").path();
            let meta = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            let rel = path.strip_prefix(root).expect("below root").to_path_buf();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("reading a symlink");
                out.insert(rel, format!("symlink -> {}", target.display()));
            } else {
                out.insert(rel, format!("file {mode:o} {}", read(&path)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    assert!(!out.is_empty(), "{} is empty", dir.display());
    out
}

/// What serves `app` before a fault, for comparison after the failed pass.
struct Serving {
    commit: String,
    release: PathBuf,
    files: BTreeMap<PathBuf, String>,
    failures: f64,
}

/// The deployment serving now; `base` is the service's `mount` (the state
/// dir unless configured).
fn serving(h: &Host, base: &Path) -> Serving {
    let st = h.state_json("app");
    let commit = st["deployed"]["commit"]
        .as_str()
        .expect("a deployed commit")
        .to_string();
    let release = base.join("app/releases").join(
        st["deployed"]["release"]
            .as_str()
            .expect("a deployed release"),
    );
    let failures = sample(&h.metrics_text(), "provision_pass_failures_total", "")
        .expect("provision_pass_failures_total in the metrics");
    Serving {
        commit,
        files: tree(&release),
        release,
        failures,
    }
}

/// Runs a pass that must fail because of the fault, and checks what an
/// operator relies on: exit 1, every word of `causes` on stderr and in
/// `status --json`, the failure in the metrics, and the serving release
/// untouched. Returns stderr.
fn fails_and_keeps_serving(h: &Host, before: &Serving, causes: &[&str]) -> String {
    let out = h.run(&["sync"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "sync:\n{}",
        common::output_text(&out)
    );
    assert!(err.contains(APP_FAILED), "{err}");
    for cause in causes {
        assert!(err.contains(cause), "stderr does not say {cause:?}:\n{err}");
    }

    let s = h.status_json();
    assert_eq!(s["last_pass"]["ok"], false, "{s}");
    let recorded = s["last_pass"]["error"].as_str().unwrap_or_default();
    for cause in causes {
        assert!(
            recorded.contains(cause),
            "status does not say {cause:?}: {s}"
        );
    }
    assert_eq!(s["deployed"]["commit"], before.commit.as_str(), "{s}");

    let m = h.metrics_text();
    assert_eq!(
        sample(&m, "provision_last_pass_success", ""),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "provision_pass_failures_total", ""),
        Some(before.failures + 1.0),
        "{m}"
    );

    assert_eq!(
        h.state_json("app")["deployed"]["commit"],
        before.commit.as_str()
    );
    assert_eq!(
        tree(&before.release),
        before.files,
        "the serving release {} changed",
        before.release.display()
    );
    err
}

/// Runs a pass that must succeed and deploy the head of `branch`, shown as
/// such in the state, status and metrics. Returns stdout and stderr.
fn converges(h: &Host, up: &Upstream, branch: &str) -> String {
    let out = h.sync(0);
    let head = up.head(branch);
    assert!(!out.contains("pass failed"), "{out}");
    assert_eq!(
        h.state_json("app")["deployed"]["commit"],
        head.as_str(),
        "{out}"
    );
    let s = h.status_json();
    assert_eq!(s["last_pass"]["ok"], true, "{s}");
    assert_eq!(s["in_sync"], true, "{s}");
    assert_eq!(s["upstream"]["commit"], head.as_str(), "{s}");
    let m = h.metrics_text();
    assert_eq!(
        sample(&m, "provision_last_pass_success", ""),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "provision_in_sync", ""), Some(1.0), "{m}");
    out
}

/// A host following `up`'s `main` with `extra` config, after a first pass
/// that deployed the seed.
fn deployed_host(up: &Upstream, extra: &str) -> Host {
    seed(up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), extra));
    h.sync(0);
    h
}

fn bump(up: &Upstream, text: &str) -> String {
    up.commit("main", &[("app/etc/app.conf", Some(text))], "bump")
}

/// A TCP server on a fixed loopback address that is not a git server: it
/// accepts every connection and then either closes it at once or holds it
/// open without ever writing a byte. Stopped (listener closed, connections
/// dropped) on drop.
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    CloseAtOnce,
    NeverAnswer,
    /// Starts a TLS handshake record and sends one byte of it every
    /// 400 ms, for ever: each read gets a byte well within any socket
    /// timeout.
    DribbleTls,
    /// Answers a git:// request with an `ERR` line full of terminal
    /// escape sequences.
    SayErr,
    /// Speaks protocol v2 and then sends one list without end (see
    /// [`Flood`]).
    Flood(Flood),
}

/// The list a hostile v2 server never ends.
#[derive(Clone, Copy, Debug)]
enum Flood {
    /// Capabilities, one after another.
    Capabilities,
    /// `shallow` lines in the answer to a fetch.
    Shallow,
    /// Lines of a section the client skips (`acknowledgments`), before a
    /// pack that never comes: padding around a small answer.
    Acknowledgments,
}

/// A pkt-line of `text`.
fn pkt(text: &str) -> Vec<u8> {
    format!("{:04x}{text}", text.len() + 4).into_bytes()
}

/// Reads pkt-lines up to a flush (one command of the client).
fn read_command(c: &mut TcpStream) -> std::io::Result<()> {
    use std::io::Read as _;
    loop {
        let mut len = [0u8; 4];
        c.read_exact(&mut len)?;
        let n = usize::from_str_radix(std::str::from_utf8(&len).unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        if n > 4 {
            let mut body = vec![0u8; n - 4];
            c.read_exact(&mut body)?;
        }
    }
}

/// A v2 server that answers the request, and the ref asked for, then
/// floods: writes `what` until the client hangs up or the test ends.
fn flood(mut c: TcpStream, what: Flood, stop: Arc<AtomicBool>) {
    use std::io::{Read as _, Write as _};
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = [0u8; 512];
    let _ = c.read(&mut request);
    let mut hello = pkt("version 2\n");
    let (line, after) = match what {
        Flood::Capabilities => (format!("agent={}\n", "x".repeat(200)), false),
        Flood::Shallow => (format!("shallow {}\n", "2".repeat(40)), true),
        Flood::Acknowledgments => (format!("NAK {}\n", "x".repeat(1000)), true),
    };
    if after {
        for cap in ["ls-refs\n", "fetch=shallow filter\n"] {
            hello.extend(pkt(cap));
        }
        hello.extend(b"0000");
    }
    if c.write_all(&hello).is_err() {
        return;
    }
    if after {
        let mut refs = pkt(&format!("{} refs/heads/main\n", "1".repeat(40)));
        refs.extend(b"0000");
        if read_command(&mut c).is_err() || c.write_all(&refs).is_err() {
            return;
        }
        let section = match what {
            Flood::Shallow => "shallow-info\n",
            _ => "acknowledgments\n",
        };
        if read_command(&mut c).is_err() || c.write_all(&pkt(section)).is_err() {
            return;
        }
    }
    let batch: Vec<u8> = (0..100).flat_map(|_| pkt(&line)).collect();
    while !stop.load(Ordering::SeqCst) && c.write_all(&batch).is_ok() {}
}

/// The `ERR` a hostile git:// server answers with.
const ESCAPING_ERR: &str = "ERR \u{1b}]0;owned\u{7}\u{1b}[2Jgo away\r\rforged";

/// Reads the request, answers [`ESCAPING_ERR`] and hangs up.
fn say_err(mut c: TcpStream) {
    use std::io::{Read as _, Write as _};
    let mut request = [0u8; 512];
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.read(&mut request);
    let _ = c.write_all(format!("{:04x}{ESCAPING_ERR}\n", ESCAPING_ERR.len() + 5).as_bytes());
}

/// Sends a TLS record header announcing 16 KiB, then a byte at a time.
fn dribble(mut c: TcpStream, stop: Arc<AtomicBool>) {
    use std::io::{Read as _, Write as _};
    let mut hello = [0u8; 512];
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.read(&mut hello);
    if c.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) && c.write_all(&[0x02]).is_ok() {
        thread::sleep(Duration::from_millis(400));
    }
}

impl FakeServer {
    fn on_port(port: u16, behaviour: Behaviour) -> FakeServer {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("binding {addr} for a fake server: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                match (conn, behaviour) {
                    (Ok(c), Behaviour::NeverAnswer) => held.push(c),
                    (Ok(c), Behaviour::CloseAtOnce) => drop(c),
                    (Ok(c), Behaviour::SayErr) => say_err(c),
                    (Ok(c), Behaviour::Flood(what)) => {
                        let stop = stopping.clone();
                        thread::spawn(move || flood(c, what, stop));
                    }
                    (Ok(c), Behaviour::DribbleTls) => {
                        let stop = stopping.clone();
                        thread::spawn(move || dribble(c, stop));
                    }
                    (Err(_), _) => {}
                }
            }
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The git server
// ---------------------------------------------------------------------------

#[test]
fn server_down_fails_the_pass_and_the_restarted_server_converges() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "timeout = 5");
    let before = serving(&h, &h.state());
    d.stop();
    bump(&up, "port = 2\n");
    let err = fails_and_keeps_serving(&h, &before, &[&up.url(), "Connection refused"]);
    assert!(!err.contains("rebuil"), "the mirror is not to blame: {err}");
    d.start_again();
    converges(&h, &up, "main");
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "port = 2\n"
    );
}

#[test]
fn a_repository_gone_from_the_server_is_named_and_converges_when_back() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "");
    let before = serving(&h, &h.state());
    bump(&up, "port = 2\n");
    let away = d.base().join("r.git.away");
    fs::rename(up.bare(), &away).expect("moving the repository away");
    let err = fails_and_keeps_serving(&h, &before, &[&up.url(), "/r.git"]);
    assert!(!err.contains("rebuil"), "the mirror is not to blame: {err}");
    fs::rename(&away, up.bare()).expect("moving the repository back");
    converges(&h, &up, "main");
}

#[test]
fn a_server_that_closes_every_connection_fails_the_pass_and_converges_after() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "timeout = 5");
    let before = serving(&h, &h.state());
    bump(&up, "port = 2\n");
    d.stop();
    let closing = FakeServer::on_port(d.port(), Behaviour::CloseAtOnce);
    let err = fails_and_keeps_serving(&h, &before, &[&up.url()]);
    // libgit2's words, depending on whether the close raced our request.
    assert!(
        err.contains("could not read refs from remote repository")
            || err.contains("Connection reset by peer"),
        "{err}"
    );
    assert!(!err.contains("rebuil"), "the mirror is not to blame: {err}");
    drop(closing);
    d.start_again();
    converges(&h, &up, "main");
}

#[test]
fn a_hanging_server_times_out_naming_the_timeout_and_converges_after() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "timeout = 2");
    let before = serving(&h, &h.state());
    bump(&up, "port = 2\n");
    d.stop();
    let silent = FakeServer::on_port(d.port(), Behaviour::NeverAnswer);
    let err = fails_and_keeps_serving(
        &h,
        &before,
        &[&up.url(), "timed out", "did not answer within 2 s"],
    );
    assert!(!err.contains("rebuil"), "the mirror is not to blame: {err}");
    drop(silent);
    d.start_again();
    converges(&h, &up, "main");
}

/// A server that keeps the TLS handshake going a byte at a time cannot
/// hold a pass past its `timeout`: the connection is shut at the deadline.
#[test]
fn a_server_dribbling_the_tls_handshake_cannot_hold_a_pass_past_its_timeout() {
    let port = common::free_port();
    let _slow = FakeServer::on_port(port, Behaviour::DribbleTls);
    let h = Host::new();
    h.write_config(&app_config(
        &format!("https://127.0.0.1:{port}/r.git"),
        "timeout = 2",
    ));
    let start = Instant::now();
    // Killed at 60 s so that a pass that never ends fails this test
    // instead of hanging it.
    let pass = h.command(&["sync"]);
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(pass.get_program())
        .args(pass.get_args())
        .output()
        .expect("running provision");
    let took = start.elapsed();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {text}");
    assert!(
        took < Duration::from_secs(10),
        "the pass took {took:?}: {text}"
    );
    assert!(text.contains("timed out"), "{text}");
}

#[test]
fn a_rejected_ssh_key_fails_the_pass_naming_the_key_and_converges_when_accepted() {
    common::need_git!();
    let Some(sshd) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let url = sshd.url(up.bare());
    let key = sshd.path("client_key");
    let h = Host::new();
    h.write_config(&app_config(
        &url,
        &format!(
            "timeout = 10\nssh_key = \"{}\"\nssh_known_hosts = \"{}\"",
            key.display(),
            sshd.known_hosts().display()
        ),
    ));
    h.sync(0);
    let before = serving(&h, &h.state());
    bump(&up, "port = 2\n");
    // The server no longer accepts this machine's key.
    sshd.authorize("other_key");
    let err = fails_and_keeps_serving(
        &h,
        &before,
        &[
            "ssh authentication was rejected",
            &url,
            &key.display().to_string(),
        ],
    );
    assert!(!err.contains("rebuil"), "the mirror is not to blame: {err}");
    sshd.authorize("client_key");
    converges(&h, &up, "main");
}

// ---------------------------------------------------------------------------
// What upstream does to the branch
// ---------------------------------------------------------------------------

#[test]
fn a_deleted_branch_fails_the_pass_naming_it_and_converges_when_pushed_again() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    up.commit("feature", &[("app/etc/app.conf", Some("f\n"))], "feature");
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "branch = \"feature\""));
    h.sync(0);
    let before = serving(&h, &h.state());
    up.delete_branch("feature");
    let err = fails_and_keeps_serving(
        &h,
        &before,
        &["branch \"feature\" does not exist", &up.url()],
    );
    assert!(
        !err.contains("rebuil"),
        "a missing branch is not a broken mirror: {err}"
    );
    up.commit(
        "feature",
        &[("app/etc/app.conf", Some("f2\n"))],
        "feature again",
    );
    converges(&h, &up, "feature");
    assert_eq!(read(&h.deployed("app").join("app/etc/app.conf")), "f2\n");
}

/// Not a fault: provision follows the branch wherever it goes, so a rewrite
/// of its whole history deploys like any push, and the release of the
/// vanished history stays available for a rollback.
#[test]
fn a_force_push_to_unrelated_history_is_followed_keeping_the_old_release_for_rollback() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "");
    let before = serving(&h, &h.state());
    let new = up.force_push_unrelated(
        "main",
        &[("app/etc/app.conf", "rewritten\n"), ("app/default", "D\n")],
        "rewrite",
    );
    let out = converges(&h, &up, "main");
    assert!(
        out.contains(&format!("app: deployed {}", &new[..10])),
        "{out}"
    );
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "rewritten\n"
    );
    assert_eq!(
        sample(&h.metrics_text(), "provision_pass_failures_total", ""),
        Some(before.failures)
    );
    assert_eq!(
        tree(&before.release),
        before.files,
        "the old release is kept"
    );

    let back = h.run(&["rollback", "app", &before.commit]);
    assert_eq!(
        back.status.code(),
        Some(0),
        "{}",
        common::output_text(&back)
    );
    assert_eq!(
        h.state_json("app")["deployed"]["commit"],
        before.commit.as_str()
    );
    assert_eq!(h.deployed("app"), before.release);
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "port = 1\n"
    );
}

#[test]
fn a_commit_without_the_link_path_fails_naming_it_and_a_restoring_commit_converges() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "");
    let before = serving(&h, &h.state());
    up.commit("main", &[("app/etc", None)], "drop app/etc");
    fails_and_keeps_serving(
        &h,
        &before,
        &["\"app/etc\" does not exist in the repository"],
    );
    up.commit(
        "main",
        &[("app/etc/app.conf", Some("restored\n"))],
        "restore app/etc",
    );
    converges(&h, &up, "main");
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "restored\n"
    );
}

// ---------------------------------------------------------------------------
// The machine's own disk
// ---------------------------------------------------------------------------

/// A small tmpfs mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tmpfs mount point");
        common::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

/// Names under `dir` starting with `prefix`.
fn entries_starting(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn a_full_disk_fails_the_release_write_leaving_no_partial_release_and_converges_after() {
    common::need_git!();
    let disk = Tmpfs::mount("2m");
    let base = disk.path();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, &format!("mount = \"{}\"", base.display()));
    let before = serving(&h, base);
    assert!(
        !h.state().join("app/releases").exists(),
        "releases live on the configured mount"
    );
    // Compresses to a few KiB in the mirror, takes 4 MiB as a release file.
    let big = "0123456789abcdef".repeat(256 * 1024);
    up.commit("main", &[("app/etc/big.conf", Some(&big))], "big file");
    fails_and_keeps_serving(&h, &before, &["No space left on device", "big.conf"]);
    assert_eq!(
        entries_starting(&base.join("app/releases"), ".tmp-"),
        Vec::<String>::new(),
        "the half-written release was removed"
    );
    up.commit("main", &[("app/etc/big.conf", None)], "drop the big file");
    converges(&h, &up, "main");
    let now = serving(&h, base);
    assert_eq!(read(&now.release.join("app/etc/app.conf")), "port = 1\n");
    assert!(!now.release.join("app/etc/big.conf").exists());
}

// ---------------------------------------------------------------------------
// Damaged local files
// ---------------------------------------------------------------------------

/// Every file in the mirror's pack directory with this extension.
fn pack_files(mirror: &Path, ext: &str) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = fs::read_dir(mirror.join("objects/pack"))
        .expect("listing the mirror's packs")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    assert!(!files.is_empty(), "no .{ext} in {}", mirror.display());
    files
}

/// Truncates a file to half its length.
fn halve(path: &Path) {
    let len = fs::metadata(path).expect("stat").len();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len / 2))
        .unwrap_or_else(|e| panic!("truncating {}: {e}", path.display()));
}

/// tests/it/sync.rs covers packs and refs destroyed together with a new
/// upstream commit; these are the other ways a mirror breaks. Each pass
/// must repair it by itself and succeed, with no failure counted.
#[test]
fn a_damaged_mirror_is_repaired_by_the_next_pass_without_failing_it() {
    common::need_git!();
    struct Case {
        what: &'static str,
        damage: fn(&Path),
        upstream_moves: bool,
        says_rebuilt: bool,
    }
    let cases = [
        Case {
            what: "pack data cut in half, index intact, upstream unchanged",
            damage: |m| pack_files(m, "pack").iter().for_each(|p| halve(p)),
            upstream_moves: false,
            says_rebuilt: true,
        },
        Case {
            what: "packs and indexes emptied, refs intact, upstream moved",
            damage: |m| {
                for p in pack_files(m, "pack").iter().chain(&pack_files(m, "idx")) {
                    fs::write(p, b"").expect("emptying a pack file");
                }
            },
            upstream_moves: true,
            says_rebuilt: true,
        },
        Case {
            what: "refs deleted, objects intact, upstream unchanged",
            damage: |m| {
                fs::remove_dir_all(m.join("refs")).expect("removing refs");
                let _ = fs::remove_file(m.join("packed-refs"));
            },
            upstream_moves: false,
            says_rebuilt: true,
        },
        Case {
            what: "shallow boundary file deleted, upstream moved",
            damage: |m| fs::remove_file(m.join("shallow")).expect("removing shallow"),
            upstream_moves: true,
            says_rebuilt: true,
        },
        Case {
            what: "mirror replaced by an empty directory",
            damage: |m| {
                fs::remove_dir_all(m).expect("removing the mirror");
                fs::create_dir(m).expect("creating an empty mirror dir");
            },
            upstream_moves: true,
            says_rebuilt: false,
        },
    ];
    for case in cases {
        let d = GitDaemon::start();
        let up = d.repo("r");
        seed(&up);
        // More history than `depth`, so the mirror is shallow.
        up.commit_many("main", 5);
        let h = Host::new();
        h.write_config(&app_config(&up.url(), ""));
        h.sync(0);
        let failures = sample(&h.metrics_text(), "provision_pass_failures_total", "");
        let mirrors = h.mirrors();
        assert_eq!(mirrors.len(), 1, "{}", case.what);
        (case.damage)(&mirrors[0]);
        if case.upstream_moves {
            bump(&up, "after damage\n");
        }
        let out = converges(&h, &up, "main");
        assert_eq!(
            out.contains("mirror rebuilt"),
            case.says_rebuilt,
            "{}: {out}",
            case.what
        );
        let conf = if case.upstream_moves {
            "after damage\n"
        } else {
            "port = 1\n"
        };
        assert_eq!(
            read(&h.deployed("app").join("app/etc/app.conf")),
            conf,
            "{}",
            case.what
        );
        assert_eq!(
            sample(&h.metrics_text(), "provision_pass_failures_total", ""),
            failures,
            "{}: no failure counted",
            case.what
        );
        // Repaired for good: the following pass has nothing to fix.
        let again = converges(&h, &up, "main");
        assert!(!again.contains("rebuil"), "{}: {again}", case.what);
        assert!(again.contains("app: up to date"), "{}: {again}", case.what);
    }
}

#[test]
fn an_unreadable_state_file_fails_the_pass_unchanged_until_the_operator_acts() {
    common::need_git!();
    struct Case {
        what: &'static str,
        content: &'static str,
        says: &'static [&'static str],
        /// The operator's fix: put the good file back, or remove it.
        restore: bool,
    }
    let cases = [
        Case {
            what: "corrupt",
            content: "{\"version\": 1, \"deployed\": {\"commit\": ",
            says: &["is corrupt", "not reset"],
            restore: true,
        },
        Case {
            what: "from a newer version",
            content: "{\"version\": 99}",
            says: &["version 99", "newer", "not reset"],
            restore: false,
        },
    ];
    for case in cases {
        let d = GitDaemon::start();
        let up = d.repo("r");
        let h = deployed_host(&up, "");
        let before = serving(&h, &h.state());
        let file = h.state().join("app/state.json");
        let good = fs::read(&file).expect("reading state.json");
        fs::write(&file, case.content).expect("damaging state.json");
        bump(&up, "port = 2\n");

        let out = h.run(&["sync"]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            case.what,
            common::output_text(&out)
        );
        let report = report_of(&err, "app");
        assert!(report.starts_with(APP_FAILED), "{}: {err}", case.what);
        assert!(
            report.contains(&file.display().to_string()),
            "{}: {err}",
            case.what
        );
        assert_eq!(
            fs::read_to_string(&file).expect("reading state.json"),
            case.content,
            "{}: the state file is left as it was",
            case.what
        );
        let s = h.status_json();
        assert_eq!(s["state"], "unknown", "{}: {s}", case.what);
        let state_error = s["state_error"].as_str().unwrap_or_default().to_string();
        assert!(
            state_error.contains(&file.display().to_string()),
            "{}: {s}",
            case.what
        );
        let m = h.metrics_text();
        assert_eq!(
            sample(&m, "provision_state_readable", ""),
            Some(0.0),
            "{}: {m}",
            case.what
        );
        assert_eq!(
            tree(&before.release),
            before.files,
            "{}: release changed",
            case.what
        );

        if case.restore {
            fs::write(&file, &good).expect("restoring state.json");
        } else {
            fs::remove_file(&file).expect("removing state.json");
        }
        converges(&h, &up, "main");
        assert_eq!(
            sample(&h.metrics_text(), "provision_state_readable", ""),
            Some(1.0)
        );
        assert_eq!(
            read(&h.deployed("app").join("app/etc/app.conf")),
            "port = 2\n"
        );

        // Last, so that everything above is checked whatever the wording.
        for word in case.says {
            assert!(
                report.contains(word) && state_error.contains(word),
                "{}: the error does not say {word:?}:\n{report}",
                case.what
            );
        }
    }
}

// ---------------------------------------------------------------------------
// systemd, D-Bus and the package manager, on a real systemd (PID 1 in a
// namespace container)
// ---------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const MACHINE_METRICS: &str = "/var/lib/provision-metrics/provision.prom";

/// A unit that counts its reloads in /var/log/NAME.reloads; `reload` is its
/// ExecReload= (None: the counting one).
fn counting_unit(name: &str, reload: Option<&str>) -> String {
    let counting = format!("/bin/sh -c 'echo reload >> /var/log/{name}.reloads'");
    format!(
        "[Service]\nExecStart=/bin/sleep infinity\nExecReload={}\n",
        reload.unwrap_or(&counting)
    )
}

/// A config for `host` following `url`: one service per `(unit, extra)`,
/// named after its unit and mounting `/etc/UNIT` from `UNIT/` in Git.
fn machine_config(host: &str, url: &str, services: &[(&str, &str)]) -> String {
    let mut c =
        format!("[global]\nupstream = \"{url}\"\nmetrics_dir = \"/var/lib/provision-metrics\"\n");
    for (unit, extra) in services {
        c.push_str(&format!(
            "\n[[services]]\nmachine = \"{host}\"\nservice = \"{unit}\"\n{extra}\n\
             dirs = [ {{ local = \"/etc/{unit}\", link = \"{unit}\" }} ]\n"
        ));
    }
    c
}

/// `provision sync` inside: (exit code, stdout, stderr).
fn machine_sync(m: &Machine) -> (i32, String, String) {
    let out = m.exec(&[BIN, "sync"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// `name`'s entry of `provision status --json` inside.
fn machine_status(m: &Machine, name: &str) -> serde_json::Value {
    let out = m.exec(&[BIN, "status", "--json", name]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "status:\n{}",
        common::output_text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["services"][0].clone()
}

/// `name`'s sample of `metric` (with further `labels`) in the machine's
/// metrics file.
fn machine_sample(m: &Machine, name: &str, metric: &str, labels: &str) -> Option<f64> {
    let text = m.read(MACHINE_METRICS).expect("the metrics file");
    let series = format!("{metric}{{service=\"{name}\"{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.parse().ok()))
}

/// `name`'s report in the output of a pass: its line and the indented lines
/// continuing it.
fn report_of(output: &str, name: &str) -> String {
    let prefix = format!("{name}: ");
    let mut lines = output.lines().skip_while(|l| !l.starts_with(&prefix));
    let Some(first) = lines.next() else {
        panic!("no report for {name} in:\n{output}")
    };
    let mut report = first.to_string();
    for l in lines.take_while(|l| l.starts_with(' ')) {
        report.push('\n');
        report.push_str(l);
    }
    report
}

/// Checks what an operator sees of `name`'s failed pass: its report on
/// stderr (`err`) names every `cause`, status and metrics show the failure,
/// and the failure counter is now `failures`. Returns the report.
fn machine_failure_shown(
    m: &Machine,
    name: &str,
    err: &str,
    causes: &[&str],
    failures: f64,
) -> String {
    let report = report_of(err, name);
    assert!(report.starts_with(&format!("{name}: pass failed")), "{err}");
    for cause in causes {
        assert!(
            report.contains(cause),
            "{name}'s report does not say {cause:?}:\n{err}"
        );
    }
    let s = machine_status(m, name);
    assert_eq!(s["last_pass"]["ok"], false, "{s}");
    let recorded = s["last_pass"]["error"].as_str().unwrap_or_default();
    for cause in causes {
        assert!(
            recorded.contains(cause),
            "status does not say {cause:?}: {s}"
        );
    }
    assert_eq!(
        machine_sample(m, name, "provision_last_pass_success", ""),
        Some(0.0)
    );
    assert_eq!(
        machine_sample(m, name, "provision_pass_failures_total", ""),
        Some(failures)
    );
    report
}

/// A pass whose action failed has already mounted the new files: its
/// report must not tell the operator the old release is still serving.
/// Checked last in a test, so that everything else is checked too.
fn does_not_claim_the_old_release(reports: &[String]) {
    for report in reports {
        assert!(
            !report.contains("last good release kept"),
            "the new files are mounted, yet the report says the last good release was kept:\n{report}"
        );
    }
}

const RELOAD_OK: &str = ",action=\"reload\",result=\"ok\"";
const RELOAD_FAILED: &str = ",action=\"reload\",result=\"failed\"";

#[test]
fn without_d_bus_the_files_are_deployed_and_the_reload_runs_once_when_it_is_back() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit("main", &[("web/web.conf", Some("one\n"))], "seed");
    let m = Machine::boot("fault-bus");
    m.put(
        "/etc/systemd/system/web.service",
        &counting_unit("web", None),
        0o644,
    );
    let config = machine_config("fault-bus", &up.url(), &[("web", "action = \"reload\"")]);
    m.put("/etc/provision/config.toml", &config, 0o644);
    m.sh("systemctl daemon-reload && systemctl start web");
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(m.reloads("web"), 1);

    m.sh("systemctl stop dbus.socket dbus.service");
    let two = up.commit("main", &[("web/web.conf", Some("two\n"))], "two");
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 1, "{out}{err}");
    let report = machine_failure_shown(
        &m,
        "web",
        &err,
        &[
            "running reload on unit web.service",
            "cannot reach systemd over D-Bus",
        ],
        1.0,
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("two\n"),
        "the files are in place; only the reload is missing"
    );
    assert_eq!(
        machine_status(&m, "web")["deployed"]["commit"],
        two.as_str()
    );
    assert_eq!(m.reloads("web"), 1);
    assert_eq!(
        machine_sample(&m, "web", "provision_actions_total", RELOAD_FAILED),
        Some(1.0)
    );

    m.sh("systemctl start dbus.socket dbus.service");
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("web: reload web.service: done, unit active"),
        "{out}"
    );
    assert_eq!(m.reloads("web"), 2, "the missed reload ran once");
    assert_eq!(machine_status(&m, "web")["last_pass"]["ok"], true);
    assert_eq!(
        machine_sample(&m, "web", "provision_actions_total", RELOAD_OK),
        Some(2.0)
    );
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(m.reloads("web"), 2, "and only once");
    does_not_claim_the_old_release(&[report]);
}

#[test]
fn a_missing_unit_or_a_failing_reload_is_named_and_retried_once_fixed() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[
            ("nosuch/nosuch.conf", Some("n\n")),
            ("bad/bad.conf", Some("b\n")),
        ],
        "seed",
    );
    let m = Machine::boot("fault-unit");
    m.put(
        "/etc/systemd/system/bad.service",
        &counting_unit("bad", Some("/bin/false")),
        0o644,
    );
    let reload = "action = \"reload\"";
    let config = machine_config(
        "fault-unit",
        &up.url(),
        &[("nosuch", reload), ("bad", reload)],
    );
    m.put("/etc/provision/config.toml", &config, 0o644);
    m.sh("systemctl daemon-reload && systemctl start bad");

    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 1, "{out}{err}");
    let missing =
        machine_failure_shown(&m, "nosuch", &err, &["unit nosuch.service not found"], 1.0);
    let failing = machine_failure_shown(
        &m,
        "bad",
        &err,
        &[
            "reload of unit bad.service finished with result \"failed\"",
            "journalctl -u bad.service",
        ],
        1.0,
    );
    for name in ["nosuch", "bad"] {
        assert_eq!(
            machine_sample(&m, name, "provision_actions_total", RELOAD_FAILED),
            Some(1.0),
            "{name}"
        );
    }
    assert_eq!(m.read("/etc/nosuch/nosuch.conf").as_deref(), Some("n\n"));
    assert_eq!(m.read("/etc/bad/bad.conf").as_deref(), Some("b\n"));

    // The operator installs the missing unit and repairs the broken one.
    m.put(
        "/etc/systemd/system/nosuch.service",
        &counting_unit("nosuch", None),
        0o644,
    );
    m.put(
        "/etc/systemd/system/bad.service",
        &counting_unit("bad", None),
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl start nosuch");
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 0, "{out}{err}");
    for name in ["nosuch", "bad"] {
        assert_eq!(m.reloads(name), 1, "{name}: the pending reload ran once");
        assert_eq!(machine_status(&m, name)["last_pass"]["ok"], true, "{name}");
        assert_eq!(
            machine_sample(&m, name, "provision_actions_total", RELOAD_OK),
            Some(1.0)
        );
        assert_eq!(
            machine_sample(&m, name, "provision_actions_total", RELOAD_FAILED),
            Some(1.0)
        );
    }
    does_not_claim_the_old_release(&[missing, failing]);
}

/// Builds an empty package `fault-demo` and makes it the only thing apt
/// knows about, from a local repository: no network needed to install it.
fn local_apt_repository(m: &Machine) {
    m.sh(
        "set -e
         repo=/var/tmp/fault-repo
         mkdir -p $repo/build/DEBIAN
         printf 'Package: fault-demo\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: Faults <faults@example.invalid>\\nDescription: empty package\\n' > $repo/build/DEBIAN/control
         dpkg-deb --build $repo/build $repo/fault-demo_1.0_all.deb >/dev/null
         cd $repo
         { dpkg-deb -f fault-demo_1.0_all.deb
           echo Filename: ./fault-demo_1.0_all.deb
           echo Size: $(stat -c %s fault-demo_1.0_all.deb)
           echo SHA256: $(sha256sum fault-demo_1.0_all.deb | cut -d' ' -f1)
           echo; } > Packages
         rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
         echo 'deb [trusted=yes] file:/var/tmp/fault-repo ./' > /etc/apt/sources.list.d/fault.list
         apt-get update -qq",
    );
}

#[test]
fn a_missing_package_manager_or_unknown_package_fails_before_anything_is_deployed() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[
            ("demo/demo.conf", Some("d\n")),
            ("ghost/ghost.conf", Some("g\n")),
        ],
        "seed",
    );
    let m = Machine::boot("fault-pkg");
    local_apt_repository(&m);
    let services = |ghost_package: &str| {
        machine_config(
            "fault-pkg",
            &up.url(),
            &[
                ("demo", "package = \"fault-demo\""),
                ("ghost", &format!("package = \"{ghost_package}\"")),
            ],
        )
    };
    m.put(
        "/etc/provision/config.toml",
        &services("no-such-package-xyz"),
        0o644,
    );
    let nothing_deployed = |name: &str| {
        assert_eq!(m.read(&format!("/etc/{name}/{name}.conf")), None, "{name}");
        let s = machine_status(&m, name);
        assert!(s["deployed"].is_null(), "{name}: {s}");
        assert_eq!(
            machine_sample(&m, name, "provision_deployed_commit_info", ""),
            None
        );
    };

    // A machine without any package manager.
    m.sh("mv /usr/bin/apt-get /usr/bin/apt-get.away");
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 1, "{out}{err}");
    for name in ["demo", "ghost"] {
        machine_failure_shown(
            &m,
            name,
            &err,
            &["no supported package manager found", "apt-get"],
            1.0,
        );
        nothing_deployed(name);
    }

    // apt-get is back: demo's package installs; ghost's does not exist.
    m.sh("mv /usr/bin/apt-get.away /usr/bin/apt-get");
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("demo: installed package fault-demo"), "{out}");
    assert_eq!(m.read("/etc/demo/demo.conf").as_deref(), Some("d\n"));
    assert_eq!(machine_status(&m, "demo")["last_pass"]["ok"], true);
    machine_failure_shown(
        &m,
        "ghost",
        &err,
        &[
            "installing package \"no-such-package-xyz\" with apt-get",
            "Unable to locate package",
        ],
        2.0,
    );
    nothing_deployed("ghost");

    // The operator names a package that exists.
    m.put("/etc/provision/config.toml", &services("fault-demo"), 0o644);
    let (code, out, err) = machine_sync(&m);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(m.read("/etc/ghost/ghost.conf").as_deref(), Some("g\n"));
    assert_eq!(
        machine_sample(&m, "ghost", "provision_last_pass_success", ""),
        Some(1.0)
    );
}

/// A server's `ERR` line full of escape sequences is shown escaped, in
/// the pass's error and in `status`, never as raw bytes on the terminal.
#[test]
fn a_servers_err_line_never_reaches_the_terminal_raw() {
    let port = common::free_port();
    let _hostile = FakeServer::on_port(port, Behaviour::SayErr);
    let h = Host::new();
    h.write_config(&app_config(&format!("git://127.0.0.1:{port}/r.git"), ""));
    let out = h.run(&["sync"]);
    let mut seen = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{seen}");
    seen.push_str(&common::output_text(&h.run(&["status", "app"])));
    assert!(seen.contains("\\u{1b}[2Jgo away"), "{seen}");
    for raw in ['\u{1b}', '\u{7}', '\r'] {
        assert!(!seen.contains(raw), "{raw:?} shown raw: {seen:?}");
    }
}

/// A hostile v2 server cannot make a pass read without end: a capability
/// list, a shallow list or a skipped section that never ends is stopped
/// by a bound on its lines, or by `max_fetch_bytes` counting every byte of
/// the answer (not only the pack), well before the pass's `timeout`; the
/// pass fails naming the bound, and the deployed release keeps serving.
#[test]
fn a_server_sending_endless_lists_is_stopped_by_a_bound_not_the_timeout() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let h = deployed_host(&up, "timeout = 20");
    for (what, limit, says) in [
        (
            Flood::Capabilities,
            "",
            "the server listed more than 256 capabilities",
        ),
        (
            Flood::Shallow,
            "",
            "the server sent more than 100000 shallow lines",
        ),
        (
            Flood::Acknowledgments,
            "\nmax_fetch_bytes = 1048576",
            "the server sent more than 1.0 MiB (the service's `max_fetch_bytes`)",
        ),
    ] {
        let port = common::free_port();
        let _hostile = FakeServer::on_port(port, Behaviour::Flood(what));
        h.write_config(&app_config(
            &format!("git://127.0.0.1:{port}/r.git"),
            &format!("timeout = 20{limit}"),
        ));
        let before = serving(&h, &h.state());
        fails_and_keeps_serving(&h, &before, &[says]);
    }
}
