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
/// Ref counts of the bytes-per-poll figure: (tags, branches besides main).
const REFS: [(usize, usize); 3] = [(1, 0), (10_000, 0), (10_000, 1_000)];
/// Polls of the server figure, each a machine polling once.
const SERVER_POLLS: usize = 1_000;

mod content;
mod disk;
mod document;
mod figures;
mod measure;
mod proxy;
mod run;
mod server;
mod stats;

use content::*;
use disk::*;
use document::*;
use figures::*;
use measure::*;
use proxy::*;
use run::*;
use server::*;
use stats::*;

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
    if args.get(1).is_some_and(|a| a == "--serve-https") {
        serve_https(&args[2..]);
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
            traffic: 9,
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
    let tls = Tls::new(&b.path("tls"));
    let https = HttpsServer::start(daemon.base(), &tls);
    let disk = disk(&b, &daemon);
    let sparse = sparse(&b, &daemon);
    let traffic = traffic(&b, &daemon, &https, &tls);
    let profile = profile(&b, &daemon);
    let polls = if opts.quick { 20 } else { SERVER_POLLS };
    let server = server_cpu(&b, &daemon, &https, &tls, polls);
    let reload = reload_in_machine(&b, &daemon);

    facts.load_end = loadavg();
    let doc = render(
        &facts, opts.quick, &noop, &unshare, &change, &reload, &cross, &disk, &sparse, &traffic,
        &server, &profile,
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

    drop(https);
    drop(daemon);
}
