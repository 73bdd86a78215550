//! The bench: options, servers, and one interleaved round of every tool.

use super::*;

pub(crate) struct Opts {
    pub(crate) out: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) quick: bool,
}

pub(crate) fn parse_args() -> Opts {
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
pub(crate) struct Reps {
    /// Floor and provision no-op passes, per service count.
    pub(crate) noop: usize,
    /// git CLI no-op polls (N sequences each), per service count.
    pub(crate) git_noop: [usize; 3],
    /// ansible-pull no-op runs, per service count.
    pub(crate) ansible_noop: [usize; 3],
    pub(crate) change: usize,
    pub(crate) ansible_change: usize,
    /// Bytes-per-poll runs (the counts do not vary; a few show it).
    pub(crate) traffic: usize,
}

pub(crate) struct Bench {
    pub(crate) scratch: tempfile::TempDir,
    pub(crate) bin: PathBuf,
    pub(crate) git: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) reps: Reps,
}

/// One provision machine: config, state dir, metrics dir, mount root.
pub(crate) struct Prov {
    pub(crate) dir: PathBuf,
    /// The hashed CA directory of the bench's https server, for https
    /// upstreams (as /etc/ssl/certs would hold it).
    pub(crate) ca_dir: Option<PathBuf>,
}

impl Prov {
    pub(crate) fn new(dir: PathBuf, services: &[(String, String)]) -> Prov {
        let links: Vec<(String, String, String)> = services
            .iter()
            .map(|(s, u)| (s.clone(), u.clone(), service_link(s)))
            .collect();
        Prov::with_links(dir, &links)
    }

    /// Services mounting the given repository paths: (name, URL, link).
    pub(crate) fn with_links(dir: PathBuf, services: &[(String, String, String)]) -> Prov {
        let p = Prov { dir, ca_dir: None };
        fs::create_dir_all(&p.dir).expect("creating a provision dir");
        let mut config = String::new();
        for (svc, url, link) in services {
            let _ = write!(
                config,
                "[[services]]\nmachine = \"bench\"\nservice = \"{svc}\"\nupstream = \"{url}\"\naction = \"\"\ndirs = [ {{ local = \"{}\", link = \"{}\" }} ]\n\n",
                p.local(svc).display(),
                link
            );
        }
        fs::write(p.config(), config).expect("writing provision config");
        p
    }
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub(crate) fn local(&self, svc: &str) -> PathBuf {
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
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.scratch.path().join(rel)
    }

    /// The git CLI as a user runs it: its default configuration, none of
    /// this machine's.
    pub(crate) fn git(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.git);
        peer_env(&mut cmd);
        cmd.current_dir(dir);
        cmd
    }

    pub(crate) fn sync(&self, p: &Prov) -> Command {
        let mut cmd = Command::new(&self.bin);
        unit_env(&mut cmd);
        if let Some(dir) = &p.ca_dir {
            cmd.env("SSL_CERT_DIR", dir);
        }
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
    pub(crate) fn prov_deploy(&self, p: &Prov, n: usize) -> Run {
        let (run, out) = must(&mut self.sync(p), &self.log);
        let deployed = out.lines().filter(|l| l.contains(": deployed ")).count();
        assert_eq!(deployed, n, "expected {n} deployments:\n{out}");
        run
    }

    /// A pass with nothing to do.
    pub(crate) fn prov_noop(&self, p: &Prov, n: usize) -> Run {
        let (run, out) = must(&mut self.sync(p), &self.log);
        let same = out
            .lines()
            .filter(|l| l.contains(": up to date at "))
            .count();
        assert_eq!(same, n, "expected {n} services up to date:\n{out}");
        run
    }

    pub(crate) fn ls_remote(&self, url: &str, head: &str) -> Run {
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
    pub(crate) fn git_clone(&self, url: &str, dir: &Path, svc: &str) -> Run {
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
    pub(crate) fn git_poll(&self, dir: &Path, reload: Option<&Path>) -> (Run, bool) {
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

    pub(crate) fn ansible_pull(
        &self,
        url: &str,
        dir: &Path,
        dest: &Path,
        n: usize,
    ) -> (Run, String) {
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
/// may carry (they decide where CAs are read from), nor a request for
/// backtraces (which makes every error capture one).
pub(crate) fn unit_env(cmd: &mut Command) {
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
}

/// Environment of the peers (git, ansible-pull): default configuration,
/// without this machine's git configuration.
pub(crate) fn peer_env(cmd: &mut Command) {
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

pub(crate) fn progress(text: &str) {
    eprintln!("[bench] {text}");
}
