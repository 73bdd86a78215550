//! The document.

use super::*;

pub(crate) struct Facts {
    pub(crate) date: String,
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) git: String,
    pub(crate) ansible: String,
    pub(crate) hyperfine: String,
    pub(crate) provision: String,
    pub(crate) rustc: String,
    /// Load averages (1, 5, 15 min) when the bench started and ended.
    pub(crate) load_start: String,
    pub(crate) load_end: String,
}

pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn first_line(cmd: &mut Command) -> String {
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

pub(crate) fn facts(b: &Bench) -> Facts {
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
pub(crate) fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    table_aligned(out, head, rows, " ---: |");
}

pub(crate) fn table_aligned(out: &mut String, head: &[&str], rows: &[Vec<String>], rest: &str) {
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

pub(crate) fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// KiB as MiB; 0 (nothing ran) as a dash.
pub(crate) fn mib(kib: u64) -> String {
    if kib == 0 {
        return "–".into();
    }
    format!("{:.1}", kib as f64 / 1024.0)
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

pub(crate) fn stat_row(label: &str, s: &Stats, n: usize, floor: f64) -> Vec<String> {
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
pub(crate) fn render(
    f: &Facts,
    quick: bool,
    noop: &[Noop],
    unshare: &Stats,
    change: &Change,
    reload: &Result<Reload, String>,
    cross: &Option<CrossCheck>,
    disk: &[DiskRow],
    sparse: &SparseRow,
    traffic: &[TrafficRow],
    server: &[ServerRow],
    profile: &Result<Profile, String>,
) -> String {
    let mut o = String::new();
    o.push_str("# Benchmarks\n\n");
    o.push_str(
        "Generated by `make bench` (`benches/reconcile/`); do not edit by hand, run it again.\n\
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
         `SSL_CERT_FILE`, `SSL_CERT_DIR` or `RUST_BACKTRACE` in its environment (as a \
         systemd unit runs it). \
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
         - **https** (sections 5 and 6): `git http-backend` run per request as a CGI program \
         behind TLS (a self-signed certificate for 127.0.0.1, EC P-256) by a small server \
         process of the bench's own; provision then runs with `SSL_CERT_DIR` naming a hashed \
         directory holding that certificate (as /etc/ssl/certs would), and git with \
         `GIT_SSL_CAINFO`.\n\
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
    for transport in ["git://", "https://"] {
        let rows: Vec<&TrafficRow> = traffic
            .iter()
            .filter(|r| r.transport == transport)
            .collect();
        if let (Some(a), Some(z)) = (rows.first(), rows.last()) {
            let ta = a.provision.up + a.provision.down;
            let tz = z.provision.up + z.provision.down;
            targets.push(vec![
                format!(
                    "no-op poll over {transport}: at most 2 KiB with {} tags and {} branches",
                    group(z.tags as u64),
                    group(z.branches as u64)
                ),
                format!(
                    "{} B ({} B with {} tag{})",
                    group(tz),
                    group(ta),
                    group(a.tags as u64),
                    if a.tags == 1 { "" } else { "s" }
                ),
                met(tz <= 2048).into(),
            ]);
            targets.push(vec![
                format!("no-op pass over {transport}: CPU does not grow with the refs"),
                format!(
                    "{} ms with {} ref{}, {} ms with {} refs",
                    ms(a.provision_cpu),
                    group((a.tags + a.branches + 1) as u64),
                    if a.tags + a.branches == 0 { "" } else { "s" },
                    ms(z.provision_cpu),
                    group((z.tags + z.branches + 1) as u64)
                ),
                met(z.provision_cpu <= a.provision_cpu * 1.2 + 0.5).into(),
            ]);
        }
    }
    if let Some(g) = one {
        let r = g.provision.wall_med / g.git.wall_med;
        targets.push(vec![
            "no-op pass, 1 service: at most 1/5 of the git CLI sequence's wall time".into(),
            format!(
                "{} ms vs {} ms: 1/{:.1}",
                ms(g.provision.wall_med),
                ms(g.git.wall_med),
                1.0 / r
            ),
            met(r <= 0.2).into(),
        ]);
    }
    let sp = sparse.prov_mirror + sparse.prov_releases;
    let sg = sparse.git_dotgit + sparse.git_tree;
    targets.push(vec![
        format!(
            "disk, a service using {} of {} files: at most 1.5× a blobless sparse clone",
            group(sparse.used as u64),
            group(sparse.files as u64)
        ),
        format!(
            "{} KiB vs {} KiB: {:.2}×",
            kib(sp),
            kib(sg),
            sp as f64 / sg as f64
        ),
        met((sp as f64) <= 1.5 * sg as f64).into(),
    ]);
    for r in server {
        let ratio = r.provision_ms / r.git_ms;
        targets.push(vec![
            format!(
                "server CPU, {} no-op polls over {}, {} tags: at most 1/3 of gitopper's",
                group(r.polls as u64),
                r.transport,
                group(r.tags as u64)
            ),
            format!(
                "{:.0} ms vs {:.0} ms: 1/{:.1} (the floor of one request: {:.0} ms)",
                r.provision_ms,
                r.git_ms,
                1.0 / ratio,
                r.floor_ms
            ),
            met(ratio <= 1.0 / 3.0).into(),
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

    o.push_str("### 1b. Where a no-op pass spends its instructions\n\n");
    match profile {
        Ok(p) => {
            o.push_str(
                "User-space instructions counted by valgrind's callgrind (exact, unlike CPU \
                 times on a shared machine; the kernel's part, exec and page faults, is not \
                 in them). Process start is `provision --version`: the dynamic loader \
                 relocating the binary and binding libssl and libcrypto, which https \
                 needs.\n\n",
            );
            table(
                &mut o,
                &["what", "instructions", "share of the pass"],
                &[
                    vec![
                        "process start (`provision --version`)".into(),
                        group(p.start),
                        format!("{:.0}%", 100.0 * p.start as f64 / p.noop as f64),
                    ],
                    vec![
                        "the pass itself (config, ref check, state, metrics)".into(),
                        group(p.noop.saturating_sub(p.start)),
                        format!(
                            "{:.0}%",
                            100.0 * p.noop.saturating_sub(p.start) as f64 / p.noop as f64
                        ),
                    ],
                    vec![
                        "**no-op `sync`, 1 service, git://**".into(),
                        format!("**{}**", group(p.noop)),
                        "100%".into(),
                    ],
                ],
            );
        }
        Err(why) => {
            let _ = writeln!(o, "Not measured: {why}.\n");
        }
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

    o.push_str("### 4b. A service using 1% of a large repository\n\n");
    let _ = writeln!(
        o,
        "One service mounting `data/d000` ({} of the {} files, 1%) of an upstream with that \
         many files. provision: its mirror (blobs only under the mounted path, every tree of \
         its 3 commits) and its release. git: `git clone --depth 1 --filter=blob:none \
         --sparse` and `git sparse-checkout set data/d000` (`.git` and the work tree). \
         Allocated KiB.\n",
        group(sparse.used as u64),
        group(sparse.files as u64)
    );
    table(
        &mut o,
        &[
            "files used",
            "provision KiB (mirror + releases)",
            "git KiB (.git + tree)",
            "ratio",
        ],
        &[vec![
            format!(
                "{} of {}",
                group(sparse.used as u64),
                group(sparse.files as u64)
            ),
            format!(
                "**{}** ({} + {})",
                kib(sp),
                kib(sparse.prov_mirror),
                kib(sparse.prov_releases)
            ),
            format!(
                "{} ({} + {})",
                kib(sg),
                kib(sparse.git_dotgit),
                kib(sparse.git_tree)
            ),
            format!("{:.2}×", sp as f64 / sg as f64),
        ]],
    );

    o.push_str("## 5. Bytes per no-op poll\n\n");
    o.push_str(
        "Through a byte-counting TCP forwarder between the client and the server (`git daemon` \
         for git://; `git http-backend` behind TLS for https://, one process per request as \
         a CGI server runs it); the upstream has `main`, N lightweight tags and M other \
         branches (packed refs). Bytes sent by the client / received by it, and TCP \
         connections opened, median of the runs; over https the bytes include TLS. Wall \
         times go through the forwarder too. git speaks protocol v2: `git fetch` asks for \
         branches and tags, `git ls-remote URL PATTERN` sends no ref prefix (its patterns \
         match the end of ref names) so it receives every ref, and `git ls-remote --heads` \
         asks for `refs/heads/` only. provision speaks protocol v2 too and asks `ls-refs` \
         for `refs/heads/main` alone; over https, once a server spoke v2 to a mirror, a \
         poll is one POST without the capability request. CPU is provision's whole pass.\n\n",
    );
    let tr = |t: &Traffic| format!("{} / {} ({})", group(t.up), group(t.down), t.connections);
    let rows: Vec<Vec<String>> = traffic
        .iter()
        .map(|r| {
            vec![
                r.transport.to_string(),
                group(r.tags as u64),
                group(r.branches as u64),
                format!("**{}**", tr(&r.provision)),
                ms(r.provision_cpu),
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
            "transport",
            "tags",
            "branches",
            "provision B sent / received (conns)",
            "provision CPU ms",
            "`git fetch`",
            "`git ls-remote … refs/heads/main` (the floor)",
            "`git ls-remote --heads … main`",
            "wall ms (provision / git fetch)",
        ],
        &rows,
    );

    o.push_str("## 6. Server CPU per no-op poll\n\n");
    o.push_str(
        "The git server's CPU time while a fleet polls once per machine with nothing new: \
         user + system time of the server process and of every process it ran and reaped \
         (`upload-pack`, `http-backend`), from /proc, over all polls. provision: one no-op \
         `sync` per machine. gitopper: its per-poll sequence, of which only `git fetch` \
         reaches the server (stash, diff and merge are local). The machines are simulated: \
         each poll comes from one state directory or checkout, which the server cannot tell \
         from a thousand machines. The floor is the least any client can ask: `git \
         ls-remote --heads URL main`, one `ls-refs` of the branches on one connection (over \
         git://, the daemon forks and runs one `upload-pack` for it; over https, one request \
         runs `http-backend` and `upload-pack`). The https server is single-threaded and \
         runs one CGI process per request; TLS handshakes count as the server's time.\n\n",
    );
    let rows: Vec<Vec<String>> = server
        .iter()
        .map(|r| {
            vec![
                r.transport.to_string(),
                format!("{} / {}", group(r.tags as u64), group(r.branches as u64)),
                group(r.polls as u64),
                format!(
                    "**{:.0}** ({:.2} per poll)",
                    r.provision_ms,
                    r.provision_ms / r.polls as f64
                ),
                format!(
                    "{:.0} ({:.2} per poll)",
                    r.git_ms,
                    r.git_ms / r.polls as f64
                ),
                format!(
                    "{:.0} ({:.2} per poll)",
                    r.floor_ms,
                    r.floor_ms / r.polls as f64
                ),
                format!("1/{:.1}", r.git_ms / r.provision_ms.max(0.001)),
            ]
        })
        .collect();
    table(
        &mut o,
        &[
            "transport",
            "tags / branches",
            "polls",
            "provision: server CPU ms",
            "gitopper's sequence: server CPU ms",
            "floor, `git ls-remote --heads`: server CPU ms",
            "provision / gitopper",
        ],
        &rows,
    );
    o
}
