//! Figures.

use super::*;

/// Figure 1 (and the CPU per pass): one group per service count.
pub(crate) struct Noop {
    pub(crate) n: usize,
    pub(crate) floor: Stats,
    pub(crate) provision: Stats,
    pub(crate) git: Stats,
    pub(crate) ansible: Stats,
}

/// Figure 2.
pub(crate) struct Change {
    pub(crate) floor: Stats,
    pub(crate) provision: Stats,
    pub(crate) git: Stats,
    pub(crate) ansible: Stats,
}

/// Figure 4: one upstream.
pub(crate) struct DiskRow {
    pub(crate) upstream: String,
    pub(crate) bare: u64,
    pub(crate) prov_mirror: u64,
    pub(crate) prov_releases: u64,
    pub(crate) prov_first: Run,
    pub(crate) git_dotgit: u64,
    pub(crate) git_tree: u64,
    pub(crate) git_first: Run,
    pub(crate) ansible_dir: u64,
    pub(crate) ansible_first: Run,
}

/// Figure 5: one transport and ref count.
pub(crate) struct TrafficRow {
    pub(crate) transport: &'static str,
    pub(crate) tags: usize,
    pub(crate) branches: usize,
    /// CPU of provision's no-op pass, median, ms.
    pub(crate) provision_cpu: f64,
    pub(crate) provision: Traffic,
    pub(crate) fetch: Traffic,
    pub(crate) ls_remote: Traffic,
    /// `git ls-remote --heads`: protocol v2 with a ref prefix.
    pub(crate) ls_heads: Traffic,
    pub(crate) provision_wall: f64,
    pub(crate) fetch_wall: f64,
}

/// Cross-check of two figures with hyperfine, an independent timer.
pub(crate) struct CrossCheck {
    pub(crate) floor_ms: f64,
    pub(crate) provision_ms: f64,
}

pub(crate) fn noop_and_change(
    b: &Bench,
    d: &GitDaemon,
) -> (Vec<Noop>, Stats, Change, Option<CrossCheck>) {
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
pub(crate) fn hyperfine_check(b: &Bench, url: &str, prov: &Prov) -> Option<CrossCheck> {
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
pub(crate) struct Reload {
    pub(crate) with_reload: Stats,
    pub(crate) without: Stats,
}

pub(crate) fn reload_in_machine(b: &Bench, d: &GitDaemon) -> Result<Reload, String> {
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

pub(crate) fn disk(b: &Bench, d: &GitDaemon) -> Vec<DiskRow> {
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

pub(crate) fn traffic(b: &Bench, d: &GitDaemon, https: &HttpsServer, tls: &Tls) -> Vec<TrafficRow> {
    let proxies = [
        ("git://", Proxy::start(d.port())),
        ("https://", Proxy::start(https.port)),
    ];
    let mut rows = Vec::new();
    for &(tags, branches) in &REFS {
        let name = format!("refs-{tags}-{branches}");
        let up = d.repo(&name);
        allow_filter(&up);
        let head = seed(&up, 1, &[]);
        add_tags(&up, tags);
        add_branches(&up, branches);
        for (transport, proxy) in &proxies {
            progress(&format!(
                "bytes per no-op poll: {tags} tags, {branches} branches, {transport}"
            ));
            let url = if *transport == "git://" {
                proxy.url(&name)
            } else {
                HttpsServer::url(proxy.port, &name)
            };
            let svc = svc_name(0);
            let slug = format!("{name}-{}", transport.trim_end_matches("://"));
            let mut p = Prov::new(
                b.path(&format!("{slug}/provision")),
                &[(svc.clone(), url.clone())],
            );
            if *transport == "https://" {
                p.ca_dir = Some(tls.ca_dir.clone());
            }
            b.prov_deploy(&p, 1);
            let co = b.path(&format!("{slug}/git/checkout"));
            b.git_clone(&url, &co, &svc);
            proxy.take();

            let (mut pv, mut fv, mut lv, mut hv) = (vec![], vec![], vec![], vec![]);
            let (mut pw, mut pc, mut fw) = (vec![], vec![], vec![]);
            for _ in 0..b.reps.traffic {
                let run = b.prov_noop(&p, 1);
                pw.push(run.wall_ms);
                pc.push(run.cpu_ms);
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
                transport,
                tags,
                branches,
                provision_cpu: median(&pc),
                provision: mid(&pv),
                fetch: mid(&fv),
                ls_remote: mid(&lv),
                ls_heads: mid(&hv),
                provision_wall: median(&pw),
                fetch_wall: median(&fw),
            });
        }
    }
    rows
}

/// Figure 4b: a service using 1% of a large repository.
pub(crate) struct SparseRow {
    pub(crate) files: usize,
    pub(crate) used: usize,
    pub(crate) prov_mirror: u64,
    pub(crate) prov_releases: u64,
    pub(crate) git_dotgit: u64,
    pub(crate) git_tree: u64,
}

/// provision against `git clone --depth 1 --filter=blob:none --sparse` plus
/// a sparse checkout of the same directory: 100 files of 10,000.
pub(crate) fn sparse(b: &Bench, d: &GitDaemon) -> SparseRow {
    progress("disk: a service using 1% of a 10,000-file repository");
    let up = d.repo("sparse");
    allow_filter(&up);
    seed(&up, 1, &[]);
    add_large_tree(&up, LARGE_FILES);
    common::run(common::git_cmd(up.bare()).args(["gc", "-q"]));
    let link = "data/d000";
    let p = Prov::with_links(
        b.path("sparse/provision"),
        &[(svc_name(0), up.url(), link.to_string())],
    );
    b.prov_deploy(&p, 1);
    let prov_mirror = disk_use(&p.state().join(".mirrors"));
    let prov_total = disk_use(&p.state());
    let co = b.path("sparse/git/checkout");
    fs::create_dir_all(b.path("sparse/git")).expect("creating the checkout's parent");
    must(
        b.git(&b.path("sparse/git"))
            .args([
                "clone",
                "--depth",
                "1",
                "--filter=blob:none",
                "--sparse",
                &up.url(),
            ])
            .arg(&co),
        &b.log,
    );
    must(b.git(&co).args(["sparse-checkout", "set", link]), &b.log);
    let git_dotgit = disk_use(&co.join(".git"));
    let used = fs::read_dir(co.join(link)).map(|d| d.count()).unwrap_or(0);
    SparseRow {
        files: LARGE_FILES,
        used,
        prov_mirror,
        prov_releases: prov_total - prov_mirror,
        git_dotgit,
        git_tree: disk_use(&co) - git_dotgit,
    }
}
