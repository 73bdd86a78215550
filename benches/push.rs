//! `make bench`, push part: what deploying on push saves the git server,
//! and how soon a push is deployed, for a fleet of 1,000 machines over one
//! day with 20 pushes, polling every minute, every 30 minutes, and every
//! 30 minutes with the hook.
//!
//! Measured here, for real: the git server's CPU for one no-op poll and
//! for one poll that brings a new commit (upload-pack's CPU, read from the
//! git daemon's reaped children, over `git://` from a repository with
//! 1,000 tags and 100 branches), the wall time of a pass that deploys, and
//! of an OpenSSH login to a real sshd on loopback. Those figures feed a
//! model of the day (it is the model that has 1,000 machines): a polling
//! machine deploys at its next poll (a phase of its own), a hooked machine
//! at its turn in `fleet serve`'s fan-out of `-j 32` ssh calls.
//!
//! Writes the "Deploy on push" section of docs/BENCHMARKS.md and prints
//! it. Option: `--out PATH`.

use testkit as common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::host::{app_config, seed, Host};
use common::sshd::Sshd;
use common::GitDaemon;

const HEADING: &str = "## Deploy on push";
const MACHINES: u64 = 1000;
const PUSHES: u64 = 20;
const DAY: u64 = 86_400;
const JOBS: u64 = 32;

/// CPU seconds the process `pid` has collected from its reaped children
/// (`cutime + cstime` of /proc/PID/stat).
fn children_cpu(pid: u32) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading the daemon's stat");
    let after = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 16 and 17 of stat(5), counted from `state` as field 3.
    let ticks: f64 =
        fields[13].parse::<f64>().unwrap_or(0.0) + fields[14].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A deterministic phase in [0, period) for machine `m`.
fn phase(m: u64, period: u64) -> u64 {
    let mut x = m
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    x ^= x >> 33;
    x % period
}

struct Costs {
    noop_cpu: f64,
    change_cpu: f64,
    pass: f64,
    ssh: f64,
}

fn measure() -> Costs {
    let d = GitDaemon::start();
    let up = d.repo("config");
    seed(&up);
    up.add_refs(1000, 100);
    let pid = d.pid().expect("the daemon's pid");
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let polls = 200;
    let before = children_cpu(pid);
    for _ in 0..polls {
        h.sync(0);
    }
    let noop_cpu = (children_cpu(pid) - before) / polls as f64;
    let changes = 20;
    let mut walls = Vec::new();
    let before = children_cpu(pid);
    for i in 0..changes {
        up.commit(
            "main",
            &[("app/etc/app.conf", Some(&format!("port = {i}\n")))],
            "a change",
        );
        let start = Instant::now();
        h.sync(0);
        walls.push(start.elapsed().as_secs_f64());
    }
    let change_cpu = (children_cpu(pid) - before) / changes as f64;
    let sshd = Sshd::start().expect("sshd (Debian openssh-server)");
    let mut logins = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let st = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(sshd.path("client_key"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                sshd.known_hosts().display()
            ))
            .args(["-p", &sshd.port.to_string(), "root@127.0.0.1", "true"])
            .status()
            .expect("ssh");
        assert!(st.success(), "ssh login: {}", sshd.log());
        logins.push(start.elapsed().as_secs_f64());
    }
    Costs {
        noop_cpu,
        change_cpu,
        pass: median(walls),
        ssh: median(logins),
    }
}

/// (requests, server CPU s, median s, p99 s) of a day polling every
/// `period` seconds, with the hook or not.
fn day(c: &Costs, period: u64, hook: bool) -> (u64, f64, f64, f64) {
    let polls = MACHINES * (DAY / period);
    let changed = MACHINES * PUSHES;
    let mut latency = Vec::new();
    for p in 0..PUSHES {
        let at = DAY / PUSHES * p + 7 * 60 + 13;
        for m in 0..MACHINES {
            let l = if hook {
                // Its turn in a fan-out of JOBS ssh calls at a time.
                let round = (m / JOBS + 1) as f64;
                round * (c.ssh + c.pass)
            } else {
                let next = (at / period) * period + phase(m, period);
                let next = if next < at { next + period } else { next };
                (next - at) as f64 + c.pass
            };
            latency.push(l);
        }
    }
    let requests = polls + if hook { changed } else { 0 };
    // A change is fetched once per machine: by the hook's pass, or by the
    // first poll after the push; the other requests find nothing new.
    let cpu = (requests - changed) as f64 * c.noop_cpu + changed as f64 * c.change_cpu;
    let med = percentile(&mut latency, 0.5);
    let p99 = percentile(&mut latency, 0.99);
    (requests, cpu, med, p99)
}

fn span(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let c = measure();
    let rows = [
        ("(a) polling every minute", day(&c, 60, false)),
        ("(b) polling every 30 minutes", day(&c, 1800, false)),
        (
            "(c) polling every 30 minutes + the hook",
            day(&c, 1800, true),
        ),
        ("(d) polling every hour + the hook", day(&c, 3600, true)),
    ];
    let a_cpu = rows[0].1 .1;
    let mut section = format!(
        "{HEADING}\n\nA fleet of {MACHINES} machines over one day with {PUSHES} pushes. Measured on this \
         machine: the git server's CPU for one no-op poll, {:.1} ms, and for one poll that brings a new \
         commit, {:.1} ms (upload-pack over `git://`, a repository with 1,000 tags and 100 branches, \
         provision's protocol v2 client); a pass that deploys, {:.0} ms; an OpenSSH login to a real sshd, \
         {:.0} ms. The day is a model fed with those figures (not 1,000 machines): a polling machine \
         deploys at its next poll, each machine at a phase of its own; with the hook, `fleet serve` runs \
         `sync` on the machines {JOBS} at a time, each call an ssh login and a pass, and every machine \
         follows the pushed branch (a hook whose push changes only some services' paths asks fewer). \
         Most of (c)'s cost is the fetch of each change by each machine, which every way pays; the \
         rest is the timer's no-op polls, so a longer `interval` (d) takes the hook's pair under a \
         twentieth of (a). Measured by `cargo bench --bench push` (part of `make bench`).\n\n\
         | fleet of {MACHINES}, one day, {PUSHES} pushes | git requests | git server CPU | of (a) | push to deployed, median | p99 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
        c.noop_cpu * 1000.0,
        c.change_cpu * 1000.0,
        c.pass * 1000.0,
        c.ssh * 1000.0
    );
    for (label, (req, cpu, med, p99)) in rows {
        section.push_str(&format!(
            "| {label} | {req} | {:.0} s | {:.1}% | {} | {} |\n",
            cpu,
            cpu / a_cpu * 100.0,
            span(med),
            span(p99)
        ));
    }
    println!("{section}");
    if let Some(path) = out {
        common::replace_section(&path, HEADING, &section);
    }
}
