//! `make bench`: provision's reconcile pass side by side with what a user
//! would otherwise run — the git CLI sequence gitopper runs per poll, and
//! ansible-pull — and with the physical floor (one ref advertisement round
//! trip, a plain `cp -r`), in one run, on the same repositories served by the
//! same `git daemon` on loopback. Writes docs/BENCHMARKS.md and prints it.
//!
//! Every figure comes from running the real programs as child processes:
//! wall time from spawn to reap, CPU time and peak RSS from `wait4`.
//!
//! Options: `--out PATH` (default docs/BENCHMARKS.md), `--bin PATH` (the
//! provision binary; default the one cargo built), `--quick` (few runs, to
//! try the bench out; the document then says so).

// The bench drives processes and namespaces directly (fork/exec for one
// process's peak memory, unshare, umount): each unsafe block says why.
#![allow(unsafe_code)]

use testkit as common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::container::Machine;
use common::{GitDaemon, Upstream};

/// Service counts of the no-op figure; all services follow one upstream.
const FLEET: [usize; 3] = [1, 10, 50];
/// Upstream history lengths of the disk figure.
const HISTORIES: [usize; 3] = [10, 1_000, 100_000];
/// Files in the large repository of the disk figure.
const LARGE_FILES: usize = 10_000;
/// Tag counts of the bytes-per-poll figure.
const TAGS: [usize; 3] = [1, 1_000, 10_000];

// ---------------------------------------------------------------------------
// Measuring one child process
// ---------------------------------------------------------------------------

/// What `wait4` says about one finished child (or a sequence of them).
#[derive(Clone, Copy, Default, Debug)]
struct Run {
    /// Spawn to reap.
    wall_ms: f64,
    /// User plus system time of the child and the children it reaped.
    cpu_ms: f64,
    /// Largest resident set of the child or any child it reaped, KiB.
    rss_kib: u64,
}

impl Run {
    /// The cost of running `self` and then `next`.
    fn then(self, next: Run) -> Run {
        Run {
            wall_ms: self.wall_ms + next.wall_ms,
            cpu_ms: self.cpu_ms + next.cpu_ms,
            rss_kib: self.rss_kib.max(next.rss_kib),
        }
    }
}

fn timeval_ms(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3
}

/// Runs `cmd` to completion, stdout and stderr into `log`; returns the
/// measurement, the exit code (None when killed by a signal) and the output.
///
/// The command runs under a launcher (this binary with `--launch`) that
/// forks it and reports what `wait4` says. Started straight from the bench,
/// the child's `ru_maxrss` would be at least the bench's own peak: Linux
/// counts the peak of the address space a process had before `execve`, and
/// a child spawned with vfork shares the parent's. The launcher is small, so
/// the peak it hands down is below that of any command measured here.
fn measure(cmd: &mut Command, log: &Path) -> (Run, Option<i32>, String) {
    let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("duplicating {}: {e}", log.display()));
    let result = log.with_extension("rusage");
    let _ = fs::remove_file(&result);
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut launcher = Command::new(exe);
    launcher
        .arg("--launch")
        .arg(&result)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => launcher.env(k, v),
            None => launcher.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        launcher.current_dir(dir);
    }
    let status = launcher
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("launching {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    let report = fs::read_to_string(&result).unwrap_or_default();
    let f: Vec<i64> = report
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [wall_ns, cpu_us, rss_kib, wstatus] = f[..] else {
        panic!("launcher of {cmd:?} reported nothing ({status}):\n{text}");
    };
    let run = Run {
        wall_ms: wall_ns as f64 / 1e6,
        cpu_ms: cpu_us as f64 / 1e3,
        rss_kib: rss_kib as u64,
    };
    let wstatus = wstatus as libc::c_int;
    let code = libc::WIFEXITED(wstatus).then(|| libc::WEXITSTATUS(wstatus));
    (run, code, text)
}

/// `--launch RESULT PROGRAM ARGS...`: forks PROGRAM, waits for it and
/// writes "wall_ns cpu_us maxrss_kib wait_status" to RESULT.
fn launch(args: &[std::ffi::OsString]) -> ! {
    use std::os::unix::ffi::OsStrExt;
    let [result, argv @ ..] = args else {
        eprintln!("--launch RESULT PROGRAM ARGS...");
        std::process::exit(2);
    };
    if argv.is_empty() {
        eprintln!("--launch RESULT PROGRAM ARGS...");
        std::process::exit(2);
    }
    let argv: Vec<std::ffi::CString> = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()).expect("an argument without NUL"))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let start = Instant::now();
    // SAFETY: this process is single-threaded; the child only execs or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ptrs is a NULL-terminated array of valid C strings.
        unsafe {
            libc::execvp(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        eprintln!("fork: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; both pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            eprintln!("wait4: {e}");
            std::process::exit(1);
        }
    }
    let wall = start.elapsed();
    let cpu_us = (timeval_ms(ru.ru_utime) + timeval_ms(ru.ru_stime)) * 1e3;
    let line = format!(
        "{} {} {} {status}\n",
        wall.as_nanos(),
        cpu_us as i64,
        ru.ru_maxrss
    );
    if let Err(e) = fs::write(result, line) {
        eprintln!("writing {}: {e}", Path::new(result).display());
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// [`measure`], failing the bench with the output when the command fails.
fn must(cmd: &mut Command, log: &Path) -> (Run, String) {
    let (run, code, text) = measure(cmd, log);
    if code != Some(0) {
        panic!("{cmd:?} exited with {code:?}:\n{text}");
    }
    (run, text)
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Default, Debug)]
struct Stats {
    runs: usize,
    wall_med: f64,
    wall_p90: f64,
    cpu_med: f64,
    rss_med_kib: u64,
    rss_max_kib: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn stats(runs: &[Run]) -> Stats {
    let wall: Vec<f64> = runs.iter().map(|r| r.wall_ms).collect();
    let cpu: Vec<f64> = runs.iter().map(|r| r.cpu_ms).collect();
    let rss: Vec<f64> = runs.iter().map(|r| r.rss_kib as f64).collect();
    Stats {
        runs: runs.len(),
        wall_med: median(&wall),
        wall_p90: percentile(&wall, 0.9),
        cpu_med: median(&cpu),
        rss_med_kib: median(&rss) as u64,
        rss_max_kib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------
// Disk use
// ---------------------------------------------------------------------------

/// Allocated bytes under `path` (like `du -s`: blocks, hard links once).
fn disk_use(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(meta) = fs::symlink_metadata(p) else {
            return 0;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            return 0;
        }
        let mut total = meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(p) {
                for e in entries.flatten() {
                    total += walk(&e.path(), seen);
                }
            }
        }
        total
    }
    walk(path, &mut Default::default())
}

fn kib(bytes: u64) -> String {
    group((bytes + 512) / 1024)
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// A byte-counting TCP forwarder between clients and the git daemon
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    /// Client to server.
    up: AtomicU64,
    /// Server to client.
    down: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
}

struct Proxy {
    port: u16,
    counts: Arc<Counts>,
}

/// Bytes and connections of one client run through the proxy.
#[derive(Clone, Copy, Default)]
struct Traffic {
    up: u64,
    down: u64,
    connections: u64,
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards each connection to `target`. The
    /// accept thread lives as long as the bench.
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                c.connections.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                thread::spawn(move || {
                    forward(client, target, &c);
                    c.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy { port, counts }
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}.git", self.port)
    }

    /// What went through since the last call, once every connection closed.
    fn take(&self) -> Traffic {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.counts.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "proxy: a connection stayed open 10 s after its client exited"
            );
            thread::sleep(Duration::from_millis(1));
        }
        Traffic {
            up: self.counts.up.swap(0, Ordering::SeqCst),
            down: self.counts.down.swap(0, Ordering::SeqCst),
            connections: self.counts.connections.swap(0, Ordering::SeqCst),
        }
    }
}

fn forward(client: TcpStream, target: u16, counts: &Arc<Counts>) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up_counts = counts.clone();
    let up = thread::spawn(move || pump(c2, s2, &up_counts.up));
    pump(server, client, &counts.down);
    let _ = up.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------
// Content of the upstream repositories
// ---------------------------------------------------------------------------

fn svc_name(i: usize) -> String {
    format!("s{i:02}")
}

/// The four files of one service (about 5 KiB): its `etc` directory.
fn service_files(svc: &str, rev: usize) -> Vec<(String, String)> {
    let mut main = format!("# {svc}: main configuration, revision {rev}\n");
    for i in 0..40 {
        let _ = writeln!(main, "option_{i:02} = \"{svc}-value-{}\"", i * 7 + rev);
    }
    let mut listen = String::new();
    for i in 0..5 {
        let _ = writeln!(listen, "listen 127.0.{}.{i}:{}", rev % 250, 8000 + i);
    }
    let mut limits = String::new();
    for i in 0..10 {
        let _ = writeln!(limits, "limit_{i} = {}", 1024 << (i % 8));
    }
    let mut mime = String::from("# media types\n");
    for i in 0..120 {
        let _ = writeln!(mime, "application/x-{svc}-type-{i:03}    ext{i:03} e{i:03}");
    }
    let base = format!("svc/{svc}/etc");
    vec![
        (format!("{base}/{svc}.conf"), main),
        (format!("{base}/conf.d/10-listen.conf"), listen),
        (format!("{base}/conf.d/20-limits.conf"), limits),
        (format!("{base}/mime.types"), mime),
    ]
}

fn service_link(svc: &str) -> String {
    format!("svc/{svc}/etc")
}

/// ansible-pull's playbook for the first `n` services: the service's
/// directory copied into `dest`, and a handler standing in for the reload
/// (there is no systemd here) that appends to a file.
fn playbook(n: usize) -> String {
    let items: Vec<String> = (0..n).map(svc_name).collect();
    format!(
        r#"- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: service files
      ansible.builtin.copy:
        src: "{{{{ playbook_dir }}}}/svc/{{{{ item }}}}/etc/"
        dest: "{{{{ dest }}}}/{{{{ item }}}}/"
      loop: [{}]
      notify: reload
  handlers:
    - name: reload
      ansible.builtin.command: "sh -c 'echo reload >> {{{{ dest }}}}/reloads'"
"#,
        items.join(", ")
    )
}

fn playbook_name(n: usize) -> String {
    format!("pull-{n}.yml")
}

/// Commits the first `services` services' files and the playbooks for
/// `playbooks` service counts; returns the head.
fn seed(up: &Upstream, services: usize, playbooks: &[usize]) -> String {
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..services {
        files.extend(service_files(&svc_name(i), 0));
    }
    for &n in playbooks {
        files.push((playbook_name(n), playbook(n)));
    }
    files.push((
        "README.md".into(),
        "Configuration of the bench fleet.\n".into(),
    ));
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    up.commit("main", &refs, "fleet configuration")
}

/// Lets clients ask for a partial clone, as hosting servers do.
fn allow_filter(up: &Upstream) {
    common::run(common::git_cmd(up.bare()).args(["config", "uploadpack.allowFilter", "true"]));
}

/// `count` lightweight tags on the head, packed like a server's refs.
fn add_tags(up: &Upstream, count: usize) {
    let head = up.head("main");
    let mut input = String::new();
    for i in 0..count {
        let _ = writeln!(input, "create refs/tags/v{i:05} {head}");
    }
    let mut cmd = common::git_cmd(up.bare());
    cmd.args(["update-ref", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawning git update-ref");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing tags to git update-ref");
    assert!(
        child.wait().expect("waiting for git update-ref").success(),
        "git update-ref --stdin failed"
    );
    common::run(common::git_cmd(up.bare()).args(["pack-refs", "--all"]));
}

/// One commit adding `files` files of about 1 KiB under `data/`, written
/// with fast-import straight into the bare repository.
fn add_large_tree(up: &Upstream, files: usize) -> String {
    let parent = up.head("main");
    let mut stream = String::with_capacity(files * 1200);
    let msg = "data: large tree\n";
    let _ = write!(
        stream,
        "commit refs/heads/main\nauthor {a} <{ae}> 1700000000 +0000\ncommitter {a} <{ae}> 1700000000 +0000\ndata {}\n{msg}from {parent}\n",
        msg.len(),
        a = common::AUTHOR_NAME,
        ae = common::AUTHOR_EMAIL,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for f in 0..files {
        let mut content = String::with_capacity(1100);
        while content.len() < 1000 {
            // xorshift: content that does not compress to nothing.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = writeln!(content, "{x:016x} {f}");
        }
        let _ = write!(
            stream,
            "M 100644 inline data/d{:03}/f{f:05}.txt\ndata {}\n{content}\n",
            f / 100,
            content.len()
        );
    }
    stream.push_str("done\n");
    let mut cmd = common::git_cmd(up.bare());
    cmd.args(["fast-import", "--quiet", "--done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawning git fast-import");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stream.as_bytes())
        .expect("writing to git fast-import");
    assert!(
        child.wait().expect("waiting for git fast-import").success(),
        "git fast-import failed"
    );
    up.head("main")
}

// ---------------------------------------------------------------------------
// The bench
// ---------------------------------------------------------------------------

struct Opts {
    out: PathBuf,
    bin: PathBuf,
    quick: bool,
}

fn parse_args() -> Opts {
    let mut opts = Opts {
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md"),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_provision")),
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => opts.out = args.next().expect("--out PATH").into(),
            "--bin" => opts.bin = args.next().expect("--bin PATH").into(),
            "--quick" => opts.quick = true,
            // cargo bench passes --bench; nothing else is expected.
            "--bench" => {}
            other => {
                eprintln!("reconcile bench: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    opts
}

/// How many times each figure is taken.
struct Reps {
    /// Floor and provision no-op passes, per service count.
    noop: usize,
    /// git CLI no-op polls (N sequences each), per service count.
    git_noop: [usize; 3],
    /// ansible-pull no-op runs, per service count.
    ansible_noop: [usize; 3],
    change: usize,
    ansible_change: usize,
    /// Bytes-per-poll runs (the counts do not vary; a few show it).
    traffic: usize,
}

struct Bench {
    scratch: tempfile::TempDir,
    bin: PathBuf,
    git: PathBuf,
    log: PathBuf,
    reps: Reps,
}

/// One provision machine: config, state dir, metrics dir, mount root.
struct Prov {
    dir: PathBuf,
}

impl Prov {
    fn new(dir: PathBuf, services: &[(String, String)]) -> Prov {
        let p = Prov { dir };
        fs::create_dir_all(&p.dir).expect("creating a provision dir");
        let mut config = String::new();
        for (svc, url) in services {
            let _ = write!(
                config,
                "[[services]]\nmachine = \"bench\"\nservice = \"{svc}\"\nupstream = \"{url}\"\naction = \"\"\ndirs = [ {{ local = \"{}\", link = \"{}\" }} ]\n\n",
                p.local(svc).display(),
                service_link(svc)
            );
        }
        fs::write(p.config(), config).expect("writing provision config");
        p
    }
    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn local(&self, svc: &str) -> PathBuf {
        self.dir.join("root").join(svc)
    }
}

impl Drop for Bench {
    /// The scratch dir holds mount points: detach them first, or removing
    /// it fails (also when the bench fails half-way).
    fn drop(&mut self) {
        unmount_under(self.scratch.path());
    }
}

impl Bench {
    fn path(&self, rel: &str) -> PathBuf {
        self.scratch.path().join(rel)
    }

    /// The git CLI as a user runs it: its default configuration, none of
    /// this machine's.
    fn git(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.git);
        peer_env(&mut cmd);
        cmd.current_dir(dir);
        cmd
    }

    fn sync(&self, p: &Prov) -> Command {
        let mut cmd = Command::new(&self.bin);
        unit_env(&mut cmd);
        cmd.arg("--config")
            .arg(p.config())
            .arg("--state-dir")
            .arg(p.state())
            .arg("--metrics-dir")
            .arg(p.dir.join("metrics"))
            .args(["--machine", "bench", "sync"]);
        cmd
    }

    /// A pass that must deploy (first pass, or a new commit).
    fn prov_deploy(&self, p: &Prov, n: usize) -> Run {
        let (run, out) = must(&mut self.sync(p), &self.log);
        let deployed = out.lines().filter(|l| l.contains(": deployed ")).count();
        assert_eq!(deployed, n, "expected {n} deployments:\n{out}");
        run
    }

    /// A pass with nothing to do.
    fn prov_noop(&self, p: &Prov, n: usize) -> Run {
        let (run, out) = must(&mut self.sync(p), &self.log);
        let same = out
            .lines()
            .filter(|l| l.contains(": up to date at "))
            .count();
        assert_eq!(same, n, "expected {n} services up to date:\n{out}");
        run
    }

    fn ls_remote(&self, url: &str, head: &str) -> Run {
        let (run, out) = must(
            self.git(self.scratch.path())
                .args(["ls-remote", url, "refs/heads/main"]),
            &self.log,
        );
        assert!(out.contains(head), "ls-remote did not show {head}:\n{out}");
        run
    }

    /// gitopper's initial checkout: blobless, sparse, only the service's
    /// directory in the work tree.
    fn git_clone(&self, url: &str, dir: &Path, svc: &str) -> Run {
        let parent = dir.parent().expect("checkout has a parent");
        fs::create_dir_all(parent).expect("creating checkout parent");
        let (a, _) = must(
            self.git(parent)
                .args([
                    "clone",
                    "--filter=blob:none",
                    "--no-checkout",
                    "--sparse",
                    url,
                ])
                .arg(dir),
            &self.log,
        );
        let (b, _) = must(
            self.git(dir)
                .args(["sparse-checkout", "set", &service_link(svc)]),
            &self.log,
        );
        let (c, _) = must(self.git(dir).arg("checkout"), &self.log);
        a.then(b).then(c)
    }

    /// What gitopper runs per poll in an existing checkout; `reload` is run
    /// when the diff names files (gitopper then reloads the service).
    /// Returns the cost and whether files changed.
    fn git_poll(&self, dir: &Path, reload: Option<&Path>) -> (Run, bool) {
        let (a, _) = must(self.git(dir).arg("stash"), &self.log);
        let (b, _) = must(self.git(dir).arg("fetch"), &self.log);
        let (c, diff) = must(
            self.git(dir)
                .args(["diff", "--name-only", "main", "origin/main"]),
            &self.log,
        );
        let (d, _) = must(self.git(dir).arg("merge"), &self.log);
        let changed = !diff.trim().is_empty();
        let mut run = a.then(b).then(c).then(d);
        if let (true, Some(file)) = (changed, reload) {
            let (r, _) = must(
                Command::new("sh")
                    .arg("-c")
                    .arg("echo reload >> \"$1\"")
                    .arg("sh")
                    .arg(file),
                &self.log,
            );
            run = run.then(r);
        }
        (run, changed)
    }

    fn ansible_pull(&self, url: &str, dir: &Path, dest: &Path, n: usize) -> (Run, String) {
        let mut cmd = Command::new("ansible-pull");
        peer_env(&mut cmd);
        cmd.env("HOME", self.path("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            // ansible refuses to start without a UTF-8 locale.
            .env("LC_ALL", "C.UTF-8")
            .current_dir(self.scratch.path())
            .args(["-U", url, "-d"])
            .arg(dir)
            .args(["-i", "localhost,", "-e"])
            .arg(format!("dest={}", dest.display()))
            .arg(playbook_name(n));
        must(&mut cmd, &self.log)
    }
}

/// provision as a systemd unit runs it: without the TLS variables a shell
/// may carry (they decide which CA bundle libgit2 loads, if any).
fn unit_env(cmd: &mut Command) {
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
}

/// Environment of the peers (git, ansible-pull): default configuration,
/// without this machine's git configuration.
fn peer_env(cmd: &mut Command) {
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_TRACE",
        "GIT_PROTOCOL",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", common::AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", common::AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", common::COMMITTER_NAME)
        .env("GIT_COMMITTER_EMAIL", common::COMMITTER_EMAIL)
        .env("LC_ALL", "C");
}

fn progress(text: &str) {
    eprintln!("[bench] {text}");
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

/// Figure 1 (and the CPU per pass): one group per service count.
struct Noop {
    n: usize,
    floor: Stats,
    provision: Stats,
    git: Stats,
    ansible: Stats,
}

/// Figure 2.
struct Change {
    floor: Stats,
    provision: Stats,
    git: Stats,
    ansible: Stats,
}

/// Figure 4: one upstream.
struct DiskRow {
    upstream: String,
    bare: u64,
    prov_mirror: u64,
    prov_releases: u64,
    prov_first: Run,
    git_dotgit: u64,
    git_tree: u64,
    git_first: Run,
    ansible_dir: u64,
    ansible_first: Run,
}

/// Figure 5: one tag count.
struct TrafficRow {
    tags: usize,
    provision: Traffic,
    fetch: Traffic,
    ls_remote: Traffic,
    /// `git ls-remote --heads`: protocol v2 with a ref prefix.
    ls_heads: Traffic,
    provision_wall: f64,
    fetch_wall: f64,
}

/// Cross-check of two figures with hyperfine, an independent timer.
struct CrossCheck {
    floor_ms: f64,
    provision_ms: f64,
}

fn noop_and_change(b: &Bench, d: &GitDaemon) -> (Vec<Noop>, Stats, Change, Option<CrossCheck>) {
    let up = d.repo("fleet");
    allow_filter(&up);
    let max = *FLEET.iter().max().expect("fleet sizes");
    let mut head = seed(&up, max, &FLEET);
    let url = up.url();

    progress(&format!(
        "setting up: provision for {FLEET:?} services, {max} git checkouts, ansible-pull"
    ));
    let provs: BTreeMap<usize, Prov> = FLEET
        .iter()
        .map(|&n| {
            let services: Vec<(String, String)> =
                (0..n).map(|i| (svc_name(i), url.clone())).collect();
            let p = Prov::new(b.path(&format!("provision-{n}")), &services);
            b.prov_deploy(&p, n);
            (n, p)
        })
        .collect();
    let checkouts: Vec<PathBuf> = (0..max)
        .map(|i| {
            let dir = b.path(&format!("git/{}", svc_name(i)));
            b.git_clone(&url, &dir, &svc_name(i));
            dir
        })
        .collect();
    // ansible-pull copies file by file, each a module run (seconds per
    // service): its own first deployment is measured in the disk figure.
    // Here its checkout and destination are made the way that deployment
    // leaves them (a depth-1 clone, the files copied), so that its first run
    // is already a no-op; the runs check that it changed nothing.
    let ansible_dirs: BTreeMap<usize, (PathBuf, PathBuf)> = FLEET
        .iter()
        .map(|&n| {
            let dir = b.path(&format!("ansible-{n}/checkout"));
            let dest = b.path(&format!("ansible-{n}/dest"));
            must(
                b.git(b.scratch.path())
                    .args(["clone", "-q", "--depth", "1", &url])
                    .arg(&dir),
                &b.log,
            );
            fs::create_dir_all(&dest).expect("creating ansible's destination");
            for i in 0..n {
                must(
                    Command::new("cp")
                        .arg("-r")
                        .arg(dir.join(service_link(&svc_name(i))))
                        .arg(dest.join(svc_name(i))),
                    &b.log,
                );
            }
            (n, (dir, dest))
        })
        .collect();

    let mut unshare = Vec::new();
    let mut groups = Vec::new();
    for (k, &n) in FLEET.iter().enumerate() {
        progress(&format!("no-op passes, {n} services"));
        let (mut floor, mut prov, mut git, mut ans) = (vec![], vec![], vec![], vec![]);
        for rep in 0..b.reps.noop {
            floor.push(b.ls_remote(&url, &head));
            prov.push(b.prov_noop(&provs[&n], n));
            if n == 1 {
                let (r, _) = must(
                    Command::new("unshare").args([
                        "--mount",
                        "--propagation",
                        "private",
                        "--",
                        "true",
                    ]),
                    &b.log,
                );
                unshare.push(r);
            }
            if rep < b.reps.git_noop[k] {
                let mut total = Run::default();
                for dir in &checkouts[..n] {
                    let (r, changed) = b.git_poll(dir, None);
                    assert!(
                        !changed,
                        "a no-op git poll saw changes in {}",
                        dir.display()
                    );
                    total = total.then(r);
                }
                git.push(total);
            }
            if rep < b.reps.ansible_noop[k] {
                let (dir, dest) = &ansible_dirs[&n];
                let (r, out) = b.ansible_pull(&url, dir, dest, n);
                assert!(
                    out.contains("changed=0") && out.contains("failed=0"),
                    "a no-op ansible-pull changed something:\n{out}"
                );
                ans.push(r);
            }
        }
        groups.push(Noop {
            n,
            floor: stats(&floor),
            provision: stats(&prov),
            git: stats(&git),
            ansible: stats(&ans),
        });
    }

    let cross = hyperfine_check(b, &url, &provs[&1]);

    progress("change-applied passes, 1 service");
    let svc = svc_name(0);
    let prov = &provs[&1];
    let checkout = &checkouts[0];
    let (ans_dir, ans_dest) = &ansible_dirs[&1];
    let git_reloads = b.path("git-reloads");
    let (mut floor, mut provr, mut git, mut ans) = (vec![], vec![], vec![], vec![]);
    for rep in 0..b.reps.change {
        let files = service_files(&svc, rep + 1);
        let (path, content) = &files[0];
        head = up.commit(
            "main",
            &[(path, Some(content))],
            &format!("{svc}: revision {}", rep + 1),
        );
        let rel = path.trim_start_matches(&format!("{}/", service_link(&svc)));

        let ls = b.ls_remote(&url, &head);
        let (cp, _) = must(
            Command::new("cp")
                .arg("-r")
                .arg(checkout.join(service_link(&svc)))
                .arg(b.path(&format!("floor-copy-{rep}"))),
            &b.log,
        );
        floor.push(ls.then(cp));

        provr.push(b.prov_deploy(prov, 1));
        let local = prov.local(&svc).join(rel);
        assert_eq!(
            fs::read_to_string(&local).ok().as_deref(),
            Some(content.as_str()),
            "provision did not put the new {rel} in place"
        );

        let (r, changed) = b.git_poll(checkout, Some(&git_reloads));
        assert!(changed, "git poll did not see the new commit");
        assert_eq!(
            fs::read_to_string(checkout.join(path)).ok().as_deref(),
            Some(content.as_str()),
            "git merge did not put the new {rel} in place"
        );
        git.push(r);

        if rep < b.reps.ansible_change {
            let (r, out) = b.ansible_pull(&url, ans_dir, ans_dest, 1);
            assert!(
                out.contains("RUNNING HANDLER [reload]"),
                "ansible-pull ran no reload:\n{out}"
            );
            assert_eq!(
                fs::read_to_string(ans_dest.join(&svc).join(rel))
                    .ok()
                    .as_deref(),
                Some(content.as_str()),
                "ansible-pull did not put the new {rel} in place"
            );
            ans.push(r);
        }
    }
    let change = Change {
        floor: stats(&floor),
        provision: stats(&provr),
        git: stats(&git),
        ansible: stats(&ans),
    };
    (groups, stats(&unshare), change, cross)
}

/// The floor and provision's 1-service no-op pass timed by hyperfine.
fn hyperfine_check(b: &Bench, url: &str, prov: &Prov) -> Option<CrossCheck> {
    let Some(hyperfine) = common::find_tool("hyperfine") else {
        progress("hyperfine not found: no cross-check");
        return None;
    };
    progress("hyperfine cross-check");
    let json = b.path("hyperfine.json");
    let sync = b.sync(prov);
    let mut provision = vec![sync.get_program().to_string_lossy().into_owned()];
    provision.extend(sync.get_args().map(|a| a.to_string_lossy().into_owned()));
    let mut cmd = Command::new(hyperfine);
    peer_env(&mut cmd);
    unit_env(&mut cmd);
    cmd.args(["-N", "--warmup", "3", "--runs"])
        .arg(b.reps.noop.to_string())
        .arg("--export-json")
        .arg(&json)
        .arg(format!(
            "{} ls-remote {url} refs/heads/main",
            b.git.display()
        ))
        .arg(provision.join(" "));
    must(&mut cmd, &b.log);
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).expect("reading hyperfine's JSON"))
            .expect("hyperfine's JSON parses");
    let med = |i: usize| doc["results"][i]["median"].as_f64().map(|s| s * 1e3);
    Some(CrossCheck {
        floor_ms: med(0)?,
        provision_ms: med(1)?,
    })
}

/// Figure 2b: a change applied by provision with a real reload, in a
/// machine booted with systemd as PID 1: one service reloaded over D-Bus,
/// one with `action = ""`, both changed by every commit. Timed inside the
/// machine (bash's `$EPOCHREALTIME` around the pass).
struct Reload {
    with_reload: Stats,
    without: Stats,
}

fn reload_in_machine(b: &Bench, d: &GitDaemon) -> Result<Reload, String> {
    if !common::container::require_containers() {
        return Err("no systemd machine can be started here (see the bench's stderr)".into());
    }
    progress("change-applied passes with a reload, in a systemd machine");
    let up = d.repo("units");
    let commit = |rev: usize| -> (String, String) {
        let mut files = service_files("web", rev);
        files.extend(service_files("plain", rev));
        let refs: Vec<(&str, Option<&str>)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), Some(c.as_str())))
            .collect();
        up.commit("main", &refs, &format!("revision {rev}"));
        files.swap_remove(0)
    };
    commit(0);
    let m = Machine::boot("bench-reload");
    let unit = |reload: &str| {
        format!(
            "[Unit]\nDescription=bench service\n[Service]\nExecStart=/bin/sleep infinity\n{reload}"
        )
    };
    m.put(
        "/etc/systemd/system/web.service",
        &unit("ExecReload=/bin/sh -c 'echo reloaded >> /var/log/web.reloads'\n"),
        0o644,
    );
    m.put("/etc/systemd/system/plain.service", &unit(""), 0o644);
    m.sh("systemctl daemon-reload && systemctl start web.service plain.service");
    let url = up.url();
    let config = format!(
        "[[services]]\nmachine = \"bench\"\nservice = \"web\"\nupstream = \"{url}\"\naction = \"reload\"\ndirs = [ {{ local = \"/etc/bench-web\", link = \"svc/web/etc\" }} ]\n\n\
         [[services]]\nmachine = \"bench\"\nservice = \"plain\"\nupstream = \"{url}\"\naction = \"\"\ndirs = [ {{ local = \"/etc/bench-plain\", link = \"svc/plain/etc\" }} ]\n"
    );
    m.put("/etc/provision/bench.toml", &config, 0o644);
    let sync = format!(
        "{} --config /etc/provision/bench.toml --state-dir /var/lib/provision-bench \
         --metrics-dir /var/lib/provision-bench/metrics --machine bench sync",
        b.bin.display()
    );
    m.sh(&sync);
    let timed = |svc: &str| -> f64 {
        let script = format!(
            "s=$EPOCHREALTIME; {sync} {svc} >/tmp/bench.out 2>&1; c=$?; e=$EPOCHREALTIME; echo $s $e $c"
        );
        let out = m.exec(&["bash", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let f: Vec<&str> = text.split_whitespace().collect();
        let pass = m.read("/tmp/bench.out").unwrap_or_default();
        assert!(
            f.len() == 3 && f[2] == "0" && pass.contains(": deployed "),
            "provision sync {svc} in the machine: {text}\n{pass}"
        );
        let t = |w: &str| w.parse::<f64>().expect("a time from $EPOCHREALTIME");
        (t(f[1]) - t(f[0])) * 1e3
    };
    let (mut with_reload, mut without) = (vec![], vec![]);
    for rep in 0..b.reps.change {
        let (path, content) = commit(rep + 1);
        let order: [&str; 2] = if rep % 2 == 0 {
            ["web", "plain"]
        } else {
            ["plain", "web"]
        };
        for svc in order {
            let ms = timed(svc);
            if svc == "web" {
                with_reload.push(ms);
            } else {
                without.push(ms);
            }
        }
        let rel = path.trim_start_matches("svc/web/etc/");
        assert_eq!(
            m.read(&format!("/etc/bench-web/{rel}")).as_deref(),
            Some(content.as_str()),
            "the new {rel} is not in place in the machine"
        );
    }
    let reloads = m.sh("wc -l < /var/log/web.reloads");
    assert_eq!(
        reloads.trim(),
        (b.reps.change + 1).to_string(),
        "web.service was not reloaded once per pass"
    );
    let wall = |v: &[f64]| -> Stats {
        let runs: Vec<Run> = v
            .iter()
            .map(|&w| Run {
                wall_ms: w,
                ..Run::default()
            })
            .collect();
        stats(&runs)
    };
    Ok(Reload {
        with_reload: wall(&with_reload),
        without: wall(&without),
    })
}

fn disk(b: &Bench, d: &GitDaemon) -> Vec<DiskRow> {
    let mut rows = Vec::new();
    let mut cases: Vec<(String, String)> = HISTORIES
        .iter()
        .map(|h| {
            (
                format!("history-{h}"),
                format!("{} commits", group(*h as u64)),
            )
        })
        .collect();
    cases.push((
        "large".into(),
        format!("{} files, 3 commits", group(LARGE_FILES as u64)),
    ));
    for (i, (name, label)) in cases.iter().enumerate() {
        progress(&format!("disk: upstream with {label}"));
        let up = d.repo(name);
        allow_filter(&up);
        seed(&up, 1, &[1]);
        if let Some(&h) = HISTORIES.get(i) {
            up.commit_many("main", h - 1);
        } else {
            add_large_tree(&up, LARGE_FILES);
            let files = service_files(&svc_name(0), 1);
            up.commit(
                "main",
                &[(&files[0].0, Some(&files[0].1))],
                "s00: revision 1",
            );
        }
        common::run(common::git_cmd(up.bare()).args(["gc", "-q"]));
        let url = up.url();
        let svc = svc_name(0);

        let p = Prov::new(
            b.path(&format!("disk-{name}/provision")),
            &[(svc.clone(), url.clone())],
        );
        let prov_first = b.prov_deploy(&p, 1);
        let prov_mirror = disk_use(&p.state().join(".mirrors"));
        let prov_total = disk_use(&p.state());

        let co = b.path(&format!("disk-{name}/git/checkout"));
        let git_first = b.git_clone(&url, &co, &svc);
        let git_dotgit = disk_use(&co.join(".git"));
        let git_total = disk_use(&co);

        let adir = b.path(&format!("disk-{name}/ansible/checkout"));
        let adest = b.path(&format!("disk-{name}/ansible/dest"));
        let (ansible_first, _) = b.ansible_pull(&url, &adir, &adest, 1);

        rows.push(DiskRow {
            upstream: label.clone(),
            bare: disk_use(up.bare()),
            prov_mirror,
            prov_releases: prov_total - prov_mirror,
            prov_first,
            git_dotgit,
            git_tree: git_total - git_dotgit,
            git_first,
            ansible_dir: disk_use(&adir),
            ansible_first,
        });
    }
    rows
}

fn traffic(b: &Bench, d: &GitDaemon) -> Vec<TrafficRow> {
    let proxy = Proxy::start(d.port());
    let mut rows = Vec::new();
    for &tags in &TAGS {
        progress(&format!("bytes per no-op poll: {tags} tags"));
        let name = format!("tags-{tags}");
        let up = d.repo(&name);
        allow_filter(&up);
        let head = seed(&up, 1, &[]);
        add_tags(&up, tags);
        let url = proxy.url(&name);
        let svc = svc_name(0);

        let p = Prov::new(
            b.path(&format!("{name}/provision")),
            &[(svc.clone(), url.clone())],
        );
        b.prov_deploy(&p, 1);
        let co = b.path(&format!("{name}/git/checkout"));
        b.git_clone(&url, &co, &svc);
        proxy.take();

        let (mut pv, mut fv, mut lv, mut hv) = (vec![], vec![], vec![], vec![]);
        let (mut pw, mut fw) = (vec![], vec![]);
        for _ in 0..b.reps.traffic {
            pw.push(b.prov_noop(&p, 1).wall_ms);
            pv.push(proxy.take());
            let (r, _) = must(b.git(&co).arg("fetch"), &b.log);
            fw.push(r.wall_ms);
            fv.push(proxy.take());
            b.ls_remote(&url, &head);
            lv.push(proxy.take());
            let (_, out) = must(
                b.git(b.scratch.path())
                    .args(["ls-remote", "--heads", &url, "main"]),
                &b.log,
            );
            assert!(
                out.contains(&head),
                "ls-remote --heads did not show {head}:\n{out}"
            );
            hv.push(proxy.take());
        }
        let mid = |v: &[Traffic]| -> Traffic {
            let med = |f: fn(&Traffic) -> u64| {
                median(&v.iter().map(|t| f(t) as f64).collect::<Vec<_>>()) as u64
            };
            Traffic {
                up: med(|t| t.up),
                down: med(|t| t.down),
                connections: med(|t| t.connections),
            }
        };
        rows.push(TrafficRow {
            tags,
            provision: mid(&pv),
            fetch: mid(&fv),
            ls_remote: mid(&lv),
            ls_heads: mid(&hv),
            provision_wall: median(&pw),
            fetch_wall: median(&fw),
        });
    }
    rows
}

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

struct Facts {
    date: String,
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    git: String,
    ansible: String,
    hyperfine: String,
    provision: String,
    rustc: String,
    /// Load averages (1, 5, 15 min) when the bench started and ended.
    load_start: String,
    load_end: String,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn facts(b: &Bench) -> Facts {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let memory = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / 1048576.0))
        .unwrap_or_else(|| "unknown".into());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = first_line(common::git_cmd(repo).args(["rev-parse", "--short=12", "HEAD"]));
    let dirty = common::try_run(common::git_cmd(repo).args([
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]))
    .is_some_and(|s| !s.is_empty());
    Facts {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        cpu,
        cores: thread::available_parallelism().map_or(0, |n| n.get()),
        memory,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        git: format!(
            "{} ({})",
            first_line(Command::new(&b.git).arg("--version")),
            b.git.display()
        ),
        ansible: first_line(Command::new("ansible-pull").arg("--version")),
        hyperfine: first_line(Command::new("hyperfine").arg("--version")),
        provision: if dirty {
            format!("{commit} with uncommitted changes to src/")
        } else {
            commit
        },
        rustc: first_line(Command::new("rustc").arg("--version")),
        load_start: loadavg(),
        load_end: String::new(),
    }
}

/// A Markdown table: first column left-aligned, the figures right-aligned.
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    table_aligned(out, head, rows, " ---: |");
}

fn table_aligned(out: &mut String, head: &[&str], rows: &[Vec<String>], rest: &str) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- |" } else { rest })
            .collect::<String>()
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// KiB as MiB; 0 (nothing ran) as a dash.
fn mib(kib: u64) -> String {
    if kib == 0 {
        return "–".into();
    }
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn stat_row(label: &str, s: &Stats, n: usize, floor: f64) -> Vec<String> {
    if s.runs == 0 {
        let mut row = vec![label.to_string(), "0".into()];
        row.extend(std::iter::repeat_n("–".to_string(), 6));
        return row;
    }
    vec![
        label.to_string(),
        s.runs.to_string(),
        ms(s.wall_med),
        ms(s.wall_p90),
        ratio(s.wall_med, floor),
        ms(s.cpu_med),
        ms(s.cpu_med / n as f64),
        mib(s.rss_med_kib),
    ]
}

#[allow(clippy::too_many_arguments)]
fn render(
    f: &Facts,
    quick: bool,
    noop: &[Noop],
    unshare: &Stats,
    change: &Change,
    reload: &Result<Reload, String>,
    cross: &Option<CrossCheck>,
    disk: &[DiskRow],
    traffic: &[TrafficRow],
) -> String {
    let mut o = String::new();
    o.push_str("# Benchmarks\n\n");
    o.push_str(
        "Generated by `make bench` (`benches/reconcile.rs`); do not edit by hand, run it again.\n\
         Every figure of one run was taken on the same machine, against the same\n\
         `git daemon` on 127.0.0.1, and the tools ran interleaved, run after run.\n\n",
    );
    if quick {
        o.push_str("**Quick run (`--quick`): too few runs for the figures to mean much.**\n\n");
    }

    o.push_str("## Machine\n\n");
    table_aligned(
        &mut o,
        &["fact", "value"],
        &[
            vec!["date".into(), f.date.clone()],
            vec!["CPU".into(), f.cpu.clone()],
            vec!["cores".into(), f.cores.to_string()],
            vec!["memory".into(), f.memory.clone()],
            vec!["kernel".into(), f.kernel.clone()],
            vec!["git (peer, floor, server)".into(), f.git.clone()],
            vec!["ansible".into(), f.ansible.clone()],
            vec!["hyperfine".into(), f.hyperfine.clone()],
            vec!["provision commit".into(), f.provision.clone()],
            vec!["rustc".into(), f.rustc.clone()],
            vec![
                "load average (1, 5, 15 min) at start / end".into(),
                format!("{} / {}", f.load_start, f.load_end),
            ],
        ],
        " --- |",
    );

    o.push_str("## What runs\n\n");
    o.push_str(
        "- **provision**: `target/release/provision --config … --state-dir … --metrics-dir … \
         --machine bench sync`, one service per `[[services]]` entry (`action = \"\"`, \
         `depth` 3, one `dirs` entry mounting `svc/sNN/etc`), all on one upstream, with no \
         `SSL_CERT_FILE` or `SSL_CERT_DIR` in its environment (as a systemd unit runs it). \
         The bench process runs in its own private mount namespace (entered once, at start), \
         so provision's bind mounts persist from one pass to the next as they do on a host, \
         and no pass pays for a wrapper.\n\
         - **git CLI** (what gitopper runs per poll, one checkout per service): `git stash`, \
         `git fetch`, `git diff --name-only main origin/main`, `git merge`, each a process, \
         in a checkout made by `git clone --filter=blob:none --no-checkout --sparse` + \
         `git sparse-checkout set svc/sNN/etc` + `git checkout`; git with its default \
         configuration (none of the machine's). After a change, a reload stand-in \
         (`sh -c 'echo reload >> FILE'`) runs when the diff names files.\n\
         - **ansible-pull**: `ansible-pull -U git://… -d DIR -i localhost, -e dest=… pull-N.yml`; \
         the playbook (committed in the upstream, `connection: local`, `gather_facts: false`) \
         copies the N services' directories with one `ansible.builtin.copy` task looping over \
         them and notifies a `command` handler that appends to a file. One run covers N services.\n\
         - **floor**: `git ls-remote git://… refs/heads/main` (one ref advertisement round \
         trip to the same server); after a change, that plus `cp -r` of the service's files.\n\
         - Each service has 4 files (about 5 KiB). Wall time is spawn to reap; CPU is user + \
         system time and peak RSS is `ru_maxrss`, both from `wait4` (so they include the \
         processes a tool runs and reaps). A sequence of processes adds up wall and CPU and \
         takes the largest RSS. Each command is forked by a small launcher \
         process, so that `ru_maxrss` is the command's own peak and not the bench's. p90 is \
         nearest-rank.\n",
    );
    o.push_str(
        "- The machine is shared: other work runs on its cores meanwhile (the load average is \
         in the table above). A process that mostly computes stretches in wall time with that \
         load; one that mostly waits, like the floor, hardly does. CPU times are the steadier \
         figures.\n",
    );
    let _ = writeln!(
        o,
        "- Running provision in a fresh mount namespace instead (as `unshare --mount \
         --propagation private -- provision …`, which tests do) costs the wrapper: \
         `unshare --mount --propagation private -- true` takes {} ms wall (median of {}), \
         {} ms CPU; a pass run that way also finds its mounts gone and remounts them.\n",
        ms(unshare.wall_med),
        unshare.runs,
        ms(unshare.cpu_med)
    );

    // Targets.
    let one = noop.iter().find(|g| g.n == 1);
    let fifty = noop.iter().find(|g| g.n == 50);
    let mut targets: Vec<Vec<String>> = Vec::new();
    if let Some(g) = one {
        let r = g.provision.wall_med / g.floor.wall_med;
        targets.push(vec![
            "no-op pass, 1 service: within 1.2× of the floor".into(),
            format!(
                "{} ms vs {} ms: {:.2}×",
                ms(g.provision.wall_med),
                ms(g.floor.wall_med),
                r
            ),
            met(r <= 1.2).into(),
        ]);
        targets.push(vec![
            "no-op pass, 1 service: below the git CLI sequence".into(),
            format!(
                "{} ms vs {} ms",
                ms(g.provision.wall_med),
                ms(g.git.wall_med)
            ),
            met(g.provision.wall_med < g.git.wall_med).into(),
        ]);
    }
    if let Some(g) = fifty {
        let r = g.provision.wall_med / g.floor.wall_med;
        targets.push(vec![
            "no-op pass, 50 services: within 2× of the floor".into(),
            format!(
                "{} ms vs {} ms: {:.2}×",
                ms(g.provision.wall_med),
                ms(g.floor.wall_med),
                r
            ),
            met(r <= 2.0).into(),
        ]);
        let r = g.provision.wall_med / g.git.wall_med;
        targets.push(vec![
            "no-op pass, 50 services: at most 1/10 of 50 git CLI sequences".into(),
            format!(
                "{} ms vs {} ms: 1/{:.0}",
                ms(g.provision.wall_med),
                ms(g.git.wall_med),
                1.0 / r
            ),
            met(r <= 0.1).into(),
        ]);
        let r = g.provision.wall_med / g.ansible.wall_med;
        targets.push(vec![
            "no-op pass, 50 services: at most 1/50 of ansible-pull".into(),
            format!(
                "{} ms vs {} ms: 1/{:.0}",
                ms(g.provision.wall_med),
                ms(g.ansible.wall_med),
                1.0 / r
            ),
            if g.ansible.runs == 0 {
                "not measured".into()
            } else {
                met(r <= 1.0 / 50.0).into()
            },
        ]);
    }
    let cpu: Vec<String> = noop
        .iter()
        .map(|g| {
            format!(
                "{} ms at {} service{}",
                ms(g.provision.cpu_med / g.n as f64),
                g.n,
                if g.n == 1 { "" } else { "s" }
            )
        })
        .collect();
    let (cpu_met, cpu_missed): (Vec<&Noop>, Vec<&Noop>) = noop
        .iter()
        .partition(|g| g.provision.cpu_med / (g.n as f64) < 5.0);
    let counts = |v: &[&Noop]| {
        v.iter()
            .map(|g| g.n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    targets.push(vec![
        "CPU per no-op pass per service under 5 ms".into(),
        cpu.join("; "),
        if cpu_missed.is_empty() {
            met(true).into()
        } else if cpu_met.is_empty() {
            met(false).into()
        } else {
            format!(
                "**met** at {} services, **not met** at {}",
                counts(&cpu_met),
                counts(&cpu_missed)
            )
        },
    ]);
    let rss_max = noop
        .iter()
        .map(|g| g.provision.rss_max_kib)
        .chain([change.provision.rss_max_kib])
        .max()
        .unwrap_or(0);
    targets.push(vec![
        "peak RSS of a pass under 20 MiB".into(),
        format!(
            "{} MiB (largest of every no-op and change-applied pass)",
            mib(rss_max)
        ),
        met(rss_max < 20 * 1024).into(),
    ]);
    let hist: Vec<&DiskRow> = disk.iter().take(HISTORIES.len()).collect();
    if let (Some(a), Some(z)) = (hist.first(), hist.last()) {
        let sa = a.prov_mirror + a.prov_releases;
        let sz = z.prov_mirror + z.prov_releases;
        targets.push(vec![
            "disk independent of history length".into(),
            format!(
                "{} KiB at {}, {} KiB at {}",
                kib(sa),
                a.upstream,
                kib(sz),
                z.upstream
            ),
            met((sz as f64) <= (sa as f64) * 1.1).into(),
        ]);
    }
    if let (Some(a), Some(z)) = (traffic.first(), traffic.last()) {
        let ta = a.provision.up + a.provision.down;
        let tz = z.provision.up + z.provision.down;
        targets.push(vec![
            "no-op poll bytes independent of the number of tags".into(),
            format!(
                "{} B with {} tag{}, {} B with {} tags",
                group(ta),
                group(a.tags as u64),
                if a.tags == 1 { "" } else { "s" },
                group(tz),
                group(z.tags as u64)
            ),
            met((tz as f64) <= (ta as f64) * 1.1).into(),
        ]);
    }
    o.push_str("## Targets\n\n");
    table(&mut o, &["target", "measured", ""], &targets);

    o.push_str("## 1. No-op pass (nothing changed upstream)\n\n");
    o.push_str(
        "All services follow one upstream. `× floor` is the median wall time over the \
         floor's median in the same group. `CPU/svc` is the pass's CPU time divided by the \
         number of services.\n\n",
    );
    let head = [
        "tool",
        "runs",
        "median ms",
        "p90 ms",
        "× floor",
        "CPU ms",
        "CPU/svc ms",
        "peak RSS MiB",
    ];
    for g in noop {
        let _ = writeln!(
            o,
            "### {} service{}\n",
            g.n,
            if g.n == 1 { "" } else { "s" }
        );
        let fl = g.floor.wall_med;
        table(
            &mut o,
            &head,
            &[
                stat_row("floor: `git ls-remote`", &g.floor, g.n, fl),
                stat_row("**provision sync**", &g.provision, g.n, fl),
                stat_row(
                    &format!(
                        "git CLI, {} checkout{}",
                        g.n,
                        if g.n == 1 { "" } else { "s" }
                    ),
                    &g.git,
                    g.n,
                    fl,
                ),
                stat_row("ansible-pull", &g.ansible, g.n, fl),
            ],
        );
        let _ = writeln!(
            o,
            "Wall time relative to provision's: git CLI {}, ansible-pull {}.\n",
            ratio(g.git.wall_med, g.provision.wall_med),
            ratio(g.ansible.wall_med, g.provision.wall_med)
        );
    }
    if let Some(c) = cross {
        let _ = writeln!(
            o,
            "Cross-check with hyperfine (`-N`, 3 warm-up runs): floor {} ms, provision \
             (1 service) {} ms median.\n",
            ms(c.floor_ms),
            ms(c.provision_ms)
        );
    }

    o.push_str("## 2. Change applied (one service, one changed file)\n\n");
    o.push_str(
        "From the start of the pass until the new content is in place (and, for the peers, \
         the reload stand-in has run). Here provision runs with `action = \"\"` (no systemd \
         on this host); 2b below measures its pass with a real reload.\n\n",
    );
    let fl = change.floor.wall_med;
    table(
        &mut o,
        &head,
        &[
            stat_row("floor: `git ls-remote` + `cp -r`", &change.floor, 1, fl),
            stat_row("**provision sync**", &change.provision, 1, fl),
            stat_row("git CLI + reload stand-in", &change.git, 1, fl),
            stat_row("ansible-pull (copy + handler)", &change.ansible, 1, fl),
        ],
    );

    o.push_str("### 2b. With a real reload\n\n");
    match reload {
        Ok(r) => {
            o.push_str(
                "In a machine booted with systemd as PID 1 (namespaces over an overlay of \
                 `/`, the same git daemon): two services changed by every commit, one with \
                 `action = \"reload\"` (a D-Bus call to systemd, waiting for the job and \
                 checking the unit's state; its `ExecReload` appends to a file), one with \
                 `action = \"\"`, each synced alone. Timed inside the machine with bash's \
                 `$EPOCHREALTIME` around `provision sync NAME`.\n\n",
            );
            table(
                &mut o,
                &["pass", "runs", "median ms", "p90 ms"],
                &[
                    vec![
                        "`action = \"reload\"`".into(),
                        r.with_reload.runs.to_string(),
                        ms(r.with_reload.wall_med),
                        ms(r.with_reload.wall_p90),
                    ],
                    vec![
                        "`action = \"\"`".into(),
                        r.without.runs.to_string(),
                        ms(r.without.wall_med),
                        ms(r.without.wall_p90),
                    ],
                    vec![
                        "the reload (difference of the medians)".into(),
                        "".into(),
                        ms(r.with_reload.wall_med - r.without.wall_med),
                        "".into(),
                    ],
                ],
            );
        }
        Err(why) => {
            let _ = writeln!(o, "Not measured: {why}.\n");
        }
    }

    o.push_str("## 3. Peak RSS of a pass\n\n");
    o.push_str("Largest `ru_maxrss` over all runs of each figure, MiB.\n\n");
    let mut rss_rows: Vec<Vec<String>> = noop
        .iter()
        .map(|g| {
            vec![
                format!("no-op, {} service{}", g.n, if g.n == 1 { "" } else { "s" }),
                mib(g.provision.rss_max_kib),
                mib(g.git.rss_max_kib),
                mib(g.ansible.rss_max_kib),
                mib(g.floor.rss_max_kib),
            ]
        })
        .collect();
    rss_rows.push(vec![
        "change applied, 1 service".into(),
        mib(change.provision.rss_max_kib),
        mib(change.git.rss_max_kib),
        mib(change.ansible.rss_max_kib),
        mib(change.floor.rss_max_kib),
    ]);
    for d in disk {
        rss_rows.push(vec![
            format!("first deployment, {}", d.upstream),
            mib(d.prov_first.rss_kib),
            mib(d.git_first.rss_kib),
            mib(d.ansible_first.rss_kib),
            "–".into(),
        ]);
    }
    table(
        &mut o,
        &["pass", "provision", "git CLI", "ansible-pull", "floor"],
        &rss_rows,
    );

    o.push_str("## 4. Disk used per service\n\n");
    o.push_str(
        "One service mounting `svc/s00/etc` (4 files) of the upstream, after its first \
         deployment. provision: its state dir (`.mirrors/` shallow mirror, depth 3; \
         releases, manifests and state). git CLI: the blobless sparse checkout (`.git` and \
         the work tree). ansible-pull: its `-d` checkout (ansible-pull clones with depth 1 \
         and checks out the whole tree). Allocated KiB, like `du -s`. The upstream's bare \
         repository is shown for scale. The time is the first deployment's wall time.\n\n",
    );
    let rows: Vec<Vec<String>> = disk
        .iter()
        .map(|d| {
            vec![
                d.upstream.clone(),
                kib(d.bare),
                format!(
                    "**{}** ({} + {})",
                    kib(d.prov_mirror + d.prov_releases),
                    kib(d.prov_mirror),
                    kib(d.prov_releases)
                ),
                format!(
                    "{} ({} + {})",
                    kib(d.git_dotgit + d.git_tree),
                    kib(d.git_dotgit),
                    kib(d.git_tree)
                ),
                kib(d.ansible_dir),
                format!(
                    "{} / {} / {}",
                    ms(d.prov_first.wall_ms),
                    ms(d.git_first.wall_ms),
                    ms(d.ansible_first.wall_ms)
                ),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "upstream",
            "bare repo KiB",
            "provision KiB (mirror + releases)",
            "git CLI KiB (.git + tree)",
            "ansible-pull KiB",
            "first deploy ms (provision / git / ansible)",
        ],
        &rows,
    );

    o.push_str("## 5. Bytes per no-op poll\n\n");
    o.push_str(
        "Through a byte-counting TCP forwarder between the client and `git daemon`; the \
         upstream has one branch and N lightweight tags (packed refs). Bytes sent by the \
         client / received by it, and TCP connections opened, median of the runs. Wall \
         times go through the forwarder too. git speaks protocol v2 here: `git fetch` asks \
         for branches and tags, `git ls-remote URL PATTERN` sends no ref prefix (its \
         patterns match the end of ref names) so it receives every ref, and \
         `git ls-remote --heads` asks for `refs/heads/` only. provision (libgit2) speaks \
         protocol v0, where the server advertises every ref: the bytes it sends are its \
         request line alone.\n\n",
    );
    let tr = |t: &Traffic| format!("{} / {} ({})", group(t.up), group(t.down), t.connections);
    let rows: Vec<Vec<String>> = traffic
        .iter()
        .map(|r| {
            vec![
                group(r.tags as u64),
                format!("**{}**", tr(&r.provision)),
                tr(&r.fetch),
                tr(&r.ls_remote),
                tr(&r.ls_heads),
                format!("{} / {}", ms(r.provision_wall), ms(r.fetch_wall)),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "tags",
            "provision B sent / received (conns)",
            "`git fetch`",
            "`git ls-remote … refs/heads/main` (the floor)",
            "`git ls-remote --heads … main`",
            "wall ms (provision / git fetch)",
        ],
        &rows,
    );
    o
}

// ---------------------------------------------------------------------------

/// Makes this process's mount namespace its own, so the bind mounts of the
/// passes stay in it (and vanish with it) and never reach the host's.
fn private_mount_namespace() {
    // SAFETY: plain system calls on this still single-threaded process.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            panic!(
                "unshare(CLONE_NEWNS): {} (the bench runs as root)",
                std::io::Error::last_os_error()
            );
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            panic!("making / private: {}", std::io::Error::last_os_error());
        }
    }
}

/// Detaches every mount under `dir`, so it can be removed.
fn unmount_under(dir: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(|p| p.replace("\\040", " "))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--launch") {
        launch(&args[2..]);
    }
    let opts = parse_args();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("reconcile bench: run as root (provision bind-mounts); `make bench` does");
        std::process::exit(2);
    }
    for tool in ["git", "git-daemon", "ansible-pull", "unshare", "cp"] {
        if common::find_tool(tool).is_none() {
            eprintln!("reconcile bench: `{tool}` is missing; `make bench` installs it");
            std::process::exit(1);
        }
    }
    if !opts.bin.exists() {
        eprintln!(
            "reconcile bench: {} is missing: cargo build --release",
            opts.bin.display()
        );
        std::process::exit(1);
    }
    private_mount_namespace();
    let start = Instant::now();

    let reps = if opts.quick {
        Reps {
            noop: 5,
            git_noop: [5, 3, 2],
            ansible_noop: [1, 1, 0],
            change: 3,
            ansible_change: 2,
            traffic: 2,
        }
    } else {
        Reps {
            noop: 25,
            git_noop: [25, 25, 10],
            ansible_noop: [5, 2, 1],
            change: 15,
            ansible_change: 5,
            traffic: 3,
        }
    };
    let scratch = tempfile::Builder::new()
        .prefix("provision-bench-")
        .tempdir()
        .expect("creating the bench's scratch dir");
    let b = Bench {
        log: scratch.path().join("last-command.log"),
        scratch,
        bin: opts.bin.clone(),
        git: common::find_tool("git").expect("git on PATH"),
        reps,
    };
    let mut facts = facts(&b);
    let daemon = GitDaemon::start();

    let (noop, unshare, change, cross) = noop_and_change(&b, &daemon);
    let disk = disk(&b, &daemon);
    let traffic = traffic(&b, &daemon);
    let reload = reload_in_machine(&b, &daemon);

    facts.load_end = loadavg();
    let doc = render(
        &facts, opts.quick, &noop, &unshare, &change, &reload, &cross, &disk, &traffic,
    );
    let mut doc = doc;
    let _ = writeln!(
        doc,
        "_The whole bench took {:.0} s._",
        start.elapsed().as_secs_f64()
    );
    if let Some(dir) = opts.out.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    fs::write(&opts.out, &doc).unwrap_or_else(|e| panic!("writing {}: {e}", opts.out.display()));
    println!("{doc}");
    eprintln!("[bench] wrote {}", opts.out.display());

    drop(daemon);
}
