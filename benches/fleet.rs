//! `make bench`, fleet part: what `provision fleet status` costs.
//!
//! 1. 1,000 simulated machines: `--ssh-command` points at a stand-in that
//!    runs a real `provision status --json` against a per-machine state
//!    directory (each a copy of one real deployment), `-j 64`. Reported:
//!    wall time, and provision's own CPU per machine: the fan-out's CPU
//!    (itself and everything it ran) minus the CPU of the same 1,000
//!    stand-in calls run by `xargs -P 64`.
//! 2. 20 booted machines, each with its own sshd on loopback, over real
//!    ssh.
//!
//! Writes the "Fleet fan-out" section of docs/BENCHMARKS.md (the rest of
//! the file is the reconcile bench's) and prints it. Options: `--out PATH`,
//! `--quick` (100 simulated machines, 5 real ones).

use testkit as common;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::container::Machine;
use common::GitDaemon;

const HEADING: &str = "## Fleet fan-out";

/// CPU seconds (user + system) of this process's reaped children so far.
#[allow(unsafe_code)]
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is
    // given; nothing else is touched.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut u),
            0,
            "getrusage"
        );
        u
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Runs `cmd` to its end: (wall seconds, CPU seconds of it and its children).
fn timed(cmd: &mut Command) -> (f64, f64) {
    let cpu = children_cpu();
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running a measured command");
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (wall, children_cpu() - cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sh(script: &str) {
    let st = Command::new("sh")
        .args(["-ec", script])
        .status()
        .expect("sh");
    assert!(st.success(), "{script}");
}

fn simulated(bin: &Path, n: usize, runs: usize) -> Vec<String> {
    let d = GitDaemon::start();
    let up = d.repo("fleet");
    up.commit("main", &[("web/web.conf", Some("one\n"))], "one");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    let names: Vec<String> = (0..n).map(|i| format!("m{i:04}")).collect();
    let cfg = base.join("config.toml");
    fs::write(
        &cfg,
        format!(
            "[[services]]\nmachine = [{}]\nservice = \"web\"\nupstream = \"{}\"\n\
             dirs = [ {{ local = \"{}/root/web\", link = \"web\" }} ]\n",
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", "),
            up.url(),
            base.display()
        ),
    )
    .expect("config");
    // One real deployment, copied to every machine's state dir.
    sh(&format!(
        "unshare --mount --propagation private -- {bin} -c {cfg} --state-dir {s}/m0000 --metrics-dir {s}/metrics --machine m0000 sync >/dev/null\n\
         for m in $(seq -f 'm%04g' 1 {last}); do mkdir -p {s}/$m/web && cp {s}/m0000/web/state.json {s}/$m/web/; done",
        bin = bin.display(),
        cfg = cfg.display(),
        s = base.display(),
        last = n - 1
    ));
    let stand_in = base.join("ssh-stand-in");
    fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\nwhile [ \"$1\" != \"--\" ]; do shift; done\nshift\nm=$1; shift\n\
             PROVISION_CONFIG={cfg} PROVISION_STATE_DIR={s}/$m exec sh -c \"$1\"\n",
            cfg = cfg.display(),
            s = base.display()
        ),
    )
    .expect("stand-in");
    sh(&format!("chmod +x {}", stand_in.display()));
    let list = base.join("machines");
    fs::write(&list, names.join("\n") + "\n").expect("machine list");
    let mut fleet = (Vec::new(), Vec::new());
    let mut direct = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (w, c) = timed(
            Command::new(bin)
                .args(["fleet", "-c"])
                .arg(&cfg)
                .arg("--ssh-command")
                .arg(&stand_in)
                .args(["--remote-command"])
                .arg(bin)
                .args(["-j", "64", "status", "--json"]),
        );
        fleet.0.push(w);
        fleet.1.push(c);
        let (w, c) = timed(Command::new("sh").arg("-c").arg(format!(
            "xargs -P 64 -I M {si} -o BatchMode=yes -- M '{bin} --machine M status --json' < {list}",
            si = stand_in.display(),
            bin = bin.display(),
            list = list.display()
        )));
        direct.0.push(w);
        direct.1.push(c);
    }
    let (fw, fc) = (median(fleet.0), median(fleet.1));
    let (dw, dc) = (median(direct.0), median(direct.1));
    // May come out below zero: the two runs differ by less than their noise.
    let own_ms = (fc - dc) * 1000.0 / n as f64;
    vec![
        format!(
            "| {n} simulated machines, `fleet status -j 64` | {fw:.2} s | {:.1} s CPU | {:.2} s, {:.1} s CPU |",
            fc, dw, dc
        ),
        format!(
            "| provision's own CPU per machine (fan-out minus the same calls by xargs) | | {own_ms:.3} ms | |"
        ),
        format!(
            "| targets: under 10 s wall for 1,000 machines; under 1 ms own CPU per machine | {} | {} | |",
            if n >= 1000 { met(fw < 10.0) } else { "(quick run)" },
            met(own_ms < 1.0)
        ),
    ]
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn real(bin: &Path, n: usize, runs: usize) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |f: &str| dir.path().join(f);
    common::ssh_keygen(&p("op"));
    let names: Vec<String> = (0..n).map(|i| format!("real{i:02}")).collect();
    let cfg = format!(
        "[[services]]\nmachine = [{}]\nservice = \"web\"\nupstream = \"git://127.0.0.1:9/none\"\n\
         dirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    fs::write(p("config.toml"), &cfg).expect("config");
    let (mut ssh_config, mut known) = (String::new(), String::new());
    let mut machines = Vec::new();
    for name in &names {
        let key = p(&format!("{name}_host"));
        common::ssh_keygen(&key);
        let port = common::free_port();
        let m = Machine::boot(name);
        m.put("/etc/provision/config.toml", &cfg, 0o644);
        m.serve_ssh(&key, &p("op.pub"), port);
        let public = common::public_key(&key.with_extension("pub"));
        let _ = writeln!(known, "{name} {public}");
        let _ = writeln!(
            ssh_config,
            "Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {}\n  \
             IdentitiesOnly yes\n  HostKeyAlias {name}\n  UserKnownHostsFile {}\n  \
             GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  LogLevel ERROR",
            p("op").display(),
            p("known_hosts").display()
        );
        machines.push(m);
    }
    fs::write(p("known_hosts"), known).expect("known_hosts");
    fs::write(p("ssh_config"), ssh_config).expect("ssh_config");
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..runs {
        let (w, c) = timed(
            Command::new(bin)
                .args(["fleet", "-c"])
                .arg(p("config.toml"))
                .arg("--ssh-config")
                .arg(p("ssh_config"))
                .arg("--remote-command")
                .arg(bin)
                .args(["-j", "64", "status", "--json"]),
        );
        walls.push(w);
        cpus.push(c);
    }
    drop(machines);
    vec![format!(
        "| {n} booted machines over real sshd, `fleet status -j 64` | {:.2} s | {:.2} s CPU (ssh clients included) | |",
        median(walls),
        median(cpus)
    )]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let bin = common::project_root().join("target/release/provision");
    assert!(
        bin.exists(),
        "build the release binary first (make release)"
    );
    if !common::container::require_containers() {
        std::process::exit(1);
    }
    let (n, real_n, runs) = if quick { (100, 5, 1) } else { (1000, 20, 3) };
    let mut rows = simulated(&bin, n, runs);
    rows.extend(real(&bin, real_n, runs));
    let mut section = format!(
        "{HEADING}\n\n`provision fleet status --json -j 64`, median of {runs} run(s). Simulated machines: \
         `--ssh-command` is a stand-in that runs a real `provision status --json` against that \
         machine's own state directory (a copy of one real deployment); the same {n} calls run by \
         `xargs -P 64` are the reference for what the calls themselves cost. CPU is user + system \
         time of the command and everything it ran (`getrusage(RUSAGE_CHILDREN)`).\n\n\
         | figure | wall | CPU | same calls by xargs -P 64 |\n| --- | ---: | ---: | ---: |\n"
    );
    for r in rows {
        section.push_str(&r);
        section.push('\n');
    }
    println!("{section}");
    if let Some(path) = out {
        common::replace_section(&path, HEADING, &section);
    }
}
